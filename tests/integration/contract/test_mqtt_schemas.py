"""docs/schemas: every schema is valid, and what the real code publishes validates against it.

The payloads come from the real components: an in-process daemon on a real mosquitto (status,
Last Will, events, alarms, command replies), the lock service on simulated locks (seal events
and the retained seal state), the meter service on a simulated DL/T 645 meter, the theft rules,
the handheld service, the buffer and the checkpointer. Drafts that do not pass through a buffer
are sealed with the real encoder (`events.seal_event`) before validation.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from firmware_sim.handheld.client import HandheldRefusedError, PairedGateway, SimulatedHandheld
from firmware_sim.meters.dlt645 import Dlt645TcpServer, MeterBus, SimMeter
from gateway.audit.checkpointer import Checkpointer
from gateway.auth.policy import Decision, Reason, op_decided, op_requested
from gateway.config.model import BufferSection
from gateway.locks.reconcile import PendingOutcome, entry_draft, gap_draft, outcome_draft
from gateway.locks.state import LockSpec
from gateway.meters.config import TheftSection
from gateway.meters.model import Measurement, MeterReading
from gateway.meters.profiles import ValueKind
from gateway.meters.service import MeterService
from gateway.meters.theft import TheftCorrelator
from gateway.protocol.certs import encode_certificate, encode_revocations
from gateway.protocol.clock import ManualClock
from gateway.protocol.command_doc import CommandBody, encode_command
from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, Priority, seal_event
from gateway.protocol.handheld_crypto import ed25519_public_bytes
from gateway.protocol.seal_frames import LockState, LogEntry, LogEvent, ResultCode, WireLoop
from gateway.protocol.tickets import encode_ticket
from gateway.store.buffer import EventBuffer
from tests.fixtures.auth import GATEWAY_ID, HOUR, T0, at, make_world
from tests.fixtures.handheld import start_bench
from tests.fixtures.locks import bench
from tests.fixtures.meters import PROFILES, FakeSeals, Recorder, meters_section, theft_section
from tests.fixtures.mosquitto import BrokerFactory, Received, SubscriberFactory, wait_until
from tests.fixtures.mqtt_proxy import MqttProxy
from tests.fixtures.remote import GATEWAY, REPLY_TOPIC, ROOT, signed_command, start_rig
from tests.fixtures.remote import write_master_key as write_master_key_file

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"
SCHEMA_FILES = sorted(path.name for path in SCHEMAS.glob("*.json"))
_LOADED = {name: json.loads((SCHEMAS / name).read_text()) for name in SCHEMA_FILES}
REGISTRY: Registry[Any] = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in _LOADED.values()
)
HASH = "ab" * 32
METER_TABLE_START = datetime(2026, 1, 1, 4, 0, tzinfo=UTC)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_LOADED[name], registry=REGISTRY)


def errors(name: str, payload: bytes | dict[str, Any]) -> list[str]:
    """The schema's complaints about `payload` (empty when valid)."""
    obj = json.loads(payload) if isinstance(payload, bytes) else payload
    return [f"{e.json_path}: {e.message}" for e in validator(name).iter_errors(obj)]


def assert_valid(name: str, payloads: Iterable[bytes | dict[str, Any]]) -> int:
    """Every payload validates; returns how many there were."""
    count = 0
    for payload in payloads:
        found = errors(name, payload)
        assert not found, f"{name} rejects {payload!r}: {found}"
        count += 1
    return count


def schema_for(topic: str) -> str:
    """Which schema a message on `topic` (under ROOT, or the test reply topic) must follow."""
    if topic == REPLY_TOPIC:
        return "command_reply.json"
    suffix = topic.removeprefix(f"{ROOT}/")
    kind = suffix.split("/")[0]
    if suffix == "status":
        return "status.json"
    if suffix.startswith("seals/") and suffix.endswith("/state"):
        return "seal_state.json"
    return {
        "events": "event.json",
        "alarm": "alarm.json",
        "reply": "command_reply.json",
        "cmd": f"cmd_{suffix.split('/')[-1]}.json",
    }[kind]


def chain(drafts: Sequence[EventDraft], gateway: str = "gw-test") -> list[Event]:
    """Seal drafts into a chain with the real encoder, as the buffer would."""
    events, prev = [], GENESIS_HASH
    for seq, draft in enumerate(drafts, start=1):
        event = seal_event(draft, gateway, seq, prev)
        events.append(event)
        prev = event.hash
    return events


def validate_events(events: Iterable[Event]) -> set[str]:
    """Validate every payload against event.json; return the types seen."""
    events = list(events)
    assert_valid("event.json", (event.payload for event in events))
    return {event.type for event in events}


# -- the schemas themselves --------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = _LOADED[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}")


def test_the_shipped_set_is_complete() -> None:
    expected = {
        "event.json", "status.json", "seal_state.json", "alarm.json", "command_reply.json",
        "signed_document.json", "cmd_resend.json", "cmd_ticket.json", "cmd_revoke.json",
        "cmd_cert.json", "cmd_config.json", "cmd_log_level.json", "cmd_time_check.json",
        "cmd_rebirth.json", "cmd_restart.json",
    }  # fmt: skip
    assert set(SCHEMA_FILES) == expected


def test_docs_link_every_schema() -> None:
    text = (SCHEMAS.parent / "mqtt.md").read_text()
    assert [name for name in SCHEMA_FILES if f"schemas/{name}" not in text] == []


# -- the daemon on a real broker ---------------------------------------------------------------


async def test_daemon_status_will_events_alarms_and_replies_validate(
    tmp_path: Path, mosquitto_factory: BrokerFactory, subscriber_factory: SubscriberFactory
) -> None:
    broker = mosquitto_factory()
    proxy = await MqttProxy(broker.host, broker.port).start()
    master = Ed25519PrivateKey.generate()
    key_file = write_master_key_file(tmp_path / "master.pub", master)
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[uplink]\nurl = "{proxy.url}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.3\n'
        "[health]\ninterval_s = 1\n"
        "[synthetic]\nenabled = true\nrate_per_s = 5\n"
        f'[authorization]\nmaster_key_file = "{key_file}"\n'
        "[audit]\nrequire_identity = false\n"
    )
    sub = subscriber_factory(broker, [f"{ROOT}/#", REPLY_TOPIC])
    rig = await start_rig(config, sub, master)
    try:
        await commands_and_alarms(rig.subscriber, rig.gateway, master)
        proxy.drop_all()  # the broker publishes the Last Will, the gateway reconnects
        await sub.wait_for(lambda ms: any(b'"connection_lost"' in m.payload for m in ms))
        uplink = rig.gateway.uplink  # `connected` alone may still describe the dropped connection
        await wait_until(
            lambda: uplink.stats.connections == 2 and uplink.connected, 10, "reconnected"
        )
    finally:
        await rig.stop()
        await proxy.close()
    await sub.wait_for(lambda ms: any(b'"shutdown"' in m.payload for m in ms))
    await sub.wait_for(lambda ms: any(b'"gateway.stopped"' in m.payload for m in ms))
    messages = sub.messages
    by_schema: dict[str, list[Received]] = {}
    for message in messages:
        if message.topic.startswith(f"{ROOT}/cmd/"):
            continue  # our own requests, some malformed on purpose
        by_schema.setdefault(schema_for(message.topic), []).append(message)
    for name, received in by_schema.items():
        assert_valid(name, (m.payload for m in received))
    types = {json.loads(m.payload)["type"] for m in by_schema["event.json"]}
    assert {
        "gateway.started", "gateway.health", "synthetic.sample", "gateway.stopped",
    } <= types  # fmt: skip
    states = [json.loads(m.payload) for m in by_schema["status.json"]]
    assert {(s["state"], s.get("reason")) for s in states} == {
        ("online", None),
        ("offline", "connection_lost"),
        ("offline", "shutdown"),
    }
    alarms = [json.loads(m.payload)["state"] for m in by_schema["alarm.json"]]
    assert alarms == ["full", "recovered"]
    replies = [json.loads(m.payload) for m in by_schema["command_reply.json"]]
    codes = {r.get("error") for r in replies if not r["ok"]}
    assert {"bad_json", "unknown_command", "bad_request", "unsigned"} <= codes
    assert [r["id"] for r in replies if r["ok"]] == [None, None]  # signed: no request id


async def commands_and_alarms(sub: Any, gateway: Any, master: Ed25519PrivateKey) -> None:
    """Every kind of reply the dispatcher gives, and the out-of-chain storage alarm."""
    key = Ed25519PrivateKey.generate()  # not the master: a forged command
    cases: list[tuple[str, bytes]] = [
        ("resend", signed_command(master, "resend", {"from_seq": 1})),
        ("resend", b'{"id": "r-2", "to_seq": 3}'),
        ("resend", b"\xff not json"),
        ("no_such_command", b'{"id": 4}'),
        ("ticket", b'{"id": 5, "document": {"v": 1}}'),
        ("restart", b'{"id": 6}'),
        ("restart", signed_command(key, "restart")),
    ]
    for name, payload in cases:
        sub.publish(f"{ROOT}/cmd/{name}", payload, response_topic=REPLY_TOPIC)
    resend = signed_command(master, "resend", {"from_seq": 2})
    sub.publish(f"{ROOT}/cmd/resend", resend)  # without a response topic: reply/resend
    await sub.wait_for(lambda ms: len([m for m in ms if m.topic == REPLY_TOPIC]) == len(cases))
    await sub.wait_for(lambda ms: any(m.topic == f"{ROOT}/reply/resend" for m in ms))
    assert gateway.buffer.on_storage_full is not None
    gateway.buffer.on_storage_full(True)
    gateway.buffer.on_storage_full(False)
    await sub.wait_for(lambda ms: len([m for m in ms if "/alarm/" in m.topic]) == 2)
    await sub.wait_for(lambda ms: any(b'"gateway.health"' in m.payload for m in ms), 5)


async def test_signed_command_replies_validate(
    tmp_path: Path, mosquitto_factory: BrokerFactory, subscriber_factory: SubscriberFactory
) -> None:
    broker = mosquitto_factory()
    master = Ed25519PrivateKey.generate()
    key_file = write_master_key_file(tmp_path / "master.pub", master)
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nid = "{GATEWAY}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[uplink]\nurl = "{broker.url}"\n[health]\ninterval_s = 3600\n'
        f'[authorization]\nmaster_key_file = "{key_file}"\n'
        "[audit]\nrequire_identity = false\n"
    )
    rig = await start_rig(config, subscriber_factory(broker, [f"{ROOT}/#", REPLY_TOPIC]), master)
    try:
        documents = {
            "time_check": signed_command(master, "time_check"),
            "log_level": signed_command(master, "log_level", {"level": "INFO", "logger": "x.y"}),
            "config": signed_command(master, "config", {"patch": {"log": {"level": "INFO"}}}),
            "rebirth": signed_command(master, "rebirth"),
        }
        replies = {name: await rig.command(name, doc) for name, doc in documents.items()}
    finally:
        await rig.stop()
    for name, document in documents.items():
        assert_valid(f"cmd_{name}.json", [document])
    assert_valid("command_reply.json", replies.values())
    assert replies["time_check"]["ok"] and replies["log_level"]["result"]["level"] == "INFO"
    assert replies["config"]["ok"] is True
    events = [m for m in rig.subscriber.messages if "/events/" in m.topic]
    assert_valid("event.json", (m.payload for m in events))
    commands = [json.loads(m.payload) for m in events if m.topic.endswith("/gateway.command")]
    assert [c["data"]["command"] for c in commands] == ["log_level"]


# -- requests the master station sends ----------------------------------------------------------


def test_master_station_requests_validate(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    ticket = encode_ticket(world.ticket())
    cert = encode_certificate(world.certificate)
    revoke = encode_revocations(world.revoke(tickets=["00" * 16]))
    wrapped = {"id": 9, "document": json.loads(ticket)}
    assert_valid("cmd_ticket.json", [ticket, wrapped])
    assert_valid("cmd_cert.json", [cert])
    assert_valid("cmd_revoke.json", [revoke])
    assert_valid("signed_document.json", [ticket, cert, revoke])
    assert errors("cmd_ticket.json", cert), "a certificate is not a ticket"
    assert errors("cmd_revoke.json", ticket), "a ticket is not a revocation list"
    assert_valid("cmd_resend.json", [{"from_seq": 1}, {"id": "a", "from_seq": 0, "to_seq": None}])
    assert errors("cmd_resend.json", {"to_seq": 3})
    command = CommandBody("restart", "gw-1", T0, T0 + 60, "n" * 16, {})
    assert_valid("cmd_restart.json", [encode_command(world.authority._signing_key, command)])
    wrong = CommandBody("rebirth", "gw-1", T0, T0 + 60, "n" * 16, {})
    assert errors("cmd_restart.json", encode_command(world.authority._signing_key, wrong))


# -- the lock service on simulated locks -------------------------------------------------------


async def test_lock_service_events_and_retained_state_validate(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        assert b.service is not None
        await b.wait_events(lambda e: e.type == "seal.boot", count=3)
        ticket = b.issue()
        assert (await b.run(b.request(ticket, op="unseal"))).ok
        assert (await b.run(b.request(ticket, op="seal"))).ok
        denied = await b.run(b.request(ticket, seal_id="SL-0003"))
        assert denied.status == "denied"
        b.locks.inject("SL-0002", "drop_link")
        unknown = await b.run(b.request(ticket, seal_id="SL-0002"))
        assert unknown.status == "unknown"
        await b.wait_events(lambda e: e.type == "seal.unsealed" and e.subject == "SL-0002")
        b.locks.inject("SL-0001", "mechanical_failure")
        failed = await b.run(b.request(ticket, op="unseal"))
        assert failed.status == "failed"
        b.locks.inject("SL-0003", "wire_cut")
        await b.wait_events(lambda e: e.type == "seal.tamper", count=2)
        b.locks.inject("SL-0003", "low_battery")
        await b.wait_events(lambda e: e.type == "seal.battery_low", count=2)
        events = await b.events()
        retained = dict(b.retained)
    types = validate_events(events)
    assert {
        "seal.boot", "seal.op_requested", "seal.op_allowed", "seal.op_denied", "seal.unsealed",
        "seal.sealed", "seal.op_unconfirmed", "seal.op_failed", "seal.tamper", "seal.battery_low",
    } <= types  # fmt: skip
    assert assert_valid("seal_state.json", retained.values()) == 3
    assert json.loads(retained["seals/SL-0003/state"])["tamper"] is True


async def test_unreachable_offline_and_online_seal_events_validate(tmp_path: Path) -> None:
    async with bench(
        tmp_path, count=1, offline_after_s=5.0, unreachable_after_s=2.0, retries=0
    ) as b:
        assert b.service is not None
        await b.wait_events(lambda e: e.type == "seal.boot")
        ticket = b.issue()
        peripheral = b.locks.locks["SL-0001"]
        await peripheral.device.stop_advertising()
        b.clock.advance(6.0)
        await b.wait_events(lambda e: e.type == "seal.offline")
        result = await b.run(b.request(ticket, op="unseal"))
        assert (result.status, result.reason) == ("failed", "unreachable")
        await peripheral.device.start_advertising(
            auto_restart=True,
            advertising_data=peripheral.device.advertising_data,
            advertising_interval_min=100,
            advertising_interval_max=100,
        )
        await b.wait_events(lambda e: e.type == "seal.online")
        events = await b.events()
        retained = dict(b.retained)
    assert {"seal.offline", "seal.online", "seal.op_failed"} <= validate_events(events)
    [failed] = [e for e in events if e.type == "seal.op_failed"]
    assert failed.data["reason"] == "unreachable"
    assert_valid("seal_state.json", retained.values())


def test_lock_log_entries_gaps_and_policy_builders_validate(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    lock = LockSpec("SL-0001", bytes.fromhex("5ea1000000000001"), "AA:BB", b"a" * 32, b"l" * 32)

    def entry(index: int, event: LogEvent, result: ResultCode = ResultCode.OK) -> LogEntry:
        return LogEntry(
            index, T0 + index, event, result, LockState.SEALED, WireLoop.INTACT,
            b"\x01" * 8, b"\x02" * 8, b"\x03" * 8, b"\x04" * 8,
        )  # fmt: skip

    kinds = [LogEvent.FAULT, LogEvent.TIME_SET, LogEvent.TAMPER_SHELL_OPEN, LogEvent(0x42)]
    drafts = [entry_draft("gw-test", lock, entry(i, k), None) for i, k in enumerate(kinds, 1)]
    drafts.append(
        entry_draft("gw-test", lock, entry(9, LogEvent.OP_REJECTED, ResultCode.EXPIRED), None)
    )
    drafts.append(gap_draft("gw-test", lock, (10, 19), at(T0)))
    request = world.request(world.ticket())
    now = at(T0 + HOUR)
    drafts += [
        op_requested(request, now),
        op_decided(request, Decision.allow(), now),
        op_decided(request, Decision.deny(Reason.TICKET_EXPIRED, "late"), now),
    ]
    context = PendingOutcome(request, b"\x01" * 8)
    for index, result in ((11, ResultCode.OK), (12, ResultCode.BAD_STATE)):
        logged = entry(index, LogEvent.UNSEALED, result)
        drafts.append(outcome_draft("gw-test", lock, context, index, logged))
    types = validate_events(chain(drafts))
    assert {
        "seal.fault", "seal.time_set", "seal.tamper", "seal.log_entry", "seal.op_rejected",
        "seal.log_gap", "seal.op_requested", "seal.op_allowed", "seal.op_denied",
        "seal.unsealed", "seal.op_failed",
    } == types  # fmt: skip
    unknown = next(d for d in drafts if d.type == "seal.log_entry")
    assert unknown.data["event"] == "unknown_66"


# -- meters and theft --------------------------------------------------------------------------


async def test_meter_service_and_theft_events_validate() -> None:
    clock = ManualClock(METER_TABLE_START)
    meter = SimMeter("000000000001", clock, load=lambda _when: 0.6)
    recorder = Recorder()
    async with Dlt645TcpServer(MeterBus([meter])) as server:
        table = {
            "profiles_dir": str(PROFILES),
            "buses": [{
                "name": "rs485-1", "transport": f"dlt645-tcp://127.0.0.1:{server.port}",
                "gap_s": 0, "timeout_s": 0.3,
            }],
            "meters": [{
                "id": "M-1", "bus": "rs485-1", "profile": "dlt645-residential",
                "address": "000000000001", "poll_s": 60, "seal": "SL-1",
            }],
        }  # fmt: skip
        seals = FakeSeals(states={"SL-1": "sealed"})
        service = MeterService(meters_section(table), recorder, clock, seals, theft=TheftSection())
        try:
            assert await service.poll_once("M-1")
            meter.open_cover()
            assert await service.poll_once("M-1")
            meter.dead = True
            assert not await service.poll_once("M-1")
            meter.dead = False
            assert await service.poll_once("M-1")
        finally:
            await service.close()
    types = validate_events(chain(recorder.drafts))
    assert {
        "meter.reading", "meter.event", "meter.read_failed", "meter.read_recovered",
        "theft.suspected",
    } == types  # fmt: skip


def test_energy_theft_rules_validate() -> None:
    correlator = TheftCorrelator(theft_section(), FakeSeals(states={"SL-1": "sealed"}))
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def reading(hours: int, kwh: float) -> MeterReading:
        values = (
            Measurement("energy_import", kwh, "kWh", ValueKind.ENERGY),
            Measurement("voltage", 230.0, "V", ValueKind.VOLTAGE),
        )
        return MeterReading("M-1", start + timedelta(hours=hours), "modbus", values, "SL-1")

    drafts: list[EventDraft] = []
    for hours, kwh in enumerate([100.0, 101.0, 102.0, 103.0, 103.01, 90.0]):
        drafts += correlator.observe(reading(hours, kwh))
    rules = [d.data["rule"] for d in drafts]
    assert rules == ["energy_drop_under_seal", "energy_decrease_under_seal"]
    assert validate_events(chain(drafts)) == {"theft.suspected"}


# -- handhelds ---------------------------------------------------------------------------------


async def test_handheld_audit_events_validate(tmp_path: Path) -> None:
    b = await start_bench(tmp_path)
    try:
        issued = await b.service.issue_pairing_code()
        wrong = f"{(int(issued.code) + 1) % 10**8:08d}"
        with pytest.raises(HandheldRefusedError) as refused:
            await b.handheld().pair(b.address, wrong)
        assert refused.value.code == "bad_code"
        handheld = b.handheld()
        await handheld.pair(b.address, issued.code)
        async with await handheld.open_session(b.address) as session:
            tickets = await session.tickets()
            await session.unseal("SL-0001", tickets[0]["work_order"])
        await wait_until(lambda: bool(b.events_of("handheld.session_closed")), 5, "closed")
        pin = PairedGateway(GATEWAY_ID, ed25519_public_bytes(b.identity), T0)
        stranger = SimulatedHandheld(b.handheld(key=Ed25519PrivateKey.generate()).identity, pin)
        with pytest.raises(HandheldRefusedError) as refused:
            await stranger.open_session(b.address)
        assert refused.value.code == "unpaired_device"
    finally:
        await b.server.stop()
    assert validate_events(chain(b.events)) == {
        "handheld.pairing_code_issued", "handheld.pairing_attempt", "handheld.pairing_failed",
        "handheld.paired", "handheld.session_opened", "handheld.request",
        "handheld.session_closed", "handheld.session_denied",
    }  # fmt: skip


# -- buffer and checkpoints --------------------------------------------------------------------


async def test_buffer_notices_and_checkpoints_validate(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    small = BufferSection(max_bytes=256 * 1024, audit_reserve_bytes=64 * 1024)
    path = tmp_path / "buffer.db"
    path.write_bytes(os.urandom(8192))  # a corrupt file: moved aside, an alarm recorded
    buffer = EventBuffer(path, "gw-test", small, clock)
    await buffer.open()
    identity = Ed25519PrivateKey.generate()
    checkpointer = Checkpointer(
        identity, "gw-test", lambda: buffer.head, buffer.append, clock=clock
    )
    try:
        for start in range(0, 2000, 200):
            drafts = [
                EventDraft("synthetic.sample", "SYNTHETIC", {"n": n + 1, "pad": "x" * 200},
                           Priority.TELEMETRY, clock.now())
                for n in range(start, start + 200)
            ]  # fmt: skip
            for draft in drafts:
                buffer.submit(draft)
            stop = EventDraft("gateway.stopped", "gw-test", {}, Priority.AUDIT, clock.now())
            await buffer.append(stop)
        assert await checkpointer.checkpoint_now() is not None
        rows = await buffer.fetch_pending(dict.fromkeys(Priority, 0), 100_000)
    finally:
        await buffer.close()
    types = validate_events(Event.from_payload(row.payload) for row in rows)
    assert {"gateway.buffer_recovered", "gateway.telemetry_evicted", "gateway.checkpoint"} <= types


# -- negative cases: each schema rejects a payload missing a required member -------------------

VALID: dict[str, dict[str, Any]] = {
    "event.json": {
        "data": {"energy_kwh": 1235.5, "meter": "M-01", "protocol": "modbus",
                 "values": {"energy_import": {"unit": "kWh", "value": 1235.5}}},
        "gateway": "gw-1", "hash": HASH, "id": "01KQ8ZJ7Y3M2V5T0W9X4C6B8N1",
        "prev_hash": "0" * 64, "priority": "telemetry", "seq": 1, "subject": "M-01",
        "ts": "2026-11-22T10:45:15.123Z", "type": "meter.reading", "v": 1,
    },
    "status.json": {"gateway": "gw-0001", "protocol": "5", "state": "online",
                    "ts": "2026-11-22T10:45:14.123Z", "version": "0.1.0"},
    "seal_state.json": {"battery": "ok", "last_seen": "2026-11-22T10:45:14.123Z",
                        "lock_id": "5ea1000000000001", "log_head": 7, "online": True,
                        "seal": "SL-0001", "state": "sealed", "tamper": False, "wire": "intact"},
    "alarm.json": {"gateway": "gw-0001", "state": "full", "ts": "2026-11-22T10:45:14.123Z",
                   "type": "gateway.storage_full"},
    "command_reply.json": {"id": 7, "ok": True, "result": {"requeued": 0}},
    "cmd_resend.json": {"id": 7, "from_seq": 4801},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VALID))
def test_each_required_member_is_required(name: str) -> None:
    payload = VALID[name]
    assert errors(name, payload) == []
    for member in payload:
        if member not in _LOADED[name].get("required", ()):
            continue
        broken = {k: v for k, v in payload.items() if k != member}
        assert errors(name, broken), f"{name} accepts a payload without {member}"


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("event.json", lambda p: p["data"].pop("meter")),  # data required per type
        ("event.json", lambda p: p.update(priority="alarm")),  # wrong priority for the type
        ("event.json", lambda p: p.update(hash="AB" * 32)),  # not lowercase hex
        ("event.json", lambda p: p.update(seq=0)),
        ("event.json", lambda p: p.update(ts="2026-11-22T10:45:15Z")),  # no milliseconds
        ("event.json", lambda p: p.update(extra=1)),  # the envelope is closed
        ("status.json", lambda p: p.update(state="sleeping")),
        ("status.json", lambda p: p.pop("protocol")),  # birth says which MQTT version
        ("seal_state.json", lambda p: p.update(state="open")),
        ("alarm.json", lambda p: p.pop("state")),
        ("command_reply.json", lambda p: p.update(ok=False)),  # a failure needs error, detail
        ("cmd_resend.json", lambda p: p.update(from_seq=-1)),
    ],
)
def test_malformed_payloads_are_rejected(name: str, change: Any) -> None:
    payload = copy.deepcopy(VALID[name])
    change(payload)
    assert errors(name, payload)


def test_data_objects_are_open_for_newer_gateways() -> None:
    payload = copy.deepcopy(VALID["event.json"])
    payload["data"]["added_by_a_newer_gateway"] = {"x": 1}
    assert errors("event.json", payload) == []
    payload["type"] = "meter.something_new"  # an unknown type: any data object
    payload["data"] = {"whatever": True}
    assert errors("event.json", payload) == []


def test_signed_command_documents_need_the_signature(tmp_path: Path) -> None:
    del tmp_path
    key = Ed25519PrivateKey.generate()
    document = json.loads(signed_command(key, "time_check"))
    assert errors("cmd_time_check.json", document) == []
    for member in ("v", "kind", "body", "sig"):
        broken = {k: v for k, v in document.items() if k != member}
        assert errors("cmd_time_check.json", broken), member
    document["body"].pop("nonce")
    assert errors("cmd_time_check.json", document)
