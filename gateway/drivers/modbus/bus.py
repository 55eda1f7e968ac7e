"""Modbus transports and the bus that owns one of them; pymodbus does the framing.

A transport is chosen by a config string (see docs/meters.md):

- `modbus-tcp://host:502`: Modbus TCP (MBAP framing);
- `rtu:///dev/ttyUSB0?baud=9600&parity=N&stopbits=1`: Modbus RTU on a serial port; `rs485=1`
  asks the kernel driver to drive the RS-485 direction line (RTS), `echo=1` drops the local
  echo some adapters return;
- `rtu-over-tcp://host:port`: RTU frames through a transparent Ethernet-to-serial converter.

A ModbusBus (a gateway.drivers.bus.Bus) is the single owner of one line; it reads raw
registers, and gateway.meters.plan turns a meter's read plan into such reads. It serializes
requests from every meter on the line, keeps the inter-frame gap, applies the per-request
timeout and maps failures to the gateway's exception tree.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

from gateway.drivers.bus import raise_if_cancelling
from gateway.drivers.bus_turns import TurnTakingBus
from gateway.drivers.modbus.transport import (
    TransportKind,
    TransportSpec,
    at_least_silence,
    parse_transport,
)
from gateway.errors import (
    BusUnavailableError,
    ConfigError,
    DeviceTimeoutError,
    GarbledResponseError,
    GatewayError,
    ModbusBusyError,
    ModbusExceptionCode,
    ModbusExceptionError,
)
from gateway.protocol.clock import Clock
from gateway.protocol.modbus_values import RegisterFunction

__all__ = [
    "ModbusBus",
    "ModbusTransport",
    "PymodbusTransport",
    "TransportKind",
    "TransportSpec",
    "open_bus",
    "parse_transport",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1.0
DEFAULT_CONNECT_TIMEOUT = 3.0


_RETRYABLE_CODES = frozenset(
    {
        ModbusExceptionCode.ACKNOWLEDGE,
        ModbusExceptionCode.SERVER_DEVICE_BUSY,
        ModbusExceptionCode.GATEWAY_PATH_UNAVAILABLE,
        ModbusExceptionCode.GATEWAY_TARGET_NO_RESPONSE,
    }
)


_ABSENT_CODES = frozenset(
    {ModbusExceptionCode.GATEWAY_PATH_UNAVAILABLE, ModbusExceptionCode.GATEWAY_TARGET_NO_RESPONSE}
)


class ModbusTransport(Protocol):
    """What a ModbusBus needs from a line: connect, read registers, close."""

    @property
    def name(self) -> str:
        """A short description for logs."""
        ...

    @property
    def connected(self) -> bool:
        """True while the line is open."""
        ...

    async def connect(self) -> None:
        """Open the line; BusUnavailableError if it cannot."""
        ...

    @property
    def heard_reply(self) -> bool:
        """True if any byte arrived since the last request was sent."""
        ...

    async def read_registers(
        self, function: RegisterFunction, address: int, count: int, unit: int
    ) -> list[int]:
        """One read request, without a deadline of its own; the bus cancels it on timeout."""
        ...

    def close(self) -> None:
        """Close the line; safe to call twice."""
        ...


class ModbusBus(TurnTakingBus[int]):
    """The single owner of one Modbus line; serializes every request on it."""

    def __init__(
        self,
        transport: ModbusTransport,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        inter_frame_gap: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        if timeout <= 0 or inter_frame_gap < 0:
            raise ValueError("timeout must be > 0 and inter_frame_gap >= 0")
        self.transport = transport
        self.timeout = timeout
        super().__init__(_log, inter_frame_gap=inter_frame_gap, clock=clock)

    @property
    def name(self) -> str:
        """The transport's description."""
        return self.transport.name

    async def read(
        self, unit: int, function: RegisterFunction, address: int, count: int
    ) -> list[int]:
        """Read `count` registers from one unit, waiting for the line and the gap."""
        async with self._turns.turn():
            try:
                words = await self._transact(unit, function, address, count)
            except GatewayError as exc:
                self._count_failure(unit, exc)
                raise
        self._count_ok(unit)
        return words

    async def probe(self, unit: int, function: RegisterFunction, address: int) -> bool:
        """Whether `unit` answers a one-register read (an exception response counts), for a
        unit-id scan; silence is the common answer, so nothing is logged."""
        async with self._turns.turn():
            try:
                await self._transact(unit, function, address, 1)
            except DeviceTimeoutError:
                return False
            except ModbusExceptionError as exc:  # a TCP gateway says the unit is not there
                return exc.exception not in _ABSENT_CODES
            except GarbledResponseError:
                return True
        return True

    async def close(self) -> None:
        """Close the line after the request in progress, if any."""
        async with self._turns.lock:
            self.transport.close()

    async def _transact(
        self, unit: int, function: RegisterFunction, address: int, count: int
    ) -> list[int]:
        self.stats.count_request(str(unit))
        if not self.transport.connected:
            await self.transport.connect()
            raise_if_cancelling()
        try:
            async with asyncio.timeout(self.timeout):
                words = await self.transport.read_registers(function, address, count, unit)
        except TimeoutError:
            raise self._timeout_error(unit) from None
        # pymodbus's wait_for drops a cancel that meets the reply; our own deadline's cancel
        # was taken back on leaving its block, so what is left is a stop asked for
        raise_if_cancelling()
        return words

    def _timeout_error(self, unit: int) -> GatewayError:
        device = f"{self.name}#{unit}"
        if self.transport.heard_reply:
            return GarbledResponseError(f"{device}: bytes received but no valid response frame")
        return DeviceTimeoutError(f"{device}: no response within {self.timeout:g} s", device=device)


class PymodbusTransport:
    """A ModbusTransport on pymodbus's asyncio clients (TCP, RTU, RTU over TCP)."""

    def __init__(
        self, spec: TransportSpec, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> None:
        self.spec = spec
        self.connect_timeout = connect_timeout
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._received = False

    @property
    def name(self) -> str:
        """The transport string without options."""
        return self.spec.describe()

    @property
    def connected(self) -> bool:
        """True while pymodbus holds an open transport."""
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the line, applying RS-485 settings to a serial port."""
        self.close()
        self._client = self._build_client()
        try:
            async with asyncio.timeout(self.connect_timeout):
                ok = await self._client.connect()
            raise_if_cancelling()  # pymodbus's wait_for drops a cancel that meets the connect
        except TimeoutError:
            ok = False
        except asyncio.CancelledError:
            self.close()
            raise
        if not ok:
            self.close()
            raise BusUnavailableError(f"{self.name}: cannot connect")
        self._apply_rs485()
        _log.info("%s: connected", self.name)

    @property
    def heard_reply(self) -> bool:
        """True if pymodbus saw any byte since the last request."""
        return self._received

    async def read_registers(
        self, function: RegisterFunction, address: int, count: int, unit: int
    ) -> list[int]:
        """One read; pymodbus retries are off, so the bus's deadline is the whole budget."""
        client = self._client
        if client is None:
            raise BusUnavailableError(f"{self.name}: not connected")
        self._received = False
        try:
            response = await self._call(client, function, address, count, unit)
        except ConnectionException as exc:
            self.close()
            raise BusUnavailableError(f"{self.name}: {exc}") from exc
        except ModbusException as exc:
            raise GarbledResponseError(f"{self.name} unit {unit}: {exc}") from exc
        return _registers(response, unit, function, address, count)

    def close(self) -> None:
        """Close the pymodbus client."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _build_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        spec = self.spec
        # Retries and reconnects are the bus owner's and the supervisor's job, not pymodbus's;
        # its own timeout is set past ours so that our wait_for always decides.
        common: dict[str, Any] = {
            "name": spec.describe(),
            "reconnect_delay": 0,
            "timeout": self.connect_timeout + 3600.0,
            "retries": 0,
            "trace_packet": self._trace_packet,
        }
        if spec.kind is TransportKind.RTU:
            return AsyncModbusSerialClient(
                spec.device,
                framer=FramerType.RTU,
                baudrate=spec.baud,
                bytesize=spec.bytesize,
                parity=spec.parity,
                stopbits=spec.stopbits,
                handle_local_echo=spec.echo,
                **common,
            )
        framer = FramerType.RTU if spec.kind is TransportKind.RTU_OVER_TCP else FramerType.SOCKET
        return AsyncModbusTcpClient(spec.host, port=spec.port, framer=framer, **common)

    @staticmethod
    async def _call(
        client: AsyncModbusTcpClient | AsyncModbusSerialClient,
        function: RegisterFunction,
        address: int,
        count: int,
        unit: int,
    ) -> Any:
        if function is RegisterFunction.HOLDING:
            return await client.read_holding_registers(address, count=count, device_id=unit)
        return await client.read_input_registers(address, count=count, device_id=unit)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._received = True
        return data

    def _apply_rs485(self) -> None:
        if not self.spec.rs485 or self._client is None:
            return
        port = getattr(self._client.ctx.transport, "sync_serial", None)
        if port is None:
            return
        import serial.rs485  # noqa: PLC0415 - pyserial is optional; only serial lines need it

        try:
            port.rs485_mode = serial.rs485.RS485Settings(**self.spec.rs485_settings())
        except (ValueError, OSError) as exc:
            self.close()
            raise ConfigError(
                f"{self.spec.key}.rs485", f"the port refused RS-485 mode: {exc}"
            ) from exc


def open_bus(
    text: str,
    *,
    key: str = "transport",
    timeout: float = DEFAULT_TIMEOUT,
    inter_frame_gap: float | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    clock: Clock | None = None,
) -> ModbusBus:
    """A bus for a transport string; the gap defaults to 3.5 characters on serial lines."""
    spec = parse_transport(text, key=key)
    gap = at_least_silence(spec, inter_frame_gap, spec.default_gap())
    transport = PymodbusTransport(spec, connect_timeout=connect_timeout)
    return ModbusBus(transport, timeout=timeout, inter_frame_gap=gap, clock=clock)


def _registers(
    response: Any, unit: int, function: RegisterFunction, address: int, count: int
) -> list[int]:
    if response.isError():
        raise _exception_error(response.exception_code, unit, function, address)
    registers = list(response.registers)
    if len(registers) != count:
        raise GarbledResponseError(
            f"unit {unit}: asked for {count} registers at {address}, got {len(registers)}"
        )
    return registers


def _exception_error(
    code: int, unit: int, function: RegisterFunction, address: int
) -> ModbusExceptionError:
    known = ModbusExceptionCode.from_wire(code)
    label = known.name.lower() if known else f"code 0x{code:02X}"
    message = f"unit {unit}: {function.label} read at {address} refused: {label}"
    cls = ModbusBusyError if known in _RETRYABLE_CODES else ModbusExceptionError
    return cls(message, code=code, unit=unit, function=int(function), address=address)
