"""Recovering from a Redis that lost its data.

Redis holds the jobs, and Postgres holds what they are for: every queued message, every
transport report not applied yet, every webhook delivery due, every outbox row. Each has a
sweeper that re-sends what looks lost after a patience of its own (minutes for messages). When
Redis comes back *empty* (restarted without its AOF, flushed) nothing looks lost for a while but
everything is: a sentinel key set once (``EPOCH_KEY``) tells. Its absence makes every sweeper run
at once with no patience; duplicates this may cause are harmless (every claim is in Postgres).
"""
from __future__ import annotations

import logging
import secrets

from app.db import job_session

log = logging.getLogger(__name__)

EPOCH_KEY = "wa:broker:epoch"


def mark_epoch() -> bool:
    """Set the sentinel if it is missing; True when it was missing (Redis lost its data, or never
    had it: the first start)."""
    from app.kv import redis_client

    return bool(redis_client().set(EPOCH_KEY, secrets.token_hex(8), nx=True))


def recover_if_wiped() -> dict | None:
    """``system.check_broker``: recover when the sentinel is gone. Returns what was re-sent."""
    from app.kv import redis_client

    if redis_client().exists(EPOCH_KEY):
        return None
    from app import outbox
    from app.inbox import service as inbox
    from app.messages import sweeper
    from app.webhooks import pipeline as webhooks

    done = {}
    with job_session() as session:
        done["outbox"] = outbox.sweep(session, older_than_s=0)
    done["messages"], last = 0, ""
    while True:  # every queued message, delayed and parked ones too, in chunks
        with job_session() as session:
            ids = sweeper.reschedule_queued(session, after_id=last)
        done["messages"] += len(ids)
        if len(ids) < 5000:
            break
        last = ids[-1]
    with job_session() as session:
        from datetime import timedelta

        done["transport_reports"] = inbox.redispatch(session, overdue=timedelta(0))
    with job_session() as session:
        done["webhook_deliveries"] = webhooks.dispatch_due(session)
    mark_epoch()
    log.warning("Redis had lost its data: re-sent %s", done)
    return done
