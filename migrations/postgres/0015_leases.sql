-- mailintake migration 0015 (PostgreSQL): the fleet's coordination on the database (issue 17). Workers
-- register with a heartbeat; each (mailbox, folder) is owned by at most one worker at a time by
-- a lease row with its holder, an epoch that grows with every acquisition (the fencing token),
-- and an expiry by the database's clock. The same on SQLite (where one worker holds every lease)
-- and PostgreSQL. Times are unix milliseconds by the database's clock.

-- One row per worker process start: who it is, and when it last said it is alive.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    -- Set when it stopped (SIGTERM) and released its leases; NULL while it runs or after a crash.
    stopped_at   BIGINT
);

-- The owner of one folder of one mailbox. A row is created on first use; `holder` NULL: free.
CREATE TABLE leases (
    mailbox     TEXT NOT NULL,
    folder      TEXT NOT NULL,
    holder      TEXT,
    -- Grows by one with every acquisition: a holder whose epoch is not the row's has lost it.
    epoch       BIGINT NOT NULL DEFAULT 0,
    acquired_at BIGINT,
    renewed_at  BIGINT,
    -- Nobody may take the lease over before this, by the database's clock.
    expires_at  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (mailbox, folder)
);
CREATE INDEX leases_holder ON leases (holder);
