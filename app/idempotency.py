"""``Idempotency-Key`` for every POST that creates (API.md), stored in ``idempotency_keys``.

Use it on a creating route by putting ``@idempotent`` *above* the flask-smorest decorators (it needs
the finished response)::

    @blp.route("")
    class Things(MethodView):
        @idempotent
        @blp.arguments(ThingCreateSchema)
        @blp.response(201, ThingSchema)
        @requires("things:write")
        def post(self, body):
            return service.create_thing(request_session(), current_principal(), **body)

What a client gets, for one organisation and key, for 24 hours:

* the first request runs; a 2xx response is stored with the request's fingerprint (method, path,
  query and body — JSON compared by content, not spacing) in the same transaction as the request's
  own writes, so "created" and "remembered" commit together;
* the same key with the same request (and caller) again: the stored response, replayed as it was
  (with ``Idempotent-Replayed: true``), nothing runs twice;
* the same key with a different request or caller: 422 ``idempotency_key_reused``;
* the same key while the first request still runs: 409 ``idempotency_in_flight`` (``Retry-After``);
* a first request that fails (4xx/5xx) leaves no trace: the key can be used again. So does one
  whose process died: after ``IDEMPOTENCY_IN_FLIGHT_TIMEOUT`` seconds another request takes it over.

The key is claimed in a transaction of its own, committed before the route runs, which is what lets
a concurrent duplicate see it in flight. ``purge_expired`` (run by the message sweeper) deletes keys
past their 24 hours.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Response, request
from sqlalchemy import BigInteger, ForeignKey, Integer, Text, delete, func, select
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.columns import CID, TS
from app.db import Base, rowcount
from app.errors import Conflict, ValidationError
from config import settings

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
TTL = timedelta(hours=24)
_KEY_OK = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces


class IdempotencyKey(Base):
    """``Idempotency-Key`` of a creating POST: in_flight, then completed with the first response."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ForeignKey("organizations.id", ondelete="CASCADE"))
    principal_id: Mapped[str] = mapped_column(CID)
    key: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="in_flight")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict | list | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(TS, server_default=sqltext("now() + interval '24 hours'"))


HEADER_DOC = {
    "in": "header", "name": HEADER, "required": False, "schema": {"type": "string", "maxLength": 255},
    "description": "Makes the request safe to retry for 24 hours: the same key and body replay the first "
                   "response; the same key with another body is 422; while the first is in flight, 409.",
}


@dataclass(frozen=True)
class _Replay:
    status: int
    body: object


def _fingerprint() -> str:
    """HMAC-SHA256 (keyed with SECRET_KEY) of the request: bodies may hold passwords (users,
    proxies), and a plain hash of one would be an offline guessing target if the table leaked.
    A multipart upload is not read here (it streams to storage, up to 100 MB): its key covers the
    request line only; its bytes are kept once per organisation anyway (a re-upload returns them)."""
    from app.security.tokens import secret_key

    digest = hmac.new(secret_key().encode(), digestmod=hashlib.sha256)
    digest.update(f"{request.method}\n{request.path}\n{request.query_string.decode(errors='replace')}\n".encode())
    data = request.get_json(silent=True) if request.is_json else None
    if data is not None:
        digest.update(json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    elif request.mimetype != "multipart/form-data":
        digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def _principal_key(principal) -> str:
    return principal.id or f"{principal.kind}"


#: One statement takes the key: a new row, or an expired or abandoned one taken over; else the row
#: as it stands (in the statement's snapshot: a row inserted concurrently since is not seen, and the
#: claim asks again). Run in autocommit, it is one round trip.
_CLAIM = sqltext("""
    WITH taken AS (
        INSERT INTO idempotency_keys AS k (organization_id, principal_id, key, method, path, request_hash, status,
                                           created_at, expires_at)
        VALUES (:org, :who, :key, :method, :path, :hash, 'in_flight', now(), now() + :ttl)
        ON CONFLICT ON CONSTRAINT idempotency_keys_org_key_key DO UPDATE
            SET principal_id = EXCLUDED.principal_id, method = EXCLUDED.method, path = EXCLUDED.path,
                request_hash = EXCLUDED.request_hash, status = 'in_flight', response_status = NULL,
                response_body = NULL, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
            WHERE k.expires_at <= now() OR (k.status = 'in_flight' AND k.created_at < now() - :abandoned_after)
        RETURNING k.id)
    SELECT id, true AS claimed, NULL AS principal_id, NULL AS request_hash, NULL AS status,
           NULL::integer AS response_status, NULL::jsonb AS response_body
    FROM taken
    UNION ALL
    SELECT id, false, principal_id, request_hash, status, response_status, response_body
    FROM idempotency_keys
    WHERE organization_id = :org AND key = :key AND NOT EXISTS (SELECT FROM taken)""")


def claim(principal, key: str, fingerprint: str, method: str, path: str) -> int | _Replay:
    """Take ``key`` for this request (its row id), or the stored response to replay; raises 409/422."""
    params = {"org": principal.organization_id, "who": _principal_key(principal), "key": key, "method": method,
              "path": path, "hash": fingerprint, "ttl": TTL,
              "abandoned_after": timedelta(seconds=settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT)}
    for _ in range(3):
        row = _run_claim(params)
        if row is None:  # inserted by a concurrent request after this statement's snapshot: ask again
            continue
        if row.claimed:
            return row.id
        if row.principal_id != params["who"] or row.request_hash != fingerprint:
            raise ValidationError(
                "This Idempotency-Key was already used for a different request",
                code="idempotency_key_reused", details={HEADER: ["Already used with another request body."]})
        if row.status == "in_flight":
            raise Conflict("A request with this Idempotency-Key is still in progress; retry shortly",
                           code="idempotency_in_flight", headers={"Retry-After": "1"})
        return _Replay(row.response_status, row.response_body)
    raise Conflict("Idempotency-Key contention; retry", code="idempotency_in_flight",
                   headers={"Retry-After": "1"})


def _run_claim(params: dict):
    """The claim statement, committed on its own before the route runs (so a concurrent duplicate
    sees the key in flight): one round trip in autocommit (``one_statement``)."""
    from app.db import one_statement

    with one_statement() as conn:
        return conn.execute(_CLAIM, params).first()


_COMPLETE = sqltext("UPDATE idempotency_keys SET status = 'completed', response_status = :status, "
                    "response_body = CAST(:body AS jsonb) WHERE id = :id")


def complete(session: Session, key_id: int, status: int, body, *, raw: str | None = None) -> None:
    """Store the response in the request's own transaction (commits with what the request wrote).
    ``raw``: the response's JSON text, stored as it is (no parse and dump again)."""
    if raw is None and body is not None:
        raw = json.dumps(body)
    session.execute(_COMPLETE, {"status": status, "body": raw, "id": key_id})


def release(key_id: int) -> None:
    """Forget a claim whose request failed, so the key may be used again (a correct retry must
    not get 409 for a minute). The database being away is often why the request failed: then a
    background thread keeps trying, with backoff, until the in-flight timeout would free the key
    anyway, while the failed request answers at once."""
    if not _try_release(key_id):
        _releaser.add(key_id)


def _try_release(key_id: int) -> bool:
    from app.db import new_session
    session = new_session()
    try:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == key_id,
                                                     IdempotencyKey.status == "in_flight"))
        session.commit()
        return True
    except Exception:
        session.rollback()
        return False
    finally:
        session.close()


class _Releaser:
    """Claims whose release failed, retried by one daemon thread per process."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._pending: dict[int, float] = {}  # key id -> give up at (monotonic)
        self._thread = None

    def add(self, key_id: int) -> None:
        import threading
        import time

        with self._lock:
            self._pending[key_id] = time.monotonic() + settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="idempotency-release", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        import logging
        import time

        pause = 0.5
        while True:
            time.sleep(pause)
            with self._lock:
                pending = dict(self._pending)
            if not pending:
                return
            for key_id, give_up_at in pending.items():
                done = _try_release(key_id)
                if done or time.monotonic() > give_up_at:
                    if not done:
                        logging.getLogger(__name__).warning("idempotency key %s could not be released; it is "
                                                            "free again after the in-flight timeout", key_id)
                    with self._lock:
                        self._pending.pop(key_id, None)
            pause = min(pause * 2, 5.0)


_releaser = _Releaser()


def purge_expired(session: Session, limit: int = 10_000) -> int:
    """Delete keys past their 24 hours (at most ``limit`` per call)."""
    ids = select(IdempotencyKey.id).where(IdempotencyKey.expires_at < func.now()).limit(limit).scalar_subquery()
    return rowcount(session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(ids)))) or 0


def _replay_response(replay: _Replay) -> Response:
    body = "" if replay.body is None else json.dumps(_replayed(replay.body))
    resp = Response(body, status=replay.status, mimetype="application/json")
    resp.headers[REPLAY_HEADER] = "true"
    return resp


#: a stored response that carries a secret (an API key, a webhook secret) is kept encrypted
_ENCRYPTED = "encrypted_response"
_AAD = b"idempotency-response"


def _stored(body, secret: bool):
    if not secret or body is None:
        return body
    from app.security import crypto

    return {_ENCRYPTED: crypto.encrypt(json.dumps(body), aad=_AAD)}


def _replayed(body):
    if isinstance(body, dict) and set(body) == {_ENCRYPTED}:
        from app.security import crypto

        return json.loads(crypto.decrypt(body[_ENCRYPTED], aad=_AAD))
    return body


def idempotent(fn=None, *, secret: bool = False):
    """Route decorator: honour ``Idempotency-Key`` (see the module docstring). Put it above the
    flask-smorest decorators of the method. ``secret=True`` for responses that show a secret once
    (``@idempotent(secret=True)``): the stored copy is encrypted like every other secret at rest,
    and a replay shows it again only to the same caller with the same request."""
    if fn is None:
        return functools.partial(idempotent, secret=secret)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        raw = request.headers.get(HEADER)
        if raw is None:
            return fn(*args, **kwargs)
        key = raw.strip()
        if not _KEY_OK.match(key):
            raise ValidationError("Invalid Idempotency-Key",
                                  details={HEADER: ["1 to 255 printable ASCII characters, no spaces."]})
        from app.db import request_session
        from app.security.auth import current_principal

        claimed = claim(current_principal(), key, _fingerprint(), request.method, request.path)
        if isinstance(claimed, _Replay):
            return _replay_response(claimed)
        try:
            response = fn(*args, **kwargs)
        except BaseException:
            release(claimed)
            raise
        if not isinstance(response, Response):
            release(claimed)
            raise TypeError("@idempotent must be placed above the @blp.arguments/@blp.response decorators")
        if 200 <= response.status_code < 300 and (response.is_json or not response.get_data()):
            if secret or not response.is_json:
                complete(request_session(), claimed, response.status_code,
                         _stored(response.get_json(silent=True), secret))
            else:  # the JSON text as it is (jsonb stores it by content)
                complete(request_session(), claimed, response.status_code, None,
                         raw=response.get_data(as_text=True) or None)
        else:
            release(claimed)
        return response

    # the OpenAPI document adds the 409 and 422 this can answer; typeshed types wraps() without attributes
    wrapper.idempotent = True  # type: ignore[attr-defined]
    from flask_smorest import Blueprint

    return Blueprint.doc(parameters=[HEADER_DOC])(wrapper)
