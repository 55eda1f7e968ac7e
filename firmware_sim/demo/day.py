"""The demo's shared kit: the `Day` the steps act on, start-up, handhelds, tickets, ledger reads.

Everything here waits on conditions with timeouts and raises `DemoStepError` saying what did not
happen. The steps themselves are in demo_script.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from firmware_sim.handheld.ble import BLE_ADDRESS, DIAL_TIMEOUT_S, HciHandheldDialer
from firmware_sim.handheld.client import SimulatedHandheld, load_identity
from firmware_sim.handheld.transport import Dialer, connect
from firmware_sim.locks.world import lock_id_for
from firmware_sim.mosquitto import MosquittoBroker
from firmware_sim.procs import Child, DemoStepError, ProcessSet, SimControl, TcpRelay, run_cli
from gateway.protocol.handheld_crypto import ed25519_public_bytes
from gateway.protocol.tickets import x25519_public_bytes
from master_station.subscriber import EventSubscriber

__all__ = [
    "GATEWAY_ID",
    "LINE_LOSS_THIEF",
    "Day",
    "Timeline",
    "locks_heard_since",
    "start_district",
    "start_gateway",
]

GATEWAY_ID = "gw-demo-01"
DISTRICT = "district-1"
LOCKS = 20
VHCI_ADVERTISING_MS = 1000  # 20 locks at 200 ms swamp an emulated VM's kernel-facing controller
METER_POLL_S = 2.0
LINE_LOSS_CUSTOMERS = 5
LINE_LOSS_DAY_S = 3.0  # the line-loss district's meters run a simulated day every 3 s
LINE_LOSS_THIEF = "DIST-C3"  # the customer whose meter the bypass scenario goes around
INSTALLER, AUDITOR = "op-inst-01", "op-audit-01"
REPLACE_SEAL, INSTALL_SEAL, AUDIT_SEAL = "SL-0001", "SL-0015", "SL-0003"
TAMPER_SEAL, THEFT_SEAL, OUTAGE_SEAL = "SL-0018", "SL-0005", "SL-0019"
PROTOCOLS = {"modbus-tcp": "modbus-tcp", "rtu": "modbus-rtu", "dlt645-tcp": "dlt645"}
PROTOCOLS["dlt645-serial"] = "dlt645"


@dataclass(slots=True)
class Timeline:
    """The live timeline: elapsed time, step progress, one line per thing that happened."""

    out: TextIO
    total: int
    started: float = field(default_factory=time.monotonic)
    step: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        progress = f"({self.step}/{self.total})" if self.step else "      "
        print(f"[{self.elapsed():6.1f}s] {progress} {text}", file=self.out, flush=True)


@dataclass(slots=True)
class Day:
    """Everything the steps share."""

    work: Path
    duration_s: float
    timeline: Timeline
    external_broker: str | None = None
    radio: str = "tcp"  # sealgw sim --radio: tcp (bumble) or vhci (the gateway on BlueZ)
    patience: float = 1.0  # every deadline is multiplied by this (slow or emulated machines)
    encoding: str = "json"  # uplink.encoding of the gateway: json or batch
    handheld: str = "ble"  # how handhelds reach the gateway: ble (GATT on the radio) or tcp
    procs: ProcessSet = field(init=False)
    broker: MosquittoBroker | None = None
    relay: TcpRelay | None = None
    sim: SimControl | None = None
    master: Child | None = None
    gateway: Child | None = None
    subscriber: EventSubscriber | None = None
    gateway_key: str = ""
    handheld_address: str = ""
    handheld_dial: Dialer = connect
    meters: dict[str, dict[str, str]] = field(default_factory=dict)
    handhelds: dict[str, SimulatedHandheld] = field(default_factory=dict)
    kpi: dict[str, Any] = field(default_factory=dict)
    audit_ticket: str = ""
    bypassed: str = ""  # the meter the line-loss scenario bypassed

    def __post_init__(self) -> None:
        self.procs = ProcessSet(self.work)

    @property
    def config(self) -> Path:
        return self.work / "gateway.toml"

    @property
    def ledger(self) -> Path:
        return self.work / "ledger.db"

    @property
    def master_dir(self) -> Path:
        return self.work / "sim" / "master"

    @property
    def broker_url(self) -> str:
        if self.external_broker:
            return self.external_broker
        if self.broker is None:
            raise DemoStepError("no broker")
        return self.broker.url

    def events(self) -> list[dict[str, Any]]:
        """This gateway's events as the independent subscriber received them (repeats kept)."""
        return [e for e in list(self.sub().events) if e.get("gateway") == GATEWAY_ID]

    def sub(self) -> EventSubscriber:
        if self.subscriber is None:
            raise DemoStepError("the subscriber is not running")
        return self.subscriber

    def wait_event(self, what: str, match: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
        """The first event (in arrival order) that matches, waiting up to `timeout`."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events() if match(e)]
            return bool(found)

        timeout *= self.patience
        if not self.sub().wait_for(seen, timeout):
            raise DemoStepError(f"no {what} within {timeout:.0f} s")
        return found[0]

    def wait(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        """Poll `condition` every 0.2 s; DemoStepError naming `what` after `timeout`."""
        timeout *= self.patience
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise DemoStepError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.2)


# -- start-up ---------------------------------------------------------------------------------


def start_district(day: Day) -> None:
    """Broker, relay, simulator, master station, subscriber and gateway, each in its process."""
    if day.external_broker is None:
        day.broker = MosquittoBroker(day.work / "broker", receive_maximum=1000)
        day.broker.start()
        day.timeline.say(f"private Mosquitto on {day.broker.url}")
    host, port = _host_port(day.broker_url)
    day.relay = TcpRelay(host, port).start()
    day.timeline.say(f"relay {day.relay.url} -> {day.broker_url} (the gateway's uplink)")
    _start_sim(day)
    _start_master(day)
    day.subscriber = EventSubscriber(host, port, client_id="demo-subscriber").start()
    run_cli(["init", "-c", str(day.config)])
    run_cli(
        [
            "master",
            "enroll-gateway",
            "--master-dir",
            str(day.master_dir),
            "--gateway",
            GATEWAY_ID,
            "--identity",
            str(day.work / "sim" / "gateway" / "identity.pub"),
        ]
    )  # fmt: skip  (the master verifies the gateway's checkpoints against it)
    start_gateway(day)
    key = day.work / "sim" / "gateway" / "credential.key"
    day.wait("the gateway's credential key", key.exists, 10)
    private = X25519PrivateKey.from_private_bytes(key.read_bytes())
    day.gateway_key = x25519_public_bytes(private).hex()
    day.timeline.say(f"district up: {LOCKS} locks, {len(day.meters)} meters, gateway {GATEWAY_ID}")


def start_gateway(day: Day) -> None:
    """`sealgw run` and wait for its gateway.started on the subscriber."""
    before = _count(day, "gateway.started")
    day.gateway = day.procs.start("gateway", ["run", "-c", str(day.config)])
    day.wait_event(
        "gateway.started", lambda e: e["type"] == "gateway.started" and _nth(day, e, before), 30
    )
    day.timeline.say(f"gateway {GATEWAY_ID} running (pid {day.gateway.pid})")


def _start_sim(day: Day) -> None:
    if day.relay is None:
        raise DemoStepError("no relay")
    child = day.procs.start("sim", [
        "sim", "--broker", day.relay.url, "--write-config", str(day.config),
        "--truth", str(day.work / "truth.jsonl"), "--state-dir", str(day.work / "sim"),
        "--activity-seconds", "0", "--locks", str(LOCKS), "--gateway-id", GATEWAY_ID,
        "--seed", "1", "--meter-poll-s", str(METER_POLL_S), "--radio", day.radio,
        "--advertising-interval-ms", str(VHCI_ADVERTISING_MS if day.radio == "vhci" else 200),
        "--district", str(LINE_LOSS_CUSTOMERS), "--district-day-s", str(LINE_LOSS_DAY_S),
        *(["--handheld-radio"] if _handhelds_over_ble(day) else []),
    ], control=True)  # fmt: skip
    day.sim = SimControl(child)
    ready = day.sim.wait_line("sim ready", 40 * day.patience)
    found = re.search(r"handheld_radio=(\S+)", ready)
    if found is not None:  # the handhelds' own controller on the radio; the gateway serves GATT
        dialer = HciHandheldDialer(found.group(1), timeout_s=DIAL_TIMEOUT_S * day.patience)
        day.handheld_address, day.handheld_dial = BLE_ADDRESS, dialer
    else:
        day.handheld_address = f"unix:{day.work / 'handheld.sock'}"  # no free-port race
    _tune_config(day.config, day.handheld_address, day.encoding)
    day.meters = _meter_layout(day.config)
    day.timeline.say(f"simulator up (pid {child.pid}): {LOCKS} locks, {len(day.meters)} meters")


def _handhelds_over_ble(day: Day) -> bool:
    """BLE handhelds on either radio: the gateway serves GATT on bumble (tcp) or BlueZ (vhci)."""
    return day.handheld == "ble"


def _start_master(day: Day) -> None:
    day.master = day.procs.start("master", [
        "master", "listen", "--broker", day.broker_url, "--ledger", str(day.ledger),
        "--gateway", GATEWAY_ID, "--client-id", "demo-master", "--gap-grace", "1",
        "--resend-interval", "2", "--master-dir", str(day.master_dir),
    ])  # fmt: skip
    log = day.work / "master.log"
    day.wait("master station listening", lambda: "listening as" in _text(log), 20)
    day.timeline.say(f"master station listening (pid {day.master.pid}), ledger {day.ledger.name}")


def _tune_config(config: Path, handheld: str, encoding: str = "json") -> None:
    """Demo pacing on top of the simulator's config: fast reconnects, health and checkpoints."""
    text = config.read_text(encoding="utf-8")
    uplink = "[uplink]\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\ndrain_rate_per_s = 2000\n"
    if encoding == "batch":  # short linger: the demo's steps wait for events as they happen
        uplink += 'encoding = "batch"\nbatch_linger_s = 0.3\n'

    text = text.replace("[uplink]\n", uplink, 1)
    text = text.replace("[meters]\n", "[meters]\nheartbeat_polls = 3\n", 1)
    text = text.replace("[audit]\n", "[audit]\ncheckpoint_interval_s = 10\n", 1)
    text += (
        "\n[health]\ninterval_s = 2\n\n"
        f"[handheld]\nenabled = true\nlisten = {json.dumps(handheld)}\n"
    )
    config.write_text(text, encoding="utf-8")


def _meter_layout(config: Path) -> dict[str, dict[str, str]]:
    """meter id -> {"seal", "protocol"} from the [meters] tables the simulator wrote."""
    meters = tomllib.loads(config.read_text(encoding="utf-8"))["meters"]
    buses = {bus["name"]: bus["transport"].split("://")[0] for bus in meters["buses"]}
    return {
        m["id"]: {"seal": m.get("seal", ""), "protocol": PROTOCOLS[buses[m["bus"]]]}
        for m in meters["meters"]
    }


# -- handhelds --------------------------------------------------------------------------------


def enroll(day: Day, operator: str, name: str, role: str) -> SimulatedHandheld:
    """A handheld with a fresh device key, certified by `sealgw master enroll-operator`."""
    directory = day.work / "handhelds" / operator
    directory.mkdir(parents=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    fd = os.open(directory / "device.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes_raw())
    run_cli([
        "master", "enroll-operator", "--master-dir", str(day.master_dir), "--operator", operator,
        "--name", name, "--role", role, "--district", DISTRICT,
        "--device-key", ed25519_public_bytes(key).hex(), "--out", str(directory / "operator.cert"),
        "--publish", "--broker", day.broker_url, "--gateway", GATEWAY_ID,
    ])  # fmt: skip
    handheld = SimulatedHandheld(load_identity(directory), dial=day.handheld_dial)
    day.handhelds[operator] = handheld
    return handheld


def pair(day: Day, handheld: SimulatedHandheld) -> str:
    """`sealgw pair` on the console, the code typed into the handheld; the key fingerprint."""
    answer = json.loads(run_cli(["pair", "-c", str(day.config), "--json"]).stdout)
    fingerprint = str(answer["gateway_key"])
    asyncio.run(
        handheld.pair(day.handheld_address, str(answer["code"]), gateway_fingerprint=fingerprint)
    )
    return fingerprint


def issue_ticket(
    day: Day, *, work_order: str, flow: str, operator: str, role: str, seal: str, ops: str
) -> str:
    """`sealgw master issue-ticket --publish`; the ticket id, once the gateway accepted it."""
    number = int(seal.split("-")[1])
    done = run_cli([
        "master", "issue-ticket", "--master-dir", str(day.master_dir), "--gateway", GATEWAY_ID,
        "--gateway-key", day.gateway_key, "--work-order", work_order, "--flow", flow,
        "--operator", operator, "--role", role, "--seal", f"{seal}:{lock_id_for(number).hex()}",
        "--ops", ops, "--valid-minutes", "60", "--ledger", str(day.ledger),
        "--publish", "--broker", day.broker_url,
    ])  # fmt: skip
    reply = json.loads(done.stdout.split(": ", 1)[1])
    if not reply.get("ok") or not reply.get("result", {}).get("stored"):
        raise DemoStepError(f"the gateway did not store ticket {work_order}: {reply}")
    found = re.search(r"ticket ([0-9a-f]+):", done.stderr)
    if found is None:
        raise DemoStepError(f"issue-ticket printed no ticket id: {done.stderr.strip()}")
    return found.group(1)


def operate(
    day: Day, operator: str, op: str, seal: str, work_order: str, *, ticket: str | None = None
) -> dict[str, Any]:
    """One unseal or seal from the operator's handheld, followed until it is no longer pending."""
    return asyncio.run(_operate(day, operator, op, seal, work_order, ticket=ticket))


async def _operate(
    day: Day, operator: str, op: str, seal: str, work_order: str, *, ticket: str | None
) -> dict[str, Any]:
    handheld = day.handhelds[operator]
    async with await handheld.open_session(day.handheld_address) as session:
        outcome = await (session.unseal if op == "unseal" else session.seal)(
            seal, work_order, ticket
        )
        deadline = time.monotonic() + 30
        while outcome["status"] == "pending" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            outcome = await session.result(str(outcome["op_id"]))
    return outcome


def read_state(day: Day, operator: str, seal: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The operator's tickets and the gateway's belief about `seal`, in one session."""

    async def audit() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        handheld = day.handhelds[operator]
        async with await handheld.open_session(day.handheld_address) as session:
            return await session.tickets(), await session.seal_state(seal)

    return asyncio.run(audit())


# -- ledger and buffer ------------------------------------------------------------------------


def ledger_seqs(day: Day) -> set[int]:
    """Seqs of this gateway's events in the master's ledger (empty before it exists)."""
    return {
        int(r[0])
        for r in _query(day.ledger, "SELECT seq FROM events WHERE gateway = ?", (GATEWAY_ID,))
    }


def buffer_head(day: Day) -> int:
    """The gateway's committed head seq, read from its buffer file."""
    rows = _query(
        day.work / "sim" / "gateway" / "buffer.db", "SELECT value FROM meta WHERE key = 'head_seq'"
    )
    return int(rows[0][0]) if rows else 0


def ledger_complete_to(day: Day, head: int) -> Callable[[], bool]:
    """A condition: the ledger holds every seq 1..head."""
    return lambda: set(range(1, head + 1)) <= ledger_seqs(day)


def locks_heard_since(day: Day, ts: str) -> Callable[[], bool]:
    """A condition: the ledger's retained state of every lock says it was heard at or after `ts`.

    A (re)started gateway first republishes every seal with `online: false` and `last_seen:
    null` (not heard yet by this process); the KPIs are only meaningful once it heard them again.
    """

    def heard() -> bool:
        rows = _query(day.ledger, "SELECT payload FROM seal_state WHERE gateway = ?", (GATEWAY_ID,))
        seen = [json.loads(bytes(row[0])).get("last_seen") for row in rows]
        return len(seen) == LOCKS and all(isinstance(t, str) and t >= ts for t in seen)

    return heard


def _query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()


# -- helpers ----------------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return host or "127.0.0.1", int(port)


def _count(day: Day, kind: str) -> int:
    return sum(1 for e in day.events() if e["type"] == kind) if day.subscriber else 0


def _nth(day: Day, event: Mapping[str, Any], before: int) -> bool:
    same = [e["id"] for e in day.events() if e["type"] == event["type"]]
    return event["id"] in same[before:]


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
