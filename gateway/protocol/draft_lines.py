"""Event drafts as JSON lines: the work a caller hands `sealgw probe drain --drafts FILE`.

One JSON object a line, the fields of an `EventDraft` (docs/probe.md, "Drafts file"):

    {"type": "meter.reading", "subject": "M-0001", "priority": "telemetry",
     "ts": "2026-01-01T00:00:00.000Z", "id": "01KD...", "data": {...}}

`id` is optional (a new ULID is made when it is missing). `ts` is RFC 3339 with an offset or a
Z, as events carry it; it is written with milliseconds, the precision an event keeps, so a
draft read back seals to the same payload. Lines are parsed strictly and capped like every
other input (strict_json), and blank lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from gateway.errors import ProtocolError
from gateway.protocol.canonical import canonical_json
from gateway.protocol.events import EventDraft, Priority, format_ts
from gateway.protocol.strict_json import load_object

__all__ = ["decode_draft_line", "encode_draft_line", "read_draft_lines"]

_FIELDS = frozenset({"type", "subject", "priority", "ts", "id", "data"})
_REQUIRED = _FIELDS - {"id"}


def encode_draft_line(draft: EventDraft) -> str:
    """One line (no newline) that `decode_draft_line` reads back as an equal draft."""
    return canonical_json(
        {
            "type": draft.type,
            "subject": draft.subject,
            "priority": draft.priority.wire_name,
            "ts": format_ts(draft.ts),
            "id": draft.id,
            "data": draft.data,
        }
    )


def decode_draft_line(line: bytes | str) -> EventDraft:
    """The draft on one line; ProtocolError naming what is wrong with it."""
    obj = load_object(line, "draft line")
    unknown = set(obj) - _FIELDS
    missing = _REQUIRED - set(obj)
    if unknown or missing:
        raise ProtocolError(f"draft line: unknown {sorted(unknown)}, missing {sorted(missing)}")
    if not isinstance(obj["data"], dict):
        raise ProtocolError("draft line: data is not an object")
    try:
        return EventDraft(
            type=_text(obj, "type"),
            subject=_text(obj, "subject"),
            data=obj["data"],
            priority=Priority.from_wire(_text(obj, "priority")),
            ts=datetime.fromisoformat(_text(obj, "ts")),
            id=_text(obj, "id") if "id" in obj else "",
        )
    except ProtocolError:
        raise
    except ValueError as exc:  # a bad type, subject, priority, time or value in data
        raise ProtocolError(f"draft line: {exc}") from None


def read_draft_lines(lines: Iterable[bytes | str]) -> Iterator[EventDraft]:
    """Every draft of a drafts file; ProtocolError names the line number of a bad one."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield decode_draft_line(line)
        except ProtocolError as exc:
            raise ProtocolError(f"line {number}: {exc}") from None


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise ProtocolError(f"draft line: {name} is not a string")
    return value
