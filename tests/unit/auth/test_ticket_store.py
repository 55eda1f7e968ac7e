"""The ticket store: acceptance rules, revocation serials, use counters, restarts, pruning."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth.policy import Reason
from gateway.auth.ticket_store import TicketStore
from gateway.errors import AuthError, DatabaseCorruptError, ProtocolError
from gateway.protocol.certs import encode_certificate, encode_revocations
from gateway.protocol.clock import ManualClock
from gateway.protocol.seal_crypto import derive_ticket_key
from gateway.protocol.tickets import encode_ticket, ticket_header
from tests.fixtures.auth import HOUR, OPERATOR, T0, World, at


def _open(auth_world: World, auth_clock: ManualClock, tmp_path: Path) -> TicketStore:
    return TicketStore.open(
        tmp_path / "state" / "tickets.db",
        trust=auth_world.trust,
        credential_key=auth_world.credential_key,
        clock=auth_clock,
    )


@pytest.fixture
def store(auth_world: World, auth_clock: ManualClock, tmp_path: Path) -> Iterator[TicketStore]:
    opened = _open(auth_world, auth_clock, tmp_path)
    yield opened
    opened.close()


def _code(excinfo: pytest.ExceptionInfo[AuthError]) -> str:
    return excinfo.value.code


def test_files_are_private(store: TicketStore, auth_world: World, tmp_path: Path) -> None:
    store.accept_ticket(encode_ticket(auth_world.ticket()))
    state = tmp_path / "state"
    for path in state.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert (state / "tickets.db").exists()
    assert stat.S_IMODE((tmp_path / "state" / "credential.key").stat().st_mode) == 0o600


def test_tickets_and_uses_survive_a_restart(
    store: TicketStore, auth_world: World, auth_clock: ManualClock, tmp_path: Path
) -> None:
    ticket = auth_world.ticket()
    assert store.accept_ticket(encode_ticket(ticket)).stored
    assert store.reserve_use(ticket.ticket_id) == 1
    store.accept_certificate(encode_certificate(auth_world.certificate))
    store.accept_revocations(encode_revocations(auth_world.revoke(serial=3)))
    store.close()
    reopened = _open(auth_world, auth_clock, tmp_path)
    try:
        assert reopened.ticket(ticket.ticket_id) == ticket
        assert reopened.tickets_for(ticket.work_order) == (ticket,)
        assert reopened.uses(ticket.ticket_id) == 1
        assert reopened.certificate(OPERATOR) == auth_world.certificate
        revocations = reopened.revocations()
        assert revocations is not None
        assert revocations.serial == 3
    finally:
        reopened.close()


def test_repeat_is_idempotent_and_conflict_is_refused(
    store: TicketStore, auth_world: World
) -> None:
    ticket = auth_world.ticket(ticket_id="aa" * 16)
    assert store.accept_ticket(encode_ticket(ticket)).stored
    assert not store.accept_ticket(encode_ticket(ticket)).stored
    other = auth_world.ticket(ticket_id="aa" * 16, max_uses=9)
    with pytest.raises(AuthError) as err:
        store.accept_ticket(encode_ticket(other))
    assert _code(err) == "conflict"


def test_acceptance_checks(store: TicketStore, auth_world: World, tmp_path: Path) -> None:
    cases = {
        "wrong_gateway": auth_world.ticket(gateway="gw-0002"),
        "ticket_expired": auth_world.ticket(not_before=T0 - 9 * HOUR, not_after=T0 - HOUR),
        "wrong_recipient": auth_world.ticket(gateway_key=bytes(range(32))),
    }
    for code, ticket in cases.items():
        with pytest.raises(AuthError) as err:
            store.accept_ticket(encode_ticket(ticket))
        assert _code(err) == code
    forged = encode_ticket(auth_world.ticket()).replace(b'"max_uses":4', b'"max_uses":5')
    with pytest.raises(AuthError) as err:
        store.accept_ticket(forged)
    assert _code(err) == "bad_signature"
    with pytest.raises(ProtocolError):
        store.accept_ticket(b'{"v":1}')
    assert store.ticket_ids() == ()


def test_revocation_serials(store: TicketStore, auth_world: World) -> None:
    kept, doomed = auth_world.ticket(), auth_world.ticket()
    for ticket in (kept, doomed):
        store.accept_ticket(encode_ticket(ticket))
    assert store.accept_revocations(encode_revocations(auth_world.revoke(serial=5))).stored
    newer = auth_world.revoke(serial=6, tickets=[doomed.ticket_id])
    assert store.accept_revocations(encode_revocations(newer)).stored
    assert store.ticket_ids() == (kept.ticket_id,)
    assert not store.accept_revocations(encode_revocations(newer)).stored
    with pytest.raises(AuthError) as err:
        store.accept_revocations(encode_revocations(auth_world.revoke(serial=5)))
    assert _code(err) == "stale_revocation_list"
    with pytest.raises(AuthError) as err:
        store.accept_revocations(encode_revocations(auth_world.revoke(serial=6)))
    assert _code(err) == "conflict"
    with pytest.raises(AuthError) as err:
        store.accept_ticket(encode_ticket(doomed))
    assert _code(err) == "ticket_revoked"
    revocations = store.revocations()
    assert revocations is not None
    assert revocations.serial == 6


def test_operator_revocation_removes_their_tickets(store: TicketStore, auth_world: World) -> None:
    store.accept_ticket(encode_ticket(auth_world.ticket()))
    store.accept_revocations(encode_revocations(auth_world.revoke(operators=[OPERATOR])))
    assert store.ticket_ids() == ()
    with pytest.raises(AuthError) as err:
        store.accept_ticket(encode_ticket(auth_world.ticket()))
    assert _code(err) == "ticket_revoked"


def test_uses_are_counted_atomically(store: TicketStore, auth_world: World) -> None:
    ticket = auth_world.ticket(max_uses=2)
    store.accept_ticket(encode_ticket(ticket))
    assert [store.reserve_use(ticket.ticket_id) for _ in range(2)] == [1, 2]
    with pytest.raises(AuthError) as err:
        store.reserve_use(ticket.ticket_id)
    assert _code(err) == "uses_exhausted"
    assert store.uses(ticket.ticket_id) == 2


def test_credentials_are_decrypted_on_demand(store: TicketStore, auth_world: World) -> None:
    ticket = auth_world.ticket()
    store.accept_ticket(encode_ticket(ticket))
    credential = store.credential(ticket.ticket_id, "SL-0002")
    assert credential.k_tl == derive_ticket_key(
        auth_world.k_locks["SL-0002"], ticket_header(ticket)
    )
    with pytest.raises(AuthError) as err:
        store.credential(ticket.ticket_id, "SL-0003")
    assert _code(err) == "wrong_lock"
    with pytest.raises(AuthError) as err:
        store.credential("bb" * 16, "SL-0001")
    assert _code(err) == "unknown_ticket"


def test_expired_tickets_are_pruned(
    store: TicketStore, auth_world: World, auth_clock: ManualClock, tmp_path: Path
) -> None:
    short = auth_world.ticket(not_after=T0 + 2 * HOUR)
    long = auth_world.ticket(not_after=T0 + 9 * HOUR)
    for ticket in (short, long):
        store.accept_ticket(encode_ticket(ticket))
    auth_clock.advance(HOUR + 120)
    assert store.prune() == 0
    auth_clock.advance(1)
    assert store.prune() == 1
    assert store.ticket_ids() == (long.ticket_id,)
    store.close()
    auth_clock.advance(7 * HOUR)
    reopened = _open(auth_world, auth_clock, tmp_path)
    try:
        assert reopened.ticket_ids() == ()
    finally:
        reopened.close()


def test_edited_row_is_denied_as_forged(
    store: TicketStore, auth_world: World, tmp_path: Path
) -> None:
    ticket = auth_world.ticket()
    store.accept_ticket(encode_ticket(ticket))
    store.close()
    conn = sqlite3.connect(tmp_path / "state" / "tickets.db")
    doc = conn.execute("SELECT doc FROM tickets").fetchone()[0]
    stretched = doc.replace(str(ticket.not_after).encode(), str(ticket.not_after + 86400).encode())
    conn.execute("UPDATE tickets SET doc = ?, not_after = not_after + 86400", (stretched,))
    conn.commit()
    conn.close()
    reopened = _open(auth_world, ManualClock(at(T0 + 5 * HOUR)), tmp_path)
    try:
        held = reopened.ticket(ticket.ticket_id)
        assert held is not None
        assert held.not_after == ticket.not_after + 86400
        decision = auth_world.decide(auth_world.request(held), held, now=at(T0 + 5 * HOUR))
        assert decision.reason is Reason.FORGED_TICKET
    finally:
        reopened.close()


def test_newer_certificate_wins(store: TicketStore, auth_world: World) -> None:
    newer = auth_world.enroll(issued_at=T0, roles=["auditor"])
    assert store.accept_certificate(encode_certificate(newer)).stored
    assert not store.accept_certificate(encode_certificate(auth_world.certificate)).stored
    assert store.certificate(OPERATOR) == newer


def test_corrupt_database_is_moved_aside(
    auth_world: World, auth_clock: ManualClock, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "tickets.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(DatabaseCorruptError) as err:
        _open(auth_world, auth_clock, tmp_path)
    assert Path(err.value.moved_to).exists()
    assert not path.exists()
