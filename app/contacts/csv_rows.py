"""Reading contact CSV files: checking an upload, the header's column plan, rows into contact fields.

* ``Inspector`` sees an upload's bytes as they are stored: UTF-8 (with or without a BOM), no NUL
  byte, at most ``CONTACT_IMPORT_MAX_ROWS`` lines below the header; it keeps the header line.
* ``plan_columns`` reads the header with ``,`` and with ``;`` and keeps the delimiter under which
  the header (and the ``mapping``, when given) makes sense: which column is the phone, the name,
  the tags, and which are attributes (``ColumnPlan``, stored with the import).
* ``Records`` streams the file from a byte offset, one CSV record at a time, knowing the line each
  starts on and the offset after it (where a resumed import starts again).
* ``parse_row`` turns one record into ``(phone, name, tags, attributes)`` or says why it cannot.
"""
from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import phonenumbers

from app.errors import ValidationError

DELIMITERS = (",", ";")
TARGETS = ("phone", "name", "tags")
ATTRIBUTE_PREFIX = "attributes."
BOM = codecs.BOM_UTF8
MAX_HEADER_BYTES = 64 * 1024
MAX_LINE_BYTES = 1 << 20  # a worker reads a line at a time: none may be huge
MAX_COLUMNS = 200
MAX_NAME = 200
MAX_TAGS = 50
MAX_TAG = 64
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTES_BYTES = 16 * 1024
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")  # the contacts table's own check
_TAG_SPLIT = re.compile(r"[|,]")

csv.field_size_limit(MAX_ATTRIBUTES_BYTES * 4)  # a runaway quote fails its row, not the whole file


class RowError(Exception):
    """Why a row is invalid (its ``reason`` in the import's ``errors``)."""


# ----------------------------------------------------------------------------- the upload


class Inspector:
    """Fed every chunk of an upload in order: refuses what is not a UTF-8 text file, counts lines,
    keeps the header line. ``finish()`` checks the end."""

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.size = 0
        self.lines = 0  # newline characters seen
        self.header = b""
        self.header_done = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._last = b"\n"
        self._open_line = 0  # bytes of the line not ended yet

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        if b"\x00" in chunk:
            raise ValidationError(details={"file": [f"Not a text file: a NUL byte on line {self._line_at(chunk)}."]})
        try:
            self._decoder.decode(chunk)
        except UnicodeDecodeError:
            raise ValidationError(details={"file": [
                f"Not UTF-8 text (line {self._line_at(chunk)}): save the file as UTF-8 CSV."]}) from None
        if not self.header_done:
            end = chunk.find(b"\n")
            self.header += chunk if end < 0 else chunk[:end + 1]
            self.header_done = end >= 0
            if len(self.header) > MAX_HEADER_BYTES:
                raise ValidationError(details={"file": [f"The header line is longer than {MAX_HEADER_BYTES} bytes."]})
        parts = chunk.split(b"\n")
        longest = max([self._open_line + len(parts[0]), *map(len, parts[1:])])
        if longest > MAX_LINE_BYTES:
            raise ValidationError(details={"file": [
                f"A line near line {self.lines + 1} is longer than {MAX_LINE_BYTES} bytes."]})
        self._open_line = len(parts[-1]) if len(parts) > 1 else self._open_line + len(chunk)
        self.size += len(chunk)
        self.lines += len(parts) - 1
        self._last = chunk[-1:]
        if self.lines - 1 > self.max_rows:
            raise ValidationError(details={"file": [f"More than {self.max_rows} rows: split the file."]})
        return chunk

    def _line_at(self, chunk: bytes) -> int:
        return self.lines + 1  # the line the chunk starts on (near enough to find it)

    def finish(self) -> None:
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValidationError(details={"file": ["Not UTF-8 text: the file ends inside a character."]}) from None
        rows = self.lines - 1 + (0 if self._last == b"\n" else 1)
        if rows > self.max_rows:
            raise ValidationError(details={"file": [f"More than {self.max_rows} rows: split the file."]})
        if not self.header.removeprefix(BOM).strip():
            raise ValidationError(details={"file": ["The file is empty: its first line names the columns "
                                                    "(phone,name,tags,...)."]})

    @property
    def header_end(self) -> int:
        """The byte offset just past the header line (where rows start)."""
        return len(self.header)


# ----------------------------------------------------------------------------- the header


@dataclass(frozen=True)
class ColumnPlan:
    """Which column (by index) holds what. Stored with the import as ``to_json()``."""

    columns: int
    phone: int
    name: int | None = None
    tags: int | None = None
    attributes: tuple[tuple[int, str], ...] = ()

    def to_json(self) -> dict:
        return {"columns": self.columns, "phone": self.phone, "name": self.name, "tags": self.tags,
                "attributes": [list(a) for a in self.attributes]}

    @classmethod
    def from_json(cls, data: dict) -> ColumnPlan:
        return cls(columns=data["columns"], phone=data["phone"], name=data.get("name"), tags=data.get("tags"),
                   attributes=tuple((int(i), str(k)) for i, k in data.get("attributes") or ()))


def check_mapping(raw: str | None) -> dict[str, str | None] | None:
    """The ``mapping`` form field: a JSON object ``{"CSV header": "phone" | "name" | "tags" |
    "attributes.<key>" | null}`` (null: leave the column out). 422 on ``mapping`` otherwise."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValidationError(details={"mapping": ["Not valid JSON."]}) from None
    if not isinstance(value, dict):
        raise ValidationError(details={"mapping": ["Must be a JSON object of CSV header -> field."]})
    problems = []
    for header, target in value.items():
        if target is None:
            continue
        if not isinstance(target, str) or not (target in TARGETS or (
                target.startswith(ATTRIBUTE_PREFIX) and 0 < len(target) - len(ATTRIBUTE_PREFIX) <= MAX_ATTRIBUTE_KEY)):
            problems.append(f"{header!r}: must be phone, name, tags, attributes.<key> (1 to {MAX_ATTRIBUTE_KEY} "
                            f"characters) or null.")
    if len(value) > MAX_COLUMNS:
        problems.append(f"At most {MAX_COLUMNS} columns.")
    if problems:
        raise ValidationError(details={"mapping": problems})
    return value


def plan_columns(header_line: bytes, mapping: dict[str, str | None] | None) -> tuple[str, ColumnPlan]:
    """``(delimiter, plan)`` for a header line, trying each delimiter; 422 on ``file`` or ``mapping``."""
    text = header_line.removeprefix(BOM).decode("utf-8").rstrip("\r\n")
    tried: list[tuple[int, ValidationError]] = []
    found: list[tuple[int, str, ColumnPlan]] = []
    for delimiter in DELIMITERS:
        cells = next(csv.reader([text], delimiter=delimiter), [])
        try:
            found.append((len(cells), delimiter, _plan(cells, mapping)))
        except ValidationError as exc:
            tried.append((len(cells), exc))
    if found:
        _, delimiter, plan = max(found, key=lambda f: f[0])  # a tie keeps the first (",")
        return delimiter, plan
    raise max(tried, key=lambda t: t[0])[1]


def _plan(cells: list[str], mapping: dict[str, str | None] | None) -> ColumnPlan:
    headers = [c.strip() for c in cells]
    if len(headers) > MAX_COLUMNS:
        raise ValidationError(details={"file": [f"At most {MAX_COLUMNS} columns."]})
    lowered: dict[str, int] = {}
    for i, h in enumerate(headers):
        if h and lowered.setdefault(h.lower(), i) != i:
            raise ValidationError(details={"file": [f"The header names the column {h!r} twice."]})
    wanted = {k.strip().lower(): v for k, v in (mapping or {}).items()}
    unknown = [k for k in (mapping or {}) if k.strip().lower() not in lowered]
    if unknown:
        raise ValidationError(details={"mapping": [
            f"No column {k!r} in the file's header (it has: {', '.join(h for h in headers if h)[:500]})."
            for k in unknown]})
    where: dict[str, int] = {}
    attributes: list[tuple[int, str]] = []
    for i, h in enumerate(headers):
        if not h:
            continue
        target = wanted[h.lower()] if h.lower() in wanted else (h.lower() if h.lower() in TARGETS
                                                                  else ATTRIBUTE_PREFIX + h)
        if target is None:
            continue
        if target in TARGETS:
            if target in where:
                field = "mapping" if mapping else "file"
                raise ValidationError(details={field: [
                    f"Two columns are the {target}: {headers[where[target]]!r} and {h!r}."]})
            where[target] = i
        else:
            key = target[len(ATTRIBUTE_PREFIX):]
            if len(key) > MAX_ATTRIBUTE_KEY:
                raise ValidationError(details={"file": [
                    f"Column {h[:80]!r}: attribute names are at most {MAX_ATTRIBUTE_KEY} characters."]})
            if any(k == key for _, k in attributes):
                raise ValidationError(details={"mapping" if mapping else "file": [
                    f"Two columns are the attribute {key!r}."]})
            attributes.append((i, key))
    if "phone" not in where:
        if mapping:
            raise ValidationError(details={"mapping": ["No column is the phone: map one to \"phone\"."]})
        raise ValidationError(details={"file": [
            "No phone column: name one column \"phone\" in the header, or send a mapping."]})
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(details={"file": [f"At most {MAX_ATTRIBUTES} attribute columns."]})
    return ColumnPlan(columns=len(headers), phone=where["phone"], name=where.get("name"), tags=where.get("tags"),
                      attributes=tuple(attributes))


def check_region(region: str | None) -> str | None:
    """A region code phonenumbers knows (``US``), upper-cased; 422 on ``default_region``."""
    if region is None or region.strip() == "":
        return None
    value = region.strip().upper()
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValidationError(details={"default_region": ["Not a region code (ISO 3166, e.g. US, DE, BR)."]})
    return value


# ----------------------------------------------------------------------------- the rows


class Records:
    """The CSV records of ``fh`` from byte ``offset`` (which is after line ``line``): iterate for
    ``(first_line, cells | None, problem | None)``; ``offset`` and ``line`` then say where the
    record just read ends. Blank lines are skipped."""

    def __init__(self, fh: BinaryIO, delimiter: str, offset: int, line: int):
        self.offset, self.line = offset, line
        fh.seek(offset)
        self._reader = csv.reader(self._lines(fh), delimiter=delimiter, strict=True)

    def _lines(self, fh: BinaryIO) -> Iterator[str]:
        for raw in fh:
            self.offset += len(raw)
            self.line += 1
            yield raw.decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[tuple[int, list[str] | None, str | None]]:
        while True:
            first = self.line + 1
            try:
                cells = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield first, None, f"not valid CSV: {exc}"
                continue
            if cells:
                yield first, cells, None


def normalise_phone(value: str, region: str | None) -> str:
    """``value`` as E.164 (``+14155550123``); RowError saying why not. Numbers without ``+`` are
    read in ``region``; ``00`` before the country code counts as ``+`` when there is none."""
    raw = value.strip()
    if not raw:
        raise RowError("the phone is empty")
    if not any(ch.isdigit() for ch in raw):
        raise RowError(f"the phone {raw[:40]!r} is not a phone number")
    if raw.startswith("00") and region is None:
        raw = "+" + raw[2:]
    if not raw.startswith("+") and region is None:
        raise RowError(f"the phone {raw[:40]!r} has no + and country code, and the import has no default region")
    try:
        number = phonenumbers.parse(raw, None if raw.startswith("+") else region)
    except phonenumbers.NumberParseException:
        raise RowError(f"the phone {raw[:40]!r} is not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise RowError(f"the phone {raw[:40]!r} has the wrong length for its country")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not _E164.match(e164):
        raise RowError(f"the phone {raw[:40]!r} is not a phone number")
    return e164


def parse_row(cells: list[str], plan: ColumnPlan, region: str | None) -> tuple[str, str | None, list[str], dict]:
    """``(phone, name, tags, attributes)`` of one record, or RowError."""
    if len(cells) > plan.columns and any(c.strip() for c in cells[plan.columns:]):
        raise RowError(f"the row has {len(cells)} fields, the header {plan.columns}")

    def cell(i: int | None) -> str:
        return cells[i].strip() if i is not None and i < len(cells) else ""

    phone = normalise_phone(cell(plan.phone), region)
    name = cell(plan.name) or None
    if name is not None and len(name) > MAX_NAME:
        raise RowError(f"the name is longer than {MAX_NAME} characters")
    tags: list[str] = []
    for tag in _TAG_SPLIT.split(cell(plan.tags)):
        tag = tag.strip()
        if tag and tag not in tags:
            if len(tag) > MAX_TAG:
                raise RowError(f"a tag is longer than {MAX_TAG} characters")
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise RowError(f"more than {MAX_TAGS} tags")
    attributes = {key: value for i, key in plan.attributes if (value := cell(i))}
    if attributes and sum(len(k) + len(v) + 6 for k, v in attributes.items()) > MAX_ATTRIBUTES_BYTES:
        if len(json.dumps(attributes, separators=(",", ":"))) > MAX_ATTRIBUTES_BYTES:
            raise RowError(f"the attributes are more than {MAX_ATTRIBUTES_BYTES} bytes")
    return phone, name, tags, attributes
