"""BLE transport selection: one `ble.adapter` string picks BlueZ or bumble, callers see only bleak.

- `bluez:hci0` (or `bluez` for the system default): bleak's own BlueZ backend on that adapter.
- `bumble:<bumble transport>`: our bleak backend on bumble, e.g. `bumble:tcp-client:HOST:PORT`
  for the simulator's virtual controller, or `bumble:usb:0` for a dongle driven directly.

The rest of the gateway calls `make_scanner(...)` and `make_client(address)` on a
`BleTransport` and gets `BleakScanner` / `BleakClient` back, so simulator versus hardware is a
config change only. `BleAdapters` opens each adapter string once and closes them at shutdown.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementDataCallback

from gateway.drivers.ble.bluez_watch import wait_bluez_lost
from gateway.errors import ConfigError

__all__ = [
    "ADAPTER_KEY",
    "AdapterSpec",
    "BleAdapters",
    "BleTransport",
    "BlueZTransport",
    "open_ble_transport",
    "parse_adapter",
]

ADAPTER_KEY = "ble.adapter"

ScanningMode = Literal["active", "passive"]


class BleTransport(Protocol):
    """Factories for bleak objects bound to one adapter."""

    adapter: str

    def make_scanner(
        self,
        detection_callback: AdvertisementDataCallback | None = None,
        *,
        service_uuids: list[str] | None = None,
        scanning_mode: ScanningMode = "active",
    ) -> BleakScanner: ...

    def make_client(
        self,
        address_or_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[BleakClient], None] | None = None,
        timeout: float = 10.0,
    ) -> BleakClient: ...

    async def wait_lost(self) -> str | None:
        """Return when the adapter loses its controller, or the stack under it restarted (the
        scan supervisor then reopens it); say what happened when the transport knows."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """A parsed `ble.adapter`: BlueZ adapter name (None = default) or bumble transport string."""

    kind: Literal["bluez", "bumble"]
    target: str | None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target}"


def parse_adapter(value: object) -> AdapterSpec:
    """Parse a `ble.adapter` string; raise ConfigError naming the key when it is wrong."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            ADAPTER_KEY, "must be a string like 'bluez:hci0' or 'bumble:tcp-client:HOST:PORT'"
        )
    text = value.strip()
    kind, _, rest = text.partition(":")
    if kind == "bluez":
        return _parse_bluez(rest, has_colon=":" in text)
    if kind == "bumble":
        return AdapterSpec("bumble", _check_bumble_transport(rest))
    raise ConfigError(
        ADAPTER_KEY, f"unknown adapter kind {kind!r} in {text!r}; use 'bluez:' or 'bumble:'"
    )


def open_ble_transport(adapter: str) -> BleTransport:
    """A transport for one adapter string. Nothing is opened until a scan or connect starts."""
    spec = parse_adapter(adapter)
    if spec.kind == "bluez":
        return BlueZTransport(spec.target)
    try:
        from gateway.drivers.ble.bumble.backend import BumbleTransport  # noqa: PLC0415 - bumble is optional
    except ImportError as exc:
        raise ConfigError(ADAPTER_KEY, f"bumble adapters need the bumble package ({exc})") from exc
    assert spec.target is not None
    return BumbleTransport.from_spec(str(spec), spec.target)


class BleAdapters:
    """Transports by adapter string, each opened once and all closed at shutdown."""

    def __init__(self) -> None:
        self._transports: dict[str, BleTransport] = {}

    def get(self, adapter: str) -> BleTransport:
        """The shared transport for `adapter` (equivalent spellings share one)."""
        key = str(parse_adapter(adapter))
        transport = self._transports.get(key)
        if transport is None:
            transport = open_ble_transport(key)
            self._transports[key] = transport
        return transport

    async def close(self) -> None:
        """Close every transport handed out."""
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.close()


class BlueZTransport:
    """bleak's default BlueZ backend, pinned to one adapter (`hci0`), or the system default."""

    def __init__(self, hci_name: str | None) -> None:
        self.hci_name = hci_name
        self.adapter = "bluez" if hci_name is None else f"bluez:{hci_name}"

    def make_scanner(
        self,
        detection_callback: AdvertisementDataCallback | None = None,
        *,
        service_uuids: list[str] | None = None,
        scanning_mode: ScanningMode = "active",
    ) -> BleakScanner:
        """A BleakScanner on this adapter (passive mode needs BlueZ or_patterns; not used here)."""
        if self.hci_name is None:
            return BleakScanner(detection_callback, service_uuids, scanning_mode)
        return BleakScanner(
            detection_callback, service_uuids, scanning_mode, bluez={"adapter": self.hci_name}
        )

    def make_client(
        self,
        address_or_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[BleakClient], None] | None = None,
        timeout: float = 10.0,
    ) -> BleakClient:
        """A BleakClient on this adapter."""
        if self.hci_name is None:
            return BleakClient(address_or_device, disconnected_callback, timeout=timeout)
        return BleakClient(
            address_or_device,
            disconnected_callback,
            timeout=timeout,
            bluez={"adapter": self.hci_name},
        )

    async def wait_lost(self) -> str:
        """Return when bluetoothd left the system bus or removed the adapter: a restarted
        bluetoothd runs no discovery for the gateway, so the scanner must start again
        (gateway/drivers/ble/bluez_watch.py)."""
        return await wait_bluez_lost(self.hci_name)

    async def close(self) -> None:
        """Nothing to close: BlueZ owns the adapter; clients disconnect themselves."""


_HCI_NAME = re.compile(r"hci\d{1,3}")

# bumble.transport.open_transport schemes; those in the second set need no parameters.
_BUMBLE_SCHEMES = frozenset(
    {
        "serial", "udp", "tcp-client", "tcp-server", "ws-client", "ws-server", "pty", "file",
        "vhci", "hci-socket", "usb", "pyusb", "android-emulator", "android-netsim", "unix",
        "unix-client", "unix-server",
    }
)  # fmt: skip
_BUMBLE_OPTIONAL_SPEC = frozenset(
    {"pty", "vhci", "hci-socket", "android-emulator", "android-netsim"}
)
_HOST_PORT_SCHEMES = frozenset({"tcp-client", "tcp-server"})


def _parse_bluez(rest: str, *, has_colon: bool) -> AdapterSpec:
    if not has_colon:
        return AdapterSpec("bluez", None)
    if not _HCI_NAME.fullmatch(rest):
        raise ConfigError(ADAPTER_KEY, f"BlueZ adapter must be named like 'hci0', got {rest!r}")
    return AdapterSpec("bluez", rest)


def _check_bumble_transport(transport: str) -> str:
    scheme, _, params = transport.partition(":")
    if scheme not in _BUMBLE_SCHEMES:
        known = ", ".join(sorted(_BUMBLE_SCHEMES))
        raise ConfigError(ADAPTER_KEY, f"unknown bumble transport {scheme!r}; known: {known}")
    if not params and scheme not in _BUMBLE_OPTIONAL_SPEC:
        raise ConfigError(ADAPTER_KEY, f"bumble transport {scheme!r} needs parameters")
    if scheme in _HOST_PORT_SCHEMES:
        _check_host_port(scheme, params)
    return transport


def _check_host_port(scheme: str, params: str) -> None:
    host, _, port = params.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            ADAPTER_KEY, f"bumble {scheme} needs HOST:PORT with a port 1-65535, got {params!r}"
        )
