"""DL/T 645-2007 codec: hand-computed vectors, stream reassembly, hostile input, properties."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import DeviceRejectedError, FrameError, MeterRefusedError, ProtocolError
from gateway.protocol import dlt645
from gateway.protocol.dlt645 import (
    DATA_ITEMS,
    DI_BY_NAME,
    METER_TZ,
    CoverRecord,
    ErrorFlags,
    Frame,
    Function,
    Kind,
    OutageRecord,
    StatusWord7,
    decode,
    decode_value,
    encode,
    encode_value,
)

# Read forward active total (DI 00 01 00 00) from meter 000000000001, worked by hand:
# DI on the wire little-endian 00 00 01 00, +0x33 each -> 33 33 34 33.
# CS = 68+01+68+11+04+33+33+34+33 = 0x1B3 -> B3.
READ_FORWARD_TOTAL = bytes.fromhex("FEFEFEFE 68 010000000000 68 11 04 33333433 B3 16")
# Reply 1234.56 kWh: BCD 00 12 34 56 little-endian 56 34 12 00, +0x33 -> 89 67 45 33.
# CS = 68+01+68+91+08 + 33+33+34+33 + 89+67+45+33 = 0x39F -> 9F.
REPLY_FORWARD_TOTAL = bytes.fromhex("68 010000000000 68 91 08 33333433 89674533 9F 16")
# Error reply, ERR = 02 (no data requested): 02+33 = 35; CS = 68+01+68+D1+01+35 = 0x1D8 -> D8.
ERROR_NO_DATA = bytes.fromhex("68 010000000000 68 D1 01 35 D8 16")
# Read address to the wildcard: CS = 68+68 + 6*AA + 13 = 0x4DF -> DF.
READ_ADDRESS = bytes.fromhex("FEFEFEFE 68 AAAAAAAAAAAA 68 13 00 DF 16")
# Time sync 2026-01-02 03:04:05: ss mm hh DD MM YY = 05 04 03 02 01 26, +0x33 each.
# CS = 68+68 + 6*99 + 08 + 06 + 38+37+36+35+34+59 = 0x5DB -> DB.
TIME_SYNC = bytes.fromhex("FEFEFEFE 68 999999999999 68 08 06 383736353459 DB 16")

METER = "000000000001"


def _decode_all(stream: bytes) -> list[Frame]:
    """Decode a whole stream the way a session would, dropping bad frames."""
    frames: list[Frame] = []
    buf = bytearray(stream)
    while buf:
        try:
            used, frame = decode(buf)
        except FrameError as exc:
            del buf[: exc.consumed]
            continue
        if used == 0:
            break
        del buf[:used]
        if frame is not None:
            frames.append(frame)
    return frames


def _feed_bytewise(stream: bytes) -> list[Frame]:
    """Feed one byte at a time, decoding after each."""
    frames: list[Frame] = []
    buf = bytearray()
    for byte in stream:
        buf.append(byte)
        frames.extend(_decode_all_inplace(buf))
    return frames


def _decode_all_inplace(buf: bytearray) -> list[Frame]:
    frames: list[Frame] = []
    while True:
        used, frame = decode(buf)
        if used == 0:
            return frames
        del buf[:used]
        if frame is not None:
            frames.append(frame)


# --- known answers ----------------------------------------------------------------------


def test_read_request_matches_hand_vector() -> None:
    frame = dlt645.read_request(METER, 0x00010000)
    assert encode(frame) == READ_FORWARD_TOTAL
    assert frame.control == 0x11


def test_read_reply_decodes_hand_vector() -> None:
    used, frame = decode(REPLY_FORWARD_TOTAL)
    assert used == len(REPLY_FORWARD_TOTAL)
    assert frame is not None
    assert (frame.reply, frame.error, frame.more) == (True, False, False)
    reading = dlt645.parse_read_reply(frame)
    assert reading.di == 0x00010000
    assert reading.value == Decimal("1234.56")
    assert reading.item is not None
    assert reading.item.unit == "kWh"


def test_read_reply_encodes_hand_vector() -> None:
    frame = dlt645.read_reply(METER, 0x00010000, Decimal("1234.56"))
    assert encode(frame) == REPLY_FORWARD_TOTAL


def test_read_address_request_matches_hand_vector() -> None:
    assert encode(dlt645.read_address_request()) == READ_ADDRESS


def test_time_sync_matches_hand_vector() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=METER_TZ)
    assert encode(dlt645.time_sync_frame(when)) == TIME_SYNC
    _, frame = decode(TIME_SYNC)
    assert frame is not None
    assert dlt645.parse_time_sync(frame) == when


def test_time_sync_field_order_is_seconds_first() -> None:
    """DL/T 645-2007 08H: data YYMMDDhhmmss sent low byte first (seconds first on the wire)."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=METER_TZ)
    assert dlt645.time_sync_frame(when).data == bytes.fromhex("050403020126")
    year_first = dlt645.Frame(
        dlt645.BROADCAST, Function.BROADCAST_TIME, bytes.fromhex("260102030405")
    )
    assert dlt645.parse_time_sync(year_first) == datetime(2005, 4, 3, 2, 1, 26, tzinfo=METER_TZ)


DLT645_PACKAGE_TIME_SYNC = bytes.fromhex("FEFEFEFE 689999999999 9968 0806 593435363738 DB16")
"""What PyPI dlt645 3.2.0's broadcast_time_sync sent for 2026-01-02 03:04:05: year first."""


def test_the_dlt645_packages_year_first_frame_reads_as_another_time() -> None:
    """docs/dlt645.md: the package's frame, read in the standard's order, is years off."""
    used, frame = decode(DLT645_PACKAGE_TIME_SYNC)
    assert used == len(DLT645_PACKAGE_TIME_SYNC) and frame is not None
    assert frame.function == Function.BROADCAST_TIME and frame.address == dlt645.BROADCAST
    assert dlt645.parse_time_sync(frame) == datetime(2005, 4, 3, 2, 1, 26, tzinfo=METER_TZ)
    ours = encode(dlt645.time_sync_frame(datetime(2026, 1, 2, 3, 4, 5, tzinfo=METER_TZ)))
    assert sorted(ours) == sorted(DLT645_PACKAGE_TIME_SYNC) != ours  # same bytes, other order


def test_time_sync_converts_utc_to_meter_time() -> None:
    utc = datetime.fromisoformat("2026-01-01T19:04:05+00:00")
    assert encode(dlt645.time_sync_frame(utc)) == TIME_SYNC


def test_error_reply_raises_typed_error_with_address_and_flags() -> None:
    _, frame = decode(ERROR_NO_DATA)
    assert frame is not None
    assert frame.control == 0xD1
    with pytest.raises(MeterRefusedError) as info:
        dlt645.parse_read_reply(frame)
    assert info.value.address == METER
    assert info.value.flags == ErrorFlags.NO_DATA
    assert isinstance(info.value, DeviceRejectedError)
    assert info.value.code == 0x02


def test_error_reply_encodes_hand_vector() -> None:
    frame = dlt645.error_reply(METER, Function.READ_DATA, ErrorFlags.NO_DATA)
    assert encode(frame) == ERROR_NO_DATA


def test_error_flags_keep_unknown_bits() -> None:
    flags = ErrorFlags(0x84)
    assert ErrorFlags.UNAUTHORIZED in flags
    assert int(flags) == 0x84


def test_address_reply_round_trip() -> None:
    wire = encode(dlt645.address_reply("123456789012"))
    assert wire[1:7] == bytes.fromhex("129078563412")
    _, frame = decode(wire)
    assert frame is not None
    assert frame.control == 0x93
    assert dlt645.parse_address_reply(frame) == "123456789012"


def test_follow_up_request_and_reply() -> None:
    request = dlt645.read_follow_up_request(METER, 0x00010000, 2)
    assert request.control == 0x12
    assert request.data == bytes.fromhex("0000010002")
    reply = Frame(METER, Function.READ_FOLLOW_UP, bytes.fromhex("00000100AABB02"), reply=True)
    reading = dlt645.parse_read_reply(reply)
    assert (reading.di, reading.value) == (0x00010000, b"\xaa\xbb")
    assert (reading.seq, reading.more) == (2, False)


def test_reply_with_more_flag_keeps_raw_part() -> None:
    frame = dlt645.read_reply(METER, 0x00010000, b"\x01\x02", more=True)
    assert frame.control == 0xB1
    _, decoded = decode(encode(frame))
    assert decoded is not None
    reading = dlt645.parse_read_reply(decoded)
    assert reading.more
    assert reading.value == b"\x01\x02"


def test_unknown_function_code_is_kept() -> None:
    frame = Frame(METER, Function(0x03), b"\x01")
    _, decoded = decode(encode(frame))
    assert decoded is not None
    assert decoded.function == 0x03
    assert decoded.function.name == "UNKNOWN_0x03"


def test_parse_read_reply_rejects_requests() -> None:
    with pytest.raises(ProtocolError):
        dlt645.parse_read_reply(dlt645.read_request(METER, 0x00010000))


def test_parse_read_request_returns_di() -> None:
    assert dlt645.parse_read_request(dlt645.read_request(METER, 0x02010100)) == 0x02010100


# --- data values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("di", "wire", "value"),
    [
        (0x02010100, "0122", Decimal("220.1")),
        (0x02020100, "001580", Decimal("-1.500")),
        (0x02020200, "345612", Decimal("125.634")),
        (0x02030000, "502301", Decimal("1.2350")),
        (0x02030100, "000080", Decimal("0.0000")),
        (0x02060000, "5009", Decimal("0.950")),
        (0x00000000, "99999999", Decimal("-199999.99")),
        (0x00010400, "01000000", Decimal("0.01")),
        (0x03300D00, "120000", 12),
        (0x03110000, "000001", 10000),
        (0x04000501, "3412", 0x1234),
        (0x04000101, "05020126", date(2026, 1, 2)),
        (0x04000102, "050403", time(3, 4, 5)),
    ],
)
def test_value_formats(di: int, wire: str, value: object) -> None:
    raw = bytes.fromhex(wire)
    assert decode_value(di, raw) == value
    if not (isinstance(value, Decimal) and value.is_zero()):
        assert encode_value(di, value) == raw  # type: ignore[arg-type]


def test_block_decodes_total_and_tariffs() -> None:
    values = tuple(Decimal(n) for n in ("10.00", "1.00", "2.00", "3.00", "4.00"))
    raw = encode_value(0x0001FF00, values)
    assert len(raw) == 20
    assert decode_value(0x0001FF00, raw) == values


def test_status_word_7_bits() -> None:
    word = decode_value(0x04000507, (0x0600).to_bytes(2, "little"))
    assert isinstance(word, int)
    flags = StatusWord7(word)
    assert StatusWord7.METER_COVER_OPEN in flags
    assert StatusWord7.TERMINAL_COVER_OPEN in flags
    assert StatusWord7.POWER_DOWN not in flags


def test_cover_record_round_trip() -> None:
    start = datetime(2026, 3, 4, 10, 11, 12, tzinfo=METER_TZ)
    before = (Decimal("100.25"), Decimal("0.00"), *(Decimal("0.00"),) * 4)
    record = CoverRecord(start, None, before, (Decimal("0.00"),) * 6)
    raw = encode_value(0x03300D01, record)
    assert len(raw) == 60
    assert raw[:6] == bytes.fromhex("121110040326")
    assert raw[6:12] == bytes(6)
    assert decode_value(0x03300D01, raw) == record


def test_outage_record_round_trip() -> None:
    start = datetime(2026, 3, 4, 10, 0, 0, tzinfo=METER_TZ)
    end = datetime(2026, 3, 4, 11, 30, 0, tzinfo=METER_TZ)
    raw = encode_value(0x03110001, OutageRecord(start, end))
    assert decode_value(0x03110001, raw) == OutageRecord(start, end)


def test_unknown_di_decodes_to_raw_bytes() -> None:
    assert decode_value(0x12345678, b"\x01\x02\x03") == b"\x01\x02\x03"
    reply = dlt645.read_reply(METER, 0x12345678, b"\xfe")
    assert dlt645.parse_read_reply(reply).value == b"\xfe"


def test_wrong_length_for_known_di_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_value(0x00010000, b"\x00\x00\x00")


def test_non_bcd_value_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_value(0x02010100, b"\xff\xff")


def test_bad_date_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_value(0x04000101, bytes.fromhex("00991326"))


@pytest.mark.parametrize(
    ("di", "value", "error"),
    [
        (0x00010000, Decimal("1000000.00"), ValueError),
        (0x00010000, Decimal("-1.00"), ValueError),
        (0x02010100, Decimal("220.15"), ValueError),
        (0x02010100, "220.1", TypeError),
        (0x12345678, Decimal(1), TypeError),
        (0x0001FF00, Decimal(1), TypeError),
    ],
)
def test_encode_value_rejects_what_does_not_fit(di: int, value: object, error: type) -> None:
    with pytest.raises(error):
        encode_value(di, value)  # type: ignore[arg-type]


def test_table_covers_the_required_identifiers() -> None:
    required = [
        0x00000000, 0x00010000, 0x00020000, 0x00010100, 0x00010400, 0x0001FF00,
        0x02010100, 0x02010300, 0x02020100, 0x02030000, 0x02030300, 0x02060000,
        0x04000501, 0x04000507, 0x03300D00, 0x03300D01, 0x03300E00, 0x03300E01,
        0x03110000, 0x04000101, 0x04000102,
    ]  # fmt: skip
    assert all(di in DATA_ITEMS for di in required)
    assert DI_BY_NAME["forward_active_energy_total"] == 0x00010000
    assert DATA_ITEMS[0x02020100].signed
    assert DATA_ITEMS[0x02010100].unit == "V"


def test_frame_rejects_bad_address_and_oversize_data() -> None:
    with pytest.raises(ValueError, match="address"):
        Frame("12345", Function.READ_DATA)
    with pytest.raises(ValueError, match="limit"):
        Frame(METER, Function.READ_DATA, bytes(201))


# --- stream reassembly --------------------------------------------------------------------


def _five_frames() -> bytes:
    frames = [
        READ_FORWARD_TOTAL,
        REPLY_FORWARD_TOTAL,
        ERROR_NO_DATA,
        READ_ADDRESS,
        TIME_SYNC,
    ]
    return b"".join(frames)


def test_whole_frame_after_preamble_is_one_call() -> None:
    used, frame = decode(READ_FORWARD_TOTAL)
    assert used == len(READ_FORWARD_TOTAL)
    assert frame == dlt645.read_request(METER, 0x00010000)


def test_byte_by_byte_yields_the_same_frames() -> None:
    assert _feed_bytewise(_five_frames()) == _decode_all(_five_frames())
    assert len(_feed_bytewise(_five_frames())) == 5


def test_five_frames_in_one_buffer() -> None:
    frames = _decode_all(_five_frames())
    assert [f.control for f in frames] == [0x11, 0x91, 0xD1, 0x13, 0x08]


def test_partial_frame_asks_for_more() -> None:
    for cut in range(1, len(REPLY_FORWARD_TOTAL)):
        assert decode(REPLY_FORWARD_TOTAL[:cut]) == (0, None)


def test_preamble_only_is_skipped() -> None:
    assert decode(b"\xfe\xfe\xfe") == (3, None)
    assert decode(b"") == (0, None)


def test_garbage_before_frame_is_skipped() -> None:
    stream = b"\x00\x12\x68\x01\x02\xfe\xfe" + REPLY_FORWARD_TOTAL
    used, frame = decode(stream)
    assert used == len(stream)
    assert frame is not None
    assert dlt645.parse_read_reply(frame).value == Decimal("1234.56")


def test_garbage_before_partial_frame_is_consumed() -> None:
    used, frame = decode(b"\x01\x02" + REPLY_FORWARD_TOTAL[:5])
    assert (used, frame) == (2, None)


# --- hostile frames -----------------------------------------------------------------------


def test_bad_checksum_drops_the_frame() -> None:
    bad = bytearray(REPLY_FORWARD_TOTAL)
    bad[-2] ^= 0x01
    with pytest.raises(FrameError, match="checksum") as info:
        decode(b"\xfe\xfe" + bad)
    assert info.value.consumed == 2 + len(bad)
    assert _decode_all(bytes(bad) + ERROR_NO_DATA)[0].error


def test_wrong_end_byte_drops_only_the_start() -> None:
    bad = bytearray(REPLY_FORWARD_TOTAL)
    bad[-1] = 0x17
    with pytest.raises(FrameError, match="end byte") as info:
        decode(bad)
    assert info.value.consumed == 1
    assert isinstance(info.value, ProtocolError)


def test_overlong_length_is_rejected_before_waiting() -> None:
    header = bytes.fromhex("68 010000000000 68 91 C9")
    with pytest.raises(FrameError, match="exceeds") as info:
        decode(header)
    assert info.value.consumed == 1


def test_length_past_buffer_waits_for_more() -> None:
    header = bytes.fromhex("68 010000000000 68 91 C8 33 33")
    assert decode(header) == (0, None)


def test_false_start_is_skipped() -> None:
    stream = bytes.fromhex("68 01 02 03 04 05 06 07 08") + ERROR_NO_DATA
    frames = _decode_all(stream)
    assert len(frames) == 1
    assert frames[0].error


def test_good_frame_after_hostile_ones_survives() -> None:
    corrupt = bytearray(REPLY_FORWARD_TOTAL)
    corrupt[12] ^= 0x40
    stream = bytes(corrupt) + bytes.fromhex("68 010000000000 68 91 FF") + REPLY_FORWARD_TOTAL
    frames = _decode_all(stream)
    assert frames[-1] == decode(REPLY_FORWARD_TOTAL)[1]


# --- properties ---------------------------------------------------------------------------

addresses = st.text(alphabet="0123456789", min_size=12, max_size=12)
dis = st.integers(min_value=0, max_value=0xFFFFFFFF)


@settings(max_examples=150, deadline=None)
@given(
    address=addresses,
    di=dis,
    data=st.binary(max_size=dlt645.MAX_DATA_LEN - 4),
    reply=st.booleans(),
    error=st.booleans(),
    more=st.booleans(),
)
def test_frame_round_trip(
    address: str, di: int, data: bytes, reply: bool, error: bool, more: bool
) -> None:
    payload = di.to_bytes(4, "little") + data
    frame = Frame(address, Function.READ_DATA, payload, reply=reply, error=error, more=more)
    wire = encode(frame)
    assert decode(wire) == (len(wire), frame)
    assert _feed_bytewise(wire) == [frame]


@settings(max_examples=150, deadline=None)
@given(
    address=addresses,
    di=st.sampled_from(sorted(di for di, item in DATA_ITEMS.items() if item.kind is Kind.NUMBER)),
    digits=st.integers(min_value=0, max_value=10**6),
)
def test_number_round_trip(address: str, di: int, digits: int) -> None:
    item = DATA_ITEMS[di]
    limit = 8 * 10 ** (2 * item.length - 1) if item.signed else 10 ** (2 * item.length)
    magnitude = digits % limit
    value = Decimal(magnitude).scaleb(-item.decimals) if item.decimals else magnitude
    values = (value, value) if item.repeat else value
    reading = dlt645.parse_read_reply(dlt645.read_reply(address, di, values))
    assert reading.value == values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_only_raises_protocol_error_and_progresses(blob: bytes) -> None:
    buf = bytearray(blob)
    for _ in range(len(blob) + 1):
        try:
            used, frame = decode(buf)
        except ProtocolError as exc:
            assert isinstance(exc, FrameError)
            assert 0 < exc.consumed <= len(buf)
            del buf[: exc.consumed]
            continue
        assert 0 <= used <= len(buf)
        assert frame is None or used > 0
        if used == 0:
            break
        del buf[:used]
    else:
        raise AssertionError("decoder did not settle")
    assert buf == b"" or buf[0] == dlt645.START


@settings(max_examples=100, deadline=None)
@given(prefix=st.binary(max_size=40), suffix=st.binary(max_size=40))
def test_valid_frame_survives_garbage_prefix(prefix: bytes, suffix: bytes) -> None:
    clean = prefix.replace(b"\x68", b"\x00")
    frames = _decode_all(clean + REPLY_FORWARD_TOTAL + suffix)
    assert frames[0] == decode(REPLY_FORWARD_TOTAL)[1]
