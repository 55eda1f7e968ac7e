"""The read optimizer: fewest requests within the 125-register limit and the gap fill."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.meters.plan import EVERY_GAP, ReadPlan, describe, plan_profile, plan_reads
from gateway.meters.profiles import RegisterSpec, ValueKind, load_profile
from gateway.protocol.modbus_values import RegisterFunction, ValueFormat, ValueType

HOLDING, INPUT = RegisterFunction.HOLDING, RegisterFunction.INPUT
PROFILES = Path(__file__).resolve().parents[3] / "config" / "profiles"


def reg(
    name: str, address: int, vtype: ValueType = ValueType.U16, function: RegisterFunction = HOLDING
) -> RegisterSpec:
    return RegisterSpec(name, address, function, ValueFormat(vtype), ValueKind.POWER)


def spans(plan: ReadPlan) -> list[tuple[int, int, int]]:
    return [(int(r.function), r.address, r.count) for r in plan.requests]


def test_contiguous_registers_make_one_request() -> None:
    plan = plan_reads([reg("a", 0), reg("b", 1, ValueType.U32), reg("c", 3)], max_gap=0)
    assert spans(plan) == [(3, 0, 4)]
    assert [(s.spec.name, s.offset) for s in plan.requests[0].slices] == [
        ("a", 0),
        ("b", 1),
        ("c", 3),
    ]
    assert plan.requests[0].unused == 0


def test_order_of_input_does_not_matter() -> None:
    regs = [reg("c", 10), reg("a", 0), reg("b", 5)]
    assert spans(plan_reads(regs, max_gap=4, readable=EVERY_GAP)) == [(3, 0, 11)]


def test_gap_exactly_at_threshold_is_bridged() -> None:
    regs = [reg("a", 0), reg("b", 6)]  # 5 unused registers: 1..5
    plan = plan_reads(regs, max_gap=5, readable=EVERY_GAP)
    assert spans(plan) == [(3, 0, 7)]
    assert plan.requests[0].unused == 5


def test_gap_one_over_threshold_splits() -> None:
    regs = [reg("a", 0), reg("b", 7)]  # 6 unused registers
    assert spans(plan_reads(regs, max_gap=5, readable=EVERY_GAP)) == [(3, 0, 1), (3, 7, 1)]


def test_zero_gap_merges_only_adjacent() -> None:
    regs = [reg("a", 0), reg("b", 1), reg("c", 3)]
    assert spans(plan_reads(regs, max_gap=0)) == [(3, 0, 2), (3, 3, 1)]


def test_exactly_125_registers_fit_in_one_request() -> None:
    regs = [reg("a", 0, ValueType.F32), reg("z", 123, ValueType.F32)]  # 0..124
    assert spans(plan_reads(regs, max_gap=125, readable=EVERY_GAP)) == [(3, 0, 125)]


def test_126_registers_need_two_requests() -> None:
    regs = [reg("a", 0, ValueType.F32), reg("z", 124, ValueType.F32)]  # 0..125
    assert spans(plan_reads(regs, max_gap=125, readable=EVERY_GAP)) == [(3, 0, 2), (3, 124, 2)]


def test_a_value_is_never_split_across_requests() -> None:
    regs = [reg(f"r{i}", i * 2, ValueType.F32) for i in range(70)]  # 140 registers
    plan = plan_reads(regs, max_gap=0)
    assert spans(plan) == [(3, 0, 124), (3, 124, 16)]
    assert sum(len(r.slices) for r in plan.requests) == 70


def test_lower_meter_limit_is_respected() -> None:
    regs = [reg(f"r{i}", i) for i in range(100)]
    plan = plan_reads(regs, max_gap=0, max_registers=40)
    assert spans(plan) == [(3, 0, 40), (3, 40, 40), (3, 80, 20)]


def test_functions_are_never_mixed() -> None:
    regs = [reg("h0", 0), reg("i0", 0, function=INPUT), reg("h1", 1), reg("i2", 2, function=INPUT)]
    plan = plan_reads(regs, max_gap=10, readable=EVERY_GAP)
    assert spans(plan) == [(3, 0, 2), (4, 0, 3)]
    assert [s.spec.name for s in plan.requests[1].slices] == ["i0", "i2"]


def test_overlap_is_rejected() -> None:
    with pytest.raises(ValueError, match="b overlaps a"):
        plan_reads([reg("a", 0, ValueType.U32), reg("b", 1)], max_gap=0)


def test_same_address_in_different_functions_is_fine() -> None:
    plan = plan_reads([reg("a", 5), reg("b", 5, function=INPUT)], max_gap=0)
    assert len(plan.requests) == 2


@pytest.mark.parametrize(("max_gap", "max_registers"), [(-1, 125), (0, 0), (0, 126)])
def test_bad_limits(max_gap: int, max_registers: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        plan_reads([reg("a", 0)], max_gap=max_gap, max_registers=max_registers)


def test_register_wider_than_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="wider than"):
        plan_reads([reg("a", 0, ValueType.U64)], max_gap=0, max_registers=3)


def test_decode_slices_each_response() -> None:
    regs = [reg("a", 0), reg("b", 3, ValueType.I32)]
    plan = plan_reads(regs, max_gap=2, readable=EVERY_GAP)
    assert plan.decode([[7, 0, 0, 0xFFFF, 0xFFFE]]) == {"a": 7, "b": -2}
    assert plan.requests[0].raw_words([7, 0, 0, 0xFFFF, 0xFFFE]) == {
        "a": (7,),
        "b": (0xFFFF, 0xFFFE),
    }
    with pytest.raises(ValueError, match="expected 5 registers"):
        plan.decode([[1, 2]])
    with pytest.raises(ValueError, match="expected 1 responses"):
        plan.decode([])


def test_shipped_sdm630_plan() -> None:
    plan = plan_profile(load_profile(PROFILES / "sdm630.toml"))
    assert spans(plan) == [(4, 0x0000, 0x4C), (4, 0x0156, 2)]
    summary = describe(plan)
    assert summary["register_count"] == 0x4C + 2


def test_shipped_dds_plan_reads_only_declared_holes() -> None:
    plan = plan_profile(load_profile(PROFILES / "dds-single-phase.toml"))
    assert spans(plan) == [(3, 0, 2), (3, 8, 10)]  # 0x0002-0x0007 undeclared, 0x000F readable


def test_undeclared_gap_is_never_read() -> None:
    regs = [reg("a", 0), reg("b", 3)]
    assert spans(plan_reads(regs, max_gap=16)) == [(3, 0, 1), (3, 3, 1)]
    assert spans(plan_reads(regs, max_gap=16, readable=[(1, 2)])) == [(3, 0, 4)]
    assert spans(plan_reads(regs, max_gap=16, readable=[(1, 1)])) == [(3, 0, 1), (3, 3, 1)]


def test_shipped_dtsu666_plan_skips_the_reserved_ranges() -> None:
    plan = plan_profile(load_profile(PROFILES / "dtsu666.toml"))
    assert spans(plan) == [
        (3, 0x2000, 34),
        (3, 0x202A, 8),
        (3, 0x2044, 2),
        (3, 0x401E, 2),
        (3, 0x4028, 2),
    ]
    for request in plan.requests:
        touched = range(request.address, request.address + request.count)
        assert not set(touched) & (set(range(0x2022, 0x202A)) | set(range(0x4020, 0x4028)))
