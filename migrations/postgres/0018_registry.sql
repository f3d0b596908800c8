-- mailintake schema v3, migration 0018 (PostgreSQL): the mailbox registry (issue 17). Mailboxes and
-- identities added at run time (`mailintake mailbox add`, `mailintake identity add`, or
-- `mailintake mailbox sync` from a config file), picked up by every worker of the fleet without a
-- restart. Each row holds one table of the config file's form (its keys as a JSON object), and is
-- validated by the same code as the file. The twin is migrations/sqlite/0018_registry.sql. Only
-- ASCII in this file.

-- One [identities.NAME] table per row. A secret given as text (client_secret, password,
-- refresh_token) is never in `settings`: it is in `secrets`, a JSON object of those keys
-- encrypted with AES-256-GCM under the first [token_store] key (the row's name bound as
-- associated data), like the refresh tokens in oauth_tokens. A secret given as { env = ... } or
-- { file = ... } stays a reference in `settings`, resolved by each worker.
CREATE TABLE registry_identities (
    name           TEXT PRIMARY KEY,
    settings       TEXT NOT NULL,
    secrets        BYTEA,
    secrets_nonce  BYTEA,
    secrets_key_id TEXT,
    -- The registry's generation at the row's last change.
    version        BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

-- One [[mailboxes]] table per row (its `name` is the key). A disabled mailbox keeps its row and
-- its data; no worker works on it.
CREATE TABLE registry_mailboxes (
    name       TEXT PRIMARY KEY,
    identity   TEXT NOT NULL,
    settings   TEXT NOT NULL,
    enabled    BIGINT NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One row: raised by one with every change of either table, in the change's transaction, so a
-- worker learns of a change by reading one number (every few seconds).
CREATE TABLE registry_generation (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO registry_generation (id, generation) VALUES (1, 0);
