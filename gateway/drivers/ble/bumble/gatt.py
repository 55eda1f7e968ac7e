"""GATT glue between bumble and bleak: discovery into bleak's service collection, and errors.

bleak callers expect `BleakGATTServiceCollection` with handles, normalized UUID strings and
property names, and GATT failures as `BleakGATTProtocolError` carrying the ATT error code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core, hci
from bumble.device import Peer
from bumble.gatt_client import CharacteristicProxy

from gateway.drivers.ble.bumble.scanner import uuid_from_le
from gateway.errors import DeviceTimeoutError

__all__ = ["bleak_uuid", "discover", "gatt_errors", "properties_of"]


def bleak_uuid(value: core.UUID) -> str:
    """bleak's normalized string for a bumble UUID."""
    return uuid_from_le(bytes(value.to_bytes(force_128=True)))


def properties_of(flags: int) -> list[CharacteristicPropertyName]:
    """bleak property names for a characteristic's property bits."""
    return [name for bit, name in CHARACTERISTIC_PROPERTIES.items() if flags & bit]


async def discover(
    peer: Peer, uuids: Iterable[str] | None, write_limit: Callable[[], int]
) -> BleakGATTServiceCollection:
    """Discover services (all, or those in `uuids`), characteristics and descriptors."""
    wanted = [core.UUID(u) for u in uuids] if uuids else []
    collection = BleakGATTServiceCollection()
    for service in await peer.discover_services(wanted):
        bleak_service = BleakGATTService(service, service.handle, bleak_uuid(service.uuid))
        collection.add_service(bleak_service)
        for characteristic in await peer.discover_characteristics(service=service):
            _add_characteristic(collection, bleak_service, characteristic, write_limit)
        for characteristic in service.characteristics:
            await peer.discover_descriptors(characteristic=characteristic)
            _add_descriptors(collection, characteristic)
    return collection


@asynccontextmanager
async def gatt_errors(what: str, address: str) -> AsyncIterator[None]:
    """Map bumble failures inside the block to bleak errors (or our DeviceTimeoutError)."""
    try:
        yield
    except att.ATT_Error as exc:
        raise BleakGATTProtocolError(exc.error_code) from exc
    except core.TimeoutError as exc:
        raise DeviceTimeoutError(f"{what} on {address} timed out", device=address) from exc
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # bumble cancels the pending ATT request when the link drops under it.
        raise BleakError(f"{what} on {address} failed: disconnected") from exc
    except (core.BaseBumbleError, hci.HCI_Error) as exc:
        raise BleakError(f"{what} on {address} failed: {exc!r}") from exc


def _add_characteristic(
    collection: BleakGATTServiceCollection,
    service: BleakGATTService,
    characteristic: CharacteristicProxy[bytes],
    write_limit: Callable[[], int],
) -> None:
    collection.add_characteristic(
        BleakGATTCharacteristic(
            characteristic,
            characteristic.handle,
            bleak_uuid(characteristic.uuid),
            properties_of(int(characteristic.properties)),
            write_limit,
            service,
        )
    )


def _add_descriptors(
    collection: BleakGATTServiceCollection, characteristic: CharacteristicProxy[bytes]
) -> None:
    bleak_characteristic = collection.get_characteristic(characteristic.handle)
    assert bleak_characteristic is not None
    for descriptor in characteristic.descriptors:
        collection.add_descriptor(
            BleakGATTDescriptor(
                descriptor, descriptor.handle, bleak_uuid(descriptor.type), bleak_characteristic
            )
        )
