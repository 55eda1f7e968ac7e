"""Play a field worker on the bench: a command line for the simulated handheld.

    python -m firmware_sim.handheld.cli enroll --authority MSDIR --operator op-0042 ...
    python -m firmware_sim.handheld.cli pair --code 12345678 [--gateway-key FINGERPRINT]
    python -m firmware_sim.handheld.cli tickets
    python -m firmware_sim.handheld.cli state SL-0001
    python -m firmware_sim.handheld.cli unseal SL-0001 --work-order WO-2026-0001
    python -m firmware_sim.handheld.cli seal SL-0001 --work-order WO-2026-0001
    python -m firmware_sim.handheld.cli result OP_ID

The handheld's files live in `--dir` (default ./handheld). Each command opens one session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.protocol.handheld import DEFAULT_LISTEN

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DAY = 86400

Action = Callable[[argparse.Namespace], Coroutine[Any, Any, Any]]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run one command, print its result as JSON; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    action: Action | None = getattr(args, "action", None)
    if action is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        result = asyncio.run(action(args))
    except GatewayError as exc:
        code = getattr(exc, "code", "")
        print(f"refused ({code}): {exc}" if code else f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The handheld's argument parser."""
    parser = argparse.ArgumentParser(prog="handheld", description="simulated handheld terminal")
    parser.add_argument("--dir", type=Path, default=Path("handheld"), help="handheld files")
    parser.add_argument("--gateway", help=f"gateway address (default: paired, or {DEFAULT_LISTEN})")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_enroll(sub)
    pair = sub.add_parser("pair", help="pair with the code shown by `sealgw pair`")
    pair.add_argument("--code", required=True, help="the 8-digit code")
    pair.add_argument("--gateway-key", help="gateway key fingerprint shown with the code")
    pair.set_defaults(action=_pair)
    sub.add_parser("tickets", help="list my tickets").set_defaults(action=_tickets)
    state = sub.add_parser("state", help="a seal's state")
    state.add_argument("seal")
    state.set_defaults(action=_state)
    for op in ("unseal", "seal"):
        cmd = sub.add_parser(op, help=f"{op} a seal under a work order")
        cmd.add_argument("seal")
        cmd.add_argument("--work-order", required=True)
        cmd.add_argument("--ticket", help="ticket id (default: found from my tickets)")
        cmd.set_defaults(action=_unseal if op == "unseal" else _seal)
    result = sub.add_parser("result", help="the outcome of an operation")
    result.add_argument("op_id")
    result.set_defaults(action=_result)
    return parser


def _add_enroll(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enroll = sub.add_parser("enroll", help="new device key certified by a master authority")
    enroll.add_argument("--authority", type=Path, required=True, help="master authority dir")
    enroll.add_argument("--operator", required=True)
    enroll.add_argument("--name", required=True)
    enroll.add_argument("--role", action="append", required=True, dest="roles")
    enroll.add_argument("--district", action="append", required=True, dest="districts")
    enroll.add_argument("--days", type=int, default=365, help="validity (default 365)")
    enroll.add_argument("--valid-from", type=int, help="Unix time (default: a day ago)")
    enroll.set_defaults(action=_enroll)


async def _enroll(args: argparse.Namespace) -> dict[str, Any]:
    from firmware_sim.handheld.client import enroll_handheld  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.authority import MasterAuthority  # noqa: PLC0415 - CLI command body: loaded when it runs

    start = args.valid_from if args.valid_from is not None else int(time.time()) - DAY
    enroll_handheld(
        args.dir,
        MasterAuthority.open_or_create(args.authority),
        operator=args.operator,
        name=args.name,
        roles=args.roles,
        districts=args.districts,
        not_before=start,
        not_after=start + args.days * DAY,
    )
    return {"enrolled": args.operator, "dir": str(args.dir)}


async def _pair(args: argparse.Namespace) -> dict[str, Any]:
    from firmware_sim.handheld.client import SimulatedHandheld, load_identity, save_pairing  # noqa: PLC0415 - CLI command body: loaded when it runs
    from gateway.protocol.handheld_crypto import key_fingerprint  # noqa: PLC0415 - CLI command body: loaded when it runs

    address = args.gateway or DEFAULT_LISTEN
    handheld = SimulatedHandheld(load_identity(args.dir))
    paired = await handheld.pair(
        address, args.code.replace(" ", ""), gateway_fingerprint=args.gateway_key
    )
    save_pairing(args.dir, paired, address)
    return {
        "paired": paired.gateway,
        "gateway_key": key_fingerprint(paired.gateway_key),
        "paired_at": paired.paired_at,
    }


async def _tickets(args: argparse.Namespace) -> Any:
    return await _with_session(args, lambda s: s.tickets())


async def _state(args: argparse.Namespace) -> Any:
    return await _with_session(args, lambda s: s.seal_state(args.seal))


async def _unseal(args: argparse.Namespace) -> Any:
    return await _with_session(args, lambda s: s.unseal(args.seal, args.work_order, args.ticket))


async def _seal(args: argparse.Namespace) -> Any:
    return await _with_session(args, lambda s: s.seal(args.seal, args.work_order, args.ticket))


async def _result(args: argparse.Namespace) -> Any:
    return await _with_session(args, lambda s: s.result(args.op_id))


async def _with_session(args: argparse.Namespace, work: Callable[[Any], Any]) -> Any:
    from firmware_sim.handheld.client import SimulatedHandheld, load_identity, load_pairing  # noqa: PLC0415 - CLI command body: loaded when it runs

    paired, address = load_pairing(args.dir)
    handheld = SimulatedHandheld(load_identity(args.dir), paired)
    async with await handheld.open_session(args.gateway or address) as session:
        return await work(session)


if __name__ == "__main__":
    sys.exit(main())
