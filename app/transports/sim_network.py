"""The simulated WhatsApp network's memory, in Redis (``wa:sim:<client_id>:*``), shared by every
process: sessions, the phone's link, injected faults (bans, refused reconnects, failing sends) and
every send by message id. The transport that drives it is app/transports/sim.py.
"""
from __future__ import annotations

import secrets
import time

from app.kv import redis_client

#: how long the simulated network remembers a client it has not heard of
NETWORK_TTL_S = 7 * 24 * 3600


def now_ms() -> int:
    """The simulator's clock (epoch ms)."""
    return int(time.time() * 1000)


class SimNetwork:
    """The simulated WhatsApp network's memory of one client, in Redis (shared by every process)."""

    PREFIX = "wa:sim:"

    _TAKE_ONE = """
    local n = tonumber(redis.call('GET', KEYS[1]) or '0')
    if n <= 0 then return 0 end
    redis.call('DECR', KEYS[1])
    return 1
    """

    # One round trip per send: take an injected fault, or see the ban, or (unless the recipient
    # is not on the network) count the arrival. Returns {outcome, detail}.
    _SEND = """
    local n = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
    if n > 0 then
        local permanent = redis.call('HGET', KEYS[1], 'permanent') or '0'
        if n == 1 then redis.call('DEL', KEYS[1]) else redis.call('HINCRBY', KEYS[1], 'count', -1) end
        return {'fault', permanent}
    end
    if redis.call('EXISTS', KEYS[2]) == 1 then return {'banned', ''} end
    if ARGV[2] == '1' then return {'not_on_network', ''} end
    local times = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
    redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[3])
    redis.call('INCR', KEYS[5])
    for i = 3, 5 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
    return {'arrived', tostring(times)}
    """

    def __init__(self, client_id: str, redis=None):

        self.client_id = client_id
        self.redis = redis if redis is not None else redis_client()

    def key(self, name: str) -> str:
        return f"{self.PREFIX}{self.client_id}:{name}"

    # -- sessions ---------------------------------------------------------------------------

    def new_session(self) -> tuple[str, int]:
        """Start a session: a new token (older sessions' reports become stale) and its number."""
        token = secrets.token_hex(8)
        pipe = self.redis.pipeline()
        pipe.set(self.key("session"), token, ex=NETWORK_TTL_S)
        pipe.incr(self.key("starts"))
        pipe.expire(self.key("starts"), NETWORK_TTL_S)
        _, number, _ = pipe.execute()
        return token, int(number)

    def session(self) -> str | None:
        raw = self.redis.get(self.key("session"))
        return raw.decode() if raw else None  # type: ignore[union-attr]  # redis-py types replies bytes | str: ours are bytes

    def end_session(self, *, forget_login: bool) -> None:
        """Close the live session; keep the login unless told (or unless the QR was not scanned yet)."""
        pipe = self.redis.pipeline()
        pipe.delete(self.key("session"))
        linked_at = self.redis.get(self.key("linked_at"))
        if forget_login or (linked_at and int(linked_at) > now_ms()):
            pipe.delete(self.key("linked_at"))
        pipe.execute()

    def link_at(self, epoch_ms: int) -> None:
        self.redis.set(self.key("linked_at"), epoch_ms, ex=NETWORK_TTL_S)

    def linked(self) -> bool:
        raw = self.redis.get(self.key("linked_at"))
        return bool(raw) and int(raw) <= now_ms()

    # -- faults -----------------------------------------------------------------------------

    def ban(self) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self.key("banned"), 1, ex=NETWORK_TTL_S)
        pipe.delete(self.key("linked_at"))
        pipe.execute()

    def banned(self) -> bool:
        return bool(self.redis.exists(self.key("banned")))

    def refuse_reconnects(self, count: int) -> None:
        if count > 0:
            self.redis.set(self.key("refuse"), count, ex=NETWORK_TTL_S)
        else:
            self.redis.delete(self.key("refuse"))

    def take_refusal(self) -> bool:
        return bool(self.redis.eval(self._TAKE_ONE, 1, self.key("refuse")))

    def fail_next(self, count: int, permanent: bool) -> None:
        self.redis.hset(self.key("fail_next"), mapping={"count": count, "permanent": int(permanent)})
        self.redis.expire(self.key("fail_next"), NETWORK_TTL_S)

    def clear_faults(self) -> None:
        self.redis.delete(self.key("banned"), self.key("refuse"), self.key("fail_next"))

    def faults(self) -> dict:
        pipe = self.redis.pipeline()
        pipe.exists(self.key("banned"))
        pipe.get(self.key("refuse"))
        pipe.hgetall(self.key("fail_next"))
        banned, refuse, fail_next = pipe.execute()
        fail_next = {k.decode(): int(v) for k, v in fail_next.items()}
        return {"banned": bool(banned), "refuse_reconnects": int(refuse or 0),
                "fail_next": fail_next.get("count", 0), "fail_next_permanent": bool(fail_next.get("permanent", 0))}

    # -- traffic ----------------------------------------------------------------------------

    def send(self, message_id: str, *, not_on_network: bool) -> tuple[str, str]:
        """A send reaching the network, in one round trip: ``("fault", "1"|"0")`` (an injected fault
        taken, permanent or not), ``("banned", "")``, ``("not_on_network", "")``, or ``("arrived",
        times)`` (counted; how often this message id has arrived)."""
        keys = [self.key(name) for name in ("fail_next", "banned", "ids", "sent_at", "received")]
        outcome, detail = self.redis.eval(self._SEND, len(keys), *keys, message_id, int(not_on_network), now_ms(),
                                          NETWORK_TTL_S)
        return outcome.decode(), detail.decode()

    def record_send(self, message_id: str) -> int:
        """Count a send the network received; returns how often this message id has arrived."""
        now = now_ms()
        pipe = self.redis.pipeline()
        pipe.hincrby(self.key("ids"), message_id, 1)
        pipe.hsetnx(self.key("sent_at"), message_id, now)
        pipe.incr(self.key("received"))
        for name in ("ids", "sent_at", "received"):
            pipe.expire(self.key(name), NETWORK_TTL_S)
        times, *_ = pipe.execute()
        return int(times)

    def sent_at(self, message_id: str) -> int | None:
        raw = self.redis.hget(self.key("sent_at"), message_id)
        return int(raw) if raw else None

    def counts(self) -> dict:
        """``received`` sends, ``distinct`` message ids, ``duplicates`` = extra copies (received - distinct)."""
        pipe = self.redis.pipeline()
        pipe.get(self.key("received"))
        pipe.hlen(self.key("ids"))
        received, distinct = pipe.execute()
        received = int(received or 0)
        return {"received": received, "distinct": int(distinct), "duplicates": received - int(distinct)}
