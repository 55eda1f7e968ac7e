"""The simulated DL/T 645 meters, end to end over real TCP with a small codec-based client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pytest

from firmware_sim.meters.dlt645 import Dlt645TcpServer, MeterBus, SimMeter
from gateway.errors import FrameError, MeterRefusedError
from gateway.protocol import dlt645
from gateway.protocol.clock import ManualClock
from gateway.protocol.dlt645 import METER_TZ, ErrorFlags, Frame, Reading, StatusWord7

ONE = "000000000001"
TWO = "000000000002"
START = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # 08:00 meter time, tariff 2 (peak)


class Client:
    """A bus master written with the codec over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()

    async def send(self, frame: Frame) -> None:
        self.writer.write(dlt645.encode(frame))
        await self.writer.drain()

    async def receive(self) -> Frame:
        while True:
            used, frame = dlt645.decode(self.buffer)
            del self.buffer[:used]
            if frame is not None:
                return frame
            if used == 0:
                chunk = await asyncio.wait_for(self.reader.read(4096), timeout=5)
                assert chunk, "simulator closed the connection"
                self.buffer += chunk

    async def read(self, address: str, di: int) -> Reading:
        await self.send(dlt645.read_request(address, di))
        return dlt645.parse_read_reply(await self.receive())

    async def value(self, address: str, di: int) -> dlt645.Value:
        return (await self.read(address, di)).value


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def meters(clock: ManualClock) -> list[SimMeter]:
    return [SimMeter(ONE, clock), SimMeter(TWO, clock, phases=3, forward_kwh=Decimal("50.00"))]


@pytest.fixture
async def client(meters: list[SimMeter]) -> AsyncIterator[Client]:
    async with Dlt645TcpServer(MeterBus(meters)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        yield Client(reader, writer)
        writer.close()
        await writer.wait_closed()


async def test_energy_advances_with_the_load_curve(client: Client, clock: ManualClock) -> None:
    assert await client.value(ONE, 0x00010000) == Decimal("1000.00")
    clock.advance(3600)  # 08:00-09:00 meter time at 1.2 kW, all in tariff 2
    assert await client.value(ONE, 0x00010000) == Decimal("1001.20")
    assert await client.value(ONE, 0x00010200) == Decimal("1.20")
    assert await client.value(ONE, 0x00000000) == Decimal("1001.20")
    assert await client.value(ONE, 0x00020000) == Decimal("0.00")


async def test_energy_block_holds_total_and_tariffs(client: Client, clock: ManualClock) -> None:
    clock.advance(24 * 3600)
    block = await client.value(ONE, 0x0001FF00)
    assert isinstance(block, tuple)
    assert len(block) == 5
    assert all(isinstance(v, Decimal) for v in block)
    total, *tariffs = block
    assert abs(total - Decimal("1000.00") - sum(tariffs)) <= Decimal("0.05")
    assert all(t > 0 for t in tariffs)


async def test_instantaneous_values(client: Client) -> None:
    assert await client.value(ONE, 0x02010100) == Decimal("230.0")
    assert await client.value(ONE, 0x02030000) == Decimal("1.2000")
    assert await client.value(ONE, 0x02020100) == Decimal("5.492")
    assert await client.value(ONE, 0x02060000) == Decimal("0.950")
    assert await client.value(TWO, 0x02030300) == Decimal("0.4000")


async def test_single_phase_meter_has_no_phase_b(client: Client) -> None:
    with pytest.raises(MeterRefusedError) as info:
        await client.read(ONE, 0x02010200)
    assert info.value.address == ONE
    assert info.value.flags == ErrorFlags.NO_DATA


async def test_unknown_di_gets_an_error_reply(client: Client) -> None:
    await client.send(dlt645.read_request(TWO, 0x12345678))
    reply = await client.receive()
    assert reply.control == 0xD1
    with pytest.raises(MeterRefusedError) as info:
        dlt645.parse_read_reply(reply)
    assert ErrorFlags.NO_DATA in info.value.flags


async def test_cover_open_counts_records_and_flags(
    client: Client, meters: list[SimMeter], clock: ManualClock
) -> None:
    assert await client.value(ONE, 0x03300D00) == 0
    meters[0].open_cover()
    assert await client.value(ONE, 0x03300D00) == 1
    word = await client.value(ONE, 0x04000507)
    assert isinstance(word, int)
    assert StatusWord7.METER_COVER_OPEN in StatusWord7(word)
    record = await client.value(ONE, 0x03300D01)
    assert isinstance(record, dlt645.CoverRecord)
    assert record.start == START.astimezone(METER_TZ)
    assert record.end is None
    assert record.before[0] == Decimal("1000.00")
    clock.advance(600)
    meters[0].close_cover()
    record = await client.value(ONE, 0x03300D01)
    assert isinstance(record, dlt645.CoverRecord)
    assert record.end == datetime(2026, 1, 1, 8, 10, tzinfo=METER_TZ)
    assert record.after[0] == Decimal("1000.20")
    assert await client.value(ONE, 0x04000507) == 0


async def test_terminal_cover_is_separate(client: Client, meters: list[SimMeter]) -> None:
    meters[1].open_cover(terminal=True)
    assert await client.value(TWO, 0x03300E00) == 1
    assert await client.value(TWO, 0x03300D00) == 0
    word = await client.value(TWO, 0x04000507)
    assert word == StatusWord7.TERMINAL_COVER_OPEN
    blocks = await client.value(TWO, 0x040005FF)
    assert blocks == (0, 0, 0, 0, 0, 0, int(StatusWord7.TERMINAL_COVER_OPEN))


async def test_power_down_silences_the_meter_and_is_recorded(
    client: Client, meters: list[SimMeter], clock: ManualClock
) -> None:
    meters[0].power_down()
    clock.advance(1800)
    await client.send(dlt645.read_request(ONE, 0x00010000))
    await client.send(dlt645.read_request(TWO, 0x00010000))
    reply = await client.receive()
    assert reply.address == TWO  # the powered-down meter sent nothing
    meters[0].power_up()
    assert await client.value(ONE, 0x03110000) == 1
    outage = await client.value(ONE, 0x03110001)
    assert outage == dlt645.OutageRecord(
        datetime(2026, 1, 1, 8, 0, tzinfo=METER_TZ), datetime(2026, 1, 1, 8, 30, tzinfo=METER_TZ)
    )
    assert await client.value(ONE, 0x00010000) == Decimal("1000.00")  # no metering while down


async def test_dead_meter_does_not_answer(client: Client, meters: list[SimMeter]) -> None:
    meters[1].dead = True
    await client.send(dlt645.read_request(TWO, 0x00010000))
    await client.send(dlt645.read_request(ONE, 0x00010000))
    assert (await client.receive()).address == ONE


async def test_garbled_reply_fails_its_checksum(client: Client, meters: list[SimMeter]) -> None:
    meters[0].garble = True
    await client.send(dlt645.read_request(ONE, 0x00010000))
    with pytest.raises(FrameError, match="checksum"):
        await client.receive()
    meters[0].garble = False
    client.buffer.clear()
    assert await client.value(ONE, 0x00010000) == Decimal("1000.00")


async def test_time_sync_broadcast_sets_every_clock_without_reply(client: Client) -> None:
    await client.send(dlt645.time_sync_frame(datetime(2026, 5, 6, 7, 8, 9, tzinfo=METER_TZ)))
    assert await client.value(ONE, 0x04000101) == date(2026, 5, 6)
    assert await client.value(TWO, 0x04000102) == time(7, 8, 9)


async def test_wildcard_read_address_collides_with_two_meters(client: Client) -> None:
    await client.send(dlt645.read_address_request())
    await client.send(dlt645.read_request(ONE, 0x02010100))
    with pytest.raises(FrameError) as caught:  # both answered at once: a mix of the two
        await client.receive()
    assert "checksum" in str(caught.value)
    del client.buffer[: caught.value.consumed]
    reply = await client.receive()
    assert reply.address == ONE
    assert dlt645.parse_read_reply(reply).di == 0x02010100


async def test_shortened_address_reaches_only_the_matching_meters(client: Client) -> None:
    await client.send(dlt645.read_request("AAAAAAAAAA02", 0x00010000))
    reply = await client.receive()
    assert reply.address == TWO


async def test_long_value_goes_out_in_follow_up_frames(
    client: Client, meters: list[SimMeter]
) -> None:
    meters[0].open_cover()
    meters[0].chunk = 20
    first = await client.read(ONE, 0x03300D01)
    assert first.more and isinstance(first.value, bytes) and len(first.value) == 20
    parts = [first.value]
    for seq in (1, 2):
        await client.send(dlt645.read_follow_up_request(ONE, 0x03300D01, seq))
        part = dlt645.parse_read_reply(await client.receive())
        assert (part.seq, part.more) == (seq, seq == 1)
        assert isinstance(part.value, bytes)
        parts.append(part.value)
    record = dlt645.decode_value(0x03300D01, b"".join(parts))
    assert record == meters[0].meter_cover.last


async def test_silent_identifier_gets_no_reply_and_raw_values_are_sent_as_set(
    client: Client, meters: list[SimMeter]
) -> None:
    meters[0].silent_on.add(0x03110000)
    meters[0].raw_values[0x04000101] = bytes(4)
    await client.send(dlt645.read_request(ONE, 0x03110000))
    await client.send(dlt645.read_request(ONE, 0x04000101))
    reply = await client.receive()  # the first request got nothing
    assert dlt645.parse_read_reply(reply, raw=True).value == bytes(4)


async def test_wildcard_read_address_with_one_meter(clock: ManualClock) -> None:
    async with Dlt645TcpServer(MeterBus([SimMeter("202601010042", clock)])) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        client = Client(reader, writer)
        await client.send(dlt645.read_address_request())
        assert dlt645.parse_address_reply(await client.receive()) == "202601010042"
        writer.close()
        await writer.wait_closed()


async def test_requests_split_and_batched_over_tcp(client: Client) -> None:
    one = dlt645.encode(dlt645.read_request(ONE, 0x02010100))
    two = dlt645.encode(dlt645.read_request(TWO, 0x00010000))
    for byte in b"\x00garbage" + one:
        client.writer.write(bytes([byte]))
        await client.writer.drain()
    client.writer.write(two + one)
    replies = [await client.receive() for _ in range(3)]
    assert [r.address for r in replies] == [ONE, TWO, ONE]
    assert dlt645.parse_read_reply(replies[1]).value == Decimal("50.00")


def test_bus_handle_is_transport_free(meters: list[SimMeter]) -> None:
    bus = MeterBus(meters)
    reply = bus.handle(dlt645.encode(dlt645.read_request(TWO, 0x02010300)))
    assert reply is not None
    assert reply.startswith(b"\xfe\xfe\xfe\xfe\x68")
    _, frame = dlt645.decode(reply)
    assert frame is not None
    assert dlt645.parse_read_reply(frame).value == Decimal("230.0")
    assert bus.handle(b"\x01\x02\x03") is None
    assert bus.handle(dlt645.encode(dlt645.read_request("000000000099", 0x00010000))) is None
