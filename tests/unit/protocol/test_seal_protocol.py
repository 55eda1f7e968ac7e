"""Seal protocol codec: the known answers of docs/protocol.md, round trips, streams, hostile input."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import AuthError, ProtocolError
from gateway.protocol import seal_advert as adv
from gateway.protocol import seal_crypto as crypto
from gateway.protocol import seal_exchange as exchange
from gateway.protocol import seal_fragments as frag
from gateway.protocol import seal_frames as sf

# -- docs/protocol.md, section 11: test vectors --------------------------------------------------

K_LOCK = bytes(range(32))
LOCK_ID = bytes.fromhex("5ea1000000000001")
OTHER_LOCK = bytes.fromhex("5ea1000000000002")
GW_NONCE = bytes(range(0x20, 0x30))
LOCK_NONCE = bytes(range(0x30, 0x40))
LOG_NONCE = bytes(range(0x40, 0x50))
HEADER = bytes.fromhex(
    "0100112233445566778899aabbccddeeff6955b9006955d52003a1a2a3a4a5a6a7a8"
    "025ea10000000000015ea1000000000002"
)
K_TL = bytes.fromhex("025642b7b68668eef136e5709938cad4386a2438a7583778c4cd21abb3962a13")
K_LOG = bytes.fromhex("3b1758ba6332470c33b0dbbee254b6e8199fd7aba41f6f61726f8bbbf742a79b")
K_ADV = bytes.fromhex("f79b301dc7d022f30062856e11e22bbf71022f28afecfed26169151b57923b7d")
K_AUDIT = bytes.fromhex("85f4950f97d95cc313673320b20fcc147d0ab86655f318aef59e9a6f3fbc85b3")
CHALLENGE_REQUEST = bytes.fromhex("01010010202122232425262728292a2b2c2d2e2f")
CHALLENGE = bytes.fromhex(
    "010200205ea1000000000001303132333435363738393a3b3c3d3e3f000000016955c710"
)
COMMAND = bytes.fromhex(
    "0103004d000000010100000000330100112233445566778899aabbccddeeff6955b900"
    "6955d52003a1a2a3a4a5a6a7a8025ea10000000000015ea10000000000027c123a5e14"
    "7e81dd85cbd07bafc3c83a"
)
COMMAND_FRAGMENTS = [
    bytes.fromhex(h)
    for h in (
        "8000510103004d00000001010000000033010011",
        "012233445566778899aabbccddeeff6955b90069",
        "0255d52003a1a2a3a4a5a6a7a8025ea100000000",
        "0300015ea10000000000027c123a5e147e81dd85",
        "04cbd07bafc3c83a",
    )
]
COMMAND_RESULT = bytes.fromhex(
    "01040021000000010100020000000000026955c710ea98120b7089145c380c82da84463aaa"
)
LOG_FETCH = bytes.fromhex("01050015404142434445464748494a4b4c4d4e4f000000000a")
LOG_ENTRIES = bytes.fromhex(
    "01060071000000020000000102000000016955c71001000101000000000000000000000000"
    "000000004a97e698da93f6d2c6406cea81fecac1000000026955c71003000200d99f2e8918"
    "cea9d3a1a2a3a4a5a6a7a87c8bfb899f29d52ba58a926abe85b5570420620491a8f1b742cb"
    "0986c618a246"
)
ADVERT_PAYLOAD = bytes.fromhex("0100000001020000000001000000028065705f03b4")
ADVERTISING_DATA = bytes.fromhex("02010618ffffff0100000001020000000001000000028065705f03b4")

TICKET = sf.TicketHeader(
    ticket_id=bytes.fromhex("00112233445566778899aabbccddeeff"),
    not_before=1767225600,
    not_after=1767232800,
    ops=frozenset({sf.Operation.UNSEAL, sf.Operation.SEAL}),
    operator=bytes.fromhex("a1a2a3a4a5a6a7a8"),
    lock_ids=(LOCK_ID, OTHER_LOCK),
)
CTX = crypto.SessionContext(LOCK_ID, LOCK_NONCE, GW_NONCE)


def test_key_derivation_matches_vectors() -> None:
    keys = crypto.derive_lock_keys(K_LOCK, LOCK_ID)
    assert crypto.derive_ticket_key(K_LOCK, HEADER) == K_TL
    assert (keys.log, keys.advert, keys.audit) == (K_LOG, K_ADV, K_AUDIT)
    assert crypto.ticket_tag(HEADER) == hashlib.sha256(HEADER).digest()[:8]


def test_ticket_header_matches_vector_and_round_trips() -> None:
    assert sf.encode_ticket_header(TICKET) == HEADER
    assert sf.decode_ticket_header(HEADER) == TICKET


def test_challenge_vectors_decode() -> None:
    assert sf.decode_message(CHALLENGE_REQUEST) == sf.ChallengeRequest(GW_NONCE)
    assert sf.decode_message(CHALLENGE) == sf.Challenge(LOCK_ID, LOCK_NONCE, 1, 1767229200)


def test_command_vector_is_what_the_gateway_builds() -> None:
    credential = exchange.TicketCredential(LOCK_ID, HEADER, K_TL)
    command = exchange.build_command(credential, CTX, 1, sf.Operation.UNSEAL)
    assert sf.encode(command) == COMMAND
    crypto.verify_command(K_TL, CTX, command)


def test_command_vector_fragments_at_minimum_mtu() -> None:
    assert frag.fragment(COMMAND, 23) == COMMAND_FRAGMENTS
    reassembler = frag.Reassembler()
    results = [reassembler.feed(part, 0.0) for part in COMMAND_FRAGMENTS]
    assert results == [None, None, None, None, COMMAND]


def test_answer_vector_verifies_and_any_flip_breaks_it() -> None:
    command = sf.decode_message(COMMAND)
    result = sf.decode_message(COMMAND_RESULT)
    assert isinstance(command, sf.Command) and isinstance(result, sf.CommandResult)
    assert (result.result, result.state, result.log_index) == (
        sf.ResultCode.OK,
        sf.LockState.UNSEALED,
        2,
    )
    crypto.verify_answer(K_TL, CTX, command.mac, result)
    for position in range(sf.HEADER_LEN, len(COMMAND_RESULT)):
        forged = bytearray(COMMAND_RESULT)
        forged[position] ^= 0x01
        with pytest.raises((AuthError, ProtocolError)):
            decoded = sf.decode_message(bytes(forged))
            assert isinstance(decoded, sf.CommandResult)
            crypto.verify_answer(K_TL, CTX, command.mac, decoded)


def test_command_mac_is_not_an_answer_mac() -> None:
    command = sf.decode_message(COMMAND)
    assert isinstance(command, sf.Command)
    reflected = sf.CommandResult(1, sf.Operation.UNSEAL, sf.ResultCode.OK, sf.LockState.SEALED,
                                 sf.WireLoop.INTACT, 0, 1, 0, command.mac)  # fmt: skip
    with pytest.raises(AuthError) as info:
        crypto.verify_answer(K_TL, CTX, command.mac, reflected)
    assert info.value.code == "bad_answer_mac"


def test_log_vectors_verify_under_k_log_and_k_audit() -> None:
    request = sf.decode_message(LOG_FETCH)
    answer = sf.decode_message(LOG_ENTRIES)
    assert request == sf.LogFetch(LOG_NONCE, 0, 10)
    assert isinstance(request, sf.LogFetch) and isinstance(answer, sf.LogEntries)
    batch = exchange.verify_log_entries(K_LOG, LOCK_ID, request, answer)
    assert [(e.index, e.event) for e in batch.entries] == [
        (1, sf.LogEvent.BOOT),
        (2, sf.LogEvent.UNSEALED),
    ]
    assert batch.entries[1].ticket_tag == crypto.ticket_tag(HEADER)
    for entry in batch.entries:
        crypto.verify_audit_tag(K_AUDIT, LOCK_ID, entry)
    assert not batch.more and batch.lost_before is None


def test_log_answer_to_another_nonce_is_rejected() -> None:
    answer = sf.decode_message(LOG_ENTRIES)
    assert isinstance(answer, sf.LogEntries)
    stale_request = sf.LogFetch(bytes(16), 0, 10)
    with pytest.raises(AuthError) as info:
        exchange.verify_log_entries(K_LOG, LOCK_ID, stale_request, answer)
    assert info.value.code == "bad_log_mac"


def test_advert_vector_verifies() -> None:
    assert adv.manufacturer_payload(ADVERTISING_DATA) == ADVERT_PAYLOAD
    assert len(ADVERTISING_DATA) <= adv.LEGACY_ADV_MAX
    advert = adv.decode_advert(ADVERT_PAYLOAD)
    assert adv.check_advert(advert, LOCK_ID, K_ADV, None) is True
    assert (advert.short_id, advert.state, advert.counter, advert.log_head) == (
        1,
        sf.LockState.UNSEALED,
        1,
        2,
    )
    assert adv.encode_advert(advert) == ADVERT_PAYLOAD


def test_advert_with_wrong_key_is_rejected() -> None:
    advert = adv.decode_advert(ADVERT_PAYLOAD)
    with pytest.raises(AuthError) as info:
        adv.check_advert(advert, LOCK_ID, bytes(32), None)
    assert info.value.code == "bad_advert_mac"


# -- round trips and streams -------------------------------------------------------------------

nonces = st.binary(min_size=16, max_size=16)
tags = st.binary(min_size=8, max_size=8)
macs = st.binary(min_size=16, max_size=16)
u32 = st.integers(0, 2**32 - 1)
u8 = st.integers(0, 255)
log_entries = st.builds(
    sf.LogEntry,
    u32,
    u32,
    u8.map(sf.LogEvent),
    u8.map(sf.ResultCode),
    u8.map(sf.LockState),
    u8.map(sf.WireLoop),
    tags,
    tags,
    tags,
    tags,
)
frames: st.SearchStrategy[sf.Frame] = st.one_of(
    st.builds(sf.ChallengeRequest, nonces),
    st.builds(sf.Challenge, tags, nonces, u32, u32),
    st.builds(sf.Command, u32, u8.map(sf.Operation), u32, st.binary(max_size=255), macs),
    st.builds(
        sf.CommandResult,
        u32,
        u8.map(sf.Operation),
        u8.map(sf.ResultCode),
        u8.map(sf.LockState),
        u8.map(sf.WireLoop),
        u8,
        u32,
        u32,
        macs,
    ),
    st.builds(sf.LogFetch, nonces, u32, u8),
    st.builds(sf.LogEntries, u32, u32, st.lists(log_entries, max_size=10).map(tuple), macs),
    st.builds(sf.ErrorFrame, u8.map(sf.ErrorCode)),
    st.builds(sf.UnknownFrame, st.integers(0x08, 0x7E), st.binary(max_size=64)),
)


@given(frames)
def test_every_frame_round_trips(frame: sf.Frame) -> None:
    data = sf.encode(frame)
    assert sf.decode(data) == (len(data), frame)
    assert sf.decode(data[:-1]) == (0, None)


@given(st.lists(frames, min_size=1, max_size=5), st.integers(1, 64))
def test_stream_of_frames_in_any_chunking(batch: list[sf.Frame], chunk: int) -> None:
    stream = b"".join(sf.encode(f) for f in batch)
    assert _drain(stream, chunk) == batch


def test_frames_fed_whole_byte_by_byte_and_five_at_once() -> None:
    vectors = [CHALLENGE_REQUEST, CHALLENGE, COMMAND, COMMAND_RESULT, LOG_FETCH, LOG_ENTRIES]
    expected = [sf.decode_message(v) for v in vectors]
    assert [sf.decode(v)[1] for v in vectors] == expected
    assert _drain(b"".join(vectors), 1) == expected
    assert _drain(b"".join(vectors[:5]), len(b"".join(vectors[:5]))) == expected[:5]


def _drain(stream: bytes, chunk: int) -> list[sf.Frame]:
    buffer, out = b"", []
    for start in range(0, len(stream), chunk):
        buffer += stream[start : start + chunk]
        while True:
            used, frame = sf.decode(buffer)
            if frame is None:
                break
            out.append(frame)
            buffer = buffer[used:]
    assert buffer == b""
    return out


def test_unknown_wire_values_do_not_crash() -> None:
    result = bytearray(COMMAND_RESULT)
    result[9] = 0xEE  # result code
    result[10] = 0x42  # state
    decoded = sf.decode_message(bytes(result))
    assert isinstance(decoded, sf.CommandResult)
    assert decoded.result == 0xEE and not decoded.result.known
    assert decoded.state.name == "UNKNOWN_66"
    assert sf.decode(bytes([1, 0x50, 0, 2, 9, 9]) + CHALLENGE) == (
        6,
        sf.UnknownFrame(0x50, b"\x09\x09"),
    )


# -- hostile frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (bytes([1, 3, 0xFF, 0xFF]), "exceeds"),
        (bytes([1, 3, 0x01, 0xFD]), "exceeds"),
        (bytes([2, 1, 0, 16]) + GW_NONCE, "version"),
        (bytes([1, 1, 0, 15]) + GW_NONCE[:15], "must be 16"),
        (bytes([1, 2, 0, 33]) + CHALLENGE[4:] + b"\x00", "must be 32"),
        (bytes([1, 3, 0, 20]) + bytes(20), "truncated"),
        (bytes([1, 3, 0, 30]) + bytes([0, 0, 0, 1, 1, 0, 0, 0, 0, 200]) + bytes(20), "header"),
        (bytes([1, 6, 0, 25]) + bytes(8) + b"\x01" + bytes(16), "entry count"),
        (bytes([1, 6, 0, 25]) + bytes(8) + b"\x0b" + bytes(16), "entry count"),
        (bytes([1, 0x7F, 0, 0]), "ERROR"),
    ],
)
def test_hostile_frames_raise_protocol_error(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        sf.decode(data)


def test_truncated_frames_wait_for_more() -> None:
    for end in range(len(COMMAND)):
        assert sf.decode(COMMAND[:end]) == (0, None)


def test_oversized_frames_are_refused_by_the_encoder() -> None:
    too_many = tuple(sf.decode_log_entry(bytes(44)) for _ in range(11))
    with pytest.raises(ProtocolError):
        sf.encode(sf.LogEntries(0, 0, too_many, bytes(16)))
    with pytest.raises(ProtocolError):
        sf.encode(sf.Command(1, sf.Operation.SEAL, 0, bytes(256), bytes(16)))
    with pytest.raises(ProtocolError):
        sf.encode(sf.Challenge(LOCK_ID, LOCK_NONCE, 2**32, 0))
    with pytest.raises(ProtocolError):
        sf.encode(sf.UnknownFrame(sf.MessageType.COMMAND, b""))


@pytest.mark.parametrize(
    "header",
    [
        HEADER[:-1],
        HEADER + b"\x00",
        b"\x02" + HEADER[1:],
        HEADER[:34] + b"\x00",
        HEADER[:17] + HEADER[21:25] + HEADER[17:21] + HEADER[25:],  # window reversed
    ],
)
def test_malformed_ticket_headers_are_rejected(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        sf.decode_ticket_header(header)


def test_bad_command_mac_raises_auth_error_with_code() -> None:
    command = sf.decode_message(COMMAND)
    assert isinstance(command, sf.Command)
    other = crypto.SessionContext(LOCK_ID, bytes(16), GW_NONCE)
    with pytest.raises(AuthError) as info:
        crypto.verify_command(K_TL, other, command)
    assert info.value.code == "bad_mac"


# -- fragments ---------------------------------------------------------------------------------


@given(st.binary(min_size=4, max_size=512), st.integers(23, 517))
def test_fragments_round_trip_at_any_mtu(message: bytes, mtu: int) -> None:
    parts = frag.fragment(message, mtu)
    assert all(len(p) <= mtu - 3 for p in parts)
    reassembler = frag.Reassembler()
    outputs = [reassembler.feed(p, 0.0) for p in parts]
    assert outputs[:-1] == [None] * (len(parts) - 1) and outputs[-1] == message
    assert not reassembler.pending


@pytest.mark.parametrize(
    "fragments",
    [
        [COMMAND_FRAGMENTS[1]],  # continuation without first
        [COMMAND_FRAGMENTS[0], COMMAND_FRAGMENTS[2]],  # skipped seq
        [COMMAND_FRAGMENTS[0], COMMAND_FRAGMENTS[1], COMMAND_FRAGMENTS[1]],  # duplicate
        [b"\x80\x00\x03\x01\x01\x00"],  # total below a message header
        [b"\x80\x02\x01\x01\x01"],  # total above 512
        [b"\x80\x00\x04\x01\x01\x00\x00\x00"],  # more than the total
        [b"\x81\x00\x04\x01"],  # first fragment with seq 1
        [b"\x40\x00"],  # reserved bit
        [b""],
        [b"\x01"],  # empty continuation
    ],
)
def test_bad_fragments_raise_and_reset(fragments: list[bytes]) -> None:
    reassembler = frag.Reassembler()
    with pytest.raises(ProtocolError):
        for part in fragments:
            reassembler.feed(part, 0.0)
    assert not reassembler.pending
    assert [reassembler.feed(p, 1.0) for p in COMMAND_FRAGMENTS][-1] == COMMAND


def test_partial_message_times_out_and_a_new_first_replaces_it() -> None:
    reassembler = frag.Reassembler(timeout_s=2.0)
    reassembler.feed(COMMAND_FRAGMENTS[0], 0.0)
    with pytest.raises(ProtocolError):
        reassembler.feed(COMMAND_FRAGMENTS[1], 2.5)
    reassembler.feed(COMMAND_FRAGMENTS[0], 3.0)
    reassembler.feed(COMMAND_FRAGMENTS[1], 3.1)
    first, second = frag.fragment(CHALLENGE_REQUEST)
    assert reassembler.feed(first, 3.2) is None
    assert reassembler.feed(second, 3.3) == CHALLENGE_REQUEST


def test_fragment_refuses_bad_mtu_and_sizes() -> None:
    with pytest.raises(ProtocolError):
        frag.fragment(COMMAND, 22)
    with pytest.raises(ProtocolError):
        frag.fragment(bytes(513), 247)


# -- fuzzing: decoders raise only our errors and always progress --------------------------------

FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_decode(data: bytes) -> None:
    try:
        used, frame = sf.decode(data)
    except ProtocolError:
        return
    if frame is None:
        assert used == 0
        assert len(data) < 4 or len(data) < 4 + int.from_bytes(data[2:4], "big")
    else:
        assert 4 <= used <= len(data)
        assert sf.encode(frame) == data[:used]


@FUZZ
@given(st.sampled_from([COMMAND, COMMAND_RESULT, LOG_ENTRIES, CHALLENGE]), st.data())
def test_fuzz_mutated_vectors_never_verify(vector: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(4, len(vector) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = bytearray(vector)
    mutated[position] ^= flip
    try:
        frame = sf.decode_message(bytes(mutated))
        _verify_any(frame)
    except (ProtocolError, AuthError):
        return
    assert isinstance(frame, sf.Challenge)  # challenges are authenticated later, by the answer


def _verify_any(frame: sf.Frame) -> None:
    original = sf.decode_message(COMMAND)
    assert isinstance(original, sf.Command)
    if isinstance(frame, sf.Command):
        crypto.verify_command(K_TL, CTX, frame)
    elif isinstance(frame, sf.CommandResult):
        crypto.verify_answer(K_TL, CTX, original.mac, frame)
    elif isinstance(frame, sf.LogEntries):
        request = sf.decode_message(LOG_FETCH)
        assert isinstance(request, sf.LogFetch)
        exchange.verify_log_entries(K_LOG, LOCK_ID, request, frame)


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_fuzz_reassembler(parts: list[bytes]) -> None:
    reassembler = frag.Reassembler()
    for index, part in enumerate(parts):
        try:
            message = reassembler.feed(part, float(index))
        except ProtocolError:
            assert not reassembler.pending
            continue
        assert message is None or sf.HEADER_LEN <= len(message) <= sf.MAX_MESSAGE_LEN


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_small_decoders(data: bytes) -> None:
    decoders = (
        sf.decode_ticket_header,
        sf.decode_log_entry,
        adv.decode_advert,
        adv.manufacturer_payload,
        frag.decode_fragment,
    )
    for decoder in decoders:
        try:
            decoder(data)
        except ProtocolError:
            continue


@FUZZ
@given(st.binary(min_size=21, max_size=21))
def test_fuzz_advert_tracker(payload: bytes) -> None:
    tracker = adv.AdvertTracker({LOCK_ID: K_ADV})
    try:
        observation = tracker.observe(payload)
    except (ProtocolError, AuthError):
        assert tracker.last(LOCK_ID) is None
        return
    assert observation is None  # a random payload never carries a valid MAC for our lock


def test_a_seeded_tracker_refuses_adverts_older_than_provisioning() -> None:
    # docs/protocol.md, section 9: with no accepted advert yet, the seed is the high-water mark.
    k_adv = crypto.derive_lock_keys(K_LOCK, LOCK_ID).advert
    old = adv.sign_advert(
        adv.Advert(adv.short_id(LOCK_ID), sf.LockState.SEALED, 0, 5, 2), LOCK_ID, k_adv
    )
    new = adv.sign_advert(
        adv.Advert(adv.short_id(LOCK_ID), sf.LockState.SEALED, 0, 9, 3), LOCK_ID, k_adv
    )
    tracker = adv.AdvertTracker({LOCK_ID: k_adv})
    tracker.seed(LOCK_ID, counter=5, log_head=3)
    with pytest.raises(AuthError) as caught:
        tracker.observe(adv.encode_advert(old))
    assert caught.value.code == "advert_replay"
    seen = tracker.observe(adv.encode_advert(new))
    assert seen is not None and seen.fresh
