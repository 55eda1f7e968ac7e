"""`sealgw demo [--broker URL] [--duration S] [--json] [--encoding E] [--radio R]`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["register_demo_command"]


def register_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo` to the sealgw command line."""
    demo = commands.add_parser("demo", help="run the bench demo on this machine")
    demo.add_argument(
        "--broker", help="use this broker (mqtt://host:port) instead of a private one"
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    demo.add_argument("--json", action="store_true", help="print one summary object at the end")
    demo.add_argument(
        "--encoding",
        choices=("json", "batch"),
        default="json",
        help="the gateway's uplink encoding (default json; batch: docs/mqtt.md)",
    )
    demo.add_argument(
        "--radio",
        choices=("tcp", "vhci"),
        default="tcp",
        help="the gateway's Bluetooth: bumble over TCP HCI (default), or BlueZ through /dev/vhci "
        "(bluez:hci0; Linux, root, hci_vhci and a running bluetoothd: the BlueZ test bed)",
    )
    demo.add_argument(
        "--patience",
        type=float,
        default=1.0,
        help="multiply every step's deadline (default 1; e.g. 4 in an emulated VM)",
    )
    demo.add_argument(
        "--handheld",
        choices=("ble", "tcp"),
        default="ble",
        help="how the handhelds reach the gateway: BLE GATT on the virtual radio (default), or "
        "the local stream socket (with --radio vhci, always the socket)",
    )
    demo.add_argument(
        "--work-dir",
        type=Path,
        help="keep every process's state and log here (default: a temporary folder)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the day, keep the master console up on the ledger (prints its URL and a "
        "one-time admin password) until Ctrl-C",
    )
    demo.add_argument("--serve-port", type=int, default=8080, help="the console's port")
    demo.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from firmware_sim.children import exit_on_signals  # noqa: PLC0415 - CLI command body: loaded when it runs
    from firmware_sim.demo.run import DemoOptions, run_demo  # noqa: PLC0415 - CLI command body: loaded when it runs

    logging.basicConfig(level=logging.WARNING)
    exit_on_signals()
    return run_demo(
        DemoOptions(
            args.broker,
            args.duration,
            args.json,
            encoding=args.encoding,
            radio=args.radio,
            patience=args.patience,
            work_dir=args.work_dir,
            handheld=args.handheld,
            serve=args.serve,
            serve_port=args.serve_port,
        )
    )
