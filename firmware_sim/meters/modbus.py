"""Simulated Modbus meters: the vendors' register maps (maps.py) filled from a live meter model.

Each `ModbusSimMeter` wraps a `SimMeter` from firmware_sim.meters.dlt645 for the physics (energy
integrated from a load curve, covers, outages, faults), works out every quantity its register
map holds (`truth()`, in volts, amperes, watts, kWh), and lays the values out in the map's
registers. A pymodbus server refreshes the image on every read through the simulator's action
hook, so energy advances between polls. `PhaseBalance` sets per-phase voltages, load shares
and power factors; the default is a balanced 230 V load at PF 0.95.

Faults: `meter.dead` makes the unit silent, `meter.garble` corrupts its replies (RTU: the CRC;
TCP: the MBAP protocol id), `strict = True` answers exception 2 to any read that touches a
register its map marks reserved (`RegisterMap.reserved`), as strict meters do. A powered-down
Modbus meter keeps answering, as meters with an auxiliary supply do, with zero voltage and
current (and the power_down status bit, on a map that has one).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.meters.dlt645 import SimMeter
from firmware_sim.meters.maps import Condition, RegisterMap, SimRegister, Table

__all__ = ["ModbusLine", "ModbusSimMeter", "PhaseBalance"]

_LOGGER = logging.getLogger(__name__)

_HZ = 50.0
_INPUT = 4
_PAIRS = {"l1_l2": (0, 1), "l2_l3": (1, 2), "l3_l1": (2, 0)}


@dataclass(frozen=True, slots=True)
class PhaseBalance:
    """Per-phase supply voltage, share of the load and power factor (a single phase uses [0])."""

    volts: tuple[float, float, float] = (230.0, 230.0, 230.0)
    shares: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    power_factors: tuple[float, float, float] = (0.95, 0.95, 0.95)


class ModbusSimMeter:
    """One Modbus unit whose registers follow `regmap` and whose values come from `meter`."""

    def __init__(
        self,
        unit: int,
        regmap: RegisterMap,
        meter: SimMeter,
        *,
        balance: PhaseBalance = PhaseBalance(),
    ) -> None:
        self.unit = unit
        self.regmap = regmap
        self.meter = meter
        self.balance = balance
        self.magnetic = False
        self.strict = False
        """Answer exception 2 (illegal data address) to a read touching a reserved register."""
        self.size = regmap.size() + 1

    def conditions(self) -> frozenset[Condition]:
        """Status conditions present now."""
        present = {
            Condition.METER_COVER_OPEN: self.meter.meter_cover.open_now,
            Condition.TERMINAL_COVER_OPEN: self.meter.terminal_cover.open_now,
            Condition.POWER_DOWN: not self.meter.powered,
            Condition.MAGNETIC_INTERFERENCE: self.magnetic,
            Condition.REVERSE_ENERGY: False,
        }
        return frozenset(condition for condition, on in present.items() if on)

    def truth(self) -> dict[str, float]:
        """Every quantity the map holds, in physical units, as the meter measures it now."""
        self.meter.advance()
        values = _Physics(self.meter, self.balance, self.regmap.phases).values()
        return {r.name: values[r.name] for r in self.regmap.registers if not r.bits}

    def image(self, table: Table) -> list[int]:
        """Every register of one table, as the meter holds them now."""
        truth = self.truth()
        present = self.conditions()
        words = [0] * self.size
        for register in self.regmap.registers:
            if register.table is table:
                raw = _raw(register, truth, present)
                words[register.address : register.end] = register.format.encode(raw)
        return words

    def device(self) -> SimDevice:
        """The pymodbus simulator device for this unit, refreshed on every access."""
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        tables = {
            table: [SimData(0, values=self.image(table), datatype=DataType.REGISTERS)]
            for table in Table
        }
        return SimDevice(
            self.unit,
            simdata=(bits, list(bits), tables[Table.HOLDING], tables[Table.INPUT]),
            action=partial(_refresh, self),
        )


def _raw(register: SimRegister, truth: dict[str, float], present: frozenset[Condition]) -> float:
    if register.bits:
        return sum(1 << bit for bit, cond in register.bits.items() if cond in present)
    scaled = truth[register.name] / register.scale
    return round(scaled) if register.format.type.is_integer else scaled


class _Physics:
    """The quantities of one moment: per-phase voltage, current, power, and the energies."""

    def __init__(self, meter: SimMeter, balance: PhaseBalance, phases: int) -> None:
        self.meter = meter
        self.phases = phases
        powered = meter.powered
        watts = meter.power_kw() * 1000.0
        shares = balance.shares if phases == 3 else (1.0,)
        self.volts = [v if powered else 0.0 for v in balance.volts[:phases]]
        self.pf = list(balance.power_factors[:phases])
        self.power = [watts * share for share in shares]
        self.reactive = [
            p * math.tan(math.acos(pf)) for p, pf in zip(self.power, self.pf, strict=True)
        ]
        self.current = [
            p / (v * pf) if v else 0.0
            for p, v, pf in zip(self.power, self.volts, self.pf, strict=True)
        ]
        self.hz = _HZ if powered else 0.0

    def values(self) -> dict[str, float]:
        meter = self.meter
        values = {
            "frequency": self.hz,
            "energy_import": meter.forward_kwh[0],
            "energy_export": meter.reverse_kwh[0],
            "energy_total": meter.forward_kwh[0] + meter.reverse_kwh[0],
        }
        if self.phases == 1:
            return values | self._single()
        return values | self._three()

    def _single(self) -> dict[str, float]:
        return {
            "voltage": self.volts[0],
            "current": self.current[0],
            "power": self.power[0],
            "reactive_power": self.reactive[0],
            "power_factor": self.pf[0],
        }

    def _three(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for n in range(3):
            tag = f"l{n + 1}"
            values[f"voltage_{tag}"] = self.volts[n]
            values[f"current_{tag}"] = self.current[n]
            values[f"power_{tag}"] = self.power[n]
            values[f"reactive_power_{tag}"] = self.reactive[n]
            values[f"apparent_power_{tag}"] = math.hypot(self.power[n], self.reactive[n])
            values[f"power_factor_{tag}"] = self.pf[n]
        for pair, (a, b) in _PAIRS.items():  # phasors 120 degrees apart
            va, vb = self.volts[a], self.volts[b]
            values[f"voltage_{pair}"] = math.sqrt(va * va + vb * vb + va * vb)
        p, q = sum(self.power), sum(self.reactive)
        values["power_total"] = p
        values["reactive_power_total"] = q
        values["apparent_power_total"] = math.hypot(p, q)
        values["power_factor_total"] = p / math.hypot(p, q) if p else sum(self.pf) / 3
        return values


async def _refresh(  # noqa: PLR0917 - the signature is pymodbus's action hook
    sim: ModbusSimMeter,
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    current_registers: list[int],
    set_values: Any,
) -> ExcCodes | None:
    """pymodbus action hook: refuse reserved reads of a strict unit, else rewrite the table."""
    if sim.strict and _touches(sim.regmap.reserved, address, count):
        return ExcCodes.ILLEGAL_ADDRESS
    table = Table.INPUT if function_code == _INPUT else Table.HOLDING
    image = sim.image(table)
    current_registers[: len(image)] = image
    return None


def _touches(ranges: tuple[tuple[int, int], ...], address: int, count: int) -> bool:
    last = address + count - 1
    return any(lo <= last and address <= hi for lo, hi in ranges)


class ModbusLine:
    """A pymodbus server for several simulated units: TCP, or RTU on a serial device.

    With `rtu_framing` a TCP server speaks RTU frames (with CRC), as a transparent
    Ethernet-to-RS-485 converter does (`rtu-over-tcp://`). `requests` counts the request frames
    the server decoded, by unit id (silent and garbled units included), so tests and the bench
    see what reached the meters.
    """

    def __init__(
        self,
        meters: Iterable[ModbusSimMeter],
        *,
        serial: Path | None = None,
        rtu_framing: bool = False,
    ) -> None:
        self.meters = {meter.unit: meter for meter in meters}
        self.serial = serial
        self.rtu = serial is not None or rtu_framing
        self.port = 0
        self.requests: Counter[int] = Counter()
        self._server: Any = None  # pymodbus servers are untyped here

    async def start(self) -> None:
        """Start serving (TCP on a free port unless `serial` is set)."""
        devices = [meter.device() for meter in self.meters.values()]
        hooks: dict[str, Any] = {"trace_packet": self._trace, "trace_pdu": self._count}
        if self.serial is not None:
            self._server = ModbusSerialServer(
                devices, port=str(self.serial), baudrate=9600, **hooks
            )
        else:
            framer = FramerType.RTU if self.rtu else FramerType.SOCKET
            self._server = ModbusTcpServer(
                devices, framer=framer, address=("127.0.0.1", 0), **hooks
            )
        await self._server.serve_forever(background=True)
        if self.serial is None:
            self.port = self._server.transport.sockets[0].getsockname()[1]
        _LOGGER.info("Modbus simulator on %s", self.serial or f"127.0.0.1:{self.port}")

    async def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def _count(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus trace_pdu hook: count each decoded request by unit."""
        if not sending:
            self.requests[pdu.dev_id] += 1
        return pdu

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """Silence dead units and corrupt garbled ones on the way out."""
        if not sending or not data:
            return data
        unit_at = 0 if self.rtu else 6
        meter = self.meters.get(data[unit_at]) if len(data) > unit_at else None
        if meter is None:
            return b""  # no such unit on the line: silence, not pymodbus's exception 4
        if meter.meter.dead:
            return b""
        if meter.meter.garble:
            return _garble(data, tcp=not self.rtu)
        return data


def _garble(data: bytes, *, tcp: bool) -> bytes:
    if tcp:
        return data[:2] + b"\xff\xff" + data[4:]  # MBAP protocol id must be 0
    return data[:-1] + bytes([data[-1] ^ 0xFF])  # break the CRC
