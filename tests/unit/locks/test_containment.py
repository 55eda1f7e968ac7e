"""Containment: a thief who reads the gateway's whole state directory cannot open locks at will.

The gateway's disk holds the ticket store and its X25519 credential key, so the thief decrypts
every K_TL it holds. Each attempt below talks to the lock firmware model through the real
protocol; the lock decides on its own (K_TL derivation from the header, its RTC window, its
lock id). Revocation is the gateway's job (the lock does not know revocations): the tests show
the gateway refuses and wipes the credential, and that a stolen copy dies with its window.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_sim.locks.model import LockModel
from gateway.auth.policy import Reason
from gateway.auth.ticket_store import TicketStore, load_or_create_credential_key
from gateway.errors import AuthError
from gateway.protocol import seal_exchange as exchange
from gateway.protocol.certs import encode_revocations
from gateway.protocol.clock import ManualClock
from gateway.protocol.seal_crypto import command_mac
from gateway.protocol.seal_frames import (
    MAC_LEN,
    Challenge,
    Command,
    CommandResult,
    LockState,
    LogEvent,
    Operation,
    ResultCode,
    TicketHeader,
    decode_message,
    decode_ticket_header,
    encode,
    encode_ticket_header,
)
from gateway.protocol.signed import b64url
from gateway.protocol.tickets import Ticket, encode_ticket, open_credential, parse_ticket
from tests.fixtures.auth import HOUR, LOCKS, World

SKEW = 120


@dataclass(frozen=True)
class Loot:
    """What the thief gets from a copy of the state directory: K_TL and header per seal."""

    credentials: dict[tuple[str, str], exchange.TicketCredential]
    files: dict[str, bytes]


@pytest.fixture
def store(auth_world: World, auth_clock: ManualClock, tmp_path: Path) -> Iterator[TicketStore]:
    opened = TicketStore.open(
        tmp_path / "state" / "tickets.db",
        trust=auth_world.trust,
        credential_key=auth_world.credential_key,
        clock=auth_clock,
        skew_s=SKEW,
    )
    yield opened
    opened.close()


@pytest.fixture
def locks(auth_world: World, auth_clock: ManualClock) -> dict[str, LockModel]:
    return {
        seal_id: LockModel(
            lock_id,
            auth_world.k_locks[seal_id],
            clock=auth_clock,
            state=LockState.SEALED,
            wire_intact=True,
        )
        for seal_id, lock_id in LOCKS.items()
    }


@pytest.fixture
def ticket(auth_world: World, store: TicketStore) -> Ticket:
    issued = auth_world.ticket()  # SL-0001 and SL-0002, unseal + seal, T0 .. T0 + 2 h
    store.accept_ticket(encode_ticket(issued))
    return issued


def steal(state_dir: Path, into: Path) -> Loot:
    """Copy every file of the state directory and decrypt every credential in it."""
    shutil.copytree(state_dir, into)
    files = {path.name: path.read_bytes() for path in into.iterdir()}
    key = load_or_create_credential_key(into / "credential.key")
    conn = sqlite3.connect(into / "tickets.db")
    docs = [bytes(row[0]) for row in conn.execute("SELECT doc FROM tickets")]
    conn.close()
    credentials = {}
    for doc in docs:
        held = parse_ticket(doc)
        for seal_id in held.seal_ids:
            credentials[held.ticket_id, seal_id] = open_credential(held, seal_id, key)
    return Loot(credentials, files)


def attempt(lock: LockModel, header: bytes, k_tl: bytes, op: Operation) -> CommandResult:
    """The thief's own client: any header, any key, straight to the lock."""
    request = exchange.challenge_request()
    challenge = decode_message(lock.handle_message(encode(request)))
    assert isinstance(challenge, Challenge)
    ctx = exchange.check_challenge(request, challenge, lock.lock_id, None)
    unsigned = Command(challenge.counter, op, 0, header, bytes(MAC_LEN))
    command = Command(challenge.counter, op, 0, header, command_mac(k_tl, ctx, unsigned))
    answer = decode_message(lock.handle_message(encode(command)))
    assert isinstance(answer, CommandResult)
    return answer


def rewrite(header: bytes, **changes: object) -> bytes:
    """The header with some fields changed, still well-formed."""
    fields = decode_ticket_header(header)
    values = {name: getattr(fields, name) for name in TicketHeader.__dataclass_fields__}
    values.update(changes)
    return encode_ticket_header(TicketHeader(**values))


def assert_refused(lock: LockModel, answer: CommandResult, result: ResultCode) -> None:
    assert answer.result is result
    assert lock.state is LockState.SEALED
    last = lock.log_entries()[-1]
    assert (last.event, last.result) == (LogEvent.OP_REJECTED, result)


# -- what the thief gets, and what it does not --------------------------------------------------


def test_disk_holds_no_lock_secret_and_no_plaintext_ticket_key(
    auth_world: World, ticket: Ticket, tmp_path: Path
) -> None:
    loot = steal(tmp_path / "state", tmp_path / "loot")
    assert set(loot.credentials) == {(ticket.ticket_id, "SL-0001"), (ticket.ticket_id, "SL-0002")}
    blob = b"".join(loot.files.values())
    for k_lock in auth_world.k_locks.values():
        assert k_lock not in blob
    for credential in loot.credentials.values():
        assert credential.k_tl not in blob


def test_control_a_live_ticket_opens_its_lock_within_its_window(
    ticket: Ticket, locks: dict[str, LockModel], tmp_path: Path
) -> None:
    """The residual risk, stated honestly: a valid ticket works, for its locks and ops only."""
    loot = steal(tmp_path / "state", tmp_path / "loot")
    credential = loot.credentials[ticket.ticket_id, "SL-0001"]
    answer = attempt(locks["SL-0001"], credential.header, credential.k_tl, Operation.UNSEAL)
    assert answer.result is ResultCode.OK
    assert locks["SL-0001"].state is LockState.UNSEALED


# -- expired --------------------------------------------------------------------------------


def test_expired_ticket_cannot_open_the_lock(
    ticket: Ticket, locks: dict[str, LockModel], auth_clock: ManualClock, tmp_path: Path
) -> None:
    loot = steal(tmp_path / "state", tmp_path / "loot")
    auth_clock.advance(ticket.not_after + SKEW + 1 - auth_clock.now().timestamp())
    for seal_id in ("SL-0001", "SL-0002"):
        credential = loot.credentials[ticket.ticket_id, seal_id]
        answer = attempt(locks[seal_id], credential.header, credential.k_tl, Operation.UNSEAL)
        assert_refused(locks[seal_id], answer, ResultCode.EXPIRED)


def test_stretching_the_window_breaks_the_key(
    ticket: Ticket, locks: dict[str, LockModel], auth_clock: ManualClock, tmp_path: Path
) -> None:
    loot = steal(tmp_path / "state", tmp_path / "loot")
    auth_clock.advance(ticket.not_after + SKEW + 1 - auth_clock.now().timestamp())
    credential = loot.credentials[ticket.ticket_id, "SL-0001"]
    stretched = rewrite(credential.header, not_after=ticket.not_after + 30 * 24 * HOUR)
    answer = attempt(locks["SL-0001"], stretched, credential.k_tl, Operation.UNSEAL)
    assert_refused(locks["SL-0001"], answer, ResultCode.BAD_MAC)


def test_adding_an_op_breaks_the_key(
    ticket: Ticket, locks: dict[str, LockModel], tmp_path: Path
) -> None:
    loot = steal(tmp_path / "state", tmp_path / "loot")
    credential = loot.credentials[ticket.ticket_id, "SL-0001"]
    # SET_TIME never joins UNSEAL in one header (docs/protocol.md, section 7): swap it in.
    wider = rewrite(credential.header, ops=frozenset({Operation.SEAL, Operation.SET_TIME}))
    answer = attempt(locks["SL-0001"], wider, credential.k_tl, Operation.SET_TIME)
    assert_refused(locks["SL-0001"], answer, ResultCode.BAD_MAC)


# -- other locks and other tickets ----------------------------------------------------------


def test_credential_does_not_open_a_lock_outside_the_ticket(
    ticket: Ticket, locks: dict[str, LockModel], tmp_path: Path
) -> None:
    loot = steal(tmp_path / "state", tmp_path / "loot")
    credential = loot.credentials[ticket.ticket_id, "SL-0001"]
    other = locks["SL-0003"]
    answer = attempt(other, credential.header, credential.k_tl, Operation.UNSEAL)
    assert_refused(other, answer, ResultCode.BAD_MAC)
    retargeted = rewrite(credential.header, lock_ids=(LOCKS["SL-0003"],))
    answer = attempt(other, retargeted, credential.k_tl, Operation.UNSEAL)
    assert_refused(other, answer, ResultCode.BAD_MAC)


def test_key_of_ticket_a_fails_under_ticket_b(
    auth_world: World,
    ticket: Ticket,
    store: TicketStore,
    locks: dict[str, LockModel],
    tmp_path: Path,
) -> None:
    ticket_b = auth_world.ticket(seals=[("SL-0001", LOCKS["SL-0001"])], ops=["unseal", "seal"])
    store.accept_ticket(encode_ticket(ticket_b))
    loot = steal(tmp_path / "state", tmp_path / "loot")
    key_a = loot.credentials[ticket.ticket_id, "SL-0001"].k_tl
    header_b = loot.credentials[ticket_b.ticket_id, "SL-0001"].header
    answer = attempt(locks["SL-0001"], header_b, key_a, Operation.UNSEAL)
    assert_refused(locks["SL-0001"], answer, ResultCode.BAD_MAC)


# -- revoked --------------------------------------------------------------------------------


def test_revoked_ticket_is_refused_and_wiped(
    auth_world: World,
    ticket: Ticket,
    store: TicketStore,
    locks: dict[str, LockModel],
    tmp_path: Path,
) -> None:
    before = steal(tmp_path / "state", tmp_path / "before")
    sealed_keys = [b64url(grant.sealed_key).encode() for grant in ticket.seals]
    revocations = auth_world.revoke(tickets=[ticket.ticket_id])
    store.accept_revocations(encode_revocations(revocations))

    request = auth_world.request(ticket)
    held = store.ticket(ticket.ticket_id)
    decision = auth_world.decide(request, held, revocations=store.revocations())
    assert decision.reason is Reason.TICKET_REVOKED
    with pytest.raises(AuthError) as err:
        store.credential(ticket.ticket_id, "SL-0001")
    assert err.value.code == "unknown_ticket"

    after = steal(tmp_path / "state", tmp_path / "after")
    assert after.credentials == {}
    blob = b"".join(after.files.values())
    assert all(sealed not in blob for sealed in sealed_keys)
    assert ticket.ticket_id.encode() in blob  # only as an entry of the revocation list
    earlier = b"".join(before.files.values())
    assert all(sealed in earlier for sealed in sealed_keys)  # the earlier copy did hold them


def test_copy_stolen_before_revocation_dies_with_its_window(
    auth_world: World,
    ticket: Ticket,
    store: TicketStore,
    locks: dict[str, LockModel],
    auth_clock: ManualClock,
    tmp_path: Path,
) -> None:
    """The lock cannot know revocations: what bounds an earlier copy is the ticket window."""
    loot = steal(tmp_path / "state", tmp_path / "loot")
    store.accept_revocations(encode_revocations(auth_world.revoke(tickets=[ticket.ticket_id])))
    auth_clock.advance(ticket.not_after + SKEW + 1 - auth_clock.now().timestamp())
    credential = loot.credentials[ticket.ticket_id, "SL-0002"]
    answer = attempt(locks["SL-0002"], credential.header, credential.k_tl, Operation.UNSEAL)
    assert_refused(locks["SL-0002"], answer, ResultCode.EXPIRED)


# -- the gateway's own path, for contrast -----------------------------------------------------


def test_gateway_path_allows_then_executes(
    auth_world: World, ticket: Ticket, store: TicketStore, locks: dict[str, LockModel]
) -> None:
    request = auth_world.request(ticket)
    decision = auth_world.decide(
        request,
        store.ticket(ticket.ticket_id),
        revocations=store.revocations(),
        uses_so_far=store.uses(ticket.ticket_id),
    )
    assert decision.allowed
    assert store.reserve_use(ticket.ticket_id) == 1
    credential = store.credential(ticket.ticket_id, "SL-0001")
    lock = locks["SL-0001"]
    chal_request = exchange.challenge_request()
    challenge = decode_message(lock.handle_message(encode(chal_request)))
    assert isinstance(challenge, Challenge)
    ctx = exchange.check_challenge(chal_request, challenge, lock.lock_id, None)
    command = exchange.build_command(credential, ctx, challenge.counter, Operation.UNSEAL)
    answer = decode_message(lock.handle_message(encode(command)))
    assert isinstance(answer, CommandResult)
    result = exchange.verify_result(credential, ctx, command, answer)
    assert (result.result, result.state) == (ResultCode.OK, LockState.UNSEALED)
    assert lock.log_entries()[-1].operator == decode_ticket_header(credential.header).operator
