"""Per-client send pacing, shared by every worker through Redis (ARCHITECTURE "Pacing", rule 8).

Each client has limits: at most ``per_minute`` / ``per_hour`` / ``per_day`` sends in any sliding
window of that length, and a random gap of ``min_gap_ms``..``max_gap_ms`` between two sends. One Lua
script (``pacing.lua``) plans and grants sends atomically, so any number of workers can ask at once.

Two sorted sets per client: the *grants* (sends that happened) and the *reservations* (when each
waiting message should wake up). A message asks with a token (``<message id>:<attempt>``):

* ``acquire(client_id, now_ms, limits, token)`` returns a ``Slot``. The first call reserves a slot:
  the earliest time after every planned and granted send that keeps a random gap and every window.
  Later calls with the same token find the same reservation (a duplicated job waits for the same
  slot). At or after its slot the call *grants* the send if the grants allow one now (gap since the
  last grant, room in every window); the grant is recorded under a unique member (``Slot.member``),
  so a duplicate job can neither take it again nor erase it. If the grants do not allow it yet (the
  job came late and another send went first), its reservation moves to the first moment they do:
  a late message keeps its place instead of going to the back of the queue.
* A message that is not due waits in the broker with ``delay = slot - now`` (no thread sleeps).
* ``release(client_id, member)`` gives back a reservation, or a grant that did not lead to a send.

The limits are checked on the grants, i.e. on the sends themselves, with a pad (``call_pad_ms``,
half of ``PACING_SLACK_MS``) added to the gap and the windows: it covers the moments between a
grant and the transport call (the claim, or the hand-over to a session host), so the transport
calls keep the limits exactly; a send not made within it is paced again. The plan uses the whole
``PACING_SLACK_MS``, so a send that went a little late does not push back the ones after it.

The clock is an interface (``Clock``): tests give the functions explicit ``now_ms`` values.
"""
from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from config import settings

KEY_PREFIX = "wa:pace:"
SCRIPT = (Path(__file__).with_name("pacing.lua")).read_text()


class Clock:
    """Where pacing gets the time from (milliseconds since the epoch)."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)


class FixedClock(Clock):
    """A clock that moves only when told (tests)."""

    def __init__(self, now_ms: int):
        self.value = now_ms

    def now_ms(self) -> int:
        return self.value

    def advance(self, ms: int) -> None:
        self.value += ms


_clock: Clock = Clock()


def now_ms() -> int:
    return _clock.now_ms()


def set_clock(clock: Clock | None) -> None:
    """Replace the process's clock (``None`` restores the system clock)."""
    global _clock
    _clock = clock or Clock()


@dataclass(frozen=True)
class Limits:
    per_minute: int
    per_hour: int
    per_day: int
    min_gap_ms: int
    max_gap_ms: int

    @classmethod
    def of(cls, client) -> Limits | None:
        """The limits of a client row, or None when its pacing is turned off (``config.pacing: false``)."""
        if (getattr(client, "config", None) or {}).get("pacing") is False:
            return None
        return cls(client.per_minute, client.per_hour, client.per_day, client.min_gap_ms,
                   max(client.max_gap_ms, client.min_gap_ms))


@dataclass(frozen=True)
class Slot:
    at_ms: int      # granted: the grant time; else the slot to wait for
    granted: bool   # True: send now; False: wait until at_ms
    member: str     # the sorted-set member holding it (give it to release())


def keys(client_id: str) -> tuple[str, str]:
    """(reservations, grants) of a client; one hash tag, so both live on one Redis Cluster node."""
    return f"{KEY_PREFIX}{{{client_id}}}:r", f"{KEY_PREFIX}{{{client_id}}}:g"


def pad_ms() -> int:
    """Added to the minimum gap and the windows when planning slots."""
    return settings.PACING_SLACK_MS


def call_pad_ms() -> int:
    """Added to the minimum gap and the windows when granting: the time a granted send has to
    reach the transport. Smaller than ``pad_ms`` so a send a little late does not push the next."""
    return settings.PACING_SLACK_MS // 2


def _script(redis):
    script = getattr(redis, "_wa_pacing_script", None)
    if script is None:
        script = redis.register_script(SCRIPT)
        redis._wa_pacing_script = script
    return script


def _redis(redis=None):
    if redis is not None:
        return redis
    from app.kv import redis_client

    return redis_client()


def acquire_many(client_id: str, now: int, limits: Limits, tokens: list[str], *, grant: bool = True,
                 redis=None) -> list[Slot]:
    """One ``Slot`` per token, in order, from one atomic script call. ``grant=False`` only reserves
    (a message accepted now whose job will ask again, and be granted, at its slot)."""
    if not tokens:
        return []
    args: list = [int(now), limits.per_minute, limits.per_hour, limits.per_day, limits.min_gap_ms,
                  limits.max_gap_ms, pad_ms(), secrets.token_hex(6), int(grant), call_pad_ms()]
    for token in tokens:
        args += [token, repr(random.random())]
    rows = _script(_redis(redis))(keys=list(keys(client_id)), args=args)
    return [Slot(int(at), bool(granted), member.decode() if isinstance(member, bytes) else member)
            for at, granted, member in rows]


def acquire(client_id: str, now: int, limits: Limits, token: str, *, redis=None) -> Slot:
    """The slot of ``token``: reserved on first call, granted once due (see the module docstring)."""
    return acquire_many(client_id, now, limits, [token], redis=redis)[0]


def reserve(client_id: str, now: int, limits: Limits, token: str | None = None, *, redis=None) -> int:
    """The earliest time (ms) the next send of this client may happen, reserved (not granted) for ``token``."""
    return acquire_many(client_id, now, limits, [token or secrets.token_hex(8)], grant=False, redis=redis)[0].at_ms


def release(client_id: str, *members: str, redis=None) -> None:
    """Give back reservations, or grants that did not lead to a send."""
    if members:
        r = _redis(redis)
        reserved, granted = keys(client_id)
        pipe = r.pipeline(transaction=False)
        pipe.zrem(reserved, *members)
        pipe.zrem(granted, *members)
        pipe.execute()


def retake(client_id: str, token: str, granted_at_ms: int, *, redis=None) -> None:
    """A send granted at ``granted_at_ms`` that did not reach the transport in time: withdraw the
    grant, and let the message wait again at the head of the plan (due at once): it keeps its place."""
    r = _redis(redis)
    reserved, granted = keys(client_id)
    for member in r.zrangebyscore(granted, granted_at_ms, granted_at_ms):
        member = member.decode() if isinstance(member, bytes) else member
        if member.startswith(token + "!"):
            r.zrem(granted, member)
    r.zadd(reserved, {token: granted_at_ms})


def _members(redis, key_name: str) -> list[tuple[str, int]]:
    rows = redis.zrange(key_name, 0, -1, withscores=True)
    return [(m.decode() if isinstance(m, bytes) else m, int(s)) for m, s in rows]


def reservations(client_id: str, *, redis=None) -> list[tuple[str, int]]:
    """The client's waiting messages and their slots, earliest first: ``[(token, ms)]``."""
    return _members(_redis(redis), keys(client_id)[0])


def grants(client_id: str, *, redis=None) -> list[tuple[str, int]]:
    """The client's recent sends (the last day), oldest first: ``[(member, ms)]``."""
    return _members(_redis(redis), keys(client_id)[1])


def slots(client_id: str, *, redis=None) -> list[tuple[str, int]]:
    """Reservations and grants together, oldest first."""
    return sorted(reservations(client_id, redis=redis) + grants(client_id, redis=redis), key=lambda x: x[1])


def token_for(message_id: str, attempt: int) -> str:
    return f"{message_id}:{attempt}"
