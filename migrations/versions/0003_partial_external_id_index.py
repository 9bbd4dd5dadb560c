"""The index that matches transport acks to outbound messages by the transport's id covers only the
messages that have one (``WHERE external_id IS NOT NULL``): a message is written without it (queued)
and gets it once sent, so intake no longer pays for an index entry nothing looks up."""
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("""
        DROP INDEX messages_client_external_idx;
        CREATE INDEX messages_client_external_idx ON messages (client_id, external_id)
            WHERE external_id IS NOT NULL;
    """)
