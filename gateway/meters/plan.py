"""The Modbus read optimizer: coalesce a register map into the fewest read requests.

Rules (see docs/meters.md):
- registers are grouped by function code; a request never mixes holding and input registers;
- within a function, registers are taken in address order and appended to the open request
  while the unused registers between them (the gap) are at most `max_gap`, every one of them
  lies in a range the profile declares readable (`readable`: a strict meter refuses a read that
  touches a reserved register with exception 2), and the request stays within `max_registers`
  (125 by the Modbus specification, less for some meters);
- otherwise a new request starts. Because any run of consecutive registers that fits in one
  request also fits when shortened, this greedy packing gives the fewest requests.

The plan also says how to slice each response back into named values, and `read_plan` runs
it on a bus's raw register reads (the driver knows registers, not profiles).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

from gateway.drivers.bus import RegisterBus
from gateway.meters.profiles import MAX_READ_REGISTERS, MeterProfile, RegisterSpec
from gateway.protocol.modbus_values import Number, RegisterFunction

__all__ = [
    "EVERY_GAP",
    "RTU_REQUEST_BYTES",
    "RTU_RESPONSE_OVERHEAD",
    "ReadPlan",
    "ReadRequest",
    "RegisterSlice",
    "describe",
    "min_rtu_bytes",
    "plan_per_value",
    "plan_profile",
    "plan_reads",
    "read_plan",
    "read_plan_raw",
]

RTU_REQUEST_BYTES = 8
"""A read request in RTU framing: address, function, start (2), count (2), CRC (2)."""
RTU_RESPONSE_OVERHEAD = 5
"""A read response in RTU framing besides its 2 bytes a register: address, function, count, CRC."""


@dataclass(frozen=True, slots=True)
class RegisterSlice:
    """Where one register's words sit in a response: words[offset : offset + spec.words]."""

    spec: RegisterSpec
    offset: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read of `count` registers from `address` with one function code."""

    function: RegisterFunction
    address: int
    count: int
    slices: tuple[RegisterSlice, ...]

    @property
    def unused(self) -> int:
        """Registers read only to bridge gaps."""
        return self.count - sum(item.spec.words for item in self.slices)

    def raw_words(self, words: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Each register's words from a response, by register name."""
        self._check(words)
        return {
            item.spec.name: tuple(words[item.offset : item.offset + item.spec.words])
            for item in self.slices
        }

    def decode(self, words: Sequence[int]) -> dict[str, Number]:
        """Each register's scaled value from a response, by register name."""
        self._check(words)
        return {
            item.spec.name: item.spec.decode(words[item.offset : item.offset + item.spec.words])
            for item in self.slices
        }

    def _check(self, words: Sequence[int]) -> None:
        if len(words) != self.count:
            raise ValueError(f"expected {self.count} registers, got {len(words)}")


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The requests that read a whole register map."""

    requests: tuple[ReadRequest, ...]

    @property
    def register_count(self) -> int:
        """Registers read in total, gaps included."""
        return sum(request.count for request in self.requests)

    def decode(self, responses: Sequence[Sequence[int]]) -> dict[str, Number]:
        """Values by register name from one response per request, in plan order."""
        if len(responses) != len(self.requests):
            raise ValueError(f"expected {len(self.requests)} responses, got {len(responses)}")
        values: dict[str, Number] = {}
        for request, words in zip(self.requests, responses, strict=True):
            values.update(request.decode(words))
        return values


def plan_profile(profile: MeterProfile) -> ReadPlan:
    """The read plan for a Modbus profile, with the profile's own read limits."""
    return plan_reads(
        profile.registers,
        max_gap=profile.read.max_gap,
        max_registers=profile.read.max_registers,
        readable=profile.read.readable_holes,
    )


def plan_per_value(profile: MeterProfile) -> ReadPlan:
    """One request per value, as naive pollers read: the baseline coalescing is measured against."""
    return ReadPlan(
        tuple(
            ReadRequest(spec.function, spec.address, spec.words, (RegisterSlice(spec, 0),))
            for spec in profile.registers
        )
    )


def min_rtu_bytes(registers: Iterable[RegisterSpec]) -> tuple[int, int]:
    """(requests, bytes) a perfect RTU poller needs for exactly these registers.

    Each maximal run of contiguous needed registers of one function is read on its own, split
    into ceil(run / 125) requests where the Modbus limit forces it; no unused register is read.
    Each request costs 8 bytes out and 5 + 2 x count bytes back, so the total is 13 bytes per
    request plus 2 bytes per needed register. (Reading through a gap of up to 6 registers costs
    less than a 13-byte request, so a plan can come in just under this figure.)
    """
    runs = plan_reads(registers, max_gap=0).requests
    requests = sum(math.ceil(run.count / MAX_READ_REGISTERS) for run in runs)
    words = sum(run.count for run in runs)
    return requests, requests * (RTU_REQUEST_BYTES + RTU_RESPONSE_OVERHEAD) + 2 * words


EVERY_GAP: tuple[tuple[int, int], ...] = ((0, 0xFFFF),)
"""`readable` for a meter that answers any address (what plans did before holes were declared)."""


def plan_reads(
    registers: Iterable[RegisterSpec],
    *,
    max_gap: int,
    max_registers: int = MAX_READ_REGISTERS,
    readable: Sequence[tuple[int, int]] = (),
) -> ReadPlan:
    """Coalesce registers into the fewest requests; ValueError on overlaps or bad limits.

    A gap is bridged only if all of it lies in the inclusive `readable` ranges: by default no
    register the profile does not name is ever read.
    """
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ValueError(f"max_registers must be 1..{MAX_READ_REGISTERS}, got {max_registers}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    ordered = sorted(registers, key=lambda spec: (spec.function, spec.address))
    requests: list[ReadRequest] = []
    for _, group in groupby(ordered, key=lambda spec: spec.function):
        requests.extend(_pack(list(group), max_gap, max_registers, readable))
    return ReadPlan(tuple(requests))


def describe(plan: ReadPlan) -> Mapping[str, object]:
    """A JSON-ready summary of a plan for logs and `config check`."""
    return {
        "requests": [
            {
                "function": request.function.label,
                "address": request.address,
                "count": request.count,
                "registers": [item.spec.name for item in request.slices],
            }
            for request in plan.requests
        ],
        "register_count": plan.register_count,
    }


async def read_plan(bus: RegisterBus, unit: int, plan: ReadPlan) -> dict[str, Number]:
    """Read a meter's whole plan and return scaled values by register name."""
    responses: list[Sequence[int]] = []
    for request in plan.requests:
        responses.append(await bus.read(unit, request.function, request.address, request.count))
    return plan.decode(responses)


async def read_plan_raw(bus: RegisterBus, unit: int, plan: ReadPlan) -> dict[str, tuple[int, ...]]:
    """Read a plan and return each register's raw words, for status bits and debugging."""
    raw: dict[str, tuple[int, ...]] = {}
    for request in plan.requests:
        words = await bus.read(unit, request.function, request.address, request.count)
        raw.update(request.raw_words(words))
    return raw


def _pack(
    specs: Sequence[RegisterSpec],
    max_gap: int,
    max_registers: int,
    readable: Sequence[tuple[int, int]],
) -> list[ReadRequest]:
    """Greedy packing of one function's registers, sorted by address."""
    blocks: list[list[RegisterSpec]] = []
    for spec in specs:
        if spec.words > max_registers:
            raise ValueError(f"{spec.name} is wider than max_registers={max_registers}")
        if blocks and _fits(blocks[-1], spec, max_gap, max_registers, readable):
            blocks[-1].append(spec)
        else:
            blocks.append([spec])
    return [_request(block) for block in blocks]


def _fits(
    block: Sequence[RegisterSpec],
    spec: RegisterSpec,
    max_gap: int,
    limit: int,
    readable: Sequence[tuple[int, int]],
) -> bool:
    end = max(item.end for item in block)
    if spec.address < end:
        raise ValueError(f"{spec.name} overlaps {_overlapping(block, spec)}")
    if spec.address - end > max_gap or spec.end - block[0].address > limit:
        return False
    return all(any(lo <= a <= hi for lo, hi in readable) for a in range(end, spec.address))


def _overlapping(block: Sequence[RegisterSpec], spec: RegisterSpec) -> str:
    return next(item.name for item in block if item.end > spec.address)


def _request(block: Sequence[RegisterSpec]) -> ReadRequest:
    start = block[0].address
    count = max(item.end for item in block) - start
    slices = tuple(RegisterSlice(item, item.address - start) for item in block)
    return ReadRequest(block[0].function, start, count, slices)
