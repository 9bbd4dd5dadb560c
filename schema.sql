-- =============================================================================================
-- WhatsApp Service — the whole PostgreSQL schema (PostgreSQL 15+). The source of truth.
--
-- Apply to an empty database in one transaction:  psql -v ON_ERROR_STOP=1 -1 -f schema.sql
--
-- Conventions
--   * Public entities have `id text COLLATE "C"` holding a prefixed, time-sortable id generated in
--     Python by app.db.new_id(prefix): "newest first" is ORDER BY id DESC and a cursor is an id.
--     Every list filter has an index ending in `id`. Pure link / history tables use bigserial ids
--     or composite keys.
--   * Every tenant-owned table (all but organizations, schema_version, job_outbox and
--     analytics_watermarks) carries
--     organization_id ... REFERENCES organizations(id) ON DELETE CASCADE, so every query can be
--     scoped and deleting an organisation removes everything it owns.
--   * Every status / enum column has a CHECK constraint.
--   * Soft-deleted entities have deleted_at; updated_at is maintained by the application.
--   * Secrets are stored only encrypted (*_encrypted) or hashed (*_hash).
-- =============================================================================================

CREATE TABLE schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_version (version) VALUES (1);

-- ---------------------------------------------------------------------------------------------
-- Jobs: transactional outbox (app/outbox.py). Not tenant-owned: rows only name actors and args.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE job_outbox (
    id             bigserial PRIMARY KEY,
    actor_name     text NOT NULL,
    queue_name     text NOT NULL,
    args           jsonb NOT NULL DEFAULT '[]'::jsonb,
    kwargs         jsonb NOT NULL DEFAULT '{}'::jsonb,
    options        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    dispatched_at  timestamptz,
    attempts       integer NOT NULL DEFAULT 0
);
CREATE INDEX job_outbox_pending_idx ON job_outbox (created_at) WHERE dispatched_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Team: organisations, their settings, users (app/team/models.py)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE organizations (
    id          text COLLATE "C" PRIMARY KEY,                      -- org_
    name        text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per organisation (its primary key is the organisation id).
CREATE TABLE organization_settings (
    organization_id    text COLLATE "C" PRIMARY KEY REFERENCES organizations(id) ON DELETE CASCADE,
    -- keyword lists per language: {"en": ["STOP", ...], "es": ["BAJA", ...]}; matched case-insensitively
    opt_out_keywords   jsonb NOT NULL DEFAULT '{"en": ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"], "es": ["BAJA", "PARAR", "CANCELAR"], "fr": ["ARRET", "STOP"], "de": ["STOPP", "ABMELDEN"], "pt": ["PARAR", "SAIR"]}'::jsonb,
    opt_in_keywords    jsonb NOT NULL DEFAULT '{"en": ["START", "UNSTOP", "SUBSCRIBE"], "es": ["ALTA"]}'::jsonb,
    timezone           text NOT NULL DEFAULT 'UTC',                -- IANA name, for business hours
    -- {"mon": [["09:00", "17:00"]], "tue": [...], ...}; a missing day means closed all day
    business_hours     jsonb NOT NULL DEFAULT '{"mon": [["09:00", "17:00"]], "tue": [["09:00", "17:00"]], "wed": [["09:00", "17:00"]], "thu": [["09:00", "17:00"]], "fri": [["09:00", "17:00"]]}'::jsonb,
    -- NULL: the server's MEDIA_QUOTA_BYTES / MEDIA_QUOTA_FILES
    media_quota_bytes  bigint CHECK (media_quota_bytes >= 0),
    media_quota_files  integer CHECK (media_quota_files >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id               text COLLATE "C" PRIMARY KEY,                 -- usr_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email            text NOT NULL,
    password_hash    text NOT NULL,
    name             text NOT NULL,
    role             text NOT NULL CHECK (role IN ('admin', 'manager', 'agent', 'viewer')),
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    last_login_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
-- Login takes only {email, password}: an email is unique across the whole service, case-insensitively
-- (among users not deleted, so a deleted user's address can sign up again).
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email)) WHERE deleted_at IS NULL;
CREATE INDEX users_org_id_idx ON users (organization_id, id DESC);
CREATE INDEX users_org_role_id_idx ON users (organization_id, role, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Auth: refresh tokens with rotation and reuse detection (app/auth/models.py)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE refresh_tokens (
    id               text COLLATE "C" PRIMARY KEY,                 -- rtk_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id          text COLLATE "C" NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash       text NOT NULL UNIQUE,                          -- sha256 of the token; the token is never stored
    family_id        text COLLATE "C" NOT NULL,                     -- shared by every rotation of one login; reuse revokes the family
    parent_id        text COLLATE "C" REFERENCES refresh_tokens(id) ON DELETE SET NULL,
    replaced_by      text COLLATE "C" REFERENCES refresh_tokens(id) ON DELETE SET NULL,
    expires_at       timestamptz NOT NULL,
    revoked_at       timestamptz,
    revoked_reason   text CHECK (revoked_reason IN ('rotated', 'logout', 'reuse_detected', 'user_disabled', 'password_changed', 'admin')),
    user_agent       text,
    ip               text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id, id DESC);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);

-- ---------------------------------------------------------------------------------------------
-- API keys (app/apikeys/models.py)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE api_keys (
    id               text COLLATE "C" PRIMARY KEY,                 -- key_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name             text NOT NULL,
    prefix           text COLLATE "C" NOT NULL UNIQUE,              -- the first characters of the key, used for lookup
    key_hash         text NOT NULL,                                 -- HMAC-SHA256 of the whole key
    role             text NOT NULL CHECK (role IN ('admin', 'manager', 'agent', 'viewer')),
    created_by       text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,
    expires_at       timestamptz,
    revoked_at       timestamptz,
    last_used_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_org_id_idx ON api_keys (organization_id, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Audit log (app/audit/models.py). Append-only; actor_id/target_id are not FKs so rows outlive them.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE audit_logs (
    id               text COLLATE "C" PRIMARY KEY,                 -- aud_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    actor_type       text NOT NULL CHECK (actor_type IN ('user', 'api_key', 'system')),
    actor_id         text COLLATE "C",
    action           text NOT NULL,                                 -- e.g. "client.create", "user.update"
    target_type      text,
    target_id        text COLLATE "C",
    ip               text,
    user_agent       text,
    request_id       text,
    changes          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_org_id_idx ON audit_logs (organization_id, id DESC);
CREATE INDEX audit_logs_org_actor_id_idx ON audit_logs (organization_id, actor_id, id DESC);
CREATE INDEX audit_logs_org_action_id_idx ON audit_logs (organization_id, action, id DESC);
CREATE INDEX audit_logs_org_target_id_idx ON audit_logs (organization_id, target_id, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Clients: WhatsApp accounts, their proxies, sessions, status history, alerts (app/clients/models.py)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE proxies (
    id                  text COLLATE "C" PRIMARY KEY,              -- prx_
    organization_id     text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                text,
    scheme              text NOT NULL CHECK (scheme IN ('http', 'https', 'socks5')),
    host                text NOT NULL,
    port                integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    username            text,
    password_encrypted  text,
    status              text NOT NULL DEFAULT 'unchecked' CHECK (status IN ('unchecked', 'ok', 'failing', 'dead')),
    last_checked_at     timestamptz,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz
);
CREATE INDEX proxies_org_id_idx ON proxies (organization_id, id DESC);

CREATE TABLE clients (
    id                 text COLLATE "C" PRIMARY KEY,               -- cli_
    organization_id    text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name               text NOT NULL,
    transport          text NOT NULL CHECK (transport IN ('sim', 'cloud', 'web')),
    config             jsonb NOT NULL DEFAULT '{}'::jsonb,          -- non-secret transport config (returned by the API)
    secrets_encrypted  text,                                        -- encrypted JSON of the secret config (tokens, app secret)
    status             text NOT NULL DEFAULT 'created'
                       CHECK (status IN ('created', 'starting', 'qr', 'ready', 'disconnected', 'banned', 'stopped', 'failed')),
    status_changed_at  timestamptz NOT NULL DEFAULT now(),
    last_error         text,
    phone              text,                                        -- E.164, known once connected
    per_minute         integer NOT NULL DEFAULT 20 CHECK (per_minute > 0),
    per_hour           integer NOT NULL DEFAULT 100 CHECK (per_hour > 0),
    per_day            integer NOT NULL DEFAULT 1000 CHECK (per_day > 0),
    min_gap_ms         integer NOT NULL DEFAULT 2000 CHECK (min_gap_ms >= 0),
    max_gap_ms         integer NOT NULL DEFAULT 5000 CHECK (max_gap_ms >= 0),
    proxy_id           text COLLATE "C" REFERENCES proxies(id) ON DELETE SET NULL,
    paused             boolean NOT NULL DEFAULT false,              -- sending paused (e.g. after a ban alert)
    qr                 text,
    qr_expires_at      timestamptz,
    last_seen_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    CONSTRAINT clients_gap_order_check CHECK (max_gap_ms >= min_gap_ms)
);
CREATE INDEX clients_org_id_idx ON clients (organization_id, id DESC);
CREATE INDEX clients_org_status_id_idx ON clients (organization_id, status, id DESC);
CREATE INDEX clients_proxy_idx ON clients (proxy_id) WHERE proxy_id IS NOT NULL;

-- Team: which clients an agent may use (mapped in app/team/models.py; declared here after clients).
CREATE TABLE user_clients (
    user_id          text COLLATE "C" NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX user_clients_client_idx ON user_clients (client_id);

CREATE TABLE client_status_history (
    id               bigserial PRIMARY KEY,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    from_status      text CHECK (from_status IN ('created', 'starting', 'qr', 'ready', 'disconnected', 'banned', 'stopped', 'failed')),
    status           text NOT NULL CHECK (status IN ('created', 'starting', 'qr', 'ready', 'disconnected', 'banned', 'stopped', 'failed')),
    reason           text,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX client_status_history_client_idx ON client_status_history (client_id, id DESC);

-- Stateful (web) sessions: the encrypted login state and which session host holds it (a lease).
CREATE TABLE client_sessions (
    client_id         text COLLATE "C" PRIMARY KEY REFERENCES clients(id) ON DELETE CASCADE,
    organization_id   text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    state_encrypted   text,
    host_id           text,
    lease_expires_at  timestamptz,
    heartbeat_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX client_sessions_host_idx ON client_sessions (host_id, lease_expires_at);

-- Alerts that need a human: bans, logouts, dead proxies, auto-disabled webhooks.
CREATE TABLE ban_alerts (
    id               text COLLATE "C" PRIMARY KEY,                 -- alr_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" REFERENCES clients(id) ON DELETE CASCADE,   -- null for non-client alerts
    kind             text NOT NULL CHECK (kind IN ('banned', 'logged_out', 'disconnected', 'proxy_dead',
                                                   'rate_limited', 'session_failed', 'webhook_disabled', 'quota_exceeded')),
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    acknowledged_at  timestamptz,
    acknowledged_by  text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ban_alerts_org_id_idx ON ban_alerts (organization_id, id DESC);
CREATE INDEX ban_alerts_org_open_id_idx ON ban_alerts (organization_id, id DESC) WHERE acknowledged_at IS NULL;
CREATE INDEX ban_alerts_client_idx ON ban_alerts (client_id, id DESC) WHERE client_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Contacts, lists, imports (app/contacts/models.py)
-- Tags are a text[] column on contacts with a GIN index (no tags table): the API reads and writes
-- them as a list, and campaign audiences select with `tags && ARRAY[...]`.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE contacts (
    id               text COLLATE "C" PRIMARY KEY,                 -- ctc_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    phone            text NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),   -- E.164
    name             text,
    tags             text[] NOT NULL DEFAULT '{}',
    attributes       jsonb NOT NULL DEFAULT '{}'::jsonb,
    opted_out        boolean NOT NULL DEFAULT false,
    opted_out_at     timestamptz,
    opted_in_at      timestamptz,
    last_inbound_at  timestamptz,                                   -- also drives Cloud API 24-hour windows and first_message
    last_outbound_at timestamptz,
    assigned_user_id text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,   -- the agent in charge (automations' assign)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    last_import_id   text COLLATE "C",                              -- imp_ of the last CSV import that wrote it (tells repeats in a file)
    -- Not partial: a phone is one contact forever (messages point at it); re-creating a deleted one revives it.
    CONSTRAINT contacts_org_phone_key UNIQUE (organization_id, phone)
);
CREATE INDEX contacts_org_id_idx ON contacts (organization_id, id DESC);
CREATE INDEX contacts_org_opted_out_id_idx ON contacts (organization_id, opted_out, id DESC);
CREATE INDEX contacts_tags_gin ON contacts USING gin (tags);

CREATE TABLE contact_lists (
    id               text COLLATE "C" PRIMARY KEY,                 -- lst_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name             text NOT NULL,
    description      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE UNIQUE INDEX contact_lists_org_name_key ON contact_lists (organization_id, name) WHERE deleted_at IS NULL;
CREATE INDEX contact_lists_org_id_idx ON contact_lists (organization_id, id DESC);

CREATE TABLE contact_list_members (
    list_id          text COLLATE "C" NOT NULL REFERENCES contact_lists(id) ON DELETE CASCADE,
    contact_id       text COLLATE "C" NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, contact_id)
);
CREATE INDEX contact_list_members_contact_idx ON contact_list_members (contact_id);

-- One CSV import job (POST /api/contacts/import): where the upload is stored, how to read it, how far the
-- worker got (committed with each batch, so a crashed import resumes there) and the result counts.
CREATE TABLE contact_imports (
    id               text COLLATE "C" PRIMARY KEY,                 -- imp_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_by       text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,
    filename         text,
    storage_key      text,                                          -- the uploaded CSV in file storage
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    total_rows       integer NOT NULL DEFAULT 0,
    created_count    integer NOT NULL DEFAULT 0,
    updated_count    integer NOT NULL DEFAULT 0,
    duplicate_count  integer NOT NULL DEFAULT 0,                    -- rows repeating a number seen earlier in the file
    invalid_count    integer NOT NULL DEFAULT 0,
    errors           jsonb NOT NULL DEFAULT '[]'::jsonb,            -- first invalid rows: [{"line": 3, "reason": "..."}]
    error_message    text,
    started_at       timestamptz,
    completed_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    list_id          text COLLATE "C" REFERENCES contact_lists(id) ON DELETE SET NULL,  -- every imported contact joins it
    delimiter        text NOT NULL DEFAULT ',',
    column_plan      jsonb NOT NULL DEFAULT '{}'::jsonb,            -- {phone, name, tags: column index, attributes: [[index, key]]}
    default_region   text,                                          -- for numbers written without +
    size_bytes       bigint NOT NULL DEFAULT 0,
    processed_bytes  bigint NOT NULL DEFAULT 0,                     -- of the file, committed with the last batch
    lines_read       integer NOT NULL DEFAULT 0,                    -- physical lines up to processed_bytes
    attempts         integer NOT NULL DEFAULT 0,                    -- times a worker took the import up
    lease_until      timestamptz                                    -- while running: renewed by every batch
);
CREATE INDEX contact_imports_org_id_idx ON contact_imports (organization_id, id DESC);
CREATE INDEX contact_imports_active_idx ON contact_imports (updated_at) WHERE status IN ('queued', 'running');

-- ---------------------------------------------------------------------------------------------
-- Templates (app/templates/models.py)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE templates (
    id               text COLLATE "C" PRIMARY KEY,                 -- tpl_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name             text NOT NULL,
    language         text NOT NULL DEFAULT 'en',
    body             text NOT NULL,                                 -- with {{variable}} placeholders
    variables        text[] NOT NULL DEFAULT '{}',                  -- placeholder names of header, body and buttons
    category         text CHECK (category IN ('marketing', 'utility', 'authentication')),
    header           jsonb,                                         -- {"type": "text", "text"} | {"type": "image"|"video"|"document", "media_id"}
    footer           text,
    buttons          jsonb NOT NULL DEFAULT '[]'::jsonb,            -- [{"type": "quick_reply"|"url"|"phone", "text", "url"?, "phone_number"?}]
    created_by       text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
-- Unique among live templates, so a deleted template's name can be reused.
CREATE UNIQUE INDEX templates_org_name_language_key ON templates (organization_id, name, language) WHERE deleted_at IS NULL;
CREATE INDEX templates_org_id_idx ON templates (organization_id, id DESC);

-- A template's review for one client that needs it (cloud: Meta's review, kept from the
-- message_template_status_update webhook and a periodic sync; sim: a simulated one). A send of a
-- template on such a client needs its row here to be 'approved'.
CREATE TABLE template_approvals (
    template_id      text COLLATE "C" NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'approved', 'rejected', 'paused', 'disabled', 'error')),
    reason           text,                                          -- why rejected / paused / disabled / error
    meta_template_id text,                                          -- Meta's id of the submitted template
    submitted_at     timestamptz,
    reviewed_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, client_id)
);
CREATE INDEX template_approvals_client_idx ON template_approvals (client_id, status);

-- ---------------------------------------------------------------------------------------------
-- Media (app/media/models.py)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE media (
    id               text COLLATE "C" PRIMARY KEY,                 -- med_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    filename         text NOT NULL,
    mime_type        text NOT NULL,
    kind             text NOT NULL DEFAULT 'document' CHECK (kind IN ('image', 'video', 'audio', 'document', 'sticker')),
    size_bytes       bigint NOT NULL CHECK (size_bytes >= 0),
    sha256           text CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),  -- NULL until a fetched file arrives
    storage_key      text NOT NULL,                                 -- the file as received
    send_key         text,                                          -- the copy sent (EXIF stripped, re-encoded); NULL: storage_key
    thumbnail_key    text,
    status           text NOT NULL DEFAULT 'processing' CHECK (status IN ('processing', 'ready', 'failed')),
    error            text,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,            -- width, height, duration_seconds, animated, ...
    source           text NOT NULL DEFAULT 'upload' CHECK (source IN ('upload', 'url', 'inbound')),
    source_url       text,                                          -- source url: what the worker fetches
    client_id        text COLLATE "C" REFERENCES clients(id) ON DELETE SET NULL,  -- source inbound: who received it
    fetch_ref        jsonb,                                         -- source inbound: the transport's reference
    attempts         integer NOT NULL DEFAULT 0,
    created_by       text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    ready_at         timestamptz,
    expires_at       timestamptz,                                   -- MEDIA_RETENTION_DAYS after creation
    deleted_at       timestamptz
);
CREATE INDEX media_org_id_idx ON media (organization_id, id DESC);
-- An upload's bytes are kept once per organisation: a re-upload finds them here.
CREATE UNIQUE INDEX media_org_sha256_uq ON media (organization_id, sha256)
    WHERE deleted_at IS NULL AND source = 'upload' AND status <> 'failed';
CREATE INDEX media_expiry_idx ON media (expires_at) WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX media_deleted_idx ON media (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX media_org_usage_idx ON media (organization_id) INCLUDE (size_bytes) WHERE deleted_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Campaigns (app/campaigns/models.py). campaign_recipients comes after messages (it references them).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE campaigns (
    id               text COLLATE "C" PRIMARY KEY,                 -- cmp_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name             text NOT NULL,
    status           text NOT NULL DEFAULT 'draft'
                     CHECK (status IN ('draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled', 'failed')),
    template_id      text COLLATE "C" REFERENCES templates(id) ON DELETE SET NULL,
    message          text,                                          -- the text when no template is used
    variables        jsonb NOT NULL DEFAULT '{}'::jsonb,            -- template variables; contact attributes fill the rest
    media_id         text COLLATE "C" REFERENCES media(id) ON DELETE SET NULL,
    audience         jsonb NOT NULL DEFAULT '{}'::jsonb,            -- {"tags": [...], "contact_ids": [...]}
    scheduled_at     timestamptz,
    started_at       timestamptz,
    paused_at        timestamptz,
    completed_at     timestamptz,
    cancelled_at     timestamptz,
    last_error       text,
    send_window      jsonb,                                         -- {"start": "09:00", "end": "20:00", "days"?: ["mon", ...], "timezone"?}
    frequency_cap    jsonb,                                         -- {"max": 1, "hours": 24}: campaign messages per contact, across campaigns
    recipient_variables jsonb NOT NULL DEFAULT '{}'::jsonb,         -- {contact id or phone: {variable: value}}
    fanout_cursor    text,                                          -- the last contact id fanned out (a resumed fan-out goes on from it)
    fanout_done_at   timestamptz,
    -- progress counters, kept by triggers (campaign_recipients_count): each recipient once, in its current status
    total_count      integer NOT NULL DEFAULT 0,
    pending_count    integer NOT NULL DEFAULT 0,
    queued_count     integer NOT NULL DEFAULT 0,
    sent_count       integer NOT NULL DEFAULT 0,
    delivered_count  integer NOT NULL DEFAULT 0,
    read_count       integer NOT NULL DEFAULT 0,
    failed_count     integer NOT NULL DEFAULT 0,
    skipped_count    integer NOT NULL DEFAULT 0,
    cancelled_count  integer NOT NULL DEFAULT 0,
    replied_count    integer NOT NULL DEFAULT 0,
    created_by       text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE INDEX campaigns_org_id_idx ON campaigns (organization_id, id DESC);
CREATE INDEX campaigns_org_status_id_idx ON campaigns (organization_id, status, id DESC);
CREATE INDEX campaigns_due_idx ON campaigns (scheduled_at) WHERE status = 'scheduled';   -- the scheduler's claim

CREATE TABLE campaign_clients (
    campaign_id      text COLLATE "C" NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, client_id)
);
CREATE INDEX campaign_clients_client_idx ON campaign_clients (client_id);

-- ---------------------------------------------------------------------------------------------
-- Automations (app/automations/models.py). automation_runs comes after messages.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE automations (
    id               text COLLATE "C" PRIMARY KEY,                 -- aut_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" REFERENCES clients(id) ON DELETE CASCADE,   -- null: every client
    name             text NOT NULL,
    trigger_type     text NOT NULL CHECK (trigger_type IN ('keyword', 'first_message', 'outside_hours')),
    "trigger"        jsonb NOT NULL DEFAULT '{}'::jsonb,            -- the API's trigger object, type included
    action           jsonb NOT NULL DEFAULT '{}'::jsonb,            -- the first of `actions` (the API's singular `action`)
    actions          jsonb NOT NULL DEFAULT '[]'::jsonb,            -- [{"type": "reply" | "tag" | "webhook" | "assign", ...}]
    conditions       jsonb NOT NULL DEFAULT '{}'::jsonb,            -- {"client_ids", "tags_any", "tags_all", "tags_none"}
    enabled          boolean NOT NULL DEFAULT true,
    priority         integer NOT NULL DEFAULT 100,                  -- lower first, then created order
    stop_processing  boolean NOT NULL DEFAULT false,                -- when it fires, later automations do not
    cooldown_seconds integer NOT NULL DEFAULT 60 CHECK (cooldown_seconds >= 0),  -- per contact
    created_by       text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE INDEX automations_org_id_idx ON automations (organization_id, id DESC);
CREATE INDEX automations_org_client_id_idx ON automations (organization_id, client_id, id DESC);
CREATE INDEX automations_active_idx ON automations (organization_id, trigger_type) WHERE enabled AND deleted_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Messages (app/messages/models.py)
-- API field names: `to` = to_phone, `from` = from_phone, `error` = {error_code, error_message}.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE messages (
    id               text COLLATE "C" PRIMARY KEY,                 -- msg_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    direction        text NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    contact_id       text COLLATE "C" REFERENCES contacts(id) ON DELETE SET NULL,
    to_phone         text,                                          -- outbound: the recipient; inbound: the client's number
    from_phone       text,                                          -- inbound: the sender; outbound: the client's number
    type             text NOT NULL DEFAULT 'text' CHECK (type IN ('text', 'image', 'video', 'audio', 'document', 'sticker', 'voice', 'template')),
    text             text,
    media_id         text COLLATE "C" REFERENCES media(id) ON DELETE SET NULL,
    caption          text,
    template_id      text COLLATE "C" REFERENCES templates(id) ON DELETE SET NULL,
    variables        jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- inbound messages are 'received' (an addition to the outbound lifecycle)
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'cancelled', 'received', 'unknown')),
    error_code       text,
    error_message    text,
    external_id      text COLLATE "C",                              -- the transport's message id
    campaign_id      text COLLATE "C",                              -- FK added below, with campaigns
    automation_id    text COLLATE "C",                              -- FK added below, with automations
    idempotency_key  text,
    scheduled_at     timestamptz,                                   -- requested by the user
    scheduled_for    timestamptz,                                   -- the pacing slot
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    queued_at        timestamptz,
    sending_at       timestamptz,
    sent_at          timestamptz,
    delivered_at     timestamptz,
    read_at          timestamptz,
    failed_at        timestamptz,
    cancelled_at     timestamptz,
    CONSTRAINT messages_phone_check CHECK (
        (direction = 'outbound' AND to_phone IS NOT NULL) OR (direction = 'inbound' AND from_phone IS NOT NULL)
    )
);
ALTER TABLE messages ADD CONSTRAINT messages_campaign_id_fkey
    FOREIGN KEY (campaign_id) REFERENCES campaigns(id) ON DELETE SET NULL;
ALTER TABLE messages ADD CONSTRAINT messages_automation_id_fkey
    FOREIGN KEY (automation_id) REFERENCES automations(id) ON DELETE SET NULL;
-- lists (GET /api/messages filters), newest first
CREATE INDEX messages_org_id_idx ON messages (organization_id, id DESC);
-- The messages of a medium: whether one still waits to be sent (delete, retention), its inbound message, and
-- the ON DELETE SET NULL of a medium's row (small: only media messages are in it).
CREATE INDEX messages_media_idx ON messages (media_id) WHERE media_id IS NOT NULL;
CREATE INDEX messages_org_client_id_idx ON messages (organization_id, client_id, id DESC);
CREATE INDEX messages_org_status_id_idx ON messages (organization_id, status, id DESC);
CREATE INDEX messages_org_direction_id_idx ON messages (organization_id, direction, id DESC);
CREATE INDEX messages_org_contact_id_idx ON messages (organization_id, contact_id, id DESC);
-- workers: claim due messages per client; match transport acks by external id
CREATE INDEX messages_claim_idx ON messages (client_id, status, id) WHERE status IN ('queued', 'sending', 'unknown');  -- a client's next messages, in order
CREATE INDEX messages_client_external_idx ON messages (client_id, external_id) WHERE external_id IS NOT NULL;
-- a transport may report the same inbound message twice: store it once
CREATE UNIQUE INDEX messages_inbound_external_key ON messages (client_id, external_id)
    WHERE direction = 'inbound' AND external_id IS NOT NULL;
CREATE UNIQUE INDEX messages_org_idempotency_key ON messages (organization_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX messages_campaign_idx ON messages (campaign_id, status) WHERE campaign_id IS NOT NULL;
CREATE INDEX messages_created_at_idx ON messages (created_at);    -- rollups, retention
-- rollups: a chat's messages around a time (replies, response times)
CREATE INDEX messages_chat_created_idx ON messages (client_id, contact_id, created_at) WHERE contact_id IS NOT NULL;
CREATE INDEX messages_client_created_idx ON messages (client_id, created_at);  -- the rollup recomputes a client's hour

CREATE TABLE message_status_history (
    id               bigserial PRIMARY KEY,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    message_id       text COLLATE "C" NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    status           text NOT NULL
                     CHECK (status IN ('queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'cancelled', 'received', 'unknown')),
    at               timestamptz NOT NULL DEFAULT now(),
    details          jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX message_status_history_message_idx ON message_status_history (message_id, id);
CREATE INDEX message_status_history_at_idx ON message_status_history (at);

-- ---------------------------------------------------------------------------------------------
-- Campaigns, continued: one row per (campaign, contact) — the fan-out's idempotency key.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE campaign_recipients (
    id               bigserial PRIMARY KEY,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    campaign_id      text COLLATE "C" NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    contact_id       text COLLATE "C" NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" REFERENCES clients(id) ON DELETE SET NULL,     -- the client chosen to send
    message_id       text COLLATE "C" REFERENCES messages(id) ON DELETE SET NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'queued', 'sent', 'delivered', 'read', 'failed', 'skipped', 'cancelled')),
    reason           text,                                          -- why skipped / failed (e.g. opted_out)
    replied_at       timestamptz,                                   -- the contact's first message after this one
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT campaign_recipients_campaign_contact_key UNIQUE (campaign_id, contact_id)
);
CREATE INDEX campaign_recipients_campaign_status_idx ON campaign_recipients (campaign_id, status, id);
CREATE INDEX campaign_recipients_message_idx ON campaign_recipients (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX campaign_recipients_contact_idx ON campaign_recipients (contact_id);

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

-- ---------------------------------------------------------------------------------------------
-- Automations, continued: one row per firing (or decision not to fire) for an inbound message.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE automation_runs (
    id                  bigserial PRIMARY KEY,
    organization_id     text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    automation_id       text COLLATE "C" NOT NULL REFERENCES automations(id) ON DELETE CASCADE,
    client_id           text COLLATE "C" REFERENCES clients(id) ON DELETE SET NULL,
    contact_id          text COLLATE "C" REFERENCES contacts(id) ON DELETE SET NULL,
    trigger_message_id  text COLLATE "C" REFERENCES messages(id) ON DELETE SET NULL,
    reply_message_id    text COLLATE "C" REFERENCES messages(id) ON DELETE SET NULL,
    status              text NOT NULL CHECK (status IN ('fired', 'skipped', 'failed')),
    reason              text,
    actions             jsonb NOT NULL DEFAULT '[]'::jsonb,            -- what each action did: [{"type", "status", ...}]
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- an automation reacts to a given inbound message at most once (job retries are no-ops)
    CONSTRAINT automation_runs_automation_trigger_key UNIQUE (automation_id, trigger_message_id)
);
CREATE INDEX automation_runs_automation_idx ON automation_runs (automation_id, id DESC);
CREATE INDEX automation_runs_contact_idx ON automation_runs (automation_id, contact_id, created_at DESC);
-- an automation's fire_count and last_fired_at (counted from its runs: no row is updated per firing)
CREATE INDEX automation_runs_fired_idx ON automation_runs (automation_id, created_at) WHERE status = 'fired';
-- the automatic replies a contact got lately, across automations (the per-minute guard)
CREATE INDEX automation_runs_contact_replies_idx ON automation_runs (contact_id, created_at)
    WHERE reply_message_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Transport reports (app/inbox): every status report, ack and inbound message a transport makes
-- is a row here before the transport is answered, then applied by an inbox.apply job (at due_at:
-- the simulator reports "later" events with a delay). A row not applied yet is dispatched again by
-- the inbox sweeper, so a Redis that forgets its jobs loses no report; applied rows are purged.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE transport_events (
    id               bigserial PRIMARY KEY,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    client_id        text COLLATE "C" NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('status', 'ack', 'inbound')),
    payload          jsonb NOT NULL,
    due_at           timestamptz NOT NULL DEFAULT now(),
    dispatched_at    timestamptz,                                   -- its inbox.apply job was last sent
    attempts         integer NOT NULL DEFAULT 0,                    -- applications that found nothing to apply to yet
    applied_at       timestamptz,
    outcome          text CHECK (outcome IN ('applied', 'ignored', 'orphaned')),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transport_events_pending_idx ON transport_events (due_at) WHERE applied_at IS NULL;
CREATE INDEX transport_events_applied_idx ON transport_events (applied_at) WHERE applied_at IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Webhooks: endpoints, the event outbox, deliveries and their attempts (app/webhooks/models.py)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE webhooks (
    id                          text COLLATE "C" PRIMARY KEY,      -- whk_
    organization_id             text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    url                         text NOT NULL,
    events                      text[] NOT NULL DEFAULT '{}',       -- event types, or {'*'}
    description                 text,
    enabled                     boolean NOT NULL DEFAULT true,
    secret_encrypted            text NOT NULL,                      -- whsec_... encrypted
    previous_secret_encrypted   text,                               -- still signs until previous_secret_expires_at
    previous_secret_expires_at  timestamptz,
    disabled_reason             text,
    failing_since               timestamptz,
    consecutive_failures        integer NOT NULL DEFAULT 0,
    last_success_at             timestamptz,
    created_by                  text COLLATE "C" REFERENCES users(id) ON DELETE SET NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    deleted_at                  timestamptz
);
CREATE INDEX webhooks_org_id_idx ON webhooks (organization_id, id DESC);
CREATE INDEX webhooks_active_idx ON webhooks (organization_id) WHERE enabled AND deleted_at IS NULL;

-- Events are written in the transaction that causes them (an outbox), then fanned out to deliveries.
CREATE TABLE webhook_events (
    id               text COLLATE "C" PRIMARY KEY,                 -- evt_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    type             text NOT NULL CHECK (type ~ '^[a-z_]+\.[a-z_]+$'),   -- e.g. message.sent (API.md lists them)
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,            -- the event's `data`
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_org_id_idx ON webhook_events (organization_id, id DESC);
CREATE INDEX webhook_events_created_at_idx ON webhook_events (created_at);   -- retention

CREATE TABLE webhook_deliveries (
    id                text COLLATE "C" PRIMARY KEY,                -- dlv_
    organization_id   text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    event_id          text COLLATE "C" NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
    webhook_id        text COLLATE "C" NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'delivering', 'succeeded', 'failed', 'dead')),
    attempt           integer NOT NULL DEFAULT 0,                   -- attempts made so far
    next_attempt_at   timestamptz,
    last_status_code  integer,
    last_error        text,
    delivered_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- one delivery per (webhook, event): fan-out is idempotent; redeliver resets this row
    CONSTRAINT webhook_deliveries_webhook_event_key UNIQUE (webhook_id, event_id)
);
-- The claimer's scan: due retries, and leases of dispatched or running attempts that ran out.
CREATE INDEX webhook_deliveries_retry_idx ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'delivering', 'failed');
CREATE INDEX webhook_deliveries_webhook_id_idx ON webhook_deliveries (webhook_id, id DESC);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_org_id_idx ON webhook_deliveries (organization_id, id DESC);

CREATE TABLE webhook_delivery_attempts (
    id                bigserial PRIMARY KEY,
    organization_id   text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    delivery_id       text COLLATE "C" NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    webhook_id        text COLLATE "C" NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,   -- denormalised for listing
    attempt           integer NOT NULL CHECK (attempt >= 1),
    status_code       integer,                                      -- null: timeout / connection error
    duration_ms       integer,
    error             text,
    response_excerpt  text CHECK (length(response_excerpt) <= 2048),   -- first 2 KB of the response body
    created_at        timestamptz NOT NULL DEFAULT now(),
    next_attempt_at   timestamptz                                   -- when the next try is scheduled, if any
);
CREATE INDEX webhook_delivery_attempts_delivery_idx ON webhook_delivery_attempts (delivery_id, attempt);
CREATE INDEX webhook_delivery_attempts_webhook_idx ON webhook_delivery_attempts (webhook_id, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Analytics rollups (app/analytics/models.py), filled by the `analytics.rollup` job (app/analytics/rollup.py).
-- A row is one organisation x client x campaign x UTC hour (daily: UTC day). `campaign_id` is '' for messages
-- sent outside campaigns (NOT NULL so that the unique key is a plain constraint; no FK: a deleted campaign's
-- numbers stay). A message counts in the bucket of its own created_at, whatever time its acks come.
-- ---------------------------------------------------------------------------------------------
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
    response_buckets      jsonb NOT NULL DEFAULT '{}'::jsonb,       -- {lower bound in seconds: count} of those
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
    response_buckets      jsonb NOT NULL DEFAULT '{}'::jsonb,
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

-- Totals of the rollups above with campaigns summed, per client and (client_id '') per organisation, kept by the
-- same job: what reads without a campaign filter scan (a few rows per hour or day whatever the number of clients
-- and campaigns). No FK on client_id ('' is no client); a deleted client's rows go with the next recompute.
CREATE TABLE analytics_totals_hourly (
    id                    bigserial PRIMARY KEY,
    organization_id       text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    client_id             text COLLATE "C" NOT NULL DEFAULT '',      -- '' = every client of the organisation
    bucket                timestamptz NOT NULL,                     -- start of the hour
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
    response_buckets      jsonb NOT NULL DEFAULT '{}'::jsonb,
    delivery_seconds_sum  double precision NOT NULL DEFAULT 0,
    delivery_count        integer NOT NULL DEFAULT 0,
    read_seconds_sum      double precision NOT NULL DEFAULT 0,
    read_count            integer NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT analytics_totals_daily_key UNIQUE (organization_id, client_id, bucket)
);

-- Exports made by a worker (`analytics.export`, app/analytics/exports.py): the CSV file lands in media storage
-- under storage_key; `params` holds the range, the client and, for agents, the clients they may see.
CREATE TABLE analytics_exports (
    id               text COLLATE "C" PRIMARY KEY,                 -- exp_
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    what             text NOT NULL CHECK (what IN ('rollups', 'messages')),
    format           text NOT NULL DEFAULT 'csv' CHECK (format IN ('csv')),
    params           jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'ready', 'failed', 'expired')),
    rows             bigint,                                        -- data rows written (the header not counted)
    size_bytes       bigint,
    storage_key      text,
    error            text,
    attempts         integer NOT NULL DEFAULT 0,
    lease_until      timestamptz,                                   -- running: another worker may take it after this
    created_by       text COLLATE "C",                              -- usr_ or key_
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    expires_at       timestamptz                                    -- ready: the file is deleted after this
);
CREATE INDEX analytics_exports_org_id_idx ON analytics_exports (organization_id, id DESC);
CREATE INDEX analytics_exports_open_idx ON analytics_exports (created_at) WHERE status IN ('queued', 'running');
CREATE INDEX analytics_exports_expiry_idx ON analytics_exports (expires_at) WHERE status = 'ready';

-- ---------------------------------------------------------------------------------------------
-- Idempotency-Key for POSTs that create (app/models.py). Swept after expires_at (24 h).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE idempotency_keys (
    id               bigserial PRIMARY KEY,
    organization_id  text COLLATE "C" NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    principal_id     text COLLATE "C" NOT NULL,                     -- usr_ or key_ that sent the request
    key              text NOT NULL,
    method           text NOT NULL,
    path             text NOT NULL,
    request_hash     text NOT NULL,                                 -- sha256 of method, path and body
    status           text NOT NULL DEFAULT 'in_flight' CHECK (status IN ('in_flight', 'completed')),
    response_status  integer,
    response_body    jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    CONSTRAINT idempotency_keys_org_key_key UNIQUE (organization_id, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- =============================================================================================
-- Views for the dashboard. "Today" is the current UTC day.
-- =============================================================================================

-- Per client: outbound messages that reached sent/delivered/read/failed today and in total, inbound
-- received, and the last activity (latest message either way, or the client last being seen).
CREATE VIEW v_client_stats AS
SELECT
    c.id               AS client_id,
    c.organization_id,
    c.name,
    c.transport,
    c.status,
    COALESCE(m.sent_today, 0)       AS sent_today,
    COALESCE(m.delivered_today, 0)  AS delivered_today,
    COALESCE(m.read_today, 0)       AS read_today,
    COALESCE(m.failed_today, 0)     AS failed_today,
    COALESCE(m.received_today, 0)   AS received_today,
    COALESCE(m.sent_total, 0)       AS sent_total,
    COALESCE(m.delivered_total, 0)  AS delivered_total,
    COALESCE(m.read_total, 0)       AS read_total,
    COALESCE(m.failed_total, 0)     AS failed_total,
    COALESCE(m.received_total, 0)   AS received_total,
    GREATEST(m.last_message_at, c.last_seen_at) AS last_activity_at
FROM clients c
LEFT JOIN LATERAL (
    SELECT
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.sent_at      >= x.today) AS sent_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.delivered_at >= x.today) AS delivered_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.read_at      >= x.today) AS read_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.failed_at    >= x.today) AS failed_today,
        count(*) FILTER (WHERE x.direction = 'inbound'  AND x.created_at   >= x.today) AS received_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.sent_at      IS NOT NULL) AS sent_total,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.delivered_at IS NOT NULL) AS delivered_total,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.read_at      IS NOT NULL) AS read_total,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.status = 'failed')        AS failed_total,
        count(*) FILTER (WHERE x.direction = 'inbound')                                 AS received_total,
        max(x.created_at) AS last_message_at
    FROM (
        SELECT msg.direction, msg.status, msg.created_at, msg.sent_at, msg.delivered_at, msg.read_at, msg.failed_at,
               date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS today
        FROM messages msg
        WHERE msg.client_id = c.id
    ) x
) m ON true
WHERE c.deleted_at IS NULL;

-- Per organisation: clients, and the traffic of messages created today (UTC) with its delivery / read
-- rates: delivered / sent and read / sent over those messages (null when none was sent).
CREATE VIEW v_organization_stats AS
SELECT
    o.id AS organization_id,
    o.name,
    COALESCE(c.total_clients, 0)   AS total_clients,
    COALESCE(c.active_clients, 0)  AS active_clients,
    COALESCE(m.messages_today, 0)  AS messages_today,
    COALESCE(m.sent_today, 0)      AS sent_today,
    COALESCE(m.delivered_today, 0) AS delivered_today,
    COALESCE(m.read_today, 0)      AS read_today,
    COALESCE(m.failed_today, 0)    AS failed_today,
    COALESCE(m.received_today, 0)  AS received_today,
    round(m.delivered_of_sent::numeric / NULLIF(m.sent_today, 0), 4) AS delivery_rate,
    round(m.read_of_sent::numeric / NULLIF(m.sent_today, 0), 4)      AS read_rate
FROM organizations o
LEFT JOIN LATERAL (
    SELECT count(*) AS total_clients,
           count(*) FILTER (WHERE cl.status = 'ready') AS active_clients
    FROM clients cl
    WHERE cl.organization_id = o.id AND cl.deleted_at IS NULL
) c ON true
LEFT JOIN LATERAL (
    SELECT
        count(*) AS messages_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.sent_at IS NOT NULL) AS sent_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.delivered_at IS NOT NULL) AS delivered_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.read_at IS NOT NULL) AS read_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.status = 'failed') AS failed_today,
        count(*) FILTER (WHERE x.direction = 'inbound') AS received_today,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.sent_at IS NOT NULL AND x.delivered_at IS NOT NULL) AS delivered_of_sent,
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.sent_at IS NOT NULL AND x.read_at IS NOT NULL) AS read_of_sent
    FROM messages x
    WHERE x.organization_id = o.id
      AND x.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
) m ON true;

-- Per campaign: recipients by current status (each recipient counted once, in its latest status).
CREATE VIEW v_campaign_progress AS
SELECT
    cp.id AS campaign_id,
    cp.organization_id,
    cp.status,
    count(r.id)                                       AS total,
    count(r.id) FILTER (WHERE r.status = 'pending')   AS pending,
    count(r.id) FILTER (WHERE r.status = 'queued')    AS queued,
    count(r.id) FILTER (WHERE r.status = 'sent')      AS sent,
    count(r.id) FILTER (WHERE r.status = 'delivered') AS delivered,
    count(r.id) FILTER (WHERE r.status = 'read')      AS read,
    count(r.id) FILTER (WHERE r.status = 'failed')    AS failed,
    count(r.id) FILTER (WHERE r.status = 'skipped')   AS skipped
FROM campaigns cp
LEFT JOIN campaign_recipients r ON r.campaign_id = cp.id
GROUP BY cp.id, cp.organization_id, cp.status;
