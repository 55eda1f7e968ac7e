"""Config section of the handheld service ([handheld]); see docs/handheld.md.

`listen` chooses the transport by a string: `tcp:HOST:PORT` (the default, on loopback),
`unix:PATH` (a socket file, mode 0660), or `ble` (the handheld GATT service on the `[ble]`
adapter, docs/handheld.md section 8.1). Port 0 picks a free port (tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config.spec import spec
from gateway.protocol.handheld import DEFAULT_LISTEN

__all__ = ["DEFAULT_LISTEN", "HandheldSection"]

_LISTEN = r"^(tcp:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}|unix:/.+|ble)$"


@dataclass(frozen=True, slots=True)
class HandheldSection:
    """Handheld pairing and sessions: where to listen, how long codes live, how many tries."""

    enabled: bool = False
    listen: str = field(
        default=DEFAULT_LISTEN,
        metadata=spec(pattern=_LISTEN, doc="tcp:HOST:PORT, unix:/path/to.sock or ble"),
    )
    code_ttl_s: int = field(
        default=300, metadata=spec(minimum=30, maximum=3600, doc="pairing code lifetime")
    )
    max_attempts: int = field(
        default=5, metadata=spec(minimum=1, maximum=20, doc="wrong codes before it is burnt")
    )
    handshake_timeout_s: float = field(
        default=10.0, metadata=spec(minimum=1, maximum=120, doc="per handshake step")
    )
    idle_timeout_s: float = field(
        default=120.0, metadata=spec(minimum=5, maximum=3600, doc="idle session lifetime")
    )
