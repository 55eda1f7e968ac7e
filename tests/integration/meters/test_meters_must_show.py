"""What the meter issue must show, through real transports only.

Every test talks to the simulators through the gateway's own stack: Modbus TCP (a pymodbus
server on a free port), Modbus RTU on a socat pty pair (a pymodbus RTU server on the far end),
and DL/T 645 on a socat pty pair (the DL/T 645 serial simulator). It shows:

- every shipped profile read end to end, each value as the simulated meter holds it;
- coalescing, counted in requests the server decoded;
- a silent (timeout) or garbled meter on a shared bus does not stall the other meters: they
  complete a good poll in every period, on the injected clock;
- a cover opening raises meter.event, and theft.suspected when the mapped seal is sealed; an
  authorized unseal suppresses the alarm, not the meter event.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench import modbus as bench_modbus
from firmware_sim.meters.dlt645 import MeterBus, SimMeter
from firmware_sim.meters.fleet import PROFILE_MODELS, Dlt645SerialServer, PtyPair
from firmware_sim.meters.maps import DDS238_2, MAPS, Condition, RegisterMap, SimRegister, Table
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from gateway.drivers.dlt645.bus import SILENT_ABORT
from gateway.drivers.modbus.bus import open_bus
from gateway.meters.config import TheftSection
from gateway.meters.plan import min_rtu_bytes, plan_per_value, plan_profile, read_plan
from gateway.meters.profiles import (
    MeterProfile,
    MeterProtocol,
    RegisterSpec,
    ValueKind,
    load_profiles,
)
from gateway.meters.service import MeterService
from gateway.protocol.clock import ManualClock
from gateway.protocol.events import EventDraft, Priority
from gateway.protocol.modbus_values import RegisterFunction, ValueFormat, ValueType
from tests.fixtures.meters import PROFILES, FakeSeals, Recorder, meters_section

START = datetime(2026, 1, 1, 4, 0, tzinfo=UTC)  # any time: the load is flat
LOAD_KW = 0.6
POLL_S = 10.0
CYCLES = 3
TIMEOUT_S = 0.2
TRANSPORTS = ("modbus-tcp", "rtu-pty", "rtu-over-tcp", "dlt645-pty")
MODBUS_TRANSPORTS = TRANSPORTS[:3]
PTY_KINDS = ("rtu-pty", "dlt645-pty")

# What the simulator's physics give at 0.6 kW and 230 V, PF 0.95, 50 Hz, 1000 kWh on the register.
SDM630_VALUES: dict[str, float] = {
    **{f"voltage_l{n}": 230.0 for n in (1, 2, 3)},
    **{f"current_l{n}": 600 / 230 / 0.95 / 3 for n in (1, 2, 3)},
    **{f"power_l{n}": 200.0 for n in (1, 2, 3)},
    **{f"power_factor_l{n}": 0.95 for n in (1, 2, 3)},
    "power_total": 600.0,
    "power_factor_total": 0.95,
    "frequency": 50.0,
    "energy_import": 1000.0,
    "energy_export": 0.0,
    "energy_total": 1000.0,
}
VAR_PER_W = math.tan(math.acos(0.95))
DTSU666_VALUES: dict[str, float] = {
    **{f"voltage_{pair}": 230 * math.sqrt(3) for pair in ("l1_l2", "l2_l3", "l3_l1")},
    **{f"voltage_l{n}": 230.0 for n in (1, 2, 3)},
    **{f"current_l{n}": 600 / 230 / 0.95 / 3 for n in (1, 2, 3)},
    "power_total": 600.0,
    **{f"power_l{n}": 200.0 for n in (1, 2, 3)},
    "reactive_power_total": 600 * VAR_PER_W,
    **{f"reactive_power_l{n}": 200 * VAR_PER_W for n in (1, 2, 3)},
    **{f"power_factor_{n}": 0.95 for n in ("total", "l1", "l2", "l3")},
    "frequency": 50.0,
    "energy_import": 1000.0,
    "energy_export": 0.0,
}
DDS_VALUES: dict[str, float] = {
    "energy_total": 1000.0,
    "energy_import": 1000.0,
    "energy_export": 0.0,
    "voltage": 230.0,
    "current": 2.75,  # 2.7459 A in units of 0.01 A
    "power": 600,
    "power_factor": 0.95,
    "frequency": 50.0,
}
DLT645_VALUES: dict[str, float] = {
    "forward_active_energy_total": 1000.0,
    "reverse_active_energy_total": 0.0,
    "voltage_a": 230.0,
    "current_a": 2.746,
    "active_power_total": 0.6,
    "status_word_1": 0,
    "status_word_7": 0,
    "meter_cover_open_count": 0,
    "terminal_cover_open_count": 0,
    "power_down_count": 0,
}


def flat_load(_when: datetime) -> float:
    return LOAD_KW


# No published map of the shipped Modbus meters has a status word, so the status-bit path is
# shown with a meter of this test's own: DDS238-2 registers plus a u16 event word at 0x0020.
STATUS_PROFILE = "test-status-meter"
STATUS_MAP = RegisterMap(
    STATUS_PROFILE,
    phases=1,
    source="this test",
    registers=(
        *DDS238_2.registers,
        SimRegister(
            "status",
            0x0020,
            Table.HOLDING,
            ValueFormat(ValueType.U16),
            bits={0: Condition.METER_COVER_OPEN, 2: Condition.POWER_DOWN},
        ),
    ),
)
STATUS_TOML = f"""
name = "{STATUS_PROFILE}"
protocol = "modbus"
[defaults]
function = "holding"
[[registers]]
name = "voltage"
address = 0x000C
type = "u16"
scale = 0.1
kind = "voltage"
[[registers]]
name = "status"
address = 0x0020
type = "u16"
kind = "status"
bits = {{ 0 = "meter_cover_open", 2 = "power_down" }}
"""


def _profiles_with_status_meter(directory: Path) -> Path:
    """The shipped profiles plus the status meter's, in a directory of their own."""
    directory.mkdir(parents=True, exist_ok=True)
    for shipped in PROFILES.glob("*.toml"):
        (directory / shipped.name).write_text(shipped.read_text(encoding="utf-8"), "utf-8")
    (directory / f"{STATUS_PROFILE}.toml").write_text(STATUS_TOML, encoding="utf-8")
    return directory


@dataclass
class Line:
    """One simulated bus with four meters: two healthy, one to silence, one to garble."""

    kind: str
    transport: str
    sims: dict[str, SimMeter]
    entries: dict[str, dict[str, Any]]
    modbus: ModbusLine | None = None
    profiles: dict[str, MeterProfile] = field(default_factory=dict)
    profiles_dir: Path = PROFILES

    @property
    def healthy(self) -> tuple[str, str]:
        """The two meters no test breaks."""
        return ("SDM", "DDS") if self.modbus is not None else ("A645", "B645")

    @property
    def cover_meter(self) -> str:
        """A meter that reports covers: a status word (STATUS_MAP), or DL/T 645 status word 7."""
        return "STATUS" if self.modbus is not None else "A645"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(params=TRANSPORTS)
async def line(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Any:
    async for opened in _open_line(request.param, tmp_path, clock):
        yield opened


@pytest.fixture(params=MODBUS_TRANSPORTS)
async def modbus_line(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Any:
    async for opened in _open_line(request.param, tmp_path, clock):
        yield opened


async def _open_line(kind: str, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Line]:
    pty = PtyPair(tmp_path, kind) if kind in PTY_KINDS else None
    if pty is not None:
        await pty.start()
    try:
        if kind == "dlt645-pty":
            assert pty is not None
            async for opened in _dlt645_line(pty, clock):
                yield opened
        else:
            async for opened in _modbus_line(kind, pty, clock, tmp_path):
                yield opened
    finally:
        if pty is not None:
            await pty.close()


async def _modbus_line(
    kind: str, pty: PtyPair | None, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[Line]:
    profiles_dir = _profiles_with_status_meter(tmp_path / "profiles")
    profiles = load_profiles(profiles_dir)
    layout = {"SDM": (1, "sdm630", 3), "DDS": (2, "dds-single-phase", 1)}
    layout |= {"DEAD": (3, "dds-single-phase", 1), "GARBLED": (4, "dds-single-phase", 1)}
    layout["DTSU"] = (5, "dtsu666", 3)
    layout["STATUS"] = (6, STATUS_PROFILE, 1)
    sims: dict[str, SimMeter] = {}
    units: list[ModbusSimMeter] = []
    entries: dict[str, dict[str, Any]] = {}
    for meter_id, (unit, profile, phases) in layout.items():
        sims[meter_id] = SimMeter(f"9000000000{unit:02d}", clock, load=flat_load, phases=phases)
        regmap = STATUS_MAP if profile == STATUS_PROFILE else MAPS[PROFILE_MODELS[profile]]
        units.append(ModbusSimMeter(unit, regmap, sims[meter_id]))
        entries[meter_id] = {"id": meter_id, "profile": profile, "unit": unit}
    serial = pty.server_end if pty is not None else None
    server = ModbusLine(units, serial=serial, rtu_framing=kind == "rtu-over-tcp")
    await server.start()
    try:
        if pty is not None:
            transport = f"rtu://{pty.client_end}?baud=9600"
        else:
            transport = (
                f"{'rtu-over-tcp' if server.rtu else 'modbus-tcp'}://127.0.0.1:{server.port}"
            )
        yield Line(kind, transport, sims, entries, server, profiles, profiles_dir)
    finally:
        await server.close()


async def _dlt645_line(pty: PtyPair, clock: ManualClock) -> AsyncIterator[Line]:
    ids = ("A645", "B645", "DEAD", "GARBLED")
    sims = {mid: SimMeter(f"{n:012d}", clock, load=flat_load) for n, mid in enumerate(ids, 1)}
    entries = {
        mid: {"id": mid, "profile": "dlt645-residential", "address": sim.address}
        for mid, sim in sims.items()
    }
    server = Dlt645SerialServer(MeterBus(sims.values()), pty.server_end)
    await server.start()
    try:
        transport = f"dlt645-serial://{pty.client_end}?baud=2400&parity=E"
        yield Line("dlt645-pty", transport, sims, entries)
    finally:
        await server.close()


def make_service(
    line: Line,
    clock: ManualClock,
    meter_ids: tuple[str, ...],
    *,
    seals: FakeSeals | None = None,
    heartbeat_polls: int = 10,
) -> tuple[MeterService, Recorder]:
    """A meter service (with theft rules) on one bus; meters map to seal SL-<id>."""
    table = {
        "profiles_dir": str(line.profiles_dir),
        "time_sync_s": 0,
        "heartbeat_polls": heartbeat_polls,
        "buses": [
            {"name": "line", "transport": line.transport, "gap_s": 0, "timeout_s": TIMEOUT_S}
        ],
        "meters": [
            {**line.entries[mid], "bus": "line", "poll_s": POLL_S, "seal": f"SL-{mid}"}
            for mid in meter_ids
        ],
    }
    recorder = Recorder()
    service = MeterService(
        meters_section(table), recorder, clock, seals or FakeSeals(), theft=TheftSection()
    )
    return service, recorder


def values(draft: EventDraft) -> dict[str, Any]:
    return {name: entry["value"] for name, entry in draft.data["values"].items()}


# --- every shipped profile, end to end ---------------------------------------------------


async def test_every_modbus_profile_reads_end_to_end(modbus_line: Line, clock: ManualClock) -> None:
    service, recorder = make_service(modbus_line, clock, ("SDM", "DDS", "DTSU"))
    try:
        for meter in ("SDM", "DDS", "DTSU"):
            assert await service.poll_once(meter)
    finally:
        await service.close()
    [sdm] = recorder.of("meter.reading", "SDM")
    [dds] = recorder.of("meter.reading", "DDS")
    [dtsu] = recorder.of("meter.reading", "DTSU")
    assert values(sdm) == pytest.approx(SDM630_VALUES, rel=1e-6)
    assert values(dtsu) == pytest.approx(DTSU666_VALUES, rel=1e-6)
    assert values(dds) == pytest.approx(DDS_VALUES, rel=1e-9)
    assert sdm.data["values"]["energy_import"] == {"value": 1000.0, "unit": "kWh"}
    assert dds.data["protocol"] == "modbus" and dds.data["seal"] == "SL-DDS"
    shipped = {
        p.name for p in load_profiles(PROFILES).values() if p.protocol is MeterProtocol.MODBUS
    }
    assert shipped == {"sdm630", "dds-single-phase", "dtsu666"}  # every one is read above


async def test_dlt645_profile_reads_end_to_end_on_a_pty(tmp_path: Path, clock: ManualClock) -> None:
    async for line in _open_line("dlt645-pty", tmp_path, clock):
        service, recorder = make_service(line, clock, ("A645",))
        try:
            assert await service.poll_once("A645")
        finally:
            await service.close()
    [reading] = recorder.of("meter.reading", "A645")
    assert reading.data["protocol"] == "dlt645"
    assert values(reading) == pytest.approx(DLT645_VALUES, rel=1e-9)
    assert reading.data["values"]["active_power_total"] == {"value": 0.6, "unit": "kW"}


# --- coalescing ---------------------------------------------------------------------------


async def test_coalesced_reads_counted_at_the_server(modbus_line: Line, clock: ManualClock) -> None:
    service, _ = make_service(modbus_line, clock, ("SDM", "DDS", "DTSU"))
    server = modbus_line.modbus
    assert server is not None
    try:
        for meter in ("SDM", "DDS", "DTSU"):
            assert await service.poll_once(meter)
    finally:
        await service.close()
    assert server.requests == Counter({1: 2, 2: 2, 5: 5})  # 18, 8 and 24 values
    sdm = modbus_line.profiles["sdm630"]
    assert len(sdm.registers) == 18
    assert [(r.address, r.count) for r in plan_profile(sdm).requests] == [(0x0000, 76), (0x0156, 2)]


async def test_naive_per_value_reads_cost_one_request_each(
    modbus_line: Line, clock: ManualClock
) -> None:
    sdm = modbus_line.profiles["sdm630"]
    server = modbus_line.modbus
    assert server is not None
    bus = open_bus(modbus_line.transport, timeout=1.0, inter_frame_gap=0)
    try:
        coalesced = await read_plan(bus, 1, plan_profile(sdm))
        after_coalesced = server.requests[1]
        naive = await read_plan(bus, 1, plan_per_value(sdm))
    finally:
        await bus.close()
    assert naive == coalesced  # the same values either way
    assert after_coalesced == 2
    assert server.requests[1] - after_coalesced == len(sdm.registers) == 18
    assert sum(request.count for request in plan_profile(sdm).requests) == 78


# --- a silent or garbled meter does not stall the bus -------------------------------------


async def test_dead_and_garbled_meters_do_not_stall_the_others(
    line: Line, clock: ManualClock
) -> None:
    line.sims["DEAD"].dead = True
    line.sims["GARBLED"].garble = True
    meters = (*line.healthy, "DEAD", "GARBLED")
    service, recorder = make_service(line, clock, meters, heartbeat_polls=1)
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(20):  # a guard only: the assertions count polls
            for cycle in range(1, CYCLES + 1):
                await service.wait_for_polls(cycle * len(meters))
                if cycle < CYCLES:
                    clock.advance(POLL_S)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    due = [START + timedelta(seconds=POLL_S * n) for n in range(CYCLES)]
    for meter in line.healthy:
        tracker = service.trackers[meter]
        assert (tracker.polls, tracker.ok) == (CYCLES, CYCLES)
        assert [d.ts for d in recorder.of("meter.reading", meter)] == due  # every period
        assert recorder.of("meter.read_failed", meter) == []
    failures = {d.subject: d.data["reason"] for d in recorder.of("meter.read_failed")}
    assert failures == {"DEAD": "timeout", "GARBLED": "crc"}
    for meter in ("DEAD", "GARBLED"):
        assert (service.trackers[meter].polls, service.trackers[meter].ok) == (CYCLES, 0)
    stats = service.buses["line"].stats
    per_poll = 1 if line.modbus is not None else SILENT_ABORT  # a DL/T 645 meter gets 2 tries
    assert (stats.timeouts, stats.garbled) == (per_poll * CYCLES, per_poll * CYCLES)
    if line.modbus is not None:  # the server saw every healthy request, every period
        assert line.modbus.requests == Counter({1: 2 * CYCLES, 2: 2 * CYCLES, 3: CYCLES, 4: CYCLES})


# --- cover open, seals and theft ----------------------------------------------------------


@pytest.mark.parametrize("authorized", [False, True], ids=["sealed", "authorized-unseal"])
async def test_cover_open_raises_meter_event_and_theft_unless_authorized(
    line: Line, clock: ManualClock, authorized: bool
) -> None:
    meter = line.cover_meter
    seal = f"SL-{meter}"
    seals = FakeSeals(states={seal: "sealed"})
    if authorized:  # a ticket in use covers the seal: a work order
        seals.authorized[seal] = (START, START + timedelta(hours=1))
    service, recorder = make_service(line, clock, (meter,), seals=seals)
    try:
        assert await service.poll_once(meter)
        line.sims[meter].open_cover()
        clock.advance(POLL_S)
        assert await service.poll_once(meter)
    finally:
        await service.close()
    [event] = recorder.of("meter.event", meter)
    source = "status" if line.modbus is not None else "status+counter"
    assert event.priority is Priority.AUDIT
    assert event.data == {
        "meter": meter,
        "event": "cover_opened",
        "source": source,
        "count": 1,
        "seal": seal,
    }
    alarms = recorder.of("theft.suspected", meter)
    if authorized:
        assert alarms == []
        return
    [alarm] = alarms
    assert alarm.priority is Priority.ALARM
    assert alarm.ts == START + timedelta(seconds=POLL_S)
    assert alarm.data == {
        "meter": meter,
        "seal": seal,
        "seal_state": "sealed",
        "rule": "cover_open_under_seal",
        "evidence": {"event": "cover_opened", "source": source, "count": 1},
    }


# --- the bench's figures ------------------------------------------------------------------


def test_min_bus_bytes_reads_only_the_needed_registers() -> None:
    profiles = load_profiles(PROFILES)
    # dtsu666: runs of 34, 8, 2, 2 and 2 registers; 13 bytes per request, 2 per register
    assert min_rtu_bytes(profiles["dtsu666"].registers) == (5, 5 * 13 + 2 * 48)
    wide = [
        RegisterSpec(
            f"r{n}", n, RegisterFunction.HOLDING, ValueFormat(ValueType.U16), ValueKind.POWER
        )
        for n in range(130)
    ]
    assert min_rtu_bytes(wide) == (2, 2 * 13 + 2 * 130)  # 125 is the most one request reads


async def test_modbus_bench_meets_its_goal() -> None:
    result = await asyncio.to_thread(bench_modbus.run, quick=True, verbose=False)
    headline = list(result)[-7:]
    assert headline == [
        "requests_per_cycle",
        "bus_bytes_per_cycle",
        "tcp_bytes_per_cycle",
        "min_bus_bytes_per_cycle",
        "bus_bytes_ratio_to_min",
        "reads_per_s",
        "per_tag_requests_per_cycle",
    ]
    assert result["values"] >= 20
    assert result["per_tag_requests_per_cycle"] == result["values"] == 24
    assert result["requests_per_cycle"] == 5  # the reserved holes are not read
    assert result["bus_bytes_ratio_to_min"] <= 1.05
    assert result["bus_bytes_per_cycle"] == 161  # 5 x 13 + 2 x 48 registers read
    holes = result["reserved_holes"]
    assert holes["every_gap_bus_bytes_per_cycle"] == 167  # 3 x 13 + 2 x 64, holes included
    assert holes["holes_cost_bus_bytes_per_cycle"] == 161 - 167
    assert result["reads_per_s"] > result["per_tag_reads_per_s"] > 0
