"""OpenTelemetry tracing: off unless the standard ``OTEL_*`` variables ask for it.

Off, nothing of OpenTelemetry is imported and every hook here is a check of one global: the api,
the workers and the outbox pay nothing. On (``configure_tracing``, from each process's start), the
SDK builds the provider from its own variables (service name and resource, sampler, OTLP endpoint,
headers, timeouts), and Flask, SQLAlchemy, redis and urllib3 (the webhooks' and media fetches'
client, and requests' underneath, for the Cloud API) are instrumented. Dramatiq has no
instrumentation of its own: ``workers.middleware.Tracing`` carries the trace into jobs.

Database, Redis and outgoing HTTP calls are traced only as parts of a request's or a job's trace
(``_WithinTraces``): a worker polls Redis all the time, heartbeats and sweepers run outside any
request, and a root span for each of those calls would bury the traces worth reading.

Tests install a provider of their own (``install``; the global one can be set once per process)
and ``uninstall`` it afterwards.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

#: the request id's attribute on a request's span and on its jobs' spans
REQUEST_ID = "request.id"


class _Tracing:
    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace

        self.provider = provider
        self.tracer = provider.get_tracer("whatsapp-service")
        self.trace = trace


_state: _Tracing | None = None


def enabled() -> bool:
    return _state is not None


def configure_tracing(service_name: str) -> bool:
    """Trace this process when the environment asks for it (``config.otel_trace_exporters``):
    ``service_name`` unless ``OTEL_SERVICE_NAME`` (or ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``) names it. Whether tracing is on; once per process."""
    from config import otel_trace_exporters

    if _state is not None:
        return True
    exporters = otel_trace_exporters()
    if not exporters:
        return False
    from opentelemetry import trace

    provider = _provider_from_env(service_name, exporters)
    trace.set_tracer_provider(provider)
    install(provider)
    log.info("tracing on: %s, exporting to %s", provider.resource.attributes.get("service.name"),
             ", ".join(exporters))
    return True


def _provider_from_env(service_name: str, exporters: list[str]) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    for name in exporters:
        exporter = _exporter(name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* tune it
    return provider


def _exporter(name: str) -> Any:
    if name in ("otlp", "otlp_proto_http"):
        # http/protobuf: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    log.warning("OTEL_TRACES_EXPORTER: %r is not one this service ships (otlp, console); ignored", name)
    return None


def _instrumentors() -> tuple:
    """The libraries traced besides Flask: SQLAlchemy, redis, urllib3 (their instrumentors)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    return SQLAlchemyInstrumentor(), RedisInstrumentor(), URLLib3Instrumentor()


def install(provider: Any) -> None:
    """Instrument the libraries with ``provider`` and carry its traces into jobs and log lines."""
    global _state
    from app import db, logs

    if _state is not None:
        uninstall()
    within: Any = _WithinTraces(provider)  # stands in for a TracerProvider (not imported while off)
    existing = [db._engine] if db._engine is not None else []  # later ones: its create_engine is wrapped
    # its declared range stops below SQLAlchemy 2.1, whose engine events (all it uses) are unchanged:
    # tests/system/test_tracing.py checks the statements' spans
    sqlalchemy, redis, urllib3 = _instrumentors()
    sqlalchemy.instrument(tracer_provider=within, engines=existing, skip_dep_check=True)
    redis.instrument(tracer_provider=within)
    urllib3.instrument(tracer_provider=within)
    _state = _Tracing(provider)
    logs.set_trace_hooks(trace_carrier, trace_ids)


def uninstall() -> None:
    """Undo ``install`` (tests): the libraries uninstrumented, jobs and log lines left untraced."""
    global _state
    from app import logs

    logs.set_trace_hooks(None, None)
    _state = None
    for instrumentor in _instrumentors():
        instrumentor.uninstrument()


def instrument_app(app: Any) -> None:
    """Trace the app's requests (create_app calls it first, so that its ``before_request`` runs
    before the others: a request refused by them, 401 or 413, is traced too)."""
    if _state is None:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor.instrument_app(app, tracer_provider=_state.provider, response_hook=_tag_request,
                                     enable_commenter=False)


def _tag_request(span: Any, status: str, response_headers: list) -> None:
    """The request id on the request's span: the one its response tells (``X-Request-ID``)."""
    for name, value in response_headers:
        if name.lower() == "x-request-id" and value:
            span.set_attribute(REQUEST_ID, value)
            return


def trace_carrier() -> dict:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``): what a job
    enqueued now carries in its options to continue the trace. Empty outside a span."""
    from opentelemetry import propagate

    carrier: dict = {}
    propagate.inject(carrier)
    return carrier


def trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for the log lines; None outside one."""
    if _state is None:
        return None
    ctx = _state.trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# ----------------------------------------------------------------------------- a job's span


def start_job_span(message: Any) -> tuple[Any, Any] | None:
    """Start the CONSUMER span of a job (named after its actor), child of the trace its options
    carry, and make it current; None when tracing is off. End it with ``end_job_span``."""
    if _state is None:
        return None
    from opentelemetry import context, propagate

    parent = propagate.extract(message.options.get("trace") or {})
    span = _state.tracer.start_span(
        message.actor_name, context=parent, kind=_state.trace.SpanKind.CONSUMER,
        attributes={"messaging.system": "dramatiq", "messaging.operation.type": "process",
                    "messaging.destination.name": message.queue_name, "messaging.message.id": message.message_id,
                    "dramatiq.retries": message.options.get("retries", 0),
                    REQUEST_ID: message.options.get("request_id") or message.message_id})
    token = context.attach(_state.trace.set_span_in_context(span, parent))
    return span, token


def end_job_span(started: tuple[Any, Any] | None, outcome: str, exception: BaseException | None = None) -> None:
    """End a job's span: its ``outcome`` (ok, retry, retried, failed, skipped), and an error status
    with the exception when the job failed."""
    if started is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    span, token = started
    try:
        span.set_attribute("dramatiq.outcome", outcome)
        if exception is not None and outcome in ("failed", "retried"):
            span.record_exception(exception)
            span.set_status(Status(StatusCode.ERROR, f"{exception.__class__.__name__}: {exception}"))
        span.end()
    finally:
        context.detach(token)


# ----------------------------------------------------------------------------- spans within traces only


class _WithinTraces:
    """A tracer provider whose tracers start spans only inside a current span (of a request or a
    job): elsewhere they hand back the API's non-recording span, which costs nothing."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return _WithinTracer(self._provider.get_tracer(*args, **kwargs))


class _WithinTracer:
    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace

        self._tracer, self._trace = tracer, trace

    def _outside(self, context: Any) -> bool:
        return not self._trace.get_current_span(context).get_span_context().is_valid

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> Any:
        if self._outside(context):
            return self._trace.INVALID_SPAN
        return self._tracer.start_span(name, context, *args, **kwargs)

    @contextlib.contextmanager
    def start_as_current_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any):
        if self._outside(context):
            yield self._trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(name, context, *args, **kwargs) as span:
            yield span
