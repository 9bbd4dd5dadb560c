"""The anchors of the single-send benchmark: the least a send endpoint can do, served the same way.

Two WSGI apps answer ``POST /api/clients/<client_id>/send-message`` ({to, message} -> 202) with
one INSERT (SQLAlchemy Core on a pooled psycopg engine) and one LPUSH (redis-py) per request:

  ``bench.anchor_app:plain``    Flask alone, the body read with ``request.get_json()``;
  ``bench.anchor_app:smorest``  flask-smorest with a marshmallow schema for the body and the answer,
                                as the product's routes are declared.

The product's send costs more than these (authentication, pacing, the outbox, events), so its CPU
per request is read as a multiple of theirs, measured under the same gunicorn and the same load.
They use the product's DATABASE_URL and REDIS_URL (``config.settings``); ``create_table()`` makes
their table.

``plain`` also answers two reads, the anchors of the analytics benchmark (bench/bench_analytics.py):
``GET /api/anchor/clients/<client_id>`` (one indexed SELECT of a client row, as JSON) and
``GET /api/anchor/export?rows=N`` (N CSV rows made up in Python, streamed 1000 rows a chunk).
"""
from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import redis
import sqlalchemy as sa
from flask import Flask, Response, request

from config import settings

TABLE = "bench_anchor_sends"
QUEUE_KEY = "bench:anchor:sends"

_metadata = sa.MetaData()
sends = sa.Table(
    TABLE, _metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("to_phone", sa.Text, nullable=False),
    sa.Column("body", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
)
_insert = sends.insert().returning(sends.c.id)
_read_client = sa.text("SELECT id, organization_id, name, status, phone, created_at FROM clients WHERE id = :id")


def _engine() -> sa.Engine:
    url = settings.DATABASE_URL
    for prefix in ("postgresql://", "postgres://"):  # the psycopg 3 driver, as the product uses
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    return sa.create_engine(url, pool_size=8, max_overflow=0)


def create_table() -> None:
    """(Re)creates the anchors' table, empty."""
    engine = _engine()
    _metadata.drop_all(engine)
    _metadata.create_all(engine)
    engine.dispose()
    redis.Redis.from_url(settings.REDIS_URL).delete(QUEUE_KEY)


class _Store:
    """One engine and one Redis pool per worker process, made at its first request (after the fork)."""

    engine: sa.Engine | None = None
    redis: redis.Redis | None = None

    def accept(self, client_id: str, to: str, text: str | None) -> int:
        if self.engine is None:
            self.engine, self.redis = _engine(), redis.Redis.from_url(settings.REDIS_URL)
        with self.engine.begin() as conn:
            message_id = conn.execute(_insert, {"client_id": client_id, "to_phone": to, "body": text}).scalar_one()
        self.redis.lpush(QUEUE_KEY, json.dumps({"id": message_id}))
        return message_id

    def client(self, client_id: str) -> dict | None:
        if self.engine is None:
            self.engine, self.redis = _engine(), redis.Redis.from_url(settings.REDIS_URL)
        with self.engine.connect() as conn:
            row = conn.execute(_read_client, {"id": client_id}).first()
        if row is None:
            return None
        return {**row._asdict(), "created_at": row.created_at.isoformat()}


def _csv_rows(n: int):
    """``n`` message-like CSV rows (the columns of the product's message export), 1000 a chunk."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("id", "created_at", "client_id", "campaign_id", "direction", "type", "to", "from", "status",
                     "error_code", "sent_at", "delivered_at", "read_at", "failed_at"))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        at = start + timedelta(seconds=i)
        writer.writerow((f"msg_{i:026d}", at.isoformat(), "cli_anchor0000000000000000000", None, "outbound", "text",
                         f"+1555{i % 10_000_000:07d}", "+14155550000", "read", None, at.isoformat(),
                         (at + timedelta(seconds=2)).isoformat(), (at + timedelta(seconds=60)).isoformat(), None))
        if i % 1000 == 999:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def _plain_app() -> Flask:
    app = Flask("anchor_plain")
    store = _Store()

    @app.post("/api/clients/<client_id>/send-message")
    def send(client_id):
        body = request.get_json()
        message_id = store.accept(client_id, body["to"], body.get("message"))
        return {"messageId": str(message_id), "id": str(message_id), "status": "queued"}, 202

    @app.get("/api/anchor/clients/<client_id>")
    def read_client(client_id):
        row = store.client(client_id)
        return (row, 200) if row else ({"error": "not_found"}, 404)

    @app.get("/api/anchor/export")
    def export():
        return Response(_csv_rows(int(request.args.get("rows", "1000"))), mimetype="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="anchor.csv"'})

    return app


def _smorest_app() -> Flask:
    import marshmallow as ma
    from flask.views import MethodView
    from flask_smorest import Api, Blueprint

    class SendSchema(ma.Schema):
        to = ma.fields.String(required=True, validate=ma.validate.Length(max=32))
        message = ma.fields.String(load_default=None, allow_none=True, validate=ma.validate.Length(max=4096))

    class ResultSchema(ma.Schema):
        messageId = ma.fields.String()
        id = ma.fields.String()
        status = ma.fields.String()

    app = Flask("anchor_smorest")
    app.config.update(API_TITLE="anchor", API_VERSION="1", OPENAPI_VERSION="3.0.3")
    api = Api(app)
    blp = Blueprint("anchor", __name__, url_prefix="/api")
    store = _Store()

    @blp.route("/clients/<client_id>/send-message")
    class Send(MethodView):
        @blp.arguments(SendSchema)
        @blp.response(202, ResultSchema)
        def post(self, body, client_id):
            message_id = str(store.accept(client_id, body["to"], body["message"]))
            return {"messageId": message_id, "id": message_id, "status": "queued"}

    api.register_blueprint(blp)
    return app


plain = _plain_app()
smorest = _smorest_app()
