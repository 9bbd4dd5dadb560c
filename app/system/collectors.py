"""The business metrics of /metrics, computed when scraped: from Postgres (one cheap query per
metric, under a short statement timeout) and from the counters the workers keep in Redis
(app/system/counters.py).

Nothing here is counted in the api's request path, so the api's processes need no shared state
for these: whichever process answers a scrape reads the same database and the same Redis.

How each query stays cheap (the indexes are in schema.sql):

- messages by status: only messages created in the last ``RECENT_MESSAGES`` (a range of
  ``messages_created_at_idx``); the ones still waiting to be sent, of any age, through the partial
  index ``messages_claim_idx`` (it holds only queued, sending and unknown rows);
- send latency: messages created in the last ``RECENT_LATENCY`` (the same range), bucketed in SQL;
- webhook deliveries waiting or retrying: the partial index ``webhook_deliveries_retry_idx``;
- outbox backlog: the partial index ``job_outbox_pending_idx``;
- clients, webhooks and campaigns: small tables, grouped whole.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import text

from app.campaigns.statuses import CAMPAIGN_STATUSES
from app.clients.schemas import TRANSPORTS
from app.clients.statuses import STATUSES as CLIENT_STATUSES

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 2000
RECENT_MESSAGES = "24 hours"
RECENT_LATENCY = "1 hour"
LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

RETRYING_DELIVERIES = ("pending", "delivering", "failed")
WEBHOOK_STATES = ("healthy", "failing", "disabled")
CAMPAIGN_COUNTS = ("total", "pending", "queued", "sent", "delivered", "read", "failed", "skipped", "cancelled",
                   "replied")
#: recipients whose fate is settled (the progress ratio's numerator)
CAMPAIGN_DONE = ("sent", "delivered", "read", "failed", "skipped", "cancelled")

_MESSAGES = text(f"""
SELECT m.direction, m.status, c.transport, count(*) FROM messages m JOIN clients c ON c.id = m.client_id
WHERE m.created_at >= now() - interval '{RECENT_MESSAGES}' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")

_UNSENT = text("""
SELECT m.status, c.transport, count(*), extract(epoch FROM now() - min(m.created_at))
FROM messages m JOIN clients c ON c.id = m.client_id
WHERE m.status IN ('queued', 'sending', 'unknown') GROUP BY 1, 2 ORDER BY 1, 2""")

# queued -> sent, counted from when the message was due: a message scheduled for later is
# measured from its scheduled time (greatest() ignores a NULL scheduled_at)
_LATENCY = text(f"""
SELECT transport, count(*), coalesce(sum(lat), 0),
       {", ".join(f"count(*) FILTER (WHERE lat <= {b})" for b in LATENCY_BUCKETS)}
FROM (SELECT c.transport,
             greatest(extract(epoch FROM m.sent_at - greatest(coalesce(m.queued_at, m.created_at), m.scheduled_at)),
                      0) AS lat
      FROM messages m JOIN clients c ON c.id = m.client_id
      WHERE m.created_at >= now() - interval '{RECENT_LATENCY}' AND m.direction = 'outbound'
        AND m.sent_at IS NOT NULL) s
GROUP BY transport ORDER BY transport""")

_DELIVERIES = text("""
SELECT status, count(*), extract(epoch FROM now() - min(created_at)) FROM webhook_deliveries
WHERE status IN ('pending', 'delivering', 'failed') GROUP BY status""")

_WEBHOOKS = text("""
SELECT CASE WHEN NOT enabled THEN 'disabled' WHEN failing_since IS NOT NULL THEN 'failing' ELSE 'healthy' END,
       count(*)
FROM webhooks WHERE deleted_at IS NULL GROUP BY 1""")

_CLIENTS = text("SELECT status, transport, count(*) FROM clients WHERE deleted_at IS NULL GROUP BY 1, 2")

_UNHEALTHY = text("""
SELECT id, organization_id, transport, status, extract(epoch FROM now() - status_changed_at) FROM clients
WHERE deleted_at IS NULL AND status IN ('disconnected', 'banned', 'failed') ORDER BY id""")

_CAMPAIGNS = text("SELECT status, count(*) FROM campaigns WHERE deleted_at IS NULL GROUP BY status")

_RUNNING = text(f"""
SELECT id, organization_id, {", ".join(f"{c}_count" for c in CAMPAIGN_COUNTS)} FROM campaigns
WHERE status = 'running' AND deleted_at IS NULL ORDER BY id""")

_OUTBOX = text("""
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM job_outbox
WHERE dispatched_at IS NULL""")


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _database_metrics(run) -> Iterator[Metric]:
    """One family per query; ``run(statement)`` returns its rows, or None when it failed."""
    if (rows := run(_MESSAGES)) is not None:
        g = _gauge("wa_messages", f"Messages created in the last {RECENT_MESSAGES}, by their current status",
                   ["direction", "status", "transport"])
        for direction, status, transport, n in rows:
            g.add_metric([direction, status, transport], n)
        yield g
    if (rows := run(_UNSENT)) is not None:
        g = _gauge("wa_messages_unsent", "Outbound messages not sent yet (queued, sending, unknown), of any age",
                   ["status", "transport"])
        age = _gauge("wa_messages_unsent_oldest_age_seconds", "Age of the oldest message not sent yet",
                     ["status", "transport"])
        for status, transport, n, oldest in rows:
            g.add_metric([status, transport], n)
            age.add_metric([status, transport], float(oldest))
        yield g
        yield age
    if (rows := run(_LATENCY)) is not None:
        h = GaugeHistogramMetricFamily(
            "wa_message_send_latency_seconds",
            f"Queued (or due, when scheduled) to sent, of the outbound messages created in the last {RECENT_LATENCY}",
            labels=["transport"])
        for transport, count, total, *cumulative in rows:
            buckets = [(repr(float(b)), n) for b, n in zip(LATENCY_BUCKETS, cumulative, strict=True)]
            h.add_metric([transport], [*buckets, ("+Inf", count)], gsum_value=float(total))
        yield h
    if (rows := run(_DELIVERIES)) is not None:
        deliveries = {status: (n, oldest) for status, n, oldest in rows}
        g = _gauge("wa_webhook_deliveries", "Webhook deliveries not settled yet: pending (due), delivering, "
                   "failed (a retry is scheduled)", ["status"])
        age = _gauge("wa_webhook_deliveries_oldest_age_seconds", "Age of the oldest unsettled delivery", ["status"])
        for status in RETRYING_DELIVERIES:
            n, oldest = deliveries.get(status, (0, 0))
            g.add_metric([status], n)
            age.add_metric([status], float(oldest))
        yield g
        yield age
    if (rows := run(_WEBHOOKS)) is not None:
        states = dict(rows)
        g = _gauge("wa_webhooks", "Webhook endpoints: healthy, failing (its last attempts failed), disabled", ["state"])
        for state in WEBHOOK_STATES:
            g.add_metric([state], states.get(state, 0))
        yield g
    if (rows := run(_CLIENTS)) is not None:
        clients = {(status, transport): n for status, transport, n in rows}
        g = _gauge("wa_clients", "WhatsApp accounts, by status and transport", ["status", "transport"])
        for status in CLIENT_STATUSES:
            for transport in TRANSPORTS:
                g.add_metric([status, transport], clients.get((status, transport), 0))
        yield g
    if (rows := run(_UNHEALTHY)) is not None:
        g = _gauge("wa_client_unhealthy_seconds", "Seconds a disconnected, banned or failed account has been so",
                   ["client_id", "organization_id", "transport", "status"])
        for client_id, org_id, transport, status, seconds in rows:
            g.add_metric([client_id, org_id, transport, status], float(seconds))
        yield g
    if (rows := run(_CAMPAIGNS)) is not None:
        campaigns = dict(rows)
        g = _gauge("wa_campaigns", "Campaigns, by status", ["status"])
        for status in CAMPAIGN_STATUSES:
            g.add_metric([status], campaigns.get(status, 0))
        yield g
    if (rows := run(_RUNNING)) is not None:
        recipients = _gauge("wa_campaign_recipients", "Recipients of each running campaign, by status (total: all)",
                            ["campaign_id", "organization_id", "status"])
        progress = _gauge("wa_campaign_progress_ratio", "Share of a running campaign's recipients whose send is "
                          "settled (sent, delivered, read, failed, skipped or cancelled)",
                          ["campaign_id", "organization_id"])
        for campaign_id, org_id, *counts in rows:
            by = dict(zip(CAMPAIGN_COUNTS, counts, strict=True))
            for status in CAMPAIGN_COUNTS:
                recipients.add_metric([campaign_id, org_id, status], by[status])
            done = sum(by[s] for s in CAMPAIGN_DONE)
            progress.add_metric([campaign_id, org_id], done / by["total"] if by["total"] else 0.0)
        yield recipients
        yield progress
    if (rows := run(_OUTBOX)) is not None:
        (n, oldest), = rows
        yield GaugeMetricFamily("wa_outbox_backlog", "Committed jobs not handed to the broker yet", value=n)
        yield GaugeMetricFamily("wa_outbox_oldest_age_seconds", "Age of the oldest job not handed to the broker "
                                "(0: none waits)", value=float(oldest))


class DatabaseCollector:
    """Business gauges read from Postgres when scraped. A query that fails (or runs past the
    statement timeout) leaves its metrics out of that scrape; the others are still served."""

    def describe(self):
        return []  # registering must not query; the names are known at scrape time

    def collect(self) -> Iterator[Metric]:
        from app.db import new_session

        try:
            session = new_session()
        except Exception:
            log.warning("metrics: database unavailable", exc_info=True)
            return
        try:
            session.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))

            def run(statement):
                try:
                    with session.begin_nested():  # a failed query must not abort the others
                        return session.execute(statement).all()
                except Exception:
                    log.warning("metrics: a query failed", exc_info=True)
                    return None

            yield from list(_database_metrics(run))
        except Exception:
            log.warning("metrics: database unavailable", exc_info=True)
        finally:
            session.close()  # a read: rolled back (so is the SET LOCAL)


class WorkerCountersCollector:
    """The counters and histograms the workers keep in Redis (app/system/counters.py)."""

    def describe(self):
        return []

    def collect(self) -> Iterator[Metric]:
        from app.kv import redis_client
        from app.system.counters import COUNTERS, HISTOGRAMS, flush, read_counter, read_histogram

        flush()  # what this process counted itself (a worker's are written by its own thread)
        try:
            r = redis_client()
            out: list[Metric] = []
            for spec in COUNTERS.values():
                c = CounterMetricFamily(spec.name.removesuffix("_total"), spec.doc, labels=list(spec.labels))
                for values, value in read_counter(r, spec.name):
                    c.add_metric(list(values), value)
                out.append(c)
            for spec in HISTOGRAMS.values():
                h = HistogramMetricFamily(spec.name, spec.doc, labels=list(spec.labels))
                for values, buckets, total in read_histogram(r, spec.name):
                    h.add_metric(list(values), buckets, sum_value=total)
                out.append(h)
        except Exception:
            log.warning("metrics: worker counters unavailable", exc_info=True)
            return
        yield from out
