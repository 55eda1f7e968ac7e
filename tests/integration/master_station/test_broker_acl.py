"""The Mosquitto ACL of docs/mqtt.md, on a TLS broker that takes the client certificate CN as the
username: a gateway stays inside its own subtree, the master station reads all and writes cmd/.

The gateway under test is the real daemon (status, Last Will, events and command replies); the
other parties are paho clients with their own certificates. "Never arrives" is shown without
sleeping: the same client publishes an allowed marker right after the denied message, and the
broker handles one client's messages in order, so once the marker is in the denied one is not
coming.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from firmware_sim.mosquitto import BrokerTls, MosquittoBroker
from gateway.config.loader import load_config
from gateway.daemon.app import Gateway
from gateway.errors import GatewayError
from tests.fixtures.mosquitto import (
    Pki,
    Subscriber,
    SubscriberFactory,
    _issue,
    _make_ca,
    wait_until,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "mqtt.md"
ROOT = "sealgw/v1"
GW1, GW2, MASTER = "gw-0001", "gw-0002", "master-station"


def documented_acl() -> str:
    """The ACL file exactly as docs/mqtt.md shows it (the block after 'acl_file')."""
    text = DOC.read_text()
    match = re.search(r"```text\n(# sealgw Mosquitto ACL.*?)```", text, re.DOTALL)
    assert match, "docs/mqtt.md has no ACL block starting with '# sealgw Mosquitto ACL'"
    return match.group(1)


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pki]:
    """One CA; a server certificate; client certificates whose CN is the username."""
    folder = tmp_path_factory.mktemp("acl-pki")
    ca_path, ca_name, ca_key = _make_ca(folder, "ca", "sealgw ACL test CA")
    server_cert, server_key = _issue(folder, "server", "localhost", (ca_name, ca_key), server=True)
    made = {}
    for name in (GW1, GW2, MASTER):
        cert, key = _issue(folder, name, name, (ca_name, ca_key))
        made[name] = Pki(ca_path, server_cert, server_key, cert, key, ca_path, cert, key)
    return made


@pytest.fixture
def broker(tmp_path: Path, identities: dict[str, Pki]) -> MosquittoBroker:
    pki = identities[MASTER]
    tls = BrokerTls(pki.ca_cert, pki.server_cert, pki.server_key, True, identity_as_username=True)
    broker = MosquittoBroker(tmp_path / "broker", tls=tls, acl=documented_acl())
    try:
        broker.start()
    except GatewayError as exc:
        pytest.fail(f"mosquitto did not start: {exc}", pytrace=False)
    yield broker
    broker.stop()


def client(
    factory: SubscriberFactory, broker: MosquittoBroker, pki: Pki, topics: list[str], name: str
) -> Subscriber:
    """A party with its certificate. Mosquitto 2 disconnects an MQTT 5 client after each
    denied PUBLISH (PUBACK 0x87, then the socket closes), and the client resends what was not
    acknowledged after it reconnects: a party that sends N denied messages goes through N
    reconnects before its next allowed one is read, so it reconnects at once (0.05 s), not
    after paho's usual second, or a marker behind five denials could take over 10 s on a busy
    machine."""
    return factory(broker, topics, client_id=f"{name}-test", pki=pki, reconnect_s=0.05)


def start_gateway(tmp_path: Path, broker: MosquittoBroker, pki: Pki) -> Gateway:
    path = tmp_path / "gw.toml"
    path.write_text(
        f'[gateway]\nid = "{GW1}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[uplink]\nurl = "{broker.url}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.3\n'
        f'ca_file = "{pki.ca_cert}"\ncert_file = "{pki.client_cert}"\n'
        f'key_file = "{pki.client_key}"\n[health]\ninterval_s = 3600\n'
        "[audit]\nrequire_identity = false\n"
    )
    return Gateway(load_config(path))


async def test_gateway_owns_its_subtree_and_master_reads_all_writes_cmd(
    tmp_path: Path,
    broker: MosquittoBroker,
    identities: dict[str, Pki],
    subscriber_factory: SubscriberFactory,
) -> None:
    master = client(subscriber_factory, broker, identities[MASTER], [f"{ROOT}/#"], MASTER)
    await master.start()
    gateway = start_gateway(tmp_path, broker, identities[GW1])
    task = asyncio.create_task(gateway.run())
    try:
        await wait_until(lambda: gateway.uplink.connected, 15, "gateway online over TLS")
        messages = await master.wait_for(
            lambda ms: any(m.topic == f"{ROOT}/{GW1}/events/gateway.started" for m in ms)
        )
        [status] = [m for m in messages if m.topic == f"{ROOT}/{GW1}/status"]
        assert json.loads(status.payload)["state"] == "online"

        # the master station writes cmd/; the gateway replies inside its own subtree
        reply_topic = f"{ROOT}/{GW1}/reply/ms-1"
        master.publish(
            f"{ROOT}/{GW1}/cmd/resend",
            b'{"id": 1, "from_seq": 1}',
            response_topic=reply_topic,
            correlation_data=b"c-1",
        )
        master.publish(f"{ROOT}/{GW1}/cmd/resend", b'{"id": 2, "from_seq": 1}')
        replies = await master.wait_for(
            lambda ms: {m.topic for m in ms} >= {reply_topic, f"{ROOT}/{GW1}/reply/resend"}
        )
        [correlated] = [m for m in replies if m.topic == reply_topic]
        assert correlated.correlation_data == b"c-1"
        # no master key on this gateway: refused, but the refusal got through the ACLs
        assert json.loads(correlated.payload)["error"] == "verifier_missing"
    finally:
        gateway.request_stop()
        await asyncio.wait_for(task, 20)
    await master.wait_for(lambda ms: any(m.topic.endswith("/events/gateway.stopped") for m in ms))


async def test_a_gateway_cannot_write_or_read_another_gateways_subtree(
    broker: MosquittoBroker,
    identities: dict[str, Pki],
    subscriber_factory: SubscriberFactory,
) -> None:
    master = client(subscriber_factory, broker, identities[MASTER], [f"{ROOT}/#"], MASTER)
    victim = client(subscriber_factory, broker, identities[GW1], [f"{ROOT}/{GW1}/cmd/#"], GW1)
    intruder = client(
        subscriber_factory,
        broker,
        identities[GW2],
        [f"{ROOT}/{GW2}/cmd/#", f"{ROOT}/{GW1}/cmd/#", f"{ROOT}/{GW1}/events/#"],
        GW2,
    )
    for party in (master, victim, intruder):
        await party.start()
    await intruder.wait_subscribed(1)

    # gw-0002 forges gw-0001's events, status, state and a command, then writes its own event
    forged = [
        f"{ROOT}/{GW1}/events/seal.unsealed",
        f"{ROOT}/{GW1}/status",
        f"{ROOT}/{GW1}/seals/SL-0001/state",
        f"{ROOT}/{GW1}/cmd/resend",
        f"{ROOT}/{GW2}/cmd/resend",  # a gateway may not command itself either
    ]
    for topic in forged:
        intruder.publish(topic, b'{"forged": true}')
    intruder.publish(f"{ROOT}/{GW2}/events/gateway.started", b'{"marker": 1}')
    seen = await master.wait_for(lambda ms: any(b'"marker": 1' in m.payload for m in ms))
    assert [m.topic for m in seen if b"forged" in m.payload] == []
    assert [m for m in victim.messages if b"forged" in m.payload] == []

    # the master commands gw-0001, then gw-0002: gw-0002 only ever sees its own
    master.publish(f"{ROOT}/{GW1}/cmd/resend", b'{"secret": "for gw-0001"}')
    master.publish(f"{ROOT}/{GW2}/cmd/resend", b'{"marker": 2}')
    await intruder.wait_for(lambda ms: any(b'"marker": 2' in m.payload for m in ms))
    await victim.wait_for(lambda ms: any(b"for gw-0001" in m.payload for m in ms))
    assert [m for m in intruder.messages if b"for gw-0001" in m.payload] == []

    # gw-0001 writes its own subtree; gw-0002, subscribed to it, does not read it
    victim.publish(f"{ROOT}/{GW1}/events/seal.sealed", b'{"own": 1}')
    victim.publish(f"{ROOT}/{GW1}/reply/resend", b'{"own": 2}')
    await master.wait_for(lambda ms: sum(b'"own"' in m.payload for m in ms) == 2)
    intruder.publish(f"{ROOT}/{GW2}/events/gateway.started", b'{"marker": 3}')
    await master.wait_for(lambda ms: any(b'"marker": 3' in m.payload for m in ms))
    assert [m for m in intruder.messages if b'"own"' in m.payload] == []

    # the master station cannot forge a gateway's events
    master.publish(f"{ROOT}/{GW1}/events/seal.unsealed", b'{"forged": "by master"}')
    master.publish(f"{ROOT}/{GW1}/cmd/resend", b'{"marker": 4}')
    await victim.wait_for(lambda ms: any(b'"marker": 4' in m.payload for m in ms))
    await master.wait_for(lambda ms: any(b'"marker": 4' in m.payload for m in ms))
    assert [m for m in master.messages if b"by master" in m.payload] == []
