"""The `sealgw` command line. Subcommands import their modules lazily to keep start-up fast.

Built-in commands (run, config, init, status, pair, audit, meters, probe) live in gateway/cli/.
`master`, `sim` and `demo` are plug-ins of the `sealgw.commands` entry-point group
(gateway/cli/plugins.py), read only when the command asked for is not a built-in one.
"""

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
from gateway.cli.meters import register_meters_command
from gateway.cli.pair import register_pair_command
from gateway.cli.probe import register_probe_command
from gateway.errors import ConfigError, ExitCode, GatewayError, exit_code_for

EXIT_OK = ExitCode.OK
EXIT_FAILURE = ExitCode.FAILURE
EXIT_USAGE = ExitCode.USAGE
BUILT_IN = ("run", "config", "init", "status", "pair", "audit", "meters", "probe")

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run one subcommand; return the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(command_of(argv))
    except GatewayError as exc:
        print(f"sealgw: {exc}", file=sys.stderr)
        from gateway.cli.plugins import UnknownCommandError  # noqa: PLC0415 - built-in commands never read entry points

        return EXIT_USAGE if isinstance(exc, UnknownCommandError) else exit_code_for(exc)
    args = parser.parse_args(argv)
    try:
        return run_handler(parser, args)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names (its first word not an option), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def run_handler(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the subcommand `args` chose (help without one); gateway errors become exit codes."""
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except GatewayError as exc:
        label = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"{label}: {exc}", file=sys.stderr)
        return exit_code_for(exc)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every built-in command, and the plug-ins unless `command` is built in.

    Plug-ins are listed by name and help line; only `command` itself is registered fully, so
    only its module is imported. PluginError when `command` is unknown or its plug-in is broken.
    """
    parser = argparse.ArgumentParser(prog="sealgw", description="Meter seal and meter gateway")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_run(commands)
    _add_config(commands)

    register_init_command(commands)
    register_status_command(commands)
    register_pair_command(commands)
    register_audit_command(commands)
    register_meters_command(commands)
    register_probe_command(commands)
    if command not in BUILT_IN:
        from gateway.cli.plugins import add_plugin_commands  # noqa: PLC0415 - built-in commands never read entry points

        add_plugin_commands(commands, command, BUILT_IN)
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
    # pymodbus logs a hex dump of every frame at DEBUG: far too much, and not ours to debug.
    logging.getLogger("pymodbus").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _version() -> str:
    return f"sealgw {__version__}"


if __name__ == "__main__":
    sys.exit(main())
