"""Transport reports recorded in Postgres before they are acknowledged (transport_events), and the
``unknown`` status of a message that may or may not have reached WhatsApp."""
from alembic import op

revision = "0002"
down_revision = "0001"

STATUSES = "'queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'cancelled', 'received', 'unknown'"


def upgrade() -> None:
    op.execute(f"""
        ALTER TABLE messages DROP CONSTRAINT messages_status_check;
        ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN ({STATUSES}));
        ALTER TABLE message_status_history DROP CONSTRAINT message_status_history_status_check;
        ALTER TABLE message_status_history ADD CONSTRAINT message_status_history_status_check
            CHECK (status IN ({STATUSES}));
        DROP INDEX messages_claim_idx;
        CREATE INDEX messages_claim_idx ON messages (client_id, status, scheduled_for)
            WHERE status IN ('queued', 'sending', 'unknown');
        CREATE TABLE transport_events (
            id               bigserial PRIMARY KEY,
            organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            client_id        text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
            kind             text NOT NULL CHECK (kind IN ('status', 'ack', 'inbound')),
            payload          jsonb NOT NULL,
            due_at           timestamptz NOT NULL DEFAULT now(),
            dispatched_at    timestamptz,
            attempts         integer NOT NULL DEFAULT 0,
            applied_at       timestamptz,
            outcome          text CHECK (outcome IN ('applied', 'ignored', 'orphaned')),
            created_at       timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX transport_events_pending_idx ON transport_events (due_at) WHERE applied_at IS NULL;
        CREATE INDEX transport_events_applied_idx ON transport_events (applied_at) WHERE applied_at IS NOT NULL;
    """)
