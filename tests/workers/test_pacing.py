"""workers/pacing.py: the per-client plan and grants, on the real Redis, with explicit clocks.

The hard guarantee is on the grants (the sends): ``assert_limits_kept`` checks every gap and every
window on them, with the pad the script adds. Simulated workers run each job at its slot with some
lateness, as the broker would.
"""
import random
import threading

import pytest

from app.messages import pacing
from app.messages.pacing import Limits
from config import settings

T0 = 1_700_000_000_000
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def lim(per_minute=1000, per_hour=100_000, per_day=1_000_000, min_gap_ms=0, max_gap_ms=0) -> Limits:
    return Limits(per_minute, per_hour, per_day, min_gap_ms, max_gap_ms)


def pad() -> int:
    return settings.PACING_SLACK_MS


def call_pad() -> int:
    return pacing.call_pad_ms()


def assert_limits_kept(times: list[int], limits: Limits, extra: int = 0) -> None:
    """Every gap and every window of ``times`` (with ``extra`` added to each)."""
    times = sorted(times)
    if limits.min_gap_ms > 0:
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert min(gaps, default=10**12) >= limits.min_gap_ms + extra, gaps
    for size, limit in ((MIN, limits.per_minute), (HOUR, limits.per_hour), (DAY, limits.per_day)):
        for i in range(len(times) - limit):
            assert times[i + limit] - times[i] >= size + extra, (size, limit, i, times[i], times[i + limit])


def run_jobs(client_id: str, limits: Limits, tokens: list[str], rng: random.Random, max_late_ms: int,
             start: int = T0) -> dict[str, int]:
    """Simulate the broker and workers: every token's job runs at its slot plus a random lateness,
    asks again when told to wait, until granted. Returns {token: grant time}."""
    pending = {t: s.at_ms for t, s in zip(tokens, pacing.acquire_many(client_id, start, limits, tokens, grant=False))}
    granted = {}
    while pending:
        token = min(pending, key=pending.get)
        now = pending.pop(token) + rng.randint(0, max_late_ms)
        slot = pacing.acquire(client_id, now, limits, token)
        if slot.granted:
            granted[token] = slot.at_ms
        else:
            assert slot.at_ms > now
            pending[token] = slot.at_ms
    return granted


def test_first_send_is_due_at_once_and_the_next_waits_for_a_gap(redis_conn):
    limits = lim(min_gap_ms=2000, max_gap_ms=5000)
    first = pacing.acquire("cli_a", T0, limits, "m1:0")
    assert first.granted and first.at_ms == T0
    second = pacing.acquire("cli_a", T0, limits, "m2:0")
    assert not second.granted
    assert T0 + 2000 + pad() <= second.at_ms <= T0 + 5000
    # asking again (a redelivered job) gives the same reservation, still not due
    again = pacing.acquire("cli_a", T0 + 10, limits, "m2:0")
    assert (again.at_ms, again.granted) == (second.at_ms, False)
    due = pacing.acquire("cli_a", second.at_ms + 5, limits, "m2:0")
    assert due.granted and due.at_ms == second.at_ms + 5 and due.member.startswith("m2:0!")
    assert pacing.reservations("cli_a") == []
    assert [s for _, s in pacing.grants("cli_a")] == [T0, second.at_ms + 5]


def test_a_backlog_keeps_every_limit_and_uses_the_windows_fully(redis_conn):
    limits = lim(per_minute=3, per_hour=10, per_day=25, min_gap_ms=200, max_gap_ms=400)
    plan = pacing.acquire_many("cli_b", T0, limits, [f"m{i}:0" for i in range(60)], grant=False)
    times = [s.at_ms for s in plan]
    assert times == sorted(times) and len(set(times)) == 60
    assert_limits_kept(times, limits, pad())  # the plan already fits
    # the windows are used fully: 3 in the first minute, the 4th as soon as the first leaves its window
    assert times[2] - times[0] <= 2 * max(400, 200 + pad())
    assert times[3] == times[0] + MIN + pad()
    assert times[10] == times[0] + HOUR + pad()
    assert times[25] == times[0] + DAY + pad()
    assert sum(1 for t in times if t < T0 + DAY) == 25


def test_late_jobs_keep_their_place_and_the_sends_keep_the_limits(redis_conn):
    """Jobs up to 2 s late (a loaded worker): every send still keeps the limits, none is pushed to
    the back of the queue, and each window is still filled."""
    limits = lim(per_minute=4, per_hour=1000, per_day=10_000, min_gap_ms=300, max_gap_ms=500)
    tokens = [f"m{i}:0" for i in range(12)]
    granted = run_jobs("cli_late", limits, tokens, random.Random(7), max_late_ms=2000)
    assert len(granted) == 12
    assert_limits_kept(list(granted.values()), limits, call_pad())
    order = sorted(granted, key=granted.get)
    # lateness may swap neighbours (a job that is on time goes before a late one), no more
    assert max(abs(order.index(t) - i) for i, t in enumerate(tokens)) <= 3, order
    sends = sorted(granted.values())
    for k in (4, 8):  # each new minute starts at most the lateness after the window allows it
        assert sends[k] - sends[k - 4] <= MIN + pad() + 2000 + 2 * 500


def test_a_late_job_is_granted_when_the_sends_allow_it(redis_conn):
    limits = lim(min_gap_ms=1000, max_gap_ms=1000)
    a, b, c = pacing.acquire_many("cli_d", T0, limits, ["a:0", "b:0", "c:0"], grant=False)
    assert pacing.acquire("cli_d", T0, limits, "a:0").granted
    # b's job comes 5 s late, before c's: b is sent now (the gap since a is long enough)
    late_b = pacing.acquire("cli_d", b.at_ms + 5000, limits, "b:0")
    assert late_b.granted and late_b.at_ms == b.at_ms + 5000
    # c, due long ago too, comes 10 ms after b: it must keep the gap after b, and waits just that
    c_now = late_b.at_ms + 10
    waiting = pacing.acquire("cli_d", c_now, limits, "c:0")
    assert not waiting.granted and waiting.at_ms == late_b.at_ms + 1000 + call_pad()
    assert pacing.acquire("cli_d", waiting.at_ms, limits, "c:0").granted
    assert_limits_kept([s for _, s in pacing.grants("cli_d")], limits, call_pad())


def test_reservations_work_across_days_and_old_points_are_forgotten(redis_conn):
    limits = lim(per_minute=10, per_hour=50, per_day=100)
    day1 = pacing.acquire_many("cli_c", T0, limits, [f"a{i}:0" for i in range(100)], grant=False)
    assert max(s.at_ms for s in day1) < T0 + DAY
    nxt = pacing.acquire("cli_c", T0 + 1000, limits, "late:0")
    assert nxt.at_ms == day1[0].at_ms + DAY + pad()
    for s, i in zip(day1, range(100)):
        pacing.acquire("cli_c", s.at_ms, limits, f"a{i}:0")
    assert len(pacing.grants("cli_c")) == 100
    pacing.release("cli_c", "late:0")
    # two days later every old send has left the day window and is removed from Redis
    later = pacing.acquire("cli_c", T0 + 3 * DAY, limits, "b:0")
    assert later.granted and later.at_ms == T0 + 3 * DAY
    assert len(pacing.slots("cli_c")) == 1
    ttl = redis_conn.pttl(pacing.keys("cli_c")[1])
    assert DAY < ttl <= DAY + pad() + 60_000


def test_a_duplicate_job_cannot_take_or_erase_a_grant(redis_conn):
    limits = lim(min_gap_ms=1000, max_gap_ms=1000)
    first = pacing.acquire("cli_e", T0, limits, "m:0")
    assert first.granted
    dup = pacing.acquire("cli_e", T0, limits, "m:0")  # the same message again, at the same moment
    assert not dup.granted and dup.at_ms > T0
    # the duplicate finds the message already claimed and gives its reservation back
    pacing.release("cli_e", dup.member)
    assert pacing.slots("cli_e") == [(first.member, T0)]


def test_release_frees_capacity(redis_conn):
    limits = lim(per_minute=2)
    a, b = pacing.acquire_many("cli_f", T0, limits, ["a:0", "b:0"])
    assert a.granted and b.granted
    c = pacing.acquire("cli_f", T0, limits, "c:0")
    assert c.at_ms == T0 + MIN + pad()
    pacing.release("cli_f", b.member, "c:0")  # b's claim failed (cancelled): not a send
    d = pacing.acquire("cli_f", T0 + 1, limits, "d:0")
    assert d.granted and d.at_ms == T0 + 1


def test_clients_are_independent(redis_conn):
    limits = lim(per_minute=2, min_gap_ms=3000, max_gap_ms=3000)
    backlog = pacing.acquire_many("cli_busy", T0, limits, [f"m{i}:0" for i in range(50)], grant=False)
    assert backlog[-1].at_ms > T0 + 20 * MIN
    other = pacing.acquire("cli_idle", T0, limits, "x:0")
    assert other.granted and other.at_ms == T0


def test_concurrent_workers_never_exceed_the_limits(redis_conn):
    """Threads granting at once, with clocks a little apart: the sends still keep every limit."""
    limits = lim(per_minute=7, per_hour=40, per_day=1000, min_gap_ms=300, max_gap_ms=900)
    tokens = [f"w{i}:0" for i in range(80)]
    plan = dict(zip(tokens, (s.at_ms for s in pacing.acquire_many("cli_g", T0, limits, tokens, grant=False))))
    lock, granted = threading.Lock(), []

    def worker(mine: list[str], seed: int):
        rng = random.Random(seed)
        pending = {t: plan[t] for t in mine}
        while pending:
            token = min(pending, key=pending.get)
            slot = pacing.acquire("cli_g", pending.pop(token) + rng.randint(0, 800), limits, token)
            if slot.granted:
                with lock:
                    granted.append(slot.at_ms)
            else:
                pending[token] = slot.at_ms

    threads = [threading.Thread(target=worker, args=(tokens[n::8], n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 80
    assert_limits_kept(granted, limits, 0)
    assert sorted(granted) == sorted(s for _, s in pacing.grants("cli_g"))


def test_random_limits_property(redis_conn):
    """Whatever the limits, the order and the lateness, the sends keep the limits (with the pad)."""
    rng = random.Random(42)
    for n in range(10):
        min_gap = rng.choice([0, 0, 100, 2000])
        limits = lim(per_minute=rng.randint(1, 8), per_hour=rng.randint(5, 60), per_day=rng.randint(20, 120),
                     min_gap_ms=min_gap, max_gap_ms=min_gap + rng.choice([0, 50, 3000]))
        granted = run_jobs(f"cli_p{n}", limits, [f"m{i}:0" for i in range(40)], rng,
                           max_late_ms=rng.choice([0, 300, 5000]))
        assert len(granted) == 40
        assert_limits_kept(list(granted.values()), limits, call_pad())


def test_a_slot_reserved_at_intake_is_granted_to_the_job_at_its_time(redis_conn):
    limits = lim(min_gap_ms=1000, max_gap_ms=1000)
    a, b = pacing.acquire_many("cli_h", T0, limits, ["a:0", "b:0"], grant=False)
    assert (a.at_ms, a.granted, b.granted) == (T0, False, False)
    assert pacing.reserve("cli_h", T0, limits, "b:0") == b.at_ms  # idempotent
    job_a = pacing.acquire("cli_h", T0 + 40, limits, "a:0")
    assert job_a.granted and job_a.at_ms == T0 + 40
    assert not pacing.acquire("cli_h", T0 + 50, limits, "b:0").granted
    # a went 40 ms after its slot: within the plan's margin, b still goes at its slot
    assert pacing.acquire("cli_h", b.at_ms + 1, limits, "b:0").granted


def test_a_send_late_by_more_than_the_margin_moves_the_next_one(redis_conn):
    limits = lim(min_gap_ms=1000, max_gap_ms=1000)
    a, b = pacing.acquire_many("cli_i", T0, limits, ["a:0", "b:0"], grant=False)
    assert pacing.acquire("cli_i", T0 + 900, limits, "a:0").granted  # a went 900 ms late
    moved = pacing.acquire("cli_i", b.at_ms, limits, "b:0")
    assert not moved.granted and moved.at_ms == T0 + 900 + 1000 + call_pad()
    assert pacing.acquire("cli_i", moved.at_ms, limits, "b:0").granted


@pytest.mark.parametrize("config,expected", [({}, True), ({"pacing": True}, True), ({"pacing": False}, False)])
def test_pacing_can_be_turned_off_per_client(config, expected):
    class Row:
        per_minute, per_hour, per_day, min_gap_ms, max_gap_ms = 20, 100, 1000, 2000, 5000

    row = Row()
    row.config = config
    assert (Limits.of(row) is not None) is expected


def test_fixed_clock():
    clock = pacing.FixedClock(T0)
    pacing.set_clock(clock)
    try:
        assert pacing.now_ms() == T0
        clock.advance(1500)
        assert pacing.now_ms() == T0 + 1500
    finally:
        pacing.set_clock(None)
    assert abs(pacing.now_ms() - T0) > 1000
