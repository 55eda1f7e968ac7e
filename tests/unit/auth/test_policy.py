"""The authorization decision: the attack matrix, allowed cases, skew boundaries, role tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.config import AuthorizationSection, RoleGrant
from gateway.auth.policy import (
    DEFAULT_TABLE,
    Decision,
    OperationRequest,
    Reason,
    op_decided,
    op_outcome,
    op_requested,
    role_table,
)
from gateway.config.loader import _build
from gateway.errors import ConfigError
from gateway.protocol.events import Priority
from gateway.protocol.seal_frames import LockState, ResultCode
from gateway.protocol.tickets import Ticket
from master_station.authority import MasterAuthority
from tests.fixtures.auth import HOUR, OPERATOR, T0, World, at, make_world

NOT_AFTER = T0 + 2 * HOUR


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def ticket(world: World) -> Ticket:
    return world.ticket()


@dataclass(frozen=True)
class Case:
    """One row of the matrix: build (request, ticket, decide overrides) from the world."""

    reason: Reason
    build: Callable[[World, Ticket], tuple[OperationRequest, Ticket | None, dict[str, Any]]]


def _plain(**overrides: Any) -> Callable[[World, Ticket], Any]:
    return lambda w, t: (w.request(t), t, overrides)


def _asking(**request_overrides: Any) -> Callable[[World, Ticket], Any]:
    return lambda w, t: (w.request(t, **request_overrides), t, {})


def _with_ticket(**ticket_overrides: Any) -> Callable[[World, Ticket], Any]:
    def build(w: World, _t: Ticket) -> Any:
        other = w.ticket(**ticket_overrides)
        return w.request(other), other, {}

    return build


def _forged_ticket(w: World, t: Ticket) -> Any:
    stretched = replace(t, not_after=t.not_after + 30 * 24 * HOUR)
    return w.request(stretched), stretched, {"now": at(NOT_AFTER + 10 * HOUR)}


def _rogue_master_ticket(w: World, t: Ticket) -> Any:
    rogue = MasterAuthority.create(w.authority.directory.parent / "rogue")
    seal_id, lock_id = "SL-0001", bytes.fromhex("5ea1000000000001")
    rogue.provision_lock(lock_id)
    forged = rogue.issue_ticket(
        work_order=t.work_order,
        flow=t.flow,
        operator=t.operator,
        role=t.role,
        gateway=t.gateway,
        gateway_key=t.recipient,
        seals=[(seal_id, lock_id)],
        ops=list(t.ops),
        not_before=t.not_before,
        not_after=t.not_after,
        max_uses=t.max_uses,
    )
    return w.request(forged), forged, {}


def _revoked(what: str) -> Callable[[World, Ticket], Any]:
    def build(w: World, t: Ticket) -> Any:
        revocations = {
            "tickets": w.revoke(tickets=[t.ticket_id]),
            "operators": w.revoke(operators=[OPERATOR]),
            "certificates": w.revoke(certificates=[w.certificate.serial]),
        }[what]
        return w.request(t), t, {"revocations": revocations}

    return build


def _forged_revocations(w: World, t: Ticket) -> Any:
    emptied = replace(w.revoke(tickets=[t.ticket_id]), tickets=())
    return w.request(t), t, {"revocations": emptied}


def _certificate(**cert_overrides: Any) -> Callable[[World, Ticket], Any]:
    return lambda w, t: (w.request(t), t, {"certificate": w.enroll(**cert_overrides)})


def _forged_certificate(w: World, t: Ticket) -> Any:
    widened = replace(w.certificate, districts=(*w.certificate.districts, "district-9"))
    return w.request(t), t, {"certificate": widened}


def _auditor_unseals(w: World, _t: Ticket) -> Any:
    audit = w.ticket(flow="audit", role="auditor", ops=["unseal", "read_state"])
    return w.request(audit), audit, {}


def _installer_in_audit(w: World, _t: Ticket) -> Any:
    audit = w.ticket(flow="audit", role="meter_installer", ops=["read_state"])
    return w.request(audit, op="read_state"), audit, {}


ATTACKS: dict[str, Case] = {
    "storage full": Case(Reason.STORAGE_FULL, _plain(storage_ok=False)),
    "forged revocation list": Case(Reason.FORGED_REVOCATION_LIST, _forged_revocations),
    "revoked ticket": Case(Reason.TICKET_REVOKED, _revoked("tickets")),
    "revoked ticket already deleted": Case(
        Reason.TICKET_REVOKED,
        lambda w, t: (w.request(t), None, {"revocations": w.revoke(tickets=[t.ticket_id])}),
    ),
    "unknown ticket": Case(Reason.UNKNOWN_TICKET, lambda w, t: (w.request(t), None, {})),
    "ticket id mismatch": Case(
        Reason.UNKNOWN_TICKET, lambda w, t: (w.request(t, ticket_id="ab" * 16), t, {})
    ),
    "forged ticket (stretched window)": Case(Reason.FORGED_TICKET, _forged_ticket),
    "forged ticket (rogue master key)": Case(Reason.FORGED_TICKET, _rogue_master_ticket),
    "wrong gateway": Case(Reason.WRONG_GATEWAY, _with_ticket(gateway="gw-0002")),
    "not yet valid": Case(Reason.TICKET_NOT_YET_VALID, _plain(now=at(T0 - 121))),
    "expired": Case(Reason.TICKET_EXPIRED, _plain(now=at(NOT_AFTER + 121))),
    "wrong work order": Case(Reason.WRONG_WORK_ORDER, _asking(work_order="WO-2026-9999")),
    "wrong operator": Case(Reason.WRONG_OPERATOR, _asking(operator="op-0043")),
    "no certificate": Case(Reason.UNKNOWN_CERTIFICATE, _plain(certificate=None)),
    "forged certificate": Case(Reason.FORGED_CERTIFICATE, _forged_certificate),
    "certificate of another operator": Case(
        Reason.CERTIFICATE_NOT_FOR_OPERATOR, _certificate(operator="op-0043")
    ),
    "another handheld": Case(Reason.WRONG_DEVICE, _asking(device_key=bytes(32))),
    "operator revoked": Case(Reason.OPERATOR_REVOKED, _revoked("operators")),
    "certificate revoked": Case(Reason.CERTIFICATE_REVOKED, _revoked("certificates")),
    "certificate not yet valid": Case(
        Reason.CERTIFICATE_NOT_YET_VALID,
        _certificate(not_before=T0 + 3 * HOUR, not_after=T0 + 9 * HOUR),
    ),
    "certificate expired": Case(
        Reason.CERTIFICATE_EXPIRED, _certificate(not_before=T0 - 9 * HOUR, not_after=T0)
    ),
    "district out of scope": Case(
        Reason.DISTRICT_OUT_OF_SCOPE, _certificate(districts=["district-2"])
    ),
    "role not certified": Case(Reason.ROLE_NOT_CERTIFIED, _with_ticket(role="district_manager")),
    "unknown flow": Case(Reason.FLOW_NOT_ALLOWED, _with_ticket(flow="demolition")),
    "auditor may not unseal": Case(Reason.ROLE_NOT_ALLOWED, _auditor_unseals),
    "installer has no audit role": Case(Reason.ROLE_NOT_ALLOWED, _installer_in_audit),
    "operation not in ticket": Case(Reason.OPERATION_NOT_IN_TICKET, _with_ticket(ops=["seal"])),
    "seal out of scope": Case(Reason.SEAL_OUT_OF_SCOPE, _asking(seal_id="SL-0003")),
    "uses exhausted": Case(Reason.USES_EXHAUSTED, _plain(uses_so_far=4)),
    "unseal while unsealed": Case(Reason.SEAL_STATE_FORBIDS, _plain(seal_state=LockState.UNSEALED)),
    "tampered seal outside an audit": Case(
        Reason.SEAL_STATE_FORBIDS, _plain(seal_state=LockState.TAMPERED)
    ),
    "seal while sealed": Case(
        Reason.SEAL_STATE_FORBIDS, lambda w, t: (w.request(t, op="seal"), t, {})
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_denied_with_its_reason(world: World, ticket: Ticket, name: str) -> None:
    case = ATTACKS[name]
    request, held, overrides = case.build(world, ticket)
    decision = world.decide(request, held, **overrides)
    assert not decision.allowed
    assert decision.reason is case.reason, decision.detail


def test_every_reason_code_has_an_attack() -> None:
    assert {case.reason for case in ATTACKS.values()} == set(Reason)


def test_the_first_failing_check_wins(world: World, ticket: Ticket) -> None:
    request = world.request(ticket, operator="op-0043", seal_id="SL-0003")
    decision = world.decide(request, ticket, now=at(NOT_AFTER + HOUR), uses_so_far=99)
    assert decision.reason is Reason.TICKET_EXPIRED


# -- allowed --------------------------------------------------------------------------------


def test_installer_unseals_a_sealed_seal(world: World, ticket: Ticket) -> None:
    decision = world.decide(world.request(ticket), ticket)
    assert decision == Decision(True, None, "")


def test_installer_reseals_and_reads(world: World, ticket: Ticket) -> None:
    reseal = world.request(ticket, op="seal", seal_id="SL-0002")
    assert world.decide(reseal, ticket, seal_state=LockState.UNSEALED).allowed
    read = world.request(ticket, op="read_state")
    assert world.decide(read, ticket, uses_so_far=4).allowed  # reads are not uses


def test_auditor_reads_in_an_audit(world: World) -> None:
    audit = world.ticket(flow="audit", role="auditor", ops=["read_state", "read_log"])
    for op in ("read_state", "read_log"):
        request = world.request(audit, op=op)
        assert world.decide(request, audit, seal_state=LockState.TAMPERED).allowed


def test_district_manager_opens_a_tampered_seal_under_an_audit(world: World) -> None:
    manager = world.enroll(roles=["district_manager"])
    audit = world.ticket(flow="audit", role="district_manager", ops=["unseal", "seal"])
    request = world.request(audit)
    decision = world.decide(request, audit, certificate=manager, seal_state=LockState.TAMPERED)
    assert decision.allowed


def test_unknown_seal_state_is_left_to_the_lock(world: World, ticket: Ticket) -> None:
    assert world.decide(world.request(ticket), ticket, seal_state=LockState.UNKNOWN).allowed


def test_decide_works_with_a_revocation_list_that_does_not_concern_us(
    world: World, ticket: Ticket
) -> None:
    unrelated = world.revoke(tickets=["ee" * 16], operators=["op-7"])
    assert world.decide(world.request(ticket), ticket, revocations=unrelated).allowed


# -- skew boundaries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "skew", "reason"),
    [
        (T0 - 120, 120, None),
        (T0 - 120.001, 120, Reason.TICKET_NOT_YET_VALID),
        (NOT_AFTER + 120, 120, None),
        (NOT_AFTER + 120.001, 120, Reason.TICKET_EXPIRED),
        (T0, 0, None),
        (T0 - 1, 0, Reason.TICKET_NOT_YET_VALID),
        (NOT_AFTER, 0, None),
        (NOT_AFTER + 1, 0, Reason.TICKET_EXPIRED),
        (NOT_AFTER + 599, 600, None),
    ],
)
def test_window_with_skew(
    world: World, ticket: Ticket, moment: float, skew: int, reason: Reason | None
) -> None:
    decision = world.decide(world.request(ticket), ticket, now=at(moment), skew_s=skew)
    assert decision.reason is reason
    assert decision.allowed is (reason is None)


# -- role table and configuration -------------------------------------------------------------


def test_default_table_shape() -> None:
    assert DEFAULT_TABLE.allows("audit", "auditor", "read_state")
    assert DEFAULT_TABLE.allows("audit", "auditor", "read_log")
    for flow in DEFAULT_TABLE.grants:
        assert not DEFAULT_TABLE.allows(flow, "auditor", "unseal")
        assert DEFAULT_TABLE.allows(flow, "district_manager", "unseal")
    assert DEFAULT_TABLE.allows("meter_replace", "meter_installer", "unseal")
    assert not DEFAULT_TABLE.allows("meter_replace", "meter_installer", "set_time")


def test_config_override_narrows_the_table(world: World) -> None:
    section = _build(
        AuthorizationSection,
        {"skew_s": 30, "grants": [{"flow": "audit", "role": "auditor", "ops": ["read_state"]}]},
        "authorization.",
        Path("."),
    )
    assert section == AuthorizationSection(
        30, True, (RoleGrant("audit", "auditor", ("read_state",)),)
    )
    table = role_table(section)
    audit = world.ticket(flow="audit", role="auditor", ops=["read_state", "read_log"])
    assert world.decide(world.request(audit, op="read_state"), audit, table=table).allowed
    denied = world.decide(world.request(audit, op="read_log"), audit, table=table)
    assert denied.reason is Reason.ROLE_NOT_ALLOWED


def test_config_can_remove_a_role_and_disable_defaults(world: World, ticket: Ticket) -> None:
    removed = role_table(
        AuthorizationSection(grants=(RoleGrant("meter_replace", "meter_installer"),))
    )
    assert (
        world.decide(world.request(ticket), ticket, table=removed).reason is Reason.ROLE_NOT_ALLOWED
    )
    empty = role_table(AuthorizationSection(use_default_table=False))
    assert (
        world.decide(world.request(ticket), ticket, table=empty).reason is Reason.FLOW_NOT_ALLOWED
    )


def test_config_rejects_unknown_ops_and_bad_values() -> None:
    with pytest.raises(ConfigError) as err:
        role_table(AuthorizationSection(grants=(RoleGrant("audit", "auditor", ("explode",)),)))
    assert err.value.key == "authorization.grants[0].ops"
    with pytest.raises(ConfigError):
        _build(AuthorizationSection, {"skew_s": -1}, "authorization.", Path("."))
    with pytest.raises(ConfigError):
        _build(
            AuthorizationSection,
            {"grants": [{"flow": "Audit!", "role": "auditor"}]},
            "authorization.",
            Path("."),
        )


# -- audit events -----------------------------------------------------------------------------


def test_every_decision_is_an_audit_event(world: World, ticket: Ticket) -> None:
    request = world.request(ticket)
    now = at(T0 + HOUR)
    asked = op_requested(request, now)
    assert (asked.type, asked.subject, asked.priority) == (
        "seal.op_requested",
        "SL-0001",
        Priority.AUDIT,
    )
    assert asked.data["ticket_id"] == ticket.ticket_id
    denied = op_decided(request, Decision.deny(Reason.USES_EXHAUSTED, "4 of 4 used"), now)
    assert denied.type == "seal.op_denied"
    assert denied.data["reason"] == "uses_exhausted"
    allowed = op_decided(request, Decision.allow(), now)
    assert allowed.type == "seal.op_allowed"
    assert "reason" not in allowed.data


def test_outcome_events(world: World, ticket: Ticket) -> None:
    now = at(T0 + HOUR)
    unseal = world.request(ticket)
    done = op_outcome(unseal, ResultCode.OK, LockState.UNSEALED, 7, now)
    assert (done.type, done.data["state"], done.data["log_index"]) == (
        "seal.unsealed",
        "unsealed",
        7,
    )
    seal = world.request(ticket, op="seal")
    assert op_outcome(seal, ResultCode.OK, LockState.SEALED, 8, now).type == "seal.sealed"
    refused = op_outcome(seal, ResultCode.WIRE_OPEN, LockState.UNSEALED, 9, now)
    assert (refused.type, refused.data["result"]) == ("seal.op_failed", "wire_open")


def test_naive_time_is_a_programming_error(world: World, ticket: Ticket) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        world.decide(world.request(ticket), ticket, now=at(T0).replace(tzinfo=None))


def test_decide_is_pure(world: World, ticket: Ticket) -> None:
    request = world.request(ticket)
    first = world.decide(request, ticket)
    assert first.allowed
    assert all(world.decide(request, ticket) == first for _ in range(3))
