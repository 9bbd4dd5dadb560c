"""The scheduler: APScheduler under a Postgres advisory lock, so exactly one process leads.

Every ``python -m workers scheduler`` process tries ``pg_try_advisory_lock`` once a second on its
own connection. The holder runs the schedule; the others wait. The lock lives with the leader's
connection, so when the leader dies (even by SIGKILL) Postgres drops it and a follower takes over
at its next try. The leader checks its connection every few seconds and steps down if it is lost.
"""
from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from config import settings

log = logging.getLogger("workers.scheduler")

POLL_SECONDS = 1.0


def _plain_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def sweep_outbox() -> None:
    from app import outbox
    from app.db import job_session

    with job_session() as session:
        outbox.sweep(session)


def schedule_jobs(scheduler: BackgroundScheduler) -> None:
    """Everything that runs on a timer, in one list. Job bodies enqueue work or are trivial."""
    from datetime import datetime

    import jobs  # noqa: F401  (declares actors and their periodic entries)
    from jobs import periodic

    scheduler.add_job(sweep_outbox, "interval", seconds=10, id="outbox.sweep", max_instances=1, coalesce=True,
                      next_run_time=datetime.now(UTC))
    for spec in periodic.PERIODIC:
        scheduler.add_job(spec.fire, "interval", seconds=spec.every_s, id=spec.actor_name, max_instances=1,
                          coalesce=True)


class Scheduler:
    def __init__(self):
        self.stop = threading.Event()
        self.leading = False

    def _acquire(self) -> psycopg.Connection | None:
        try:
            conn = psycopg.connect(_plain_dsn(settings.DATABASE_URL), autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            log.warning("scheduler: database unavailable (%s)", exc.__class__.__name__)
            return None
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (settings.SCHEDULER_LOCK_ID,)).fetchone()[0]
        if got:
            return conn
        conn.close()
        return None

    def run(self) -> None:
        from app.kv import redis_client
        from workers.middleware import HeartbeatThread

        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        heartbeat = HeartbeatThread(redis_client(), "scheduler", "scheduler",
                                    extra=lambda: {"leader": self.leading})
        heartbeat.start()
        log.info("scheduler: waiting for leadership")
        try:
            while not self.stop.is_set():
                conn = self._acquire()
                if conn is None:
                    self.stop.wait(POLL_SECONDS)
                    continue
                self._lead(conn, heartbeat)
        finally:
            heartbeat.stop()
            log.info("scheduler: stopped")

    def _lead(self, conn: psycopg.Connection, heartbeat) -> None:
        self.leading = True
        heartbeat.beat()
        log.info("scheduler: leader now")
        scheduler = BackgroundScheduler(timezone="UTC")
        schedule_jobs(scheduler)
        scheduler.start()
        try:
            while not self.stop.wait(3):
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error:
                    log.error("scheduler: lost the database connection; stepping down")
                    break
        finally:
            scheduler.shutdown(wait=False)
            self.leading = False
            try:
                conn.close()
            except Exception:
                pass


def main() -> None:
    from app.logs import configure_logging
    from app.system.tracing import configure_tracing

    configure_logging("scheduler")
    configure_tracing("whatsapp-service-scheduler")
    Scheduler().run()
