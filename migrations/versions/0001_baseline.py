"""The schema of the first release (migrations/baseline.sql, frozen): what every installation made
before migrations existed has. A database created from it and upgraded to the head must equal one
created from schema.sql (tests/db/test_migrations.py)."""
from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    run_sql_file(Path(__file__).resolve().parent.parent / "baseline.sql")


def run_sql_file(path: Path) -> None:
    """A file of many statements, on the raw psycopg connection (one simple-protocol execute)."""
    op.get_bind().connection.dbapi_connection.execute(path.read_text())
