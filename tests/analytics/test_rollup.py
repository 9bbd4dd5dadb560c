"""The rollups: a generated history rolled up equals a direct count over the messages; runs are
idempotent, concurrent runs never double count, a row committed late under a smaller id is not
missed, and the backfill gives the same numbers (replacing, not adding)."""
from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from app.analytics.models import AnalyticsDaily, AnalyticsHourly, AnalyticsTotalsDaily, AnalyticsTotalsHourly
from app.analytics.rollup import RESPONSE_BOUNDS, backfill_day, response_percentile, run_rollup
from app.messages.models import Message
from app.messages.tracking import apply_ack
from config import settings
from tests import factories as f

BASE = datetime(2026, 11, 2, 22, 10, tzinfo=UTC)  # two UTC days: the hours cross midnight
COUNTS = ("sent", "delivered", "read", "failed", "received", "replied", "opted_out", "response_count",
          "delivery_count", "read_count")
SUMS = ("response_seconds_sum", "delivery_seconds_sum", "read_seconds_sum")


def _outbound(session, client, contact, at, *, campaign=None, key=None):
    m = f.make_message(session, client_id=client.id, contact_id=contact.id, to_phone=contact.phone, status="sent",
                       created_at=at, queued_at=at, sent_at=at + timedelta(seconds=2), external_id=f"ext-{f._n()}",
                       campaign_id=campaign.id if campaign else None, idempotency_key=key)
    f.make_message_status_history(session, message_id=m.id, status="sent", at=m.sent_at)
    return m


def _inbound(session, client, contact, at):
    m = f.make_message(session, client_id=client.id, contact_id=contact.id, direction="inbound",
                       from_phone=contact.phone, to_phone=client.phone, created_at=at)
    f.make_message_status_history(session, message_id=m.id, status="received", at=at)
    return m


def _ack(session, m, status, seconds, code=None):
    apply_ack(session, m.client_id, m.external_id, status, {"code": code} if code else None,
              m.created_at + timedelta(seconds=seconds))


def history(session):
    """Two clients, a campaign, replies, failures with codes, out-of-order acks, an opt-out."""
    org = f.make_organization(session)
    c1 = f.make_client(session, organization_id=org.id, status="ready", phone="+15550000001")
    c2 = f.make_client(session, organization_id=org.id, status="ready", phone="+15550000002")
    campaign = f.make_campaign(session, organization_id=org.id)
    people = [f.make_contact(session, organization_id=org.id) for _ in range(4)]
    late = []
    for n in range(12):
        client = (c1, c2)[n % 2]
        contact = people[n % 4]
        at = BASE + timedelta(minutes=17 * n)
        m = _outbound(session, client, contact, at, campaign=campaign if n % 3 == 0 else None)
        if n % 5 == 4:
            _ack(session, m, "failed", 5, code=("131026", "131049")[n % 2])
        elif n % 4 == 1:
            _ack(session, m, "read", 30)  # read before delivered
            _ack(session, m, "delivered", 40)
        elif n % 4 == 2:
            _ack(session, m, "delivered", 10)
            late.append(m)
        else:
            _ack(session, m, "delivered", 8)
            _ack(session, m, "read", 90)
        if n % 3 != 2:
            _inbound(session, client, contact, at + timedelta(minutes=5 + n))  # a reply
    # a contact who writes first, is answered later, then opts out
    stranger = f.make_contact(session, organization_id=org.id)
    first = _inbound(session, c1, stranger, BASE + timedelta(hours=3))
    _outbound(session, c1, stranger, first.created_at + timedelta(minutes=42))
    stop = _inbound(session, c1, stranger, BASE + timedelta(hours=4))
    _outbound(session, c1, stranger, stop.created_at + timedelta(seconds=1), key=f"opt-out:{stop.id}")
    # an inbound too late for its reply to count (outside the window)
    _inbound(session, c2, stranger, BASE - timedelta(days=3))
    _outbound(session, c2, stranger, BASE - timedelta(days=3) + timedelta(seconds=settings.ANALYTICS_REPLY_WINDOW + 5))
    session.flush()
    return org, late


def expected(session, org_id):
    """The buckets counted directly over the messages, in Python."""
    session.expire_all()  # what other sessions committed
    msgs = list(session.scalars(select(Message).where(Message.organization_id == org_id)))
    window = timedelta(seconds=settings.ANALYTICS_REPLY_WINDOW)
    hourly: dict = defaultdict(lambda: defaultdict(float))
    for m in msgs:
        b = hourly[(m.client_id, m.campaign_id or "", m.created_at.astimezone(UTC).replace(minute=0, second=0,
                                                                                         microsecond=0))]
        chat = [o for o in msgs if o.client_id == m.client_id and o.contact_id == m.contact_id and o is not m
                and m.created_at < o.created_at <= m.created_at + window]
        if m.direction == "inbound":
            b["received"] += 1
            answers = [o.created_at for o in chat if o.direction == "outbound"]
            if answers:
                b["response_count"] += 1
                seconds = (min(answers) - m.created_at).total_seconds()
                b["response_seconds_sum"] += seconds
                lower = max(bound for bound in RESPONSE_BOUNDS if bound <= seconds)
                b.setdefault("response_buckets", defaultdict(int))[str(lower)] += 1
            continue
        b["sent"] += bool(m.sent_at or m.delivered_at or m.read_at)
        b["delivered"] += bool(m.delivered_at or m.read_at)
        b["read"] += bool(m.read_at)
        b["replied"] += any(o.direction == "inbound" for o in chat)
        b["opted_out"] += (m.idempotency_key or "").startswith("opt-out:")
        if m.status == "failed":
            b["failed"] += 1
            b.setdefault("failures", defaultdict(int))[m.error_code] += 1
        if m.sent_at and m.delivered_at:
            b["delivery_count"] += 1
            b["delivery_seconds_sum"] += (m.delivered_at - m.sent_at).total_seconds()
        if m.sent_at and m.read_at:
            b["read_count"] += 1
            b["read_seconds_sum"] += (m.read_at - m.sent_at).total_seconds()
    return {k: _numbers(v) for k, v in hourly.items()}


def _numbers(row) -> tuple:
    get = row.get if isinstance(row, dict) else lambda k, d=0: getattr(row, k)
    failures = {k: int(v) for k, v in dict(get("failures", {}) or {}).items()}
    buckets = {k: int(v) for k, v in dict(get("response_buckets", {}) or {}).items()}
    return (tuple(int(get(k, 0)) for k in COUNTS) + tuple(round(float(get(k, 0)), 3) for k in SUMS)
            + (tuple(sorted(failures.items())), tuple(sorted(buckets.items()))))


def rolled_hourly(session, org_id):
    rows = session.scalars(select(AnalyticsHourly).where(AnalyticsHourly.organization_id == org_id))
    return {(r.client_id, r.campaign_id, r.bucket.astimezone(UTC)): _numbers(r) for r in rows}


def rolled_daily(session, org_id):
    rows = session.scalars(select(AnalyticsDaily).where(AnalyticsDaily.organization_id == org_id))
    return {(r.client_id, r.campaign_id, r.bucket): _numbers(r) for r in rows}


def _merge(into: dict, key, numbers: tuple) -> None:
    """Add ``numbers`` (a _numbers tuple) to ``into[key]``."""
    prev = into.get(key)
    if prev is None:
        into[key] = numbers
        return
    n = len(COUNTS) + len(SUMS)
    merged = [a + b for a, b in zip(prev[:n], numbers[:n], strict=True)]
    jsons = []
    for part in (n, n + 1):
        counts: dict = defaultdict(int)
        for k, v in prev[part] + numbers[part]:
            counts[k] += v
        jsons.append(tuple(sorted(counts.items())))
    into[key] = tuple(int(x) for x in merged[:len(COUNTS)]) + tuple(round(x, 3) for x in merged[len(COUNTS):]) \
        + tuple(jsons)


def totals_of(buckets: dict, day: bool = False) -> dict:
    """The totals rows the rollups' buckets give: per (client, bucket) and per ('', bucket), campaigns summed."""
    out: dict = {}
    for (client, _campaign, bucket), numbers in buckets.items():
        when = bucket if not day or not isinstance(bucket, datetime) else bucket.date()
        _merge(out, (client, when), numbers)
        _merge(out, ("", when), numbers)
    return out


def rolled_totals(session, org_id, model) -> dict:
    rows = session.scalars(select(model).where(model.organization_id == org_id))
    return {(r.client_id, r.bucket.astimezone(UTC) if isinstance(r.bucket, datetime) else r.bucket): _numbers(r)
            for r in rows}


def daily_of(hourly: dict) -> dict:
    days: dict = {}
    for (client, campaign, hour), numbers in hourly.items():
        _merge(days, (client, campaign, hour.date()), numbers)
    return days


def test_a_rollup_equals_a_direct_count_and_a_late_read_updates_the_message_hour(session):
    org, late = history(session)
    assert run_rollup(session).ran
    want = expected(session, org.id)
    assert rolled_hourly(session, org.id) == want
    assert rolled_daily(session, org.id) == daily_of(want)
    assert rolled_totals(session, org.id, AnalyticsTotalsHourly) == totals_of(want)
    assert rolled_totals(session, org.id, AnalyticsTotalsDaily) == totals_of(daily_of(want))
    total = sum(v[COUNTS.index("failed")] for v in want.values())
    assert total == 2 and sum(v[COUNTS.index("opted_out")] for v in want.values()) == 1

    for m in late:  # read three days later: counted in the message's own hour
        _ack(session, m, "read", 3 * 86400)
    session.flush()
    run_rollup(session)
    want_late = expected(session, org.id)
    assert want_late != want
    assert rolled_hourly(session, org.id) == want_late
    assert rolled_daily(session, org.id) == daily_of(want_late)
    assert rolled_totals(session, org.id, AnalyticsTotalsHourly) == totals_of(want_late)
    assert rolled_totals(session, org.id, AnalyticsTotalsDaily) == totals_of(daily_of(want_late))


def test_running_the_rollup_twice_changes_nothing(session):
    org, _ = history(session)
    run_rollup(session)
    first = rolled_hourly(session, org.id), rolled_daily(session, org.id)
    ids = set(session.scalars(select(AnalyticsHourly.id).where(AnalyticsHourly.organization_id == org.id)))
    run_rollup(session)
    run_rollup(session)
    assert (rolled_hourly(session, org.id), rolled_daily(session, org.id)) == first
    assert len(ids) == len(first[0])


def everything(session, org_id) -> tuple:
    return (rolled_hourly(session, org_id), rolled_daily(session, org_id),
            rolled_totals(session, org_id, AnalyticsTotalsHourly), rolled_totals(session, org_id, AnalyticsTotalsDaily))


def test_backfill_gives_the_same_numbers_and_replaces_what_was_there(session):
    org, _ = history(session)
    run_rollup(session)
    want = everything(session, org.id)
    assert want[2] and want[3]
    client_id = next(iter(want[0]))[0]
    stray = f.make_analytics_hourly(session, organization_id=org.id, client_id=client_id,
                                    bucket=BASE.replace(minute=0) + timedelta(hours=20), sent=99)
    f.make_analytics_totals_hourly(session, organization_id=org.id, bucket=stray.bucket, sent=99)
    days = sorted({d for _, _, d in want[1]})
    for day in days:  # on top of the rollup's rows: replaced, not added
        backfill_day(session, day)
    backfill_day(session, stray.bucket.date())
    assert everything(session, org.id) == want
    for table in ("analytics_hourly", "analytics_daily", "analytics_totals_hourly", "analytics_totals_daily"):
        session.execute(text(f"DELETE FROM {table} WHERE organization_id = :o"), {"o": org.id})
    for day in days:
        backfill_day(session, day, org.id)
    assert everything(session, org.id) == want


def test_the_backfill_command(session, capsys):
    from app.__main__ import main

    org, _ = history(session)
    main(["analytics-backfill", "--from", (BASE - timedelta(days=3)).date().isoformat(),
          "--to", (BASE + timedelta(days=1)).date().isoformat(), "--org", org.id])
    assert rolled_hourly(session, org.id) == expected(session, org.id)
    assert "done:" in capsys.readouterr().out


def test_two_rollups_at_the_same_time_never_double_count(committed, engine):
    from app import db as app_db

    org, _ = history(committed)
    committed.commit()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run():
        s = app_db.SessionFactory(bind=engine)
        try:
            barrier.wait()
            run_rollup(s)
            s.commit()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    run_rollup(committed)  # whichever skipped, one more run changes nothing
    committed.commit()
    want = expected(committed, org.id)
    assert rolled_hourly(committed, org.id) == want
    assert rolled_daily(committed, org.id) == daily_of(want)


def test_a_status_committed_late_under_a_smaller_id_is_still_counted(committed, engine):
    from app import db as app_db

    org, late = history(committed)
    committed.commit()
    run_rollup(committed)
    committed.commit()
    slow = app_db.SessionFactory(bind=engine)
    fast = app_db.SessionFactory(bind=engine)
    try:
        m1, m2 = (slow.get(Message, late[0].id), fast.get(Message, late[1].id))
        _ack(slow, m1, "read", 3600)  # takes the smaller history id, commits last
        slow.flush()
        _ack(fast, m2, "read", 3600)
        fast.commit()
        run_rollup(committed)  # sees the larger id only
        committed.commit()
        slow.commit()
    finally:
        slow.close()
        fast.close()
    run_rollup(committed)
    committed.commit()
    assert rolled_hourly(committed, org.id) == expected(committed, org.id)


def test_the_rollup_is_a_periodic_job():
    import jobs  # noqa: F401
    from jobs.periodic import PERIODIC

    assert [p.every_s for p in PERIODIC if p.actor_name == "analytics.rollup"] == [settings.ANALYTICS_ROLLUP_EVERY]


def test_the_actor_runs_a_rollup(session):
    from jobs.analytics import rollup

    org, _ = history(session)
    rollup.fn()
    assert rolled_hourly(session, org.id) == expected(session, org.id)


def test_the_response_percentile_is_read_inside_the_bucket_it_falls_in():
    assert response_percentile({}, 0.9) is None
    assert response_percentile({"60": 10}, 0.5) == 75.0  # half way through [60, 90)
    # 90 in [0, 5), 10 in [300, 600): the 90th of 100 is the last of the first bucket
    assert response_percentile({"0": 90, "300": 10}, 0.9) == 5.0
    assert response_percentile({"0": 89, "300": 11}, 0.9) == round(300 + 300 * (1 / 11), 1)
    assert response_percentile({"604800": 3}, 0.9) == 604800.0  # the last bucket has no upper bound
