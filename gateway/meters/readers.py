"""Meter readers: one poll of one meter through its bus, as a protocol-neutral Sample.

- Modbus: the profile's read plan (coalesced requests), status registers to conditions.
- DL/T 645: the profile's identifiers read one by one, status words 1 and 7 to conditions,
  the cover and power-down counters to counters. An identifier that is refused, times out or
  carries a bad value is left out and named in the sample's `missing` with its reason; one that
  keeps failing is skipped as unsupported (gateway.meters.support). Only a poll in which no
  identifier answered fails.

`failure_reason` names a failed poll for meter.read_failed. Buses are built by `open_buses`,
which imports pymodbus only when a Modbus bus is configured.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from gateway.drivers.dlt645.bus import BatchResult, Dlt645Bus, open_dlt645_bus
from gateway.errors import (
    ConfigError,
    DeviceTimeoutError,
    FollowUpError,
    GarbledReplyError,
    GarbledResponseError,
    GatewayError,
    MeterRefusedError,
    MeterValueError,
    ModbusExceptionError,
    ProtocolError,
    ReplyMismatchError,
)
from gateway.meters.config import BusConfig, MeterConfig
from gateway.meters.model import EVENT_FOR_STATUS, Measurement, MeterEventKind, Sample
from gateway.meters.plan import ReadPlan, plan_profile, read_plan
from gateway.meters.profiles import MeterProfile, MeterProtocol, RegisterSpec, ValueKind
from gateway.meters.support import IdentifierSupport
from gateway.protocol.clock import Clock
from gateway.protocol.dlt645 import DATA_ITEMS, DI_BY_NAME, ErrorFlags, Function, StatusWord7, Value

if TYPE_CHECKING:
    from gateway.drivers.modbus.bus import ModbusBus

__all__ = [
    "Dlt645Reader",
    "MeterReader",
    "ModbusReader",
    "ReadFailure",
    "failure_reason",
    "make_reader",
    "open_buses",
]

_log = logging.getLogger(__name__)

_UNIT_KINDS = {
    "kWh": ValueKind.ENERGY,
    "V": ValueKind.VOLTAGE,
    "A": ValueKind.CURRENT,
    "kW": ValueKind.POWER,
    "Hz": ValueKind.FREQUENCY,
}
_STATUS_BITS: Mapping[str, tuple[tuple[int, MeterEventKind], ...]] = {
    "status_word_1": ((0x0010, MeterEventKind.REVERSE_ENERGY),),
    "status_word_7": (
        (int(StatusWord7.METER_COVER_OPEN), MeterEventKind.COVER_OPENED),
        (int(StatusWord7.TERMINAL_COVER_OPEN), MeterEventKind.TERMINAL_COVER_OPENED),
        (int(StatusWord7.POWER_DOWN), MeterEventKind.POWER_DOWN),
    ),
}
"""DL/T 645-2007 status word bits the service watches: word 1 bit 4 is reverse active power."""
_COUNTERS: Mapping[str, MeterEventKind] = {
    "meter_cover_open_count": MeterEventKind.COVER_OPENED,
    "terminal_cover_open_count": MeterEventKind.TERMINAL_COVER_OPENED,
    "power_down_count": MeterEventKind.POWER_DOWN,
}


class ReadFailure(StrEnum):
    """Why a poll (or one value) failed: meter.read_failed's `reason`, meter.reading's `missing`."""

    TIMEOUT = "timeout"
    CRC = "crc"
    EXCEPTION = "exception"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    FOLLOW_UP = "follow_up"
    OUT_OF_RANGE = "out_of_range"
    MISMATCH = "mismatch"
    PROTOCOL = "protocol"
    UNSUPPORTED = "unsupported"

    def with_code(self, code: int) -> str:
        """`exception:<code>`: the Modbus exception code after the reason."""
        return f"{self.value}:{code}"


class MeterReader(Protocol):
    """Reads one meter."""

    @property
    def protocol(self) -> str:
        """`modbus` or `dlt645`."""
        ...

    async def read(self) -> Sample:
        """Poll the meter once; GatewayError subclasses when it fails."""
        ...


@dataclass(frozen=True, slots=True)
class ModbusReader:
    """A Modbus meter: its unit id, profile and read plan on a ModbusBus."""

    bus: ModbusBus
    unit: int
    profile: MeterProfile
    plan: ReadPlan
    protocol: str = "modbus"

    async def read(self) -> Sample:
        """Read the whole plan and derive the status conditions."""
        values = await read_plan(self.bus, self.unit, self.plan)
        measurements: list[Measurement] = []
        active: set[MeterEventKind] = set()
        for spec in self.profile.registers:
            value = values[spec.name]
            if isinstance(value, float) and not math.isfinite(value):
                _log.debug("unit %d: %s is %s, dropped", self.unit, spec.name, value)
                continue
            measurements.append(Measurement(spec.name, _tidy(spec, value), spec.unit, spec.kind))
            if spec.kind is ValueKind.STATUS:
                active |= {EVENT_FOR_STATUS[event] for event in spec.events(int(value))}
        return Sample(tuple(measurements), frozenset(active))


@dataclass(frozen=True, slots=True)
class Dlt645Reader:
    """A DL/T 645 meter: its address, the identifiers its profile names, which it answers."""

    bus: Dlt645Bus
    address: str
    names: tuple[str, ...]
    protocol: str = "dlt645"
    support: IdentifierSupport = field(default_factory=IdentifierSupport)

    @property
    def identifiers(self) -> tuple[int, ...]:
        """The data identifiers, in profile order."""
        return tuple(DI_BY_NAME[name] for name in self.names)

    async def read(self) -> Sample:
        """Read each identifier on its own; publish what answered, name what is missing."""
        to_read, skipped = self.support.plan(self.identifiers)
        batch = await self.bus.read_batch(self.address, to_read)
        if not batch.values:
            self.support.record_silent(batch.failed)
            raise _whole_poll_error(self.address, batch)
        self.support.record(batch.values, [*batch.refused, *batch.failed])
        measurements: list[Measurement] = []
        active: set[MeterEventKind] = set()
        counters: dict[MeterEventKind, int] = {}
        for di, value in batch.values.items():
            name = DATA_ITEMS[di].name
            measurements.extend(_measurements(di, value))
            active |= _conditions(name, value)
            if name in _COUNTERS and isinstance(value, int):
                counters[_COUNTERS[name]] = value
        missing = _missing(batch, skipped)
        frozen = _frozen(batch.values)
        if frozen is not None and not await self._freeze_unchanged(frozen[0]):
            frozen = None
        return Sample(tuple(measurements), frozenset(active), counters, missing, frozen)

    async def _freeze_unchanged(self, when: datetime) -> bool:
        """Read the freeze time again: a meter that froze between the time and the energy reads
        would pair one day's freeze time with the next day's energy."""
        di = DI_BY_NAME["daily_freeze_time"]
        again = (await self.bus.read_batch(self.address, [di])).values.get(di)
        if again != when:
            _log.debug("meter %s froze while read (%s, then %s): freeze skipped", self.address,
                       when, again)  # fmt: skip
            return False
        return True


def make_reader(
    meter: MeterConfig,
    profile: MeterProfile,
    bus: ModbusBus | Dlt645Bus,
    *,
    key: str = "meters.meters.profile",
) -> MeterReader:
    """The reader for one meter; ConfigError naming `key` when profile and bus disagree."""
    if profile.protocol is MeterProtocol.DLT645:
        if not isinstance(bus, Dlt645Bus):
            raise ConfigError(key, f"{meter.id}: a dlt645 profile on a Modbus bus")
        unknown = [name for name in profile.identifiers if name not in DI_BY_NAME]
        if unknown:
            raise ConfigError(key, f"{profile.source}: unknown identifier {unknown[0]}")
        support = IdentifierSupport(meter.id)
        return Dlt645Reader(bus, meter.address, profile.identifiers, support=support)
    if isinstance(bus, Dlt645Bus):
        raise ConfigError(key, f"{meter.id}: a modbus profile on a DL/T 645 bus")
    return ModbusReader(bus, meter.unit, profile, plan_profile(profile))


def open_buses(
    buses: Iterable[BusConfig], clock: Clock | None = None
) -> dict[str, ModbusBus | Dlt645Bus]:
    """A bus owner for every configured bus; nothing is opened until the first request."""
    opened: dict[str, ModbusBus | Dlt645Bus] = {}
    for index, bus in enumerate(buses):
        key = f"meters.buses[{index}].transport"
        if bus.protocol == "dlt645":
            opened[bus.name] = open_dlt645_bus(
                bus.transport,
                key=key,
                timeout=bus.timeout_s,
                inter_frame_gap=bus.gap_s,
                clock=clock,
            )
        else:
            from gateway.drivers.modbus.bus import open_bus  # noqa: PLC0415 - pymodbus is optional

            opened[bus.name] = open_bus(
                bus.transport,
                key=key,
                timeout=bus.timeout_s,
                inter_frame_gap=bus.gap_s,
                clock=clock,
            )
    return opened


def failure_reason(exc: Exception) -> str:
    """The `reason` of meter.read_failed: a ReadFailure, `exception:<code>` for Modbus ones."""
    if isinstance(exc, DeviceTimeoutError):
        return ReadFailure.TIMEOUT
    if isinstance(exc, MeterRefusedError):
        return ReadFailure.REFUSED
    for kind, reason in _PROTOCOL_REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, ProtocolError):
        return ReadFailure.PROTOCOL
    if isinstance(exc, ModbusExceptionError):
        return ReadFailure.EXCEPTION.with_code(exc.code)
    if isinstance(exc, GatewayError):
        return ReadFailure.UNAVAILABLE
    return ReadFailure.CRC


_PROTOCOL_REASONS: tuple[tuple[type[ProtocolError], ReadFailure], ...] = (
    (FollowUpError, ReadFailure.FOLLOW_UP),
    (MeterValueError, ReadFailure.OUT_OF_RANGE),
    (ReplyMismatchError, ReadFailure.MISMATCH),
    (GarbledReplyError, ReadFailure.CRC),
    (GarbledResponseError, ReadFailure.CRC),
)


def _frozen(values: Mapping[int, Value]) -> tuple[datetime, float] | None:
    """The last daily freeze, when the meter gave both its time and its energy block."""
    when = values.get(DI_BY_NAME["daily_freeze_time"])
    energies = values.get(DI_BY_NAME["daily_frozen_forward_energy"])
    if not isinstance(when, datetime) or not isinstance(energies, tuple) or not energies:
        return None
    return when, float(energies[0])


def _whole_poll_error(address: str, batch: BatchResult) -> GatewayError:
    """The error of a poll in which no identifier answered: the first failure, else refusal."""
    if batch.failed:
        return next(iter(batch.failed.values()))
    flags = next(iter(batch.refused.values()), ErrorFlags.OTHER)
    return MeterRefusedError(address, Function.READ_DATA, flags)


def _missing(batch: BatchResult, skipped: Iterable[int]) -> dict[str, str]:
    """Why each identifier of the profile has no value in this reading."""
    missing = {DATA_ITEMS[di].name: str(ReadFailure.REFUSED) for di in batch.refused}
    missing |= {DATA_ITEMS[di].name: failure_reason(exc) for di, exc in batch.failed.items()}
    missing |= {DATA_ITEMS[di].name: str(ReadFailure.UNSUPPORTED) for di in skipped}
    return missing


def _tidy(spec: RegisterSpec, value: int | float) -> int | float:
    """Drop float noise: f32 to 7 significant digits, scaled integers to the scale's decimals."""
    if isinstance(value, int):
        return value
    if not spec.format.type.is_integer:
        return float(f"{value:.7g}")
    exponent = Decimal(repr(spec.scale)).normalize().as_tuple().exponent
    return round(value, max(0, -exponent) if isinstance(exponent, int) else 6)


def _measurements(di: int, value: Value) -> list[Measurement]:
    item = DATA_ITEMS[di]
    if item.name == "status_word_block" and isinstance(value, tuple):
        return [
            Measurement(f"status_word_{n}", int(word), "", ValueKind.STATUS)
            for n, word in enumerate(value, start=1)
        ]
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        return []  # dates, times, records and blocks are not readings
    kind = _kind(item.name, item.unit)
    number: int | float = value if isinstance(value, int) else float(value)
    return [Measurement(item.name, number, item.unit, kind)]


def _kind(name: str, unit: str) -> ValueKind:
    if name.startswith("power_factor"):
        return ValueKind.POWER_FACTOR
    return _UNIT_KINDS.get(unit, ValueKind.STATUS)


def _conditions(name: str, value: Value) -> set[MeterEventKind]:
    if name == "status_word_block" and isinstance(value, tuple):
        words = {f"status_word_{n}": int(word) for n, word in enumerate(value, start=1)}
        return {kind for word, raw in words.items() for kind in _bits(word, raw)}
    if isinstance(value, int):
        return _bits(name, value)
    return set()


def _bits(name: str, raw: int) -> set[MeterEventKind]:
    return {kind for mask, kind in _STATUS_BITS.get(name, ()) if raw & mask}
