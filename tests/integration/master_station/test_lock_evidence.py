"""A compromised gateway cannot invent lock history the master accepts (docs/master.md).

Events go through a real Mosquitto to a real MasterListener whose ledger checks, with the
master's own K_lock, every relayed lock log entry's audit tag and each lock's index run, and
with the enrolled identity key every checkpoint signature.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.locks.reconcile import entry_draft
from gateway.locks.state import LockSpec
from gateway.protocol.checkpoint import CHECKPOINT_TYPE, checkpoint_data
from gateway.protocol.events import GENESIS_HASH, Event, EventDraft, Priority, seal_event
from gateway.protocol.seal_crypto import derive_lock_keys, sealed_entry
from gateway.protocol.seal_frames import LockState, LogEntry, LogEvent, ResultCode, WireLoop
from master_station.authority import MasterAuthority
from master_station.ledger.factory import open_ledger
from master_station.ledger.models import Ledger
from master_station.listener import ListenerOptions, MasterListener
from tests.fixtures.mosquitto import Broker, wait_until
from tests.integration.master_station.test_master_listener import publish_events, publisher

pytestmark = pytest.mark.security

REPO = Path(__file__).resolve().parents[3]
GATEWAY = "gw-ev"
LOCK_ID = bytes.fromhex("5ea1000000000007")
SEAL = "SL-0007"
T0 = datetime(2026, 12, 1, 8, tzinfo=UTC)


class Gateway:
    """A gateway's buffer in miniature: drafts chained with seal_event, as the real one does."""

    def __init__(self, gateway: str = GATEWAY) -> None:
        self.gateway = gateway
        self.events: list[Event] = []

    def add(self, draft: EventDraft) -> Event:
        prev = self.events[-1].hash if self.events else GENESIS_HASH
        event = seal_event(draft, self.gateway, len(self.events) + 1, prev)
        self.events.append(event)
        return event

    def checkpoint(self, identity: Ed25519PrivateKey) -> Event:
        last = self.events[-1]
        data = checkpoint_data(identity, self.gateway, (last.seq, last.hash), T0)
        return self.add(EventDraft(CHECKPOINT_TYPE, self.gateway, data, Priority.AUDIT, T0))


def lock_entry(
    k_lock: bytes, index: int, event: LogEvent, *, audit_key: bytes | None = None
) -> LogEntry:
    """An entry as the lock writes it (tags from K_lock); `audit_key` forges the audit tag."""
    keys = derive_lock_keys(k_lock, LOCK_ID)
    state = LockState.UNSEALED if event is LogEvent.UNSEALED else LockState.SEALED
    entry = LogEntry(index, 1_796_000_000 + index * 60, event, ResultCode.OK, state,
                     WireLoop.INTACT, b"\x01" * 8, b"\x02" * 8, bytes(8), bytes(8))  # fmt: skip
    return sealed_entry(keys.log, audit_key or keys.audit, LOCK_ID, entry)


def relayed(
    gateway: Gateway, k_lock: bytes, entry: LogEntry, *, event_id: str = "", as_type: str = ""
) -> Event:
    """The event the gateway's reconciler makes of `entry` (gateway.locks.reconcile)."""
    spec = LockSpec(
        SEAL, LOCK_ID, "00:00:00:00:00:07", bytes(32), derive_lock_keys(k_lock, LOCK_ID).log
    )
    draft = entry_draft(gateway.gateway, spec, entry, None)
    draft = replace(draft, id=event_id) if event_id else draft
    return gateway.add(replace(draft, type=as_type) if as_type else draft)


@pytest.fixture
def authority(tmp_path: Path) -> MasterAuthority:
    return MasterAuthority.create(tmp_path / "master")


def listen(broker: Broker, ledger: Ledger) -> MasterListener:
    opts = ListenerOptions(broker_url=f"mqtt://{broker.host}:{broker.port}", tick_s=0.1,
                           heal=False, client_id="m-evidence")  # fmt: skip
    return MasterListener(opts, ledger)


async def test_forged_and_replayed_lock_history_is_flagged(
    mosquitto: Broker, tmp_path: Path, authority: MasterAuthority
) -> None:
    k_lock = authority.provision_lock(LOCK_ID)
    identity = Ed25519PrivateKey.generate()
    authority.enroll_gateway(GATEWAY, identity.public_key())
    gw = Gateway()
    genuine = relayed(gw, k_lock, lock_entry(k_lock, 1, LogEvent.UNSEALED))
    relayed(gw, k_lock, lock_entry(k_lock, 2, LogEvent.SEALED))
    forged_key = derive_lock_keys(os.urandom(32), LOCK_ID).audit  # the gateway guesses K_audit
    forged = relayed(gw, k_lock, lock_entry(k_lock, 3, LogEvent.UNSEALED, audit_key=forged_key))
    replay = relayed(gw, k_lock, lock_entry(k_lock, 1, LogEvent.UNSEALED), event_id="01" + "0" * 24)
    relayed(gw, k_lock, lock_entry(k_lock, 5, LogEvent.SEALED))  # 4 never arrives
    dressed = relayed(gw, k_lock, lock_entry(k_lock, 6, LogEvent.SEALED), as_type="seal.unsealed")
    lie = gw.add(EventDraft("seal.unsealed", SEAL, {"lock_id": LOCK_ID.hex(), "log_index": 6,
                                                     "source": "answer"}, Priority.AUDIT, T0))  # fmt: skip
    gw.checkpoint(identity)
    stolen = gw.checkpoint(Ed25519PrivateKey.generate())

    ledger = open_ledger(tmp_path / "ledger.db", trust=authority)
    with publisher(mosquitto) as pub, listen(mosquitto, ledger) as listener:
        publish_events(pub, gw.events)
        await wait_until(lambda: listener.stats.stored == len(gw.events), 15, "all stored")

    found = {(p.kind, p.seq) for p in ledger.problems(GATEWAY)}
    assert found == {
        ("lock_forged", forged.seq),
        ("lock_duplicate", replay.seq),
        ("lock_mismatch", dressed.seq),
        ("lock_unattested", lie.seq),
        ("checkpoint", stolen.seq),
    }
    report = ledger.verify(GATEWAY)
    assert report.lock_gaps == ((LOCK_ID.hex(), 3, 4),)  # the forged 3 is not history
    assert not report.ok and report.gaps == ()  # the chain itself is whole
    unseals = [e.id for e in ledger.events(types=["seal.unsealed"])]
    assert unseals == [genuine.id]  # forged, replayed and unattested openings are not counted

    done = subprocess.run(
        [sys.executable, "-m", "gateway", "master", "verify", "--ledger", str(tmp_path / "ledger.db")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    (shown,) = json.loads(done.stdout)
    assert {p["kind"] for p in shown["problems"]} == {
        "lock_forged",
        "lock_duplicate",
        "lock_mismatch",
        "lock_unattested",
        "checkpoint",
    }
    assert shown["lock_gaps"] == [{"lock_id": LOCK_ID.hex(), "first": 3, "last": 4}]
    ledger.close()


async def test_a_genuine_lock_history_and_signed_trail_pass(
    mosquitto: Broker, tmp_path: Path, authority: MasterAuthority
) -> None:
    k_lock = authority.provision_lock(LOCK_ID)
    identity = Ed25519PrivateKey.generate()
    authority.enroll_gateway(GATEWAY, identity.public_key())
    gw = Gateway()
    for index in range(1, 7):
        relayed(
            gw, k_lock, lock_entry(k_lock, index, (LogEvent.UNSEALED, LogEvent.SEALED)[index % 2])
        )
    gap = EventDraft("seal.log_gap", SEAL, {"lock_id": LOCK_ID.hex(), "first": 7, "last": 8},
                     Priority.ALARM, T0 + timedelta(minutes=1))  # fmt: skip
    gw.add(gap)
    relayed(gw, k_lock, lock_entry(k_lock, 9, LogEvent.SEALED))  # 7..8 announced as lost
    gw.checkpoint(identity)

    ledger = open_ledger(tmp_path / "ledger.db", trust=authority)
    with publisher(mosquitto) as pub, listen(mosquitto, ledger) as listener:
        publish_events(pub, gw.events)
        await wait_until(lambda: listener.stats.stored == len(gw.events), 15, "all stored")
    report = ledger.verify(GATEWAY)
    assert report.ok, (report.problems, report.lock_gaps)
    assert len(ledger.events(types=["seal.unsealed", "seal.sealed"])) == 7
    ledger.close()


async def test_checkpoints_of_an_unenrolled_gateway_are_a_problem(
    mosquitto: Broker, tmp_path: Path, authority: MasterAuthority
) -> None:
    gw = Gateway("gw-stranger")
    gw.add(EventDraft("gateway.started", gw.gateway, {}, Priority.AUDIT, T0))
    gw.checkpoint(Ed25519PrivateKey.generate())
    gw.add(EventDraft("gateway.stopped", gw.gateway, {}, Priority.AUDIT, T0))
    gw.checkpoint(Ed25519PrivateKey.generate())
    ledger = open_ledger(tmp_path / "ledger.db", trust=authority)
    with publisher(mosquitto) as pub, listen(mosquitto, ledger) as listener:
        publish_events(pub, gw.events)
        await wait_until(lambda: listener.stats.stored == len(gw.events), 15, "all stored")
    assert [(p.kind, p.seq) for p in ledger.problems("gw-stranger")] == [("unenrolled", None)]
    ledger.close()
