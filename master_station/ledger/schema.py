"""The ledger's schema and its shared statements (placeholders are `?`); see docs/master.md."""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "CONSOLE_SCHEMA",
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
# The console's tables (master_station/console, docs/master.md "Console"): rollups the listener
# keeps current (master_station/ledger/rollup.py), the alarm inbox with its acknowledgements, the
# master-side audit trail, accounts and sessions. Every console page reads these through an index.
CONSOLE_SCHEMA = """
CREATE INDEX IF NOT EXISTS problems_by_received ON problems (received_at);
CREATE INDEX IF NOT EXISTS problems_by_seq ON problems (gateway, seq);
CREATE TABLE IF NOT EXISTS console_gateways (
    gateway TEXT PRIMARY KEY,
    district TEXT NOT NULL,
    started_seq BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_gateways_by_district ON console_gateways (district);
CREATE TABLE IF NOT EXISTS console_seals (
    gateway TEXT NOT NULL,
    seal TEXT NOT NULL,
    lock_id TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'unknown',
    wire TEXT NOT NULL DEFAULT 'unknown',
    tamper INTEGER NOT NULL DEFAULT 0,
    state_seq BIGINT NOT NULL DEFAULT 0,
    sealed_seq BIGINT NOT NULL DEFAULT 0,
    ticket_id TEXT NOT NULL DEFAULT '',
    online INTEGER NOT NULL DEFAULT 1,
    online_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, seal)
);
CREATE TABLE IF NOT EXISTS console_seal_events (
    gateway TEXT NOT NULL,
    seal TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (gateway, seal, seq)
);
CREATE TABLE IF NOT EXISTS console_alarms (
    alarm_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    gateway TEXT NOT NULL,
    seq BIGINT,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    seal TEXT NOT NULL,
    ts TEXT NOT NULL,
    detail TEXT NOT NULL,
    status TEXT NOT NULL,
    cleared_seq BIGINT,
    updated_at TEXT NOT NULL,
    events BIGINT NOT NULL DEFAULT 1,
    change_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS console_alarms_by_status ON console_alarms (status, ts);
CREATE INDEX IF NOT EXISTS console_alarms_by_gateway ON console_alarms (gateway, status, ts);
CREATE INDEX IF NOT EXISTS console_alarms_by_change ON console_alarms (change_seq);
CREATE TABLE IF NOT EXISTS console_alarm_clock (
    id INTEGER PRIMARY KEY,
    change_seq BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_alarms_by_seal ON console_alarms (gateway, seal, seq);
CREATE TABLE IF NOT EXISTS console_alarm_events (
    gateway TEXT NOT NULL,
    seq BIGINT NOT NULL,
    alarm_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (gateway, seq)
);
CREATE INDEX IF NOT EXISTS console_alarm_events_by_alarm ON console_alarm_events (alarm_id, seq);
CREATE TABLE IF NOT EXISTS console_audit (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_audit_by_target ON console_audit (target, at);
CREATE TABLE IF NOT EXISTS kpi_daily (
    gateway TEXT NOT NULL,
    day TEXT NOT NULL,
    events BIGINT NOT NULL DEFAULT 0,
    alarms BIGINT NOT NULL DEFAULT 0,
    tampers BIGINT NOT NULL DEFAULT 0,
    thefts BIGINT NOT NULL DEFAULT 0,
    sealed BIGINT NOT NULL DEFAULT 0,
    unsealed BIGINT NOT NULL DEFAULT 0,
    denied BIGINT NOT NULL DEFAULT 0,
    meter_polls BIGINT NOT NULL DEFAULT 0,
    meter_ok BIGINT NOT NULL DEFAULT 0,
    seals BIGINT,
    seals_intact BIGINT,
    locks_online BIGINT,
    gateway_online INTEGER,
    PRIMARY KEY (gateway, day)
);
CREATE INDEX IF NOT EXISTS kpi_daily_by_day ON kpi_daily (day);
CREATE TABLE IF NOT EXISTS line_loss_daily (
    district TEXT NOT NULL,
    day TEXT NOT NULL,
    gateway TEXT NOT NULL,
    seq BIGINT NOT NULL,
    rate {real},
    status TEXT NOT NULL,
    qualified INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    PRIMARY KEY (district, day)
);
CREATE TABLE IF NOT EXISTS meter_counters (
    gateway TEXT NOT NULL,
    meter TEXT NOT NULL,
    seq BIGINT NOT NULL,
    polls BIGINT NOT NULL,
    ok BIGINT NOT NULL,
    PRIMARY KEY (gateway, meter)
);
CREATE TABLE IF NOT EXISTS rollup_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS console_users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    districts TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS console_tickets (
    ticket_id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    work_order TEXT NOT NULL,
    flow TEXT NOT NULL,
    operator TEXT NOT NULL,
    role TEXT NOT NULL,
    seals TEXT NOT NULL,
    ops TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    max_uses BIGINT NOT NULL,
    issued_by TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    status TEXT NOT NULL,
    reply TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_tickets_by_issued ON console_tickets (issued_at);
CREATE INDEX IF NOT EXISTS console_tickets_by_gateway ON console_tickets (gateway, issued_at)
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
    text = SCHEMA.format(blob=blob, real=real) + ";" + CONSOLE_SCHEMA.format(real=real)
    return [s.strip() for s in text.split(";") if s.strip()]
