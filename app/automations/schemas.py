"""Request and response schemas of automations and their runs.

A trigger and an action are each one schema holding the fields of every type; ``validates_schema``
checks which fields the given ``type`` needs and refuses the others, so an error names the field.
"""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate, validates_schema

from app.automations import rules
from app.automations.statuses import ACTION_TYPES, DAYS, MATCH_MODES, RUN_STATUSES, TRIGGER_TYPES
from app.pagination import ListArgs

MAX_KEYWORDS = 50
MAX_ACTIONS = 10
MAX_TAGS = 50
MAX_COOLDOWN = 30 * 24 * 3600
MAX_PRIORITY = 10_000
REPLY_MAX = 4096
TAG = fields.String(validate=validate.Length(min=1, max=64))
ID = fields.String(validate=validate.Length(min=1, max=64))

#: the fields each trigger / action type takes besides ``type`` (required ones first)
TRIGGER_FIELDS = {"keyword": ({"keywords"}, {"match", "case_sensitive"}),
                  "first_message": (set(), {"after_days"}),
                  "outside_hours": ({"hours"}, set())}
ACTION_FIELDS = {"reply": (set(), {"message", "template_id", "variables"}),
                 "tag": (set(), {"add", "remove"}),
                 "webhook": (set(), set()),
                 "assign": ({"user_id"}, set())}


def _check_fields(data: dict, kind: str, table: dict) -> None:
    required, optional = table[kind]
    errors = {name: [f"Required by a {kind} {'trigger' if table is TRIGGER_FIELDS else 'action'}."]
              for name in sorted(required) if data.get(name) is None}
    errors.update({name: [f"Not used by a {kind} {'trigger' if table is TRIGGER_FIELDS else 'action'}."]
                   for name in sorted(set(data) - required - optional - {"type"})})
    if errors:
        raise ma.ValidationError(errors)


class HoursSchema(ma.Schema):
    tz = fields.String(required=True, validate=validate.Length(min=1, max=64),
                       metadata={"description": "IANA time zone of the hours (Europe/Paris, UTC)."})
    days = fields.Dict(
        keys=fields.String(validate=validate.OneOf(DAYS)),
        values=fields.List(fields.List(fields.String(validate=validate.Length(max=5)),
                                       validate=validate.Length(equal=2)),
                           validate=validate.Length(max=10)),
        required=True, metadata={"description": 'Open hours per day: `{"mon": [["09:00", "18:00"]], ...}`; '
                                                "a day not listed is closed. Ends may be 24:00."})
    holidays = fields.List(fields.String(validate=validate.Length(max=10)), validate=validate.Length(max=366),
                           metadata={"description": "Closed all day: dates as YYYY-MM-DD, in the hours' time zone."})

    @validates_schema
    def _hours(self, data, **kwargs):
        problems = rules.hours_problems(data)
        if problems:
            raise ma.ValidationError(problems)


class TriggerSchema(ma.Schema):
    type = fields.String(required=True, validate=validate.OneOf(TRIGGER_TYPES))
    keywords = fields.List(fields.String(validate=validate.Length(min=1, max=rules.MAX_PATTERN)),
                           validate=validate.Length(min=1, max=MAX_KEYWORDS),
                           metadata={"description": "keyword: the words (or, with match regex, the patterns)."})
    match = fields.String(validate=validate.OneOf(MATCH_MODES), metadata={
        "description": "keyword: `exact` (the whole message), `contains` (default) or `regex`."})
    case_sensitive = fields.Boolean(metadata={"description": "keyword: default false."})
    after_days = fields.Integer(validate=validate.Range(1, 3650), allow_none=True, metadata={
        "description": "first_message: also fire on the first message after this many days of silence."})
    hours = fields.Nested(HoursSchema, metadata={"description": "outside_hours: the business hours."})

    @validates_schema
    def _by_type(self, data, **kwargs):
        if data.get("type") not in TRIGGER_FIELDS:
            return
        _check_fields(data, data["type"], TRIGGER_FIELDS)
        if data["type"] == "keyword" and data.get("match") == "regex":
            bad = {i: [problem] for i, k in enumerate(data["keywords"])
                   if (problem := rules.pattern_problem(k)) is not None}
            if bad:
                raise ma.ValidationError({"keywords": bad})


class ActionSchema(ma.Schema):
    type = fields.String(required=True, validate=validate.OneOf(ACTION_TYPES))
    message = fields.String(validate=validate.Length(min=1, max=REPLY_MAX), metadata={
        "description": "reply: the text, with `{{contact.name}}`, `{{attributes.city}}`, `{{message.text}}`..."})
    template_id = fields.String(validate=validate.Length(min=1, max=64),
                                metadata={"description": "reply: send this template instead of a text."})
    variables = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=64)),
                            values=fields.String(validate=validate.Length(max=1024)),
                            validate=validate.Length(max=50),
                            metadata={"description": "reply with a template: its variables, placeholders allowed."})
    add = fields.List(TAG, validate=validate.Length(max=MAX_TAGS), metadata={"description": "tag: tags to add."})
    remove = fields.List(TAG, validate=validate.Length(max=MAX_TAGS),
                         metadata={"description": "tag: tags to remove."})
    user_id = fields.String(validate=validate.Length(min=1, max=64),
                            metadata={"description": "assign: the user the contact is assigned to."})

    @validates_schema
    def _by_type(self, data, **kwargs):
        kind = data.get("type")
        if kind not in ACTION_FIELDS:
            return
        _check_fields(data, kind, ACTION_FIELDS)
        if kind == "reply":
            if bool(data.get("message")) == bool(data.get("template_id")):
                raise ma.ValidationError({"message": ["Give either message or template_id."]})
            if data.get("variables") and not data.get("template_id"):
                raise ma.ValidationError({"variables": ["Only with template_id."]})
        if kind == "tag" and not (data.get("add") or data.get("remove")):
            raise ma.ValidationError({"add": ["Give tags to add or to remove."]})


class ConditionsSchema(ma.Schema):
    client_ids = fields.List(ID, validate=validate.Length(max=50),
                             metadata={"description": "Only messages to one of these clients."})
    tags_any = fields.List(TAG, validate=validate.Length(max=MAX_TAGS),
                           metadata={"description": "The contact has at least one of these tags."})
    tags_all = fields.List(TAG, validate=validate.Length(max=MAX_TAGS),
                           metadata={"description": "The contact has every one of these tags."})
    tags_none = fields.List(TAG, validate=validate.Length(max=MAX_TAGS),
                            metadata={"description": "The contact has none of these tags."})


def _one_way_to_act(data: dict, *, partial: bool) -> None:
    if data.get("action") is not None and data.get("actions") is not None:
        raise ma.ValidationError({"actions": ["Give either action (one) or actions (a list), not both."]})
    if not partial and data.get("action") is None and not data.get("actions"):
        raise ma.ValidationError({"actions": ["Give action or actions."]})


class AutomationCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    client_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64),
                              metadata={"description": "Only messages to this client; null: every client."})
    trigger = fields.Nested(TriggerSchema, required=True)
    conditions = fields.Nested(ConditionsSchema, load_default=dict)
    action = fields.Nested(ActionSchema, metadata={"description": "One action (the same as `actions: [action]`)."})
    actions = fields.List(fields.Nested(ActionSchema), validate=validate.Length(min=1, max=MAX_ACTIONS),
                          metadata={"description": "The actions, run in order."})
    enabled = fields.Boolean(load_default=True)
    priority = fields.Integer(load_default=100, validate=validate.Range(0, MAX_PRIORITY),
                              metadata={"description": "Lower runs first (then older first). Default 100."})
    cooldown_seconds = fields.Integer(load_default=60, validate=validate.Range(0, MAX_COOLDOWN), metadata={
        "description": "After firing for a contact, skip that contact this long. Default 60."})
    stop_processing = fields.Boolean(load_default=False, metadata={
        "description": "When it fires, the automations after it do not run for that message."})

    @validates_schema
    def _actions(self, data, **kwargs):
        _one_way_to_act(data, partial=False)


class AutomationUpdateSchema(ma.Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    client_id = fields.String(allow_none=True, validate=validate.Length(max=64))
    trigger = fields.Nested(TriggerSchema)
    conditions = fields.Nested(ConditionsSchema)
    action = fields.Nested(ActionSchema, metadata={"description": "Replaces the actions with this one."})
    actions = fields.List(fields.Nested(ActionSchema), validate=validate.Length(min=1, max=MAX_ACTIONS),
                          metadata={"description": "Replaces the actions."})
    enabled = fields.Boolean()
    priority = fields.Integer(validate=validate.Range(0, MAX_PRIORITY))
    cooldown_seconds = fields.Integer(validate=validate.Range(0, MAX_COOLDOWN))
    stop_processing = fields.Boolean()

    @validates_schema
    def _actions(self, data, **kwargs):
        _one_way_to_act(data, partial=True)


class AutomationSchema(ma.Schema):
    id = fields.String()
    name = fields.String()
    client_id = fields.String(allow_none=True)
    trigger = fields.Nested(TriggerSchema)
    conditions = fields.Nested(ConditionsSchema)
    action = fields.Nested(ActionSchema, metadata={"description": "The first of `actions`."})
    actions = fields.List(fields.Nested(ActionSchema))
    enabled = fields.Boolean()
    priority = fields.Integer()
    cooldown_seconds = fields.Integer()
    stop_processing = fields.Boolean()
    fire_count = fields.Integer(metadata={"description": "How many times it fired."})
    last_fired_at = fields.DateTime(allow_none=True)
    created_by = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class AutomationListArgs(ListArgs):
    enabled = fields.Boolean(load_default=None, allow_none=True)
    client_id = fields.String(load_default=None, validate=validate.Length(max=64))
    trigger_type = fields.String(load_default=None, validate=validate.OneOf(TRIGGER_TYPES))


class ActionResultSchema(ma.Schema):
    type = fields.String()
    status = fields.String(metadata={"description": "done, skipped or failed."})
    detail = fields.String(allow_none=True, metadata={"description": "Why it was skipped or failed."})
    message_id = fields.String(allow_none=True, metadata={"description": "reply: the message sent."})


class AutomationRunSchema(ma.Schema):
    id = fields.Integer()
    automation_id = fields.String()
    status = fields.String(metadata={"description": ", ".join(RUN_STATUSES) + "."})
    reason = fields.String(allow_none=True, metadata={
        "description": "skipped: conditions, cooldown, reply_limit, stopped or opted_out; failed: regex_timeout or "
                       "actions_failed."})
    trigger_message_id = fields.String(allow_none=True)
    reply_message_id = fields.String(allow_none=True)
    contact_id = fields.String(allow_none=True)
    client_id = fields.String(allow_none=True)
    actions = fields.List(fields.Nested(ActionResultSchema))
    created_at = fields.DateTime()


class AutomationRunListArgs(ListArgs):
    status = fields.String(load_default=None, validate=validate.OneOf(RUN_STATUSES))
