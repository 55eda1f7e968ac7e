"""`sealgw master` key commands: files 0600, nothing secret printed, documents that verify."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.protocol.certs import decode_certificate, decode_revocations
from gateway.protocol.tickets import decode_ticket
from master_station.cli import main
from master_station.ledger.factory import open_ledger
from tests.fixtures.mosquitto import Broker


def raw_public(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture
def master_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "ms"
    assert main(["init", "--master-dir", str(directory)]) == 0
    capsys.readouterr()
    return directory


def ms_key(directory: Path) -> Ed25519PublicKey:
    raw = (directory / "ms_signing.key").read_bytes()
    return Ed25519PrivateKey.from_private_bytes(raw).public_key()


def test_provision_lock_prints_no_secret(
    master_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["provision-lock", "--master-dir", str(master_dir), "--lock-id", "5ea1000000000001",
                 "--seal", "SL-0001"])  # fmt: skip
    out = capsys.readouterr().out
    key_file = master_dir / "locks" / "5ea1000000000001.key"
    assert code == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_bytes().hex() not in out
    assert str(key_file) in out and "SL-0001" in out
    again = ["provision-lock", "--master-dir", str(master_dir), "--lock-id", "5ea1000000000001"]
    assert main(again) == 2  # never overwrites a lock key
    assert main(["provision-lock", "--master-dir", str(master_dir), "--lock-id", "xyz"]) == 2


def test_issue_ticket_enroll_and_revoke(
    master_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["provision-lock", "--master-dir", str(master_dir), "--lock-id", "5ea1000000000001",
          "--seal", "SL-0001"])  # fmt: skip
    gateway_key = X25519PrivateKey.generate()
    out, ledger = tmp_path / "ticket.json", tmp_path / "ledger.db"
    code = main([
        "issue-ticket", "--master-dir", str(master_dir), "--gateway", "gw-0001",
        "--gateway-key", raw_public(gateway_key).hex(), "--work-order", "WO-1",
        "--flow", "meter_replace", "--operator", "op-0042", "--role", "meter_installer",
        "--seal", "SL-0001", "--valid-minutes", "60", "--max-uses", "2", "--out", str(out),
        "--ledger", str(ledger),
    ])  # fmt: skip
    assert code == 0
    assert out.stat().st_mode & 0o777 == 0o600
    ticket = decode_ticket(out.read_bytes(), ms_key(master_dir))
    assert (ticket.flow, ticket.seal_ids, ticket.max_uses) == ("meter_replace", ("SL-0001",), 2)
    led = open_ledger(ledger)
    assert led.ticket_flows() == {ticket.ticket_id: "meter_replace"}
    led.close()
    index = (master_dir / "tickets.jsonl").read_text().splitlines()
    assert json.loads(index[0])["flow"] == "meter_replace"

    cert_file = tmp_path / "cert.json"
    device = raw_public(Ed25519PrivateKey.generate()).hex()
    assert main(["enroll-operator", "--master-dir", str(master_dir), "--operator", "op-0042",
                 "--name", "Li Wei", "--role", "meter_installer", "--district", "d-1",
                 "--device-key", device, "--out", str(cert_file)]) == 0  # fmt: skip
    cert = decode_certificate(cert_file.read_bytes(), ms_key(master_dir))
    assert cert.device_key.hex() == device

    capsys.readouterr()
    assert main(["revoke", "--master-dir", str(master_dir), "--ticket", ticket.ticket_id]) == 0
    revocations = decode_revocations(capsys.readouterr().out.strip(), ms_key(master_dir))
    assert (revocations.serial, revocations.tickets) == (1, (ticket.ticket_id,))


def test_usage_errors_are_clear(
    master_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["issue-ticket", "--master-dir", str(master_dir), "--gateway", "gw-1",
                 "--gateway-key", "beef", "--work-order", "W", "--flow", "rotation",
                 "--operator", "o", "--role", "r", "--seal", "SL-1"]) == 2  # fmt: skip
    assert "gateway-key" in capsys.readouterr().err
    assert main(["revoke", "--master-dir", str(tmp_path / "none"), "--ticket", "00" * 16]) == 2
    assert "sealgw master init" in capsys.readouterr().err
    assert main(["listen", "--broker", "http://x", "--ledger", str(tmp_path / "l.db")]) == 2


def test_revoke_publish_waits_for_the_gateway_reply(
    master_dir: Path, mosquitto: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[dict[str, object]] = []
    subscribed = threading.Event()

    def on_message(client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        seen.append(json.loads(msg.payload))
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = msg.properties.CorrelationData
        reply = {"ok": True, "result": {"outcome": "ok"}}
        client.publish(msg.properties.ResponseTopic, json.dumps(reply), qos=1, properties=props)

    gateway = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-7", protocol=paho.MQTTv5)
    gateway.on_message = on_message
    gateway.on_subscribe = lambda *_: subscribed.set()
    gateway.connect(mosquitto.host, mosquitto.port)
    gateway.subscribe("sealgw/v1/gw-7/cmd/revoke", qos=1)
    gateway.loop_start()
    try:
        assert subscribed.wait(5)
        code = main(["revoke", "--master-dir", str(master_dir), "--operator", "op-13",
                     "--publish", "--broker", mosquitto.url, "--gateway", "gw-7"])  # fmt: skip
    finally:
        gateway.disconnect()
        gateway.loop_stop()
    assert code == 0
    assert seen[0]["document"]["kind"] == "revocation_list"  # type: ignore[index]
    assert 'gw-7: {"ok": true' in capsys.readouterr().out
