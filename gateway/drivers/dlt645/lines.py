"""DL/T 645 lines: the byte streams a Dlt645Bus owns, chosen by a transport string.

- `dlt645-tcp://host:port`: a TCP socket (a transparent Ethernet-to-RS-485 converter, or the
  simulator), on an asyncio protocol;
- `dlt645-serial:///dev/ttyUSB0?baud=2400&parity=E`: a local serial port, 2400 baud 8E1 unless
  the string says otherwise (a pseudo-terminal is always 8N1: see `_is_pty`), with the options
  of `rtu://` (rs485, rs485_invert, echo). pyserial runs in non-blocking mode and the event
  loop reads the port (`add_reader`): no thread and no pyserial-asyncio.

Received bytes wait in an inbox the bus can flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios  # pyserial lets termios.error (not an OSError) escape from open()
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from gateway.drivers.modbus.transport import TransportKind, TransportSpec, parse_transport
from gateway.errors import ConfigError, LineUnavailableError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "Dlt645Kind",
    "Dlt645Line",
    "Dlt645LineSpec",
    "SerialLine",
    "TcpLine",
    "parse_dlt645_transport",
]

_log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 3.0
_SERIAL_DEFAULTS = (("baud", "2400"), ("parity", "E"))


class Dlt645Kind(StrEnum):
    """The scheme of a DL/T 645 transport string."""

    TCP = "dlt645-tcp"
    SERIAL = "dlt645-serial"


@dataclass(frozen=True, slots=True)
class Dlt645LineSpec:
    """A parsed DL/T 645 transport string; serial settings live in `serial`."""

    kind: Dlt645Kind
    key: str
    host: str = ""
    port: int = 0
    serial: TransportSpec | None = None

    def describe(self) -> str:
        """The string without options, for logs."""
        if self.serial is not None:
            return f"{self.kind.value}://{self.serial.device}"
        return f"{self.kind.value}://{self.host}:{self.port}"


def parse_dlt645_transport(text: str, *, key: str = "transport") -> Dlt645LineSpec:
    """Parse a DL/T 645 transport string; ConfigError naming `key` when it is wrong."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme not in {kind.value for kind in Dlt645Kind}:
        raise ConfigError(
            key, f"{text!r}: expected dlt645-tcp://host:port or dlt645-serial:///dev/tty..."
        )
    if scheme == Dlt645Kind.SERIAL:
        serial = parse_transport(_as_rtu(rest), key=key)
        return Dlt645LineSpec(Dlt645Kind.SERIAL, key, serial=serial)
    if not rest.rpartition(":")[2].isdigit():
        raise ConfigError(key, f"{text!r}: dlt645-tcp needs host:port")
    spec = parse_transport(f"rtu-over-tcp://{rest}", key=key)
    return Dlt645LineSpec(Dlt645Kind.TCP, key, host=spec.host, port=spec.port)


class Dlt645Line(Protocol):
    """What a Dlt645Bus needs from a line: a byte stream it can flush."""

    @property
    def name(self) -> str:
        """A short description for logs."""
        ...

    @property
    def connected(self) -> bool:
        """True while the line is open."""
        ...

    async def connect(self) -> None:
        """Open the line; LineUnavailableError if it cannot."""
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes for sending."""
        ...

    async def receive(self) -> bytes:
        """The next bytes received; LineUnavailableError if the line closed."""
        ...

    def flush(self) -> None:
        """Drop every byte received and not yet taken."""
        ...

    def close(self) -> None:
        """Close the line; safe to call twice."""
        ...


def _as_rtu(rest: str) -> str:
    """The rtu:// string for a serial line, with DL/T 645's 2400 baud 8E1 unless given."""
    path, _, query = rest.partition("?")
    given = {pair.split("=", 1)[0] for pair in query.split("&") if pair}
    extra = [f"{name}={value}" for name, value in _SERIAL_DEFAULTS if name not in given]
    options = "&".join([query, *extra] if query else extra)
    return f"rtu://{path}" + (f"?{options}" if options else "")


class _Inbox:
    """Bytes received by a callback-driven line, awaited by the bus."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ready = asyncio.Event()
        self.closed_because: str | None = None

    def feed(self, data: bytes) -> None:
        self._data += data
        self._ready.set()

    def close(self, reason: str) -> None:
        self.closed_because = reason
        self._ready.set()

    def flush(self) -> None:
        self._data.clear()
        self._ready.clear()

    async def take(self, name: str) -> bytes:
        while not self._data:
            if self.closed_because is not None:
                raise LineUnavailableError(f"{name}: {self.closed_because}")
            self._ready.clear()
            await self._ready.wait()
        data = bytes(self._data)
        self._data.clear()
        return data


class _InboxProtocol(asyncio.Protocol):
    """An asyncio stream protocol that feeds an _Inbox."""

    def __init__(self, inbox: _Inbox) -> None:
        self.inbox = inbox

    def data_received(self, data: bytes) -> None:
        self.inbox.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbox.close(f"connection lost: {exc}" if exc else "connection closed by peer")


class TcpLine:
    """A DL/T 645 line over TCP."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None
        self._inbox = _Inbox()

    @property
    def name(self) -> str:
        """The transport string."""
        return f"{Dlt645Kind.TCP.value}://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True while the socket is open."""
        return self._transport is not None and self._inbox.closed_because is None

    async def connect(self) -> None:
        """Open the socket."""
        self.close()
        self._inbox = _Inbox()
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: _InboxProtocol(inbox), self.host, self.port
                )
        except (OSError, TimeoutError) as exc:
            raise LineUnavailableError(f"{self.name}: cannot connect: {exc}") from exc
        self._transport = transport
        _log.info("%s: connected", self.name)

    def write(self, data: bytes) -> None:
        """Send bytes."""
        if self._transport is None:
            raise LineUnavailableError(f"{self.name}: not connected")
        self._transport.write(data)

    async def receive(self) -> bytes:
        """The next bytes from the socket."""
        return await self._inbox.take(self.name)

    def flush(self) -> None:
        """Drop unread bytes."""
        self._inbox.flush()

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self._inbox.close("closed")


class SerialLine:
    """A DL/T 645 line on a local serial port: pyserial, non-blocking, read by the event loop."""

    def __init__(self, spec: TransportSpec) -> None:
        if spec.kind is not TransportKind.RTU:
            raise ValueError("SerialLine needs a serial TransportSpec")
        self.spec = spec
        self._port: Any = None
        self._inbox = _Inbox()

    @property
    def name(self) -> str:
        """The device path."""
        return f"{Dlt645Kind.SERIAL.value}://{self.spec.device}"

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self._port is not None and self._inbox.closed_because is None

    async def connect(self) -> None:
        """Open the port and start reading it from the event loop."""
        import serial  # noqa: PLC0415 - pyserial is optional (the meters extra)

        self.close()
        self._inbox = _Inbox()
        settings = self._settings()
        try:
            self._port = serial.Serial(**settings)
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            raise LineUnavailableError(f"{self.name}: cannot open: {exc}") from exc
        self._apply_rs485()
        asyncio.get_running_loop().add_reader(self._port.fileno(), self._on_readable)
        _log.info("%s: opened at %d baud %s", self.name, self.spec.baud, settings["parity"])

    def write(self, data: bytes) -> None:
        """Send bytes; a DL/T 645 request fits the kernel's buffer, so this does not block."""
        if self._port is None:
            raise LineUnavailableError(f"{self.name}: not open")
        try:
            self._port.write(data)
        except OSError as exc:
            self._lost(str(exc))
            raise LineUnavailableError(f"{self.name}: write failed: {exc}") from exc

    async def receive(self) -> bytes:
        """The next bytes from the port."""
        return await self._inbox.take(self.name)

    def flush(self) -> None:
        """Drop unread bytes, in the kernel and here."""
        if self._port is not None:
            self._port.reset_input_buffer()
        self._inbox.flush()

    def close(self) -> None:
        """Stop reading and close the port."""
        if self._port is None:
            return
        port, self._port = self._port, None
        asyncio.get_running_loop().remove_reader(port.fileno())
        _close_without_drain(port)
        self._inbox.close("closed")

    def _settings(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "port": spec.device,
            "baudrate": spec.baud,
            "bytesize": spec.bytesize,
            "parity": "N" if _is_pty(spec.device) else spec.parity,
            "stopbits": spec.stopbits,
            "timeout": 0,
            "write_timeout": 1.0,
        }

    def _on_readable(self) -> None:
        try:
            data = self._port.read(max(self._port.in_waiting, 1))
        except OSError as exc:
            self._lost(str(exc))
            return
        if data:
            self._inbox.feed(data)

    def _lost(self, reason: str) -> None:
        _log.warning("%s: %s", self.name, reason)
        if self._port is not None:
            asyncio.get_running_loop().remove_reader(self._port.fileno())
            _close_without_drain(self._port)
            self._port = None
        self._inbox.close(reason)

    def _apply_rs485(self) -> None:
        if not self.spec.rs485:
            return
        import serial.rs485  # noqa: PLC0415 - pyserial is optional (the meters extra)

        try:
            self._port.rs485_mode = serial.rs485.RS485Settings(**self.spec.rs485_settings())
        except (ValueError, OSError) as exc:
            self.close()
            raise ConfigError(
                f"{self.spec.key}.rs485", f"the port refused RS-485 mode: {exc}"
            ) from exc


_PTY_SLAVE_MAJORS = range(136, 144)  # Unix98 pseudo-terminal slaves (Documentation/devices)


def _is_pty(device: str) -> bool:
    """True for a pseudo-terminal (the simulator's socat pair), where parity does not exist.

    A pty carries bytes, not bits on a wire, and Linux refuses PARENB on one once it has been
    set up (tcsetattr: EINVAL), so a reopened 8E1 line would stay dead: open it 8N1.
    """
    try:
        return os.major(os.stat(device).st_rdev) in _PTY_SLAVE_MAJORS
    except OSError:
        return False


def _close_without_drain(port: Any) -> None:
    """Close a port at once: discard unsent output first, so close() does not wait to drain it."""
    with contextlib.suppress(OSError, termios.error):
        termios.tcflush(port.fileno(), termios.TCOFLUSH)
    with contextlib.suppress(OSError):
        port.close()
