"""Meter observations as the service and the theft rules see them: readings and events.

These are protocol-neutral: the Modbus and DL/T 645 readers both produce a `Sample`; the service
turns samples into `MeterReading`s and `MeterEvent`s, and those into event drafts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from gateway.meters.profiles import StatusEvent, ValueKind
from gateway.protocol.canonical import JSONValue

__all__ = [
    "EVENT_FOR_STATUS",
    "Measurement",
    "MeterEvent",
    "MeterEventKind",
    "MeterReading",
    "Sample",
    "primary_side",
]

_ENERGY_PREFERENCE = ("energy_import", "forward_active_energy_total", "energy_total")


class MeterEventKind(StrEnum):
    """The `event` of a meter.event."""

    COVER_OPENED = "cover_opened"
    TERMINAL_COVER_OPENED = "terminal_cover_opened"
    POWER_DOWN = "power_down"
    MAGNETIC_INTERFERENCE = "magnetic_interference"
    REVERSE_ENERGY = "reverse_energy"


EVENT_FOR_STATUS: Mapping[StatusEvent, MeterEventKind] = {
    StatusEvent.METER_COVER_OPEN: MeterEventKind.COVER_OPENED,
    StatusEvent.TERMINAL_COVER_OPEN: MeterEventKind.TERMINAL_COVER_OPENED,
    StatusEvent.POWER_DOWN: MeterEventKind.POWER_DOWN,
    StatusEvent.MAGNETIC_INTERFERENCE: MeterEventKind.MAGNETIC_INTERFERENCE,
    StatusEvent.REVERSE_ENERGY: MeterEventKind.REVERSE_ENERGY,
}
"""Status conditions (profiles) to the events their rising edge raises."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One named value with its unit and kind."""

    name: str
    value: int | float
    unit: str
    kind: ValueKind

    def __post_init__(self) -> None:
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"{self.name} is not finite: {self.value}")


@dataclass(frozen=True, slots=True)
class Sample:
    """What one successful poll of a meter returned."""

    values: tuple[Measurement, ...]
    active: frozenset[MeterEventKind] = frozenset()
    counters: Mapping[MeterEventKind, int] = field(default_factory=dict)
    missing: Mapping[str, str] = field(default_factory=dict)
    """Values the profile names that this poll did not get, with the reason for each."""
    frozen: tuple[datetime, float] | None = None
    """The last daily freeze (DL/T 645 05060001 / 05060101): meter time and forward kWh."""


def primary_side(sample: Sample, ct_ratio: float, vt_ratio: float) -> Sample:
    """Secondary-side values to the primary side: A x CT, V x VT, power and energy x CT x VT."""
    if ct_ratio == 1.0 and vt_ratio == 1.0:
        return sample
    factors = {
        ValueKind.CURRENT: ct_ratio,
        ValueKind.VOLTAGE: vt_ratio,
        ValueKind.POWER: ct_ratio * vt_ratio,
        ValueKind.ENERGY: ct_ratio * vt_ratio,
    }
    values = tuple(
        replace(m, value=_scaled(m.value, factors[m.kind])) if m.kind in factors else m
        for m in sample.values
    )
    frozen = sample.frozen
    if frozen is not None:
        frozen = (frozen[0], _scaled(frozen[1], ct_ratio * vt_ratio))
    return replace(sample, values=values, frozen=frozen)


def _scaled(value: int | float, factor: float) -> float:
    return float(f"{value * factor:.10g}")


@dataclass(frozen=True, slots=True)
class MeterReading:
    """A successful poll, stamped and attributed."""

    meter: str
    ts: datetime
    protocol: str
    values: tuple[Measurement, ...]
    seal: str = ""
    missing: Mapping[str, str] = field(default_factory=dict)

    def energy_kwh(self) -> float | None:
        """The import energy register in kWh: a preferred name, else the first energy value.

        None when a preferred register is missing from this poll (it timed out, say): another
        energy value (the export register) must not stand in for it.
        """
        energies = [m for m in self.values if m.kind is ValueKind.ENERGY]
        chosen = next((m for n in _ENERGY_PREFERENCE for m in energies if m.name == n), None)
        if chosen is None and any(name in self.missing for name in _ENERGY_PREFERENCE):
            return None
        chosen = chosen or (energies[0] if energies else None)
        if chosen is None:
            return None
        return float(chosen.value) / 1000.0 if chosen.unit == "Wh" else float(chosen.value)

    def voltage(self) -> float | None:
        """The highest voltage of any phase, or None if the profile reads none."""
        volts = [float(m.value) for m in self.values if m.kind is ValueKind.VOLTAGE]
        return max(volts) if volts else None

    def to_data(self) -> dict[str, JSONValue]:
        """The data of a meter.reading event."""
        values: dict[str, JSONValue] = {}
        for item in self.values:
            entry: dict[str, JSONValue] = {"value": item.value}
            if item.unit:
                entry["unit"] = item.unit
            values[item.name] = entry
        data: dict[str, JSONValue] = {
            "meter": self.meter,
            "protocol": self.protocol,
            "values": values,
        }
        if self.seal:
            data["seal"] = self.seal
        if self.missing:
            data["missing"] = dict(sorted(self.missing.items()))
        return data


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """A status condition that appeared, or an event counter that stepped, on one meter."""

    meter: str
    ts: datetime
    event: MeterEventKind
    source: str
    count: int = 1
    seal: str = ""
    first_poll: bool = False

    def to_data(self) -> dict[str, JSONValue]:
        """The data of a meter.event event."""
        data: dict[str, JSONValue] = {
            "meter": self.meter,
            "event": self.event.value,
            "source": self.source,
            "count": self.count,
        }
        if self.seal:
            data["seal"] = self.seal
        if self.first_poll:
            data["first_poll"] = True
        return data
