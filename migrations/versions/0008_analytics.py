"""Analytics rollups per organisation x client x campaign x hour (and UTC day): the counts of replies,
opt-outs, failures by error code and delivery / read latencies besides the old ones; ``campaign_id`` is
'' outside campaigns (part of the unique key). The rollup job's watermark (``analytics_watermarks``) and
an index on a chat's messages by time (replies, response times).

The old rollup tables were never filled (no job wrote them), so they are made anew; run
``python -m app analytics-backfill --from ... --to ...`` to roll up messages older than the upgrade."""
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.execute("""
        DROP TABLE analytics_hourly;
        DROP TABLE analytics_daily;
        CREATE INDEX messages_chat_created_idx ON messages (client_id, contact_id, created_at)
            WHERE contact_id IS NOT NULL;
        CREATE TABLE analytics_hourly (
            id                    bigserial PRIMARY KEY,
            organization_id       text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            client_id             text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
            campaign_id           text COLLATE "C" NOT NULL DEFAULT '',      -- '' = not from a campaign
            bucket                timestamptz NOT NULL,                     -- start of the hour
            sent                  integer NOT NULL DEFAULT 0,
            delivered             integer NOT NULL DEFAULT 0,
            read                  integer NOT NULL DEFAULT 0,
            failed                integer NOT NULL DEFAULT 0,
            failures              jsonb NOT NULL DEFAULT '{}'::jsonb,       -- {error code: count}
            received              integer NOT NULL DEFAULT 0,
            replied               integer NOT NULL DEFAULT 0,               -- outbound answered within the reply window
            opted_out             integer NOT NULL DEFAULT 0,
            response_seconds_sum  double precision NOT NULL DEFAULT 0,      -- inbound -> our first outbound after it
            response_count        integer NOT NULL DEFAULT 0,
            delivery_seconds_sum  double precision NOT NULL DEFAULT 0,      -- sent_at -> delivered_at
            delivery_count        integer NOT NULL DEFAULT 0,
            read_seconds_sum      double precision NOT NULL DEFAULT 0,      -- sent_at -> read_at
            read_count            integer NOT NULL DEFAULT 0,
            updated_at            timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT analytics_hourly_key UNIQUE (client_id, bucket, campaign_id)
        );
        CREATE INDEX analytics_hourly_org_bucket_idx ON analytics_hourly (organization_id, bucket);

        CREATE TABLE analytics_daily (
            id                    bigserial PRIMARY KEY,
            organization_id       text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            client_id             text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
            campaign_id           text COLLATE "C" NOT NULL DEFAULT '',
            bucket                date NOT NULL,                            -- the UTC day
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
            delivery_seconds_sum  double precision NOT NULL DEFAULT 0,
            delivery_count        integer NOT NULL DEFAULT 0,
            read_seconds_sum      double precision NOT NULL DEFAULT 0,
            read_count            integer NOT NULL DEFAULT 0,
            updated_at            timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT analytics_daily_key UNIQUE (client_id, bucket, campaign_id)
        );
        CREATE INDEX analytics_daily_org_bucket_idx ON analytics_daily (organization_id, bucket);

        -- How far the rollup has read message_status_history (one row, name 'status_history'). Rows with
        -- id > safe_id are (re)read by every run; safe_id moves up to seen_id once every transaction that was
        -- running when seen_id was read (xid < seen_xmax) has ended, so a late-committing row is never missed.
        CREATE TABLE analytics_watermarks (
            name        text COLLATE "C" PRIMARY KEY,
            safe_id     bigint NOT NULL DEFAULT 0,
            seen_id     bigint NOT NULL DEFAULT 0,
            seen_xmax   bigint NOT NULL DEFAULT 0,
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
    """)


def downgrade() -> None:
    op.execute("""
        DROP TABLE analytics_watermarks;
        DROP TABLE analytics_daily;
        DROP TABLE analytics_hourly;
        DROP INDEX messages_chat_created_idx;
        CREATE TABLE analytics_hourly (
            id                    bigserial PRIMARY KEY,
            organization_id       text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            client_id             text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
            bucket                timestamptz NOT NULL,
            sent                  integer NOT NULL DEFAULT 0,
            delivered             integer NOT NULL DEFAULT 0,
            read                  integer NOT NULL DEFAULT 0,
            failed                integer NOT NULL DEFAULT 0,
            received              integer NOT NULL DEFAULT 0,
            response_seconds_sum  double precision NOT NULL DEFAULT 0,
            response_count        integer NOT NULL DEFAULT 0,
            updated_at            timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT analytics_hourly_client_bucket_key UNIQUE (client_id, bucket)
        );
        CREATE INDEX analytics_hourly_org_bucket_idx ON analytics_hourly (organization_id, bucket);
        CREATE TABLE analytics_daily (
            id                    bigserial PRIMARY KEY,
            organization_id       text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            client_id             text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
            bucket                date NOT NULL,
            sent                  integer NOT NULL DEFAULT 0,
            delivered             integer NOT NULL DEFAULT 0,
            read                  integer NOT NULL DEFAULT 0,
            failed                integer NOT NULL DEFAULT 0,
            received              integer NOT NULL DEFAULT 0,
            response_seconds_sum  double precision NOT NULL DEFAULT 0,
            response_count        integer NOT NULL DEFAULT 0,
            updated_at            timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT analytics_daily_client_bucket_key UNIQUE (client_id, bucket)
        );
        CREATE INDEX analytics_daily_org_bucket_idx ON analytics_daily (organization_id, bucket);
    """)
