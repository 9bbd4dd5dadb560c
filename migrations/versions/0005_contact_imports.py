"""Contact imports that a worker streams, resumes and reports on: ``status`` starts ``queued`` (was
``pending``), the counts are named as the API names them (``duplicate_count`` was ``skipped_count``,
``invalid_count`` was ``failed_count``), and the row keeps how to read the file (delimiter, column
plan, default region), the list to add contacts to, and how far the worker got (``processed_bytes``,
``lines_read``, ``attempts``, ``lease_until``). Contacts remember the last import that wrote them
(``last_import_id``), which tells a number repeated in one file from one already known."""
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.execute("""
        ALTER TABLE contact_imports DROP CONSTRAINT contact_imports_status_check;
        UPDATE contact_imports SET status = 'queued' WHERE status = 'pending';
        ALTER TABLE contact_imports ALTER COLUMN status SET DEFAULT 'queued';
        ALTER TABLE contact_imports ADD CONSTRAINT contact_imports_status_check
            CHECK (status IN ('queued', 'running', 'completed', 'failed'));
        ALTER TABLE contact_imports RENAME COLUMN skipped_count TO duplicate_count;
        ALTER TABLE contact_imports RENAME COLUMN failed_count TO invalid_count;
        ALTER TABLE contact_imports
            ADD COLUMN list_id text COLLATE "C" REFERENCES contact_lists(id) ON DELETE SET NULL,
            ADD COLUMN delimiter text NOT NULL DEFAULT ',',
            ADD COLUMN column_plan jsonb NOT NULL DEFAULT '{}'::jsonb,
            ADD COLUMN default_region text,
            ADD COLUMN size_bytes bigint NOT NULL DEFAULT 0,
            ADD COLUMN processed_bytes bigint NOT NULL DEFAULT 0,
            ADD COLUMN lines_read integer NOT NULL DEFAULT 0,
            ADD COLUMN attempts integer NOT NULL DEFAULT 0,
            ADD COLUMN lease_until timestamptz;
        CREATE INDEX contact_imports_active_idx ON contact_imports (updated_at) WHERE status IN ('queued', 'running');
        ALTER TABLE contacts ADD COLUMN last_import_id text COLLATE "C";
    """)
