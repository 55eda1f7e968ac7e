"""`sealgw probe NAME`: measure this box, one component at a time (docs/probe.md).

Each probe prints its figures as one JSON object with `--json` (the bench reads that), or as
`name: value` lines for a person. `locks` prints a JSON line per phase as it goes. Probes work
in a scratch directory (`--work-dir`, a temporary one by default) and never touch the state of
a gateway on the same box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.errors import ExitCode

__all__ = ["register_probe_command"]

SubParsers = argparse._SubParsersAction
Probe = Callable[[argparse.Namespace, Path], dict[str, Any]]


def register_probe_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add `sealgw probe` and its probes."""
    probe = commands.add_parser(
        "probe",
        help="measure this box: the gateway's own components, timed (docs/probe.md)",
        description="Time the gateway's components on this machine. Each probe prints one "
        "JSON object (--json) or name: value lines; see docs/probe.md for every figure.",
    )
    probe.set_defaults(handler=lambda _args: _usage(probe))
    probes = probe.add_subparsers(title="probes", metavar="PROBE")
    _add_authz(probes)
    _add_ingest(probes)
    _add_buffer(probes)
    _add_drain(probes)
    _add_modbus(probes)
    _add_locks(probes)


def _common(parser: argparse.ArgumentParser, run: Probe, *, work: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    if work:
        parser.add_argument(
            "--work-dir", type=Path, help="scratch directory (default: a temporary one)"
        )
    name = parser.prog.split()[-1]
    parser.set_defaults(handler=lambda args: _run(args, name, run))


# -- the probes ---------------------------------------------------------------------------------


def _add_authz(probes: SubParsers[argparse.ArgumentParser]) -> None:
    authz = probes.add_parser(
        "authz", help="policy decisions, ticket and checkpoint signatures, audit"
    )
    authz.add_argument("--quick", action="store_true", help="small sizes (3 rounds of 200)")
    authz.add_argument("--rounds", type=int, help="rounds (median of them; default 7)")
    authz.add_argument("--batch", type=int, help="calls per round (default 2000)")
    authz.add_argument("--chain", type=int, help="events in the audited chain (default 20000)")
    _common(authz, _authz, work=False)


def _authz(args: argparse.Namespace, _work: Path) -> dict[str, Any]:
    from gateway.probe.authz import AuthzSizes, probe_authz  # noqa: PLC0415 - CLI command body: loaded when it runs

    sizes = AuthzSizes.quick() if args.quick else AuthzSizes()
    sizes = AuthzSizes(
        rounds=args.rounds or sizes.rounds,
        batch=args.batch or sizes.batch,
        chain=args.chain or sizes.chain,
    )
    return probe_authz(sizes)


def _add_ingest(probes: SubParsers[argparse.ArgumentParser]) -> None:
    ingest = probes.add_parser(
        "ingest", help="producers awaiting their durable commit: events/s, p99"
    )
    ingest.add_argument("--events", type=int, default=100_000)
    ingest.add_argument("--producers", type=int, default=256)
    ingest.add_argument("--synchronous", choices=("full", "normal"), default="full")
    _common(ingest, _ingest)


def _ingest(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from gateway.probe.buffer import probe_ingest  # noqa: PLC0415 - CLI command body: loaded when it runs

    return asyncio.run(probe_ingest(work, args.events, args.producers, args.synchronous))


def _add_buffer(probes: SubParsers[argparse.ArgumentParser]) -> None:
    buffer = probes.add_parser("buffer", help="the buffer's burst, paced latency, reopen and drain")
    buffer.add_argument("--events", type=int, default=100_000, help="burst size")
    buffer.add_argument("--rate", type=int, default=20_000, help="paced submits per second")
    buffer.add_argument("--seconds", type=float, default=3.0, help="length of the paced load")
    buffer.add_argument("--synchronous", choices=("full", "normal"), default="full")
    _common(buffer, _buffer)


def _buffer(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from gateway.probe.buffer import BufferCycle, probe_buffer  # noqa: PLC0415 - CLI command body: loaded when it runs

    cycle = BufferCycle(args.events, args.rate, args.seconds, synchronous=args.synchronous)
    return asyncio.run(probe_buffer(work, cycle))


def _add_drain(probes: SubParsers[argparse.ArgumentParser]) -> None:
    drain = probes.add_parser("drain", help="the uplink emptying a backlog to a broker: events/s")
    drain.add_argument("--broker", required=True, help="mqtt://HOST:PORT of a test broker")
    source = drain.add_mutually_exclusive_group()
    source.add_argument("--events", type=int, default=100_000, help="synthetic meter readings")
    source.add_argument("--drafts", type=Path, help="JSON lines of event drafts (docs/probe.md)")
    drain.add_argument("--encoding", choices=("json", "batch"), default="json")
    drain.add_argument("--max-inflight", type=int, default=100)
    drain.add_argument(
        "--batch-workers",
        type=int,
        default=None,
        help="batch encoder worker processes (default: the [uplink] default; 0: in process)",
    )
    drain.add_argument("--gateway-id", default="gw-probe", help="publish under this gateway id")
    drain.add_argument("--client-id", default="", help="MQTT client id (default: ID-probe)")
    drain.add_argument(
        "--paced", action="store_true", help="at the default [uplink] drain rate (else unbounded)"
    )
    _common(drain, _drain)


def _drain(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from gateway.probe.buffer import synthetic_draft  # noqa: PLC0415 - CLI command body: loaded when it runs
    from gateway.probe.drain import DrainSettings, probe_drain  # noqa: PLC0415 - CLI command body: loaded when it runs
    from gateway.protocol.draft_lines import read_draft_lines  # noqa: PLC0415 - CLI command body: loaded when it runs

    if args.drafts is not None:
        with args.drafts.open("rb") as lines:
            drafts = list(read_draft_lines(lines))
    else:
        drafts = [synthetic_draft(n) for n in range(args.events)]
    settings = DrainSettings(
        args.broker,
        args.encoding,
        args.max_inflight,
        args.gateway_id,
        args.client_id,
        paced=args.paced,
        batch_workers=args.batch_workers,
    )
    return asyncio.run(probe_drain(work, drafts, settings))


def _add_modbus(probes: SubParsers[argparse.ArgumentParser]) -> None:
    modbus = probes.add_parser("modbus", help="a profile's read plan: requests, bytes, values/s")
    modbus.add_argument("--profile", required=True, help="profile name, e.g. dtsu666")
    modbus.add_argument("--profiles-dir", type=Path, default=Path("/etc/sealgw/profiles"))
    modbus.add_argument(
        "--plan", choices=("configured", "every-gap", "per-value"), default="configured"
    )
    modbus.add_argument("--max-gap", type=int, help="the plan's max_gap (default: the profile's)")
    modbus.add_argument("--transport", help="read a meter: modbus-tcp://, rtu-over-tcp://, rtu://")
    modbus.add_argument("--unit", type=int, default=1)
    modbus.add_argument("--warmup", type=int, default=1, help="untimed cycles first (connect)")
    modbus.add_argument("--cycles", type=int, default=1000, help="timed cycles")
    _common(modbus, _modbus, work=False)


def _modbus(args: argparse.Namespace, _work: Path) -> dict[str, Any]:
    from gateway.probe.modbus import ModbusProbe, probe_modbus  # noqa: PLC0415 - CLI command body: loaded when it runs

    probe = ModbusProbe(
        args.profiles_dir, args.profile, args.plan, args.max_gap, args.transport, args.unit,
        args.warmup, args.cycles,
    )  # fmt: skip
    return asyncio.run(probe_modbus(probe))


def _add_locks(probes: SubParsers[argparse.ArgumentParser]) -> None:
    locks = probes.add_parser("locks", help="the config's lock service: boot, sweep, operations")
    locks.add_argument("-c", "--config", type=Path, required=True, help="gateway config (TOML)")
    locks.add_argument("--ops", type=int, default=40, help="operations (needs a ticket)")
    locks.add_argument("--ticket", type=Path, help="a ticket for the probe's credential key")
    locks.add_argument("--certificate", type=Path, help="the ticket operator's certificate")
    locks.add_argument(
        "--documents-on-stdin",
        action="store_true",
        help='read {"ticket": ..., "certificate": ...} as one line on stdin after "booted"',
    )
    locks.add_argument(
        "--handheld", action="store_true", help="then serve handhelds until stdin says done"
    )
    _common(locks, _locks)


def _locks(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from gateway.probe.locks import Documents, LocksProbe, probe_locks  # noqa: PLC0415 - CLI command body: loaded when it runs

    documents = Documents(args.ticket, args.certificate, args.documents_on_stdin)
    probe = LocksProbe(args.config, work, args.ops, documents, args.handheld)
    return asyncio.run(probe_locks(probe, lambda line: _print_line(line, as_json=args.json)))


# -- running and printing -----------------------------------------------------------------------


def _run(args: argparse.Namespace, name: str, probe: Probe) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    try:
        with _work_dir(getattr(args, "work_dir", None)) as work:
            figures = probe(args, work)
    except OSError as exc:  # a file named on the command line, the scratch directory
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    result = {"probe": name, **_machine(), **figures}
    _print_line(result, as_json=args.json)
    return ExitCode.OK


@contextlib.contextmanager
def _work_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="sealgw-probe-") as tmp:
        yield Path(tmp)


def _machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "cpus": os.cpu_count()}


def _print_line(obj: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj), flush=True)
        return
    for key, value in obj.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    print(flush=True)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return ExitCode.USAGE
