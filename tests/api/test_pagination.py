"""Cursor pagination: newest first, stable pages, no duplicates or gaps, limits enforced."""
import pytest
from sqlalchemy import select

from app.errors import ValidationError
from app.pagination import decode_cursor, encode_cursor, paginate
from app.team.models import Organization
from tests.factories import make_organization


def test_pages_walk_every_row_once_newest_first(session):
    ids = [make_organization(session).id for _ in range(7)]
    seen, cursor = [], None
    while True:
        page = paginate(session, select(Organization).where(Organization.id.in_(ids)), Organization.id,
                        limit=3, cursor=cursor)
        seen += [o.id for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


def test_last_full_page_has_no_next_cursor(session):
    ids = [make_organization(session).id for _ in range(3)]
    page = paginate(session, select(Organization).where(Organization.id.in_(ids)), Organization.id, limit=3)
    assert len(page["items"]) == 3 and page["next_cursor"] is None


def test_bad_cursor_is_a_validation_error():
    with pytest.raises(ValidationError) as exc:
        decode_cursor("!!!not-base64")
    assert "cursor" in exc.value.details
    assert decode_cursor(encode_cursor("msg_01ABC")) == "msg_01ABC"


def test_new_ids_sort_by_creation_time(monkeypatch):
    """Across milliseconds by their time; within one (ids made back to back) in the order made."""
    import time
    import types

    from app import db

    clock = types.SimpleNamespace(now=time.time() + 10)  # after every id made so far
    monkeypatch.setattr(db, "time", types.SimpleNamespace(time=lambda: clock.now, monotonic=time.monotonic))
    # ids never go back: without this, every later id of this process would be an hour ahead
    monkeypatch.setattr(db, "_last_id", db._last_id)
    a = db.new_id("msg")
    clock.now += 0.002
    b = db.new_id("msg")
    same_millisecond = [db.new_id("msg") for _ in range(200)]
    clock.now -= 5  # the wall clock stepped back
    after_the_step = db.new_id("msg")
    made = [a, b, *same_millisecond, after_the_step]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert a.startswith("msg_") and len(a) == 30 and all(len(i) == 30 for i in made)
    clock.now += 3600
    assert db.new_id("msg")[:14] > after_the_step[:14], "an hour later: a later time part"
