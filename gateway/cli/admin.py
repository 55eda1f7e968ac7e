"""Operator commands on the box: `sealgw init` (provisioning) and `sealgw status` (health).

Each `register_*` function adds one subcommand to the `sealgw` parser. Heavy modules
(cryptography) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, GatewayError, GatewayNotRunningError, ProvisionError

EXIT_OK = 0
EXIT_FAILURE = 1
DEFAULT_CONFIG = Path("/etc/sealgw/gateway.toml")


def register_init_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `sealgw init`: identity key, MQTT key and CSR in a 0700 state directory."""
    init = subparsers.add_parser(
        "init",
        help="provision this gateway: identity key, MQTT client key and CSR",
        description="Create the state directory (0700), the Ed25519 identity key, the P-256 "
        "MQTT client key (both 0600) and a CSR with CN = gateway id. Takes the gateway id and "
        "state directory from the config's [gateway] table unless given.",
    )
    init.add_argument(
        "-c", "--config", type=Path, help=f"gateway config (default {DEFAULT_CONFIG})"
    )
    init.add_argument("--state-dir", type=Path, help="override gateway.state_dir")
    init.add_argument("--id", dest="gateway_id", help="override gateway.id")
    init.add_argument("--force", action="store_true", help="replace existing keys")
    init.set_defaults(handler=cmd_init)


def register_status_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `sealgw status`: the running daemon's health, read over its control socket."""
    status = subparsers.add_parser("status", help="show the running gateway's status")
    where = status.add_mutually_exclusive_group()
    where.add_argument(
        "-c", "--config", type=Path, help=f"gateway config (default {DEFAULT_CONFIG})"
    )
    where.add_argument("--socket", type=Path, help="control socket path")
    status.add_argument("--json", action="store_true", help="print the raw status object")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    status.set_defaults(handler=cmd_status)


def cmd_init(args: argparse.Namespace) -> int:
    """Run `sealgw init`."""
    from gateway.auth.provision import init_gateway  # noqa: PLC0415 - CLI command body: loaded when it runs

    state_dir, gateway_id = _init_target(args)
    try:
        result = init_gateway(state_dir, gateway_id, force=args.force)
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"gateway {result.gateway_id} provisioned in {result.state_dir}")
    print(f"  identity key      {result.identity_key} (0600)")
    print(f"  identity public   {result.identity_public}")
    print(f"  identity          {result.identity_fingerprint}")
    print(f"  MQTT client key   {result.mqtt_key} (0600)")
    print(f"  MQTT client CSR   {result.csr}")
    print(f"  MQTT key          {result.mqtt_fingerprint}")
    print("next: have the master station's CA sign the CSR, then install the certificate")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Run `sealgw status`."""
    from gateway.daemon.control import control_socket_path, query_status  # noqa: PLC0415 - CLI command body: loaded when it runs

    path = args.socket or control_socket_path(_gateway_table(args.config)[0])
    try:
        status = query_status(path, timeout=args.timeout)
    except GatewayNotRunningError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        print(format_table(status))
    return EXIT_OK


def format_table(status: Mapping[str, Any]) -> str:
    """Two aligned columns; nested objects become dotted keys."""
    rows = list(flatten(status))
    if not rows:
        return "(empty status)"
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def flatten(value: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, display text) pairs in the object's own order."""
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            yield from flatten(item, f"{name}.")
        else:
            yield name, _display(item)


def _display(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _init_target(args: argparse.Namespace) -> tuple[Path, str]:
    """State dir and gateway id from the flags, falling back to the config."""
    if args.state_dir is not None and args.gateway_id is not None:
        return args.state_dir, args.gateway_id
    state_dir, gateway_id = _gateway_table(args.config)
    return args.state_dir or state_dir, args.gateway_id or gateway_id


def _gateway_table(config: Path | None) -> tuple[Path, str]:
    """Validate only the config's [gateway] table.

    The full config may name a certificate that `sealgw init` is about to request, so the
    other sections are not checked here.
    """
    from gateway.config.loader import parse_config  # noqa: PLC0415 - CLI command body: loaded when it runs

    path = config or DEFAULT_CONFIG
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from exc
    section = parse_config({"gateway": table.get("gateway", {})}, base_dir=path.parent).gateway
    return section.state_dir, section.id
