"""Every shipped Modbus profile, checked against the simulator's own copy of the vendor's map.

The simulated meters lay out their registers from firmware_sim/meters/maps.py, written from
the vendors' published documents, never from config/profiles. Here each register a gateway
profile declares is read through pymodbus (a real client against a real pymodbus server) from
the simulated meter of that model, decoded as the profile says, and compared with the
simulator's physical truth for the quantity of that name. The load is unbalanced and export
energy is non-zero, so the quantities differ from one another: a wrong address, table, type,
word order or scale reads a different value and fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pymodbus.client import AsyncModbusTcpClient

from firmware_sim.meters.dlt645 import SimMeter
from firmware_sim.meters.fleet import PROFILE_MODELS
from firmware_sim.meters.maps import MAPS
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter, PhaseBalance
from gateway.meters.profiles import (
    MeterProfile,
    MeterProtocol,
    RegisterFunction,
    RegisterSpec,
    load_profiles,
)
from gateway.protocol.clock import ManualClock
from tests.fixtures.meters import PROFILES

START = datetime(2026, 1, 1, 4, 0, tzinfo=UTC)
UNBALANCED = PhaseBalance(
    volts=(228.4, 230.6, 232.9), shares=(0.5, 0.3, 0.2), power_factors=(0.91, 0.95, 0.98)
)
UNITS = {model: unit for unit, model in enumerate(sorted(MAPS), start=1)}


def shipped_modbus() -> dict[str, MeterProfile]:
    profiles = load_profiles(PROFILES).values()
    return {p.name: p for p in profiles if p.protocol is MeterProtocol.MODBUS}


@pytest.fixture
async def line() -> AsyncIterator[ModbusLine]:
    clock = ManualClock(START)
    meters = []
    for model, unit in UNITS.items():
        meter = SimMeter(
            f"9000000000{unit:02d}", clock, load=lambda _: 1.3, phases=MAPS[model].phases
        )
        meter.reverse_kwh[0] = 12.34  # export differs from zero, total from import
        meters.append(ModbusSimMeter(unit, MAPS[model], meter, balance=UNBALANCED))
    server = ModbusLine(meters)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def mismatches(line: ModbusLine, profile: MeterProfile) -> list[str]:
    """Each declared register whose value read through pymodbus differs from the truth."""
    sim = line.meters[UNITS[PROFILE_MODELS[profile.name]]]
    truth = sim.truth()
    client = AsyncModbusTcpClient("127.0.0.1", port=line.port, timeout=2, retries=0)
    await client.connect()
    try:
        return [
            problem
            for spec in profile.registers
            if (problem := await _check(client, sim.unit, spec, truth)) is not None
        ]
    finally:
        client.close()


async def _check(
    client: AsyncModbusTcpClient, unit: int, spec: RegisterSpec, truth: dict[str, float]
) -> str | None:
    where = f"{spec.name} ({spec.function.label} 0x{spec.address:04X})"
    if spec.name not in truth:
        return f"{where}: the vendor's map has no such quantity"
    read = (
        client.read_holding_registers
        if spec.function is RegisterFunction.HOLDING
        else client.read_input_registers
    )
    reply = await read(spec.address, count=spec.words, device_id=unit)
    if reply.isError():
        return f"{where}: the meter answers {reply}"
    value = float(spec.decode(reply.registers))
    expected = truth[spec.name]
    if not _close(value, expected, spec):
        return f"{where}: read {value}, the meter holds {expected}"
    return None


def _close(value: float, expected: float, spec: RegisterSpec) -> bool:
    if spec.format.type.is_integer:  # one count of the scaled integer, at most half of it off
        return abs(value - expected) <= abs(spec.scale) / 2 + 1e-9
    return value == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_every_shipped_modbus_profile_has_a_simulated_counterpart() -> None:
    assert set(shipped_modbus()) == set(PROFILE_MODELS)
    assert set(PROFILE_MODELS.values()) <= set(MAPS)


@pytest.mark.parametrize("name", sorted(PROFILE_MODELS))
async def test_profile_reads_what_the_vendor_map_holds(line: ModbusLine, name: str) -> None:
    profile = shipped_modbus()[name]
    sim = line.meters[UNITS[PROFILE_MODELS[name]]]
    declared = [sim.truth()[spec.name] for spec in profile.registers if spec.name in sim.truth()]
    assert all(
        x != pytest.approx(y, rel=1e-3) for i, x in enumerate(declared) for y in declared[:i] if x
    ), "the simulated meter must hold distinct non-zero values, or a swapped address goes unseen"
    assert await mismatches(line, profile) == []


@pytest.mark.parametrize(
    ("name", "register", "change"),
    [
        ("dds-single-phase", "energy_import", {"address": 0x0000}),  # the old profile's bug
        ("sdm630", "voltage_l2", {"address": 0x0000}),
        ("sdm630", "power_total", {"function": RegisterFunction.HOLDING}),
        ("dtsu666", "energy_import", {"address": 0x101E}),
        ("dtsu666", "current_l1", {"scale": 0.01}),
    ],
)
async def test_a_wrong_register_in_a_profile_fails(
    line: ModbusLine, name: str, register: str, change: dict[str, object]
) -> None:
    profile = shipped_modbus()[name]
    wrong = tuple(
        dataclasses.replace(spec, **change) if spec.name == register else spec
        for spec in profile.registers
    )
    problems = await mismatches(line, dataclasses.replace(profile, registers=wrong))
    assert [problem.split(" ")[0] for problem in problems] == [register]
