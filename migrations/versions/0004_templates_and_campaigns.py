"""Templates get Meta's parts (header, footer, buttons, a checked category) and a review per client
(``template_approvals``); campaigns get what their sending needs."""
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute("""
        UPDATE templates SET category = NULL WHERE category NOT IN ('marketing', 'utility', 'authentication');
        ALTER TABLE templates
            ADD CONSTRAINT templates_category_check CHECK (category IN ('marketing', 'utility', 'authentication')),
            ADD COLUMN header jsonb,
            ADD COLUMN footer text,
            ADD COLUMN buttons jsonb NOT NULL DEFAULT '[]'::jsonb,
            ADD COLUMN created_by text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL;

        CREATE TABLE template_approvals (
            template_id      text COLLATE "C" NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
            client_id        text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
            organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            status           text NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'approved', 'rejected', 'paused', 'disabled', 'error')),
            reason           text,
            meta_template_id text,
            submitted_at     timestamptz,
            reviewed_at      timestamptz,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (template_id, client_id)
        );
        CREATE INDEX template_approvals_client_idx ON template_approvals (client_id, status);

        ALTER TABLE campaigns
            ADD COLUMN send_window jsonb,
            ADD COLUMN frequency_cap jsonb,
            ADD COLUMN recipient_variables jsonb NOT NULL DEFAULT '{}'::jsonb,
            ADD COLUMN fanout_cursor text,
            ADD COLUMN fanout_done_at timestamptz,
            ADD COLUMN pending_count integer NOT NULL DEFAULT 0,
            ADD COLUMN cancelled_count integer NOT NULL DEFAULT 0,
            ADD COLUMN replied_count integer NOT NULL DEFAULT 0;
        ALTER TABLE campaign_recipients
            DROP CONSTRAINT campaign_recipients_status_check,
            ADD CONSTRAINT campaign_recipients_status_check
                CHECK (status IN ('pending', 'queued', 'sent', 'delivered', 'read', 'failed', 'skipped', 'cancelled')),
            ADD COLUMN replied_at timestamptz;
    """)
    op.execute(TRIGGERS)
    # the counters of campaigns made before, from their recipients
    op.execute("""
        UPDATE campaigns AS c SET total_count = p.total, pending_count = p.pending, queued_count = p.queued,
               sent_count = p.sent, delivered_count = p.delivered, read_count = p.read, failed_count = p.failed,
               skipped_count = p.skipped
          FROM v_campaign_progress AS p WHERE p.campaign_id = c.id
    """)


TRIGGERS = """
-- Campaign progress, kept by the database itself: a campaign message's status change moves its
-- recipient's status (messages_campaign_follow), and every change of recipients moves the
-- campaign's counters (campaign_recipients_count_*), one UPDATE per statement, whichever code path
-- changed them. The counters are exclusive (each recipient counted once, in its current status).
CREATE FUNCTION campaign_recipient_status(message_status text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE message_status WHEN 'sending' THEN 'queued' WHEN 'unknown' THEN 'queued' ELSE message_status END
$$;

CREATE FUNCTION messages_campaign_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE campaign_id IS NOT NULL) THEN
        UPDATE campaign_recipients AS r
           SET status = campaign_recipient_status(n.status), updated_at = now()
          FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
         WHERE n.campaign_id IS NOT NULL AND n.status IS DISTINCT FROM o.status AND r.message_id = n.id
           AND r.status IS DISTINCT FROM campaign_recipient_status(n.status)
           AND campaign_recipient_status(n.status) IN ('queued', 'sent', 'delivered', 'read', 'failed', 'cancelled');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION campaign_progress_apply(campaign_ids text[], statuses text[], replied boolean[], ns integer[])
    RETURNS void LANGUAGE sql AS $$
    UPDATE campaigns AS c
       SET total_count = c.total_count + d.total, pending_count = c.pending_count + d.pending,
           queued_count = c.queued_count + d.queued, sent_count = c.sent_count + d.sent,
           delivered_count = c.delivered_count + d.delivered, read_count = c.read_count + d.read,
           failed_count = c.failed_count + d.failed, skipped_count = c.skipped_count + d.skipped,
           cancelled_count = c.cancelled_count + d.cancelled, replied_count = c.replied_count + d.replied
      FROM (SELECT x.campaign_id, sum(x.n) AS total,
                   coalesce(sum(x.n) FILTER (WHERE x.status = 'pending'), 0) AS pending,
                   coalesce(sum(x.n) FILTER (WHERE x.status = 'queued'), 0) AS queued,
                   coalesce(sum(x.n) FILTER (WHERE x.status = 'sent'), 0) AS sent,
                   coalesce(sum(x.n) FILTER (WHERE x.status = 'delivered'), 0) AS delivered,
                   coalesce(sum(x.n) FILTER (WHERE x.status = 'read'), 0) AS read,
                   coalesce(sum(x.n) FILTER (WHERE x.status = 'failed'), 0) AS failed,
                   coalesce(sum(x.n) FILTER (WHERE x.status = 'skipped'), 0) AS skipped,
                   coalesce(sum(x.n) FILTER (WHERE x.status = 'cancelled'), 0) AS cancelled,
                   coalesce(sum(x.n) FILTER (WHERE x.replied), 0) AS replied
              FROM unnest(campaign_ids, statuses, replied, ns) AS x(campaign_id, status, replied, n)
             GROUP BY x.campaign_id) AS d
     WHERE c.id = d.campaign_id
$$;

CREATE FUNCTION campaign_recipients_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids text[];
    statuses text[];
    replied boolean[];
    ns integer[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(campaign_id), array_agg(status), array_agg(replied_at IS NOT NULL), array_agg(1)
          INTO ids, statuses, replied, ns FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(campaign_id), array_agg(status), array_agg(replied_at IS NOT NULL), array_agg(-1)
          INTO ids, statuses, replied, ns FROM old_rows;
    ELSE
        SELECT array_agg(t.campaign_id), array_agg(t.status), array_agg(t.replied), array_agg(t.n)
          INTO ids, statuses, replied, ns FROM (
            SELECT n.campaign_id, n.status, n.replied_at IS NOT NULL AS replied, 1 AS n
              FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
             WHERE n.status IS DISTINCT FROM o.status OR (n.replied_at IS NULL) <> (o.replied_at IS NULL)
            UNION ALL
            SELECT o.campaign_id, o.status, o.replied_at IS NOT NULL, -1
              FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
             WHERE n.status IS DISTINCT FROM o.status OR (n.replied_at IS NULL) <> (o.replied_at IS NULL)) AS t;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM campaign_progress_apply(ids, statuses, replied, ns);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_campaign_follow AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION messages_campaign_follow();
CREATE TRIGGER campaign_recipients_count_insert AFTER INSERT ON campaign_recipients
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION campaign_recipients_count();
CREATE TRIGGER campaign_recipients_count_update AFTER UPDATE ON campaign_recipients
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION campaign_recipients_count();
CREATE TRIGGER campaign_recipients_count_delete AFTER DELETE ON campaign_recipients
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION campaign_recipients_count();
"""
