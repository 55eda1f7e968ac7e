"""What every meter line owner is: the `Bus` protocol and the one `BusStats` counter type.

ModbusBus and Dlt645Bus both implement `Bus`; the meter service reports their health and
closes them through it. `RegisterBus` adds the raw register read that Modbus read plans
(gateway.meters.plan) are executed with. `raise_if_cancelling` re-raises a cancellation that a
library swallowed (see its docstring).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import (
    BusUnavailableError,
    DeviceRejectedError,
    DeviceTimeoutError,
    LineUnavailableError,
    ModbusExceptionError,
    ProtocolError,
)
from gateway.protocol.modbus_values import RegisterFunction

__all__ = ["Bus", "BusStats", "RegisterBus", "raise_if_cancelling"]


def raise_if_cancelling() -> None:
    """CancelledError if the current task was asked to stop, though the await it made returned.

    Python 3.11's asyncio.wait_for returns the awaited result, and drops the cancellation, when
    the result and the cancel arrive in the same turn of the loop; pymodbus awaits its connect
    and every reply through it. Call this after such an await so that a stop is not lost.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass(slots=True)
class BusStats:
    """Counters for the meter read success KPI; `by_device` counts requests per unit/address."""

    requests: int = 0
    ok: int = 0
    timeouts: int = 0
    garbled: int = 0
    refused: int = 0
    unavailable: int = 0
    broadcasts: int = 0
    by_device: dict[str, int] = field(default_factory=dict)

    def count_request(self, device: str) -> None:
        """One request sent to `device`."""
        self.requests += 1
        self.by_device[device] = self.by_device.get(device, 0) + 1

    def count_failure(self, exc: Exception) -> None:
        """File a failure: timeout, garbled reply, refusal or unreachable line."""
        if isinstance(exc, DeviceTimeoutError):
            self.timeouts += 1
        elif isinstance(exc, ModbusExceptionError | DeviceRejectedError):
            self.refused += 1
        elif isinstance(exc, ProtocolError):
            self.garbled += 1
        elif isinstance(exc, BusUnavailableError | LineUnavailableError):
            self.unavailable += 1


class Bus(Protocol):
    """The single owner of one meter line (Modbus or DL/T 645)."""

    @property
    def name(self) -> str:
        """The transport's description, for logs."""
        ...

    @property
    def inter_frame_gap(self) -> float:
        """Seconds of silence kept after each transaction."""
        ...

    @property
    def stats(self) -> BusStats:
        """The line's counters."""
        ...

    async def close(self) -> None:
        """Close the line after the request in progress, if any."""
        ...


class RegisterBus(Bus, Protocol):
    """A bus that reads raw Modbus registers."""

    async def read(
        self, unit: int, function: RegisterFunction, address: int, count: int
    ) -> list[int]:
        """Read `count` registers from one unit."""
        ...
