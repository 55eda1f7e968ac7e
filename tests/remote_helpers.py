"""Helpers for remote-management tests: signing commands, and a gateway with a command channel."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from firmware_sim.mosquitto import MosquittoBroker
from gateway.config.loader import load_config
from gateway.daemon.app import Gateway
from gateway.protocol.command_doc import CommandBody, encode_command
from tests.fixtures.mosquitto import Received, Subscriber, wait_until

GATEWAY = "gw-remote"
ROOT = f"sealgw/v1/{GATEWAY}"
REPLY_TOPIC = "test/replies"


def signed_command(
    key: Ed25519PrivateKey,
    name: str,
    args: Mapping[str, Any] | None = None,
    *,
    gateway: str = GATEWAY,
    issued_at: int | None = None,
    lifetime_s: int = 300,
    nonce: str | None = None,
) -> bytes:
    """A command document signed by `key`."""
    issued = int(time.time()) if issued_at is None else issued_at
    body = CommandBody(
        name=name,
        gateway=gateway,
        issued_at=issued,
        expires_at=issued + lifetime_s,
        nonce=nonce or os.urandom(12).hex(),
        args=dict(args or {}),
    )
    return encode_command(key, body)


def write_master_key(path: Path, key: Ed25519PrivateKey) -> Path:
    """The public half as 64 hex digits, as `authorization.master_key_file` holds it."""
    path.write_text(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex() + "\n")
    return path


def write_gateway_config(tmp_path: Path, broker: MosquittoBroker, master_key_file: Path) -> Path:
    """A minimal gateway config: no services, a slow health loop, the broker, the MS key."""
    path = tmp_path / "gw.toml"
    path.write_text(
        "# remote test gateway\n"
        f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[uplink]\nurl = "{broker.url}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n'
        "[health]\ninterval_s = 3600\n"
        f'[authorization]\nmaster_key_file = "{master_key_file}"\n'
    )
    return path


@dataclass
class RemoteRig:
    """A running in-process gateway with remote management, and a subscriber on its topics."""

    gateway: Gateway
    subscriber: Subscriber
    task: asyncio.Task[None]

    @property
    def restarts(self) -> list[int]:
        """The exit code a remote restart asked for, if any (the daemon stops with it)."""
        return [self.gateway.exit_code] if self.gateway.exit_code else []

    async def command(self, name: str, document: bytes, timeout: float = 10.0) -> dict[str, Any]:
        """Publish `document` to cmd/`name` and return the reply correlated with it."""
        correlation = os.urandom(8)
        self.subscriber.publish(
            f"{ROOT}/cmd/{name}",
            document,
            response_topic=REPLY_TOPIC,
            correlation_data=correlation,
        )

        def replies(messages: list[Received]) -> list[Received]:
            return [
                m for m in messages if m.topic == REPLY_TOPIC and m.correlation_data == correlation
            ]

        reply = replies(await self.subscriber.wait_for(lambda ms: bool(replies(ms)), timeout))[0]
        result: dict[str, Any] = json.loads(reply.payload)
        return result

    async def stop(self) -> None:
        """Stop the gateway and wait for its run() to return."""
        self.gateway.request_stop()
        await asyncio.wait_for(self.task, 20)


async def start_rig(
    config_path: Path, subscriber: Subscriber, master: Ed25519PrivateKey
) -> RemoteRig:
    """Start a gateway from `config_path` and wait until it is online."""
    config = load_config(config_path)
    gateway = Gateway(config)  # with a master key, the daemon wires remote management itself
    assert "config" in gateway.dispatcher.names(), "remote management is not wired"
    await subscriber.start()
    task = asyncio.create_task(gateway.run())
    await wait_until(lambda: gateway.uplink.connected, 15, "gateway online")
    await wait_until(lambda: not any(gateway.buffer.depth().values()), 15, "buffer drained")
    return RemoteRig(gateway, subscriber, task)
