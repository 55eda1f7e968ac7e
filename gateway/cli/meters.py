"""`sealgw meters scan --bus NAME`: find the meters on one configured bus, print config entries.

The bus comes from the config's [[meters.buses]]; nothing else of the gateway is started.
What is found is printed as ready-to-paste `[[meters.meters]]` tables (stdout), a summary on
stderr. See docs/meters.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.meters.config import BusConfig, MeterConfig
    from gateway.meters.scan import ScanReport

EXIT_OK = 0
EXIT_NOTHING = 1
DEFAULT_CONFIG = Path("/etc/sealgw/gateway.toml")
DLT645_PROFILE = "dlt645-residential"


def register_meters_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `sealgw meters scan`."""
    meters = subparsers.add_parser("meters", help="meter tools")
    sub = meters.add_subparsers(title="meters commands", metavar="COMMAND")
    scan = sub.add_parser(
        "scan",
        help="find the meters on one bus and print [[meters.meters]] entries",
        description="DL/T 645: the all-AA read-address, else a byte-by-byte search with "
        "shortened (AAH) addresses. Modbus: a one-register read to each unit id.",
    )
    scan.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help="gateway config")
    scan.add_argument("--bus", required=True, help="name of a [[meters.buses]] entry")
    scan.add_argument("--profile", help="profile for the printed entries")
    scan.add_argument("--timeout", type=float, help="seconds per probe (default: the bus's)")
    scan.add_argument("--units", default="1-247", help="Modbus unit ids, e.g. 1-32 (default 1-247)")
    scan.add_argument(
        "--register", type=lambda t: int(t, 0), default=0, help="Modbus probe register"
    )
    scan.set_defaults(handler=cmd_scan)


def cmd_scan(args: argparse.Namespace) -> int:
    """Run `sealgw meters scan`."""
    from gateway.config.loader import load_config  # noqa: PLC0415 - CLI command body: loaded when it runs

    config = load_config(args.config)
    try:
        bus = config.meters.bus(args.bus)
    except KeyError:
        raise ConfigError("--bus", f"no bus named {args.bus!r} in meters.buses") from None
    profile = args.profile or _profile_of(config.meters.meters, bus.name, bus.protocol)
    report = asyncio.run(_scan(bus, args))
    print(
        f"{bus.name}: {len(report.found)} {bus.protocol} meter(s) in {report.probes} probes"
        f" ({report.collisions} collisions)",
        file=sys.stderr,
    )
    if report.found:
        from gateway.meters.scan import entries_toml  # noqa: PLC0415 - CLI command body

        print(entries_toml(report, bus.name, profile))
    return EXIT_OK if report.found else EXIT_NOTHING


async def _scan(bus: BusConfig, args: argparse.Namespace) -> ScanReport:
    from dataclasses import replace  # noqa: PLC0415 - CLI command body

    from gateway.drivers.dlt645.bus import Dlt645Bus  # noqa: PLC0415 - CLI command body
    from gateway.meters.readers import open_buses  # noqa: PLC0415 - CLI command body
    from gateway.meters.scan import scan_dlt645, scan_modbus  # noqa: PLC0415 - CLI command body
    from gateway.protocol.modbus_values import RegisterFunction  # noqa: PLC0415 - CLI command body

    if args.timeout is not None:
        bus = replace(bus, timeout_s=args.timeout)
    opened = open_buses([bus])[bus.name]
    try:
        if isinstance(opened, Dlt645Bus):
            return await scan_dlt645(opened)
        units = _units(args.units)
        return await scan_modbus(
            opened,
            units,
            function=RegisterFunction.HOLDING,
            address=args.register,
        )
    finally:
        await opened.close()


def _units(text: str) -> range:
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise ConfigError("--units", f"{text!r}: expected N or N-M") from None
    if not 1 <= first <= last <= 247:
        raise ConfigError("--units", f"{text!r}: unit ids are 1..247")
    return range(first, last + 1)


def _profile_of(meters: Iterable[MeterConfig], bus: str, protocol: str) -> str:
    """The profile of a meter already on `bus`, else the stock DL/T 645 one."""
    for meter in meters:
        if meter.bus == bus:
            return meter.profile
    if protocol == "dlt645":
        return DLT645_PROFILE
    raise ConfigError("--profile", f"no meter on {bus} names a profile; give --profile")
