"""The `sealgw` command line. Subcommands import their modules lazily to keep start-up fast."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import __version__
from gateway.cli.admin import register_init_command, register_status_command
from gateway.cli.audit import register_audit_command
from gateway.cli.pair import register_pair_command
from gateway.errors import ConfigError, GatewayError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run one subcommand; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_handler(parser, args)
    except KeyboardInterrupt:
        return 130


def run_handler(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the subcommand `args` chose (help without one); gateway errors become exit codes."""
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="sealgw", description="Meter seal and meter gateway")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_run(commands)
    _add_config(commands)
    _add_demo(commands)
    from firmware_sim.sim_cli import register_sim_command  # noqa: PLC0415 - the simulator, not the gateway
    from master_station.cli import register_master_command  # noqa: PLC0415 - master_station.cli imports this module

    register_init_command(commands)
    register_status_command(commands)
    register_sim_command(commands)
    register_pair_command(commands)
    register_audit_command(commands)
    register_master_command(commands)
    return parser


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run the gateway daemon")
    run.add_argument("-c", "--config", type=Path, required=True, help="gateway config (TOML)")
    run.add_argument("--log-level", help="override log.level")
    run.set_defaults(handler=_cmd_run)


def _add_config(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser("config", help="configuration tools")
    sub = config.add_subparsers(title="config commands", metavar="COMMAND")
    check = sub.add_parser("check", help="validate a config file; names the bad key")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_cmd_config_check)


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", help="run the bench demo on this machine")
    demo.add_argument(
        "--broker", help="use this broker (mqtt://host:port) instead of a private one"
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    demo.add_argument("--json", action="store_true", help="print one summary object at the end")
    demo.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from firmware_sim.demo.run import DemoOptions, run_demo  # noqa: PLC0415 - CLI command body: loaded when it runs

    logging.basicConfig(level=logging.WARNING)
    return run_demo(DemoOptions(args.broker, args.duration, args.json))


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.config.loader import load_config  # noqa: PLC0415 - CLI command body: loaded when it runs
    from gateway.daemon.app import run_daemon  # noqa: PLC0415 - CLI command body: loaded when it runs

    config = load_config(args.config)
    configure_logging(args.log_level or config.log.level)
    return asyncio.run(run_daemon(config))


def _cmd_config_check(args: argparse.Namespace) -> int:
    from gateway.config.loader import load_config  # noqa: PLC0415 - CLI command body: loaded when it runs

    config = load_config(args.file)
    print(
        f"{args.file}: OK (gateway {config.gateway.id}, broker {config.uplink.url}, "
        f"buffer {config.buffer_path})"
    )
    return EXIT_OK


def configure_logging(level: str) -> None:
    """Log to stderr (journald picks it up under systemd) at `level`."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _version() -> str:
    return f"sealgw {__version__}"


if __name__ == "__main__":
    sys.exit(main())
