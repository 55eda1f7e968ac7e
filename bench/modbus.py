"""Modbus read bench: what one poll cycle of a three-phase meter costs on the bus, and how fast.

Real pymodbus servers around the simulated meter (firmware_sim.meters.modbus) run in this
process; the gateway reads it from outside, as `sealgw probe modbus` (gateway/probe/modbus.py,
docs/probe.md) in a child process, through its own ModbusBus and read plan:

- the bytes of a cycle are counted on the wire by a TCP proxy between the probe and the
  server, both ways. `bus_bytes_per_cycle` is measured with RTU framing (`rtu-over-tcp://`, the
  frames an RS-485 line carries: address, function, data, CRC); `tcp_bytes_per_cycle` with
  Modbus TCP (MBAP frames). Each frame is 4 bytes longer in MBAP (7-byte header, no address,
  no CRC), which the bench checks;
- requests are counted by the server (requests it decoded);
- `min_bus_bytes_per_cycle` is computed by the gateway (gateway.meters.plan.min_rtu_bytes);
- `reads_per_s`: values per second read over Modbus TCP through the gateway's read_plan, many
  cycles back to back, median of rounds;
- `per_tag_*`: the baseline of one request per value, as naive gateways poll, measured in the
  same run on the same servers;
- `reserved_holes`: the plan reads no register the profile does not declare (a strict meter
  refuses reserved ones with exception 2); this compares it with a plan that reads through any
  gap up to `max_gap`: `holes_cost_bus_bytes_per_cycle` is the difference (negative: cheaper).

Headline figures are the last keys of the result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from bench.probes import probe
from firmware_sim.meters.dlt645 import SimMeter
from firmware_sim.meters.fleet import PROFILE_MODELS, PROFILES_DIR
from firmware_sim.meters.maps import MAPS
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from gateway.protocol.clock import SystemClock

PROFILE = "dtsu666"
COMPARE = "sdm630"
UNIT = 1
MBAP_EXTRA = 4  # per frame: a 7-byte MBAP header replaces the address byte and the 2-byte CRC
COST_CYCLES = 10


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Measure and return the result object (headline figures last)."""
    return asyncio.run(_measure(quick=quick, verbose=verbose))


async def describe(profile: str) -> dict[str, Any]:
    """The probe's description of a profile: values, its plan, the RTU minimum (no bus I/O)."""
    return await probe("modbus", "--profile", profile, "--profiles-dir", PROFILES_DIR)


@dataclass(frozen=True, slots=True)
class Cost:
    """What one poll cycle put on the wire."""

    requests: int
    registers: int
    bus_bytes: int
    tcp_bytes: int

    def to_json(self, minimum: int) -> dict[str, Any]:
        """The figures, with the ratio to the minimum RTU bytes."""
        return {
            "requests_per_cycle": self.requests,
            "registers_per_cycle": self.registers,
            "bus_bytes_per_cycle": self.bus_bytes,
            "tcp_bytes_per_cycle": self.tcp_bytes,
            "bus_bytes_ratio_to_min": round(self.bus_bytes / minimum, 3),
        }


class CountingProxy:
    """A TCP relay that counts the bytes each way."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.up = 0
        self.down = 0
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def total(self) -> int:
        """Bytes relayed both ways so far."""
        return self.up + self.down

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop relaying."""
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for task in (self._pump(reader, up_writer, True), self._pump(up_reader, writer, False)):
            pump = asyncio.create_task(task)
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


class _Rig:
    """The simulated meter behind a Modbus TCP server and an RTU-framed TCP server, proxied."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        meter = SimMeter("900000000001", SystemClock(), phases=3)
        self.sim = ModbusSimMeter(UNIT, MAPS[PROFILE_MODELS[profile]], meter)
        self.tcp = ModbusLine([self.sim])
        self.rtu = ModbusLine([self.sim], rtu_framing=True)
        self.tcp_proxy: CountingProxy | None = None
        self.rtu_proxy: CountingProxy | None = None

    async def __aenter__(self) -> _Rig:
        await self.tcp.start()
        await self.rtu.start()
        self.tcp_proxy = CountingProxy(self.tcp.port)
        self.rtu_proxy = CountingProxy(self.rtu.port)
        await self.tcp_proxy.start()
        await self.rtu_proxy.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for proxy in (self.tcp_proxy, self.rtu_proxy):
            if proxy is not None:
                await proxy.close()
        await self.rtu.close()
        await self.tcp.close()

    async def cost(self, *plan: object) -> Cost:
        """COST_CYCLES cycles of the probe's `plan` through each proxy; one cycle's bytes."""
        assert self.tcp_proxy is not None and self.rtu_proxy is not None
        tcp_bytes, tcp_requests, _ = await self._wire(self.tcp_proxy, self.tcp, "modbus-tcp", plan)
        rtu_bytes, rtu_requests, registers = await self._wire(
            self.rtu_proxy, self.rtu, "rtu-over-tcp", plan
        )
        if tcp_requests != rtu_requests or tcp_bytes - rtu_bytes != 2 * MBAP_EXTRA * tcp_requests:
            raise RuntimeError(f"wire counts disagree: tcp {tcp_bytes} B, rtu {rtu_bytes} B")
        return Cost(rtu_requests, registers, rtu_bytes, tcp_bytes)

    async def reads_per_s(self, cycles: int, *plan: object) -> float:
        """Values per second the probe read over Modbus TCP (no proxy), connect not timed."""
        read = await self._probe(f"modbus-tcp://127.0.0.1:{self.tcp.port}", cycles, 1, plan)
        return float(read["values_per_s"])

    async def _wire(
        self, proxy: CountingProxy, line: ModbusLine, scheme: str, plan: tuple[object, ...]
    ) -> tuple[int, int, int]:
        """Bytes on the wire, server-side requests and registers of one cycle (of COST_CYCLES)."""
        bytes_before, requests_before = proxy.total, line.requests[UNIT]
        read = await self._probe(f"{scheme}://127.0.0.1:{proxy.port}", COST_CYCLES, 0, plan)
        wire, requests = proxy.total - bytes_before, line.requests[UNIT] - requests_before
        if wire % COST_CYCLES or requests % COST_CYCLES:
            raise RuntimeError(f"{scheme}: cycles differ ({wire} B, {requests} requests)")
        if requests // COST_CYCLES != read["requests_per_cycle"]:
            plan_requests = read["requests_per_cycle"]
            raise RuntimeError(f"{scheme}: {requests} requests decoded, plan: {plan_requests}")
        return wire // COST_CYCLES, requests // COST_CYCLES, int(read["registers_per_cycle"])

    async def _probe(
        self, transport: str, cycles: int, warmup: int, plan: tuple[object, ...]
    ) -> dict[str, Any]:
        return await probe(
            "modbus", "--profile", self.profile, "--profiles-dir", PROFILES_DIR,
            "--transport", transport, "--unit", UNIT, "--warmup", warmup, "--cycles", cycles,
            *plan,
        )  # fmt: skip


def _gap(max_gap: int) -> tuple[object, ...]:
    """The profile's plan at `max_gap`, through its declared holes only."""
    return ("--max-gap", max_gap)


async def _holes(rig: _Rig, described: dict[str, Any], configured: Cost) -> dict[str, Any]:
    """What keeping out of undeclared holes costs: this plan against one that reads any gap."""
    every = await rig.cost("--plan", "every-gap")
    return {
        "readable_holes": described["readable_holes"],
        "every_gap_requests_per_cycle": every.requests,
        "every_gap_bus_bytes_per_cycle": every.bus_bytes,
        "holes_cost_bus_bytes_per_cycle": configured.bus_bytes - every.bus_bytes,
    }


async def _by_gap(rig: _Rig, described: dict[str, Any]) -> dict[str, Any]:
    gaps = sorted({0, 6, described["configured_max_gap"]})
    minimum = described["min_bus_bytes_per_cycle"]
    return {str(gap): (await rig.cost(*_gap(gap))).to_json(minimum) for gap in gaps}


async def _compare(profile: str) -> dict[str, Any]:
    """The same cost figures for a second profile (at its configured gap and at gap 0)."""
    described = await describe(profile)
    async with _Rig(profile) as rig:
        by_gap = await _by_gap(rig, described)
    return {
        "profile": described["profile"],
        "values": described["values"],
        "configured_max_gap": described["configured_max_gap"],
        "min_requests_per_cycle": described["min_requests_per_cycle"],
        "min_bus_bytes_per_cycle": described["min_bus_bytes_per_cycle"],
        "by_max_gap": by_gap,
    }


async def _measure(*, quick: bool, verbose: bool) -> dict[str, Any]:
    described = await describe(PROFILE)
    rounds, cycles = (1, 200) if quick else (5, 1000)
    minimum = described["min_bus_bytes_per_cycle"]
    async with _Rig(PROFILE) as rig:
        configured = await rig.cost()
        by_gap = await _by_gap(rig, described)
        holes = await _holes(rig, described, configured)
        naive = await rig.cost("--plan", "per-value")
        rates, naive_rates = [], []
        for index in range(rounds):
            rates.append(await rig.reads_per_s(cycles))
            naive_rates.append(await rig.reads_per_s(max(cycles // 4, 1), "--plan", "per-value"))
            _say(
                verbose,
                f"round {index + 1}: {rates[-1]:.0f} values/s, per tag {naive_rates[-1]:.0f}",
            )
    compare = await _compare(COMPARE)
    reads = statistics.median(rates)
    return {
        "bench": "modbus",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "cycles_per_round": cycles,
        "profile": described["profile"],
        "values": described["values"],
        "configured_max_gap": described["configured_max_gap"],
        "registers_read_per_cycle": configured.registers,
        "min_requests_per_cycle": described["min_requests_per_cycle"],
        "by_max_gap": by_gap,
        "reserved_holes": holes,
        "per_tag_bus_bytes_per_cycle": naive.bus_bytes,
        "per_tag_tcp_bytes_per_cycle": naive.tcp_bytes,
        "per_tag_bus_bytes_ratio_to_min": round(naive.bus_bytes / minimum, 3),
        "per_tag_reads_per_s": round(statistics.median(naive_rates)),
        "reads_per_s_runs": [round(rate) for rate in rates],
        "compare": compare,
        "requests_per_cycle": configured.requests,
        "bus_bytes_per_cycle": configured.bus_bytes,
        "tcp_bytes_per_cycle": configured.tcp_bytes,
        "min_bus_bytes_per_cycle": minimum,
        "bus_bytes_ratio_to_min": round(configured.bus_bytes / minimum, 3),
        "reads_per_s": round(reads),
        "per_tag_requests_per_cycle": naive.requests,
    }


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr)


logging.getLogger("pymodbus").setLevel(logging.ERROR)
