"""What the meter service remembers across restarts: `meters.json` in the state dir.

Per meter, the status conditions last seen active and the event counters last seen, so that:
- a cover opened and closed while the gateway was down shows as a counter step at the first
  poll after the restart, and is reported;
- a cover still open at the restart is not a new rising edge, so it is not reported again.

Events found this way are written here as *pending* (with their ids, derived from what they
report) before they are handed to the buffer, and dropped once the buffer committed them or
refused them as duplicates. A restart between the two resubmits the pending ones under the same
ids, so each change is stored exactly once. The file is written atomically; a corrupt one is
moved aside (`corrupt`) and the service starts as if new (the old first-poll behaviour).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.meters.model import MeterEventKind
from gateway.protocol.canonical import JSONValue
from gateway.protocol.events import EventDraft, Priority, format_ts
from gateway.store.state_files import CorruptFile, move_aside, write_atomic

__all__ = ["MEMORY_FILE", "MeterMemory", "MeterState"]

_log = logging.getLogger(__name__)

MEMORY_FILE = "meters.json"
_VERSION = 1

MeterState = tuple[frozenset[MeterEventKind], dict[MeterEventKind, int]]
"""The active conditions and the counters of one meter."""


class MeterMemory:
    """Last known state per meter and the events not yet committed, kept in one JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.corrupt: CorruptFile | None = None
        self._meters: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, dict[str, Any]] = {}

    @classmethod
    def load(cls, path: Path | None) -> MeterMemory:
        """Read the file (absent: empty); a file that does not parse is moved aside."""
        memory = cls(path)
        if path is None or not path.exists():
            return memory
        try:
            obj = json.loads(path.read_bytes())
            memory._meters = {str(k): dict(v) for k, v in obj["meters"].items()}
            memory._pending = {str(k): dict(v) for k, v in obj["pending"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            memory._meters, memory._pending = {}, {}
            lost = "meter events that happened while the gateway was down may go unreported"
            memory.corrupt = move_aside(path, f"not a meter memory file: {exc}", lost)
        return memory

    def state(self, meter_id: str) -> MeterState | None:
        """What was last seen on a meter, or None for a meter never seen."""
        entry = self._meters.get(meter_id)
        if entry is None:
            return None
        active = frozenset(k for k in map(_kind, entry.get("active", [])) if k is not None)
        counters: dict[MeterEventKind, int] = {}
        for name, value in dict(entry.get("counters", {})).items():
            kind = _kind(name)
            if kind is not None:
                counters[kind] = int(value)
        return active, counters

    def remember(
        self,
        meter_id: str,
        active: frozenset[MeterEventKind],
        counters: Mapping[MeterEventKind, int],
        drafts: Iterable[EventDraft],
    ) -> None:
        """Record a meter's state and the events it raised, durably, if anything changed."""
        entry = {
            "active": sorted(kind.value for kind in active),
            "counters": {kind.value: value for kind, value in sorted(counters.items())},
        }
        pending = {draft.id: _draft_json(draft) for draft in drafts}
        if self._meters.get(meter_id) == entry and not pending:
            return
        self._meters[meter_id] = entry
        self._pending.update(pending)
        self._save()

    def pending(self) -> list[EventDraft]:
        """Events recorded but not yet known to be committed, oldest first."""
        drafts = [_draft(obj) for obj in self._pending.values()]
        return sorted(drafts, key=lambda d: (d.ts, d.id))

    def settle(self, event_id: str) -> None:
        """An event is in the buffer (committed now, or found there as a duplicate)."""
        if self._pending.pop(event_id, None) is not None:
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"v": _VERSION, "meters": self._meters, "pending": self._pending}
        try:
            write_atomic(self.path, json.dumps(data, sort_keys=True).encode("utf-8"))
        except OSError as exc:
            _log.warning("cannot write %s: %s", self.path, exc)


def _kind(name: object) -> MeterEventKind | None:
    try:
        return MeterEventKind(str(name))
    except ValueError:
        return None


def _draft_json(draft: EventDraft) -> dict[str, JSONValue]:
    return {
        "id": draft.id,
        "type": draft.type,
        "subject": draft.subject,
        "data": dict(draft.data),
        "priority": draft.priority.wire_name,
        "ts": format_ts(draft.ts),
    }


def _draft(obj: Mapping[str, Any]) -> EventDraft:
    ts = datetime.fromisoformat(str(obj["ts"]).replace("Z", "+00:00"))
    priority = Priority.from_wire(str(obj["priority"]))
    return EventDraft(obj["type"], obj["subject"], obj["data"], priority, ts, id=str(obj["id"]))
