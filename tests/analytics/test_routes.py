"""/api/analytics: overview, time series and exports, from the rollups; who may see what."""
from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from app.analytics.exports import MESSAGE_COLUMNS, ROLLUP_COLUMNS
from app.analytics.rollup import response_percentile, run_rollup
from tests import factories as f
from tests.analytics.test_rollup import BASE, _outbound, expected, history
from tests.auth_helpers import principal_headers


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


FROM = _iso(BASE - timedelta(days=4))
TO = _iso(BASE + timedelta(days=2))


@pytest.fixture
def data(session):
    org, _ = history(session)
    run_rollup(session)
    return org


def _totals(session, org_id, client_id=None, campaign_id=None, start=None, end=None):
    out: dict = {}
    for (client, campaign, hour), numbers in expected(session, org_id).items():
        if (client_id and client != client_id) or (campaign_id is not None and campaign != campaign_id):
            continue
        if (start and hour < start) or (end and hour >= end):
            continue
        for name, value in zip(("sent", "delivered", "read", "failed", "received", "replied", "opted_out"),
                               numbers, strict=False):
            out[name] = out.get(name, 0) + value
    return out


def test_the_overview_equals_the_messages_counted(client, session, data):
    headers = principal_headers(session, data, "viewer")
    r = client.get(f"/api/analytics/overview?from={FROM}&to={TO}", headers=headers)
    assert r.status_code == 200, r.json
    body = r.json
    want = _totals(session, data.id)
    assert {k: body[k] for k in want} == want
    assert body["delivery_rate"] == round(want["delivered"] / want["sent"], 4)
    assert body["reply_rate"] == round(want["replied"] / want["sent"], 4)
    assert body["avg_response_seconds"] > 0
    buckets: dict = {}
    for numbers in expected(session, data.id).values():
        for lower, n in numbers[-1]:
            buckets[lower] = buckets.get(lower, 0) + n
    assert sum(buckets.values()) > 5
    assert body["p90_response_seconds"] == response_percentile(buckets, 0.9)
    p90_bucket = max(float(b) for b in buckets)  # the history's slowest answers (42 min) are its top tenth
    assert p90_bucket <= body["p90_response_seconds"] < p90_bucket * 1.5
    assert sorted((x["code"], x["count"]) for x in body["top_failures"]) == [("131026", 1), ("131049", 1)]


def test_the_overview_of_a_client_and_of_a_campaign(client, session, data):
    headers = principal_headers(session, data, "manager")
    client_id, campaign_id = session.execute(text(
        "SELECT client_id, campaign_id FROM analytics_hourly WHERE organization_id = :o AND campaign_id <> '' LIMIT 1"),
        {"o": data.id}).one()
    r = client.get(f"/api/analytics/overview?from={FROM}&to={TO}&client_id={client_id}", headers=headers)
    assert r.json["sent"] == _totals(session, data.id, client_id)["sent"]
    r = client.get(f"/api/analytics/overview?from={FROM}&to={TO}&campaign_id={campaign_id}", headers=headers)
    assert r.json["sent"] == _totals(session, data.id, campaign_id=campaign_id)["sent"] > 0


def test_whole_days_read_the_daily_rollups_with_the_same_numbers(client, session, data):
    headers = principal_headers(session, data, "viewer")
    day_from, day_to = (BASE - timedelta(days=4)).date(), (BASE + timedelta(days=2)).date()
    r = client.get(f"/api/analytics/overview?from={day_from}T00:00:00Z&to={day_to}T00:00:00Z", headers=headers)
    want = _totals(session, data.id)
    assert {k: r.json[k] for k in want} == want
    session.execute(text("UPDATE analytics_totals_daily SET sent = sent + 1000 WHERE organization_id = :o"
                         " AND client_id = ''"), {"o": data.id})
    r = client.get(f"/api/analytics/overview?from={day_from}T00:00:00Z&to={day_to}T00:00:00Z", headers=headers)
    assert r.json["sent"] > 1000  # read from the organisation's daily totals, not from messages


@pytest.mark.parametrize("hours_in, hours_out", [(1, 1), (22, 23), (0, 2), (3, 0)])
def test_a_range_is_its_whole_days_and_the_hours_around_them(client, session, data, hours_in, hours_out):
    """[from, to) = the hours after `from` up to midnight, the whole days, the hours after the last midnight."""
    headers = principal_headers(session, data, "viewer")
    midnight = BASE.replace(hour=0, minute=0)
    start, end = midnight + timedelta(hours=hours_in), midnight + timedelta(days=1, hours=hours_out)
    for scope in ("", "&client_id=" + next(iter(expected(session, data.id)))[0]):
        r = client.get(f"/api/analytics/overview?from={_iso(start)}&to={_iso(end)}{scope}", headers=headers)
        want = _totals(session, data.id, scope.partition("=")[2] or None, start=start, end=end)
        assert {k: r.json[k] for k in want} == want and want["sent"] > 0, (start, end, scope)


def test_an_agent_sees_only_assigned_clients(client, session, data):
    clients = sorted({r[0] for r in session.execute(text(
        "SELECT client_id FROM analytics_hourly WHERE organization_id = :o"), {"o": data.id})})
    headers = principal_headers(session, data, "agent", client_ids=[clients[0]])
    r = client.get(f"/api/analytics/overview?from={FROM}&to={TO}", headers=headers)
    assert r.json["sent"] == _totals(session, data.id, clients[0])["sent"]
    r = client.get(f"/api/analytics/overview?from={FROM}&to={TO}&client_id={clients[1]}", headers=headers)
    assert r.status_code == 404
    r = client.get(f"/api/analytics/export?from={FROM}&to={TO}", headers=headers)
    assert r.status_code == 403


def test_another_tenants_client_or_campaign_is_a_404(client, session, data):
    other = f.make_client(session)
    campaign = f.make_campaign(session, organization_id=other.organization_id)
    headers = principal_headers(session, data, "admin")
    assert client.get(f"/api/analytics/overview?client_id={other.id}", headers=headers).status_code == 404
    assert client.get(f"/api/analytics/overview?campaign_id={campaign.id}", headers=headers).status_code == 404


@pytest.mark.parametrize("query, field", [
    (f"from={TO}&to={FROM}", "from"),
    ("from=2020-01-01T00:00:00Z&to=2021-06-01T00:00:00Z", "to"),
])
def test_bad_ranges_are_422(client, session, data, query, field):
    headers = principal_headers(session, data, "viewer")
    r = client.get(f"/api/analytics/overview?{query}", headers=headers)
    assert r.status_code == 422 and field in r.json["error"]["details"], r.json


def test_timeseries_by_hour(client, session, data):
    headers = principal_headers(session, data, "viewer")
    start, end = BASE.replace(minute=0), BASE.replace(minute=0) + timedelta(hours=6)
    r = client.get(f"/api/analytics/timeseries?metric=sent&granularity=hour&from={_iso(start)}"
                   f"&to={_iso(end)}", headers=headers)
    assert r.status_code == 200, r.json
    points = r.json["points"]
    assert len(points) == 6 and points[0]["at"].startswith(start.strftime("%Y-%m-%dT%H:00:00"))
    want: dict = {}
    for (_, _, hour), numbers in expected(session, data.id).items():
        want[hour] = want.get(hour, 0) + numbers[0]
    assert [p["value"] for p in points] == [want.get(start + timedelta(hours=n), 0) for n in range(6)]
    r = client.get("/api/analytics/timeseries?metric=sent&granularity=hour&from=2026-01-01T00:00:00Z"
                   "&to=2026-03-01T00:00:00Z", headers=headers)
    assert r.status_code == 422  # hourly series: 31 days at most


def test_timeseries_days_are_the_callers_days(client, session):
    org = f.make_organization(session)
    c = f.make_client(session, organization_id=org.id)
    contact = f.make_contact(session, organization_id=org.id)
    for hour, sent in ((datetime(2026, 6, 1, 21, tzinfo=UTC), 1), (datetime(2026, 6, 1, 22, tzinfo=UTC), 10),
                       (datetime(2026, 6, 2, 3, tzinfo=UTC), 100)):
        for n in range(sent):
            _outbound(session, c, contact, hour + timedelta(seconds=n))
    session.flush()
    run_rollup(session)
    headers = principal_headers(session, org, "viewer")
    url = "/api/analytics/timeseries?metric=sent&granularity=day&from=2026-06-01T00:00:00Z&to=2026-06-03T00:00:00Z"
    r = client.get(url, headers=headers)
    assert [(p["at"][:10], p["value"]) for p in r.json["points"]] == [("2026-06-01", 11), ("2026-06-02", 100)]
    for to, last in (("2026-06-02T03:00:00Z", 0), ("2026-06-02T04:00:00Z", 100)):  # the last day's hours until `to`
        r = client.get(url.replace("2026-06-03T00:00:00Z", to), headers=headers)
        assert [(p["at"][:10], p["value"]) for p in r.json["points"]] == [("2026-06-01", 11), ("2026-06-02", last)]
    r = client.get(url + "&tz=Europe/Athens", headers=headers)  # UTC+3 in June: 21:00 UTC is the 2nd
    assert r.json["tz"] == "Europe/Athens"
    assert [(p["at"], p["value"]) for p in r.json["points"]] == [
        ("2026-06-01T00:00:00+03:00", 0), ("2026-06-02T00:00:00+03:00", 111), ("2026-06-03T00:00:00+03:00", 0)]
    assert client.get(url + "&tz=Mars/Olympus", headers=headers).status_code == 422
    assert client.get(url.replace("metric=sent", "metric=nope"), headers=headers).status_code == 422


def _csv(r) -> list[list[str]]:
    return list(csv.reader(io.StringIO(r.get_data(as_text=True))))


def test_the_rollup_export(client, session, data):
    headers = principal_headers(session, data, "viewer")
    r = client.get(f"/api/analytics/export?format=csv&from={FROM}&to={TO}", headers=headers)
    assert r.status_code == 200 and r.mimetype == "text/csv" and r.is_streamed
    assert "attachment" in r.headers["Content-Disposition"]
    rows = _csv(r)
    assert tuple(rows[0]) == ROLLUP_COLUMNS
    col = {name: i for i, name in enumerate(ROLLUP_COLUMNS)}
    assert sum(int(row[col["sent"]]) for row in rows[1:]) == _totals(session, data.id)["sent"]
    assert len({(row[col["day"]], row[col["client_id"]]) for row in rows[1:]}) == len(rows) - 1
    assert [row[col["day"]] for row in rows[1:]] == sorted(row[col["day"]] for row in rows[1:])
    failures = [row[col["failures"]] for row in rows[1:] if row[col["failed"]] != "0"]
    assert failures and all(x.startswith('{"131') for x in failures)


def test_the_messages_export(client, session, data):
    headers = principal_headers(session, data, "admin")
    r = client.get(f"/api/analytics/export?what=messages&from={FROM}&to={TO}", headers=headers)
    assert r.status_code == 200
    rows = _csv(r)
    assert tuple(rows[0]) == MESSAGE_COLUMNS
    count = session.execute(text("SELECT count(*) FROM messages WHERE organization_id = :o"), {"o": data.id}).scalar()
    assert len(rows) - 1 == count
    created = [row[1] for row in rows[1:]]
    assert created == sorted(created)


def test_the_messages_export_reads_in_batches(client, session, data, monkeypatch):
    from app.analytics import exports

    monkeypatch.setattr(exports, "EXPORT_BATCH", 2)  # many server-side cursor fetches, same rows
    headers = principal_headers(session, data, "admin")
    small = _csv(client.get(f"/api/analytics/export?what=messages&from={FROM}&to={TO}", headers=headers))
    monkeypatch.setattr(exports, "EXPORT_BATCH", 1000)
    assert small == _csv(client.get(f"/api/analytics/export?what=messages&from={FROM}&to={TO}", headers=headers))


@pytest.mark.parametrize("role, status", [("admin", 200), ("manager", 200), ("viewer", 200), ("agent", 403)])
def test_export_needs_analytics_export(client, session, role, status):
    org = f.make_organization(session)
    headers = principal_headers(session, org, role)
    assert client.get("/api/analytics/export", headers=headers).status_code == status
    assert client.get("/api/analytics/overview", headers=headers).status_code == 200


def test_the_breakdown_per_client_and_per_campaign_adds_up_to_the_overview(client, session, data):
    headers = principal_headers(session, data, "viewer")
    overview = client.get(f"/api/analytics/overview?from={FROM}&to={TO}", headers=headers).json
    r = client.get(f"/api/analytics/breakdown?by=client&from={FROM}&to={TO}", headers=headers)
    assert r.status_code == 200, r.json
    rows = r.json["rows"]
    assert len(rows) == 2 and all(row["name"] for row in rows)
    for row in rows:
        want = _totals(session, data.id, row["id"])
        assert {k: row[k] for k in want} == want
    assert [row["sent"] for row in rows] == sorted((row["sent"] for row in rows), reverse=True)
    for metric in ("sent", "delivered", "read", "failed", "received", "replied", "opted_out"):
        assert sum(row[metric] for row in rows) == overview[metric]

    campaigns = client.get(f"/api/analytics/breakdown?by=campaign&from={FROM}&to={TO}", headers=headers).json["rows"]
    assert {row["id"] is None for row in campaigns} == {True, False}
    named = next(row for row in campaigns if row["id"])
    assert named["name"] and named["sent"] == _totals(session, data.id, campaign_id=named["id"])["sent"]
    assert sum(row["sent"] for row in campaigns) == overview["sent"]
    limited = client.get(f"/api/analytics/breakdown?by=campaign&limit=1&from={FROM}&to={TO}", headers=headers)
    assert len(limited.json["rows"]) == 1


def test_an_agents_breakdown_holds_only_assigned_clients(client, session, data):
    clients = sorted({r[0] for r in session.execute(text(
        "SELECT client_id FROM analytics_hourly WHERE organization_id = :o"), {"o": data.id})})
    headers = principal_headers(session, data, "agent", client_ids=[clients[1]])
    rows = client.get(f"/api/analytics/breakdown?by=client&from={FROM}&to={TO}", headers=headers).json["rows"]
    assert [row["id"] for row in rows] == [clients[1]]


@pytest.mark.parametrize("query", ["", "by=contact", "by=client&limit=0", "by=client&limit=5000"])
def test_a_bad_breakdown_is_a_422(client, session, data, query):
    headers = principal_headers(session, data, "viewer")
    r = client.get(f"/api/analytics/breakdown?{query}", headers=headers)
    assert r.status_code == 422, r.json


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Kiritimati",
                                "America/St_Johns"])
def test_days_of_any_zone_equal_their_hours_added_up(client, session, tz):
    """Whole days are read from daily rows and a few hours around them: the same as adding up every
    hour that starts on that day of the zone (over the autumn clock changes, partial last day)."""
    import random
    from zoneinfo import ZoneInfo

    org = f.make_organization(session)
    rng = random.Random(tz)
    first_hour = datetime(2026, 10, 18, tzinfo=UTC)
    hourly = {first_hour + timedelta(hours=n): rng.randint(0, 50) for n in range(24 * 24)}
    daily: dict = {}
    for hour, sent in hourly.items():
        f.make_analytics_totals_hourly(session, organization_id=org.id, bucket=hour, sent=sent, delivered=0)
        daily[hour.date()] = daily.get(hour.date(), 0) + sent
    for day, sent in daily.items():
        f.make_analytics_totals_daily(session, organization_id=org.id, bucket=day, sent=sent, delivered=0)
    headers = principal_headers(session, org, "viewer")
    start, end = datetime(2026, 10, 21, 5, tzinfo=UTC), datetime(2026, 11, 6, 17, 20, tzinfo=UTC)
    r = client.get(f"/api/analytics/timeseries?metric=sent&granularity=day&from={_iso(start)}&to={_iso(end)}"
                   f"&tz={tz}", headers=headers)
    assert r.status_code == 200, r.json
    zone = ZoneInfo(tz)
    first_midnight = datetime.combine(start.astimezone(zone).date(), datetime.min.time(), zone)
    want: dict = {}
    for hour, sent in hourly.items():
        if first_midnight <= hour < end:
            day = hour.astimezone(zone).date().isoformat()
            want[day] = want.get(day, 0) + sent
    got = {p["at"][:10]: p["value"] for p in r.json["points"]}
    assert got == {day: want.get(day, 0) for day in got} and set(want) <= set(got)
    assert len(got) >= 16
