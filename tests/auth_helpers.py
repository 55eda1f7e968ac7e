"""A small authorization world for the ticket, policy and containment tests.

One master authority (in a temporary directory), one gateway with its X25519 credential key,
three provisioned locks, and one operator with a certified handheld key. Times are Unix seconds
around T0 = 2026-01-01T00:00Z, the start of ManualClock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.auth.policy import DEFAULT_TABLE, Decision, GatewayTrust, OperationRequest, decide
from gateway.protocol.certs import OperatorCertificate, RevocationList, sign_revocations
from gateway.protocol.seal_frames import LockState
from gateway.protocol.tickets import Ticket, x25519_public_bytes
from master_station.authority import MasterAuthority

T0 = 1767225600
HOUR = 3600
GATEWAY_ID = "gw-0001"
DISTRICT = "district-1"
OPERATOR = "op-0042"
LOCKS = {
    "SL-0001": bytes.fromhex("5ea1000000000001"),
    "SL-0002": bytes.fromhex("5ea1000000000002"),
    "SL-0003": bytes.fromhex("5ea1000000000003"),
}


def at(seconds: float) -> datetime:
    """The aware datetime of a Unix time."""
    return datetime.fromtimestamp(seconds, UTC)


def raw_public(key: Ed25519PrivateKey) -> bytes:
    """Raw 32-byte Ed25519 public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass
class World:
    """Everything the tests issue documents with and decide against."""

    authority: MasterAuthority
    credential_key: X25519PrivateKey
    handheld: Ed25519PrivateKey
    k_locks: dict[str, bytes]
    certificate: OperatorCertificate

    @property
    def trust(self) -> GatewayTrust:
        return GatewayTrust(GATEWAY_ID, DISTRICT, self.authority.public_key)

    def ticket(self, **overrides: Any) -> Ticket:
        """A meter_replace ticket for OPERATOR on SL-0001 and SL-0002, valid T0..T0+2h."""
        args: dict[str, Any] = {
            "work_order": "WO-2026-0001",
            "flow": "meter_replace",
            "operator": OPERATOR,
            "role": "meter_installer",
            "gateway": GATEWAY_ID,
            "gateway_key": x25519_public_bytes(self.credential_key),
            "seals": [("SL-0001", LOCKS["SL-0001"]), ("SL-0002", LOCKS["SL-0002"])],
            "ops": ["unseal", "seal", "read_state"],
            "not_before": T0,
            "not_after": T0 + 2 * HOUR,
            "max_uses": 4,
            "issued_at": T0 - HOUR,
        }
        args.update(overrides)
        return self.authority.issue_ticket(**args)

    def enroll(self, **overrides: Any) -> OperatorCertificate:
        """An operator certificate for OPERATOR (meter installer and auditor) in DISTRICT."""
        args: dict[str, Any] = {
            "operator": OPERATOR,
            "name": "Li Wei",
            "roles": ["meter_installer", "auditor"],
            "districts": [DISTRICT],
            "device_key": raw_public(self.handheld),
            "not_before": T0 - 30 * 24 * HOUR,
            "not_after": T0 + 365 * 24 * HOUR,
            "issued_at": T0 - 30 * 24 * HOUR,
        }
        args.update(overrides)
        return self.authority.enroll_operator(**args)

    def request(self, ticket: Ticket, **overrides: Any) -> OperationRequest:
        """OPERATOR's handheld asking to unseal SL-0001 under `ticket`."""
        base = OperationRequest(
            operator=OPERATOR,
            device_key=raw_public(self.handheld),
            ticket_id=ticket.ticket_id,
            work_order=ticket.work_order,
            seal_id="SL-0001",
            op="unseal",
        )
        return replace(base, **overrides)

    def decide(
        self,
        request: OperationRequest,
        ticket: Ticket | None,
        **overrides: Any,
    ) -> Decision:
        """decide() with sensible defaults: sealed seal, no uses, at T0 + 1h, skew 120 s."""
        args: dict[str, Any] = {
            "certificate": self.certificate,
            "revocations": None,
            "table": DEFAULT_TABLE,
            "seal_state": LockState.SEALED,
            "uses_so_far": 0,
            "now": at(T0 + HOUR),
            "skew_s": 120,
            "gateway": self.trust,
        }
        args.update(overrides)
        return decide(request, ticket, **args)

    def revoke(
        self,
        *,
        serial: int = 1,
        tickets: Sequence[str] = (),
        operators: Sequence[str] = (),
        certificates: Sequence[str] = (),
    ) -> RevocationList:
        """A signed revocation list with just these entries (the authority's history aside)."""
        revocations = RevocationList(
            serial=serial,
            issued_at=T0,
            tickets=tuple(tickets),
            operators=tuple(operators),
            certificates=tuple(certificates),
        )
        return sign_revocations(self.authority._signing_key, revocations)


def make_world(directory: Path) -> World:
    """A fresh authority with three locks and an enrolled operator."""
    authority = MasterAuthority.create(directory / "master")
    k_locks = {seal_id: authority.provision_lock(lock_id) for seal_id, lock_id in LOCKS.items()}
    world = World(
        authority=authority,
        credential_key=X25519PrivateKey.generate(),
        handheld=Ed25519PrivateKey.generate(),
        k_locks=k_locks,
        certificate=None,  # type: ignore[arg-type]
    )
    world.certificate = world.enroll()
    return world
