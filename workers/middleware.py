"""Dramatiq middleware: worker heartbeats for /health and `workers status`, log context, tracing, and
the job counters of /metrics."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import dramatiq
from dramatiq.middleware import Middleware

from app.system.heartbeats import heartbeat_key
from config import settings

log = logging.getLogger(__name__)

class HeartbeatThread(threading.Thread):
    """Writes a heartbeat key every few seconds until stopped; the key expires if we die."""

    def __init__(self, redis_client, kind: str, name: str, extra: Callable[[], dict] | None = None) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{kind}-{name}")
        self.redis, self.kind, self.name, self.extra = redis_client, kind, name, extra or (lambda: {})
        self.key = heartbeat_key(kind, name)
        self.stopped = threading.Event()

    def beat(self) -> None:
        info = {"kind": self.kind, "name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
                "at": time.time(), **self.extra()}
        self.redis.set(self.key, json.dumps(info), ex=settings.WORKER_HEARTBEAT_TTL)

    def run(self) -> None:
        interval = max(1.0, settings.WORKER_HEARTBEAT_TTL / 3)
        while not self.stopped.is_set():
            try:
                self.beat()
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            self.stopped.wait(interval)

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.redis.delete(self.key)
        except Exception:
            pass


class Heartbeat(Middleware):
    """Each worker process reports its pool (``WORKER_POOL``, set by ``workers run``)."""

    def __init__(self):
        self.thread: HeartbeatThread | None = None

    def after_worker_boot(self, broker, worker):
        from app.kv import redis_client
        from workers.state import current_pool

        pool = current_pool()
        if pool:
            self.thread = HeartbeatThread(redis_client(), "pool", pool,
                                          extra=lambda: {"threads": worker.worker_threads})
            self.thread.beat()
            self.thread.start()

    def before_worker_shutdown(self, broker, worker):
        if self.thread:
            self.thread.stop()


class RequestContext(Middleware):
    """Set up JSON logging in workers, and log every job under the request id it carries.

    A job enqueued during a request (or during another job) has that request's id in its options
    (app/outbox.py); it becomes the current request id while the job runs, so every line the job
    logs, and every job it enqueues in turn, carries it. A job nobody's request caused (periodic,
    CLI) runs under its own message id. Each job logs its start and its end: actor, message id,
    duration and outcome: ``ok``, ``failed`` (an error: Retries retries it or dead-letters it),
    ``retry`` (the actor asked for a later run) or ``skipped``."""

    def __init__(self):
        self._started = threading.local()

    def after_process_boot(self, broker):
        from app.logs import configure_logging
        from app.system.tracing import configure_tracing
        from workers.state import current_pool

        configure_logging(f"worker:{current_pool() or '?'}")
        configure_tracing("whatsapp-service-worker")

    def before_enqueue(self, broker, message, delay):
        """A job sent while a request or a job is handled carries its request id (and, with tracing
        on, its trace context: ``Tracing``), whichever way it is sent; what the outbox kept in the
        row, for the sweeper, stays as it is."""
        from app.logs import job_origin

        for name, value in job_origin().items():
            message.options.setdefault(name, value)

    def before_process_message(self, broker, message):
        from app.logs import current_request_id

        current_request_id.set(message.options.get("request_id") or message.message_id)
        self._started.at = time.perf_counter()
        log.info("job start %s %s", message.actor_name, message.message_id, extra=_job_fields(message))

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            outcome = "ok"
        else:
            outcome = "retry" if isinstance(exception, dramatiq.Retry) else "failed"
        self._finish(message, outcome, exception)

    def after_skip_message(self, broker, message):
        self._finish(message, "skipped", None)

    def _finish(self, message, outcome: str, exception) -> None:
        from app.logs import current_request_id

        started = getattr(self._started, "at", None)
        duration_ms = round((time.perf_counter() - started) * 1000, 1) if started is not None else None
        fields = {**_job_fields(message), "outcome": outcome, "duration_ms": duration_ms}
        if exception is not None:  # its message and traceback are in Dramatiq's own line
            fields["error"] = exception.__class__.__name__
        log.info("job %s %s %s in %s ms", outcome, message.actor_name, message.message_id, duration_ms,
                 extra=fields)
        self._started.at = None
        current_request_id.set(None)


def _job_fields(message) -> dict:
    return {"actor": message.actor_name, "message_id": message.message_id, "queue": message.queue_name,
            "retries": message.options.get("retries", 0)}


class Tracing(Middleware):
    """A job continues the trace of the request (or job) that enqueued it, when tracing is on
    (app/system/tracing.py; off, each hook is one check).

    On enqueue, ``RequestContext`` puts the current trace context into the message options
    (``trace``: W3C ``traceparent``/``tracestate``, from app/logs.py ``job_origin``) unless the
    message has one already: the outbox put it there when the job was enqueued, so a job sent after
    the commit or by the sweeper, and a retry, keep the trace of the request that caused them. A processed job is a
    CONSUMER span named after its actor, current while it runs (its SQL, Redis and HTTP calls are
    its children, its log lines carry its trace id, the jobs it enqueues continue its trace), with
    its outcome; a failure records the exception and sets the error status. Declared before
    ``Retries``, like ``JobMetrics``, so that its "after" hooks see whether a failure was retried;
    and before ``RequestContext``, so that the job's start and end lines are within its span."""

    def __init__(self):
        self._started = threading.local()

    def before_process_message(self, broker, message):
        from app.system.tracing import start_job_span

        self._started.span = start_job_span(message)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            outcome = "ok"
        elif isinstance(exception, dramatiq.Retry):
            outcome = "retry"
        else:
            outcome = "failed" if message.failed else "retried"
        self._end(outcome, exception)

    def after_skip_message(self, broker, message):
        self._end("skipped", None)

    def _end(self, outcome: str, exception) -> None:
        from app.system.tracing import end_job_span

        started, self._started.span = getattr(self._started, "span", None), None
        end_job_span(started, outcome, exception)


class PromptDelays(Middleware):
    """Delayed messages (pacing slots) leave the broker within ``WORKER_POLL_MS`` of their time.

    An idle Dramatiq consumer polls Redis with a backoff of up to ``worker_timeout`` (1 s by
    default), and a delayed message passes through two consumers (the delay queue's, then the
    queue's), so it could start up to ~2 s late. Setting the timeout before the consumers start
    bounds that by twice this setting."""

    def before_worker_boot(self, broker, worker):
        worker.worker_timeout = settings.WORKER_POLL_MS


class JobMetrics(Middleware):
    """Counts every job this worker finishes, by pool, actor and outcome, and how long it ran, in
    the Redis counters /metrics serves (app/system/counters.py). Its "after" hooks run after those
    of ``Retries`` (it is declared before it: Dramatiq calls them in reverse order), so a failure is
    told apart: ``retried`` (scheduled again, an error or ``dramatiq.Retry``) or
    ``failed`` (retries exhausted, or an error the actor ``throws``: dead-lettered)."""

    def __init__(self):
        self._started = threading.local()

    def before_process_message(self, broker, message):
        self._started.at = time.perf_counter()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            outcome = "ok"
        else:
            outcome = "failed" if message.failed else "retried"
        self._count(message, outcome)

    def after_skip_message(self, broker, message):
        self._count(message, "skipped")

    def _count(self, message, outcome: str) -> None:
        from app.system import counters
        from workers.state import current_pool

        pool = current_pool() or "none"
        counters.inc("wa_jobs_total", pool=pool, actor=message.actor_name, outcome=outcome)
        started = getattr(self._started, "at", None)
        if started is not None and outcome != "skipped":
            counters.observe("wa_job_duration_seconds", time.perf_counter() - started, pool=pool,
                             actor=message.actor_name)
        self._started.at = None
