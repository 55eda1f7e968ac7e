"""Register images of the simulated Modbus meters, written from the vendors' published maps.

These maps are the simulator's own: they are not read from the gateway's profiles
(config/profiles/*.toml), so a wrong address, table, type or scale in a gateway profile shows
up as a wrong value when a test reads the simulated meter through the real Modbus stack.
A register holds `value / scale` in its format; quantity names are the simulator's physics
(firmware_sim.meters.modbus) and, by design, the names the shipped profiles use.

Sources, written from memory of the published documents (no vendor file is in the repository):

- `sdm630`: Eastron SDM630 Modbus Protocol (SDM630-Modbus / SDM630MCT V2 "Modbus protocol"
  manual), input registers (function 04), IEEE 754 float32, high word first. Addresses
  0x0000-0x004A and 0x0156 are those of the document's 3X table (30001, 30003, ...).
  Not sure: the sign conventions of reactive power and power factor (lead/lag), and that
  "Total kWh" at 0x0156 is import plus export (firmware from 2016 on; older units lack it).
- `dtsu666`: CHINT DTSU666 three-phase four-wire meter user manual, Modbus communication
  address table: holding registers (function 03), float32, high word first, in the manual's
  units (0.1 V, 0.001 A, 0.1 W, 0.1 var, 0.001 PF, 0.01 Hz; energies in kWh).
  Energies: ImpEp (import active energy) at 0x401E and ExpEp at 0x4028; 0x4020-0x4027
  between them are reserved (a strict meter refuses reads there). The DTSU666-H (the
  Huawei meter) has a different map. 0x2022-0x2029 (apparent power in some tables) are
  left out and marked reserved too (`RegisterMap.reserved`).
- `dds238-2`: Hiking DDS238-2 ZN/S single-phase meter, "Modbus holding registers" table
  published with the meter: 0x0000 total energy (u32, 0.01 kWh), 0x0008 export energy,
  0x000A import energy, 0x000C voltage (u16, 0.1 V), 0x000D current (u16, 0.01 A), 0x000E
  active power (i16, W), 0x000F reactive power (var), 0x0010 power factor (u16, 0.001),
  0x0011 frequency (u16, 0.01 Hz). There is no status word. Not sure: whether "total energy"
  is import plus export (modelled so) or import minus export, and whether 0x000F is signed
  (the table says unsigned; users report two's complement values), so the simulator keeps
  reactive power non-negative.

No published map of these meters has a status word; `RegisterMap` still supports one
(`bits`), for tests that describe a meter of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from gateway.protocol.modbus_values import ValueFormat, ValueType

__all__ = [
    "DDS238_2",
    "DTSU666",
    "MAPS",
    "SDM630",
    "Condition",
    "RegisterMap",
    "SimRegister",
    "Table",
]


class Table(IntEnum):
    """The Modbus register table a value sits in, by its read function code."""

    HOLDING = 0x03
    INPUT = 0x04


class Condition(StrEnum):
    """A physical condition a status bit can report."""

    METER_COVER_OPEN = "meter_cover_open"
    TERMINAL_COVER_OPEN = "terminal_cover_open"
    POWER_DOWN = "power_down"
    MAGNETIC_INTERFERENCE = "magnetic_interference"
    REVERSE_ENERGY = "reverse_energy"


@dataclass(frozen=True, slots=True)
class SimRegister:
    """One value of a meter's register map: the quantity, where it sits, how it is encoded."""

    name: str
    address: int
    table: Table
    format: ValueFormat
    scale: float = 1.0
    bits: Mapping[int, Condition] = field(default_factory=dict)

    @property
    def end(self) -> int:
        """First address after the value."""
        return self.address + self.format.words


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A meter model's register map and the document it was written from."""

    model: str
    phases: int
    source: str
    registers: tuple[SimRegister, ...]
    reserved: tuple[tuple[int, int], ...] = ()
    """Inclusive address ranges the document marks reserved: a strict unit refuses reads there."""

    def register(self, name: str) -> SimRegister:
        """The register holding quantity `name`; KeyError if the meter has none."""
        for register in self.registers:
            if register.name == name:
                return register
        raise KeyError(name)

    def size(self) -> int:
        """Registers a table needs to hold every value (both tables share the size)."""
        return max(register.end for register in self.registers)


_F32 = ValueFormat(ValueType.F32)
_U16 = ValueFormat(ValueType.U16)
_I16 = ValueFormat(ValueType.I16)
_U32 = ValueFormat(ValueType.U32)


def _f32(table: Table, rows: tuple[tuple[str, int, float], ...]) -> tuple[SimRegister, ...]:
    return tuple(SimRegister(name, address, table, _F32, scale) for name, address, scale in rows)


SDM630 = RegisterMap(
    "sdm630",
    phases=3,
    source="Eastron SDM630 Modbus Protocol, input registers (3X), float32",
    registers=_f32(
        Table.INPUT,
        (
            ("voltage_l1", 0x0000, 1.0),
            ("voltage_l2", 0x0002, 1.0),
            ("voltage_l3", 0x0004, 1.0),
            ("current_l1", 0x0006, 1.0),
            ("current_l2", 0x0008, 1.0),
            ("current_l3", 0x000A, 1.0),
            ("power_l1", 0x000C, 1.0),
            ("power_l2", 0x000E, 1.0),
            ("power_l3", 0x0010, 1.0),
            ("apparent_power_l1", 0x0012, 1.0),
            ("apparent_power_l2", 0x0014, 1.0),
            ("apparent_power_l3", 0x0016, 1.0),
            ("reactive_power_l1", 0x0018, 1.0),
            ("reactive_power_l2", 0x001A, 1.0),
            ("reactive_power_l3", 0x001C, 1.0),
            ("power_factor_l1", 0x001E, 1.0),
            ("power_factor_l2", 0x0020, 1.0),
            ("power_factor_l3", 0x0022, 1.0),
            ("power_total", 0x0034, 1.0),
            ("apparent_power_total", 0x0038, 1.0),
            ("reactive_power_total", 0x003C, 1.0),
            ("power_factor_total", 0x003E, 1.0),
            ("frequency", 0x0046, 1.0),
            ("energy_import", 0x0048, 1.0),
            ("energy_export", 0x004A, 1.0),
            ("voltage_l1_l2", 0x00C8, 1.0),
            ("voltage_l2_l3", 0x00CA, 1.0),
            ("voltage_l3_l1", 0x00CC, 1.0),
            ("energy_total", 0x0156, 1.0),
        ),
    ),
)

DTSU666 = RegisterMap(
    "dtsu666",
    phases=3,
    source="CHINT DTSU666 user manual, Modbus address table, holding registers, float32",
    registers=_f32(
        Table.HOLDING,
        (
            ("energy_import", 0x401E, 1.0),  # ImpEp, kWh
            ("energy_export", 0x4028, 1.0),  # ExpEp, kWh
            ("voltage_l1_l2", 0x2000, 0.1),  # Uab
            ("voltage_l2_l3", 0x2002, 0.1),
            ("voltage_l3_l1", 0x2004, 0.1),
            ("voltage_l1", 0x2006, 0.1),  # Ua
            ("voltage_l2", 0x2008, 0.1),
            ("voltage_l3", 0x200A, 0.1),
            ("current_l1", 0x200C, 0.001),  # Ia
            ("current_l2", 0x200E, 0.001),
            ("current_l3", 0x2010, 0.001),
            ("power_total", 0x2012, 0.1),  # Pt
            ("power_l1", 0x2014, 0.1),
            ("power_l2", 0x2016, 0.1),
            ("power_l3", 0x2018, 0.1),
            ("reactive_power_total", 0x201A, 0.1),  # Qt
            ("reactive_power_l1", 0x201C, 0.1),
            ("reactive_power_l2", 0x201E, 0.1),
            ("reactive_power_l3", 0x2020, 0.1),
            ("power_factor_total", 0x202A, 0.001),  # PFt
            ("power_factor_l1", 0x202C, 0.001),
            ("power_factor_l2", 0x202E, 0.001),
            ("power_factor_l3", 0x2030, 0.001),
            ("frequency", 0x2044, 0.01),  # Freq
        ),
    ),
    reserved=((0x2022, 0x2029), (0x4020, 0x4027)),
)

DDS238_2 = RegisterMap(
    "dds238-2",
    phases=1,
    source="Hiking DDS238-2 ZN/S Modbus holding register table",
    registers=(
        SimRegister("energy_total", 0x0000, Table.HOLDING, _U32, 0.01),
        SimRegister("energy_export", 0x0008, Table.HOLDING, _U32, 0.01),
        SimRegister("energy_import", 0x000A, Table.HOLDING, _U32, 0.01),
        SimRegister("voltage", 0x000C, Table.HOLDING, _U16, 0.1),
        SimRegister("current", 0x000D, Table.HOLDING, _U16, 0.01),
        SimRegister("power", 0x000E, Table.HOLDING, _I16, 1.0),
        SimRegister("reactive_power", 0x000F, Table.HOLDING, _U16, 1.0),
        SimRegister("power_factor", 0x0010, Table.HOLDING, _U16, 0.001),
        SimRegister("frequency", 0x0011, Table.HOLDING, _U16, 0.01),
    ),
)

MAPS: dict[str, RegisterMap] = {m.model: m for m in (SDM630, DTSU666, DDS238_2)}
"""Every published map the simulator carries, by model name."""
