-- mailintake schema v1 (SQLite). The PostgreSQL twin is migrations/postgres/0001_initial.sql;
-- both describe the same contract, documented in docs/schema.md. Times are unix milliseconds (UTC).

CREATE TABLE tickets (
    id                INTEGER PRIMARY KEY,
    reference         TEXT UNIQUE,
    mailbox           TEXT NOT NULL,
    subject           TEXT NOT NULL,
    requester_address TEXT,
    requester_name    TEXT,
    status            TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'open', 'pending', 'resolved', 'closed')),
    related_ticket_id BIGINT REFERENCES tickets (id),
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY,
    ticket_id         BIGINT NOT NULL REFERENCES tickets (id),
    direction         TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    mailbox           TEXT NOT NULL,
    message_id        TEXT NOT NULL UNIQUE,
    message_id_source TEXT NOT NULL CHECK (message_id_source IN ('header', 'content-hash')),
    in_reply_to       TEXT,
    thread_references TEXT,
    subject           TEXT NOT NULL,
    from_address      TEXT,
    from_name         TEXT,
    reply_to          TEXT,
    to_addresses      TEXT NOT NULL,
    cc_addresses      TEXT NOT NULL,
    sent_at           BIGINT,
    received_at       BIGINT,
    body_text         TEXT,
    body_html         TEXT,
    body_text_derived TEXT,
    auto_kind         TEXT CHECK (auto_kind IN ('auto-reply', 'bounce', 'read-receipt', 'loop')),
    headers           TEXT NOT NULL,
    size_bytes        BIGINT NOT NULL,
    content_sha256    TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    created_at        BIGINT NOT NULL
);
CREATE INDEX messages_ticket ON messages (ticket_id);
-- The per-sender limit counts by lower-cased address.
CREATE INDEX tickets_requester ON tickets (lower(requester_address), created_at);

-- The raw message of an article, gzip-compressed, when the mailbox keeps raw mail (keep_raw = "all"),
-- so a ticket can be re-parsed. Failures keep theirs in quarantine.raw.
CREATE TABLE raw_messages (
    message_row_id BIGINT PRIMARY KEY REFERENCES messages (id),
    compression    TEXT NOT NULL CHECK (compression IN ('gzip')),
    size_bytes     BIGINT NOT NULL,
    content        BLOB NOT NULL
);

CREATE TABLE attachment_blobs (
    sha256     TEXT PRIMARY KEY,
    size_bytes BIGINT NOT NULL,
    content    BLOB NOT NULL
);

CREATE TABLE attachments (
    id           INTEGER PRIMARY KEY,
    message_id   BIGINT NOT NULL REFERENCES messages (id),
    filename     TEXT,
    content_type TEXT NOT NULL,
    content_id   TEXT,
    disposition  TEXT NOT NULL CHECK (disposition IN ('attachment', 'inline')),
    size_bytes   BIGINT NOT NULL,
    sha256       TEXT NOT NULL REFERENCES attachment_blobs (sha256),
    created_at   BIGINT NOT NULL
);
CREATE INDEX attachments_message ON attachments (message_id);

CREATE TABLE quarantine (
    id           INTEGER PRIMARY KEY,
    mailbox      TEXT NOT NULL,
    folder       TEXT NOT NULL,
    uidvalidity  BIGINT NOT NULL,
    uid          BIGINT NOT NULL,
    message_id   TEXT,
    size_bytes   BIGINT NOT NULL,
    from_address TEXT,
    subject      TEXT,
    reason       TEXT NOT NULL CHECK (reason IN ('too-large', 'unparseable', 'message-id-conflict', 'sender-rate-limit', 'unreadable')),
    detail       TEXT,
    raw          BLOB,
    created_at   BIGINT NOT NULL,
    released_at  BIGINT,
    -- A release lets the message in once (up to this many bytes when set); then it is used.
    release_max_bytes BIGINT,
    release_used_at   BIGINT
);

CREATE TABLE imap_messages (
    id             INTEGER PRIMARY KEY,
    mailbox        TEXT NOT NULL,
    folder         TEXT NOT NULL,
    uidvalidity    BIGINT NOT NULL,
    uid            BIGINT NOT NULL,
    message_id     TEXT NOT NULL,
    size_bytes     BIGINT NOT NULL,
    outcome        TEXT NOT NULL CHECK (outcome IN ('ticket', 'follow-up', 'quarantined', 'ignored', 'duplicate')),
    ticket_id      BIGINT REFERENCES tickets (id),
    message_row_id BIGINT REFERENCES messages (id),
    quarantine_id  BIGINT REFERENCES quarantine (id),
    detail         TEXT,
    disposition    TEXT NOT NULL,
    disposed_at    BIGINT,
    created_at     BIGINT NOT NULL,
    UNIQUE (mailbox, folder, uidvalidity, uid)
);
CREATE INDEX imap_messages_message_id ON imap_messages (message_id);
CREATE INDEX imap_messages_undisposed ON imap_messages (mailbox, folder) WHERE disposed_at IS NULL;

CREATE TABLE outbox (
    id                INTEGER PRIMARY KEY,
    mailbox           TEXT NOT NULL,
    ticket_id         BIGINT REFERENCES tickets (id),
    kind              TEXT NOT NULL CHECK (kind IN ('acknowledgement', 'follow-up-acknowledgement', 'quarantine-notice')),
    from_address      TEXT NOT NULL,
    to_address        TEXT,
    subject           TEXT NOT NULL,
    message_id        TEXT NOT NULL UNIQUE,
    in_reply_to       TEXT,
    thread_references TEXT,
    body_text         TEXT NOT NULL,
    body_html         TEXT,
    state             TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'cancelled', 'suppressed')),
    reason            TEXT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT NOT NULL,
    claimed_at        BIGINT,
    last_error        TEXT,
    smtp_response     TEXT,
    created_at        BIGINT NOT NULL,
    sent_at           BIGINT
);
CREATE INDEX outbox_due ON outbox (mailbox, state, next_attempt_at);
CREATE INDEX outbox_recipient ON outbox (to_address, created_at);

CREATE TABLE mailbox_state (
    mailbox      TEXT NOT NULL,
    folder       TEXT NOT NULL,
    uidvalidity  BIGINT NOT NULL,
    last_uid     BIGINT NOT NULL,
    ingest_after BIGINT,
    ack_after    BIGINT,
    -- A message the server failed to deliver on consecutive sweeps (a "poison" message):
    -- fetched alone, and quarantined unread after a few failures, so it never blocks the folder.
    stuck_uid    BIGINT,
    stuck_count  BIGINT NOT NULL DEFAULT 0,
    stuck_error  TEXT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (mailbox, folder)
);

CREATE TABLE oauth_tokens (
    identity   TEXT NOT NULL,
    scope      TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('refresh_token')),
    ciphertext BLOB NOT NULL,
    nonce      BLOB NOT NULL,
    key_id     TEXT NOT NULL,
    expires_at BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (identity, scope, kind)
);
