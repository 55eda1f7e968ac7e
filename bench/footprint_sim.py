"""The footprint bench's devices, in a process of their own so their memory is not counted.

`python -m bench.footprint_sim METERS LOCKS DIR` serves METERS simulated single-phase meters
(units 1..N) on one pymodbus TCP server and LOCKS simulated seal locks on a LockWorld virtual
radio (advertising once a second), prints one JSON line {"port", "ble_toml", "master_key"}
and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from firmware_sim.locks.world import LockWorld
from firmware_sim.meters.dlt645 import SimMeter
from firmware_sim.meters.fleet import PROFILE_MODELS, PROFILES_DIR
from firmware_sim.meters.maps import MAPS
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from gateway.protocol.clock import SystemClock

PROFILE = "dds-single-phase"
METERS_PER_BUS = 16
ADVERT_MS = 1000.0


async def serve(count: int, locks: int, state_dir: Path) -> None:
    """Serve `count` meters and `locks` locks until stdin closes."""
    regmap = MAPS[PROFILE_MODELS[PROFILE]]
    clock = SystemClock()
    meters = [
        ModbusSimMeter(unit, regmap, SimMeter(f"{900000000000 + unit:012d}", clock))
        for unit in range(1, count + 1)
    ]
    line = ModbusLine(meters)
    await line.start()
    world = LockWorld(locks, state_dir, None, advertising_interval_ms=ADVERT_MS)
    await world.start()
    master = world.authority.public_key_bytes.hex()
    info = {"port": line.port, "ble_toml": world.gateway_ble_toml(), "master_key": master}
    print(json.dumps(info), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await world.close()
    await line.close()


def meters_toml(port: int, count: int, poll_s: float) -> str:
    """[meters] for `count` meters on buses of 16, all served by the simulator on `port`."""
    lines = ["[meters]", f'profiles_dir = "{PROFILES_DIR}"', "time_sync_s = 0", ""]
    for bus in range((count + METERS_PER_BUS - 1) // METERS_PER_BUS):
        lines += ["[[meters.buses]]", f'name = "bus-{bus}"']
        lines += [f'transport = "modbus-tcp://127.0.0.1:{port}"', "timeout_s = 0.5", ""]
    for unit in range(1, count + 1):
        bus = (unit - 1) // METERS_PER_BUS
        lines += ["[[meters.meters]]", f'id = "M-{unit:04d}"', f'bus = "bus-{bus}"']
        lines += [f'profile = "{PROFILE}"', f"unit = {unit}", f"poll_s = {poll_s}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
