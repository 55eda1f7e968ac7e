"""The BlueZ test bed as the scenarios inside the VM see it: processes, the broker, and the hands.

`Bed.start()` runs a Mosquitto, `sealgw sim --radio vhci` (the simulator's locks on a bumble
LocalLink whose gateway-side controller is /dev/vhci, so the kernel sees hci0) and `sealgw run`
with `ble.adapter = "bluez:hci0"`, and watches every event and retained state the gateway
publishes (`Broker`). Scenarios then act through the bed: inject lock faults (`control`), kill
and restart the gateway, restart bluetoothd under it, and play the master station and a field
worker: enroll an operator, pair a handheld, issue a ticket, unseal and seal. Everything runs
in this one Python process where it can: under emulation each Python start-up costs seconds.

Hooks for more scenario modules (tests/bluez/guest_*.py with a `SCENARIOS` list, see
guest_scenarios.py): before `start()`, a module's `configure(bed)` may add simulator arguments
(`bed.sim_args`), edit the gateway config (`bed.config_edits`, text to text) and choose where
handhelds reach the gateway (`bed.handheld_listen`, `bed.handheld_address`, `bed.handheld_dial`).

Nothing here is imported by the gateway; it runs only inside the VM (python3.11, the packages
of the share on PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GATEWAY = "gw-bluez"
ROOT = "sealgw/v1"
PORT = 1883
DISTRICT = "district-1"
PATIENCE = float(os.environ.get("PATIENCE", "3"))
BLUETOOTHD = "/usr/libexec/bluetooth/bluetoothd"
OPERATION_WAIT_S = 60.0
GATEWAY_LAUNCHER = """
import sys, time
from pathlib import Path
import gateway.cli.main, gateway.config.loader, gateway.daemon.app, gateway.locks.service
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.1)
sys.exit(gateway.cli.main.main(["run", "-c", sys.argv[2]]))
"""
"""`sealgw run` that does its imports first, then waits for the go file: under emulation the
imports take seconds, and they overlap the simulator's start-up (the guest has two CPUs)."""


def uptime() -> float:
    """The guest's uptime, the clock of the console and of every note."""
    return float(Path("/proc/uptime").read_text().split()[0])


def note(text: str) -> None:
    """A line in scenarios.log, stamped with the guest's uptime (compare with the console)."""
    print(f"[{uptime():.2f}s] {text}", flush=True)


def wait(what: str, condition: Callable[[], Any], timeout: float) -> Any:
    """Poll `condition` until it is truthy; TimeoutError naming `what` after timeout x PATIENCE."""
    deadline = time.monotonic() + timeout * PATIENCE
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout * PATIENCE:.0f} s")
        time.sleep(0.2)


class Broker:
    """Every event and retained seal state the gateway publishes, as the driver saw them."""

    def __init__(self) -> None:
        import paho.mqtt.client as mqtt  # after the simulator was started: seconds to import

        self.events: list[dict[str, Any]] = []
        self.states: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bluez-driver")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", PORT)
        self.client.subscribe(f"{ROOT}/{GATEWAY}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        parts = message.topic.split("/")
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            if "events" in parts:
                self.events.append(body)
            elif "seals" in parts and parts[-1] == "state":
                self.states[parts[-2]] = body

    def typed(self, kind: str, subject: str | None = None) -> list[dict[str, Any]]:
        """Events of one type (and subject), in the order they arrived."""
        with self._lock:
            return [
                e
                for e in self.events
                if e.get("type") == kind and (subject is None or e.get("subject") == subject)
            ]

    def delivered(self) -> dict[tuple[str, int], set[str]]:
        """(seal, log index) -> the ids of the seal events made from that lock log entry."""
        seen: dict[tuple[str, int], set[str]] = {}
        with self._lock:
            events = list(self.events)
        for event in events:
            index = (event.get("data") or {}).get("log_index")
            if str(event.get("type", "")).startswith("seal.") and isinstance(index, int) and index:
                seen.setdefault((event["subject"], index), set()).add(event["id"])
        return seen

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Bed:
    """The processes of one VM run and the operations scenarios perform on them."""

    work: Path
    logs: Path
    locks: int = 20
    advertising_interval_ms: float = 500.0
    sim_args: list[str] = field(default_factory=list)
    config_edits: list[Callable[[str], str]] = field(default_factory=list)
    handheld_listen: str = ""
    handheld_address: str = ""
    handheld_dial: Callable[[str], Awaitable[Any]] | None = None
    broker: Broker | None = None
    gateway: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    mosquitto: subprocess.Popen[bytes] | None = None
    _handhelds: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gateway_go = 0.0
        self.config = self.work / "gw.toml"
        self.truth = self.work / "truth.jsonl"
        self._standby: tuple[subprocess.Popen[bytes], Path] | None = None
        self._spawned = 0
        self.state = self.work / "sim"
        socket_path = self.work / "handheld.sock"
        self.handheld_listen = self.handheld_listen or f"unix:{socket_path}"
        self.handheld_address = self.handheld_address or f"unix:{socket_path}"

    # -- processes -------------------------------------------------------------------------------

    def start(self) -> None:
        """Mosquitto, the simulator (its locks on hci0's radio), the broker watch, the gateway."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.mosquitto = subprocess.Popen(
            ["mosquitto", "-p", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._standby = self._spawn_gateway()  # it imports while the simulator starts
        self.sim = subprocess.Popen(
            [sys.executable, "-m", "gateway", "sim", "--radio", "vhci", "--no-meters",
             "--locks", str(self.locks),
             "--advertising-interval-ms", f"{self.advertising_interval_ms:g}",
             "--broker", f"mqtt://127.0.0.1:{PORT}", "--gateway-id", GATEWAY,
             "--write-config", str(self.config), "--truth", str(self.truth),
             "--state-dir", str(self.state), *self.sim_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(self.logs / "sim.log").open("ab"),
        )  # fmt: skip
        assert self.sim.stdout is not None
        note("simulator started")
        ready = self.sim.stdout.readline().decode()
        if not ready.startswith("sim ready"):
            raise RuntimeError(f"simulator did not start: {ready!r}")
        note(f"simulator: {ready.strip()}")
        self.ready_line = ready
        self._tune_config()
        from gateway.auth.provision import init_gateway

        init_gateway(self.state / "gateway", GATEWAY)  # `sealgw init`: handhelds pair with its key
        self.broker = Broker()
        self.start_gateway()

    def _tune_config(self) -> None:
        text = self.config.read_text()
        # A first BlueZ connect includes GATT discovery: several seconds under emulation.
        text = text.replace("connect_timeout_s = 5.0", "connect_timeout_s = 10.0", 1)
        text = text.replace(
            "[uplink]\n", "[uplink]\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n", 1
        )
        text += f'\n[handheld]\nenabled = true\nlisten = "{self.handheld_listen}"\n'
        for edit in self.config_edits:
            text = edit(text)
        self.config.write_text(text)

    def start_gateway(self) -> None:
        """`sealgw run` on the simulator's config; returns once its gateway.started arrived.

        The process is the standby spawned earlier when there is one (its imports are done),
        and a new standby is spawned for the next start.
        """
        if self._standby is None:
            self._standby = self._spawn_gateway()
        self.gateway, go = self._standby
        self._standby = None
        before = len(self.events("gateway.started"))
        self.gateway_go = time.time()
        go.touch()
        gateway = self.gateway

        def started() -> bool:
            if gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited with {gateway.returncode} (gateway.log)")
            return len(self.events("gateway.started")) > before

        wait("gateway.started", started, 40)
        note(f"gateway.started (pid {gateway.pid})")
        self._standby = self._spawn_gateway()

    def _spawn_gateway(self) -> tuple[subprocess.Popen[bytes], Path]:
        """A gateway process that does its imports, then waits for its go file to run.

        Under emulation the imports take seconds: the first overlaps the simulator's start-up,
        a standby's the scenarios before a restart (the guest has two CPUs).
        """
        self._spawned += 1
        go = self.work / f"gateway.go.{self._spawned}"
        log = (self.logs / "gateway.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-c", GATEWAY_LAUNCHER, str(go), str(self.config)],
            stdout=log,
            stderr=log,
        )
        note(f"gateway process {process.pid} spawned, waiting for {go.name}")
        return process, go

    def kill_gateway(self) -> None:
        """SIGKILL the gateway, as a power cut or the OOM killer would."""
        assert self.gateway is not None
        self.gateway.send_signal(signal.SIGKILL)
        self.gateway.wait(30)
        note("gateway killed")

    def restart_bluetoothd(self) -> None:
        """Stop bluetoothd as `systemctl restart bluetooth` does (SIGTERM), and start it again."""
        old = pids("bluetoothd")
        for pid in old:
            os.kill(pid, signal.SIGTERM)
        wait("bluetoothd stopped", lambda: not set(old) & set(pids("bluetoothd")), 20)
        log = (self.logs / "bluetoothd.log").open("ab")
        log.write(b"--- restarted by the scenario ---\n")
        log.flush()
        subprocess.Popen([BLUETOOTHD, "-n"], stdout=log, stderr=log, start_new_session=True)
        note(f"bluetoothd restarted (was pid {old})")

    def control(self, line: str) -> None:
        """One simulator control line (`lock SL-0002 tamper`); raise unless it answered ok."""
        assert self.sim is not None and self.sim.stdin is not None and self.sim.stdout is not None
        self.sim.stdin.write(f"{line}\n".encode())
        self.sim.stdin.flush()
        answer = self.sim.stdout.readline().decode().strip()
        while not answer.startswith(("ok ", "error ")):
            if not answer and self.sim.poll() is not None:
                raise RuntimeError(f"the simulator exited ({self.sim.returncode})")
            answer = self.sim.stdout.readline().decode().strip()
        if not answer.startswith("ok "):
            raise RuntimeError(answer)

    def status(self) -> dict[str, Any]:
        """The running gateway's status (`sealgw status`), over its control socket."""
        from gateway.daemon.control import request

        return request(self.state / "gateway" / "control.sock", "status", timeout=10 * PATIENCE)

    def lock_status(self) -> dict[str, Any]:
        """The lock service's part of the status: connected, queued, radio, ..."""
        services = self.status().get("services", {})
        return dict(services.get("locks", {}))

    def stop(self) -> None:
        """Stop the gateway and the simulator (SIGTERM, then SIGKILL), the watch and Mosquitto."""
        standby = None if self._standby is None else self._standby[0]
        for name, child in (("gateway", self.gateway), ("standby", standby), ("sim", self.sim)):
            if child is None or child.poll() is not None:
                continue
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                note(f"{name} did not stop within 30 s of SIGTERM: killed")
                child.kill()
        if self.broker is not None:
            self.broker.close()
        if self.mosquitto is not None:
            self.mosquitto.terminate()

    def lock_table(self) -> list[dict[str, Any]]:
        """The [[ble.locks]] of the gateway config the simulator wrote (seal, lock id, address)."""
        return list(tomllib.loads(self.config.read_text())["ble"]["locks"])

    # -- what reached the broker ------------------------------------------------------------------

    def events(self, kind: str, subject: str | None = None) -> list[dict[str, Any]]:
        return [] if self.broker is None else self.broker.typed(kind, subject)

    def lock_entries(self) -> set[tuple[str, int]]:
        """(seal, index) of every lock log entry in the simulator's truth file."""
        found = set()
        for line in self.truth.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "lock_log":
                found.add((record["seal"], int(record["index"])))
        return found

    def truth_log(self, seal: str) -> list[tuple[int, str]]:
        """(index, event) of every log entry the seal's lock wrote, from the truth file."""
        found = []
        for line in self.truth.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "lock_log" and record["seal"] == seal:
                found.append((int(record["index"]), str(record["type"])))
        return found

    def wait_reconciled(self, what: str, timeout: float) -> int:
        """Every entry of the truth file delivered, none under two event ids; their number."""
        assert self.broker is not None
        broker = self.broker
        expected = self.lock_entries()
        wait(what, lambda: expected <= set(broker.delivered()), timeout)
        twice = {k: v for k, v in broker.delivered().items() if len(v) > 1}
        if twice:
            raise AssertionError(f"entries delivered under two ids: {twice}")
        return len(expected)

    # -- the master station and a field worker -----------------------------------------------------

    def enroll(self, operator: str, role: str) -> Any:
        """A handheld for `operator`, its certificate issued by the master and sent to the gateway."""
        from firmware_sim.handheld.client import SimulatedHandheld, enroll_handheld
        from master_station.authority import MasterAuthority

        now = int(time.time())
        identity = enroll_handheld(
            self.work / "handhelds" / operator,
            MasterAuthority.open_or_create(self.state / "master"),
            operator=operator, name=operator, roles=[role], districts=[DISTRICT],
            not_before=now - 86400, not_after=now + 86400,
        )  # fmt: skip
        self._command("cert", json.loads(identity.certificate))
        dial = {} if self.handheld_dial is None else {"dial": self.handheld_dial}
        handheld = SimulatedHandheld(identity, **dial)
        self._handhelds[operator] = handheld
        return handheld

    def pair(self, operator: str) -> str:
        """`sealgw pair` on the console (its control socket), the code typed into the handheld."""
        from gateway.daemon.control import request

        answer = request(self.state / "gateway" / "control.sock", "pair", timeout=10 * PATIENCE)
        handheld = self._handhelds[operator]
        fingerprint = str(answer["gateway_key"])
        asyncio.run(
            handheld.pair(
                self.handheld_address, str(answer["code"]), gateway_fingerprint=fingerprint
            )
        )
        return fingerprint

    def issue_ticket(
        self, *, work_order: str, operator: str, role: str, seals: list[str], ops: list[str]
    ) -> str:
        """A ticket from the master station, sent to the gateway; its id once the gateway stored it."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from gateway.protocol.tickets import encode_ticket, x25519_public_bytes
        from master_station.authority import MasterAuthority

        authority = MasterAuthority.open_or_create(self.state / "master")
        key = (self.state / "gateway" / "credential.key").read_bytes()
        lock_ids = {lock["seal_id"]: lock["lock_id"] for lock in self.lock_table()}
        now = int(time.time())
        ticket = authority.issue_ticket(
            work_order=work_order, flow="meter_replace", operator=operator, role=role,
            gateway=GATEWAY,
            gateway_key=x25519_public_bytes(X25519PrivateKey.from_private_bytes(key)),
            seals=[(seal, bytes.fromhex(lock_ids[seal])) for seal in seals], ops=ops,
            not_before=now - 60, not_after=now + 3600, max_uses=20,
        )  # fmt: skip
        reply = self._command("ticket", json.loads(encode_ticket(ticket)))
        if not reply.get("result", {}).get("stored"):
            raise AssertionError(f"the gateway did not store ticket {work_order}: {reply}")
        return str(ticket.ticket_id)

    def start_operation(self, operator: str, op: str, seal: str, work_order: str) -> dict[str, Any]:
        """Ask for an unseal or seal and return its first answer (pending) without waiting."""

        async def ask() -> dict[str, Any]:
            handheld = self._handhelds[operator]
            async with await handheld.open_session(self.handheld_address) as session:
                ask_for = session.unseal if op == "unseal" else session.seal
                answer: dict[str, Any] = await ask_for(seal, work_order, None)
                return answer

        return asyncio.run(ask())

    def operate(self, operator: str, op: str, seal: str, work_order: str) -> dict[str, Any]:
        """One unseal or seal from the operator's handheld, followed until it is settled."""
        return asyncio.run(self._operate(operator, op, seal, work_order))

    async def _operate(self, operator: str, op: str, seal: str, work_order: str) -> dict[str, Any]:
        handheld = self._handhelds[operator]
        async with await handheld.open_session(self.handheld_address) as session:
            outcome: dict[str, Any] = await (session.unseal if op == "unseal" else session.seal)(
                seal, work_order, None
            )
            deadline = time.monotonic() + OPERATION_WAIT_S * PATIENCE
            while outcome["status"] == "pending" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                outcome = await session.result(str(outcome["op_id"]))
        return outcome

    def _command(self, name: str, document: Any) -> dict[str, Any]:
        from master_station.command_client import send_command
        from master_station.listener import ListenerOptions

        options = ListenerOptions(f"mqtt://127.0.0.1:{PORT}")
        reply = send_command(options, GATEWAY, name, {"document": document}, timeout=10 * PATIENCE)
        if not reply.ok:
            raise AssertionError(f"cmd/{name} refused: {dict(reply.body)}")
        return dict(reply.body)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a live process (from /proc; 0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids(name: str) -> list[int]:
    """Process ids whose command name is `name` (inside the VM)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
