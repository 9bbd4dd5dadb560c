"""JSON logs to stdout with the request id on every line: the HTTP request's, and in a job the id
of the request that enqueued it (or the job's own message id when no request did). With tracing on,
lines also carry the current ``trace_id`` and ``span_id``.

``job_origin`` is what a job carries from the request or job that enqueues it (its message
options): the request id, and the trace context when tracing is on. Tracing lives in
app/system/tracing.py, which this foundation module may not import: it installs its two small
functions here instead (``set_trace_hooks``); while they are unset, nothing is added."""
from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter

from config import settings

#: the id of the HTTP request or Dramatiq message being handled, if any
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


#: set by app/system/tracing.py while tracing is on: the current trace context as W3C headers, and
#: the current (trace id, span id) in hex (None outside a span)
_trace_carrier: Callable[[], dict] | None = None
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def set_trace_hooks(carrier: Callable[[], dict] | None, ids: Callable[[], tuple[str, str] | None] | None) -> None:
    global _trace_carrier, _trace_ids
    _trace_carrier, _trace_ids = carrier, ids


def job_origin() -> dict:
    """The message options a job enqueued now inherits: ``request_id``, and ``trace`` (the
    traceparent of the current span) with tracing on. The outbox keeps them in its row, so a job
    the sweeper sends later still continues the request's trace."""
    origin: dict = {"request_id": rid} if (rid := current_request_id.get()) else {}
    if _trace_carrier is not None and (carrier := _trace_carrier()):
        origin["trace"] = carrier
    return origin


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        if _trace_ids is not None and (ids := _trace_ids()) is not None:
            record.trace_id, record.span_id = ids
        return True


class _IsoJsonFormatter(JsonFormatter):
    """``ts`` in ISO 8601, UTC, with milliseconds: ``2026-01-31T12:34:56.789Z``."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        at = datetime.fromtimestamp(record.created, UTC)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def formatter(process: str) -> logging.Formatter:
    """The formatter of every process's log lines: JSON, or text with ``LOG_FORMAT=text``."""
    if settings.LOG_FORMAT == "text":
        return logging.Formatter("%(asctime)s %(levelname)-5s %(name)s [%(request_id)s] %(message)s", "%H:%M:%S")
    return _IsoJsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        static_fields={"process": process},
    )


_configured = False


def configure_logging(process: str) -> None:
    """Install the JSON handler on the root logger once per process."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter(process))
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.LOG_LEVEL.upper())
    for noisy in ("urllib3", "apscheduler.executors", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True
