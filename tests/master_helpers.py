"""Helpers for the master station tests: hash-chained events, a PostgreSQL scratch database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, Priority, seal_event

ADMIN_DSN = os.environ.get("SEALGW_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)

_PRIORITIES = {
    "seal.tamper": Priority.ALARM,
    "theft.suspected": Priority.ALARM,
    "seal.fault": Priority.ALARM,
    "gateway.buffer_recovered": Priority.ALARM,
    "gateway.health": Priority.STATE,
    "meter.reading": Priority.TELEMETRY,
    "meter.read_failed": Priority.STATE,
    "gateway.telemetry_evicted": Priority.STATE,
    "seal.offline": Priority.STATE,
    "seal.online": Priority.STATE,
}

Spec = tuple[str, str, Mapping[str, Any]]  # (type, subject, data)


class ChainBuilder:
    """Builds a gateway's chain the way the gateway's buffer does (seal_event)."""

    def __init__(self, gateway: str, start: datetime = T0) -> None:
        self.gateway = gateway
        self.events: list[Event] = []
        self._ts = start

    def add(
        self, type_: str, subject: str = "", data: Mapping[str, Any] | None = None,
        *, at: datetime | None = None,
    ) -> Event:  # fmt: skip
        """Append one event, one minute after the previous unless `at` is given."""
        self._ts = at or self._ts + timedelta(minutes=1)
        priority = _PRIORITIES.get(type_, Priority.AUDIT)
        draft = EventDraft(type_, subject or self.gateway, dict(data or {}), priority, self._ts)
        prev = self.events[-1].hash if self.events else GENESIS_HASH
        event = seal_event(draft, self.gateway, len(self.events) + 1, prev)
        self.events.append(event)
        return event

    def samples(self, count: int) -> list[Event]:
        """Append `count` synthetic samples; return them."""
        return [self.add("synthetic.sample", data={"n": i}) for i in range(count)]

    def extend(self, specs: Sequence[Spec]) -> list[Event]:
        return [self.add(t, s, d) for t, s, d in specs]


def chain(gateway: str, count: int) -> list[Event]:
    """`count` chained synthetic events of `gateway`."""
    return ChainBuilder(gateway).samples(count)


@contextmanager
def scratch_database() -> Iterator[str]:
    """A uniquely named database on the local server, dropped afterwards; yields its DSN."""
    import psycopg

    name = f"sealgw_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_DSN} ({exc}); the master ledger tests need"
            " a local server (set SEALGW_TEST_PG_DSN to an admin DSN)",
            pytrace=False,
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_dsn(database_dsn: str) -> str:
    """A DSN on `database_dsn` whose search_path is a fresh schema (created here)."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{database_dsn}?options={quote(f'-csearch_path={schema}')}"
