"""A client's waiting messages in id order straight from an index: the claim index becomes
``(client_id, status, id)`` (it was ``(client_id, status, scheduled_for)``, whose last column no
query orders by), so a batch of an unpaced client's sends (``messages.send_due``) reads the next
hundred messages of a backlog of any size without sorting it."""
from alembic import op

revision = "0010"
down_revision = "0009"

_PARTIAL = "WHERE status IN ('queued', 'sending', 'unknown')"


def _rebuild(columns: str) -> None:
    # built without blocking sends on a large messages table (outside the migration's transaction;
    # a build interrupted before leaves an invalid index, dropped first)
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS messages_claim_next_idx")
        op.execute(f"CREATE INDEX CONCURRENTLY messages_claim_next_idx ON messages ({columns}) {_PARTIAL}")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS messages_claim_idx")
        op.execute("ALTER INDEX messages_claim_next_idx RENAME TO messages_claim_idx")


def upgrade() -> None:
    _rebuild("client_id, status, id")


def downgrade() -> None:
    _rebuild("client_id, status, scheduled_for")
