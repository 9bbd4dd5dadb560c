"""Cursor pagination: every list answers ``{items, next_cursor}`` (API.md "Lists").

Public ids sort by creation time, so newest-first is ``ORDER BY id DESC`` and the cursor is an
opaque encoding of the last id on the page; a page is one index range scan however deep it is.
"""
from __future__ import annotations

import base64
import re

import marshmallow as ma
from sqlalchemy import Select
from sqlalchemy.orm import Session

from app.errors import ValidationError

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_CURSOR_ID = re.compile(r"[a-z]+_[0-9A-Za-z]+")


class ListArgs(ma.Schema):
    """Query arguments every list takes; extend it with the endpoint's filters."""

    limit = ma.fields.Integer(load_default=DEFAULT_LIMIT, validate=ma.validate.Range(1, MAX_LIMIT))
    cursor = ma.fields.String(load_default=None)


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(details={"cursor": ["Invalid cursor."]}) from None
    if len(raw) > 64 or not _CURSOR_ID.fullmatch(raw):  # an id we made: no NUL, nothing odd reaches SQL
        raise ValidationError(details={"cursor": ["Invalid cursor."]})
    return raw


def paginate(session: Session, stmt: Select, id_column, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None,
             ascending: bool = False) -> dict:
    """Run ``stmt`` one page at a time ordered by ``id_column`` (newest first by default)."""
    if cursor:
        last = decode_cursor(cursor)
        stmt = stmt.where(id_column > last if ascending else id_column < last)
    stmt = stmt.order_by(id_column.asc() if ascending else id_column.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return {"items": rows[:limit], "next_cursor": next_cursor}


def page_schema(item_schema: type[ma.Schema], name: str | None = None) -> type[ma.Schema]:
    """The ``{items: [...], next_cursor}`` response schema of a list of ``item_schema``."""
    return ma.Schema.from_dict(
        {"items": ma.fields.List(ma.fields.Nested(item_schema)),
         "next_cursor": ma.fields.String(allow_none=True)},
        name=name or f"{item_schema.__name__.removesuffix('Schema')}Page",
    )
