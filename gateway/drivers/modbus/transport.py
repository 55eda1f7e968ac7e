"""Parsing of Modbus transport strings into a validated TransportSpec; no I/O here.

modbus-tcp://host[:port]                 Modbus TCP, port 502 by default
rtu-over-tcp://host:port                 RTU frames through an Ethernet-serial converter
rtu:///dev/ttyUSB0?baud=9600&parity=N&stopbits=1&bytesize=8&rs485=1&rs485_invert=0&echo=0
                                         &rs485_delay_tx_ms=0&rs485_delay_rx_ms=0
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gateway.errors import ConfigError

__all__ = [
    "SERIAL_OPTIONS",
    "TransportKind",
    "TransportSpec",
    "at_least_silence",
    "parse_transport",
]

_log = logging.getLogger(__name__)

SERIAL_OPTIONS = frozenset(
    {"baud", "parity", "stopbits", "bytesize", "rs485", "rs485_invert", "echo"}
    | {"rs485_delay_tx_ms", "rs485_delay_rx_ms"}
)
_BITS_PER_CHAR = 11  # start + 8 data + parity or second stop + stop, as the RTU spec counts
_MIN_GAP = 0.00175  # the spec's fixed 3.5-character time above 19200 baud
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class TransportKind(StrEnum):
    """The scheme of a transport string."""

    TCP = "modbus-tcp"
    RTU = "rtu"
    RTU_OVER_TCP = "rtu-over-tcp"


@dataclass(frozen=True, slots=True)
class TransportSpec:
    """A parsed transport string; `key` is the config key it came from, for errors."""

    kind: TransportKind
    key: str = "transport"
    host: str = ""
    port: int = 0
    device: str = ""
    baud: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    rs485: bool = False
    rs485_invert: bool = False
    echo: bool = False
    rs485_delay_tx_ms: int = 0
    rs485_delay_rx_ms: int = 0

    def rs485_settings(self) -> dict[str, Any]:
        """Keyword arguments of pyserial's RS485Settings: RTS direction and turnaround delays."""
        tx_high = not self.rs485_invert
        return {
            "rts_level_for_tx": tx_high,
            "rts_level_for_rx": not tx_high,
            "delay_before_tx": self.rs485_delay_tx_ms / 1000 or None,
            "delay_before_rx": self.rs485_delay_rx_ms / 1000 or None,
        }

    def describe(self) -> str:
        """The string without options, for logs."""
        if self.kind is TransportKind.RTU:
            return f"rtu://{self.device}"
        return f"{self.kind.value}://{self.host}:{self.port}"

    def default_gap(self) -> float:
        """3.5 character times on a serial line (1.75 ms above 19200 baud), else 0."""
        if self.kind is not TransportKind.RTU:
            return 0.0
        return max(3.5 * _BITS_PER_CHAR / self.baud, _MIN_GAP)


def at_least_silence(spec: TransportSpec, configured: float | None, default: float) -> float:
    """The inter-frame gap: `default` unless configured, never under 3.5 characters on serial.

    Modbus RTU ends a frame with 3.5 character times of silence (1.75 ms above 19200 baud); a
    shorter gap lets the next request run into the end of the last reply on the wire.
    """
    gap = default if configured is None else configured
    floor = spec.default_gap()
    if gap < floor:
        _log.warning("%s: gap %.4f s is under 3.5 characters; using %.4f s", spec.key, gap, floor)
        return floor
    return gap


def parse_transport(text: str, *, key: str = "transport") -> TransportSpec:
    """Parse a transport string; ConfigError naming `key` when it is wrong."""
    parts = urlsplit(text.strip())
    try:
        kind = TransportKind(parts.scheme)
    except ValueError:
        raise ConfigError(
            key, f"{text!r}: expected modbus-tcp://host:port, rtu:///dev/tty... or rtu-over-tcp://"
        ) from None
    options = _options(key, parts.query)
    if kind is TransportKind.RTU:
        return _serial(key, parts.netloc, parts.path, options)
    if options:
        raise ConfigError(key, f"{kind.value} takes no options, got {','.join(sorted(options))}")
    if parts.path not in ("", "/"):
        raise ConfigError(key, f"{kind.value}://host:port takes no path, got {parts.path!r}")
    return _network(key, kind, text, parts.hostname, parts.netloc)


def _options(key: str, query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigError(key, f"bad options {query!r}: {exc}") from None
    options: dict[str, str] = {}
    for name, value in pairs:
        if name in options:
            raise ConfigError(key, f"option {name} given twice")
        options[name] = value
    return options


def _network(
    key: str, kind: TransportKind, text: str, host: str | None, netloc: str
) -> TransportSpec:
    if not host:
        raise ConfigError(key, f"{text!r}: missing host")
    _, sep, port_text = netloc.rpartition(":")
    if not sep or "]" in port_text:
        if kind is TransportKind.RTU_OVER_TCP:
            raise ConfigError(key, f"{text!r}: rtu-over-tcp needs a port")
        return TransportSpec(kind, key, host=host, port=502)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(key, f"{text!r}: port must be 1..65535")
    return TransportSpec(kind, key, host=host, port=int(port_text))


def _serial(key: str, netloc: str, path: str, options: dict[str, str]) -> TransportSpec:
    if netloc or not path or path == "/":
        raise ConfigError(key, "expected rtu:///dev/ttyXXX (three slashes, then the device path)")
    unknown = set(options) - SERIAL_OPTIONS
    if unknown:
        known = ",".join(sorted(SERIAL_OPTIONS))
        raise ConfigError(key, f"unknown option {sorted(unknown)[0]} (expected {known})")
    return TransportSpec(
        TransportKind.RTU,
        key,
        device=path,
        baud=_int_option(key, options, "baud", 9600, range(300, 4_000_001)),
        parity=_parity(key, options.get("parity", "N")),
        stopbits=_int_option(key, options, "stopbits", 1, (1, 2)),
        bytesize=_int_option(key, options, "bytesize", 8, (7, 8)),
        rs485=_flag(key, options, "rs485"),
        rs485_invert=_flag(key, options, "rs485_invert"),
        echo=_flag(key, options, "echo"),
        rs485_delay_tx_ms=_int_option(key, options, "rs485_delay_tx_ms", 0, range(1001)),
        rs485_delay_rx_ms=_int_option(key, options, "rs485_delay_rx_ms", 0, range(1001)),
    )


def _int_option(
    key: str, options: dict[str, str], name: str, default: int, allowed: range | tuple[int, ...]
) -> int:
    text = options.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) not in allowed:
        shown = f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range) else allowed
        raise ConfigError(key, f"{name}={text!r}: expected {shown}")
    return int(text)


def _parity(key: str, text: str) -> str:
    parity = text.upper()
    if parity not in ("N", "E", "O"):
        raise ConfigError(key, f"parity={text!r}: expected N, E or O")
    return parity


def _flag(key: str, options: dict[str, str], name: str) -> bool:
    text = options.get(name, "0").lower()
    if text not in _FLAGS:
        raise ConfigError(key, f"{name}={text!r}: expected 0 or 1")
    return _FLAGS[text]
