"""Signed remote commands against a running gateway on a real mosquitto (issues 13 and 14).

The master station's signature must pin one exact document, the gateway's replay memory must not
silently vanish, and whoever holds the master key may reconfigure a gateway but not hand its
trust to another key or its traffic to the clear.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_sim.mosquitto import MosquittoBroker
from gateway.config.loader import load_config
from gateway.errors import AuthError
from gateway.protocol.canonical import canonical_bytes
from gateway.remote.auth import REPLAY_FILE
from gateway.remote.config_update import prepare_config
from tests.fixtures.mosquitto import SubscriberFactory
from tests.fixtures.remote import (
    GATEWAY,
    RemoteRig,
    launch_rig,
    signed_command,
    write_gateway_config,
    write_master_key,
)


def _signed_by_hand(master: Ed25519PrivateKey, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A command document signed the way the spec says, without our signer's own checks."""
    now = int(time.time())
    body = {"name": name, "gateway": GATEWAY, "issued_at": now, "expires_at": now + 300,
            "nonce": os.urandom(12).hex(), "args": args}  # fmt: skip
    sig = master.sign(b"sealgw/v1 command\x00" + canonical_bytes(body))
    encoded = base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    return {"v": 1, "kind": "command", "body": body, "sig": encoded}


# -- 13: one signature, one document ----------------------------------------------------------


async def test_a_respelled_number_under_a_valid_signature_is_refused(
    rig: RemoteRig, master: Ed25519PrivateKey
) -> None:
    doc = _signed_by_hand(master, "log_level", {"level": "DEBUG", "n": 30})
    respelled = json.dumps(doc).replace('"n": 30', '"n": 30.0').encode()
    assert b"30.0" in respelled
    beyond = _signed_by_hand(master, "time_check", {"n": 2**53})  # JCS writes 2**53 + 1 alike
    moved = json.dumps(beyond).replace(str(2**53), str(2**53 + 1)).encode()

    first = await rig.command("log_level", respelled)
    second = await rig.command("time_check", moved)

    assert (first["ok"], first["error"]) == (False, "malformed"), first
    assert (second["ok"], second["error"]) == (False, "malformed"), second
    assert "integer" in first["detail"] and "2**53" in second["detail"]


# -- 14: the replay memory fails closed ----------------------------------------------------------


async def test_an_unreadable_nonce_file_refuses_commands_instead_of_forgetting(
    config_path: Path,
    mosquitto: MosquittoBroker,
    subscriber_factory: SubscriberFactory,
    master: Ed25519PrivateKey,
    restore_logging: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = config_path.parent / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    (state / REPLAY_FILE).write_bytes(b'{"v": 1, "floor": 17, "nonces": {"abc')  # torn write
    rig = await launch_rig(config_path, mosquitto, subscriber_factory, master)
    try:
        reply = await rig.command("time_check", signed_command(master, "time_check"))
    finally:
        await rig.stop()
    assert (reply["ok"], reply["error"]) == (False, "replay_cache_unreadable"), reply
    assert any(r.levelno == logging.ERROR and REPLAY_FILE in r.getMessage() for r in caplog.records)


# -- 14: the master key may not give the gateway away -------------------------------------------


async def test_remote_config_cannot_replace_the_master_key(
    rig: RemoteRig, config_path: Path, master: Ed25519PrivateKey, tmp_path: Path
) -> None:
    other = write_master_key(tmp_path / "other.pub", Ed25519PrivateKey.generate())
    patch = {"authorization": {"master_key_file": str(other)}}
    before = config_path.read_text()

    reply = await rig.command("config", signed_command(master, "config", {"patch": patch}))

    assert (reply["ok"], reply["error"]) == (False, "trust_key_change"), reply
    assert config_path.read_text() == before


def test_remote_config_cannot_downgrade_the_uplink_to_plain_mqtt(
    tmp_path: Path, mosquitto: MosquittoBroker, master: Ed25519PrivateKey
) -> None:
    path = write_gateway_config(tmp_path, mosquitto, write_master_key(tmp_path / "ms.pub", master))
    tls_url = f"mqtts://127.0.0.1:{mosquitto.port}"
    path.write_text(path.read_text().replace(mosquitto.url, tls_url))
    running = load_config(path)
    assert running.uplink.url == tls_url

    with pytest.raises(AuthError) as refused:
        prepare_config(running, patch={"uplink": {"url": mosquitto.url}})
    assert refused.value.code == "transport_downgrade"
    other_tls = prepare_config(running, patch={"uplink": {"url": "mqtts://10.0.0.9:8883"}})
    assert other_tls.changed == ("uplink.url",)
