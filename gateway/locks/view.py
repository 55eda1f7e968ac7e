"""What the meter service and theft correlation need to know about box seals."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

__all__ = ["NoSealsKnown", "SealStateView"]


class SealStateView(Protocol):
    """Read-only seal state; the BLE lock service implements it."""

    def seal_state(self, seal_id: str) -> str | None:
        """The seal's last known state ("sealed", "unsealed", "tampered", ...), None if unknown."""
        ...

    def unseal_authorized(self, seal_id: str, at: datetime) -> bool:
        """True if an authorized unseal (a valid ticket in use) covers the seal at `at`."""
        ...


class NoSealsKnown:
    """The seal view of a gateway without a lock service: every seal is unknown."""

    def seal_state(self, seal_id: str) -> str | None:
        return None

    def unseal_authorized(self, seal_id: str, at: datetime) -> bool:
        return False
