"""The batch items' fast loader (``FastItemLoader``) gives exactly what ``MessageItemSchema().load``
gives: the same item for a valid one, the same error (the 422 details of the batch answer) for an
invalid one, on hand-written edge cases and on many generated items."""
from __future__ import annotations

import random

import pytest
from marshmallow import ValidationError

from app.messages.schemas import CAPTION_MAX, TEXT_MAX, FastItemLoader, MessageItemSchema

LOADER = FastItemLoader()
SCHEMA = MessageItemSchema()


def outcome(load, raw):
    try:
        return "ok", load(raw)
    except ValidationError as exc:
        return "error", exc.normalized_messages()


def same(raw):
    fast, slow = outcome(LOADER.load, raw), outcome(SCHEMA.load, raw)
    assert fast == slow, raw
    return fast


CASES = [
    {"to": "+14155550123", "text": "hi"},
    {"to": "+14155550123"},
    {"to": "+14155550123", "type": "template", "template_id": "tpl_1", "variables": {"name": "Ann", "n": 3}},
    {"to": "+14155550123", "type": "image", "media_id": "med_1", "caption": "look"},
    {"to": "+14155550123", "type": None, "text": None, "media_id": None, "caption": None, "template_id": None,
     "variables": None, "scheduled_at": None},
    {"to": "+14155550123", "text": "x" * TEXT_MAX},
    {"to": "+14155550123", "text": "x" * (TEXT_MAX + 1)},
    {"to": "+14155550123", "caption": "x" * CAPTION_MAX},
    {"to": "+14155550123", "caption": "x" * (CAPTION_MAX + 1)},
    {"to": "x" * 32}, {"to": "x" * 33}, {"to": ""}, {"to": None}, {"to": 14155550123}, {"text": "no to"}, {},
    {"to": "+14155550123", "type": "sticker"}, {"to": "+14155550123", "type": 3}, {"to": "+14155550123", "type": ""},
    {"to": "+14155550123", "text": 5}, {"to": "+14155550123", "text": ["a"]}, {"to": "+14155550123", "text": True},
    {"to": "+14155550123", "media_id": "m" * 64}, {"to": "+14155550123", "media_id": "m" * 65},
    {"to": "+14155550123", "template_id": "t" * 65}, {"to": "+14155550123", "template_id": {}},
    {"to": "+14155550123", "variables": {}}, {"to": "+14155550123", "variables": []},
    {"to": "+14155550123", "variables": "name=Ann"}, {"to": "+14155550123", "variables": {"k" * 64: 1}},
    {"to": "+14155550123", "variables": {"k" * 65: 1, "ok": 2}},
    {"to": "+14155550123", "variables": {"a": {"nested": [1, None]}, "b": None}},
    {"to": "+14155550123", "unknown": True}, {"to": "+14155550123", "client_id": "cli_1"},
    {"to": "+14155550123", "scheduled_at": "2030-01-02T03:04:05Z"},
    {"to": "+14155550123", "scheduled_at": "2030-01-02T03:04:05"},
    {"to": "+14155550123", "scheduled_at": "2030-01-02T03:04:05+02:00"},
    {"to": "+14155550123", "scheduled_at": "0001-01-01T00:00:00+01:00"},
    {"to": "+14155550123", "scheduled_at": "tomorrow"}, {"to": "+14155550123", "scheduled_at": 1700000000},
    {"to": "+14155550123", "scheduled_at": ""},
    {"to": None, "type": "nope", "text": 1, "variables": 2, "unknown": 3, "scheduled_at": "x"},
    {"to": "+1415555٠١٢٣"}, {"to": "+14155550123", "text": "é" * TEXT_MAX},
]


@pytest.mark.parametrize("raw", CASES)
def test_hand_written_items_load_the_same(raw):
    same(raw)


def test_valid_items_take_the_fast_path():
    assert LOADER._fast({"to": "+14155550123", "text": "hi"}) == SCHEMA.load({"to": "+14155550123", "text": "hi"})
    assert LOADER._fast({"to": "+14155550123", "unknown": 1}) is None  # left to the schema


def _value(rng: random.Random):
    return rng.choice([
        None, "", "x", "+14155550123", "hello", "x" * rng.choice([31, 32, 33, 64, 65, 1024, 1025, 4096, 4097]),
        0, 1.5, True, False, [], ["a"], {}, {"a": 1}, {"k" * 65: 1}, {"a": {"b": [1]}},
        "text", "image", "video", "audio", "document", "template", "sticker",
        "2030-01-02T03:04:05Z", "2030-01-02", "9999-12-31T23:59:59-01:00", "not a time",
    ])


def test_generated_items_load_the_same():
    rng = random.Random(20261203)
    names = ["to", "type", "text", "media_id", "caption", "template_id", "variables", "scheduled_at", "extra"]
    kinds = {"ok": 0, "error": 0}
    for _ in range(5000):
        raw = {name: _value(rng) for name in rng.sample(names, rng.randint(0, 5))}
        if rng.random() < 0.5:  # mostly-valid items too
            raw["to"] = "+14155550123"
            raw.pop("extra", None)
        kinds[same(raw)[0]] += 1
    assert kinds["ok"] > 500 and kinds["error"] > 500, kinds


def test_the_batch_answer_dumps_as_marshmallow_does():
    from datetime import UTC, datetime, timedelta, timezone

    from app.messages.schemas import BatchResultSchema

    fast = BatchResultSchema()
    error = {"code": "validation_error", "message": "Validation failed", "details": {"to": ["Bad."]}}
    at = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    answers = [
        {"messages": [{"id": "msg_1", "status": "queued", "scheduled_for": at},
                      {"id": "msg_2", "status": "queued", "scheduled_for": None}, {"error": error},
                      {"id": "msg_3", "status": "queued", "scheduled_for": at.astimezone(timezone(timedelta(hours=2)))}]},
        {"messages": []},
        {"messages": [{"id": "msg_1", "status": "queued"}]},  # other shapes: marshmallow itself
        {"messages": [{"id": "msg_1", "status": "queued", "scheduled_for": at, "extra": 1}]},
        {"messages": [{"error": error, "id": "msg_1"}]},
    ]
    for answer in answers:
        assert fast.dump(answer) == ma_dump(answer), answer


def ma_dump(answer):
    import marshmallow

    from app.messages.schemas import BatchResultSchema

    return marshmallow.Schema.dump(BatchResultSchema(), answer)
