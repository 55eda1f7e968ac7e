"""The bench's meters: Modbus TCP, Modbus RTU on a pseudo-terminal, DL/T 645 over TCP and serial.

`MeterSim(state_dir)` starts, on `start()`:

- `sim-tcp`: a pymodbus TCP server on a free port with M-SDM-1 (SDM630, unit 1), M-DDS-1
  (DDS238-2, unit 2) and M-DTSU-1 (DTSU666, unit 3);
- `sim-rtu`: a pymodbus RTU server on one end of a socat pty pair (links in `state_dir`) with
  M-DDS-2 (DDS238-2, unit 1), M-SDM-2 (SDM630, unit 2) and M-DDS-3 (unit 3); the gateway opens
  the other end;
- `sim-645`: a DL/T 645 TCP server with M-645-1, M-645-2 and M-645-4 (addresses 00000000000N);
- `sim-645s`: a DL/T 645 serial line on a second pty pair with M-645-3 and M-645-5, 2400 8E1;
- with `district=N`, `sim-district`: a DL/T 645 TCP bus with a simulated distribution district
  (`SimDistrict`): its district meter DIST-TOTAL and N customers DIST-C1.., all with daily
  freeze data, in line-loss district `district-2`. With `district_day_s` under a day its meters
  run on a compressed clock (`ScaledClock`), so daily line-loss intervals pass in seconds.
  `inject(meter, "bypass")` starts the bypass theft on a customer (60 % of its load around the
  meter), `"bypass_off"` ends it.

Energy advances on a load curve with the injected clock. Faults go through `inject(meter, name)`
or the named methods; every meter event they generate is appended to the truth file as a JSON
line with `"kind": "meter_event"` (faults that are not meter events as `"kind": "meter_fault"`).
`meters_toml()` returns the gateway's `[meters]` fragment pointing at these buses, naming for
each meter the shipped gateway profile meant for its model (PROFILE_MODELS). The simulated
meters' registers come from the vendors' maps in firmware_sim/meters/maps.py, never from those
profiles, so the simulator checks them instead of echoing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import termios
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_sim.children import die_with_parent
from firmware_sim.meters.district import DAY_S, ScaledClock, SimDistrict
from firmware_sim.meters.dlt645 import (
    Dlt645TcpServer,
    LoadCurve,
    MeterBus,
    SimMeter,
    residential_load,
)
from firmware_sim.meters.maps import MAPS, Condition
from firmware_sim.meters.modbus import ModbusLine, ModbusSimMeter
from gateway.errors import FrameError
from gateway.protocol import dlt645
from gateway.protocol.clock import Clock, SystemClock
from gateway.protocol.events import format_ts

__all__ = [
    "BYPASS_SHARE",
    "DISTRICT_BUS",
    "DISTRICT_NAME",
    "FAULTS",
    "PROFILES_DIR",
    "PROFILE_MODELS",
    "Dlt645SerialServer",
    "MeterSim",
    "PtyPair",
    "SimMeterInfo",
]

_LOGGER = logging.getLogger(__name__)

PROFILES_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"
"""The gateway's shipped profiles, named in `meters_toml()`; the simulator never reads them."""

PROFILE_MODELS = {"sdm630": "sdm630", "dtsu666": "dtsu666", "dds-single-phase": "dds238-2"}
"""Shipped gateway profile -> the simulated meter model (maps.MAPS) it is written for."""

DISTRICT_NAME = "district-2"
"""The line-loss district of the simulated district's meters (`district=N`)."""
DISTRICT_BUS = "sim-district"
DISTRICT_PROFILE = "dlt645-freeze"
BYPASS_SHARE = 0.6
"""Share of a customer's load the `bypass` fault takes around its meter."""


@dataclass(frozen=True, slots=True)
class SimMeterInfo:
    """Where one simulated meter sits and what it speaks."""

    id: str
    bus: str
    profile: str
    unit: int = 1
    address: str = ""


_LAYOUT = (
    SimMeterInfo("M-SDM-1", "sim-tcp", "sdm630", unit=1),
    SimMeterInfo("M-DDS-1", "sim-tcp", "dds-single-phase", unit=2),
    SimMeterInfo("M-DDS-2", "sim-rtu", "dds-single-phase", unit=1),
    SimMeterInfo("M-645-1", "sim-645", "dlt645-residential", address="000000000001"),
    SimMeterInfo("M-645-2", "sim-645", "dlt645-residential", address="000000000002"),
    SimMeterInfo("M-645-3", "sim-645s", "dlt645-residential", address="000000000003"),
    SimMeterInfo("M-DTSU-1", "sim-tcp", "dtsu666", unit=3),
    SimMeterInfo("M-SDM-2", "sim-rtu", "sdm630", unit=2),
    SimMeterInfo("M-DDS-3", "sim-rtu", "dds-single-phase", unit=3),
    SimMeterInfo("M-645-4", "sim-645", "dlt645-residential", address="000000000004"),
    SimMeterInfo("M-645-5", "sim-645s", "dlt645-residential", address="000000000005"),
)


class PtyPair:
    """Two linked pseudo-terminals made by a socat subprocess, reachable by fixed links."""

    def __init__(self, directory: Path, name: str) -> None:
        self.server_end = directory / f"{name}-sim"
        self.client_end = directory / f"{name}-gw"
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start socat and wait until both ends exist."""
        self.server_end.parent.mkdir(parents=True, exist_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            "socat", "-d", "-d",
            f"pty,raw,echo=0,link={self.server_end}",
            f"pty,raw,echo=0,link={self.client_end}",
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent(signal.SIGKILL),  # gone with the simulator, even SIGKILLed
        )  # fmt: skip
        assert self._proc.stderr is not None
        async for line in self._proc.stderr:
            if b"starting data transfer loop" in line:
                break
        else:
            raise RuntimeError(f"socat exited with {await self._proc.wait()}")
        self._drain = asyncio.create_task(_drain(self._proc.stderr))

    async def close(self) -> None:
        """Stop socat."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self._proc.terminate()
        await self._proc.wait()
        if self._drain is not None:
            await self._drain
        self._proc = None


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(4096):
        pass


class Dlt645SerialServer:
    """Serves a MeterBus on a serial device (one end of a pty pair), 2400 baud 8E1."""

    def __init__(self, bus: MeterBus, device: Path, *, baud: int = 2400) -> None:
        self.bus = bus
        self.device = device
        self.baud = baud
        self._port: Any = None
        self._buffer = bytearray()

    async def start(self) -> None:
        """Open the port and answer frames as they arrive."""
        import serial  # noqa: PLC0415 - pyserial is optional (the meters extra)

        self._port = serial.Serial(
            str(self.device), baudrate=self.baud, parity="E", timeout=0, write_timeout=1.0
        )
        asyncio.get_running_loop().add_reader(self._port.fileno(), self._on_readable)

    async def close(self) -> None:
        """Stop answering and close the port."""
        if self._port is not None:
            asyncio.get_running_loop().remove_reader(self._port.fileno())
            # Unsent replies (the gateway end is gone) would make close() wait 30 s to drain.
            with contextlib.suppress(OSError, termios.error):
                termios.tcflush(self._port.fileno(), termios.TCOFLUSH)
            self._port.close()
            self._port = None

    def _on_readable(self) -> None:
        try:
            self._buffer += self._port.read(max(self._port.in_waiting, 1))
        except OSError as exc:
            _LOGGER.debug("DL/T 645 serial simulator: %s", exc)
            return
        while True:
            try:
                used, frame = dlt645.decode(self._buffer)
            except FrameError as exc:
                del self._buffer[: exc.consumed]
                continue
            if not used:
                return
            del self._buffer[:used]
            reply = self.bus.handle_frame(frame) if frame is not None else None
            if reply is not None:
                self._port.write(reply)


class MeterSim:
    """Every simulated meter of the bench, their buses, faults and the truth file."""

    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Clock | None = None,
        truth: Path | None = None,
        load: LoadCurve = residential_load,
        profiles_dir: Path = PROFILES_DIR,
        district: int = 0,
        district_day_s: float = DAY_S,
    ) -> None:
        self.state_dir = state_dir
        self.clock: Clock = clock or SystemClock()
        self.truth = truth
        self.profiles_dir = profiles_dir
        self.district_day_s = district_day_s
        self.info = {item.id: item for item in _LAYOUT}
        self.meters = {item.id: self._sim_meter(i, item, load) for i, item in enumerate(_LAYOUT)}
        self.district = self._district(district, district_day_s) if district else None
        self.modbus = {
            item.id: ModbusSimMeter(
                item.unit, MAPS[PROFILE_MODELS[item.profile]], self.meters[item.id]
            )
            for item in _LAYOUT
            if not item.address
        }
        self.tcp_line = ModbusLine(self._modbus_on("sim-tcp"))
        self.rtu_pty = PtyPair(state_dir, "rtu")
        self.rtu_line = ModbusLine(self._modbus_on("sim-rtu"), serial=self.rtu_pty.server_end)
        self.dlt645_tcp = Dlt645TcpServer(MeterBus(self._dlt645_on("sim-645")))
        self.dlt645_pty = PtyPair(state_dir, "dlt645")
        self.dlt645_serial = Dlt645SerialServer(
            MeterBus(self._dlt645_on("sim-645s")), self.dlt645_pty.server_end
        )
        self.district_tcp = (
            Dlt645TcpServer(MeterBus(self._dlt645_on(DISTRICT_BUS))) if self.district else None
        )

    async def start(self) -> None:
        """Start every bus."""
        await self.tcp_line.start()
        await self.rtu_pty.start()
        await self.rtu_line.start()
        await self.dlt645_tcp.start()
        await self.dlt645_pty.start()
        await self.dlt645_serial.start()
        if self.district_tcp is not None:
            await self.district_tcp.start()

    async def close(self) -> None:
        """Stop every bus."""
        if self.district_tcp is not None:
            await self.district_tcp.close()
        await self.dlt645_serial.close()
        await self.dlt645_pty.close()
        await self.dlt645_tcp.close()
        await self.rtu_line.close()
        await self.rtu_pty.close()
        await self.tcp_line.close()

    async def __aenter__(self) -> MeterSim:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- faults and events ----------------------------------------------------------------

    def inject(self, meter_id: str, fault: str) -> None:
        """Inject a named fault (see FAULTS); KeyError for an unknown meter or fault."""
        FAULTS[fault](self, meter_id)

    def open_cover(self, meter_id: str, *, terminal: bool = False) -> None:
        """Open the meter (or terminal) cover."""
        meter = self.meters[meter_id]
        cover = meter.terminal_cover if terminal else meter.meter_cover
        if not cover.open_now:
            meter.open_cover(terminal=terminal)
            self._event(meter_id, "terminal_cover_opened" if terminal else "cover_opened")

    def close_cover(self, meter_id: str, *, terminal: bool = False) -> None:
        """Close the meter (or terminal) cover."""
        self.meters[meter_id].close_cover(terminal=terminal)
        self._fault(meter_id, "terminal_cover_closed" if terminal else "cover_closed")

    def power_down(self, meter_id: str) -> None:
        """Cut the meter's supply."""
        meter = self.meters[meter_id]
        if meter.powered:
            meter.power_down()
            self._event(meter_id, "power_down")

    def power_up(self, meter_id: str) -> None:
        """Restore the meter's supply."""
        self.meters[meter_id].power_up()
        self._fault(meter_id, "power_up")

    def set_dead(self, meter_id: str, dead: bool = True) -> None:
        """Make the meter silent (or answer again)."""
        self.meters[meter_id].dead = dead
        self._fault(meter_id, "dead" if dead else "alive")

    def set_garbled(self, meter_id: str, garbled: bool = True) -> None:
        """Make the meter's replies corrupt (or clean again)."""
        self.meters[meter_id].garble = garbled
        self._fault(meter_id, "garble" if garbled else "clean")

    def set_bypass(self, meter_id: str, share: float) -> None:
        """Let `share` of the customer's load flow around its meter (0: the bypass is gone)."""
        meter = self.meters[meter_id]
        meter.advance()  # what was drawn so far was metered
        meter.bypass = share
        self._fault(meter_id, f"bypass {share:g}" if share else "bypass_off")

    def set_magnetic(self, meter_id: str, on: bool = True) -> None:
        """Raise (or clear) magnetic interference near a Modbus meter."""
        meter = self.modbus[meter_id]
        if on and not meter.magnetic:
            self._event(meter_id, "magnetic_interference")
        meter.magnetic = on

    def meters_toml(
        self,
        *,
        seals: Mapping[str, str] | None = None,
        poll_s: float = 15.0,
        time_sync_s: float = 3600.0,
        gap_s: float = 0.0,
        timeout_s: float = 0.5,
    ) -> str:
        """The gateway's [meters] TOML fragment for these buses; `seals` maps meter to seal."""
        seals = seals or {}
        lines = [
            "[meters]",
            f"profiles_dir = {_q(str(self.profiles_dir))}",
            f"time_sync_s = {time_sync_s}",
            "",
        ]
        for name, transport in self.transports().items():
            lines += ["[[meters.buses]]", f"name = {_q(name)}", f"transport = {_q(transport)}"]
            lines += [f"gap_s = {gap_s}", f"timeout_s = {timeout_s}", ""]
        # a poll at least three times a simulated day, so every daily freeze is read
        district_poll_s = min(poll_s, self.district_day_s / 3)
        for item in self.info.values():
            in_district = item.bus == DISTRICT_BUS
            lines += ["[[meters.meters]]", f"id = {_q(item.id)}", f"bus = {_q(item.bus)}"]
            lines += [f"profile = {_q(item.profile)}"]
            lines.append(f"poll_s = {district_poll_s if in_district else poll_s}")
            lines.append(f"address = {_q(item.address)}" if item.address else f"unit = {item.unit}")
            if item.id in seals:
                lines.append(f"seal = {_q(seals[item.id])}")
            if in_district:
                lines.append(f"district = {_q(DISTRICT_NAME)}")
            if in_district and item.id == _DISTRICT_METER:
                lines.append("district_meter = true")
            lines.append("")
        return "\n".join(lines)

    def transports(self) -> dict[str, str]:
        """Transport strings of the running buses, by bus name."""
        transports = {
            "sim-tcp": f"modbus-tcp://127.0.0.1:{self.tcp_line.port}",
            "sim-rtu": f"rtu://{self.rtu_pty.client_end}?baud=9600",
            "sim-645": f"dlt645-tcp://127.0.0.1:{self.dlt645_tcp.port}",
            "sim-645s": f"dlt645-serial://{self.dlt645_pty.client_end}?baud=2400&parity=E",
        }
        if self.district_tcp is not None:
            transports[DISTRICT_BUS] = f"dlt645-tcp://127.0.0.1:{self.district_tcp.port}"
        return transports

    @property
    def district_customers(self) -> list[str]:
        """Ids of the simulated district's customer meters (none without a district)."""
        return [m for m, item in self.info.items() if item.bus == DISTRICT_BUS][1:]

    # --- helpers --------------------------------------------------------------------------

    def _district(self, customers: int, day_s: float) -> SimDistrict:
        """The simulated district and its meters, on a compressed clock when day_s < a day."""
        clock = self.clock if day_s >= DAY_S else ScaledClock(self.clock, DAY_S / day_s)
        district = SimDistrict(clock, customers)
        ids = [_DISTRICT_METER, *(f"DIST-C{n}" for n in range(1, customers + 1))]
        for meter_id, meter in zip(ids, district.meters, strict=True):
            self.info[meter_id] = SimMeterInfo(
                meter_id, DISTRICT_BUS, DISTRICT_PROFILE, address=meter.address
            )
            self.meters[meter_id] = meter
        return district

    def _sim_meter(self, index: int, item: SimMeterInfo, load: LoadCurve) -> SimMeter:
        address = item.address or f"{900000000000 + index:012d}"  # Modbus meters: unused
        model = MAPS.get(PROFILE_MODELS.get(item.profile, ""))
        phases = model.phases if model is not None else 1
        return SimMeter(address, self.clock, load=load, phases=phases)

    def _modbus_on(self, bus: str) -> list[ModbusSimMeter]:
        return [self.modbus[mid] for mid, item in self.info.items() if item.bus == bus]

    def _dlt645_on(self, bus: str) -> list[SimMeter]:
        return [self.meters[mid] for mid, item in self.info.items() if item.bus == bus]

    def senses(self, meter_id: str, event: str) -> bool:
        """Whether the meter itself reports `event`, so a gateway can see it at all."""
        condition = _CONDITIONS[event]
        if self.info[meter_id].address:  # DL/T 645: status words 1 and 7 and event counters
            return condition is not Condition.MAGNETIC_INTERFERENCE
        regmap = self.modbus[meter_id].regmap
        return any(condition in register.bits.values() for register in regmap.registers)

    def _event(self, meter_id: str, event: str) -> None:
        if self.senses(meter_id, event):
            self._write({"kind": "meter_event", "meter": meter_id, "event": event})
        else:  # it happened, but this meter model has no sensor or status bit for it
            self._fault(meter_id, event)

    def _fault(self, meter_id: str, fault: str) -> None:
        self._write({"kind": "meter_fault", "meter": meter_id, "fault": fault})

    def _write(self, record: dict[str, Any]) -> None:
        info = self.info[record["meter"]]
        record = {"ts": format_ts(self.clock.now()), **record, "bus": info.bus}
        _LOGGER.info("sim meter %s: %s", record["meter"], record.get("event") or record["fault"])
        if self.truth is None:
            return
        with self.truth.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")


_DISTRICT_METER = "DIST-TOTAL"

_CONDITIONS = {
    "cover_opened": Condition.METER_COVER_OPEN,
    "terminal_cover_opened": Condition.TERMINAL_COVER_OPEN,
    "power_down": Condition.POWER_DOWN,
    "magnetic_interference": Condition.MAGNETIC_INTERFERENCE,
}


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string for these values


FAULTS: dict[str, Callable[[MeterSim, str], None]] = {
    "cover_open": lambda sim, m: sim.open_cover(m),
    "cover_close": lambda sim, m: sim.close_cover(m),
    "terminal_cover_open": lambda sim, m: sim.open_cover(m, terminal=True),
    "terminal_cover_close": lambda sim, m: sim.close_cover(m, terminal=True),
    "power_down": lambda sim, m: sim.power_down(m),
    "power_up": lambda sim, m: sim.power_up(m),
    "dead": lambda sim, m: sim.set_dead(m, True),
    "alive": lambda sim, m: sim.set_dead(m, False),
    "garble": lambda sim, m: sim.set_garbled(m, True),
    "clean": lambda sim, m: sim.set_garbled(m, False),
    "magnetic": lambda sim, m: sim.set_magnetic(m, True),
    "magnetic_off": lambda sim, m: sim.set_magnetic(m, False),
    "bypass": lambda sim, m: sim.set_bypass(m, BYPASS_SHARE),
    "bypass_off": lambda sim, m: sim.set_bypass(m, 0.0),
}
"""Faults `inject` knows, for `sealgw sim` and scenario scripts."""
