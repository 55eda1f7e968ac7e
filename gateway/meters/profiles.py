"""Declarative meter profiles from config/profiles/*.toml, loaded and validated once.

A profile tells the meter service what to read and what each value means: Modbus register maps
(address, function, type, orders, scale, unit, kind, status bits) or the DL/T 645 data
identifiers to ask for. Every mistake is a ProfileError naming the file and the key, so a bad
profile stops the gateway at start-up instead of producing wrong readings. See docs/meters.md.
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ProfileError
from gateway.protocol.modbus_values import (
    ByteOrder,
    Number,
    RegisterFunction,
    ValueFormat,
    ValueType,
    WordOrder,
    scale_value,
)

__all__ = [
    "MAX_READ_REGISTERS",
    "MeterProfile",
    "MeterProtocol",
    "ReadLimits",
    "RegisterSpec",
    "StatusBit",
    "StatusEvent",
    "ValueKind",
    "load_profile",
    "load_profiles",
    "parse_profile",
]

_log = logging.getLogger(__name__)
_E = TypeVar("_E", bound=StrEnum)

MAX_READ_REGISTERS = 125
"""Modbus Application Protocol 6.3/6.4: at most 125 registers per read."""

DEFAULT_MAX_GAP = 16
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class MeterProtocol(StrEnum):
    """The wire protocol a meter speaks."""

    MODBUS = "modbus"
    DLT645 = "dlt645"


class ValueKind(StrEnum):
    """What a value is, so the meter service knows what to do with it."""

    ENERGY = "energy"
    VOLTAGE = "voltage"
    CURRENT = "current"
    POWER = "power"
    POWER_FACTOR = "power_factor"
    FREQUENCY = "frequency"
    STATUS = "status"


class StatusEvent(StrEnum):
    """Events a status bit can raise; published as meter.event data."""

    METER_COVER_OPEN = "meter_cover_open"
    TERMINAL_COVER_OPEN = "terminal_cover_open"
    POWER_DOWN = "power_down"
    MAGNETIC_INTERFERENCE = "magnetic_interference"
    REVERSE_ENERGY = "reverse_energy"


@dataclass(frozen=True, slots=True)
class StatusBit:
    """One bit of a status register and the event it signals when set."""

    bit: int
    event: StatusEvent


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One value in a Modbus register map."""

    name: str
    address: int
    function: RegisterFunction
    format: ValueFormat
    kind: ValueKind
    scale: float = 1.0
    unit: str = ""
    bits: tuple[StatusBit, ...] = ()

    @property
    def words(self) -> int:
        """Number of registers the value occupies."""
        return self.format.words

    @property
    def end(self) -> int:
        """First address after the value."""
        return self.address + self.format.words

    def decode(self, words: Sequence[int]) -> Number:
        """The scaled value held in `words`."""
        return scale_value(self.format.decode(words), self.scale, self.format)

    def events(self, raw: int) -> frozenset[StatusEvent]:
        """The events whose bits are set in a raw status value."""
        return frozenset(item.event for item in self.bits if raw >> item.bit & 1)


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How reads may be coalesced for this meter."""

    max_registers: int = MAX_READ_REGISTERS
    max_gap: int = DEFAULT_MAX_GAP
    readable_holes: tuple[tuple[int, int], ...] = ()
    """Inclusive address ranges between registers that the meter answers; no others are read."""


@dataclass(frozen=True, slots=True)
class MeterProfile:
    """A validated meter profile."""

    name: str
    protocol: MeterProtocol
    source: str
    description: str = ""
    registers: tuple[RegisterSpec, ...] = ()
    identifiers: tuple[str, ...] = ()
    read: ReadLimits = ReadLimits()

    def register(self, name: str) -> RegisterSpec:
        """The register called `name`; KeyError if there is none."""
        for spec in self.registers:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def status_registers(self) -> tuple[RegisterSpec, ...]:
        """The status registers, in profile order."""
        return tuple(spec for spec in self.registers if spec.kind is ValueKind.STATUS)


def load_profile(path: Path | str) -> MeterProfile:
    """Read and validate one profile file."""
    file = Path(path)
    source = f"{file.parent.name}/{file.name}" if file.parent.name else file.name
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(source, "", f"cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(source, "", f"invalid TOML: {exc}") from exc
    return parse_profile(data, source)


def load_profiles(directory: Path | str) -> dict[str, MeterProfile]:
    """Load every *.toml profile in `directory`, keyed by profile name."""
    profiles: dict[str, MeterProfile] = {}
    for file in sorted(Path(directory).glob("*.toml")):
        profile = load_profile(file)
        if profile.name in profiles:
            other = profiles[profile.name].source
            raise ProfileError(profile.source, "name", f"{profile.name!r} is also in {other}")
        profiles[profile.name] = profile
    _log.debug("loaded %d meter profiles from %s", len(profiles), directory)
    return profiles


def parse_profile(data: Mapping[str, Any], source: str) -> MeterProfile:
    """Validate a parsed TOML document as a profile; `source` names it in errors."""
    ctx = _Context(source)
    ctx.no_unknown_keys(data, "", _PROFILE_KEYS)
    name = ctx.string(data, "name", pattern=_PROFILE_NAME)
    protocol = ctx.choice(data, "protocol", MeterProtocol)
    description = ctx.string(data, "description", default="")
    if protocol is MeterProtocol.DLT645:
        ctx.forbid(data, ("registers", "defaults", "read"), "a dlt645 profile")
        identifiers = _parse_identifiers(ctx, data)
        return MeterProfile(name, protocol, source, description, identifiers=identifiers)
    ctx.forbid(data, ("identifiers",), "a modbus profile")
    read = _parse_read(ctx, ctx.table(data, "read"))
    registers = _parse_registers(ctx, data)
    _check_fits(ctx, registers, read)
    return MeterProfile(name, protocol, source, description, registers=registers, read=read)


_PROFILE_KEYS = frozenset(
    {"name", "protocol", "description", "registers", "defaults", "read", "identifiers"}
)
_DEFAULT_KEYS = frozenset({"function", "type", "word_order", "byte_order"})
_READ_KEYS = frozenset({"max_registers", "max_gap", "readable_holes"})
_REGISTER_KEYS = frozenset(
    {"name", "address", "function", "type", "word_order", "byte_order", "scale", "unit", "kind"}
    | {"bits", "description"}
)


class _Context:
    """Typed field access that raises ProfileError with the file and dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, reason: str) -> ProfileError:
        return ProfileError(self.source, key, reason)

    def no_unknown_keys(self, table: Mapping[str, Any], prefix: str, known: frozenset[str]) -> None:
        for key in table:
            if key not in known:
                raise self.error(_join(prefix, key), f"unknown key (expected {_listing(known)})")

    def forbid(self, table: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
        for key in keys:
            if key in table:
                raise self.error(key, f"not allowed in {what}")

    def string(
        self,
        table: Mapping[str, Any],
        key: str,
        *,
        prefix: str = "",
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
    ) -> str:
        value = table.get(key, default)
        where = _join(prefix, key)
        if value is None:
            raise self.error(where, "missing")
        if not isinstance(value, str):
            raise self.error(where, f"expected a string, got {_kind(value)}")
        if pattern is not None and not pattern.match(value):
            raise self.error(where, f"{value!r} does not match {pattern.pattern}")
        return value

    def integer(
        self, table: Mapping[str, Any], key: str, low: int, high: int, *, prefix: str = ""
    ) -> int:
        value = table.get(key)
        where = _join(prefix, key)
        if value is None:
            raise self.error(where, "missing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"expected an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise self.error(where, f"{value} is outside {low}..{high}")
        return value

    def choice(self, table: Mapping[str, Any], key: str, enum: type[_E], *, prefix: str = "") -> _E:
        value = self.string(table, key, prefix=prefix)
        try:
            return enum(value)
        except ValueError:
            options = ",".join(member.value for member in enum)
            raise self.error(_join(prefix, key), f"expected one of {options}") from None

    def table(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a table, got {_kind(value)}")
        return value


def _parse_identifiers(ctx: _Context, data: Mapping[str, Any]) -> tuple[str, ...]:
    items = data.get("identifiers")
    if not isinstance(items, list) or not items:
        raise ctx.error("identifiers", "expected a non-empty list of identifier names")
    seen: set[str] = set()
    for index, item in enumerate(items):
        key = f"identifiers[{index}]"
        if not isinstance(item, str) or not _NAME.match(item):
            raise ctx.error(key, f"expected a lower_snake_case name, got {item!r}")
        if item in seen:
            raise ctx.error(key, f"duplicate identifier {item!r}")
        seen.add(item)
    return tuple(items)


def _parse_read(ctx: _Context, table: Mapping[str, Any]) -> ReadLimits:
    ctx.no_unknown_keys(table, "read", _READ_KEYS)
    max_registers = MAX_READ_REGISTERS
    max_gap = DEFAULT_MAX_GAP
    if "max_registers" in table:
        max_registers = ctx.integer(table, "max_registers", 4, MAX_READ_REGISTERS, prefix="read")
    if "max_gap" in table:
        max_gap = ctx.integer(table, "max_gap", 0, MAX_READ_REGISTERS, prefix="read")
    holes = _parse_holes(ctx, table.get("readable_holes", []))
    return ReadLimits(max_registers=max_registers, max_gap=max_gap, readable_holes=holes)


def _parse_holes(ctx: _Context, items: Any) -> tuple[tuple[int, int], ...]:
    """`readable_holes = [[start, end], ...]`: inclusive ranges of 0..0xFFFF, start <= end."""
    if not isinstance(items, list):
        raise ctx.error("read.readable_holes", "expected an array of [start, end] pairs")
    holes: list[tuple[int, int]] = []
    for index, item in enumerate(items):
        key = f"read.readable_holes[{index}]"
        ok = isinstance(item, list) and len(item) == 2
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        if not ok or not 0 <= item[0] <= item[1] <= 0xFFFF:
            raise ctx.error(
                key, f"expected [start, end] with 0 <= start <= end <= 65535, got {item!r}"
            )
        holes.append((item[0], item[1]))
    return tuple(holes)


def _parse_registers(ctx: _Context, data: Mapping[str, Any]) -> tuple[RegisterSpec, ...]:
    defaults = ctx.table(data, "defaults")
    ctx.no_unknown_keys(defaults, "defaults", _DEFAULT_KEYS)
    items = data.get("registers")
    if not isinstance(items, list) or not items:
        raise ctx.error("registers", "expected a non-empty array of tables ([[registers]])")
    specs: list[RegisterSpec] = []
    for index, item in enumerate(items):
        prefix = f"registers[{index}]"
        if not isinstance(item, Mapping):
            raise ctx.error(prefix, f"expected a table, got {_kind(item)}")
        specs.append(_parse_register(ctx, {**defaults, **item}, prefix))
    _check_unique(ctx, specs)
    _check_overlaps(ctx, specs)
    return tuple(specs)


def _parse_register(ctx: _Context, table: Mapping[str, Any], prefix: str) -> RegisterSpec:
    ctx.no_unknown_keys(table, prefix, _REGISTER_KEYS)
    name = ctx.string(table, "name", prefix=prefix, pattern=_NAME)
    vtype = ctx.choice(table, "type", ValueType, prefix=prefix)
    address = ctx.integer(table, "address", 0, 0x10000 - vtype.words, prefix=prefix)
    function = _parse_function(ctx, table, prefix)
    word_order = ctx.choice({"word_order": "big", **table}, "word_order", WordOrder, prefix=prefix)
    byte_order = ctx.choice({"byte_order": "big", **table}, "byte_order", ByteOrder, prefix=prefix)
    kind = ctx.choice(table, "kind", ValueKind, prefix=prefix)
    scale = _parse_scale(ctx, table, prefix)
    unit = ctx.string(table, "unit", prefix=prefix, default="")
    ctx.string(table, "description", prefix=prefix, default="")
    fmt = ValueFormat(vtype, word_order, byte_order)
    bits = _parse_bits(ctx, table, prefix, kind, vtype)
    return RegisterSpec(name, address, function, fmt, kind, scale, unit, bits)


def _parse_function(ctx: _Context, table: Mapping[str, Any], prefix: str) -> RegisterFunction:
    label = ctx.string(table, "function", prefix=prefix)
    for function in RegisterFunction:
        if function.label == label:
            return function
    raise ctx.error(_join(prefix, "function"), "expected one of holding,input")


def _parse_scale(ctx: _Context, table: Mapping[str, Any], prefix: str) -> float:
    value = table.get("scale", 1.0)
    where = _join(prefix, "scale")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(where, f"expected a number, got {_kind(value)}")
    if value == 0 or not math.isfinite(value):
        raise ctx.error(where, f"{value} is not a usable scale")
    return float(value)


def _parse_bits(
    ctx: _Context, table: Mapping[str, Any], prefix: str, kind: ValueKind, vtype: ValueType
) -> tuple[StatusBit, ...]:
    where = _join(prefix, "bits")
    raw = table.get("bits")
    if kind is not ValueKind.STATUS:
        if raw is not None:
            raise ctx.error(where, "only status registers have bits")
        return ()
    if vtype not in (ValueType.U16, ValueType.U32):
        raise ctx.error(_join(prefix, "type"), "a status register must be u16 or u32")
    if table.get("scale", 1) != 1:
        raise ctx.error(_join(prefix, "scale"), "a status register is not scaled")
    if not isinstance(raw, Mapping) or not raw:
        raise ctx.error(where, "a status register needs a table of bit = event")
    return tuple(_parse_bit(ctx, where, key, value, vtype.words * 16) for key, value in raw.items())


def _parse_bit(ctx: _Context, where: str, key: str, value: Any, width: int) -> StatusBit:
    if not key.isdigit() or int(key) >= width:
        raise ctx.error(f"{where}.{key}", f"expected a bit number 0..{width - 1}")
    try:
        return StatusBit(int(key), StatusEvent(value))
    except ValueError:
        options = ",".join(event.value for event in StatusEvent)
        raise ctx.error(f"{where}.{key}", f"expected one of {options}") from None


def _check_unique(ctx: _Context, specs: Sequence[RegisterSpec]) -> None:
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if spec.name in seen:
            raise ctx.error(f"registers[{index}].name", f"duplicate register {spec.name!r}")
        seen.add(spec.name)


def _check_overlaps(ctx: _Context, specs: Sequence[RegisterSpec]) -> None:
    for index, spec in enumerate(specs):
        for other in specs[:index]:
            if other.function is spec.function and _overlap(spec, other):
                raise ctx.error(
                    f"registers[{index}].address",
                    f"{spec.name} ({_span(spec)}) overlaps {other.name} ({_span(other)})",
                )


def _check_fits(ctx: _Context, specs: Sequence[RegisterSpec], read: ReadLimits) -> None:
    for index, spec in enumerate(specs):
        if spec.words > read.max_registers:
            raise ctx.error(
                f"registers[{index}].type", f"wider than read.max_registers={read.max_registers}"
            )


def _overlap(a: RegisterSpec, b: RegisterSpec) -> bool:
    return a.address < b.end and b.address < a.end


def _span(spec: RegisterSpec) -> str:
    return f"{spec.function.label} 0x{spec.address:04X}..0x{spec.end - 1:04X}"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _listing(keys: frozenset[str]) -> str:
    return ",".join(sorted(keys))


def _kind(value: Any) -> str:
    return type(value).__name__
