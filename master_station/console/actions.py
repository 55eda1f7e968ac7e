"""What the console changes: alarm acknowledgements and closes, tickets issued and revoked.

Every change is checked against the user's role and districts first (a `Forbidden` with a
reason code otherwise) and recorded in `console_audit` with who, when and the note. Tickets are
signed with the master's authority exactly as `sealgw master issue-ticket` signs them, published
to the gateway's `cmd/ticket` and the gateway's answer (accepted or refused) is kept.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.protocol.certs import encode_revocations
from gateway.protocol.events import format_ts
from gateway.protocol.tickets import DEFAULT_GRANTS, MAX_USES, Flow, Op, encode_ticket
from master_station.command_client import send_command
from master_station.console.accounts import User
from master_station.console.queries import Alarm, Forbidden, alarm, district_of, ticket_answer
from master_station.ledger.inbox import stamp_changes
from master_station.ledger.models import TicketRecord

if TYPE_CHECKING:
    from master_station.authority import MasterAuthority
    from master_station.ledger.models import Ledger
    from master_station.listener import ListenerOptions

__all__ = ["ActionError", "Actions", "TicketRequest", "role_rules"]

SEALS_FILE = "seals.json"
MAX_NOTE = 1000
MAX_SEALS = 16
WORK_ORDER = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
LOCK_ID = re.compile(r"^[0-9a-f]{16}$")


class ActionError(Exception):
    """A request the console refuses as malformed or impossible (the message says why)."""


@dataclass(frozen=True, slots=True)
class TicketRequest:
    """The work-order form."""

    gateway: str
    work_order: str
    flow: str
    operator: str
    role: str
    seals: tuple[str, ...]
    ops: tuple[str, ...]
    valid_minutes: int
    max_uses: int


def role_rules() -> list[dict[str, Any]]:
    """The role table gateways enforce by default, for the work-order page."""
    return [
        {"flow": flow, "role": role, "ops": sorted(ops)}
        for flow, roles in DEFAULT_GRANTS.items()
        for role, ops in sorted(roles.items())
    ]


class Actions:
    """Changes made from the console, over one ledger and (optionally) the master authority."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        authority: MasterAuthority | None = None,
        broker: ListenerOptions | None = None,
        reply_timeout_s: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.db = ledger.db  # type: ignore[attr-defined]
        self.authority = authority
        self.broker = broker
        self.reply_timeout_s = reply_timeout_s
        self._signing = threading.Lock()

    # -- alarms ----------------------------------------------------------------------------

    def acknowledge(self, user: User, alarm_id: str, note: str) -> Alarm:
        """Mark an open alarm acknowledged (seen, being handled)."""
        return self._alarm_step(user, alarm_id, note, "acknowledged", ("open",))

    def close(self, user: User, alarm_id: str, note: str) -> Alarm:
        """Close an alarm with a note (it leaves the open-alarms KPI)."""
        if not note.strip():
            raise ActionError("closing an alarm needs a note")
        return self._alarm_step(user, alarm_id, note, "closed", ("open", "acknowledged"))

    def _alarm_step(
        self, user: User, alarm_id: str, note: str, status: str, allowed: Sequence[str]
    ) -> Alarm:
        _require_actor(user)
        found = alarm(self.db, user, alarm_id)
        if found is None:
            raise ActionError(f"no alarm {alarm_id}")
        if found.status not in allowed:
            raise ActionError(f"alarm is already {found.status}")
        now = _now()
        with self.db.transaction() as tx:
            marks = ", ".join("?" for _ in allowed)
            changed = tx.execute(
                f"UPDATE console_alarms SET status = ?, updated_at = ? WHERE alarm_id = ?"  # noqa: S608
                f" AND status IN ({marks})",
                (status, now, alarm_id, *allowed),
            )
            if changed != 1:
                raise ActionError("the alarm changed meanwhile; reload")
            _audit(tx, user, status, f"alarm:{alarm_id}", note=note, at=now)
            stamp_changes(tx, [alarm_id])  # last: the live feed's order is the commit order
        updated = alarm(self.db, user, alarm_id)
        assert updated is not None
        return updated

    # -- tickets ---------------------------------------------------------------------------

    def issue_ticket(self, user: User, request: TicketRequest) -> dict[str, Any]:
        """Sign a ticket with the master's key, record it, publish it, keep the answer."""
        _require_actor(user)
        self._check_scope(user, request.gateway)
        _check_request(request)
        self._check_seals(user, request.gateway, request.seals)
        authority = self._need_authority()
        gateway_key = authority.gateway_credential(request.gateway)
        if gateway_key is None:
            raise ActionError(f"no credential key recorded for {request.gateway}: run `sealgw"
                              " master enroll-gateway --credential-key`")  # fmt: skip
        seals = [(seal, bytes.fromhex(self._lock_of(request.gateway, seal)))
                 for seal in request.seals]  # fmt: skip
        now = int(time.time())
        with self._signing:
            try:
                ticket = authority.issue_ticket(
                    work_order=request.work_order, flow=request.flow, operator=request.operator,
                    role=request.role, gateway=request.gateway, gateway_key=gateway_key,
                    seals=seals, ops=list(request.ops), not_before=now,
                    not_after=now + 60 * request.valid_minutes, max_uses=request.max_uses,
                )  # fmt: skip
            except (GatewayError, ValueError) as exc:
                raise ActionError(str(exc)) from None
        self.ledger.record_ticket(TicketRecord(
            ticket.ticket_id, ticket.gateway, ticket.flow, ticket.work_order, ticket.operator,
            ticket.role, ticket.not_before, ticket.not_after, ticket.issued_at))  # fmt: skip
        issued = _now()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO console_tickets (ticket_id, gateway, work_order, flow, operator, role,"
                " seals, ops, not_before, not_after, max_uses, issued_by, issued_at, status,"
                " reply, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'signed', '',"
                " ?)",
                (ticket.ticket_id, ticket.gateway, ticket.work_order, ticket.flow,
                 ticket.operator, ticket.role, json.dumps(list(ticket.seal_ids)),
                 ",".join(ticket.ops), ticket.not_before, ticket.not_after, ticket.max_uses,
                 user.username, issued, issued),
            )  # fmt: skip
            note = f"{ticket.flow} {ticket.work_order} for {ticket.operator}"
            _audit(tx, user, "ticket_issued", f"ticket:{ticket.ticket_id}", note=note, at=issued)
        status, reply = self._publish(ticket.gateway, "ticket", encode_ticket(ticket))
        self._ticket_status(ticket.ticket_id, _accepted(status, reply), reply)
        reason, detail = ticket_answer(_accepted(status, reply), reply)
        return {"ticket_id": ticket.ticket_id, "status": _accepted(status, reply), "reply": reply,
                "reason": reason, "detail": detail}  # fmt: skip

    def revoke_ticket(self, user: User, ticket_id: str, note: str) -> dict[str, Any]:
        """Add the ticket to the next revocation list and publish it to the ticket's gateway."""
        _require_actor(user)
        rows = self.db.query("SELECT gateway, status FROM console_tickets WHERE ticket_id = ?",
                             (ticket_id,))  # fmt: skip
        if not rows:
            raise ActionError(f"no ticket {ticket_id} issued from the console")
        gateway = str(rows[0][0])
        self._check_scope(user, gateway)
        if str(rows[0][1]) == "revoked":
            raise ActionError("the ticket is already revoked")
        authority = self._need_authority()
        with self._signing:
            revocations = authority.revoke(tickets=[ticket_id])
        with self.db.transaction() as tx:
            _audit(tx, user, "ticket_revoked", f"ticket:{ticket_id}", note=note, at=_now())
        status, reply = self._publish(gateway, "revoke", encode_revocations(revocations))
        self._ticket_status(ticket_id, "revoked", reply)
        return {"ticket_id": ticket_id, "status": "revoked", "published": status, "reply": reply}

    # -- helpers ---------------------------------------------------------------------------

    def _publish(self, gateway: str, command: str, document: bytes) -> tuple[str, str]:
        """(sent | no_answer | not_sent, the reply as JSON text)."""
        if self.broker is None:
            return "not_sent", json.dumps({"error": "the console has no --broker"})
        try:
            reply = send_command(self.broker, gateway, command,
                                 {"document": json.loads(document)},
                                 timeout=self.reply_timeout_s)  # fmt: skip
        except GatewayError as exc:
            return "no_answer", json.dumps({"error": str(exc)})
        return "sent", json.dumps(dict(reply.body), sort_keys=True)

    def _ticket_status(self, ticket_id: str, status: str, reply: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE console_tickets SET status = ?, reply = ?, updated_at = ?"
                " WHERE ticket_id = ?",
                (status, reply[:2000], _now(), ticket_id),
            )

    def _check_scope(self, user: User, gateway: str) -> None:
        district = district_of(self.db, gateway)
        if district is None:
            raise ActionError(f"unknown gateway {gateway}")
        if not user.sees(None if district == "unknown" else district):
            raise Forbidden("out_of_scope")

    def _check_seals(self, user: User, gateway: str, seals: Sequence[str]) -> None:
        """A scoped user names only seals `gateway` itself reported: the lock map of
        provision-lock is the master's whole stock, every district's seals in it."""
        if not user.scoped:
            return
        for seal in seals:
            reported = self.db.query(
                "SELECT 1 FROM console_seals WHERE gateway = ? AND seal = ? UNION"
                " SELECT 1 FROM seal_state WHERE gateway = ? AND seal = ?",
                (gateway, seal, gateway, seal),
            )
            if not reported:
                raise Forbidden("seal_out_of_scope")

    def _need_authority(self) -> MasterAuthority:
        if self.authority is None:
            raise ActionError("the console runs without --master-dir: it cannot sign")
        return self.authority

    def _lock_of(self, gateway: str, seal: str) -> str:
        """The seal's lock id: provision-lock's map, else what the gateway reported."""
        assert self.authority is not None
        known = _read_seals(self.authority.directory)
        if seal in known:
            return known[seal]
        rows = self.db.query("SELECT lock_id FROM console_seals WHERE gateway = ? AND seal = ?",
                             (gateway, seal))  # fmt: skip
        lock = str(rows[0][0]) if rows and rows[0][0] else ""
        if not lock:
            states = self.db.query(
                "SELECT payload FROM seal_state WHERE gateway = ? AND seal = ?", (gateway, seal)
            )
            body = _json(states[0][0]) if states else {}
            lock = str(body.get("lock_id") or "")
        if not LOCK_ID.match(lock):
            raise ActionError(f"seal {seal}: no lock id known for it on {gateway}")
        return lock


def _require_actor(user: User) -> None:
    if not user.can_act:
        raise Forbidden("read_only_role")


def _check_request(request: TicketRequest) -> None:
    if not WORK_ORDER.match(request.work_order):
        raise ActionError("work order: 1-64 of A-Z a-z 0-9 _ . : -")
    if not NAME.match(request.operator):
        raise ActionError("operator: 1-64 of A-Z a-z 0-9 _ . @ -")
    if request.flow not in {f.value for f in Flow}:
        raise ActionError(f"unknown flow {request.flow!r}")
    if not request.seals or len(request.seals) > MAX_SEALS:
        raise ActionError(f"a ticket covers 1 to {MAX_SEALS} seals")
    unknown = sorted(set(request.ops) - {o.value for o in Op})
    if unknown or not request.ops:
        raise ActionError(f"operations: choose from {', '.join(o.value for o in Op)}")
    granted = DEFAULT_GRANTS.get(request.flow, {}).get(request.role, frozenset())
    refused = sorted(set(request.ops) - granted)
    if refused:
        raise ActionError(f"role {request.role} may not {', '.join(refused)} in flow"
                          f" {request.flow} (role rules)")  # fmt: skip
    if not 1 <= request.valid_minutes <= 7 * 24 * 60:
        raise ActionError("the window is 1 minute to 7 days")
    if not 1 <= request.max_uses <= MAX_USES:
        raise ActionError(f"uses: 1 to {MAX_USES}")


def _accepted(status: str, reply: str) -> str:
    if status != "sent":
        return status
    body = _json(reply)
    result = body.get("result") if isinstance(body.get("result"), dict) else {}
    return "accepted" if body.get("ok") and (result or {}).get("stored", True) else "refused"


def _audit(tx: Any, user: User, action: str, target: str, *, note: str, at: str) -> None:
    """One row of the master-side audit trail: who did what to which target, when, and why."""
    row = (f"{at}-{os.urandom(6).hex()}", at, user.username, action, target,
           note.strip()[:MAX_NOTE])  # fmt: skip
    tx.execute(
        "INSERT INTO console_audit (id, at, actor, action, target, note) VALUES (?, ?, ?, ?, ?, ?)",
        row,
    )


def _read_seals(directory: Path) -> dict[str, str]:
    path = directory / SEALS_FILE
    data = _json(path.read_bytes()) if path.is_file() else {}
    return {str(k): str(v) for k, v in data.items()}


def _json(value: Any) -> Mapping[str, Any]:
    try:
        obj = json.loads(value if isinstance(value, str | bytes) else bytes(value))
    except (ValueError, TypeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _now() -> str:
    return format_ts(datetime.now(UTC))
