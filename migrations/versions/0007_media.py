"""Media as a whole feature: a medium's kind (``sticker`` besides the mime type's), where it came
from (an upload, a URL a worker fetches, an inbound message), its processing (``status`` starts
``processing``; ``error`` when it failed; ``metadata``: dimensions, duration, ...), the copy that is
sent (``send_key``: EXIF stripped or re-encoded) and its thumbnail, when it expires (retention; an
index finds a medium's messages);
``sha256`` is unknown until a fetched file arrives, and an upload's bytes are kept once per
organisation (a unique index the re-upload finds). An organisation's media quota is the server's
setting unless set for it (``media_quota_bytes`` / ``media_quota_files`` NULL). Messages may be
``sticker`` and ``voice``."""
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.execute("""
        ALTER TABLE media ALTER COLUMN sha256 DROP NOT NULL;
        ALTER TABLE media DROP CONSTRAINT media_sha256_check;
        ALTER TABLE media ADD CONSTRAINT media_sha256_check CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$');
        ALTER TABLE media ALTER COLUMN status SET DEFAULT 'processing';
        ALTER TABLE media ADD COLUMN kind text NOT NULL DEFAULT 'document'
            CHECK (kind IN ('image', 'video', 'audio', 'document', 'sticker'));
        UPDATE media SET kind = CASE split_part(mime_type, '/', 1)
            WHEN 'image' THEN 'image' WHEN 'video' THEN 'video' WHEN 'audio' THEN 'audio' ELSE 'document' END;
        ALTER TABLE media ADD COLUMN source text NOT NULL DEFAULT 'upload' CHECK (source IN ('upload', 'url', 'inbound'));
        ALTER TABLE media ADD COLUMN source_url text;
        ALTER TABLE media ADD COLUMN client_id text COLLATE "C" REFERENCES clients(id) ON DELETE SET NULL;
        ALTER TABLE media ADD COLUMN fetch_ref jsonb;
        ALTER TABLE media ADD COLUMN error text;
        ALTER TABLE media ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'::jsonb;
        ALTER TABLE media ADD COLUMN send_key text;
        ALTER TABLE media ADD COLUMN thumbnail_key text;
        ALTER TABLE media ADD COLUMN attempts integer NOT NULL DEFAULT 0;
        ALTER TABLE media ADD COLUMN ready_at timestamptz;
        ALTER TABLE media ADD COLUMN expires_at timestamptz;
        DROP INDEX media_org_sha256_idx;
        CREATE UNIQUE INDEX media_org_sha256_uq ON media (organization_id, sha256)
            WHERE deleted_at IS NULL AND source = 'upload' AND status <> 'failed';
        CREATE INDEX media_expiry_idx ON media (expires_at) WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
        CREATE INDEX media_deleted_idx ON media (deleted_at) WHERE deleted_at IS NOT NULL;
        CREATE INDEX messages_media_idx ON messages (media_id) WHERE media_id IS NOT NULL;
        ALTER TABLE organization_settings ALTER COLUMN media_quota_bytes DROP NOT NULL;
        ALTER TABLE organization_settings ALTER COLUMN media_quota_bytes DROP DEFAULT;
        UPDATE organization_settings SET media_quota_bytes = NULL WHERE media_quota_bytes = 1073741824;
        ALTER TABLE organization_settings ADD COLUMN media_quota_files integer CHECK (media_quota_files >= 0);
        ALTER TABLE messages DROP CONSTRAINT messages_type_check;
        ALTER TABLE messages ADD CONSTRAINT messages_type_check
            CHECK (type IN ('text', 'image', 'video', 'audio', 'document', 'sticker', 'voice', 'template'));
    """)


def downgrade() -> None:
    op.execute("""
        DELETE FROM messages WHERE type IN ('sticker', 'voice');
        ALTER TABLE messages DROP CONSTRAINT messages_type_check;
        ALTER TABLE messages ADD CONSTRAINT messages_type_check
            CHECK (type IN ('text', 'image', 'video', 'audio', 'document', 'template'));
        ALTER TABLE organization_settings DROP COLUMN media_quota_files;
        UPDATE organization_settings SET media_quota_bytes = 1073741824 WHERE media_quota_bytes IS NULL;
        ALTER TABLE organization_settings ALTER COLUMN media_quota_bytes SET DEFAULT 1073741824;
        ALTER TABLE organization_settings ALTER COLUMN media_quota_bytes SET NOT NULL;
        DROP INDEX messages_media_idx;
        DROP INDEX media_deleted_idx;
        DROP INDEX media_expiry_idx;
        DROP INDEX media_org_sha256_uq;
        DELETE FROM media WHERE sha256 IS NULL;
        CREATE INDEX media_org_sha256_idx ON media (organization_id, sha256);
        ALTER TABLE media DROP COLUMN expires_at, DROP COLUMN ready_at, DROP COLUMN attempts,
            DROP COLUMN thumbnail_key, DROP COLUMN send_key, DROP COLUMN metadata, DROP COLUMN error,
            DROP COLUMN fetch_ref, DROP COLUMN client_id, DROP COLUMN source_url, DROP COLUMN source, DROP COLUMN kind;
        ALTER TABLE media ALTER COLUMN status SET DEFAULT 'ready';
        ALTER TABLE media DROP CONSTRAINT media_sha256_check;
        ALTER TABLE media ALTER COLUMN sha256 SET NOT NULL;
        ALTER TABLE media ADD CONSTRAINT media_sha256_check CHECK (sha256 ~ '^[0-9a-f]{64}$');
    """)
