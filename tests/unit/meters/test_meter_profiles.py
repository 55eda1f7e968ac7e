"""Meter profiles: the shipped files load, and every mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError, ProfileError
from gateway.meters.profiles import (
    MeterProtocol,
    StatusEvent,
    ValueKind,
    load_profile,
    load_profiles,
)
from gateway.protocol.modbus_values import ByteOrder, RegisterFunction, ValueType, WordOrder

PROFILES = Path(__file__).resolve().parents[3] / "config" / "profiles"

GOOD = """
name = "test-meter"
protocol = "modbus"

[defaults]
function = "holding"

[[registers]]
name = "energy"
address = 0
type = "u32"
word_order = "little"
scale = 0.01
kind = "energy"
unit = "kWh"

[[registers]]
name = "status"
address = 2
type = "u16"
kind = "status"
bits = { 0 = "meter_cover_open", 15 = "magnetic_interference" }
"""


def write(tmp_path: Path, text: str, name: str = "meter.toml") -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> ProfileError:
    with pytest.raises(ProfileError) as caught:
        load_profile(write(tmp_path, text))
    return caught.value


def test_shipped_profiles_load() -> None:
    profiles = load_profiles(PROFILES)
    assert {"sdm630", "dds-single-phase", "dlt645-residential"} <= set(profiles)
    sdm = profiles["sdm630"]
    assert sdm.protocol is MeterProtocol.MODBUS
    voltage = sdm.register("voltage_l1")
    assert (voltage.address, voltage.function, voltage.format.type) == (
        0,
        RegisterFunction.INPUT,
        ValueType.F32,
    )
    assert (sdm.register("power_total").address, sdm.register("energy_total").address) == (
        0x34,
        0x156,
    )
    assert {spec.kind for spec in sdm.registers} >= {ValueKind.VOLTAGE, ValueKind.ENERGY}
    dds = profiles["dds-single-phase"]
    assert dds.register("energy_total").address == 0x0000  # DDS238-2: 0x0000 is total energy
    assert (dds.register("energy_export").address, dds.register("energy_import").address) == (
        0x0008,
        0x000A,
    )
    assert dds.status_registers == ()  # the DDS238-2 has no status word
    dlt = profiles["dlt645-residential"]
    assert dlt.protocol is MeterProtocol.DLT645
    assert "meter_cover_open_count" in dlt.identifiers and len(dlt.identifiers) == 10
    assert dlt.registers == ()


def test_good_profile_and_defaults(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, GOOD))
    energy = profile.register("energy")
    assert energy.function is RegisterFunction.HOLDING
    assert (energy.format.word_order, energy.format.byte_order) == (WordOrder.LITTLE, ByteOrder.BIG)
    assert energy.decode([0x5678, 0x0012]) == pytest.approx(0x125678 * 0.01)
    status = profile.register("status")
    assert status.events(0x8001) == {
        StatusEvent.METER_COVER_OPEN,
        StatusEvent.MAGNETIC_INTERFERENCE,
    }
    assert status.events(0) == frozenset()
    assert profile.source == "profiles/meter.toml"
    with pytest.raises(KeyError):
        profile.register("nope")


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        (
            'type = "u32"',
            'type = "u24"',
            "registers[0].type",
            "expected one of u16,i16,u32,i32,f32,u64",
        ),
        (
            'function = "holding"',
            'function = "coil"',
            "registers[0].function",
            "expected one of holding,input",
        ),
        ('kind = "energy"', 'kind = "heat"', "registers[0].kind", "expected one of energy,"),
        (
            'word_order = "little"',
            'word_order = "middle"',
            "registers[0].word_order",
            "expected one of big,little",
        ),
        ("scale = 0.01", "scale = 0", "registers[0].scale", "not a usable scale"),
        ("scale = 0.01", 'scale = "x"', "registers[0].scale", "expected a number"),
        ("address = 0", "address = 65535", "registers[0].address", "outside 0..65534"),
        ("address = 0", "address = -1", "registers[0].address", "outside"),
        ("address = 2", "address = 1", "registers[1].address", "overlaps energy"),
        ('name = "status"', 'name = "energy"', "registers[1].name", "duplicate register"),
        ('name = "status"', 'name = "Status"', "registers[1].name", "does not match"),
        ('unit = "kWh"', 'units = "kWh"', "registers[0].units", "unknown key"),
        (
            'protocol = "modbus"',
            'protocol = "iec62056"',
            "protocol",
            "expected one of modbus,dlt645",
        ),
        ("15 = ", "16 = ", "registers[1].bits.16", "bit number 0..15"),
        (
            '"magnetic_interference"',
            '"door_open"',
            "registers[1].bits.15",
            "expected one of meter_cover_open",
        ),
        ('type = "u16"', 'type = "f32"', "registers[1].type", "must be u16 or u32"),
        (
            'kind = "energy"',
            'kind = "energy"\nbits = { 0 = "power_down" }',
            "registers[0].bits",
            "only status",
        ),
    ],
)
def test_mistakes_name_file_and_key(
    tmp_path: Path, old: str, new: str, key: str, reason: str
) -> None:
    assert old in GOOD
    error = error_for(tmp_path, GOOD.replace(old, new, 1))
    assert isinstance(error, ConfigError)
    assert error.key == key
    assert reason in error.reason
    assert str(error).startswith(f"profiles/meter.toml: {key}: ")


def test_type_error_message_matches_the_documented_form(tmp_path: Path) -> None:
    error = error_for(tmp_path, GOOD.replace('type = "u32"', 'type = "float"'))
    assert (
        str(error)
        == "profiles/meter.toml: registers[0].type: expected one of u16,i16,u32,i32,f32,u64"
    )


def test_overlap_in_another_function_is_allowed(tmp_path: Path) -> None:
    text = GOOD.replace(
        'address = 2\ntype = "u16"', 'address = 1\nfunction = "input"\ntype = "u16"'
    )
    profile = load_profile(write(tmp_path, text))
    assert profile.register("status").function is RegisterFunction.INPUT


def test_missing_and_empty(tmp_path: Path) -> None:
    assert error_for(tmp_path, 'protocol = "modbus"').key == "name"
    assert error_for(tmp_path, 'name = "x"\nprotocol = "modbus"').key == "registers"
    assert (
        error_for(tmp_path, GOOD.replace('unit = "kWh"\n', 'unit = "kWh"\n[[registers]]\n')).key
        == "registers[1].name"
    )


def test_read_limits(tmp_path: Path) -> None:
    text = GOOD.replace("[defaults]", "[read]\nmax_registers = 40\nmax_gap = 0\n\n[defaults]")
    profile = load_profile(write(tmp_path, text))
    assert (profile.read.max_registers, profile.read.max_gap) == (40, 0)
    bad = GOOD.replace("[defaults]", "[read]\nmax_registers = 126\n\n[defaults]")
    assert error_for(tmp_path, bad).key == "read.max_registers"


def test_dlt645_profile_rules(tmp_path: Path) -> None:
    good = 'name = "d"\nprotocol = "dlt645"\nidentifiers = ["voltage_a", "current_a"]\n'
    assert load_profile(write(tmp_path, good)).identifiers == ("voltage_a", "current_a")
    assert error_for(tmp_path, good.replace('"current_a"', '"voltage_a"')).key == "identifiers[1]"
    assert error_for(tmp_path, good.replace('"current_a"', "7")).key == "identifiers[1]"
    assert error_for(tmp_path, good + "[[registers]]\nname = 'x'\n").key == "registers"
    assert error_for(tmp_path, 'name = "d"\nprotocol = "dlt645"\n').key == "identifiers"


def test_invalid_toml_and_duplicate_names(tmp_path: Path) -> None:
    error = error_for(tmp_path, "name = ")
    assert error.key == "" and "invalid TOML" in str(error)
    folder = write(tmp_path, GOOD, "a.toml").parent
    write(tmp_path, GOOD, "b.toml")
    (folder / "meter.toml").unlink(missing_ok=True)
    with pytest.raises(ProfileError) as caught:
        load_profiles(folder)
    assert caught.value.key == "name"
    assert caught.value.source == "profiles/b.toml"
