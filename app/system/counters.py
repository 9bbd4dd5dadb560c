"""Counters and histograms that worker processes keep in Redis, for the api's /metrics to serve.

Workers are separate processes (several per pool, on several machines), and the api's /metrics
answers scrapes. Instead of an HTTP exporter per worker process, every worker adds to shared
Redis hashes (``wa:metrics:<name>``, one field per label set, ``HINCRBY`` / ``HINCRBYFLOAT`` in
one pipelined round trip), and the api's collector reads them when scraped: every pool and every
process summed, one scrape target, and counts that survive worker restarts. A Redis that is
flushed starts them from zero again, which Prometheus' ``rate()`` reads as a counter reset.

Every metric is declared here (``COUNTERS``, ``HISTOGRAMS``) with bounded labels; writing never
raises: a metric that cannot be written is lost, the work goes on.

A process adds up its increments in memory and a background thread writes them every
``METRICS_FLUSH_MS`` in one pipeline (a job or a webhook attempt costs a dict update, not two Redis
round trips); a process killed loses at most that much of its counts. ``METRICS_FLUSH_MS=0``
writes each increment at once.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "wa:metrics:"


@dataclass(frozen=True)
class Spec:
    name: str
    doc: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WEBHOOK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

COUNTERS: dict[str, Spec] = {s.name: s for s in (
    Spec("wa_jobs_total", "Jobs processed by the workers, by pool, actor and outcome (ok, retried: failed and "
         "scheduled again, failed: failed for good and dead-lettered, skipped)", ("pool", "actor", "outcome")),
    Spec("wa_pacing_deferrals_total", "Sends put back in the broker until their pacing slot (or send window)",
         ("transport", "reason")),
    Spec("wa_webhook_attempts_total", "Webhook delivery attempts, by outcome (success, client_error, "
         "server_error, error: timeout, connection or refused address)", ("outcome",)),
)}

HISTOGRAMS: dict[str, Spec] = {s.name: s for s in (
    Spec("wa_job_duration_seconds", "How long jobs ran, by pool and actor", ("pool", "actor"), JOB_BUCKETS),
    Spec("wa_webhook_attempt_duration_seconds", "How long a webhook endpoint took to answer one attempt",
         ("outcome",), WEBHOOK_BUCKETS),
)}


def _field(values: tuple[str, ...], extra: str | None = None) -> str:
    return json.dumps([*values, extra] if extra is not None else list(values))


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _values(spec: Spec, labels: dict[str, str]) -> tuple[str, ...]:
    if set(labels) != set(spec.labels):
        raise ValueError(f"{spec.name} takes labels {spec.labels}, not {tuple(labels)}")
    return tuple(str(labels[name]) for name in spec.labels)


def inc(name: str, amount: int = 1, **labels: str) -> None:
    """Add ``amount`` to counter ``name`` (declared in ``COUNTERS``) for these labels."""
    values = _values(COUNTERS[name], labels)
    _add([(PREFIX + name, _field(values), amount)], [])


def observe(name: str, value: float, **labels: str) -> None:
    """Record one observation of histogram ``name`` (declared in ``HISTOGRAMS``)."""
    spec = HISTOGRAMS[name]
    values = _values(spec, labels)
    key = PREFIX + name
    # buckets are cumulative: one increment for each bound it is under
    ints = [(key, _field(values, _le(bound)), 1) for bound in (*spec.buckets, math.inf) if value <= bound]
    ints.append((key, _field(values, "count"), 1))
    _add(ints, [(key, _field(values, "sum"), value)])


class _Buffer:
    """This process's increments not written yet, and the thread that writes them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.ints: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.floats: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.thread: threading.Thread | None = None

    def take(self) -> tuple[dict, dict]:
        with self.lock:
            ints, floats = self.ints, self.floats
            self.ints, self.floats = defaultdict(int), defaultdict(float)
        return ints, floats


_buffer = _Buffer()


def _flush_ms() -> int:
    from config import settings

    return settings.METRICS_FLUSH_MS


def _add(ints: list[tuple[str, str, int]], floats: list[tuple[str, str, float]]) -> None:
    global _buffer
    if _flush_ms() <= 0:
        _write(dict(((k, f), n) for k, f, n in ints), dict(((k, f), v) for k, f, v in floats))
        return
    if _buffer.pid != os.getpid():  # a forked child: the parent's increments are the parent's to write
        _buffer = _Buffer()
    buffer = _buffer
    with buffer.lock:
        for key, field, n in ints:
            buffer.ints[(key, field)] += n
        for key, field, v in floats:
            buffer.floats[(key, field)] += v
        if buffer.thread is None:
            buffer.thread = threading.Thread(target=_flush_forever, args=(buffer,), name="metrics-flush", daemon=True)
            buffer.thread.start()


def _flush_forever(buffer: _Buffer) -> None:
    while True:
        ms = _flush_ms()
        if ms <= 0:  # turned off meanwhile (tests): write what is left, and stop
            with buffer.lock:
                buffer.thread = None
            _write(*buffer.take())
            return
        time.sleep(ms / 1000)
        _write(*buffer.take())


def flush() -> None:
    """Write this process's pending increments now (at exit, and before /metrics reads them here)."""
    if _buffer.pid == os.getpid():
        _write(*_buffer.take())


atexit.register(flush)


def _write(ints: dict, floats: dict) -> None:
    if not ints and not floats:
        return
    try:
        from app.kv import redis_client

        pipe = redis_client().pipeline(transaction=False)
        for (key, field), n in ints.items():
            pipe.hincrby(key, field, n)
        for (key, field), v in floats.items():
            pipe.hincrbyfloat(key, field, v)
        pipe.execute()
    except Exception:
        log.debug("metrics: could not write to Redis", exc_info=True)


def read_counter(r, name: str) -> list[tuple[tuple[str, ...], float]]:
    """(label values, value) of every label set counter ``name`` has, sorted."""
    raw = r.hgetall(PREFIX + name)
    return sorted((tuple(json.loads(k)), float(v)) for k, v in raw.items())


def read_histogram(r, name: str) -> list[tuple[tuple[str, ...], list[tuple[str, float]], float]]:
    """(label values, [(le, cumulative count)...], sum) of every label set of histogram ``name``."""
    spec = HISTOGRAMS[name]
    series: dict[tuple[str, ...], dict[str, float]] = {}
    for k, v in r.hgetall(PREFIX + name).items():
        *values, part = json.loads(k)
        series.setdefault(tuple(values), {})[part] = float(v)
    out = []
    for values, parts in sorted(series.items()):
        buckets = [(_le(b), parts.get(_le(b), 0.0)) for b in (*spec.buckets, math.inf)]
        out.append((values, buckets, parts.get("sum", 0.0)))
    return out
