"""Tracing (app/system/tracing.py, workers.middleware.Tracing): off unless the OTEL_* variables ask
for it, and then a request's trace goes on into the jobs it enqueues, through the outbox too.

In this process tests install a provider of their own with an in-memory exporter (``spans``) and
uninstall it after: OpenTelemetry's global provider can be set only once per process, so what
``configure_tracing`` does from the environment is checked in child processes."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import dramatiq
import pytest
from sqlalchemy import select

from app.system import tracing
from config import ROOT, otel_trace_exporters
from tests import factories as f


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # each span exported as it ends
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


@pytest.fixture
def traced_client(spans, session):
    from app import create_app

    return create_app(TESTING=True).test_client()


def own_span(name="test"):
    """A span of the installed provider, current in the block (a request's, without Flask)."""
    return tracing._state.tracer.start_as_current_span(name)


def hex_ids(span) -> tuple[str, str]:
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def parent_of(options: dict) -> tuple[str, str]:
    """(trace id, span id) of the W3C ``traceparent`` in a message's options."""
    version, trace_id, span_id, _flags = options["trace"]["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id


def stub_worker_run(actor_fn, message: dramatiq.Message, **actor_options):
    """Process ``message`` with a Dramatiq worker of a stub broker carrying the production
    middleware, with ``actor_fn`` registered under the message's actor name and queue."""
    from workers.broker import build_broker

    broker = build_broker(stub=True)
    dramatiq.actor(actor_fn, broker=broker, actor_name=message.actor_name, queue_name=message.queue_name,
                   **actor_options)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.enqueue(message)
        broker.join(message.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def queued_messages(redis_conn) -> list[dramatiq.Message]:
    return [dramatiq.Message.decode(raw) for key in redis_conn.scan_iter("dramatiq:*.msgs")
            for raw in redis_conn.hvals(key)]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**clean, **env})


# ----------------------------------------------------------------------------- off, and what turns it on


def test_the_standard_variables_decide_whether_it_is_on():
    assert otel_trace_exporters({}) == []
    assert otel_trace_exporters({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) == []
    assert otel_trace_exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert otel_trace_exporters({"OTEL_TRACES_EXPORTER": "otlp"}) == ["otlp"]
    assert otel_trace_exporters({"OTEL_TRACES_EXPORTER": "console, otlp,none"}) == ["console", "otlp"]
    assert otel_trace_exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]
    assert otel_trace_exporters({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ["otlp"]
    assert otel_trace_exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}) == []
    assert otel_trace_exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}) == []


def test_off_by_default_nothing_of_tracing_is_even_imported():
    """An api and a worker's middleware without OTEL_* variables: no provider, no instrumentation,
    jobs carry no trace context, and nothing of the tracing SDK is even imported."""
    code = """if True:
        import sys
        import dramatiq
        from app import create_app
        from app.logs import current_request_id, job_origin
        from app.system import tracing
        from workers.broker import build_broker

        app = create_app(TESTING=True)
        assert app.test_client().get("/api/docs").status_code == 200
        broker = build_broker(stub=True)
        dramatiq.actor(lambda: None, broker=broker, actor_name="test.noop", queue_name="default")
        current_request_id.set("req-1")
        message = broker.enqueue(dramatiq.Message(queue_name="default", actor_name="test.noop", args=(), kwargs={},
                                                  options={}))
        assert job_origin() == {"request_id": "req-1"}, job_origin()
        assert "trace" not in message.options, message.options
        assert not tracing.enabled()
        # (redis-py imports OpenTelemetry's metrics SDK by itself when installed: not ours)
        ours = ("opentelemetry.instrumentation", "opentelemetry.sdk.trace", "opentelemetry.exporter",
                "opentelemetry.propagate")
        loaded = sorted(m for m in sys.modules if m.startswith(ours))
        assert not loaded, loaded
        from opentelemetry import trace
        assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider", "no provider was set"
        print("off")
    """
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip().endswith("off"), out.stdout + out.stderr


def test_on_from_the_environment_with_the_sdks_own_variables():
    """``OTEL_TRACES_EXPORTER=console``: the api's request span is printed, named by default after
    the process (or by OTEL_SERVICE_NAME), with OTEL_RESOURCE_ATTRIBUTES, and the request's log
    line carries its trace id."""
    code = """if True:
        from app import create_app
        from opentelemetry import trace

        client = create_app(TESTING=True).test_client()
        response = client.get("/api/docs", headers={"X-Request-ID": "req-from-env"})
        assert response.status_code == 200
        trace.get_tracer_provider().force_flush()
    """
    out = run_python(code, OTEL_TRACES_EXPORTER="console", OTEL_RESOURCE_ATTRIBUTES="deployment.environment=ci",
                     LOG_LEVEL="INFO", LOG_FORMAT="json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"ts"')]
    request_line = next(line for line in lines if line.get("path") == "/api/docs")
    assert request_line["request_id"] == "req-from-env" and len(request_line["trace_id"]) == 32
    assert f'"trace_id": "0x{request_line["trace_id"]}"' in out.stdout
    assert '"service.name": "whatsapp-service-api"' in out.stdout
    assert '"deployment.environment": "ci"' in out.stdout
    assert '"request.id": "req-from-env"' in out.stdout and '"kind": "SpanKind.SERVER"' in out.stdout

    named = run_python(code, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="wa-edge")
    assert named.returncode == 0, named.stderr
    assert '"service.name": "wa-edge"' in named.stdout and "whatsapp-service-api" not in named.stdout


# ----------------------------------------------------------------------------- a request, and its jobs


def test_a_request_is_a_server_span_with_its_request_id_and_its_sql_as_children(traced_client, spans, session, org,
                                                                                 admin_headers, redis_conn):
    c = f.make_client(session, organization_id=org.id)
    session.flush()
    spans.clear()  # the fixtures' own SQL (run outside any span: none recorded anyway)
    response = traced_client.post(f"/api/clients/{c.id}/start", headers={**admin_headers, "X-Request-ID": "req-otel-1"})
    assert response.status_code == 202
    from opentelemetry.trace import SpanKind

    finished = spans.get_finished_spans()
    [server] = [s for s in finished if s.kind == SpanKind.SERVER]
    assert server.name == "POST /api/clients/<client_id>/start"
    assert server.attributes["request.id"] == "req-otel-1"
    assert server.attributes["http.route"] == "/api/clients/<client_id>/start"
    sql = [s for s in finished if s.attributes.get("db.system") == "postgresql"
           or s.attributes.get("db.system.name") == "postgresql"]
    assert sql, [s.name for s in finished]
    assert all(s.context.trace_id == server.context.trace_id and s.parent.span_id == server.context.span_id
               for s in sql), "the request's SQL statements are children of its span"

    # the job it enqueued (through the outbox, sent after the commit) carries the trace
    [message] = [m for m in queued_messages(redis_conn) if m.actor_name == "clients.start"]
    assert message.options["request_id"] == "req-otel-1"
    assert parent_of(message.options) == hex_ids(server)

    # processed by a worker, it is a CONSUMER span of the same trace, child of the request's span,
    # and what it does (here a Redis call) is a child of the job's
    spans.clear()
    seen = {}

    def clients_start(client_id):
        from app.kv import redis_client

        seen["ids"], seen["client_id"] = tracing.trace_ids(), client_id
        redis_client().get("tracing-test")

    stub_worker_run(clients_start, message)
    assert seen["client_id"] == c.id
    finished = spans.get_finished_spans()
    [job] = [s for s in finished if s.kind == SpanKind.CONSUMER]
    assert job.name == "clients.start"
    assert job.context.trace_id == server.context.trace_id and job.parent.span_id == server.context.span_id
    assert job.parent.is_remote, "continued from the message's options"
    assert seen["ids"] == hex_ids(job), "the job's span is current while the actor runs"
    assert dict(job.attributes) == {
        "messaging.system": "dramatiq", "messaging.operation.type": "process",
        "messaging.destination.name": message.queue_name, "messaging.message.id": message.message_id,
        "dramatiq.retries": 0, "request.id": "req-otel-1", "dramatiq.outcome": "ok"}
    [get] = [s for s in finished if s.attributes.get("db.system") == "redis"
             or s.attributes.get("db.system.name") == "redis"]
    assert get.parent.span_id == job.context.span_id


def test_a_job_sent_later_by_the_outbox_sweeper_continues_the_trace_it_was_enqueued_in(spans, session, redis_conn):
    from app import outbox
    from app.models import JobOutbox

    with own_span("request") as request_span:
        outbox.enqueue(session, "system.noop", "swept")
    [row] = session.scalars(select(JobOutbox).where(JobOutbox.actor_name == "system.noop")).all()
    assert parent_of(row.options) == hex_ids(request_span), "kept in the row"
    assert outbox.sweep(session, older_than_s=0) == 1  # outside any span, as the scheduler's sweep
    [message] = [m for m in queued_messages(redis_conn) if list(m.args) == ["swept"]]
    assert parent_of(message.options) == hex_ids(request_span)


def test_a_job_sent_by_a_job_continues_its_trace_and_a_failure_is_an_error_span(spans):
    from opentelemetry.trace import SpanKind, StatusCode

    from workers.broker import build_broker

    broker = build_broker(stub=True)

    @dramatiq.actor(broker=broker, actor_name="test.child", queue_name="default", max_retries=0)
    def child():
        raise ValueError("no such thing")

    @dramatiq.actor(broker=broker, actor_name="test.parent", queue_name="default")
    def parent():
        child.send()

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        with own_span("request") as request_span:
            parent.send()
        broker.join("default", fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    jobs = {s.name: s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER}
    assert jobs["test.parent"].parent.span_id == request_span.context.span_id
    assert jobs["test.child"].parent.span_id == jobs["test.parent"].context.span_id
    assert {s.context.trace_id for s in jobs.values()} == {request_span.context.trace_id}
    failed = jobs["test.child"]
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["dramatiq.outcome"] == "failed"
    assert [e.attributes["exception.type"] for e in failed.events if e.name == "exception"] == ["ValueError"]
    assert jobs["test.parent"].status.status_code == StatusCode.UNSET


def test_calls_outside_any_request_or_job_make_no_spans(spans, redis_conn):
    """A worker polls Redis all the time: only calls within a trace are recorded."""
    redis_conn.get("outside")
    assert spans.get_finished_spans() == ()
    with own_span("job"):
        redis_conn.get("inside")
    assert sorted(s.name for s in spans.get_finished_spans()) == ["GET", "job"]


def test_uninstalled_it_records_nothing_more(redis_conn):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    tracing.uninstall()
    with provider.get_tracer("t").start_as_current_span("after"):
        redis_conn.get("uninstrumented")
    assert [s.name for s in exporter.get_finished_spans()] == ["after"]
    assert not tracing.enabled()


def test_log_lines_carry_the_trace_id_within_a_span(spans):
    from app.logs import _ContextFilter

    def fields() -> dict:
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "line", None, None)
        _ContextFilter().filter(record)
        return {k: getattr(record, k) for k in ("trace_id", "span_id") if hasattr(record, k)}

    assert fields() == {}
    with own_span() as span:
        assert fields() == dict(zip(("trace_id", "span_id"), hex_ids(span)))
