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
    """)
