"""A bleak scanner backend on a shared bumble adapter, and the advertising-data parser it uses.

Advertisements reach callers through bleak's own machinery: `BLEDevice` plus
`AdvertisementData` in the detection callback, `seen_devices` for `discovered_devices`.
The parser works on raw AD structures (Core spec Supplement, Part A), is pure, and skips
malformed structures instead of failing, since anyone in radio range can send them.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.exc import BleakError
from bumble.device import Advertisement

from gateway.drivers.ble.bumble.adapter import BumbleAdapter

__all__ = ["BleakScannerBumble", "advertisement_data"]

_log = logging.getLogger(__name__)

# AD types, Bluetooth Assigned Numbers 2.3.
_UUID16 = (0x02, 0x03, 0x14)
_UUID32 = (0x04, 0x05, 0x1F)
_UUID128 = (0x06, 0x07, 0x15)
_SHORT_NAME = 0x08
_COMPLETE_NAME = 0x09
_TX_POWER = 0x0A
_SERVICE_DATA16 = 0x16
_SERVICE_DATA32 = 0x20
_SERVICE_DATA128 = 0x21
_MANUFACTURER = 0xFF

_RSSI_NOT_AVAILABLE = 127
_RSSI_UNKNOWN = -127
"""HCI reports 127 when it has no RSSI; bleak wants dBm, so report the weakest value."""


class BleakScannerBumble(BaseBleakScanner):
    """bleak scanner backend: `BleakScanner(..., backend=BleakScannerBumble, bumble_adapter=A)`."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        bumble_adapter: BumbleAdapter | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        if bumble_adapter is None:
            raise BleakError("BleakScannerBumble needs bumble_adapter=BumbleAdapter(...)")
        self._adapter = bumble_adapter
        self._active = scanning_mode != "passive"
        self._scanning = False

    async def start(self) -> None:
        """Start delivering advertisements; clears `seen_devices` as bleak requires."""
        self.seen_devices = {}
        await self._adapter.add_scan_listener(self._on_advertisement, active=self._active)
        self._scanning = True

    async def stop(self) -> None:
        """Stop delivering advertisements. Safe to call when not scanning."""
        self._scanning = False
        await self._adapter.remove_scan_listener(self._on_advertisement)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        data = advertisement_data(
            ((int(t), bytes(v)) for t, v in advertisement.data.ad_structures),
            rssi=advertisement.rssi,
            platform_data=(advertisement,),
        )
        if not self.is_allowed_uuid(data.service_uuids):
            return
        address = self._adapter.remember(advertisement.address, data.local_name)
        device = self.create_or_update_device(
            key=address,
            address=address,
            name=data.local_name,
            details=advertisement.address,
            adv=data,
        )
        self.call_detection_callbacks(device, data)


def advertisement_data(
    structures: Iterable[tuple[int, bytes]],
    *,
    rssi: int,
    platform_data: tuple[Any, ...] = (),
) -> AdvertisementData:
    """Build bleak's AdvertisementData from (AD type, value) pairs; malformed ones are skipped."""
    names: dict[int, str] = {}
    manufacturer: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    service_uuids: list[str] = []
    tx_power: int | None = None
    for ad_type, value in structures:
        if ad_type in (_SHORT_NAME, _COMPLETE_NAME):
            names[ad_type] = value.decode("utf-8", errors="replace")
        elif ad_type == _MANUFACTURER and len(value) >= 2:
            manufacturer[int.from_bytes(value[:2], "little")] = value[2:]
        elif ad_type == _TX_POWER and len(value) == 1:
            tx_power = struct.unpack("b", value)[0]
        elif (entry := _service_data(ad_type, value)) is not None:
            service_data[entry[0]] = entry[1]
        else:
            service_uuids.extend(u for u in _uuid_list(ad_type, value) if u not in service_uuids)
    return AdvertisementData(
        local_name=names.get(_COMPLETE_NAME, names.get(_SHORT_NAME)),
        manufacturer_data=manufacturer,
        service_data=service_data,
        service_uuids=service_uuids,
        tx_power=tx_power,
        rssi=_RSSI_UNKNOWN if rssi == _RSSI_NOT_AVAILABLE else rssi,
        platform_data=platform_data,
    )


def uuid_from_le(value: bytes) -> str:
    """The bleak (128-bit, lowercase) string of a little-endian 2-, 4- or 16-byte UUID."""
    if len(value) in (2, 4):
        short = int.from_bytes(value, "little")
        return f"{short:08x}-0000-1000-8000-00805f9b34fb"
    return str(uuid.UUID(bytes=value[::-1]))


def _uuid_list(ad_type: int, value: bytes) -> list[str]:
    size = (
        2 if ad_type in _UUID16 else 4 if ad_type in _UUID32 else 16 if ad_type in _UUID128 else 0
    )
    if size == 0:
        return []
    return [uuid_from_le(value[i : i + size]) for i in range(0, len(value) - size + 1, size)]


def _service_data(ad_type: int, value: bytes) -> tuple[str, bytes] | None:
    size = {_SERVICE_DATA16: 2, _SERVICE_DATA32: 4, _SERVICE_DATA128: 16}.get(ad_type)
    if size is None or len(value) < size:
        return None
    return uuid_from_le(value[:size]), value[size:]
