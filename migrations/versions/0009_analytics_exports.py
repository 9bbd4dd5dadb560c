"""Response-time histograms in the analytics rollups (``response_buckets``: {lower bound in seconds:
count}, the p90 of a range comes from their sum) and exports made by a worker (``analytics_exports``:
the file lands in media storage, a link downloads it until it expires).

Existing rollup rows get an empty histogram: ``python -m app analytics-backfill`` fills it for them."""
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.execute("""
        ALTER TABLE analytics_hourly ADD COLUMN response_buckets jsonb NOT NULL DEFAULT '{}'::jsonb;
        ALTER TABLE analytics_daily ADD COLUMN response_buckets jsonb NOT NULL DEFAULT '{}'::jsonb;
        CREATE TABLE analytics_exports (
            id               text COLLATE "C" PRIMARY KEY,
            organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            what             text NOT NULL CHECK (what IN ('rollups', 'messages')),
            format           text NOT NULL DEFAULT 'csv' CHECK (format IN ('csv')),
            params           jsonb NOT NULL DEFAULT '{}'::jsonb,
            status           text NOT NULL DEFAULT 'queued'
                             CHECK (status IN ('queued', 'running', 'ready', 'failed', 'expired')),
            rows             bigint,
            size_bytes       bigint,
            storage_key      text,
            error            text,
            attempts         integer NOT NULL DEFAULT 0,
            lease_until      timestamptz,
            created_by       text COLLATE "C",
            created_at       timestamptz NOT NULL DEFAULT now(),
            started_at       timestamptz,
            finished_at      timestamptz,
            expires_at       timestamptz
        );
        CREATE INDEX analytics_exports_org_id_idx ON analytics_exports (organization_id, id DESC);
        CREATE INDEX analytics_exports_open_idx ON analytics_exports (created_at)
            WHERE status IN ('queued', 'running');
        CREATE INDEX analytics_exports_expiry_idx ON analytics_exports (expires_at) WHERE status = 'ready';
    """)


def downgrade() -> None:
    op.execute("""
        DROP TABLE analytics_exports;
        ALTER TABLE analytics_daily DROP COLUMN response_buckets;
        ALTER TABLE analytics_hourly DROP COLUMN response_buckets;
    """)
