"""`sealgw meters scan`: meters with unknown addresses found on simulated buses, end to end.

The simulated meters serve over TCP in this process; the CLI runs as a real subprocess with a
config file that names only the bus.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from firmware_sim.meters.dlt645 import Dlt645TcpServer, MeterBus, SimMeter
from firmware_sim.meters.maps import DDS238_2, DTSU666
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from gateway.drivers.dlt645.bus import open_dlt645_bus
from gateway.meters.config import MetersSection
from gateway.meters.scan import scan_dlt645
from gateway.protocol.clock import ManualClock
from tests.fixtures.meters import PROFILES, meters_section

REPO = Path(__file__).resolve().parents[3]
START = datetime(2026, 1, 1, tzinfo=UTC)
# Two of the three share their lowest byte (01), so the search must resolve a collision.
HIDDEN = ("202600000001", "202611223301", "202698765455")


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, transport: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(
        f'[gateway]\nid = "gw"\n\n[meters]\nprofiles_dir = "{PROFILES}"\n\n'
        f'[[meters.buses]]\nname = "rs485-1"\ntransport = "{transport}"\n'
    )
    return path


def pasted(config: Path, entries: str) -> MetersSection:
    """The scan's output pasted under the config: it must load."""
    data = tomllib.loads(config.read_text() + "\n" + entries)
    return meters_section(data["meters"])


async def test_scan_finds_three_dlt645_meters_with_unknown_addresses(tmp_path: Path) -> None:
    clock = ManualClock(START)
    meters = [SimMeter(address, clock) for address in HIDDEN]
    async with Dlt645TcpServer(MeterBus(meters)) as server:
        config = write_config(tmp_path, f"dlt645-tcp://127.0.0.1:{server.port}")
        code, out, err = await run_cli(
            "meters", "scan", "-c", str(config), "--bus", "rs485-1", "--timeout", "0.03"
        )
    assert code == 0, err
    section = pasted(config, out)
    assert sorted(m.address for m in section.meters) == sorted(HIDDEN)
    assert {m.profile for m in section.meters} == {"dlt645-residential"}
    assert "3 dlt645 meter(s)" in err  # the read-address and the byte 01 collided
    assert "(2 collisions)" in err


async def test_single_meter_bus_is_found_by_the_wildcard_read_address() -> None:
    clock = ManualClock(START)
    async with Dlt645TcpServer(MeterBus([SimMeter(HIDDEN[2], clock)])) as server:
        bus = open_dlt645_bus(f"dlt645-tcp://127.0.0.1:{server.port}", timeout=0.1)
        try:
            report = await scan_dlt645(bus)
        finally:
            await bus.close()
    assert report.found == [HIDDEN[2]]
    assert report.single_meter and report.probes == 2  # read-address, then a directed read


async def test_scan_finds_five_modbus_units(tmp_path: Path) -> None:
    clock = ManualClock(START)
    units = [
        ModbusSimMeter(unit, DTSU666 if unit % 2 else DDS238_2, SimMeter(f"9{unit:011d}", clock))
        for unit in (2, 3, 7, 11, 12)
    ]
    line = ModbusLine(units)
    await line.start()
    try:
        config = write_config(tmp_path, f"modbus-tcp://127.0.0.1:{line.port}")
        code, out, err = await run_cli(
            "meters", "scan", "-c", str(config), "--bus", "rs485-1", "--timeout", "0.05",
            "--units", "1-16", "--profile", "dtsu666",
        )  # fmt: skip
    finally:
        await line.close()
    assert code == 0, err
    section = pasted(config, out)
    assert [m.unit for m in section.meters] == [2, 3, 7, 11, 12]
    assert "5 modbus meter(s) in 16 probes" in err


async def test_scan_of_an_unknown_bus_names_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, "dlt645-tcp://127.0.0.1:9")
    code, _, err = await run_cli("meters", "scan", "-c", str(config), "--bus", "nope")
    assert code == 2
    assert "--bus" in err and "nope" in err
