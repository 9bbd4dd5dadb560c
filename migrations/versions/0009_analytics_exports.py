"""Response-time histograms in the analytics rollups (``response_buckets``: {lower bound in seconds:
count}, the p90 of a range comes from their sum); totals per client and per organisation
(``analytics_totals_hourly`` / ``_daily``: campaigns summed, ``client_id`` '' for the whole
organisation) so that reads scan a few rows per hour or day whatever the number of clients and
campaigns; an index on a client's messages by time (the rollup recomputes a client's hour); exports
made by a worker (``analytics_exports``: the file lands in media storage, a link downloads it until
it expires).

Existing rollup rows get an empty histogram and no totals: ``python -m app analytics-backfill``
fills them."""
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.execute("""
        ALTER TABLE analytics_hourly ADD COLUMN response_buckets jsonb NOT NULL DEFAULT '{}'::jsonb;
        ALTER TABLE analytics_daily ADD COLUMN response_buckets jsonb NOT NULL DEFAULT '{}'::jsonb;
        CREATE TABLE analytics_totals_hourly (
            id                    bigserial PRIMARY KEY,
            organization_id       text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            client_id             text COLLATE "C" NOT NULL DEFAULT '',
            bucket                timestamptz NOT NULL,
            sent                  integer NOT NULL DEFAULT 0,
            delivered             integer NOT NULL DEFAULT 0,
            read                  integer NOT NULL DEFAULT 0,
            failed                integer NOT NULL DEFAULT 0,
            failures              jsonb NOT NULL DEFAULT '{}'::jsonb,
            received              integer NOT NULL DEFAULT 0,
            replied               integer NOT NULL DEFAULT 0,
            opted_out             integer NOT NULL DEFAULT 0,
            response_seconds_sum  double precision NOT NULL DEFAULT 0,
            response_count        integer NOT NULL DEFAULT 0,
            response_buckets      jsonb NOT NULL DEFAULT '{}'::jsonb,
            delivery_seconds_sum  double precision NOT NULL DEFAULT 0,
            delivery_count        integer NOT NULL DEFAULT 0,
            read_seconds_sum      double precision NOT NULL DEFAULT 0,
            read_count            integer NOT NULL DEFAULT 0,
            updated_at            timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT analytics_totals_hourly_key UNIQUE (organization_id, client_id, bucket)
        );
        CREATE TABLE analytics_totals_daily (
            id                    bigserial PRIMARY KEY,
            organization_id       text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            client_id             text COLLATE "C" NOT NULL DEFAULT '',
            bucket                date NOT NULL,
            sent                  integer NOT NULL DEFAULT 0,
            delivered             integer NOT NULL DEFAULT 0,
            read                  integer NOT NULL DEFAULT 0,
            failed                integer NOT NULL DEFAULT 0,
            failures              jsonb NOT NULL DEFAULT '{}'::jsonb,
            received              integer NOT NULL DEFAULT 0,
            replied               integer NOT NULL DEFAULT 0,
            opted_out             integer NOT NULL DEFAULT 0,
            response_seconds_sum  double precision NOT NULL DEFAULT 0,
            response_count        integer NOT NULL DEFAULT 0,
            response_buckets      jsonb NOT NULL DEFAULT '{}'::jsonb,
            delivery_seconds_sum  double precision NOT NULL DEFAULT 0,
            delivery_count        integer NOT NULL DEFAULT 0,
            read_seconds_sum      double precision NOT NULL DEFAULT 0,
            read_count            integer NOT NULL DEFAULT 0,
            updated_at            timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT analytics_totals_daily_key UNIQUE (organization_id, client_id, bucket)
        );
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


    # built without blocking sends on a large messages table (outside the migration's transaction;
    # a build interrupted before leaves an invalid index, dropped first)
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS messages_client_created_idx")
        op.execute("CREATE INDEX CONCURRENTLY messages_client_created_idx ON messages (client_id, created_at)")


def downgrade() -> None:
    op.execute("""
        DROP TABLE analytics_exports;
        DROP TABLE analytics_totals_daily;
        DROP TABLE analytics_totals_hourly;
        DROP INDEX messages_client_created_idx;
        ALTER TABLE analytics_daily DROP COLUMN response_buckets;
        ALTER TABLE analytics_hourly DROP COLUMN response_buckets;
    """)
