"""`sealgw probe authz`: policy decisions, ticket verification, checkpoint signatures, audit.

The documents are synthetic but real: a throwaway master key signs a ticket for two seals, an
operator certificate and a revocation list with `REVOKED` entries of each kind, shaped as the
master station issues them (docs/authorization.md), so their sizes and signature checks are
those of the field. Nothing is read from or written to the gateway's state.

- `decide_us`: policy.decide on an allowed request. It verifies the three Ed25519 signatures
  (ticket, certificate, revocation list) on every call, as the daemon does;
- `logic_only_decide_us`: the same decision with the signature check stood in for, the cost
  of the decision logic alone (decide takes no pre-verified inputs);
- `verify_ticket_us`: decode_ticket (parse the canonical document, then verify);
- `checkpoint_sign_us` / `checkpoint_verify_us`: one gateway.checkpoint signature;
- `audit_verify_events_per_s`: `sealgw audit verify`'s core over a chain of events with a
  signed checkpoint after every 100.

Per-call times are medians over rounds of the mean over a batch, never single calls.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.verify import GatewayKeys, audit_events
from gateway.auth import policy
from gateway.auth.policy import DEFAULT_TABLE, GatewayTrust, OperationRequest, decide
from gateway.errors import ProbeError
from gateway.probe.timing import per_call_us
from gateway.protocol.canonical import JSONValue
from gateway.protocol.certs import (
    OperatorCertificate,
    RevocationList,
    sign_certificate,
    sign_revocations,
)
from gateway.protocol.checkpoint import CHECKPOINT_TYPE, checkpoint_data, verify_checkpoint
from gateway.protocol.events import GENESIS_HASH, EventDraft, EventType, Priority, seal_event
from gateway.protocol.seal_frames import LockState
from gateway.protocol.tickets import (
    X25519_LEN,
    SealGrant,
    Ticket,
    decode_ticket,
    encode_ticket,
    sign_ticket,
    x25519_public_bytes,
)

__all__ = ["AuthzSizes", "probe_authz"]

GATEWAY = "gw-probe"
DISTRICT = "district-1"
OPERATOR = "op-0042"
T0 = 1_767_225_600  # 2026-01-01T00:00Z
HOUR = 3600
DAY = 24 * HOUR
REVOKED = 300  # entries of each kind in the revocation list
SIGNATURES_PER_DECISION = 3
NONCE_LEN = 12
SEALED_KEY_LEN = 48  # a 32-byte K_TL under AES-GCM: ciphertext and tag


@dataclass(frozen=True, slots=True)
class AuthzSizes:
    """How much to measure: rounds, calls per batch, events in the audited chain."""

    rounds: int = 7
    batch: int = 2000
    chain: int = 20_000

    @classmethod
    def quick(cls) -> AuthzSizes:
        """Small sizes, for smoke tests."""
        return cls(rounds=3, batch=200, chain=2_000)


def probe_authz(sizes: AuthzSizes) -> dict[str, JSONValue]:
    """Run every measurement; the figures, headline ones last."""
    world = _World.build()
    decide_us = per_call_us(world.decide_once, sizes.batch, sizes.rounds)
    # The logic alone: the one place the signature check is stood in for, only while timing.
    with mock.patch.object(policy, "_signed_by_master", _signed):
        logic_us = per_call_us(world.decide_once, sizes.batch * 10, sizes.rounds)
    ticket_us = per_call_us(world.verify_ticket_once, sizes.batch, sizes.rounds)
    sign_us, verify_us = _checkpoint_us(sizes.batch, sizes.rounds)
    audit_rate = _audit_rate(sizes.chain, sizes.rounds)
    return {
        "rounds": sizes.rounds,
        "batch": sizes.batch,
        "signatures_per_decision": SIGNATURES_PER_DECISION,
        "revocation_entries": 3 * REVOKED,
        "ticket_doc_bytes": len(world.ticket_doc),
        "decide_us": round(decide_us, 2),
        "logic_only_decide_us": round(logic_us, 3),
        "logic_only_decisions_per_s": round(1e6 / logic_us),
        "audit_chain_events": sizes.chain,
        "audit_verify_events_per_s": round(audit_rate),
        "checkpoint_sign_us": round(sign_us, 2),
        "checkpoint_verify_us": round(verify_us, 2),
        "verify_ticket_us": round(ticket_us, 2),
        "decisions_per_s": round(1e6 / decide_us),
    }


@dataclass(frozen=True, slots=True)
class _World:
    """A master key, the gateway's trust in it, and the documents one decision needs."""

    trust: GatewayTrust
    ticket: Ticket
    ticket_doc: bytes
    certificate: OperatorCertificate
    revocations: RevocationList
    request: OperationRequest
    now: datetime

    @classmethod
    def build(cls) -> _World:
        """Fresh keys; one ticket for two seals, a certificate and a revocation list."""
        master = Ed25519PrivateKey.generate()
        handheld = Ed25519PrivateKey.generate().public_key()
        device_key = handheld.public_bytes(Encoding.Raw, PublicFormat.Raw)
        ticket = sign_ticket(master, _ticket())
        return cls(
            trust=GatewayTrust(GATEWAY, DISTRICT, master.public_key()),
            ticket=ticket,
            ticket_doc=encode_ticket(ticket),
            certificate=sign_certificate(master, _certificate(device_key)),
            revocations=sign_revocations(master, _revocations()),
            request=OperationRequest(
                OPERATOR, device_key, ticket.ticket_id, ticket.work_order, "SL-0001", "unseal"
            ),
            now=datetime.fromtimestamp(T0 + HOUR, UTC),
        )

    def decide_once(self) -> None:
        """One full decision; it must allow, or the probe would time an early deny."""
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
            raise ProbeError(f"the probe's decision was denied: {decision.reason}")

    def verify_ticket_once(self) -> None:
        """Decode and verify the ticket document as received on cmd/ticket."""
        decode_ticket(self.ticket_doc, self.trust.master_key)


def _ticket() -> Ticket:
    """A meter_replace ticket for SL-0001 and SL-0002, shaped as the master station issues it."""
    seals = tuple(
        SealGrant(
            f"SL-000{n}",
            bytes.fromhex(f"5ea100000000000{n}"),
            os.urandom(NONCE_LEN),
            os.urandom(SEALED_KEY_LEN),
        )
        for n in (1, 2)
    )
    return Ticket(
        ticket_id=os.urandom(16).hex(),
        work_order="WO-2026-0001",
        flow="meter_replace",
        operator=OPERATOR,
        role="meter_installer",
        gateway=GATEWAY,
        ops=("unseal", "seal", "read_state"),
        not_before=T0,
        not_after=T0 + 2 * HOUR,
        max_uses=4,
        issued_at=T0 - HOUR,
        recipient=x25519_public_bytes(X25519PrivateKey.generate()),
        ephemeral=os.urandom(X25519_LEN),
        seals=seals,
    )


def _certificate(device_key: bytes) -> OperatorCertificate:
    return OperatorCertificate(
        serial=os.urandom(8).hex(),
        operator=OPERATOR,
        name="Li Wei",
        roles=("meter_installer", "auditor"),
        districts=(DISTRICT,),
        device_key=device_key,
        not_before=T0 - 30 * DAY,
        not_after=T0 + 365 * DAY,
        issued_at=T0 - 30 * DAY,
    )


def _revocations() -> RevocationList:
    return RevocationList(
        serial=1,
        issued_at=T0,
        tickets=tuple(sorted(os.urandom(16).hex() for _ in range(REVOKED))),
        operators=tuple(sorted(f"op-{n:05d}" for n in range(1000, 1000 + REVOKED))),
        certificates=tuple(sorted(os.urandom(8).hex() for _ in range(REVOKED))),
    )


def _checkpoint_us(batch: int, rounds: int) -> tuple[float, float]:
    identity = Ed25519PrivateKey.generate()
    public = identity.public_key()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    head = (41, "ab" * 32)
    data = checkpoint_data(identity, GATEWAY, head, moment)
    draft = EventDraft(CHECKPOINT_TYPE, GATEWAY, data, Priority.AUDIT, moment)
    obj = json.loads(seal_event(draft, GATEWAY, 42, head[1]).payload)
    if not verify_checkpoint(obj, public):
        raise ProbeError("the probe's checkpoint does not verify")
    sign = per_call_us(lambda: checkpoint_data(identity, GATEWAY, head, moment), batch, rounds)
    verify = per_call_us(lambda: verify_checkpoint(obj, public), batch, rounds)
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
            raise ProbeError(f"the probe's chain does not verify: {report.problems[:3]}")
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
            reading: dict[str, JSONValue] = {
                "energy_kwh": 1000.0 + n / 100,
                "voltage_v": 229.7,
                "n": n,
            }
            draft = EventDraft(
                EventType.METER_READING, "M-001", reading, Priority.TELEMETRY, moment
            )
        event = seal_event(draft, GATEWAY, seq + 1, prev)
        objs.append(json.loads(event.payload))
        seq, prev = event.seq, event.hash
    return objs


def _signed(*_args: object) -> bool:
    """Stands in for policy._signed_by_master when timing the decision logic alone."""
    return True
