"""`sealgw master ...`: the reference master station's command line.

Registered through the `sealgw.commands` entry point (master_station/command.py); also runnable
alone as `python -m master_station ...`. Key material lives in the master directory (0700, files
0600) and is never printed. Exit codes: 0 ok, 1 failure (or a gateway refused), 2 usage or config.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from gateway.errors import ConfigError, ExitCode, GatewayError, exit_code_for

if TYPE_CHECKING:
    from master_station.authority import MasterAuthority
    from master_station.command_client import CommandReply
    from master_station.listener import ListenerOptions

__all__ = ["main", "register_master_command"]

_log = logging.getLogger(__name__)

PASSWORD_ENV = "SEALGW_MQTT_PASSWORD"  # noqa: S105 (the variable's name, not a password)
DEFAULT_LEDGER = "master-ledger.db"
SEALS_FILE = "seals.json"
TICKETS_INDEX = "tickets.jsonl"
_HEX32 = re.compile(r"^[0-9a-fA-F]{64}$")
_LOCK_ID = re.compile(r"^[0-9a-fA-F]{16}$")

EXIT_OK = ExitCode.OK
EXIT_FAILURE = ExitCode.FAILURE
T = TypeVar("T")
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register_master_command(
    commands: SubParsers, *, help_line: str = "the reference master station"
) -> None:
    """Add `master` and its subcommands to the `sealgw` parser."""
    master = commands.add_parser("master", help=help_line)
    sub = master.add_subparsers(title="master commands", metavar="COMMAND")
    _add_init(sub)
    _add_listen(sub)
    _add_issue_ticket(sub)
    _add_revoke(sub)
    _add_enroll(sub)
    _add_provision(sub)
    _add_enroll_gateway(sub)
    _add_kpi(sub)
    _add_verify(sub)
    from master_station.console.cli import register_console_commands  # noqa: PLC0415 - argparse only; the console loads when `serve` runs

    register_console_commands(
        sub,
        default_ledger=DEFAULT_LEDGER,
        add_broker=lambda cmd: _add_broker_options(cmd, required=False),
        options=_listener_options,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m master_station ...`: the same commands without the rest of sealgw."""
    parser = argparse.ArgumentParser(prog="sealgw-master")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    register_master_command(commands)
    args = parser.parse_args(["master", *(sys.argv[1:] if argv is None else argv)])
    return run_handler(parser, args)


def run_handler(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the chosen subcommand (help without one); gateway errors become exit codes."""
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        return handler(args)
    except GatewayError as exc:
        label = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"{label}: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


# -- parsers ---------------------------------------------------------------------------------


def _add_broker_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", required=required, help="mqtt://host:port or mqtts://...")
    group.add_argument("--root", default="sealgw/v1", help="topic root (default sealgw/v1)")
    group.add_argument("--username", help=f"MQTT user; the password is read from ${PASSWORD_ENV}")
    group.add_argument("--ca-file", type=Path, help="CA bundle for mqtts://")
    group.add_argument("--cert-file", type=Path, help="client certificate (PEM)")
    group.add_argument("--key-file", type=Path, help="client key (PEM)")
    group.add_argument("--timeout", type=float, default=10.0, help="reply timeout, s")


def _add_master_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--master-dir", type=Path, required=True, help="master key directory")


def _add_init(sub: SubParsers) -> None:
    cmd = sub.add_parser("init", help="create a master directory with a new signing key")
    _add_master_dir(cmd)
    cmd.set_defaults(handler=_cmd_init)


def _add_listen(sub: SubParsers) -> None:
    cmd = sub.add_parser("listen", help="receive gateway events into the ledger")
    _add_broker_options(cmd, required=True)
    cmd.add_argument("--ledger", default=DEFAULT_LEDGER, help="SQLite path or postgresql:// DSN")
    cmd.add_argument("--gateway", action="append", help="gateway id (repeat); default: all")
    cmd.add_argument("--share-group", help="split events with other masters ($share/GROUP/)")
    cmd.add_argument("--client-id", default="", help="stable MQTT client id (keeps the session)")
    cmd.add_argument("--session-expiry", type=int, default=3600, help="session expiry, s")
    cmd.add_argument("--duration", type=float, help="stop after S seconds (default: run)")
    heal = cmd.add_mutually_exclusive_group()
    heal.add_argument("--heal", dest="heal", action="store_true", default=None,
                      help="ask gateways to resend missing events (cmd/resend)")  # fmt: skip
    heal.add_argument("--no-heal", dest="heal", action="store_false", help="never ask")
    cmd.add_argument("--gap-grace", type=float, default=10.0, help="s before a gap is asked for")
    cmd.add_argument("--resend-interval", type=float, default=30.0, help="s between asks")
    cmd.add_argument("--master-dir", type=Path, help="sign cmd/resend with this master's key, "
                     "and verify lock entries and checkpoints with its lock keys and enrolled "
                     "gateways (without it, neither is verified)")  # fmt: skip
    cmd.add_argument("--json", action="store_true", help="print the final counters as JSON")
    cmd.set_defaults(handler=_cmd_listen)


def _add_issue_ticket(sub: SubParsers) -> None:
    cmd = sub.add_parser("issue-ticket", help="issue a signed ticket for seal operations")
    _add_master_dir(cmd)
    cmd.add_argument("--gateway", required=True)
    cmd.add_argument("--gateway-key", required=True, help="X25519 public key: hex, or a file")
    cmd.add_argument("--work-order", required=True)
    cmd.add_argument("--flow", required=True)
    cmd.add_argument("--operator", required=True)
    cmd.add_argument("--role", required=True)
    cmd.add_argument(
        "--seal",
        action="append",
        required=True,
        help="SEAL or SEAL:LOCKIDHEX (repeat); a bare SEAL uses provision-lock's map",
    )
    cmd.add_argument("--ops", default="unseal,seal", help="comma-separated (default unseal,seal)")
    cmd.add_argument("--valid-minutes", type=int, default=240)
    cmd.add_argument("--max-uses", type=int, default=4)
    cmd.add_argument("--out", type=Path, help="write the signed document here (0600)")
    cmd.add_argument("--ledger", help="also record the ticket's flow in this ledger (KPIs)")
    _add_publish(cmd)
    cmd.set_defaults(handler=_cmd_issue_ticket)


def _add_revoke(sub: SubParsers) -> None:
    cmd = sub.add_parser("revoke", help="issue the next revocation list")
    _add_master_dir(cmd)
    cmd.add_argument("--ticket", action="append", default=[], help="ticket id (repeat)")
    cmd.add_argument("--operator", action="append", default=[], help="operator id (repeat)")
    cmd.add_argument("--certificate", action="append", default=[], help="serial (repeat)")
    cmd.add_argument("--gateway", action="append", default=[], help="publish to (repeat)")
    cmd.add_argument("--out", type=Path, help="write the signed list here")
    _add_publish(cmd)
    cmd.set_defaults(handler=_cmd_revoke)


def _add_enroll(sub: SubParsers) -> None:
    cmd = sub.add_parser("enroll-operator", help="issue an operator certificate")
    _add_master_dir(cmd)
    cmd.add_argument("--operator", required=True)
    cmd.add_argument("--name", required=True)
    cmd.add_argument("--role", action="append", required=True, help="role (repeat)")
    cmd.add_argument("--district", action="append", required=True, help="district (repeat)")
    cmd.add_argument("--device-key", required=True, help="handheld Ed25519 public key, hex")
    cmd.add_argument("--valid-days", type=int, default=365)
    cmd.add_argument("--out", type=Path, required=True, help="write the certificate here")
    cmd.add_argument("--gateway", action="append", default=[], help="publish to (repeat)")
    _add_publish(cmd)
    cmd.set_defaults(handler=_cmd_enroll)


def _add_provision(sub: SubParsers) -> None:
    cmd = sub.add_parser("provision-lock", help="create K_lock for a new lock (never printed)")
    _add_master_dir(cmd)
    cmd.add_argument("--lock-id", required=True, help="16 hex digits")
    cmd.add_argument("--seal", help="the seal id this lock serves (for issue-ticket)")
    cmd.set_defaults(handler=_cmd_provision)


def _add_enroll_gateway(sub: SubParsers) -> None:
    cmd = sub.add_parser("enroll-gateway", help="trust a gateway's identity key (checkpoints)")
    _add_master_dir(cmd)
    cmd.add_argument("--gateway", required=True, help="gateway id")
    cmd.add_argument("--identity", type=Path, help="its identity.pub (PEM)")
    cmd.add_argument("--credential-key", help="its X25519 credential public key: hex or a file"
                     " (the console encrypts tickets to it)")  # fmt: skip
    cmd.set_defaults(handler=_cmd_enroll_gateway)


def _add_kpi(sub: SubParsers) -> None:
    cmd = sub.add_parser("kpi", help="KPIs per gateway and district")
    cmd.add_argument("--ledger", default=DEFAULT_LEDGER, help="SQLite path or postgresql:// DSN")
    cmd.add_argument("--day", help="YYYY-MM-DD (UTC); default: all time, chart of the last day")
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cmd.add_argument("--html", type=Path, help="also write a self-contained HTML day chart")
    cmd.set_defaults(handler=_cmd_kpi)


def _add_verify(sub: SubParsers) -> None:
    cmd = sub.add_parser("verify", help="check every gateway's chain in the ledger")
    cmd.add_argument("--ledger", default=DEFAULT_LEDGER, help="SQLite path or postgresql:// DSN")
    cmd.add_argument("--full", action="store_true", help="re-verify from seq 1 (verify_chain)")
    cmd.set_defaults(handler=_cmd_verify)


def _add_publish(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--publish", action="store_true", help="send it to the gateway(s) and wait")
    _add_broker_options(cmd, required=False)


# -- handlers --------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    from master_station.authority import SIGNING_KEY_FILE, MasterAuthority  # noqa: PLC0415 - CLI command body: loaded when it runs

    if (args.master_dir / SIGNING_KEY_FILE).exists():
        raise ConfigError("master-dir", f"{args.master_dir} already holds a signing key")
    authority = MasterAuthority.create(args.master_dir)
    print(f"master directory: {args.master_dir}")
    print(f"master public key (gateways trust this): {authority.public_key_bytes.hex()}")
    return EXIT_OK


def _cmd_listen(args: argparse.Namespace) -> int:
    from master_station.ledger.factory import open_ledger  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.ledger.recent import RecentlyVerified  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.ledger.rollup import rollups_for  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.listener import MasterListener  # noqa: PLC0415 - CLI command body: loaded when it runs

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    options = _listener_options(args)
    authority = None
    if args.master_dir is not None:  # gateways holding a master key accept signed resends only
        authority = _authority(args.master_dir)
        options = dataclasses.replace(options, signer=authority.sign_command)
    else:
        _log.warning("no --master-dir: lock log entries and checkpoint signatures not verified")
    recent = RecentlyVerified()  # what the writer checked, for the chain keeper's walk
    ledger = open_ledger(args.ledger, trust=authority, recent=recent)
    chain_ledger = open_ledger(args.ledger, trust=authority, recent=recent)  # the keeper's
    try:
        listener = MasterListener(
            options, ledger, chain_ledger=chain_ledger, observer=rollups_for(ledger)
        )
        listener.start(args.timeout)
        print(f"listening as {listener.client_id} on {options.broker_url}"
              f" (ledger {ledger.location}, healing {'on' if listener.healing else 'off'})",
              flush=True)  # fmt: skip
        _wait(args.duration)
        listener.stop()
        _print_counters(listener.stats.to_json(), as_json=args.json)
    finally:
        ledger.close()
        chain_ledger.close()
    return EXIT_OK


def _cmd_issue_ticket(args: argparse.Namespace) -> int:
    from gateway.protocol.tickets import encode_ticket  # noqa: PLC0415 - CLI command body: loaded when it runs

    authority = _authority(args.master_dir)
    now = int(time.time())
    gateway_key = _key_arg(args.gateway_key, "gateway-key")
    seals = _seal_args(args.master_dir, args.seal)
    ticket = _checked(lambda: authority.issue_ticket(
        work_order=args.work_order, flow=args.flow, operator=args.operator, role=args.role,
        gateway=args.gateway, gateway_key=gateway_key, seals=seals,
        ops=[op.strip() for op in args.ops.split(",") if op.strip()],
        not_before=now, not_after=now + 60 * args.valid_minutes, max_uses=args.max_uses,
    ))  # fmt: skip
    _index_ticket(args, ticket)
    print(f"ticket {ticket.ticket_id}: {ticket.flow} {ticket.work_order} for {ticket.operator}"
          f" on {ticket.gateway}, seals {','.join(ticket.seal_ids)}", file=sys.stderr)  # fmt: skip
    return _deliver(args, encode_ticket(ticket), "ticket", [args.gateway])


def _cmd_revoke(args: argparse.Namespace) -> int:
    from gateway.protocol.certs import encode_revocations  # noqa: PLC0415 - CLI command body: loaded when it runs

    if not (args.ticket or args.operator or args.certificate):
        raise ConfigError("revoke", "name at least one --ticket, --operator or --certificate")
    authority = _authority(args.master_dir)
    revocations = _checked(lambda: authority.revoke(
        tickets=args.ticket, operators=args.operator, certificates=args.certificate))  # fmt: skip
    print(f"revocation list {revocations.serial}: {len(revocations.tickets)} tickets,"
          f" {len(revocations.operators)} operators, {len(revocations.certificates)}"
          " certificates", file=sys.stderr)  # fmt: skip
    return _deliver(args, encode_revocations(revocations), "revoke", args.gateway)


def _cmd_enroll(args: argparse.Namespace) -> int:
    from gateway.protocol.certs import encode_certificate  # noqa: PLC0415 - CLI command body: loaded when it runs

    authority = _authority(args.master_dir)
    now = int(time.time())
    cert = _checked(lambda: authority.enroll_operator(
        operator=args.operator, name=args.name, roles=args.role, districts=args.district,
        device_key=_key_arg(args.device_key, "device-key"), not_before=now,
        not_after=now + 86400 * args.valid_days))  # fmt: skip
    print(f"certificate {cert.serial} for {cert.operator} ({','.join(cert.roles)})",
          file=sys.stderr)  # fmt: skip
    return _deliver(args, encode_certificate(cert), "cert", args.gateway)


def _cmd_provision(args: argparse.Namespace) -> int:
    from master_station.authority import LOCKS_DIR  # noqa: PLC0415 - CLI command body: loaded when it runs

    if not _LOCK_ID.match(args.lock_id):
        raise ConfigError("lock-id", "a lock id is 16 hex digits")
    authority = _authority(args.master_dir)
    lock_id = bytes.fromhex(args.lock_id)
    path = args.master_dir / LOCKS_DIR / f"{lock_id.hex()}.key"
    if path.exists():
        raise ConfigError("lock-id", f"lock {lock_id.hex()} is already provisioned ({path})")
    authority.provision_lock(lock_id)
    if args.seal:
        _record_seal(args.master_dir, args.seal, lock_id.hex())
    print(f"lock id: {lock_id.hex()}")
    print(f"seal: {args.seal or '-'}")
    print(f"key file: {path} (mode 0600; program it into the lock, never copy it elsewhere)")
    print(f"master public key: {authority.public_key_bytes.hex()}")
    return EXIT_OK


def _cmd_enroll_gateway(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415 - CLI command body: loaded when it runs
    from cryptography.hazmat.primitives.serialization import load_pem_public_key  # noqa: PLC0415 - CLI command body: loaded when it runs

    from gateway.protocol.checkpoint import public_key_fingerprint  # noqa: PLC0415 - CLI command body: loaded when it runs

    if args.identity is None and args.credential_key is None:
        raise ConfigError("identity", "give --identity, --credential-key or both")
    authority = _authority(args.master_dir)
    if args.credential_key is not None:
        credential = _key_arg(args.credential_key, "credential-key")
        path = _checked(lambda: authority.set_gateway_credential(args.gateway, credential))
        print(f"gateway {args.gateway}: credential key {credential.hex()} recorded ({path})")
    if args.identity is None:
        return EXIT_OK
    try:
        key = load_pem_public_key(args.identity.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError("identity", f"{args.identity}: not a readable PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("identity", f"{args.identity} is not an Ed25519 public key")
    path = _checked(lambda: authority.enroll_gateway(args.gateway, key))
    print(f"gateway {args.gateway}: identity {public_key_fingerprint(key)} enrolled ({path})")
    return EXIT_OK


def _cmd_kpi(args: argparse.Namespace) -> int:
    from master_station.kpi.chart import load_day_chart, render_html  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.kpi.report import compute_kpis, format_table, load_inputs  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.ledger.factory import open_ledger  # noqa: PLC0415 - CLI command body: loaded when it runs

    day = _day_arg(args.day)
    ledger = open_ledger(args.ledger)
    try:
        report = compute_kpis(load_inputs(ledger, day=day))
        if args.html is not None:
            chart_day = day or _newest_day(ledger.newest_ts())
            args.html.write_text(render_html(report, load_day_chart(ledger, chart_day)))
    finally:
        ledger.close()
    print(json.dumps(report.to_json(), indent=2) if args.json else format_table(report))
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from master_station.ledger.factory import open_ledger  # noqa: PLC0415 - CLI command body: loaded when it runs

    ledger = open_ledger(args.ledger)
    try:
        reports = [ledger.verify(gw, full=args.full) for gw in ledger.gateways()]
    finally:
        ledger.close()
    print(json.dumps([r.to_json() for r in reports], indent=2))
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILURE


# -- helpers ---------------------------------------------------------------------------------


def _listener_options(args: argparse.Namespace) -> ListenerOptions:
    from master_station.listener import ListenerOptions  # noqa: PLC0415 - CLI command body: loaded when it runs

    return ListenerOptions(
        broker_url=args.broker or "",
        topic_root=args.root,
        gateways=tuple(getattr(args, "gateway", None) or ("+",)),
        share_group=getattr(args, "share_group", None),
        client_id=getattr(args, "client_id", ""),
        username=args.username,
        password=os.environ.get(PASSWORD_ENV) if args.username else None,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        session_expiry_s=getattr(args, "session_expiry", 3600),
        heal=getattr(args, "heal", None),
        gap_grace_s=getattr(args, "gap_grace", 10.0),
        resend_interval_s=getattr(args, "resend_interval", 30.0),
    )


def _authority(directory: Path) -> MasterAuthority:
    from master_station.authority import SIGNING_KEY_FILE, MasterAuthority  # noqa: PLC0415 - CLI command body: loaded when it runs

    if not (directory / SIGNING_KEY_FILE).exists():
        raise ConfigError("master-dir", f"no master key in {directory}: run `sealgw master init`")
    return MasterAuthority.open(directory)


def _checked(make: Callable[[], T]) -> T:
    """Run an issuing step; malformed inputs (ValueError) become a usage error."""
    try:
        return make()
    except GatewayError:
        raise
    except ValueError as exc:
        raise ConfigError("", str(exc)) from None


def _deliver(args: argparse.Namespace, document: bytes, command: str, gateways: list[str]) -> int:
    if args.out is not None:
        _write_private(args.out, document)
        print(f"wrote {args.out}", file=sys.stderr)
    elif not args.publish:
        sys.stdout.write(document.decode() + "\n")
    if not args.publish:
        return EXIT_OK
    if not args.broker or not gateways:
        raise ConfigError("publish", "--publish needs --broker and a --gateway")
    body = {"document": json.loads(document)}
    replies = [_send(args, gw, command, body) for gw in gateways]
    return EXIT_OK if all(reply.ok for reply in replies) else EXIT_FAILURE


def _send(args: argparse.Namespace, gateway: str, command: str, body: Any) -> CommandReply:
    from master_station.command_client import send_command  # noqa: PLC0415 - CLI command body: loaded when it runs

    reply = send_command(_listener_options(args), gateway, command, body, timeout=args.timeout)
    print(f"{gateway}: {json.dumps(dict(reply.body), sort_keys=True)}")
    return reply


def _key_arg(value: str, name: str) -> bytes:
    """32 bytes from hex, unpadded base64url, or a file holding either or the raw bytes."""
    text = value.strip()
    path = Path(text)
    if not _HEX32.match(text) and path.is_file():
        raw = path.read_bytes()
        if len(raw) == 32:
            return raw
        text = raw.decode("ascii", "replace").strip()
    if _HEX32.match(text):
        return bytes.fromhex(text)
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 32:
        raise ConfigError(name, "expected 32 bytes: 64 hex digits, base64url, or a key file")
    return decoded


def _seal_args(master_dir: Path, values: Sequence[str]) -> list[tuple[str, bytes]]:
    known = _read_seals(master_dir)
    seals = []
    for value in values:
        seal, _, lock = value.partition(":")
        lock = lock or known.get(seal, "")
        if not _LOCK_ID.match(lock):
            raise ConfigError("seal", f"{seal}: give SEAL:LOCKIDHEX or provision-lock --seal first")
        seals.append((seal, bytes.fromhex(lock)))
    return seals


def _read_seals(master_dir: Path) -> dict[str, str]:
    path = master_dir / SEALS_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_seal(master_dir: Path, seal: str, lock_hex: str) -> None:
    seals = _read_seals(master_dir)
    seals[seal] = lock_hex
    _write_private(master_dir / SEALS_FILE, json.dumps(seals, sort_keys=True).encode())


def _index_ticket(args: argparse.Namespace, ticket: Any) -> None:
    """Remember the ticket's flow (operations per flow need it): master dir, and a ledger."""
    from master_station.ledger.factory import open_ledger  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.ledger.models import TicketRecord  # noqa: PLC0415 - CLI command body: loaded when it runs

    record = TicketRecord(
        ticket.ticket_id, ticket.gateway, ticket.flow, ticket.work_order, ticket.operator,
        ticket.role, ticket.not_before, ticket.not_after, ticket.issued_at,
    )  # fmt: skip
    line = json.dumps(dataclasses.asdict(record), sort_keys=True)
    fd = os.open(args.master_dir / TICKETS_INDEX, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(line + "\n")
    if args.ledger:
        ledger = open_ledger(args.ledger)
        try:
            ledger.record_ticket(record)
        finally:
            ledger.close()


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _day_arg(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError("day", f"{value!r} is not YYYY-MM-DD") from None


def _newest_day(ts: str | None) -> date:
    if ts is None:
        return datetime.now(UTC).date()
    return date.fromisoformat(ts[:10])


def _wait(duration: float | None) -> None:
    """Block until the duration passes, or SIGINT/SIGTERM."""
    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait(duration)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_counters(counters: dict[str, int], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(counters, sort_keys=True))
    else:
        print(" ".join(f"{name}={value}" for name, value in counters.items()))
