"""Automations: several actions (`actions`), conditions, a priority and stop_processing; a cooldown of
60 s by default; what each action of a run did; the replies a contact got lately (an index for the
per-minute guard); fire_count and last_fired_at counted from the runs instead of updated on the
automation at each firing (every job of the organisation updated the same rows); and the agent a
contact is assigned to (``contacts.assigned_user_id``)."""
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.execute("""
        ALTER TABLE automations ADD COLUMN actions jsonb NOT NULL DEFAULT '[]'::jsonb;
        ALTER TABLE automations ADD COLUMN conditions jsonb NOT NULL DEFAULT '{}'::jsonb;
        ALTER TABLE automations ADD COLUMN priority integer NOT NULL DEFAULT 100;
        ALTER TABLE automations ADD COLUMN stop_processing boolean NOT NULL DEFAULT false;
        ALTER TABLE automations ALTER COLUMN cooldown_seconds SET DEFAULT 60;
        UPDATE automations SET actions = jsonb_build_array(action) WHERE action <> '{}'::jsonb;
        ALTER TABLE automations DROP COLUMN fire_count;
        ALTER TABLE automations DROP COLUMN last_fired_at;
        ALTER TABLE automation_runs ADD COLUMN actions jsonb NOT NULL DEFAULT '[]'::jsonb;
        CREATE INDEX automation_runs_fired_idx ON automation_runs (automation_id, created_at) WHERE status = 'fired';
        CREATE INDEX automation_runs_contact_replies_idx ON automation_runs (contact_id, created_at)
            WHERE reply_message_id IS NOT NULL;
        ALTER TABLE contacts ADD COLUMN assigned_user_id text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL;
    """)
