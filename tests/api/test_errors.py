"""The error format of API.md for every status the platform itself produces."""
import marshmallow as ma
import pytest
from flask.views import MethodView
from flask_smorest import Blueprint

from app.errors import Conflict, RateLimited, ServiceUnavailable
from app.security.guard import public


def _assert_error(resp, status, code):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert resp.headers["X-Request-ID"]
    return body["error"]


@pytest.fixture
def probe_app(session):
    """An app with a probe blueprint that triggers each kind of error."""
    from app import create_app

    app = create_app(TESTING=True)
    blp = Blueprint("probe", __name__, url_prefix="/probe")

    class Body(ma.Schema):
        name = ma.fields.String(required=True, validate=ma.validate.Length(max=5))

    @blp.route("/echo")
    class Echo(MethodView):
        @blp.arguments(Body)
        @public
        def post(self, body):
            return body

    @blp.route("/boom")
    class Boom(MethodView):
        @public
        def get(self):
            raise RuntimeError("secret internals")

    @blp.route("/conflict")
    class C(MethodView):
        @public
        def get(self):
            raise Conflict("busy", code="in_flight")

    @blp.route("/limited")
    class L(MethodView):
        @public
        def get(self):
            raise RateLimited(headers={"Retry-After": "7"})

    @blp.route("/down")
    class D(MethodView):
        @public
        def get(self):
            raise ServiceUnavailable()

    app.extensions["smorest_api"].register_blueprint(blp)
    return app.test_client()


def test_malformed_json_is_400(probe_app):
    err = _assert_error(probe_app.post("/probe/echo", data="{not json", content_type="application/json"),
                        400, "malformed_json")
    assert "JSON" in err["message"]


def test_validation_is_422_with_field_details(probe_app):
    err = _assert_error(probe_app.post("/probe/echo", json={"name": "far too long", "extra": 1}), 422,
                        "validation_error")
    assert "name" in err["details"] and "extra" in err["details"]


def test_unknown_path_is_404_and_wrong_method_405(probe_app):
    _assert_error(probe_app.get("/nope"), 404, "not_found")
    resp = probe_app.delete("/probe/echo")
    _assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


def test_uncaught_exception_is_500_without_internals(probe_app):
    resp = probe_app.get("/probe/boom")
    _assert_error(resp, 500, "internal_error")
    assert "secret internals" not in resp.get_data(as_text=True)
    assert "Traceback" not in resp.get_data(as_text=True)


def test_domain_errors_keep_code_and_headers(probe_app):
    _assert_error(probe_app.get("/probe/conflict"), 409, "in_flight")
    resp = probe_app.get("/probe/limited")
    _assert_error(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"] == "7"
    resp = probe_app.get("/probe/down")
    _assert_error(resp, 503, "service_unavailable")
    assert resp.headers["Retry-After"]


def test_body_over_limit_is_413(probe_app):
    from config import settings

    big = '{"name": "' + "x" * (settings.MAX_REQUEST_BYTES + 10) + '"}'
    _assert_error(probe_app.post("/probe/echo", data=big, content_type="application/json"), 413,
                  "payload_too_large")


def test_non_json_body_is_415(probe_app):
    _assert_error(probe_app.post("/probe/echo", data="name=x", content_type="text/plain"), 415,
                  "unsupported_media_type")


def test_request_id_is_echoed_or_generated(probe_app):
    resp = probe_app.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = probe_app.get("/nope", headers={"X-Request-ID": "bad id with spaces"})
    assert resp.headers["X-Request-ID"] != "bad id with spaces" and len(resp.headers["X-Request-ID"]) == 24
