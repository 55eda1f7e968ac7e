"""Authorization policy: one pure function deciding whether a seal operation may run.

`decide` takes everything it needs as arguments (the ticket and certificate as held, the
revocation list, the role table, the seal's believed state, the uses so far, the time) and
returns allow, or deny with a stable reason code. It does no I/O, so it works offline and is
tested exhaustively. The checks run in the order of docs/authorization.md, section 6; the first
failure is the reason. The event builders at the bottom turn each decision into audit events.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.auth.config import DEFAULT_SKEW_S, AuthorizationSection, RoleGrant
from gateway.errors import AuthError, ConfigError
from gateway.protocol.canonical import JSONValue
from gateway.protocol.certs import (
    OperatorCertificate,
    RevocationList,
    verify_certificate,
    verify_revocations,
)
from gateway.protocol.events import EventDraft, EventType, Priority, make_draft
from gateway.protocol.seal_frames import LockState, ResultCode
from gateway.protocol.tickets import DEFAULT_GRANTS, LOCK_OPS, Flow, Op, Ticket, verify_ticket

__all__ = [
    "DEFAULT_SKEW_S",
    "DEFAULT_TABLE",
    "AuthorizationSection",
    "Decision",
    "GatewayTrust",
    "OperationRequest",
    "Reason",
    "RoleGrant",
    "RoleTable",
    "decide",
    "op_decided",
    "op_outcome",
    "op_requested",
    "role_table",
]

_log = logging.getLogger(__name__)


class Reason(StrEnum):
    """Stable deny reason codes, in the order decide checks them."""

    STORAGE_FULL = "storage_full"
    FORGED_REVOCATION_LIST = "forged_revocation_list"
    TICKET_REVOKED = "ticket_revoked"
    UNKNOWN_TICKET = "unknown_ticket"
    FORGED_TICKET = "forged_ticket"
    WRONG_GATEWAY = "wrong_gateway"
    TICKET_NOT_YET_VALID = "ticket_not_yet_valid"
    TICKET_EXPIRED = "ticket_expired"
    WRONG_WORK_ORDER = "wrong_work_order"
    WRONG_OPERATOR = "wrong_operator"
    UNKNOWN_CERTIFICATE = "unknown_certificate"
    FORGED_CERTIFICATE = "forged_certificate"
    CERTIFICATE_NOT_FOR_OPERATOR = "certificate_not_for_operator"
    WRONG_DEVICE = "wrong_device"
    OPERATOR_REVOKED = "operator_revoked"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    CERTIFICATE_EXPIRED = "certificate_expired"
    DISTRICT_OUT_OF_SCOPE = "district_out_of_scope"
    ROLE_NOT_CERTIFIED = "role_not_certified"
    FLOW_NOT_ALLOWED = "flow_not_allowed"
    ROLE_NOT_ALLOWED = "role_not_allowed"
    OPERATION_NOT_IN_TICKET = "operation_not_in_ticket"
    SEAL_OUT_OF_SCOPE = "seal_out_of_scope"
    USES_EXHAUSTED = "uses_exhausted"
    SEAL_STATE_FORBIDS = "seal_state_forbids"


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow, or deny with a reason code and a human-readable detail (never a secret)."""

    allowed: bool
    reason: Reason | None = None
    detail: str = ""

    @classmethod
    def allow(cls) -> Decision:
        """The operation may run."""
        return cls(True)

    @classmethod
    def deny(cls, reason: Reason, detail: str = "") -> Decision:
        """The operation must not run, because of `reason`."""
        return cls(False, reason, detail)


@dataclass(frozen=True, slots=True)
class OperationRequest:
    """A handheld's request as the gateway frames it after authenticating the session."""

    operator: str
    device_key: bytes
    ticket_id: str
    work_order: str
    seal_id: str
    op: str


@dataclass(frozen=True, slots=True)
class GatewayTrust:
    """Who this gateway is and whom it trusts: its id, its district, the MS public key."""

    gateway_id: str
    district: str
    master_key: Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class RoleTable:
    """Which roles may perform which operations, per business flow."""

    grants: Mapping[str, Mapping[str, frozenset[str]]]

    def has_flow(self, flow: str) -> bool:
        """True when the flow is known and enabled."""
        return flow in self.grants

    def allows(self, flow: str, role: str, op: str) -> bool:
        """True when `role` may perform `op` in `flow`."""
        return op in self.grants.get(flow, {}).get(role, frozenset())

    def with_grant(self, flow: str, role: str, ops: Iterable[str]) -> RoleTable:
        """A copy where `role` in `flow` gets exactly `ops` (an empty set removes the role)."""
        table = {f: dict(roles) for f, roles in self.grants.items()}
        roles = table.setdefault(flow, {})
        roles[role] = frozenset(ops)
        if not roles[role]:
            del roles[role]
        return RoleTable(_freeze(table))


def _freeze(
    table: Mapping[str, Mapping[str, frozenset[str]]],
) -> Mapping[str, Mapping[str, frozenset[str]]]:
    return MappingProxyType({flow: MappingProxyType(dict(roles)) for flow, roles in table.items()})


DEFAULT_TABLE = RoleTable(_freeze(DEFAULT_GRANTS))


# -- configuration ----------------------------------------------------------------------------


def role_table(section: AuthorizationSection) -> RoleTable:
    """The effective role table: the defaults (unless disabled) with the overrides applied."""
    table = DEFAULT_TABLE if section.use_default_table else RoleTable(_freeze({}))
    for index, grant in enumerate(section.grants):
        unknown = sorted(set(grant.ops) - set(Op))
        if unknown:
            raise ConfigError(f"authorization.grants[{index}].ops", f"unknown ops {unknown}")
        table = table.with_grant(grant.flow, grant.role, grant.ops)
    return table


# -- the decision -----------------------------------------------------------------------------


def decide(
    request: OperationRequest,
    ticket: Ticket | None,
    *,
    certificate: OperatorCertificate | None,
    revocations: RevocationList | None,
    table: RoleTable,
    seal_state: LockState,
    uses_so_far: int,
    now: datetime,
    skew_s: int,
    gateway: GatewayTrust,
    storage_ok: bool = True,
) -> Decision:
    """Allow the request, or deny it with the first failing check's reason."""
    if now.tzinfo is None:
        raise ValueError("decide needs a timezone-aware time")
    if not storage_ok:
        return Decision.deny(Reason.STORAGE_FULL, "audit events cannot be stored")
    moment = now.timestamp()
    held = _check_ticket(request, ticket, revocations, gateway, moment=moment, skew_s=skew_s)
    if isinstance(held, Decision):
        return held
    cert = _check_operator(request, held, certificate, gateway)
    if isinstance(cert, Decision):
        return cert
    return (
        _check_certificate(cert, revocations, gateway, moment, skew_s)
        or _check_grant(request, held, cert, table)
        or _check_usage(request, held, uses_so_far, seal_state)
        or Decision.allow()
    )


def decide_read(
    certificate: OperatorCertificate,
    *,
    revocations: RevocationList | None,
    now: datetime,
    skew_s: int,
    gateway: GatewayTrust,
) -> Decision:
    """The read rule (a handheld's `seal_state`): the operator is in scope right now.

    That is: the certificate is the master station's, valid now, not revoked (nor its
    operator), and covers this gateway's district. Checked at every read, not only when the
    session opened, so a revocation or an expiry ends reads within a session too.
    """
    if now.tzinfo is None:
        raise ValueError("decide_read needs a timezone-aware time")
    if revocations is not None and not _signed_by_master(revocations, gateway):
        return Decision.deny(Reason.FORGED_REVOCATION_LIST, f"serial {revocations.serial}")
    if not _signed_by_master(certificate, gateway):
        return Decision.deny(Reason.FORGED_CERTIFICATE, "certificate signature does not verify")
    checked = _check_certificate(certificate, revocations, gateway, now.timestamp(), skew_s)
    return checked or Decision.allow()


def _check_ticket(
    request: OperationRequest,
    ticket: Ticket | None,
    revocations: RevocationList | None,
    gateway: GatewayTrust,
    *,
    moment: float,
    skew_s: int,
) -> Ticket | Decision:
    if revocations is not None and not _signed_by_master(revocations, gateway):
        return Decision.deny(Reason.FORGED_REVOCATION_LIST, f"serial {revocations.serial}")
    if revocations is not None and revocations.revokes_ticket(request.ticket_id):
        return Decision.deny(Reason.TICKET_REVOKED, f"revocation list {revocations.serial}")
    if ticket is None or ticket.ticket_id != request.ticket_id:
        return Decision.deny(Reason.UNKNOWN_TICKET, f"no ticket {request.ticket_id}")
    if not _signed_by_master(ticket, gateway):
        return Decision.deny(Reason.FORGED_TICKET, "ticket signature does not verify")
    if ticket.gateway != gateway.gateway_id:
        return Decision.deny(Reason.WRONG_GATEWAY, f"ticket is for gateway {ticket.gateway}")
    window = _check_window(
        moment,
        (ticket.not_before, ticket.not_after, skew_s),
        Reason.TICKET_NOT_YET_VALID,
        Reason.TICKET_EXPIRED,
    )
    return window or ticket


def _check_operator(
    request: OperationRequest,
    ticket: Ticket,
    cert: OperatorCertificate | None,
    gateway: GatewayTrust,
) -> OperatorCertificate | Decision:
    if request.work_order != ticket.work_order:
        return Decision.deny(Reason.WRONG_WORK_ORDER, f"ticket is for {ticket.work_order}")
    if request.operator != ticket.operator:
        return Decision.deny(Reason.WRONG_OPERATOR, "ticket names another operator")
    if cert is None:
        return Decision.deny(Reason.UNKNOWN_CERTIFICATE, f"no certificate for {request.operator}")
    if not _signed_by_master(cert, gateway):
        return Decision.deny(Reason.FORGED_CERTIFICATE, "certificate signature does not verify")
    if cert.operator != ticket.operator:
        return Decision.deny(Reason.CERTIFICATE_NOT_FOR_OPERATOR, f"certificate {cert.serial}")
    if not hmac.compare_digest(cert.device_key, request.device_key):
        return Decision.deny(Reason.WRONG_DEVICE, "handheld key is not the certified one")
    return cert


def _check_certificate(
    cert: OperatorCertificate,
    revocations: RevocationList | None,
    gateway: GatewayTrust,
    moment: float,
    skew_s: int,
) -> Decision | None:
    if revocations is not None and revocations.revokes_operator(cert.operator):
        return Decision.deny(Reason.OPERATOR_REVOKED, f"revocation list {revocations.serial}")
    if revocations is not None and revocations.revokes_certificate(cert.serial):
        return Decision.deny(Reason.CERTIFICATE_REVOKED, f"certificate {cert.serial}")
    window = _check_window(
        moment,
        (cert.not_before, cert.not_after, skew_s),
        Reason.CERTIFICATE_NOT_YET_VALID,
        Reason.CERTIFICATE_EXPIRED,
    )
    if window is None and gateway.district not in cert.districts:
        return Decision.deny(Reason.DISTRICT_OUT_OF_SCOPE, f"district {gateway.district}")
    return window


def _check_grant(
    request: OperationRequest, ticket: Ticket, cert: OperatorCertificate, table: RoleTable
) -> Decision | None:
    if ticket.role not in cert.roles:
        return Decision.deny(Reason.ROLE_NOT_CERTIFIED, f"operator lacks role {ticket.role}")
    if not table.has_flow(ticket.flow):
        return Decision.deny(Reason.FLOW_NOT_ALLOWED, f"flow {ticket.flow} is not enabled")
    if not table.allows(ticket.flow, ticket.role, request.op):
        detail = f"{ticket.role} may not {request.op} in {ticket.flow}"
        return Decision.deny(Reason.ROLE_NOT_ALLOWED, detail)
    if request.op not in ticket.ops:
        return Decision.deny(Reason.OPERATION_NOT_IN_TICKET, f"ticket does not grant {request.op}")
    if ticket.grant(request.seal_id) is None:
        return Decision.deny(Reason.SEAL_OUT_OF_SCOPE, f"seal {request.seal_id} not in ticket")
    return None


def _check_usage(
    request: OperationRequest, ticket: Ticket, uses_so_far: int, state: LockState
) -> Decision | None:
    if request.op in LOCK_OPS and uses_so_far >= ticket.max_uses:
        return Decision.deny(Reason.USES_EXHAUSTED, f"{uses_so_far} of {ticket.max_uses} used")
    forbidden = _state_forbids(request.op, ticket.flow, state)
    if forbidden:
        return Decision.deny(Reason.SEAL_STATE_FORBIDS, forbidden)
    return None


def _check_window(
    moment: float, window: tuple[int, int, int], early: Reason, late: Reason
) -> Decision | None:
    not_before, not_after, skew_s = window
    if moment < not_before - skew_s:
        return Decision.deny(early, f"valid from {not_before} (skew {skew_s} s)")
    if moment > not_after + skew_s:
        return Decision.deny(late, f"valid until {not_after} (skew {skew_s} s)")
    return None


def _state_forbids(op: str, flow: str, state: LockState) -> str:
    if op == Op.UNSEAL and state is LockState.UNSEALED:
        return "seal is already unsealed"
    if op == Op.UNSEAL and state is LockState.TAMPERED and flow != Flow.AUDIT:
        return "a tampered seal is opened only under an audit work order"
    if op == Op.SEAL and state in (LockState.SEALED, LockState.TAMPERED):
        return f"seal is {state.name.lower()}; unseal and inspect first"
    return ""


def _signed_by_master(
    document: Ticket | OperatorCertificate | RevocationList, gateway: GatewayTrust
) -> bool:
    try:
        if isinstance(document, Ticket):
            verify_ticket(document, gateway.master_key)
        elif isinstance(document, OperatorCertificate):
            verify_certificate(document, gateway.master_key)
        else:
            verify_revocations(document, gateway.master_key)
    except AuthError:
        return False
    return True


# -- audit events -----------------------------------------------------------------------------


def op_requested(request: OperationRequest, now: datetime) -> EventDraft:
    """seal.op_requested: committed before deciding; if it cannot be stored, nothing runs."""
    return _draft(now, EventType.SEAL_OP_REQUESTED, request, {})


def op_decided(request: OperationRequest, decision: Decision, now: datetime) -> EventDraft:
    """seal.op_allowed, or seal.op_denied with the reason code and detail."""
    if decision.allowed:
        return _draft(now, EventType.SEAL_OP_ALLOWED, request, {})
    reason = decision.reason.value if decision.reason else "unknown"
    _log.info("denied %s of seal %s: %s", request.op, request.seal_id, reason)
    return _draft(
        now, EventType.SEAL_OP_DENIED, request, {"reason": reason, "detail": decision.detail}
    )


def op_outcome(
    request: OperationRequest,
    result: ResultCode,
    state: LockState,
    log_index: int,
    now: datetime,
) -> EventDraft:
    """The lock's verified answer: seal.unsealed / seal.sealed / seal.time_set, or op_failed."""
    data: dict[str, JSONValue] = {
        "result": result.name.lower(),
        "state": state.name.lower(),
        "log_index": log_index,
    }
    return _draft(
        now, _OUTCOME_TYPES.get((request.op, result), EventType.SEAL_OP_FAILED), request, data
    )


_OUTCOME_TYPES: Mapping[tuple[str, ResultCode], EventType] = {
    (Op.UNSEAL, ResultCode.OK): EventType.SEAL_UNSEALED,
    (Op.SEAL, ResultCode.OK): EventType.SEAL_SEALED,
    (Op.SET_TIME, ResultCode.OK): EventType.SEAL_TIME_SET,
}


def _draft(
    now: datetime, kind: EventType, request: OperationRequest, extra: Mapping[str, JSONValue]
) -> EventDraft:
    data: dict[str, JSONValue] = {
        "op": request.op,
        "operator": request.operator,
        "ticket_id": request.ticket_id,
        "work_order": request.work_order,
        **extra,
    }
    return make_draft(now, kind, request.seal_id, data, Priority.AUDIT)
