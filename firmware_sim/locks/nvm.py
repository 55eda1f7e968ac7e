"""The lock's non-volatile memory, simulated as one JSON file written atomically.

`writes` counts flash writes, so tests and docs can show how often an attacker can make the
lock write (counters are reserved in blocks, see model.py). Without a path nothing is kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["LockNvm"]


class LockNvm:
    """One lock's persistent state: counters, state, time floor and the log ring."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.writes = 0

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None for a factory-fresh lock."""
        if self.path is None or not self.path.exists():
            return None
        data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        return data

    def save(self, state: dict[str, Any]) -> None:
        """Write the whole state atomically (one flash write)."""
        self.writes += 1
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
