"""Every log line carries the request id that the response reports, as JSON."""
import io
import json
import logging

from app.logs import _ContextFilter
from pythonjsonlogger.json import JsonFormatter


def test_request_log_lines_carry_the_request_id(client):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s %(request_id)s"))
    logger = logging.getLogger("app.request")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        resp = client.get("/nope", headers={"X-Request-ID": "req-42"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines, "the request was not logged"
    assert all(line["request_id"] == "req-42" for line in lines)
    assert resp.headers["X-Request-ID"] == "req-42"
    assert any("GET /nope 404" in line["message"] for line in lines)
