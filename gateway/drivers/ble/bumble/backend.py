"""The bench BLE transport: bleak's API on a bumble HCI stack (virtual controller or dongle).

`BumbleTransport` hands out ordinary `BleakScanner` and `BleakClient` objects whose backends
are `BleakScannerBumble` and `BleakClientBumble`, all sharing one `BumbleAdapter` (one bumble
Device on one HCI transport). Only `adapters` imports this module, and only when an
adapter string says `bumble:`, so a BlueZ gateway never needs bumble installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementDataCallback

from gateway.drivers.ble.bumble.adapter import BumbleAdapter
from gateway.drivers.ble.bumble.client import BleakClientBumble
from gateway.drivers.ble.bumble.scanner import BleakScannerBumble

__all__ = ["BleakClientBumble", "BleakScannerBumble", "BumbleAdapter", "BumbleTransport"]


class BumbleTransport:
    """Scanner and client factories on one bumble adapter; see `gateway.drivers.ble.adapters`."""

    def __init__(self, adapter: str, bumble_adapter: BumbleAdapter) -> None:
        self.adapter = adapter
        self.bumble_adapter = bumble_adapter

    @classmethod
    def from_spec(cls, adapter: str, transport_spec: str) -> BumbleTransport:
        """A transport for `adapter` (the config string) on bumble transport `transport_spec`."""
        return cls(adapter, BumbleAdapter.from_transport(transport_spec))

    def make_scanner(
        self,
        detection_callback: AdvertisementDataCallback | None = None,
        *,
        service_uuids: list[str] | None = None,
        scanning_mode: Literal["active", "passive"] = "active",
    ) -> BleakScanner:
        """A BleakScanner on this adapter; nothing is opened until it starts."""
        return BleakScanner(
            detection_callback,
            service_uuids,
            scanning_mode,
            backend=BleakScannerBumble,
            bumble_adapter=self.bumble_adapter,
        )

    def make_client(
        self,
        address_or_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[BleakClient], None] | None = None,
        timeout: float = 10.0,
    ) -> BleakClient:
        """A BleakClient on this adapter; nothing is opened until it connects."""
        return BleakClient(
            address_or_device,
            disconnected_callback,
            timeout=timeout,
            backend=BleakClientBumble,
            bumble_adapter=self.bumble_adapter,
        )

    async def wait_lost(self) -> None:
        """Return when the adapter's HCI transport is lost (at once when it is not open)."""
        await self.bumble_adapter.wait_lost()

    async def close(self) -> None:
        """Disconnect every link and close the HCI transport."""
        await self.bumble_adapter.close()
