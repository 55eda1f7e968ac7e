"""The ledger's schema and its shared statements (placeholders are `?`); see docs/master.md."""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "EVENT_COLUMNS",
    "GAPS",
    "INSERT_EVENT",
    "INSERT_LOCK_ENTRY",
    "INSERT_PROBLEM",
    "SCHEMA",
    "UPSERT_HEAD",
    "schema_statements",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    seq BIGINT NOT NULL,
    payload {blob} NOT NULL,
    type TEXT NOT NULL,
    ts TEXT NOT NULL,
    priority TEXT NOT NULL,
    subject TEXT NOT NULL,
    hash TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    received_at TEXT NOT NULL,
    repeats BIGINT NOT NULL DEFAULT 0,
    UNIQUE (gateway, seq)
);
CREATE INDEX IF NOT EXISTS events_by_type_ts ON events (type, ts);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS seal_state (
    gateway TEXT NOT NULL,
    seal TEXT NOT NULL,
    payload {blob} NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (gateway, seal)
);
CREATE TABLE IF NOT EXISTS gateway_status (
    gateway TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    payload {blob} NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_head (
    gateway TEXT PRIMARY KEY,
    verified_seq BIGINT NOT NULL,
    verified_hash TEXT NOT NULL,
    verified_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS problems (
    gateway TEXT NOT NULL,
    seq BIGINT,
    kind TEXT NOT NULL,
    event_id TEXT,
    detail TEXT NOT NULL,
    payload {blob},
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS problems_by_gateway ON problems (gateway, kind, seq);
CREATE TABLE IF NOT EXISTS resend_claims (
    gateway TEXT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq BIGINT NOT NULL,
    requester TEXT NOT NULL,
    requested_at {real} NOT NULL,
    requests BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (gateway, from_seq)
);
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    flow TEXT NOT NULL,
    work_order TEXT NOT NULL,
    operator TEXT NOT NULL,
    role TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS lock_entries (
    lock_id TEXT NOT NULL,
    log_index BIGINT NOT NULL,
    gateway TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    entry {blob} NOT NULL,
    PRIMARY KEY (lock_id, log_index)
);
CREATE INDEX IF NOT EXISTS lock_entries_by_gateway ON lock_entries (gateway, lock_id)
"""
EVENT_COLUMNS = "gateway, seq, id, type, ts, priority, subject, payload"
INSERT_EVENT = (
    "INSERT INTO events (id, gateway, seq, payload, type, ts, priority, subject, hash,"
    " prev_hash, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
INSERT_PROBLEM = (
    "INSERT INTO problems (gateway, seq, kind, event_id, detail, payload, received_at)"
    " SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM problems WHERE gateway = ?"
    " AND COALESCE(seq, -1) = COALESCE(?, -1) AND kind = ? AND COALESCE(event_id, '') = ?)"
)
INSERT_LOCK_ENTRY = (
    "INSERT INTO lock_entries (lock_id, log_index, gateway, seq, event_id, entry)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
GAPS = (
    "SELECT prev + 1, seq - 1 FROM (SELECT seq, LAG(seq, 1, CAST(? AS BIGINT)) OVER"
    " (ORDER BY seq) AS prev FROM events WHERE gateway = ? AND seq > ?) AS t"
    " WHERE seq > prev + 1 ORDER BY seq"
)
CLAIM = (
    "INSERT INTO resend_claims (gateway, from_seq, to_seq, requester, requested_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (gateway, from_seq) DO UPDATE SET"
    " to_seq = excluded.to_seq, requester = excluded.requester,"
    " requested_at = excluded.requested_at, requests = resend_claims.requests + 1"
    " WHERE resend_claims.requested_at <= ? OR resend_claims.to_seq < excluded.to_seq"
)
UPSERT_HEAD = (
    "INSERT INTO chain_head (gateway, verified_seq, verified_hash, verified_at)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (gateway) DO UPDATE SET"
    " verified_seq = excluded.verified_seq, verified_hash = excluded.verified_hash,"
    " verified_at = excluded.verified_at WHERE chain_head.verified_seq < excluded.verified_seq"
)


def schema_statements(blob: str, real: str) -> list[str]:
    """The schema's statements with the backend's binary and floating-point column types."""
    text = SCHEMA.format(blob=blob, real=real)
    return [s.strip() for s in text.split(";") if s.strip()]
