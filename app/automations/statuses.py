"""The vocabularies of automations: trigger types, keyword match modes, action types, run statuses
and the reasons a run records."""
from __future__ import annotations

from typing import Literal, get_args

TriggerType = Literal["keyword", "first_message", "outside_hours"]
TRIGGER_TYPES: tuple[str, ...] = get_args(TriggerType)

MatchMode = Literal["exact", "contains", "regex"]
MATCH_MODES: tuple[str, ...] = get_args(MatchMode)

ActionType = Literal["reply", "tag", "webhook", "assign"]
ACTION_TYPES: tuple[str, ...] = get_args(ActionType)

#: a run: it fired (at least one action did something), was skipped, or every action failed
RunStatus = Literal["fired", "skipped", "failed"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)

#: what one action of a run did
ActionOutcome = Literal["done", "skipped", "failed"]
ACTION_OUTCOMES: tuple[str, ...] = get_args(ActionOutcome)

#: why a run was skipped or failed
SkipReason = Literal["conditions", "cooldown", "reply_limit", "stopped", "opted_out", "regex_timeout",
                     "actions_failed"]
SKIP_REASONS: tuple[str, ...] = get_args(SkipReason)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
