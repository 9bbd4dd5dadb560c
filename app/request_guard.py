"""Hostile input refused at the door, before any of it reaches a service or the database.

PostgreSQL cannot store a NUL character in text or JSONB, a lone UTF-16 surrogate cannot even be
encoded for it, and JSON nested a thousand deep exhausts Python's stack in the parser, in
marshmallow and in the encoder. Each surfaced as a 500 from deep inside whatever route received
it. Instead:

* ``check_request_line`` (first thing of every request): a NUL in the path or in a query argument
  is 422 naming the argument; in a header, 400 ``invalid_header``;
* ``check_json_body`` (after authentication, so a caller without rights still gets 401/403 first):
  the JSON body is parsed here, strictly — malformed, ``NaN``/``Infinity`` or a number too large
  for a float (``1e400``), or nested deeper than ``MAX_JSON_DEPTH``: 400 ``malformed_json`` — and
  a NUL or an unpaired surrogate in any string or key is 422 naming the field (``messages.3.text``).
"""
from __future__ import annotations

import json
import math
import re

from flask import request

from app.errors import BadRequest, ValidationError

MAX_JSON_DEPTH = 32
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")  # NUL, or half a surrogate pair
TEXT_MESSAGE = "Must not contain NUL characters or unpaired surrogates."
KEY_MESSAGE = "Keys must not contain NUL characters or unpaired surrogates."


def _bad(text: str) -> bool:
    return _BAD_TEXT.search(text) is not None


def _printable(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii") if _bad(name) else name


def check_request_line() -> None:
    """Path, query arguments and headers (decoded with replacement: a NUL is all that can hurt)."""
    if "\x00" in request.path:
        named = {name: [TEXT_MESSAGE] for name, value in (request.view_args or {}).items()
                 if isinstance(value, str) and "\x00" in value}
        raise ValidationError("The path holds a NUL character", details=named or {"path": [TEXT_MESSAGE]})
    bad = {_printable(name): [TEXT_MESSAGE] for name, value in request.args.items(multi=True)
           if "\x00" in name or "\x00" in value}
    if bad:
        raise ValidationError("A query argument holds a NUL character", details=bad)
    for name, value in request.headers.items():
        if "\x00" in value:
            raise BadRequest(f"The {name} header holds a NUL character", code="invalid_header",
                             details={"header": name})


def check_json_body() -> None:
    """Parse a JSON body once, safely, and refuse it when too deep or holding text nothing can store."""
    if request.method not in ("POST", "PUT", "PATCH", "DELETE") or not request.is_json:
        return
    raw = request.get_data(cache=True)
    if not raw:
        return
    try:
        data = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError):  # ValueError: bad JSON or bad UTF-8
        raise BadRequest("The request body is not valid JSON", code="malformed_json") from None
    _check_value(data)


def _not_json(name: str):
    """Python reads ``NaN`` and ``Infinity``; JSON (and PostgreSQL's jsonb) has no such thing."""
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError(f"{text} is out of range")
    return value


def _check_value(data) -> None:
    """Depth first over the parsed body, without recursion (depth is what is being checked)."""
    stack = [(data, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if _bad(value):
                raise ValidationError(details={where or "_schema": [TEXT_MESSAGE]})
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
                             code="malformed_json", details={"max_depth": MAX_JSON_DEPTH})
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            if isinstance(key, str) and _bad(key):
                raise ValidationError(details={where or "_schema": [KEY_MESSAGE]})
            stack.append((item, f"{where}.{key}" if where else str(key), depth + 1))
