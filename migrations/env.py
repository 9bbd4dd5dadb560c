"""Alembic's environment: run on the connection ``app.schema.migrate`` opens (it holds the lock
that serialises concurrent starts), or on DATABASE_URL for the ``alembic`` command itself."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

connection = context.config.attributes.get("connection")


def run(conn) -> None:
    context.configure(connection=conn, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:  # `alembic -c migrations/alembic.ini upgrade head` by hand
    from app.db import sqlalchemy_url
    from config import settings

    with create_engine(sqlalchemy_url(settings.DATABASE_URL)).connect() as conn:
        run(conn)
        conn.commit()
