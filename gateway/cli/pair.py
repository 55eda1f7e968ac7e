"""`sealgw pair`: ask the running daemon for a one-time handheld pairing code and show it.

The code comes over the local control socket (command `pair`), so only someone at the
gateway's console (root or the sealgw user) sees it. It is printed to the terminal only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli.admin import _gateway_table
from gateway.errors import GatewayError

__all__ = ["format_code", "register_pair_command"]

EXIT_OK = 0
EXIT_FAILURE = 1


def register_pair_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `sealgw pair`: a fresh pairing code for a handheld, with its expiry."""
    pair = subparsers.add_parser(
        "pair",
        help="show a one-time code to pair a handheld terminal",
        description="Ask the running gateway for a fresh pairing code (replacing any earlier "
        "one). Enter it on the handheld before it expires; it works once.",
    )
    where = pair.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", type=Path, help="gateway config")
    where.add_argument("--socket", type=Path, help="control socket path")
    pair.add_argument("--json", action="store_true", help="print the raw answer object")
    pair.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    pair.set_defaults(handler=cmd_pair)


def cmd_pair(args: argparse.Namespace) -> int:
    """Run `sealgw pair`."""
    from gateway.daemon.control import control_socket_path, request  # noqa: PLC0415 - CLI command body: loaded when it runs

    path = args.socket or control_socket_path(_gateway_table(args.config)[0])
    try:
        answer = request(path, "pair", timeout=args.timeout)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(format_code(answer))
    return EXIT_OK


def format_code(answer: dict[str, Any]) -> str:
    """The console text: the code in two groups, its expiry and the gateway to check."""
    code = str(answer.get("code", ""))
    grouped = f"{code[:4]} {code[4:]}" if len(code) == 8 else code
    return "\n".join(
        [
            f"pairing code   {grouped}",
            f"valid until    {answer.get('expires_at')} ({answer.get('ttl_s')} s, one use, "
            f"{answer.get('max_attempts')} wrong tries)",
            f"gateway        {answer.get('gateway')} (key {answer.get('gateway_key')})",
            "check on the handheld that the gateway key matches",
        ]
    )
