"""Read failures as ReadFailure wire strings, BusStats counting, and plans run on raw reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway.drivers.bus import BusStats, RegisterBus
from gateway.errors import (
    BusUnavailableError,
    DeviceTimeoutError,
    GarbledReplyError,
    GarbledResponseError,
    GatewayError,
    LineUnavailableError,
    MeterRefusedError,
    ModbusBusyError,
    ModbusExceptionError,
)
from gateway.meters.plan import plan_reads, read_plan, read_plan_raw
from gateway.meters.profiles import RegisterSpec, ValueKind
from gateway.meters.readers import ReadFailure, failure_reason
from gateway.protocol.dlt645 import ErrorFlags, Function
from gateway.protocol.modbus_values import RegisterFunction, ValueFormat, ValueType

REFUSED = MeterRefusedError("000000000001", Function.READ_DATA, ErrorFlags.NO_DATA)


def _modbus(cls: type[ModbusExceptionError], code: int) -> ModbusExceptionError:
    return cls("refused", code=code, unit=1, function=3, address=0)


@pytest.mark.parametrize(
    ("exc", "wire"),
    [
        (DeviceTimeoutError("silent", device="bus#1"), "timeout"),
        (GarbledResponseError("crc"), "crc"),
        (GarbledReplyError("checksum"), "crc"),
        (REFUSED, "refused"),
        (_modbus(ModbusExceptionError, 2), "exception:2"),
        (_modbus(ModbusBusyError, 6), "exception:6"),
        (BusUnavailableError("refused"), "unavailable"),
        (LineUnavailableError("no port"), "unavailable"),
        (ValueError("not ours"), "crc"),
    ],
)
def test_failure_reasons_are_the_wire_strings(exc: Exception, wire: str) -> None:
    assert failure_reason(exc) == wire


def test_read_failure_values_are_unchanged() -> None:
    assert [r.value for r in ReadFailure] == [
        "timeout",
        "crc",
        "exception",
        "refused",
        "unavailable",
        "follow_up",
        "out_of_range",
        "mismatch",
        "protocol",
        "unsupported",
    ]
    assert ReadFailure.EXCEPTION.with_code(11) == "exception:11"


def test_bus_stats_file_each_failure_once() -> None:
    stats = BusStats()
    failures: list[GatewayError] = [
        DeviceTimeoutError("silent"),
        GarbledResponseError("crc"),
        GarbledReplyError("checksum"),
        _modbus(ModbusExceptionError, 2),
        _modbus(ModbusBusyError, 6),
        REFUSED,
        BusUnavailableError("refused"),
        LineUnavailableError("no port"),
    ]
    for exc in failures:
        stats.count_failure(exc)
    stats.count_request("1")
    stats.count_request("1")
    stats.count_request("000000000001")
    assert (stats.timeouts, stats.garbled, stats.refused, stats.unavailable) == (1, 2, 3, 2)
    assert stats.requests == 3
    assert stats.by_device == {"1": 2, "000000000001": 1}


@dataclass
class RegisterBank:
    """An in-memory line: holding registers 0..99 hold their own address."""

    name: str = "bank"
    inter_frame_gap: float = 0.0
    stats: BusStats = field(default_factory=BusStats)
    asked: list[tuple[int, int, int]] = field(default_factory=list)

    async def read(
        self, unit: int, function: RegisterFunction, address: int, count: int
    ) -> list[int]:
        self.asked.append((unit, address, count))
        return list(range(address, address + count))

    async def close(self) -> None:
        pass


def _spec(name: str, address: int, vtype: ValueType = ValueType.U16) -> RegisterSpec:
    return RegisterSpec(
        name, address, RegisterFunction.HOLDING, ValueFormat(vtype), ValueKind.POWER
    )


async def test_read_plan_runs_on_raw_register_reads() -> None:
    plan = plan_reads([_spec("a", 1), _spec("b", 2, ValueType.U32), _spec("c", 40)], max_gap=2)
    bank = RegisterBank()
    bus: RegisterBus = bank
    values = await read_plan(bus, 7, plan)
    assert values == {"a": 1, "b": (2 << 16) | 3, "c": 40}
    assert bank.asked == [(7, 1, 3), (7, 40, 1)]
    raw = await read_plan_raw(bus, 7, plan)
    assert raw == {"a": (1,), "b": (2, 3), "c": (40,)}
