"""Authorization and audit bench: policy decisions, ticket verification, checkpoint signatures.

- decide: policy.decide on a realistic allowed request (signed ticket for two seals, operator
  certificate, a revocation list with a few hundred entries, the default role table). decide
  re-verifies the three Ed25519 signatures on every call, as the daemon does, so that is what
  decisions_per_s measures. decide takes no pre-verified inputs; for the cost of the decision
  logic alone, the bench also runs it with the signature check stubbed (logic_only_*).
- verify_ticket: decode_ticket (parse the canonical document, then verify) of one ticket.
- checkpoint_sign / checkpoint_verify: one gateway.checkpoint signature, made and checked.
- audit_verify: `sealgw audit verify`'s core over a chain of events with checkpoints.

Every figure is the median over rounds; per-operation times come from batches, not single calls.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import gateway.auth.policy
from gateway.audit.verify import GatewayKeys, audit_events
from gateway.auth.policy import DEFAULT_TABLE, GatewayTrust, OperationRequest, decide
from gateway.protocol.checkpoint import CHECKPOINT_TYPE, checkpoint_data, verify_checkpoint
from gateway.protocol.events import GENESIS_HASH, EventDraft, Priority, seal_event
from gateway.protocol.seal_frames import LockState
from gateway.protocol.tickets import Ticket, decode_ticket, encode_ticket, x25519_public_bytes
from master_station.authority import MasterAuthority

GATEWAY = "gw-bench"
DISTRICT = "district-1"
OPERATOR = "op-0042"
T0 = 1_767_225_600  # 2026-01-01T00:00Z
HOUR = 3600
REVOKED = 300  # entries of each kind in the revocation list


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run every measurement and return the result object (headline figures last)."""
    rounds = 3 if quick else 7
    batch = 200 if quick else 2000
    chain_len = 2_000 if quick else 20_000
    with tempfile.TemporaryDirectory(prefix="sealgw-bench-authz-") as tmp:
        world = _World.build(Path(tmp))
        decide_us = _per_op_us(world.decide_once, batch, rounds)
        with mock.patch.object(gateway.auth.policy, "_signed_by_master", _signed):
            logic_us = _per_op_us(world.decide_once, batch * 10, rounds)
    ticket_us = _per_op_us(world.verify_ticket_once, batch, rounds)
    sign_us, verify_us = _checkpoint_us(batch, rounds)
    audit_rate = _audit_rate(chain_len, rounds)
    _say(verbose, f"decide {decide_us:.1f} us, logic only {logic_us:.2f} us")
    _say(verbose, f"ticket {ticket_us:.1f} us, checkpoint {sign_us:.1f}/{verify_us:.1f} us")
    return {
        "bench": "authz",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "batch": batch,
        "signatures_per_decision": 3,
        "revocation_entries": 3 * REVOKED,
        "ticket_doc_bytes": len(world.ticket_doc),
        "decide_us": round(decide_us, 2),
        "logic_only_decide_us": round(logic_us, 3),
        "logic_only_decisions_per_s": round(1e6 / logic_us),
        "audit_chain_events": chain_len,
        "audit_verify_events_per_s": round(audit_rate),
        "checkpoint_sign_us": round(sign_us, 2),
        "checkpoint_verify_us": round(verify_us, 2),
        "verify_ticket_us": round(ticket_us, 2),
        "decisions_per_s": round(1e6 / decide_us),
    }


class _World:
    """A master station, a gateway trust anchor and the documents one decision needs."""

    def __init__(self, authority: MasterAuthority, ticket: Ticket, handheld: bytes) -> None:
        self.authority = authority
        self.ticket = ticket
        self.ticket_doc = encode_ticket(ticket)
        self.trust = GatewayTrust(GATEWAY, DISTRICT, authority.public_key)
        self.certificate = authority.enroll_operator(
            operator=OPERATOR,
            name="Li Wei",
            roles=["meter_installer", "auditor"],
            districts=[DISTRICT],
            device_key=handheld,
            not_before=T0 - 30 * 24 * HOUR,
            not_after=T0 + 365 * 24 * HOUR,
            issued_at=T0 - 30 * 24 * HOUR,
        )
        self.revocations = authority.revoke(
            tickets=[os.urandom(16).hex() for _ in range(REVOKED)],
            operators=[f"op-{n:05d}" for n in range(1000, 1000 + REVOKED)],
            certificates=[os.urandom(8).hex() for _ in range(REVOKED)],
            issued_at=T0,
        )
        self.request = OperationRequest(
            OPERATOR, handheld, ticket.ticket_id, ticket.work_order, "SL-0001", "unseal"
        )
        self.now = datetime.fromtimestamp(T0 + HOUR, UTC)

    @classmethod
    def build(cls, directory: Path) -> _World:
        """A fresh authority in `directory`, one ticket for two seals and a handheld key."""
        authority = MasterAuthority.create(directory / "master")
        seals = [(f"SL-000{n}", bytes.fromhex(f"5ea100000000000{n}")) for n in (1, 2)]
        for _seal_id, lock_id in seals:
            authority.provision_lock(lock_id)
        ticket = authority.issue_ticket(
            work_order="WO-2026-0001",
            flow="meter_replace",
            operator=OPERATOR,
            role="meter_installer",
            gateway=GATEWAY,
            gateway_key=x25519_public_bytes(X25519PrivateKey.generate()),
            seals=seals,
            ops=["unseal", "seal", "read_state"],
            not_before=T0,
            not_after=T0 + 2 * HOUR,
            max_uses=4,
            issued_at=T0 - HOUR,
        )
        handheld = Ed25519PrivateKey.generate().public_key()
        return cls(authority, ticket, handheld.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def decide_once(self) -> None:
        """One full decision; it must allow, or the bench measures an early deny."""
        decision = decide(
            self.request,
            self.ticket,
            certificate=self.certificate,
            revocations=self.revocations,
            table=DEFAULT_TABLE,
            seal_state=LockState.SEALED,
            uses_so_far=1,
            now=self.now,
            skew_s=120,
            gateway=self.trust,
        )
        if not decision.allowed:
            raise RuntimeError(f"bench decision denied: {decision.reason}")

    def verify_ticket_once(self) -> None:
        """Decode and verify the ticket document as received on cmd/ticket."""
        decode_ticket(self.ticket_doc, self.trust.master_key)


def _per_op_us(operation: Callable[[], None], batch: int, rounds: int) -> float:
    """Median over rounds of the mean microseconds per call in a batch."""
    operation()  # warm caches (lru_cache of key order, imports)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(samples)


def _checkpoint_us(batch: int, rounds: int) -> tuple[float, float]:
    identity = Ed25519PrivateKey.generate()
    public = identity.public_key()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    head = (41, "ab" * 32)
    data = checkpoint_data(identity, GATEWAY, head, moment)
    draft = EventDraft(CHECKPOINT_TYPE, GATEWAY, data, Priority.AUDIT, moment)
    obj = json.loads(seal_event(draft, GATEWAY, 42, head[1]).payload)
    if not verify_checkpoint(obj, public):
        raise RuntimeError("bench checkpoint does not verify")
    sign = _per_op_us(
        lambda: _discard(checkpoint_data(identity, GATEWAY, head, moment)), batch, rounds
    )
    verify = _per_op_us(lambda: _discard(verify_checkpoint(obj, public)), batch, rounds)
    return sign, verify


def _audit_rate(count: int, rounds: int) -> float:
    """Events per second through audit_events, with a checkpoint after every 100 events."""
    identity = Ed25519PrivateKey.generate()
    objs = _chain(identity, count)
    keys = GatewayKeys((identity.public_key(),))
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        report = audit_events(objs, keys)
        rates.append(len(objs) / (time.perf_counter() - start))
        if not report.ok:
            raise RuntimeError(f"bench chain does not verify: {report.problems[:3]}")
    return statistics.median(rates)


def _chain(identity: Ed25519PrivateKey, count: int) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    seq, prev = 0, GENESIS_HASH
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(count):
        moment = start + timedelta(milliseconds=n)
        if n % 100 == 99:
            data = checkpoint_data(identity, GATEWAY, (seq, prev), moment)
            draft = EventDraft(CHECKPOINT_TYPE, GATEWAY, data, Priority.AUDIT, moment)
        else:
            reading = {"energy_kwh": 1000.0 + n / 100, "voltage_v": 229.7, "n": n}
            draft = EventDraft("meter.reading", "M-001", reading, Priority.TELEMETRY, moment)
        event = seal_event(draft, GATEWAY, seq + 1, prev)
        objs.append(json.loads(event.payload))
        seq, prev = event.seq, event.hash
    return objs


def _signed(*_args: object) -> bool:
    """Stands in for policy._signed_by_master when timing the decision logic alone."""
    return True


def _discard(_value: object) -> None:
    return None


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr)
