"""Simulated Modbus meters: shipped profiles' register maps filled from a live meter model.

Each `ModbusSimMeter` wraps a `SimMeter` from firmware_sim.meters.dlt645 for the physics (energy
integrated from a load curve, covers, outages, faults) and lays its values out in the registers
of a profile (sdm630, dds-single-phase). A pymodbus server refreshes the image on every read
through the simulator's action hook, so energy advances between polls.

Faults: `meter.dead` makes the unit silent, `meter.garble` corrupts its replies (RTU: the CRC;
TCP: the MBAP protocol id). A powered-down Modbus meter keeps answering, as meters with an
auxiliary supply do, with zero voltage and current and the power_down status bit set.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.meters.dlt645 import SimMeter
from gateway.meters.profiles import MeterProfile, StatusBit, StatusEvent, ValueKind
from gateway.protocol.modbus_values import RegisterFunction

__all__ = ["ModbusLine", "ModbusSimMeter"]

_LOGGER = logging.getLogger(__name__)

_VOLTS = 230.0
_PF = 0.95
_VAR_PER_W = math.tan(math.acos(_PF))
_LINE_TO_LINE = ("_l1_l2", "_l2_l3", "_l3_l1")
_HOLDING, _INPUT = 3, 4


class ModbusSimMeter:
    """One Modbus unit whose registers follow `profile` and whose values come from `meter`."""

    def __init__(self, unit: int, profile: MeterProfile, meter: SimMeter) -> None:
        self.unit = unit
        self.profile = profile
        self.meter = meter
        self.magnetic = False
        self.size = max(spec.end for spec in profile.registers) + 1

    def conditions(self) -> frozenset[StatusEvent]:
        """Status conditions present now."""
        present = {
            StatusEvent.METER_COVER_OPEN: self.meter.meter_cover.open_now,
            StatusEvent.TERMINAL_COVER_OPEN: self.meter.terminal_cover.open_now,
            StatusEvent.POWER_DOWN: not self.meter.powered,
            StatusEvent.MAGNETIC_INTERFERENCE: self.magnetic,
            StatusEvent.REVERSE_ENERGY: False,
        }
        return frozenset(event for event, on in present.items() if on)

    def image(self, function: RegisterFunction) -> list[int]:
        """Every register of one table, as the meter holds them now."""
        self.meter.advance()
        words = [0] * self.size
        for spec in self.profile.registers:
            if spec.function is function:
                raw = self._raw(spec.name, spec.kind, spec.scale, spec.bits)
                words[spec.address : spec.end] = spec.format.encode(raw)
        return words

    def device(self) -> SimDevice:
        """The pymodbus simulator device for this unit, refreshed on every access."""
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        tables = {
            function: [SimData(0, values=self.image(function), datatype=DataType.REGISTERS)]
            for function in RegisterFunction
        }
        return SimDevice(
            self.unit,
            simdata=(
                bits,
                list(bits),
                tables[RegisterFunction.HOLDING],
                tables[RegisterFunction.INPUT],
            ),
            action=partial(_refresh, self),
        )

    def _raw(
        self, name: str, kind: ValueKind, scale: float, bits: tuple[StatusBit, ...]
    ) -> int | float:
        if kind is ValueKind.STATUS:
            present = self.conditions()
            return sum(1 << item.bit for item in bits if item.event in present)
        value = self._value(name, kind)
        scaled = value / scale
        return scaled if self._is_float(name) else round(scaled)

    def _is_float(self, name: str) -> bool:
        return not self.profile.register(name).format.type.is_integer

    def _value(self, name: str, kind: ValueKind) -> float:
        meter = self.meter
        powered = meter.powered
        watts = meter.power_kw() * 1000.0
        phases = meter.phases
        if kind is ValueKind.ENERGY:
            return _energy(name, meter)
        if kind is ValueKind.VOLTAGE:
            volts = _VOLTS * math.sqrt(3) if name.endswith(_LINE_TO_LINE) else _VOLTS
            return volts if powered else 0.0
        if kind is ValueKind.CURRENT:
            return watts / _VOLTS / _PF / phases if powered else 0.0
        if kind is ValueKind.POWER:
            share = watts / phases if name.endswith(("_l1", "_l2", "_l3")) else watts
            return share * _VAR_PER_W if name.startswith("reactive") else share
        if kind is ValueKind.POWER_FACTOR:
            return _PF
        return 50.0 if powered else 0.0


def _energy(name: str, meter: SimMeter) -> float:
    if name.endswith("export"):
        return meter.reverse_kwh[0]
    if name.endswith("total"):
        return meter.forward_kwh[0] + meter.reverse_kwh[0]
    return meter.forward_kwh[0]


async def _refresh(  # noqa: PLR0917 - the signature is pymodbus's action hook
    sim: ModbusSimMeter,
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    current_registers: list[int],
    set_values: Any,
) -> None:
    """pymodbus action hook: rewrite the table just before the server answers."""
    function = RegisterFunction.INPUT if function_code == _INPUT else RegisterFunction.HOLDING
    image = sim.image(function)
    current_registers[: len(image)] = image


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
            return data
        if meter.meter.dead:
            return b""
        if meter.meter.garble:
            return _garble(data, tcp=not self.rtu)
        return data


def _garble(data: bytes, *, tcp: bool) -> bytes:
    if tcp:
        return data[:2] + b"\xff\xff" + data[4:]  # MBAP protocol id must be 0
    return data[:-1] + bytes([data[-1] ^ 0xFF])  # break the CRC
