"""A handheld over BLE on BlueZ, inside the test-bed VM (docs/handheld.md, 8.2).

A Mosquitto and `sealgw sim --radio vhci --handheld-radio` (one lock; the simulated handheld
gets its own controller on the same virtual radio, over TCP HCI) start; bluetoothd is
restarted with the main.conf of docs/deploy.md (3.1); then `sealgw run` with
`ble.adapter = "bluez:hci0"` and `handheld.listen = "ble"`, as the unprivileged user `sealgw`
in group `bluetooth`: the stock D-Bus policy is all it has to register its GATT application,
advert and agent. Scenarios, each checked on what bluetoothd and the broker saw:

- `bluetoothd_with_deploy_settings`: bluetoothd takes every key of docs/deploy.md, 3.1;
- `handheld_link_security`: a central that connects without pairing has its RX write refused
  by bluetoothd (flag `encrypt-write`) before the gateway sees it; an LE Secure Connections
  pairing with bonding, as Android's `createBond` asks for, is accepted, and the adapter is
  pairable;
- `handheld_pairs_over_ble`: the simulated handheld finds the handheld service, pairs (LE
  Secure Connections, Just Works) and runs the pairing exchange with the console code;
  `handheld.paired` reaches the broker;
- `handheld_unseals_over_ble`: the master's certificate and ticket reach the gateway over MQTT,
  the handheld opens a session over BLE and unseals SL-0001; `seal.unsealed` (from the lock's
  log entry, naming the operator) and the retained state `unsealed` reach the broker, and
  btmon saw LE Secure Connections pairing (public keys exchanged) and an AES-CCM link;
- `handheld_after_bluetoothd_restart`: bluetoothd is restarted under the running gateway, which
  registers its application, advert and agent again by itself; a new session then works.

Merges one result per scenario into OUT_JSON (the lock scenarios' summary when it exists).

Usage (inside the VM, as root): python3 guest_handheld.py OUT_JSON WORK_DIR LOG_DIR BTMON_LOG
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

GATEWAY = "gw-handheld"
ROOT = "sealgw/v1"
PORT = 1884
SEAL = "SL-0001"
OPERATOR = "op-0042"
WORK_ORDER = "WO-BLUEZ-1"
SERVICE_USER = "sealgw"
BLUETOOTHD = "/usr/libexec/bluetooth/bluetoothd"
PATIENCE = float(os.environ.get("PATIENCE", "3"))
DEPLOY_MAIN_CONF = """\
[General]
ControllerMode = le
AlwaysPairable = false
PairableTimeout = 0
DiscoverableTimeout = 0
JustWorksRepairing = never

[LE]
MinConnectionInterval = 24
MaxConnectionInterval = 40
ConnectionLatency = 0
ConnectionSupervisionTimeout = 400

[GATT]
Cache = always
Channels = 1

[Policy]
AutoEnable = true
"""
"""The keys of docs/deploy.md, section 3.1 (tests/unit/test_deploy_doc.py keeps them equal)."""


class Broker:
    """Every event and retained seal state the gateway publishes."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.states: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="handheld-driver")
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

    def typed(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("type") == kind]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout * PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout * PATIENCE:.0f} s")
        time.sleep(0.2)


# -- bluetoothd -------------------------------------------------------------------------------


def bluetoothd_pids() -> list[int]:
    """Running bluetoothd processes (not zombies: an exited child of ours is one until reaped)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1]
            if name == "bluetoothd" and state.split()[0] != "Z":
                pids.append(int(entry.name))
    return pids


def restart_bluetoothd(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Stop bluetoothd, start it with `config`; return once it owns org.bluez."""
    for pid in bluetoothd_pids():
        os.kill(pid, signal.SIGTERM)
    wait("the old bluetoothd to exit", lambda: not bluetoothd_pids(), 10)
    with log.open("ab") as out:
        daemon = subprocess.Popen([BLUETOOTHD, "-n", "-f", str(config)], stdout=out, stderr=out)
    wait("bluetoothd on the bus", lambda: asyncio.run(bluez_owned()), 20)
    return daemon


async def bluez_owned() -> bool:
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(_message("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "NameHasOwner", "s", ["org.bluez"]))  # fmt: skip
        return bool(reply.body and reply.body[0])
    finally:
        bus.disconnect()


async def adapter_pairable() -> bool:
    """hci0's `Adapter1.Pairable`, as bluetoothd reports it."""
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(_message("org.bluez", "/org/bluez/hci0",
                                        "org.freedesktop.DBus.Properties", "Get", "ss",
                                        ["org.bluez.Adapter1", "Pairable"]))  # fmt: skip
        return bool(reply.body and reply.body[0].value)
    finally:
        bus.disconnect()


def _message(
    destination: str, path: str, interface: str, member: str, sig: str, body: list[Any]
) -> Any:
    from dbus_fast import Message

    return Message(destination=destination, path=path, interface=interface, member=member,
                   signature=sig, body=body)  # fmt: skip


def deploy_settings_taken(log: Path) -> str:
    """bluetoothd read every key of the deploy config (it logs the ones it does not know)."""
    text = log.read_text(errors="replace")
    complaints = [line for line in text.splitlines() if re.search(r"[Uu]nknown|[Ii]nvalid", line)]
    if complaints:
        raise AssertionError(f"bluetoothd complained about the deploy config: {complaints}")
    keys = sum(len(section) for section in _ini(DEPLOY_MAIN_CONF).values())
    return f"bluetoothd 5.66 took all {keys} keys of docs/deploy.md 3.1 without a complaint"


def _ini(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keys keep their case
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


# -- the gateway and the master's documents -------------------------------------------------


def service_user(paths: list[Path]) -> None:
    """The gateway's unprivileged user (in group bluetooth), owning what it reads and writes."""
    if subprocess.run(["id", SERVICE_USER], capture_output=True, check=False).returncode:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--groups", "bluetooth", SERVICE_USER],
            check=True,
        )
    for path in paths:
        subprocess.run(["chown", "-R", f"{SERVICE_USER}:{SERVICE_USER}", str(path)], check=True)
    Path(__file__).resolve().parent.chmod(0o755)  # the share (mkdtemp: 0700) holds the code


def start_gateway(config: Path, logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / "gateway-handheld.log").open("ab")
    return subprocess.Popen(
        ["setpriv", "--reuid", SERVICE_USER, "--regid", SERVICE_USER, "--init-groups",
         sys.executable, "-m", "gateway", "run", "-c", str(config)],
        stdout=log, stderr=log, env={**os.environ, "HOME": "/tmp"},
    )  # fmt: skip


def enroll(sim_state: Path) -> tuple[str, Any]:
    """A device key and its operator certificate from the simulator's master authority."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.protocol.certs import encode_certificate
    from gateway.protocol.handheld_crypto import ed25519_public_bytes
    from master_station.authority import MasterAuthority

    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    cert = MasterAuthority.open(sim_state / "master").enroll_operator(
        operator=OPERATOR, name="Li Wei", roles=["meter_installer"], districts=["district-1"],
        device_key=ed25519_public_bytes(key), not_before=now - 3600, not_after=now + 86400,
    )  # fmt: skip
    return encode_certificate(cert).decode("utf-8"), key


def deliver_ticket(sim_state: Path, state: Path) -> str:
    """An unseal/seal ticket for SL-0001, sent to the gateway over MQTT as the master would."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from firmware_sim.locks.world import lock_id_for
    from gateway.protocol.tickets import encode_ticket, x25519_public_bytes
    from master_station.authority import MasterAuthority

    credential = X25519PrivateKey.from_private_bytes((state / "credential.key").read_bytes())
    now = int(time.time())
    ticket = MasterAuthority.open(sim_state / "master").issue_ticket(
        work_order=WORK_ORDER, flow="meter_replace", operator=OPERATOR, role="meter_installer",
        gateway=GATEWAY, gateway_key=x25519_public_bytes(credential),
        seals=[(SEAL, lock_id_for(1))], ops=["unseal", "seal"],
        not_before=now - 60, not_after=now + 3600, max_uses=4,
    )  # fmt: skip
    deliver("ticket", encode_ticket(ticket).decode("utf-8"))
    return ticket.ticket_id


def deliver(command: str, document: str) -> None:
    """A signed document to the gateway over MQTT (`{root}/{gw}/cmd/{command}`), as MS does."""
    from master_station.command_client import send_command
    from master_station.listener import ListenerOptions

    reply = send_command(
        ListenerOptions(broker_url=f"mqtt://127.0.0.1:{PORT}", client_id="handheld-master"),
        GATEWAY, command, {"document": json.loads(document)}, timeout=20 * PATIENCE,
    )  # fmt: skip
    if not reply.ok:
        raise AssertionError(f"the gateway refused the {command}: {dict(reply.body)}")


# -- the handheld side ------------------------------------------------------------------------


async def probe(transport: str) -> str:
    """A central without the protocol: write RX unpaired, then pair (LE SC) with a bond."""
    from bumble import hci
    from bumble.device import Device
    from bumble.transport import open_transport

    link = await open_transport(transport)
    try:
        device = Device.with_hci("probe", hci.Address("F4:A0:00:00:00:09"), link.source, link.sink)
        await device.power_on()
        async with asyncio.timeout(60 * PATIENCE):
            address = await _find_gateway(device)
            answer = await _unpaired_write(device, address)
            device.pairing_config_factory = lambda _c: _pairing(sc=True, bonding=True)
            answer += "; " + await _pair(device, address, "an LE SC pairing with bonding")
        return answer
    finally:
        await link.close()


async def _find_gateway(device: Any) -> Any:
    from bumble import core

    from gateway.protocol.handheld_gatt import HANDHELD_SERVICE_UUID

    service = core.UUID(HANDHELD_SERVICE_UUID)
    found: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_advertisement(advert: Any) -> None:
        uuids = advert.data.get(core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
        if not found.done() and isinstance(uuids, list) and service in uuids:
            found.set_result(advert.address)

    device.on(device.EVENT_ADVERTISEMENT, on_advertisement)
    await device.start_scanning(filter_duplicates=False)
    try:
        return await found
    finally:
        device.remove_listener(device.EVENT_ADVERTISEMENT, on_advertisement)
        await device.stop_scanning()


async def _unpaired_write(device: Any, address: Any) -> str:
    from bumble import att, core
    from bumble.device import Peer

    from gateway.protocol.handheld_gatt import HANDHELD_RX_CHAR_UUID, HANDHELD_SERVICE_UUID

    service = core.UUID(HANDHELD_SERVICE_UUID)
    connection = await device.connect(address)
    try:
        peer = Peer(connection)
        await peer.discover_services([service])
        (gatt_service,) = peer.get_services_by_uuid(service)
        await gatt_service.discover_characteristics()
        (rx,) = gatt_service.get_characteristics_by_uuid(core.UUID(HANDHELD_RX_CHAR_UUID))
        try:
            await rx.write_value(b"\x00\x00\x00\x01\x00", with_response=True)
        except att.ATT_Error as exc:
            return (
                f"RX write without pairing refused: {exc.error_name} (0x{int(exc.error_code):02x})"
            )
        return "RX write without pairing accepted"
    finally:
        await _disconnect(connection)


async def _pair(device: Any, address: Any, what: str) -> str:
    connection = await device.connect(address)
    try:
        await connection.pair()
    except Exception as exc:  # the refusal is the finding
        return f"{what} refused ({type(exc).__name__}: {exc})"
    finally:
        await _disconnect(connection)
    return f"{what} accepted"


async def _disconnect(connection: Any) -> None:
    with contextlib.suppress(Exception):  # already gone is fine
        await connection.disconnect()


def _pairing(*, sc: bool, bonding: bool) -> Any:
    """Just Works pairing settings of a probing central."""
    from bumble.pairing import PairingConfig, PairingDelegate

    io = PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT
    return PairingConfig(sc=sc, mitm=False, bonding=bonding, delegate=PairingDelegate(io))


async def unseal(handheld: Any, ticket: str) -> dict[str, Any]:
    """One session over BLE: unseal SL-0001 and follow the operation until it settles."""
    async with await handheld.open_session("ble") as session:
        outcome: dict[str, Any] = await session.unseal(SEAL, WORK_ORDER, ticket)
        deadline = time.monotonic() + 60 * PATIENCE
        while outcome["status"] == "pending" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            outcome = await session.result(str(outcome["op_id"]))
    return outcome


async def seal_state(handheld: Any) -> dict[str, Any]:
    """One session over BLE that reads the gateway's belief about SL-0001."""
    async with await handheld.open_session("ble") as session:
        state: dict[str, Any] = await session.seal_state(SEAL)
    return state


def check_secure_connections(btmon: Path) -> str:
    """btmon saw LE Secure Connections pairing (public keys both ways) and AES-CCM encryption.

    `btmon` is btmon's text output, or the raw trace it is writing (`btmon -w`), decoded here.
    """
    if btmon.suffix == ".btsnoop":
        decoded = subprocess.run(
            ["btmon", "-r", str(btmon)], capture_output=True, timeout=120, check=False
        )
        text = decoded.stdout.decode(errors="replace")
    else:
        text = btmon.read_text(errors="replace")
    public_keys = text.count("SMP: Pairing Public Key")
    encrypted = text.count("Encryption: Enabled with AES-CCM")
    if public_keys < 2 or not encrypted:
        raise AssertionError(
            f"btmon: {public_keys} SMP public keys, {encrypted} AES-CCM encryption changes"
        )
    return f"btmon: {public_keys} SMP public keys (LE Secure Connections), link AES-CCM encrypted"


# -- the run ----------------------------------------------------------------------------------


class Bed:
    """The processes of one run and what the scenarios share."""

    def __init__(self, work: Path, logs: Path, btmon: Path) -> None:
        self.work, self.logs, self.btmon = work, logs, btmon
        self.config, self.sim_state = work / "gw.toml", work / "sim"
        self.state = self.sim_state / "gateway"
        self.children: list[subprocess.Popen[bytes]] = []
        self.broker: Broker | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.handheld_radio = ""
        self.handheld: Any = None
        self.bluetoothd_log = logs / "bluetoothd-deploy.log"

    @property
    def b(self) -> Broker:
        assert self.broker is not None
        return self.broker

    def registrations(self) -> int:
        log = self.logs / "gateway-handheld.log"
        return log.read_text(errors="replace").count("registered with BlueZ")

    def bluetoothd(self) -> None:
        conf = self.work / "main.conf"
        conf.write_text(DEPLOY_MAIN_CONF)
        self.children.append(restart_bluetoothd(conf, self.bluetoothd_log))

    def start_radio(self) -> None:
        """Mosquitto and the simulator (its /dev/vhci controller is hci0, a handheld radio)."""
        self.children.append(subprocess.Popen(
            ["mosquitto", "-p", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ))  # fmt: skip
        sim = subprocess.Popen(
            [sys.executable, "-m", "gateway", "sim", "--radio", "vhci", "--no-meters",
             "--locks", "1", "--advertising-interval-ms", "500", "--handheld-radio",
             "--broker", f"mqtt://127.0.0.1:{PORT}", "--gateway-id", GATEWAY,
             "--write-config", str(self.config), "--state-dir", str(self.sim_state)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(self.logs / "sim-handheld.log").open("ab"),
        )  # fmt: skip
        self.children.insert(0, sim)
        assert sim.stdout is not None
        ready = sim.stdout.readline().decode()
        found = re.search(r"handheld_radio=(\S+)", ready)
        if not ready.startswith("sim ready") or found is None:
            raise RuntimeError(f"simulator did not start with a handheld radio: {ready!r}")
        self.handheld_radio = found.group(1)

    def start_gateway(self) -> None:
        """The gateway as `sealgw`, with handhelds over BLE, up and registered with BlueZ."""
        from gateway.auth.provision import init_gateway

        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.config.open("a", encoding="utf-8") as text:
            text.write('\n[handheld]\nenabled = true\nlisten = "ble"\n')
        init_gateway(self.state, GATEWAY)
        service_user([self.state, self.sim_state / "keys", self.sim_state / "master.pub"])
        self.broker = Broker()
        self.gateway = start_gateway(self.config, self.logs)
        self.children.insert(0, self.gateway)
        wait("gateway.started", lambda: bool(self.b.typed("gateway.started")), 40)
        wait(f"{SEAL} online", lambda: bool(self.b.states.get(SEAL, {}).get("online")), 40)
        wait("the handheld service registered with BlueZ", lambda: self.registrations() > 0, 30)

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(60)
                except subprocess.TimeoutExpired:
                    child.kill()
        if self.broker is not None:
            self.broker.close()

    # -- scenarios ---------------------------------------------------------------------------

    def deploy_settings(self) -> str:
        return deploy_settings_taken(self.bluetoothd_log)

    def refused(self) -> str:
        answer = asyncio.run(probe(self.handheld_radio))
        expected = (
            "RX write without pairing refused: INSUFFICIENT_ENCRYPTION (0x0f)",
            "an LE SC pairing with bonding accepted",
        )
        if not all(part in answer for part in expected):
            raise AssertionError(f"the probing central saw: {answer}")
        if not asyncio.run(adapter_pairable()):
            raise AssertionError("hci0 is not pairable while the gateway's agent is registered")
        return f"{answer}; Adapter1.Pairable is true"

    def paired(self) -> str:
        from firmware_sim.handheld.ble import HciHandheldDialer
        from firmware_sim.handheld.client import HandheldIdentity, SimulatedHandheld
        from gateway.daemon.control import control_socket_path, request

        identity, key = enroll(self.sim_state)
        deliver("cert", identity)
        dialer = HciHandheldDialer(self.handheld_radio, timeout_s=30 * PATIENCE)
        self.handheld = SimulatedHandheld(HandheldIdentity(identity, key), dial=dialer)
        issued = request(control_socket_path(self.state), "pair")
        code, fingerprint = str(issued["code"]), str(issued["gateway_key"])
        asyncio.run(self.handheld.pair("ble", code, gateway_fingerprint=fingerprint))
        wait(
            "handheld.paired on the broker",
            lambda: any(e["subject"] == OPERATOR for e in self.b.typed("handheld.paired")),
            20,
        )
        return f"paired {OPERATOR} over BLE, gateway key {fingerprint}"

    def unsealed(self) -> str:
        ticket = deliver_ticket(self.sim_state, self.state)
        outcome = asyncio.run(unseal(self.handheld, ticket))
        if outcome.get("status") != "done":
            raise AssertionError(f"unseal over BLE: {outcome}")
        wait(
            "seal.unsealed on the broker",
            lambda: any(e["subject"] == SEAL for e in self.b.typed("seal.unsealed")),
            30,
        )
        wait(
            f"{SEAL} retained state unsealed",
            lambda: self.b.states.get(SEAL, {}).get("state") == "unsealed",
            30,
        )
        event = next(e for e in self.b.typed("seal.unsealed") if e["subject"] == SEAL)
        if event["data"].get("operator") != OPERATOR or event["data"].get("ticket_id") != ticket:
            raise AssertionError(f"seal.unsealed names another operation: {event['data']}")
        return (
            f"op {outcome['op_id']} done, log_index {event['data'].get('log_index')}, "
            f"operator {OPERATOR}, ticket {ticket}; {check_secure_connections(self.btmon)}"
        )

    def after_restart(self) -> str:
        before = self.registrations()
        self.bluetoothd()
        wait("the gateway registered again", lambda: self.registrations() > before, 60)
        state = asyncio.run(seal_state(self.handheld))
        if state.get("seal_id") != SEAL or state.get("state") != "unsealed":
            raise AssertionError(f"a session after the restart read {state}")
        return f"registered again without a gateway restart; a new session read {state['state']}"


def main(out: Path, work: Path, logs: Path, btmon: Path) -> int:
    results: dict[str, dict[str, Any]] = {}
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    bed = Bed(work, logs, btmon)

    def scenario(name: str, body: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            results[name] = {"ok": True, "detail": body()}
        except Exception as exc:  # a scenario's failure is its result
            results[name] = {"ok": False, "error": repr(exc)}
        results[name]["s"] = round(time.monotonic() - started, 1)

    try:
        bed.start_radio()
        bed.bluetoothd()
        scenario("bluetoothd_with_deploy_settings", bed.deploy_settings)
        bed.start_gateway()
        for name, body in (
            ("handheld_link_security", bed.refused),
            ("handheld_pairs_over_ble", bed.paired),
            ("handheld_unseals_over_ble", bed.unsealed),
            ("handheld_after_bluetoothd_restart", bed.after_restart),
        ):
            scenario(name, body)
    except Exception as exc:  # the harness prints every log; say what broke first
        results["handheld_setup"] = {"ok": False, "error": repr(exc)}
    finally:
        bed.stop()
        merged = json.loads(out.read_text()) if out.exists() and out.stat().st_size else {}
        merged.setdefault("scenarios", {}).update(results)
        out.write_text(json.dumps(merged, indent=1))
    return 0 if results and all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
