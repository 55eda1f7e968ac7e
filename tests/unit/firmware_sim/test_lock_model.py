"""Full seal/unseal exchanges between the gateway-side codec and the lock firmware model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.locks.model import LockModel
from gateway.errors import AuthError, ProtocolError
from gateway.protocol import seal_advert as adv
from gateway.protocol import seal_crypto as crypto
from gateway.protocol import seal_exchange as exchange
from gateway.protocol import seal_fragments as frag
from gateway.protocol import seal_frames as sf
from gateway.protocol.clock import ManualClock

K_LOCK = bytes(range(32))
LOCK_ID = bytes.fromhex("5ea1000000000001")
OTHER_ID = bytes.fromhex("5ea1000000000002")
START = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
NOW = int(START.timestamp())
Op = sf.Operation
R = sf.ResultCode


def _counter_nonces() -> exchange.NonceSource:
    numbers = count(1)
    return lambda size: next(numbers).to_bytes(size, "big")


def make_credential(
    lock_id: bytes = LOCK_ID,
    *,
    not_before: int = NOW - 600,
    not_after: int = NOW + 3600,
    ops: frozenset[sf.Operation] = frozenset({Op.UNSEAL, Op.SEAL}),
    scope: tuple[bytes, ...] = (LOCK_ID, OTHER_ID),
    k_lock: bytes = K_LOCK,
    ticket: int = 1,
    audit: bool = False,
) -> exchange.TicketCredential:
    """What the master station would issue: a header and the K_TL derived from it."""
    header = sf.encode_ticket_header(
        sf.TicketHeader(
            ticket.to_bytes(16, "big"), not_before, not_after, ops, b"op-00042", scope, audit=audit
        )
    )
    return exchange.TicketCredential(lock_id, header, crypto.derive_ticket_key(k_lock, header))


@dataclass
class Exchange:
    """One command exchange as the gateway sees it."""

    ctx: crypto.SessionContext
    command: sf.Command
    answer: sf.Frame


class Gateway:
    """The gateway side, speaking fragments at a given MTU to the model."""

    def __init__(self, lock: LockModel, mtu: int = 23) -> None:
        self.lock = lock
        self.mtu = mtu
        self.last_counter: int | None = None
        self.nonces = _counter_nonces()
        self.k_log = crypto.derive_lock_keys(K_LOCK, LOCK_ID).log

    def send(self, frame: sf.Frame) -> sf.Frame:
        return sf.decode_message(self.send_raw(sf.encode(frame)))

    def send_raw(self, message: bytes) -> bytes:
        reassembler = frag.Reassembler()
        answer: bytes | None = None
        for part in frag.fragment(message, self.mtu):
            for reply in self.lock.handle_fragment(part):
                answer = reassembler.feed(reply, 0.0)
        assert answer is not None
        return answer

    def challenge(self) -> tuple[crypto.SessionContext, sf.Challenge]:
        request = exchange.challenge_request(self.nonces)
        challenge = self.send(request)
        assert isinstance(challenge, sf.Challenge)
        ctx = exchange.check_challenge(request, challenge, LOCK_ID, self.last_counter)
        self.last_counter = challenge.counter
        return ctx, challenge

    def run(
        self, credential: exchange.TicketCredential, op: sf.Operation, arg: int = 0
    ) -> Exchange:
        ctx, challenge = self.challenge()
        command = exchange.build_command(credential, ctx, challenge.counter, op, arg)
        return Exchange(ctx, command, self.send(command))

    def operate(
        self, credential: exchange.TicketCredential, op: sf.Operation, arg: int = 0
    ) -> sf.CommandResult:
        done = self.run(credential, op, arg)
        assert isinstance(done.answer, sf.CommandResult)
        return exchange.verify_result(credential, done.ctx, done.command, done.answer)

    def fetch(self, after: int, max_count: int = 10) -> exchange.LogBatch:
        request = exchange.log_fetch(after, max_count, self.nonces)
        answer = self.send(request)
        assert isinstance(answer, sf.LogEntries)
        return exchange.verify_log_entries(self.k_log, LOCK_ID, request, answer)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def lock(clock: ManualClock) -> LockModel:
    return LockModel(LOCK_ID, K_LOCK, clock=clock, state=sf.LockState.SEALED, wire_intact=True)


@pytest.fixture
def gateway(lock: LockModel) -> Gateway:
    return Gateway(lock)


# -- the happy path ----------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [23, 185, 517])
def test_unseal_then_seal_through_the_codec(lock: LockModel, mtu: int) -> None:
    gateway = Gateway(lock, mtu)
    credential = make_credential()
    opened = gateway.operate(credential, Op.UNSEAL)
    assert (opened.result, opened.state, opened.log_index) == (R.OK, sf.LockState.UNSEALED, 2)
    closed = gateway.operate(credential, Op.SEAL)
    assert (closed.result, closed.state, closed.wire) == (
        R.OK,
        sf.LockState.SEALED,
        sf.WireLoop.INTACT,
    )
    assert closed.log_index == 3 and lock.state is sf.LockState.SEALED
    events = [(e.event, e.ticket_tag, e.operator) for e in gateway.fetch(1).entries]
    tag = crypto.ticket_tag(credential.header)
    assert events == [
        (sf.LogEvent.UNSEALED, tag, b"op-00042"),
        (sf.LogEvent.SEALED, tag, b"op-00042"),
    ]


def test_rejections_are_mac_d_answers_and_logged(gateway: Gateway) -> None:
    answer = gateway.operate(make_credential(), Op.SEAL)  # already sealed
    assert (answer.result, answer.state) == (R.BAD_STATE, sf.LockState.SEALED)
    entry = gateway.fetch(answer.log_index - 1).entries[0]
    assert (entry.event, entry.result) == (sf.LogEvent.OP_REJECTED, R.BAD_STATE)


# -- freshness ---------------------------------------------------------------------------------


def test_replayed_command_is_rejected(gateway: Gateway, lock: LockModel) -> None:
    credential = make_credential()
    first = gateway.run(credential, Op.UNSEAL)
    assert isinstance(first.answer, sf.CommandResult) and first.answer.result is R.OK
    gateway.operate(credential, Op.SEAL)
    # Replay with no challenge outstanding: the challenge was used once and is gone.
    assert gateway.send(first.command) == sf.ErrorFrame(sf.ErrorCode.UNEXPECTED_MESSAGE)
    # Replay into a fresh session: the counter no longer matches.
    ctx, _ = gateway.challenge()
    replay = gateway.send(first.command)
    assert isinstance(replay, sf.CommandResult)
    assert exchange.verify_result(credential, ctx, first.command, replay).result is R.REPLAY
    assert lock.state is sf.LockState.SEALED


def test_a_challenge_is_accepted_once(gateway: Gateway) -> None:
    done = gateway.run(make_credential(), Op.UNSEAL)
    assert isinstance(done.answer, sf.CommandResult) and done.answer.result is R.OK
    assert gateway.send(done.command) == sf.ErrorFrame(sf.ErrorCode.UNEXPECTED_MESSAGE)


def test_stale_challenge_expires(gateway: Gateway, clock: ManualClock) -> None:
    credential = make_credential()
    ctx, challenge = gateway.challenge()
    clock.advance(31)
    command = exchange.build_command(credential, ctx, challenge.counter, Op.UNSEAL)
    answer = gateway.send(command)
    assert isinstance(answer, sf.CommandResult)
    assert exchange.verify_result(credential, ctx, command, answer).result is R.CHALLENGE_EXPIRED


def test_counter_rollback_is_rejected(gateway: Gateway) -> None:
    _, challenge = gateway.challenge()
    request = exchange.challenge_request(gateway.nonces)
    with pytest.raises(AuthError) as info:
        exchange.check_challenge(request, challenge, LOCK_ID, challenge.counter)
    assert info.value.code == "counter_rollback"
    with pytest.raises(AuthError, match="another lock"):
        exchange.check_challenge(request, challenge, OTHER_ID, None)


# -- containment -------------------------------------------------------------------------------


def test_key_for_ticket_a_cannot_open_under_ticket_b(gateway: Gateway, lock: LockModel) -> None:
    ticket_a = make_credential(ticket=1)
    ticket_b = make_credential(ticket=2, not_after=NOW + 86400 * 30)
    crossed = replace(ticket_b, k_tl=ticket_a.k_tl)
    done = gateway.run(crossed, Op.UNSEAL)
    assert isinstance(done.answer, sf.CommandResult)
    assert done.answer.result is R.BAD_MAC and lock.state is sf.LockState.SEALED
    with pytest.raises(AuthError):  # answered under the real K_TL(B), which the gateway lacks
        exchange.verify_result(crossed, done.ctx, done.command, done.answer)


def test_expired_ticket_cannot_open_even_with_a_widened_header(
    gateway: Gateway, lock: LockModel, clock: ManualClock
) -> None:
    expired = make_credential(not_before=NOW - 7200, not_after=NOW - 3600)
    assert gateway.operate(expired, Op.UNSEAL).result is R.EXPIRED
    widened_header = sf.encode_ticket_header(
        replace(sf.decode_ticket_header(expired.header), not_after=NOW + 3600)
    )
    forged = replace(expired, header=widened_header)  # the gateway only has the old K_TL
    done = gateway.run(forged, Op.UNSEAL)
    assert isinstance(done.answer, sf.CommandResult) and done.answer.result is R.BAD_MAC
    assert lock.state is sf.LockState.SEALED


@pytest.mark.parametrize(
    ("not_before", "not_after", "expected"),
    [
        (NOW + 121, NOW + 3600, R.NOT_YET_VALID),
        (NOW + 119, NOW + 3600, R.OK),
        (NOW - 3600, NOW - 119, R.OK),
        (NOW - 3600, NOW - 121, R.EXPIRED),
    ],
)
def test_window_is_checked_against_the_rtc_with_skew(
    gateway: Gateway, not_before: int, not_after: int, expected: sf.ResultCode
) -> None:
    credential = make_credential(not_before=not_before, not_after=not_after)
    assert gateway.operate(credential, Op.UNSEAL).result is expected


def test_wrong_lock_and_wrong_operation_are_refused(gateway: Gateway, lock: LockModel) -> None:
    seal_only = make_credential(ops=frozenset({Op.SEAL}))
    assert gateway.operate(seal_only, Op.UNSEAL).result is R.OP_NOT_ALLOWED
    other_header = make_credential(OTHER_ID, scope=(OTHER_ID,))
    with pytest.raises(AuthError):
        exchange.TicketCredential(LOCK_ID, other_header.header, other_header.k_tl)
    smuggled = exchange.TicketCredential(OTHER_ID, other_header.header, other_header.k_tl)
    object.__setattr__(smuggled, "lock_id", LOCK_ID)  # a compromised gateway skips its checks
    assert gateway.operate(smuggled, Op.UNSEAL).result is R.WRONG_LOCK
    assert lock.state is sf.LockState.SEALED


def test_a_key_derived_from_another_locks_secret_fails(gateway: Gateway) -> None:
    foreign = make_credential(k_lock=bytes(32))
    done = gateway.run(foreign, Op.UNSEAL)
    assert isinstance(done.answer, sf.CommandResult) and done.answer.result is R.BAD_MAC


# -- authentic answers -------------------------------------------------------------------------


def test_forged_answer_is_detected(gateway: Gateway) -> None:
    credential = make_credential()
    done = gateway.run(credential, Op.UNSEAL)
    assert isinstance(done.answer, sf.CommandResult)
    lie = replace(done.answer, state=sf.LockState.SEALED)
    with pytest.raises(AuthError) as info:
        exchange.verify_result(credential, done.ctx, done.command, lie)
    assert info.value.code == "bad_answer_mac"


def test_fake_lock_and_replayed_answer_are_detected(clock: ManualClock) -> None:
    credential = make_credential()
    fake = LockModel(LOCK_ID, bytes(32), clock=clock, state=sf.LockState.SEALED, wire_intact=True)
    with pytest.raises(AuthError):
        Gateway(fake).operate(credential, Op.SEAL)
    real = Gateway(LockModel(LOCK_ID, K_LOCK, clock=clock, wire_intact=True))
    old = real.run(credential, Op.SEAL)
    ctx, challenge = real.challenge()
    command = exchange.build_command(credential, ctx, challenge.counter, Op.SEAL)
    assert isinstance(old.answer, sf.CommandResult)
    with pytest.raises(AuthError):  # yesterday's "sealed" does not answer today's command
        exchange.verify_result(credential, ctx, command, old.answer)


# -- lock behaviour ----------------------------------------------------------------------------


def test_wire_cut_while_sealed_is_a_tamper(gateway: Gateway, lock: LockModel) -> None:
    tracker = adv.AdvertTracker({LOCK_ID: crypto.derive_lock_keys(K_LOCK, LOCK_ID).advert})
    assert tracker.observe(lock.advert_payload()) is not None
    lock.set_wire_intact(False)
    seen = tracker.observe(lock.advert_payload())
    assert seen is not None and seen.fresh and seen.advert.tamper and seen.advert.wire_cut
    assert seen.advert.state is sf.LockState.TAMPERED
    credential = make_credential()
    assert gateway.operate(credential, Op.SEAL).result is R.BAD_STATE
    assert gateway.operate(credential, Op.UNSEAL).result is R.NEEDS_AUDIT  # section 10
    audit = make_credential(audit=True, ticket=2)
    assert gateway.operate(audit, Op.UNSEAL).result is R.OK
    assert gateway.operate(credential, Op.SEAL).result is R.WIRE_OPEN
    lock.set_wire_intact(True)
    sealed = gateway.operate(credential, Op.SEAL)
    assert sealed.result is R.OK and sealed.flags == 0
    kinds = [e.event for e in gateway.fetch(0).entries]
    assert kinds[:2] == [sf.LogEvent.BOOT, sf.LogEvent.TAMPER_WIRE_CUT]


def test_shell_and_battery_sensors_log_and_flag(gateway: Gateway, lock: LockModel) -> None:
    lock.set_shell_open(True)
    lock.set_battery_low(True)
    lock.set_battery_low(True)
    advert = adv.decode_advert(lock.advert_payload())
    assert advert.tamper and advert.battery_low and advert.state is sf.LockState.TAMPERED
    kinds = [e.event for e in gateway.fetch(1).entries]
    assert kinds == [sf.LogEvent.TAMPER_SHELL_OPEN, sf.LogEvent.BATTERY_LOW]


def test_mechanical_failure_reports_fault_then_recovers(gateway: Gateway, lock: LockModel) -> None:
    credential = make_credential()
    lock.fail_actuations(1)
    failed = gateway.operate(credential, Op.UNSEAL)
    assert (failed.result, failed.state) == (R.MECHANICAL_FAULT, sf.LockState.FAULT)
    assert failed.flags & sf.StatusFlags.FAULT
    assert gateway.operate(credential, Op.UNSEAL).state is sf.LockState.UNSEALED
    kinds = [e.event for e in gateway.fetch(1).entries]
    assert kinds == [sf.LogEvent.FAULT, sf.LogEvent.UNSEALED]


def test_lost_rtc_needs_set_time_and_cannot_be_wound_back(
    gateway: Gateway, lock: LockModel
) -> None:
    lock.lose_time()
    clock_ticket = make_credential(ops=frozenset({Op.SET_TIME}), ticket=7)
    assert gateway.operate(make_credential(), Op.UNSEAL).result is R.CLOCK_INVALID
    old = make_credential(not_before=NOW - 7200, not_after=NOW - 3600, ops=frozenset({Op.SET_TIME}))
    assert gateway.operate(old, Op.SET_TIME, NOW - 3600).result is R.BAD_TIME
    assert gateway.operate(clock_ticket, Op.SET_TIME, NOW + 5).result is R.OK
    assert lock.rtc == NOW + 5
    assert gateway.operate(make_credential(), Op.UNSEAL).result is R.OK


def test_reboot_forgets_the_challenge_and_logs_boot(gateway: Gateway, lock: LockModel) -> None:
    credential = make_credential()
    ctx, challenge = gateway.challenge()
    lock.reboot()
    command = exchange.build_command(credential, ctx, challenge.counter, Op.UNSEAL)
    assert gateway.send(command) == sf.ErrorFrame(sf.ErrorCode.UNEXPECTED_MESSAGE)
    assert [e.event for e in gateway.fetch(1).entries] == [sf.LogEvent.BOOT]
    assert gateway.challenge()[1].counter == challenge.counter + 1


def test_transport_errors_answer_unauthenticated_error_frames(
    gateway: Gateway, lock: LockModel
) -> None:
    replies = lock.handle_fragment(b"\x05garbage")
    assert sf.decode_message(frag.Reassembler().feed(replies[0], 0.0) or b"") == sf.ErrorFrame(
        sf.ErrorCode.BAD_FRAGMENT
    )
    assert gateway.send_raw(bytes([1, 1, 0, 1, 0])) == sf.encode(
        sf.ErrorFrame(sf.ErrorCode.BAD_FRAME)
    )
    assert lock.handle_message(bytes([9, 1, 0, 0])) == sf.encode(
        sf.ErrorFrame(sf.ErrorCode.UNSUPPORTED_VERSION)
    )
    assert gateway.send(sf.UnknownFrame(0x42, b"x")) == sf.ErrorFrame(sf.ErrorCode.UNKNOWN_TYPE)
    assert gateway.send(sf.ErrorFrame(sf.ErrorCode.BUSY)) == sf.ErrorFrame(
        sf.ErrorCode.UNEXPECTED_MESSAGE
    )


# -- adverts -----------------------------------------------------------------------------------


def test_spoofed_and_rolled_back_adverts_are_rejected(lock: LockModel, clock: ManualClock) -> None:
    keys = crypto.derive_lock_keys(K_LOCK, LOCK_ID)
    tracker = adv.AdvertTracker({LOCK_ID: keys.advert})
    old = lock.advert_payload()
    assert len(lock.advert()) <= adv.LEGACY_ADV_MAX
    assert adv.manufacturer_payload(lock.advert()) == old
    first = tracker.observe(old)
    assert first is not None and first.fresh
    repeat = tracker.observe(old)
    assert repeat is not None and not repeat.fresh
    clock.advance(600)  # heartbeat: the counter moves even when nothing changed
    newer = tracker.observe(lock.advert_payload())
    assert newer is not None and newer.advert.counter == first.advert.counter + 1
    with pytest.raises(AuthError) as rollback:
        tracker.observe(old)
    assert rollback.value.code == "advert_replay"
    spoof = adv.sign_advert(
        adv.Advert(adv.short_id(LOCK_ID), sf.LockState.SEALED, 0, 999, 1), LOCK_ID, bytes(32)
    )
    with pytest.raises(AuthError) as spoofed:
        tracker.observe(adv.encode_advert(spoof))
    assert spoofed.value.code == "bad_advert_mac"
    assert tracker.last(LOCK_ID) == newer.advert
    stranger = adv.encode_advert(replace(spoof, short_id=0xDEAD))
    assert tracker.observe(stranger) is None


# -- the log -----------------------------------------------------------------------------------


def test_log_fetch_returns_entries_past_n_with_valid_tags(
    gateway: Gateway, lock: LockModel
) -> None:
    credential = make_credential()
    for _ in range(6):
        gateway.operate(credential, Op.UNSEAL)
        gateway.operate(credential, Op.SEAL)
    batch = gateway.fetch(after=5, max_count=4)
    assert [e.index for e in batch.entries] == [6, 7, 8, 9]
    assert batch.head == 13 and batch.more and batch.lost_before is None
    audit = crypto.derive_lock_keys(K_LOCK, LOCK_ID).audit
    for entry in batch.entries:
        crypto.verify_audit_tag(audit, LOCK_ID, entry)
    assert gateway.fetch(after=13).entries == ()
    forged = replace(batch.entries[0], event=sf.LogEvent.SEALED)
    with pytest.raises(AuthError):
        crypto.verify_entry(gateway.k_log, LOCK_ID, forged)


def test_log_ring_overwrite_is_reported_as_a_gap(clock: ManualClock) -> None:
    small = LockModel(LOCK_ID, K_LOCK, clock=clock, wire_intact=True, log_capacity=4)
    gateway = Gateway(small)
    for _ in range(5):
        small.set_battery_low(True)
        small.set_battery_low(False)
    batch = gateway.fetch(after=0)
    assert (batch.oldest, batch.head, batch.lost_before) == (3, 6, 3)
    assert [e.index for e in batch.entries] == [3, 4, 5, 6]


def test_withheld_or_reordered_entries_are_caught(gateway: Gateway, lock: LockModel) -> None:
    lock.set_battery_low(True)
    lock.set_shell_open(True)
    request = exchange.log_fetch(0, 10, gateway.nonces)
    answer = gateway.send(request)
    assert isinstance(answer, sf.LogEntries)
    for entries in (answer.entries[1:], answer.entries[::-1]):
        cut = replace(answer, entries=entries)
        signed = replace(cut, mac=_log_mac(gateway, request, cut))  # even a correctly MAC'd one
        with pytest.raises(ProtocolError):
            exchange.verify_log_entries(gateway.k_log, LOCK_ID, request, signed)


def _log_mac(gateway: Gateway, request: sf.LogFetch, answer: sf.LogEntries) -> bytes:
    return crypto.log_answer_mac(
        gateway.k_log, LOCK_ID, request.gw_nonce, sf.encode(request), answer
    )


# -- fuzzing the firmware's input --------------------------------------------------------------


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_fuzz_lock_never_crashes_and_always_answers_well_formed(parts: list[bytes]) -> None:
    lock = LockModel(LOCK_ID, K_LOCK, clock=ManualClock(START), state=sf.LockState.SEALED)
    for part in parts:
        for reply in lock.handle_fragment(part):
            frag.decode_fragment(reply)
        answer = sf.decode_message(lock.handle_message(part))
        assert not isinstance(answer, sf.UnknownFrame | sf.Command | sf.ChallengeRequest)
    assert lock.state is sf.LockState.SEALED
