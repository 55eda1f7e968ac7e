"""`sealgw audit verify FILE`: check a received event trail and name every gap, edit and forgery.

Exit codes (gateway.audit.verify.AuditExit, docs/audit.md section 5): 0 verified, 1 broken,
2 usage or I/O error, 3 unsigned (intact, but not every event is covered by a checkpoint signed
by a given key). `register_audit_command` adds the command to the `sealgw` parser;
`python -m gateway.cli.audit audit verify FILE` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import GatewayError
from gateway.protocol.chain import ProblemKind

__all__ = ["format_report", "main", "register_audit_command"]

EXIT_OK = 0  # verified
EXIT_PROBLEMS = 1  # broken
EXIT_USAGE = 2
EXIT_UNSIGNED = 3
_EPILOG = """exit status:
  0  verified: no problem, and every event is covered by a checkpoint signed by a given key
  1  broken: a gap, an edit, a broken link, a conflict, a bad checkpoint or an unreadable record
  2  usage or I/O error (unreadable file, bad key, SQLite file without an events table)
  3  unsigned: intact, but events after the newest verified checkpoint (or all of them: no
     checkpoint, or no --gateway-key) are not vouched for by the gateway's identity key
see docs/audit.md"""

if TYPE_CHECKING:  # the module itself is imported when the command runs (cryptography is slow)
    from gateway.audit.verify import AuditProblem, AuditReport


def register_audit_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `sealgw audit verify`."""
    audit = subparsers.add_parser("audit", help="audit trail tools (verify a received chain)")
    audit.set_defaults(handler=lambda _args: _usage(audit))
    sub = audit.add_subparsers(title="audit commands", metavar="COMMAND")
    verify = sub.add_parser(
        "verify",
        help="verify an event trail: hash chain and signed checkpoints",
        description="Verify events as received from MQTT (JSON lines, one payload a line, any "
        "order, duplicates allowed) or a master ledger (SQLite with an events table). Names "
        "every gap, edit, broken link, conflict and bad checkpoint, and says how far the trail "
        "is signed. Only a trail whose every event is covered by a checkpoint signed with a "
        "--gateway-key is verified.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("file", type=Path, help="JSON lines of event payloads, or a ledger")
    verify.add_argument(
        "--gateway-key",
        action="append",
        default=[],
        metavar="[GATEWAY=]PEM_OR_HEX",
        help="gateway identity public key (identity.pub, or 64 hex digits); repeatable; "
        "GATEWAY= limits it to one gateway. Without it checkpoints are reported unverified "
        "and the trail can at best be unsigned (exit 3).",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(handler=cmd_audit_verify)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Run `sealgw audit verify`."""
    from gateway.audit.verify import parse_key_args, verify_file  # noqa: PLC0415 - CLI command body: loaded when it runs

    try:
        report = verify_file(args.file, parse_key_args(args.gateway_key))
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"file": str(args.file), **report.to_json()}))
    else:
        print(format_report(report, str(args.file)))
    return int(report.exit_code)


def format_report(report: AuditReport, name: str) -> str:
    """The human-readable report: a summary per gateway, one line per problem, a verdict."""
    lines = [
        f"{name}: {report.source}, {report.records} records, {report.chain.duplicates} duplicates"
    ]
    for problem in (p for p in report.problems if not p.gateway):
        lines.append(f"  {_problem_line(problem)}")
    for gateway in sorted(report.chain.heads):
        lines.extend(_gateway_lines(report, gateway))
    lines.append(_verdict(report))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.cli.audit audit verify ...`, until `sealgw audit` is wired in."""
    parser = argparse.ArgumentParser(prog="sealgw")
    register_audit_command(parser.add_subparsers(title="commands", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        return _usage(parser)
    result: int = args.handler(args)
    return result


# -- helpers ----------------------------------------------------------------------------------


def _gateway_lines(report: AuditReport, gateway: str) -> list[str]:
    summary = report.checkpoints[gateway]
    head = report.chain.heads[gateway]
    lines = [f"gateway {gateway}: {report.chain.events[gateway]} events, head seq {head}"]
    checkpoints = (
        f"  checkpoints: {summary.verified} verified, {summary.bad} bad, "
        f"{summary.unverified} unverified, {summary.unanchored} unanchored"
    )
    if summary.unverified and not report.keys_given:
        checkpoints += " (no --gateway-key given)"
    lines.append(checkpoints)
    if report.keys_given:
        lines.append(_signed_line(summary.signed_through, head))
    if summary.unsigned:
        lines.append(
            f"  unsigned: {summary.unsigned} events from seq {summary.unsigned_from} on are not "
            "covered by a verified checkpoint"
        )
    lines.extend(
        f"  unverifiable: eviction notice seq {w.seq} excuses seq {w.first}-{w.last} without"
        " exact runs"
        for w in report.chain.weak
        if w.gateway == gateway
    )
    lines.extend(f"  {_problem_line(p)}" for p in report.problems if p.gateway == gateway)
    return lines


def _signed_line(signed_through: int | None, head: int) -> str:
    if signed_through is None:
        return "  signed: nothing (no verified checkpoint)"
    return f"  signed: newest verified checkpoint covers seq {signed_through} (head {head})"


def _problem_line(problem: AuditProblem) -> str:
    label = problem.kind.name.replace("_", " ")
    if problem.kind is ProblemKind.GAP:
        count = problem.last_seq - problem.seq + 1
        span = f"seq {problem.seq}" if count == 1 else f"seq {problem.seq}-{problem.last_seq}"
        return f"{label:<15} {span} ({count} missing)"
    if problem.kind is ProblemKind.UNREADABLE:
        return f"{label:<15} {problem.detail}"
    return f"{label:<15} seq {problem.seq}: {problem.detail}"


def _verdict(report: AuditReport) -> str:
    outcome = report.outcome
    if outcome == "verified":
        return "VERIFIED: chain intact, every event covered by a verified checkpoint"
    if outcome == "unsigned":
        why = "" if report.keys_given else " (no --gateway-key given)"
        if report.chain.weak and report.keys_given:
            why = " (old eviction notices without exact runs)"
        return f"UNSIGNED: chain intact, but not every event is signed{why}"
    count = len(report.problems)
    return f"BROKEN: {count} problem{'s' if count != 1 else ''} found"


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
