"""Seal bench: ATT round trips per operation, operation latency and sweep rate on the virtual radio.

Each round builds a fresh radio in this process (a LockWorld of locks on a bumble LocalLink, the
gateway's controller served over TCP HCI, MasterAuthority keys) and runs the gateway from
outside: `sealgw probe locks` (gateway/probe/locks.py, docs/probe.md) in a child process, with
the daemon's own lock service, buffer, ticket store and handheld service built from a gateway
config, `max_connections = 5`. The probe waits for the boot reconciliation of every lock, takes
a ticket the bench's master issues for its credential key, then measures:

- sweep: the scheduler runs what a background reconciliation runs (connect, read the verified
  state, LOG_FETCH, disconnect) for every lock at once; `locks_swept_per_min` extrapolates it.
  The peak of simultaneous LE links is sampled on the wire and must stay within the budget;
- ops: alternating unseal/seal on a few locks, one at a time, each run the daemon's way
  (`SealOperations.execute`, then `wait` for the settled outcome) and timed from the call until
  the outcome is settled (its event is then durably committed). The in-session
  part is the scheduler action (link up and subscribed, until the disconnect starts);
- handheld over BLE (last, after the lock figures): a simulated handheld on the same radio
  pairs with the gateway's handheld GATT service and times `seal_state` requests in one session
  (`handheld_ble_request_p50_ms`, `_p95_ms`), from the write of a request's first chunk until
  its decrypted answer;
- round trips: counted on the wire by `bench.att_tap`, not inferred, in the windows the probe
  reports on the shared monotonic clock. An ATT round trip is a run of gateway PDUs answered by
  the lock. The seal operation itself is CHALLENGE_REQUEST and COMMAND; `execute` then fetches
  the log entry the lock wrote on the same link (LOG_FETCH).

Every figure is the median over rounds; per-op figures are medians or percentiles over ops.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.att_tap import (
    AttPdu,
    AttTap,
    SealHandles,
    connections,
    exchanges,
    seal_handles,
    split_setup,
    turns,
)
from bench.probes import ProbeSession, probe_session
from firmware_sim.handheld.ble import BleHandheldRadio
from firmware_sim.handheld.client import HandheldIdentity, SimulatedHandheld
from firmware_sim.handheld.transport import HandheldLink
from firmware_sim.locks.peripheral import ADVERTISING_INTERVAL_MS
from firmware_sim.locks.world import LockWorld, address_for
from gateway.protocol.certs import encode_certificate
from gateway.protocol.tickets import MAX_USES, encode_ticket
from master_station.authority import MasterAuthority

BUDGET = 5
OP_LOCKS = 4
OP_MESSAGES = ("CHALLENGE_REQUEST", "COMMAND")
GATEWAY_ID = "gw-bench"
DISTRICT = "district-1"
OPERATOR = "op-bench"
HOUR = 3600
DAY = 24 * HOUR


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run the rounds and return the result object (headline figures last)."""
    rounds = 1 if quick else 3
    sweep_locks = 8 if quick else 20
    ops = 12 if quick else 40
    return asyncio.run(_measure(rounds, sweep_locks, ops, verbose))


@dataclass
class _Round:
    """What one round measured."""

    boot_sweep_s: float = 0.0
    sweep_s: float = 0.0
    sweep_peak_links: int = 0
    sweep_peak_sessions: int = 0
    sweep_round_trips: list[int] = field(default_factory=list)
    setup_round_trips: list[int] = field(default_factory=list)
    setup_ms: list[float] = field(default_factory=list)
    before_link_ms: list[float] = field(default_factory=list)
    op_ms: list[float] = field(default_factory=list)
    connected_ms: list[float] = field(default_factory=list)
    op_round_trips: list[int] = field(default_factory=list)
    op_writes: list[int] = field(default_factory=list)
    op_notifications: list[int] = field(default_factory=list)
    execute_round_trips: list[int] = field(default_factory=list)
    handheld_ble_ms: list[float] = field(default_factory=list)
    extra_connects: int = 0
    peak_links: int = 0
    att_mtu: int = 0


async def _measure(rounds: int, sweep_locks: int, ops: int, verbose: bool) -> dict[str, Any]:
    results: list[_Round] = []
    for index in range(rounds):
        with tempfile.TemporaryDirectory(prefix="sealgw-bench-seal-") as tmp:
            results.append(await _round(Path(tmp), sweep_locks, ops))
        r = results[-1]
        _say(
            verbose,
            f"round {index + 1}: sweep {sweep_locks} locks {r.sweep_s:.3f} s "
            f"(peak {r.sweep_peak_links} links), op p50 {_pct(r.op_ms, 50):.1f} ms "
            f"p95 {_pct(r.op_ms, 95):.1f} ms, {_median(r.op_round_trips)} round trips per op, "
            f"handheld BLE request p50 {_pct(r.handheld_ble_ms, 50):.1f} ms",
        )
    return _result(results, rounds, sweep_locks, ops)


class _Radio:
    """The bench's side of a round: the locks on the radio, its master, the operator's handheld."""

    def __init__(self, work: Path, locks: LockWorld, authority: MasterAuthority) -> None:
        self.work = work
        self.locks = locks
        self.authority = authority
        self.handheld = Ed25519PrivateKey.generate()
        self.addresses = {
            seal_id: address_for(number) for number, seal_id in enumerate(locks.lock_ids, start=1)
        }
        now = int(time.time())
        self.certificate = encode_certificate(
            authority.enroll_operator(
                operator=OPERATOR, name="Bench Operator", roles=["meter_installer"],
                districts=[DISTRICT], device_key=_raw_public(self.handheld),
                not_before=now - 30 * DAY, not_after=now + 365 * DAY, issued_at=now - 30 * DAY,
            )
        ).decode("utf-8")  # fmt: skip

    def config(self) -> Path:
        """The gateway config the probe runs: these locks, this master, handhelds over BLE."""
        master = self.work / "master.pub"
        master.write_text(self.authority.public_key_bytes.hex())
        config = self.work / "gw.toml"
        config.write_text(
            f'[gateway]\nid = "{GATEWAY_ID}"\ndistrict = "{DISTRICT}"\n'
            f'state_dir = "{self.work / "gw"}"\n'
            f'[authorization]\nmaster_key_file = "{master}"\n'
            '[handheld]\nenabled = true\nlisten = "ble"\n'
            + self.locks.gateway_ble_toml(max_connections=BUDGET)
        )
        return config

    def documents(self, credential_key: str) -> str:
        """A meter_replace ticket (unseal, seal) for the first OP_LOCKS seals; the certificate."""
        now = int(time.time())
        seals = list(self.locks.lock_ids.items())[:OP_LOCKS]
        ticket = self.authority.issue_ticket(
            work_order="WO-BENCH", flow="meter_replace", operator=OPERATOR,
            role="meter_installer", gateway=GATEWAY_ID, gateway_key=bytes.fromhex(credential_key),
            seals=seals, ops=["unseal", "seal"], not_before=now - HOUR, not_after=now + 2 * HOUR,
            max_uses=MAX_USES, issued_at=now - HOUR,
        )  # fmt: skip
        return json.dumps(
            {"ticket": encode_ticket(ticket).decode("utf-8"), "certificate": self.certificate}
        )

    async def handheld_requests(
        self, radio: BleHandheldRadio, code: str, count: int, seal_id: str
    ) -> list[float]:
        """Pair a BLE handheld with `code`, open a session and time `count` requests (ms)."""

        async def dial(address: str) -> HandheldLink:
            del address
            return await radio.dial()

        identity = HandheldIdentity(self.certificate, self.handheld)
        handheld = SimulatedHandheld(identity, dial=dial)
        await handheld.pair("ble", code)
        timings: list[float] = []
        async with await handheld.open_session("ble") as session:
            for _ in range(count):
                started = time.perf_counter()
                await session.seal_state(seal_id)
                timings.append((time.perf_counter() - started) * 1000)
        return timings


async def _round(work: Path, sweep_locks: int, ops: int) -> _Round:
    authority = MasterAuthority.create(work / "master")
    async with LockWorld(sweep_locks, work / "sim", None, authority=authority) as locks:
        tap = AttTap(locks.server.controller.link, locks.server.controller)
        radio = _Radio(work, locks, authority)
        try:
            async with probe_session(
                "locks", work / "probe.log", "-c", radio.config(), "--work-dir", work / "gw",
                "--ops", ops, "--documents-on-stdin", "--handheld",
            ) as probe:  # fmt: skip
                measured, handheld_ms = await _drive(probe, radio, ops)
        finally:
            tap.close()
        r = _analyse(measured, tap, radio)
    r.handheld_ble_ms = handheld_ms
    return r


async def _drive(
    probe: ProbeSession, radio: _Radio, ops: int
) -> tuple[dict[str, Any], list[float]]:
    """Boot, documents, measurements; then the handheld requests, last, on a quiet radio."""
    booted = await probe.phase("booted")
    await probe.send(radio.documents(booted["credential_key"]))
    measured = await probe.phase("measured")
    code = (await probe.phase("handheld"))["pairing_code"]
    handheld = BleHandheldRadio(radio.locks.link)
    try:
        seal_id = next(iter(radio.locks.lock_ids))
        handheld_ms = await radio.handheld_requests(handheld, code, ops, seal_id)
        await probe.send("done")
        await probe.finish()  # the gateway ends the handheld's link as it stops
    finally:
        await handheld.close()
    return measured, handheld_ms


def _analyse(measured: dict[str, Any], tap: AttTap, radio: _Radio) -> _Round:
    """The probe's windows cut the radio capture: round trips, setup, links per operation."""
    sweep, ops = measured["sweep"], measured["ops"]
    r = _Round(boot_sweep_s=measured["boot_sweep_s"], att_mtu=measured["att_mtu"])
    r.sweep_s = sweep["ended"] - sweep["began"]
    r.sweep_peak_links = tap.peak_links(sweep["began"], sweep["ended"])
    r.sweep_peak_sessions = sweep["peak_sessions"]
    assert r.sweep_peak_links <= BUDGET and r.sweep_peak_sessions <= BUDGET
    handles = seal_handles(next(iter(radio.locks.locks.values())).device)
    for address in radio.addresses.values():
        for link in connections(tap.between(sweep["began"], sweep["ended"], address)):
            setup, session = split_setup(link, handles.cccd)
            r.setup_round_trips.append(turns(setup))
            r.sweep_round_trips.append(turns(session))
    for op in ops:
        pdus = tap.between(op["began"], op["ended"], radio.addresses[op["seal_id"]])
        r.op_ms.append(op["ms"])
        r.connected_ms += op["connected_ms"]
        _count_op(pdus, handles, r)
        r.before_link_ms.append((pdus[0].t - op["began"]) * 1000)
    r.extra_connects = measured["background_connects_during_ops"]
    r.peak_links = tap.peak_links(sweep["began"], ops[-1]["ended"] if ops else sweep["ended"])
    assert r.peak_links <= BUDGET, f"{r.peak_links} links at once, budget {BUDGET}"
    return r


def _count_op(pdus: list[AttPdu], handles: SealHandles, r: _Round) -> None:
    links = [link for link in connections(pdus) if link]
    if len(links) != 1:
        raise RuntimeError(f"expected one link for the operation, saw {len(links)}")
    setup, session = split_setup(links[0], handles.cccd)
    r.setup_round_trips.append(turns(setup))
    r.setup_ms.append((setup[-1].t - setup[0].t) * 1000)
    found = exchanges(session, handles)
    mine = [e for e in found if e.message in OP_MESSAGES]
    r.op_round_trips.append(sum(e.round_trips for e in mine))
    r.op_writes.append(sum(e.writes for e in mine))
    r.op_notifications.append(sum(e.notifications for e in mine))
    r.execute_round_trips.append(turns(session))


def _result(results: list[_Round], rounds: int, sweep_locks: int, ops: int) -> dict[str, Any]:
    sweep_rates = [sweep_locks / r.sweep_s * 60 for r in results]
    p50s = [_pct(r.op_ms, 50) for r in results]
    p95s = [_pct(r.op_ms, 95) for r in results]
    return {
        "bench": "seal",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "radio": "bumble LocalLink, gateway controller over TCP HCI",
        "att_mtu": min(r.att_mtu for r in results),
        "max_connections": BUDGET,
        "sweep_locks": sweep_locks,
        "sweep_runs_s": [round(r.sweep_s, 3) for r in results],
        "sweep_s": round(_median([r.sweep_s for r in results]), 3),
        "sweep_peak_sessions": max(r.sweep_peak_sessions for r in results),
        "sweep_round_trips_per_lock": _median([_median(r.sweep_round_trips) for r in results]),
        "boot_sweep_s": round(_median([r.boot_sweep_s for r in results]), 3),
        "setup_round_trips_per_link": _median([_median(r.setup_round_trips) for r in results]),
        "advertising_interval_ms": ADVERTISING_INTERVAL_MS,
        "op_before_link_p50_ms": round(_median([_pct(r.before_link_ms, 50) for r in results]), 1),
        "op_setup_wire_p50_ms": round(_median([_pct(r.setup_ms, 50) for r in results]), 1),
        "ops": ops,
        "op_locks": OP_LOCKS,
        "op_p50_runs_ms": [round(v, 1) for v in p50s],
        "connected_op_p50_ms": round(_median([_pct(r.connected_ms, 50) for r in results]), 1),
        "connected_op_p95_ms": round(_median([_pct(r.connected_ms, 95) for r in results]), 1),
        "background_connects_during_ops": sum(r.extra_connects for r in results),
        "writes_per_op": _median([_median(r.op_writes) for r in results]),
        "notifications_per_op": _median([_median(r.op_notifications) for r in results]),
        "att_round_trips_per_execute": _median([_median(r.execute_round_trips) for r in results]),
        "peak_connections": max(r.peak_links for r in results),
        "handheld_ble_requests": ops,
        "handheld_ble_request_p50_ms": round(
            _median([_pct(r.handheld_ble_ms, 50) for r in results]), 1
        ),
        "handheld_ble_request_p95_ms": round(
            _median([_pct(r.handheld_ble_ms, 95) for r in results]), 1
        ),
        "att_round_trips_per_op": _median([_median(r.op_round_trips) for r in results]),
        "op_p50_ms": round(_median(p50s), 1),
        "op_p95_ms": round(_median(p95s), 1),
        "locks_swept_per_min": round(_median(sweep_rates)),
    }


def _pct(values: list[float], percent: int) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * percent / 100) - 1)]


def _median(values: list[Any]) -> Any:
    return statistics.median(values)


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr)


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
