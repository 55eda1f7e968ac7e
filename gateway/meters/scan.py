"""Meter discovery on one bus: DL/T 645 addresses and Modbus unit ids, for `sealgw meters scan`.

DL/T 645 (docs/dlt645.md, shortened addressing):

1. The all-AA read-address (0x13). On a bus with one meter it answers with its address, which
   a directed read then confirms.
2. Otherwise (silence, or several meters answering at once), a byte-by-byte search with
   shortened addresses: the high-order bytes are AAH and match anything. For each low-order
   byte 00..99 a read is sent to `AAAAAAAAAA<byte>`: silence means no meter ends in that byte,
   a clean reply is exactly one meter (its full address is in the reply's header), and a
   garbled reply is a collision of several, so the search goes one byte further under that one.

Modbus: a one-register read to each unit id; any answer, an exception response included,
means a unit is there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.drivers.dlt645.bus import Dlt645Bus
from gateway.errors import GarbledReplyError
from gateway.protocol.dlt645 import DI_BY_NAME
from gateway.protocol.modbus_values import RegisterFunction

__all__ = ["ScanReport", "UnitProbe", "entries_toml", "scan_dlt645", "scan_modbus"]

_log = logging.getLogger(__name__)

PROBE_DI = DI_BY_NAME["forward_active_energy_total"]
"""The identifier a search reads: every DL/T 645 meter holds forward active energy."""


class UnitProbe(Protocol):
    """What a Modbus unit-id scan needs of a bus (gateway.drivers.modbus.bus.ModbusBus)."""

    async def probe(self, unit: int, function: RegisterFunction, address: int) -> bool:
        """Whether `unit` answers a one-register read."""
        ...


@dataclass(slots=True)
class ScanReport:
    """What a scan found: DL/T 645 addresses or Modbus unit ids, and what it cost."""

    protocol: str
    found: list[str] = field(default_factory=list)
    probes: int = 0
    collisions: int = 0
    single_meter: bool = False


async def scan_dlt645(bus: Dlt645Bus, *, di: int = PROBE_DI) -> ScanReport:
    """Every meter on a DL/T 645 bus: the all-AA read-address, else the shortened search."""
    report = ScanReport("dlt645")
    report.probes += 1
    try:
        address = await bus.probe_address()
    except GarbledReplyError:
        address = None
        report.collisions += 1
    if address is not None:
        report.probes += 1
        reply = await bus.probe(address, di)
        if reply is not None and reply.address == address:
            report.found.append(address)
            report.single_meter = True
            return report
    await _search(bus, "", di, report)
    report.found.sort()
    return report


async def scan_modbus(
    bus: UnitProbe,
    units: Iterable[int],
    *,
    function: RegisterFunction = RegisterFunction.HOLDING,
    address: int = 0,
) -> ScanReport:
    """The unit ids in `units` that answer a one-register read on `bus` (a ModbusBus)."""
    report = ScanReport("modbus")
    for unit in units:
        report.probes += 1
        if await bus.probe(unit, function, address):
            report.found.append(str(unit))
    return report


def entries_toml(report: ScanReport, bus: str, profile: str) -> str:
    """Ready-to-paste `[[meters.meters]]` tables for what a scan found."""
    blocks = []
    for found in report.found:
        if report.protocol == "dlt645":
            where = f'address = "{found}"'
            meter_id = f"M-{found}"
        else:
            where = f"unit = {found}"
            meter_id = f"{bus}-unit{found}"
        blocks.append(
            f'[[meters.meters]]\nid = "{meter_id}"\nbus = "{bus}"\nprofile = "{profile}"\n{where}\n'
        )
    return "\n".join(blocks)


async def _search(bus: Dlt645Bus, tail: str, di: int, report: ScanReport) -> None:
    """Try every next low-order byte under the known `tail` (digit pairs, high to low)."""
    for byte in range(100):
        known = f"{byte:02d}{tail}"
        pattern = "AA" * (6 - len(known) // 2) + known
        report.probes += 1
        try:
            reply = await bus.probe(pattern, di)
        except GarbledReplyError:
            report.collisions += 1
            _log.info("%s: several meters end in %s; searching one byte further", bus.name, known)
            if len(known) < 12:
                await _search(bus, known, di, report)
            continue
        if reply is not None and reply.address not in report.found:
            report.found.append(reply.address)
