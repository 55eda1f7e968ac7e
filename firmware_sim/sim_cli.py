"""`sealgw sim`: the bench simulator as a process — seal locks on a virtual radio, meters, truth.

It starts a `LockWorld` (locks reachable over TCP HCI) and, unless `--no-meters`, the simulated
meters (`MeterSim`, meters mapped to the first seals), writes a complete gateway config, prints
one ready line (`sim ready: config=... adapter=...`), generates random lock activity (tamper,
wire cut, low battery, ...) for `--activity-seconds`, prints `sim quiet: ...`, then stays up
quietly until SIGTERM, SIGINT or SIGHUP, and stops its children (socat) on the way out; they
also die with it if it is killed (firmware_sim/children.py). Every lock log entry and meter
event goes to `--truth` as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from firmware_sim.locks.world import RADIOS, LockWorld
from firmware_sim.meters.district import DAY_S
from firmware_sim.sim_control import serve_stdin

if TYPE_CHECKING:
    from firmware_sim.meters.fleet import MeterSim

__all__ = ["ACTIVITY", "SimOptions", "main", "register_sim_command", "run_sim"]

_log = logging.getLogger(__name__)

DEFAULT_GATEWAY_ID = "gw-sim-01"
GATEWAY_STATE = "gateway"
ACTIVITY_PAUSE_S = (0.05, 0.3)
ADVERTISING_INTERVAL_MS = 200.0
MAX_LOCKS = 9999
MAX_DISTRICT = 99  # customer addresses 3100000001NN

ACTIVITY: tuple[tuple[str, int], ...] = (
    ("tamper", 3),
    ("shell_close", 3),
    ("wire_cut", 2),
    ("wire_restore", 2),
    ("low_battery", 2),
    ("battery_ok", 1),
    ("reboot", 1),
)
"""Lock faults the activity generator draws from, with weights."""


@dataclass(frozen=True, slots=True)
class SimOptions:
    """What `sealgw sim` was asked to do."""

    config_path: Path
    state_dir: Path
    broker: str = "mqtt://127.0.0.1:1883"
    truth: Path | None = None
    activity_s: float = 0.0
    locks: int = 20
    meters: bool = True
    gateway_id: str = DEFAULT_GATEWAY_ID
    seed: int | None = None
    meter_poll_s: float = 15.0
    radio: str = "tcp"
    advertising_interval_ms: float = ADVERTISING_INTERVAL_MS
    handheld_radio: bool = False
    district: int = 0
    district_day_s: float = DAY_S


def register_sim_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `sim` to the sealgw command line."""
    sim = subparsers.add_parser("sim", help="run the bench simulator (locks, meters)")
    sim.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="uplink url for the config")
    sim.add_argument("--write-config", type=Path, required=True, help="gateway config to write")
    sim.add_argument("--truth", type=Path, help="append ground truth here (JSON lines)")
    sim.add_argument("--state-dir", type=Path, required=True, help="simulator and gateway state")
    sim.add_argument("--activity-seconds", type=float, default=0.0, help="random lock activity")
    sim.add_argument("--locks", type=_lock_count, default=20, help="number of locks (default 20)")
    sim.add_argument("--no-meters", action="store_true", help="locks only")
    sim.add_argument("--gateway-id", default=DEFAULT_GATEWAY_ID, help="gateway.id in the config")
    sim.add_argument("--seed", type=int, help="seed of the activity generator")
    sim.add_argument(
        "--meter-poll-s", type=float, default=15.0, help="meters' poll_s in the config (default 15)"
    )
    sim.add_argument(
        "--radio",
        choices=RADIOS,
        default="tcp",
        help="the gateway's controller: bumble over TCP HCI (default), or the Linux kernel "
        "through /dev/vhci, so the gateway runs on BlueZ (bluez:hci0; needs root and hci_vhci)",
    )
    sim.add_argument(
        "--advertising-interval-ms",
        type=float,
        default=ADVERTISING_INTERVAL_MS,
        help=f"each lock's advertising interval (default {ADVERTISING_INTERVAL_MS:g})",
    )
    sim.add_argument(
        "--handheld-radio",
        action="store_true",
        help="serve one more controller over TCP HCI for handhelds over BLE (its bumble "
        "transport is in the ready line as handheld_radio=...)",
    )
    sim.add_argument(
        "--district",
        type=_district_size,
        default=0,
        help="add a distribution district for line loss: its own meter and N customers, each "
        "customer's box under the next free seal (default 0: none)",
    )
    sim.add_argument(
        "--district-day-s",
        type=_day_length,
        default=DAY_S,
        help="seconds of one simulated day for the district's meters (default 86400: real "
        "time; a demo compresses it so daily line-loss intervals pass in seconds)",
    )
    sim.add_argument("--log-level", default="WARNING", help="simulator log level")
    sim.set_defaults(handler=_cmd_sim)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m firmware_sim.sim_cli ...`: the same as `sealgw sim ...`."""
    parser = argparse.ArgumentParser(prog="sealgw")
    register_sim_command(parser.add_subparsers())
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


async def run_sim(options: SimOptions, stop: asyncio.Event) -> None:
    """Run the simulator until `stop` is set."""
    options.state_dir.mkdir(parents=True, exist_ok=True)
    world = LockWorld(
        options.locks,
        options.state_dir,
        options.truth,
        advertising_interval_ms=options.advertising_interval_ms,
        radio=options.radio,
    )
    meters: MeterSim | None = None
    if options.meters:  # pymodbus and the meter models cost seconds to import on a slow CPU
        from firmware_sim.meters.fleet import MeterSim  # noqa: PLC0415 - only when meters run

        meters = MeterSim(
            options.state_dir / "meters",
            truth=options.truth,
            district=options.district,
            district_day_s=options.district_day_s,
        )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(world)
        if meters is not None:
            await stack.enter_async_context(meters)
        options.config_path.write_text(gateway_config(options, world, meters), encoding="utf-8")
        handheld = ""
        if options.handheld_radio:
            handheld = f" handheld_radio={await world.serve_handheld_controller()}"
        print(
            f"sim ready: config={options.config_path} adapter={world.adapter} "
            f"locks={len(world.locks)} meters={len(meters.meters) if meters else 0}{handheld}",
            flush=True,
        )
        control = asyncio.create_task(serve_stdin(world, meters))
        injected = await _activity(world, options, stop)
        print(f"sim quiet: {injected} faults injected", flush=True)
        await stop.wait()
        control.cancel()
    _log.info("simulator stopped")


MASTER_PUBLIC_KEY = "master.pub"


def gateway_config(options: SimOptions, world: LockWorld, meters: MeterSim | None) -> str:
    """The whole gateway config: identity, state dir, uplink, trust anchor, [ble], [meters]."""
    gateway_state = (options.state_dir / GATEWAY_STATE).resolve()
    master_key = (options.state_dir / MASTER_PUBLIC_KEY).resolve()
    master_key.write_text(world.authority.public_key_bytes.hex() + "\n", encoding="utf-8")
    parts = [
        "# Written by `sealgw sim`; valid while the simulator runs.",
        "[gateway]",
        f"id = {_q(options.gateway_id)}",
        f"state_dir = {_q(str(gateway_state))}",
        "",
        "[uplink]",
        f"url = {_q(options.broker)}",
        "",
        "[authorization]",
        f"master_key_file = {_q(str(master_key))}",
        "",
        world.gateway_ble_toml(connect_timeout_s=5.0, op_timeout_s=10.0),
        "",
        "[audit]",
        "# A bench gateway may run before `sealgw init`; its trail is then unsigned.",
        "require_identity = false",
    ]
    if meters is not None:
        parts.append(meters.meters_toml(seals=meter_seals(meters, list(world.locks)),
                                        poll_s=options.meter_poll_s))  # fmt: skip
    return "\n".join(parts)


def meter_seals(meters: MeterSim, seal_ids: Sequence[str]) -> dict[str, str]:
    """The bench meters (sorted) under the first seals, then the district's customers."""
    from firmware_sim.meters.fleet import DISTRICT_BUS  # noqa: PLC0415 - only when meters run

    bench = sorted(m for m in meters.meters if meters.info[m].bus != DISTRICT_BUS)
    return dict(zip([*bench, *meters.district_customers], seal_ids, strict=False))


async def _activity(world: LockWorld, options: SimOptions, stop: asyncio.Event) -> int:
    rng = random.Random(options.seed)  # a simulation, not cryptography
    faults = [name for name, _ in ACTIVITY]
    weights = [weight for _, weight in ACTIVITY]
    deadline = asyncio.get_running_loop().time() + options.activity_s
    injected = 0
    while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
        seal_id = rng.choice(list(world.locks))
        world.inject(seal_id, rng.choices(faults, weights)[0])
        injected += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(*ACTIVITY_PAUSE_S))
    return injected


def _cmd_sim(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.WARNING)  # no hex dump of every frame
    options = SimOptions(
        config_path=args.write_config,
        state_dir=args.state_dir.resolve(),  # written into the config: must be absolute
        broker=args.broker,
        truth=args.truth,
        activity_s=args.activity_seconds,
        locks=args.locks,
        radio=args.radio,
        advertising_interval_ms=args.advertising_interval_ms,
        handheld_radio=args.handheld_radio,
        meters=not args.no_meters,
        gateway_id=args.gateway_id,
        seed=args.seed,
        meter_poll_s=args.meter_poll_s,
        district=args.district,
        district_day_s=args.district_day_s,
    )
    asyncio.run(_run_until_signal(options))
    return 0


async def _run_until_signal(options: SimOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    await run_sim(options, stop)


def _lock_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= MAX_LOCKS:
        raise argparse.ArgumentTypeError(f"--locks must be 1..{MAX_LOCKS}")
    return count


def _district_size(text: str) -> int:
    count = int(text)
    if not 0 <= count <= MAX_DISTRICT:
        raise argparse.ArgumentTypeError(f"--district must be 0..{MAX_DISTRICT}")
    return count


def _day_length(text: str) -> float:
    seconds = float(text)
    if not 1.0 <= seconds <= DAY_S:
        raise argparse.ArgumentTypeError(f"--district-day-s must be 1..{DAY_S:g}")
    return seconds


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string for these values


if __name__ == "__main__":
    sys.exit(main())
