"""Helpers shared by the meter service, theft and simulator tests: fakes of our own protocols."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# the loader's section builder; parse_config covers [meters] once GatewayConfig has it
from gateway.config.loader import parse_config
from gateway.meters.config import MetersSection, TheftSection
from gateway.protocol.events import Event, EventDraft

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "config" / "profiles"


@dataclass
class FakeSeals:
    """An in-memory SealStateView: states by seal id, and authorized unseal windows."""

    states: dict[str, str] = field(default_factory=dict)
    authorized: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)

    def seal_state(self, seal_id: str) -> str | None:
        return self.states.get(seal_id)

    def unseal_authorized(self, seal_id: str, at: datetime) -> bool:
        window = self.authorized.get(seal_id)
        return window is not None and window[0] <= at < window[1]


@dataclass
class Recorder:
    """An emit() that keeps every draft and resolves its future at once."""

    drafts: list[EventDraft] = field(default_factory=list)

    def __call__(self, draft: EventDraft) -> asyncio.Future[Event]:
        self.drafts.append(draft)
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        future.set_result(None)  # type: ignore[arg-type]  # nobody reads the committed event
        return future

    def of(self, type_: str, meter: str | None = None) -> list[EventDraft]:
        """Drafts of one type, optionally for one meter."""
        return [d for d in self.drafts if d.type == type_ and (meter is None or d.subject == meter)]

    def clear(self) -> None:
        self.drafts.clear()


def meters_section(table: Mapping[str, Any], base_dir: Path = REPO) -> MetersSection:
    """Build [meters] through the real config loader."""
    return parse_config({"gateway": {"id": "gw-test"}, "meters": table}, base_dir=base_dir).meters


def theft_section(**overrides: Any) -> TheftSection:
    """Build [theft] through the real config loader."""
    return parse_config({"gateway": {"id": "gw-test"}, "theft": overrides}, base_dir=REPO).theft
