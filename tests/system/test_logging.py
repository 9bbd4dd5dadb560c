"""Logs: one JSON object per line with an ISO 8601 UTC time and the request id on every line (text
with LOG_FORMAT=text), gunicorn's own lines included; a request can be followed into its jobs."""
import io
import json
import logging
import re
from datetime import UTC, datetime

import pytest

from app.logs import _ContextFilter, formatter
from tests import factories as f
from tests.auth_helpers import principal_headers
from tests.procs import Output, gunicorn, stop, wait_for

ISO_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def capture(logger_name: str, process: str = "api"):
    """A handler like the processes' (app/logs.py) on one logger, writing into a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(formatter(process))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    def done() -> str:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        return stream.getvalue()

    return done


def test_request_log_lines_carry_the_request_id(client):
    done = capture("app.request")
    try:
        resp = client.get("/nope", headers={"X-Request-ID": "req-42"})
    finally:
        out = done()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines, "the request was not logged"
    assert all(line["request_id"] == "req-42" for line in lines)
    assert resp.headers["X-Request-ID"] == "req-42"
    assert any("GET /nope 404" in line["message"] for line in lines)


def test_a_json_line_has_an_iso_8601_utc_time_with_milliseconds():
    done = capture("tests.logging")
    try:
        before = datetime.now(UTC)
        logging.getLogger("tests.logging").warning("hello %s", "there", extra={"answer": 42})
        after = datetime.now(UTC)
    finally:
        out = done()
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert ISO_UTC_MS.match(line["ts"]), line["ts"]
    at = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= at <= after
    assert {k: line[k] for k in ("level", "logger", "message", "process", "answer")} == {
        "level": "WARNING", "logger": "tests.logging", "message": "hello there", "process": "api", "answer": 42}


def test_log_format_text_gives_text(override_settings):
    override_settings(LOG_FORMAT="text")
    done = capture("tests.logging")
    try:
        logging.getLogger("tests.logging").warning("plain words")
    finally:
        out = done()
    assert out.startswith(tuple("0123456789")) and "WARNING tests.logging [None] plain words" in out
    with pytest.raises(ValueError):
        json.loads(out)


def _gunicorn_lines(tmp_path, **env) -> list[str]:
    """Everything a one-process api under gunicorn writes from its start to its stop."""
    from tests.system.test_health import _wait_until_serving
    from workers.embedded import free_port

    port = free_port()
    proc = gunicorn(port, "--workers", "1", LOG_LEVEL="INFO", HOME=str(tmp_path), **env)
    out = Output(proc)
    try:
        _wait_until_serving(proc, port)
    finally:
        lines = out.stop(proc)
    return [line for line in lines if line.strip()]


@pytest.mark.workers
def test_gunicorns_own_lines_are_json_like_the_rest(tmp_path):
    lines = _gunicorn_lines(tmp_path)
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\nall: {lines}") from None
    own = [p for p in parsed if p["logger"] == "gunicorn.error"]
    messages = " | ".join(p["message"] for p in own)
    for expected in ("Starting gunicorn", "Listening at: http://127.0.0.1:", "Booting worker", "Shutting down"):
        assert expected in messages, messages
    assert all(ISO_UTC_MS.match(p["ts"]) and p["process"] == "api" and p["level"] for p in parsed)
    assert any(p["logger"] == "app.request" and p["message"] == "GET /metrics 200" for p in parsed)


@pytest.mark.workers
def test_gunicorns_own_lines_are_text_with_log_format_text(tmp_path):
    lines = _gunicorn_lines(tmp_path, LOG_FORMAT="text")
    assert any(re.search(r"INFO  gunicorn\.error \[None\] Starting gunicorn", line) for line in lines), lines
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)


@pytest.mark.workers
def test_a_request_can_be_followed_into_its_jobs(committed, committed_client, run_pool):
    """The request id of the request that enqueued a job is the request id of every line the job
    logs, and of the jobs it enqueues in turn; each job logs its start and its end."""
    org = f.make_organization(committed)
    headers = principal_headers(committed, org, "admin")
    committed.commit()
    worker = run_pool("default", LOG_LEVEL="INFO")
    created = committed_client.post("/api/clients", headers=headers, json={
        "name": "Traced", "transport": "sim", "config": {"scan_after_ms": 100}}).get_json()
    resp = committed_client.post(f"/api/clients/{created['id']}/start",
                                 headers={**headers, "X-Request-ID": "req-follow-1"})
    assert resp.status_code == 202 and resp.headers["X-Request-ID"] == "req-follow-1"
    wait_for(lambda: committed_client.get(f"/api/clients/{created['id']}", headers=headers).get_json()["status"]
             == "ready", timeout=30, message="the sim client to be ready")
    wait_for(worker_idle, timeout=30, message="the worker to finish the client's jobs")
    lines = [json.loads(line) for line in stop(worker).splitlines() if line.startswith("{")]

    traced = [line for line in lines if line.get("request_id") == "req-follow-1"]
    starts = {line["message_id"]: line for line in traced if line["message"].startswith("job start")}
    ends = {line["message_id"]: line for line in traced if "outcome" in line}
    first = next(line for line in starts.values() if line["actor"] == "clients.start")
    assert first["logger"] == "workers.middleware" and first["process"] == "worker:default"
    end = ends[first["message_id"]]
    assert (end["actor"], end["outcome"]) == ("clients.start", "ok") and end["duration_ms"] >= 0
    assert ISO_UTC_MS.match(end["ts"])
    assert set(ends) == set(starts), "every job that started under the request id ended under it"
    assert len({line["actor"] for line in ends.values()}) >= 2, "the jobs it caused carry it too"
    assert all(line["outcome"] == "ok" for line in ends.values())


def worker_idle() -> bool:
    """Nothing left in the default queue, ready or delayed (a job is removed once acknowledged)."""
    from app.kv import redis_client

    r = redis_client()
    return not any(r.hlen(f"dramatiq:{q}.msgs") for q in ("default", "default.DQ"))


def test_each_job_logs_its_start_and_outcome_under_the_request_id_it_carries():
    import dramatiq

    from app.logs import current_request_id
    from workers.middleware import RequestContext

    context = RequestContext()

    def message(**options):
        return dramatiq.Message(queue_name="default", actor_name="system.noop", args=(), kwargs={}, options=options)

    traced, failing, deferred, untraced, skipped = (message(request_id="req-9"), message(request_id="req-9"),
                                                   message(request_id="req-9", retries=2), message(), message())
    done = capture("workers.middleware", process="worker:default")
    try:
        during = []
        for msg, exception in ((traced, None), (failing, ValueError("boom")), (deferred, dramatiq.Retry("later")),
                               (untraced, None)):
            context.before_process_message(None, msg)
            during.append(current_request_id.get())
            sent = message()
            context.before_enqueue(None, sent, None)  # a job it sends in turn
            during.append(sent.options["request_id"])
            context.after_process_message(None, msg, exception=exception)
            assert current_request_id.get() is None
        context.after_skip_message(None, skipped)
    finally:
        out = done()
    assert during == ["req-9"] * 6 + [untraced.message_id] * 2
    lines = [json.loads(line) for line in out.splitlines()]
    ends = [(line["message_id"], line["request_id"], line["outcome"], line.get("error"), line["retries"])
            for line in lines if "outcome" in line]
    assert ends == [(traced.message_id, "req-9", "ok", None, 0), (failing.message_id, "req-9", "failed", "ValueError", 0),
                    (deferred.message_id, "req-9", "retry", "Retry", 2),
                    (untraced.message_id, untraced.message_id, "ok", None, 0),
                    (skipped.message_id, None, "skipped", None, 0)]
    assert [line["message"] for line in lines if line["message"].startswith("job start")] == [
        f"job start system.noop {m.message_id}" for m in (traced, failing, deferred, untraced)]
    assert all(line["duration_ms"] >= 0 for line in lines if line.get("outcome") not in (None, "skipped"))
    assert not message().options, "outside a request or a job nothing is added"
    context.before_enqueue(None, plain := message(), None)
    assert "request_id" not in plain.options
