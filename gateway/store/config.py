"""The [buffer] section: the durable SQLite event buffer's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.config.spec import spec

__all__ = ["MIB", "BufferSection"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BufferSection:
    """The durable SQLite event buffer."""

    path: Path | None = None  # default: state_dir / "buffer.db"
    max_bytes: int = field(default=256 * MIB, metadata=spec(minimum=256 * 1024))
    audit_reserve_bytes: int = field(default=16 * MIB, metadata=spec(minimum=0))
    retain_published_s: float = field(default=72 * 3600.0, metadata=spec(minimum=0))
    synchronous: Literal["full", "normal"] = "full"
    batch_max: int = field(default=2048, metadata=spec(minimum=1, maximum=100_000))
