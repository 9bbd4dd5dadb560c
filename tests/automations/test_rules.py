"""The pure parts of automations: keyword matching (with the regex time limit), business hours,
conditions and reply variables."""
from datetime import UTC, datetime

import pytest

from app.automations import rules

WEEK = {d: [["09:00", "12:00"], ["14:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
PARIS = {"tz": "Europe/Paris", "days": WEEK, "holidays": ["2026-12-25"]}


@pytest.mark.parametrize("trigger, text, expected", [
    ({"keywords": ["price"]}, "What is the PRICE?", True),
    ({"keywords": ["price"], "match": "contains", "case_sensitive": True}, "What is the PRICE?", False),
    ({"keywords": ["info"], "match": "exact"}, "  Info ", True),
    ({"keywords": ["info"], "match": "exact"}, "info please", False),
    ({"keywords": ["opening  hours"], "match": "exact"}, "Opening hours", True),
    ({"keywords": [r"^order\s+#?\d+$"], "match": "regex"}, "ORDER #123", True),
    ({"keywords": [r"^order\s+#?\d+$"], "match": "regex", "case_sensitive": True}, "ORDER #123", False),
    ({"keywords": ["nope", r"\bhi\b"], "match": "regex"}, "oh hi there", True),
    ({"keywords": ["price"]}, "", False),
])
def test_keywords(trigger, text, expected):
    assert rules.keyword_matches(trigger, text) is expected


def test_a_catastrophic_pattern_is_stopped_by_the_time_limit():
    trigger = {"keywords": [r"(x+x+)+y"], "match": "regex"}
    with pytest.raises(rules.RegexTimeout):
        rules.keyword_matches(trigger, "x" * 5000)
    assert rules.keyword_matches(trigger, "xxy") is True  # the same pattern on a harmless text


def test_patterns_that_do_not_compile_are_named():
    assert rules.pattern_problem("(a") and rules.pattern_problem("x" * 501) and rules.pattern_problem("a**")
    assert rules.pattern_problem(r"^hi\b") is None


@pytest.mark.parametrize("pattern", ["(?:a{65535}){65535}", "(?:a{1000}){1000}", "a{1,99999999}", "(a{100}){101}"])
def test_patterns_whose_counted_repeats_would_take_forever_to_compile_are_refused(pattern):
    assert "unroll" in rules.pattern_problem(pattern)


@pytest.mark.parametrize("pattern", [r"^\+?\d{7,15}$", r"\d{3}-\d{4}", r"[a-z]{2,50}\s{1,3}x{0,}", r"\{literal\}"])
def test_ordinary_counted_repeats_are_fine(pattern):
    assert rules.pattern_problem(pattern) is None


@pytest.mark.parametrize("at, outside", [
    ("2026-11-23T08:59:00+01:00", True),    # Monday, before opening
    ("2026-11-23T09:00:00+01:00", False),   # opening minute
    ("2026-11-23T11:59:59+01:00", False),
    ("2026-11-23T12:00:00+01:00", True),    # lunch: the end is excluded
    ("2026-11-23T13:30:00+00:00", False),   # 14:30 in Paris: open (times are compared in the hours' zone)
    ("2026-11-23T17:59:00+01:00", False),
    ("2026-11-23T18:00:00+01:00", True),
    ("2026-11-28T10:00:00+01:00", True),    # Saturday: not listed, closed
    ("2026-12-25T10:00:00+01:00", True),    # a Friday, but a holiday
    ("2026-07-06T07:30:00+00:00", False),   # Monday 09:30 in Paris in summer (UTC+2)
    ("2026-07-06T06:30:00+00:00", True),    # Monday 08:30 in Paris in summer
])
def test_business_hours_in_their_time_zone(at, outside):
    assert rules.outside_hours(PARIS, datetime.fromisoformat(at)) is outside


def test_a_range_may_end_at_midnight_and_an_empty_week_is_always_closed():
    night = {"tz": "UTC", "days": {"sun": [["20:00", "24:00"]]}}
    assert rules.outside_hours(night, datetime(2026, 11, 29, 23, 59, 30, tzinfo=UTC)) is False
    assert rules.outside_hours(night, datetime(2026, 11, 30, 0, 0, tzinfo=UTC)) is True
    assert rules.outside_hours({"tz": "UTC", "days": {}}, datetime(2026, 11, 30, 10, tzinfo=UTC)) is True


def test_hours_problems_name_each_field():
    problems = rules.hours_problems({"tz": "Nowhere/City", "days": {"mon": [["10:00", "09:00"], ["25:00", "26:00"]],
                                                                    "xyz": []},
                                     "holidays": ["2026-02-30"]})
    assert set(problems) == {"tz", "days", "holidays"}
    assert set(problems["days"]["mon"]) == {0, 1} and "xyz" in problems["days"] and 0 in problems["holidays"]
    assert rules.hours_problems(PARIS) == {}


def test_conditions():
    assert rules.conditions_hold({}, "cli_1", [])
    assert rules.conditions_hold({"client_ids": ["cli_1"]}, "cli_1", [])
    assert not rules.conditions_hold({"client_ids": ["cli_2"]}, "cli_1", [])
    assert rules.conditions_hold({"tags_any": ["a", "b"]}, "c", ["b"])
    assert not rules.conditions_hold({"tags_any": ["a", "b"]}, "c", ["z"])
    assert rules.conditions_hold({"tags_all": ["a", "b"]}, "c", ["a", "b", "z"])
    assert not rules.conditions_hold({"tags_all": ["a", "b"]}, "c", ["a"])
    assert not rules.conditions_hold({"tags_none": ["vip"]}, "c", ["vip"])
    assert rules.conditions_hold({"tags_none": ["vip"], "tags_any": ["lead"]}, "c", ["lead"])


def test_reply_variables():
    values = rules.reply_variables(contact_name=None, phone="+14155550123", message_id="msg_1", text="hi",
                                   attributes={"city": "Lyon", "age": 41, "vip": True, "nested": {"a": 1}})
    assert values["name"] == values["contact.name"] == ""
    assert values["attributes.city"] == values["contact.attributes.city"] == "Lyon"
    assert values["attributes.age"] == "41" and values["attributes.vip"] == "true"
    assert "attributes.nested" not in values and values["message.text"] == "hi"
