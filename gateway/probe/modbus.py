"""`sealgw probe modbus`: what one poll cycle of a meter profile costs, and how fast it reads.

Without a transport the probe only describes: the profile's values, the plan it chose (its
requests and registers, through the profile's declared holes at its `max_gap`) and the
minimum a perfect RTU poller would need (gateway.meters.plan.min_rtu_bytes). With
`--transport` it also reads the meter through the gateway's own `ModbusBus` and `read_plan`:
`warmup` cycles first (the connect happens there, outside the timing), then `cycles` cycles
back to back, every one checked to bring every value: `values_per_s`.

The plan is the profile's own (`configured`), the profile's with another `max_gap`, one that
reads through any gap up to `max_gap` (`every-gap`, what plans did before holes were declared;
a strict meter refuses the reserved registers) or one request per value (`per-value`, the
naive baseline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.drivers.bus import RegisterBus
from gateway.drivers.modbus.bus import open_bus
from gateway.errors import ConfigError, ProbeError
from gateway.meters.plan import (
    EVERY_GAP,
    ReadPlan,
    min_rtu_bytes,
    plan_per_value,
    plan_reads,
    read_plan,
)
from gateway.meters.profiles import MeterProfile, load_profiles
from gateway.protocol.canonical import JSONValue

__all__ = ["PLAN_KINDS", "ModbusProbe", "probe_modbus"]

PlanKind = Literal["configured", "every-gap", "per-value"]
PLAN_KINDS: tuple[PlanKind, ...] = ("configured", "every-gap", "per-value")
BUS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ModbusProbe:
    """Which profile, which plan, and (optionally) which meter to read how often."""

    profiles_dir: Path
    profile: str
    plan: PlanKind = "configured"
    max_gap: int | None = None  # None: the profile's own
    transport: str | None = None
    unit: int = 1
    warmup: int = 1
    cycles: int = 1000


async def probe_modbus(probe: ModbusProbe) -> dict[str, JSONValue]:
    """Describe the profile and its plan; read the meter too when a transport is given."""
    profile = _profile(probe)
    plan = _plan(profile, probe)
    min_requests, min_bytes = min_rtu_bytes(profile.registers)
    result: dict[str, JSONValue] = {
        "profile": profile.name,
        "values": len(profile.registers),
        "configured_max_gap": profile.read.max_gap,
        "readable_holes": [[lo, hi] for lo, hi in profile.read.readable_holes],
        "min_requests_per_cycle": min_requests,
        "min_bus_bytes_per_cycle": min_bytes,
        "plan": probe.plan,
        "max_gap": _max_gap(profile, probe),
        "requests_per_cycle": len(plan.requests),
        "registers_per_cycle": plan.register_count,
    }
    if probe.transport is not None:
        result.update(await _read(probe, probe.transport, plan))
    return result


def _profile(probe: ModbusProbe) -> MeterProfile:
    profiles = load_profiles(probe.profiles_dir)
    if probe.profile not in profiles:
        names = ", ".join(sorted(profiles))
        raise ConfigError(
            "profile", f"no profile {probe.profile!r} in {probe.profiles_dir}: {names}"
        )
    return profiles[probe.profile]


def _max_gap(profile: MeterProfile, probe: ModbusProbe) -> int:
    return profile.read.max_gap if probe.max_gap is None else probe.max_gap


def _plan(profile: MeterProfile, probe: ModbusProbe) -> ReadPlan:
    if probe.plan == "per-value":
        return plan_per_value(profile)
    readable = EVERY_GAP if probe.plan == "every-gap" else profile.read.readable_holes
    return plan_reads(
        profile.registers,
        max_gap=_max_gap(profile, probe),
        max_registers=profile.read.max_registers,
        readable=readable,
    )


async def _read(probe: ModbusProbe, transport: str, plan: ReadPlan) -> dict[str, JSONValue]:
    """Warm-up cycles, then timed cycles; every cycle must bring every value of the plan."""
    values = sum(len(request.slices) for request in plan.requests)
    bus = open_bus(transport, timeout=BUS_TIMEOUT_S)
    try:
        for _ in range(probe.warmup):
            await _cycle(bus, probe.unit, plan, values)
        start = time.perf_counter()
        for _ in range(probe.cycles):
            await _cycle(bus, probe.unit, plan, values)
        elapsed = time.perf_counter() - start
    finally:
        await bus.close()
    rate = probe.cycles * values / elapsed if probe.cycles and elapsed > 0 else 0.0
    return {
        "transport": transport,
        "unit": probe.unit,
        "warmup_cycles": probe.warmup,
        "cycles": probe.cycles,
        "read_s": round(elapsed, 4),
        "values_per_s": round(rate),
    }


async def _cycle(bus: RegisterBus, unit: int, plan: ReadPlan, values: int) -> None:
    got = await read_plan(bus, unit, plan)
    if len(got) != values:
        raise ProbeError(f"a cycle brought {len(got)} of {values} values")
