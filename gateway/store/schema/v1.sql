-- sealgw event buffer, schema version 1.
-- Applied by gateway.buffer_store.migrate inside one transaction; user_version is set after it.

-- One row per committed event; payload is the canonical JSON, published byte for byte.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    priority     INTEGER NOT NULL,
    type         TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    published    INTEGER NOT NULL DEFAULT 0,
    published_at REAL
);

-- What the uplink still has to send: alarm first, seq order within a priority.
CREATE INDEX events_pending ON events (priority, seq) WHERE published = 0;

-- What may be pruned: published rows, oldest delivery first.
CREATE INDEX events_published ON events (published_at) WHERE published = 1;

-- The chain head, updated in the same transaction as the inserts, so it survives pruning.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

INSERT INTO meta (key, value) VALUES
    ('head_seq', '0'),
    ('head_hash', '0000000000000000000000000000000000000000000000000000000000000000');
