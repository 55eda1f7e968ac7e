"""The daemon's optional services, built from the config: authorization, locks, meters, handhelds.

Each is built only when its section asks for it. Optional dependencies are imported only
then: bleak (and bumble) when locks are configured here, pymodbus when a Modbus bus is
(gateway.meters.readers), so a minimal gateway neither needs nor loads them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.auth.authorization import Authorization
from gateway.auth.provision import load_identity
from gateway.config.model import GatewayConfig
from gateway.daemon.supervisor import Supervisor
from gateway.errors import ConfigError
from gateway.handheld.service import HandheldService
from gateway.handheld.store import HANDHELDS_FILE, PairedDeviceStore
from gateway.handheld.transport import BLE_LISTEN, HandheldServer
from gateway.locks.view import NoSealsKnown, SealStateView
from gateway.meters.service import MeterService
from gateway.protocol.canonical import JSONValue
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit
from gateway.protocol.wallclock import clock_synchronized
from gateway.store.buffer import EventBuffer
from gateway.store.state_files import CorruptFile
from gateway.uplink.commands import CommandDispatcher
from gateway.uplink.uplink import Uplink

if TYPE_CHECKING:
    from gateway.drivers.ble.adapters import BleAdapters
    from gateway.handheld.ble import BleHandheldServer
    from gateway.handheld.ble_bluez import BluezHandheldServer
    from gateway.locks.service import LockService

ControlHandler = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class Services:
    """What this gateway runs besides its buffer and uplink."""

    authorization: Authorization | None = None
    ble_adapters: BleAdapters | None = None
    locks: LockService | None = None
    meters: MeterService | None = None
    handheld: HandheldService | None = None
    handheld_server: HandheldServer | BleHandheldServer | BluezHandheldServer | None = None
    handheld_store: PairedDeviceStore | None = None

    @property
    def seals(self) -> SealStateView:
        return self.locks if self.locks is not None else NoSealsKnown()

    def start(self, supervisor: Supervisor) -> None:
        """Run each service under the supervisor."""
        if self.locks is not None:
            supervisor.start("locks", self.locks.run)
        if self.meters is not None:
            supervisor.start("meters", self.meters.run)
        if self.handheld_server is not None:
            supervisor.start("handheld", self.handheld_server.run)

    def corrupt_files(self) -> list[CorruptFile]:
        """State files found corrupt and moved aside while the services opened them."""
        found: list[CorruptFile] = []
        if self.authorization is not None:
            found += self.authorization.corrupt
        if self.locks is not None and self.locks.store.corrupt is not None:
            found.append(self.locks.store.corrupt)
        if self.meters is not None and self.meters.memory.corrupt is not None:
            found.append(self.meters.memory.corrupt)
        if self.handheld_store is not None and self.handheld_store.corrupt is not None:
            found.append(self.handheld_store.corrupt)
        return found

    def control_handlers(self) -> dict[str, ControlHandler]:
        """Extra commands on the local control socket."""
        return {"pair": self.handheld.pair_command} if self.handheld is not None else {}

    def snapshot(self) -> dict[str, JSONValue]:
        """The services' part of gateway.health."""
        return {
            "locks": self.locks.snapshot() if self.locks is not None else {},
            "meters": self.meters.snapshot() if self.meters is not None else {},
        }

    async def close(self) -> None:
        """Release devices and files after the supervisor stopped the tasks."""
        if self.handheld_server is not None:
            await self.handheld_server.stop()
        if self.locks is not None:
            self.locks.close()
        if self.ble_adapters is not None:
            await self.ble_adapters.close()
        if self.meters is not None:
            await self.meters.close()
        if self.authorization is not None:
            self.authorization.close()


def build_services(
    config: GatewayConfig,
    *,
    clock: Clock,
    buffer: EventBuffer,
    uplink: Uplink,
    dispatcher: CommandDispatcher,
) -> Services:
    """Build the services the config asks for, in dependency order."""
    services = Services()
    services.authorization = _authorization(config, clock, dispatcher)
    if config.ble.locks:
        _add_locks(services, config, clock, buffer, uplink)
    services.meters = _meters(config, clock, buffer.submit, services.seals)
    if config.handheld.enabled:
        _add_handheld(services, config, clock, buffer.submit)
    return services


def _authorization(
    config: GatewayConfig, clock: Clock, dispatcher: CommandDispatcher
) -> Authorization | None:
    if config.authorization.master_key_file is None:
        return None
    authorization = Authorization(config.gateway, config.authorization, clock)
    authorization.register(dispatcher)
    return authorization


def _require_authorization(services: Services, what: str) -> Authorization:
    if services.authorization is None:
        raise ConfigError("authorization.master_key_file", f"needed to serve {what}")
    return services.authorization


def _add_locks(
    services: Services, config: GatewayConfig, clock: Clock, buffer: EventBuffer, uplink: Uplink
) -> None:
    from gateway.drivers.ble.adapters import BleAdapters  # noqa: PLC0415 - bleak is optional (the ble extra)
    from gateway.locks.service import LockService  # noqa: PLC0415 - bleak is optional (the ble extra)

    authorization = _require_authorization(services, "seal locks")
    services.ble_adapters = BleAdapters()
    services.locks = LockService(
        config.ble,
        gateway_id=config.gateway.id,
        transport=services.ble_adapters.get(config.ble.adapter),
        emit=buffer.submit,
        storage_full=lambda: buffer.storage_full,
        tickets=authorization.tickets,
        trust=authorization.trust,
        table=authorization.table,
        skew_s=authorization.skew_s,
        clock=clock,
        state_dir=config.gateway.state_dir,
        publish_state=uplink.set_retained,
    )


def _meters(
    config: GatewayConfig, clock: Clock, emit: Emit, seals: SealStateView
) -> MeterService | None:
    if not config.meters.meters:
        return None
    return MeterService(
        config.meters,
        emit,
        clock,
        seals,
        district=config.gateway.district,
        theft=config.theft,
        state_dir=config.gateway.state_dir,
        clock_synced=clock_synchronized,
    )


def _add_handheld(
    services: Services,
    config: GatewayConfig,
    clock: Clock,
    emit: Emit,
) -> None:

    authorization = _require_authorization(services, "handhelds")
    if services.locks is None:
        raise ConfigError("handheld.enabled", "handhelds need seal locks ([[ble.locks]])")
    state_dir = config.gateway.state_dir
    services.handheld_store = PairedDeviceStore.open(state_dir / HANDHELDS_FILE)
    services.handheld = HandheldService(
        config.handheld,
        identity=load_identity(state_dir),
        trust=authorization.trust,
        store=services.handheld_store,
        backend=services.locks.operations,
        emit=emit,
        clock=clock,
        skew_s=authorization.skew_s,
        revocations=authorization.tickets.revocations,
    )
    if config.handheld.listen == BLE_LISTEN:
        services.handheld_server = _ble_handheld_server(services, config, services.handheld)
    else:
        services.handheld_server = HandheldServer(config.handheld.listen, services.handheld.handle)


def _ble_handheld_server(
    services: Services, config: GatewayConfig, handheld: HandheldService
) -> BleHandheldServer | BluezHandheldServer:
    """The handheld GATT service on the locks' adapter; its links count in their budget."""
    from gateway.drivers.ble.adapters import BlueZTransport  # noqa: PLC0415 - bleak is optional

    assert services.ble_adapters is not None and services.locks is not None
    transport = services.ble_adapters.get(config.ble.adapter)
    name = f"sealgw-{config.gateway.id}"
    budget = services.locks.scheduler.budget
    if isinstance(transport, BlueZTransport):
        from gateway.handheld.ble_bluez import BluezHandheldServer  # noqa: PLC0415 - dbus-fast is optional

        return BluezHandheldServer(transport.hci_name, handheld.handle, name=name, slots=budget)
    from gateway.drivers.ble.bumble.backend import BumbleTransport  # noqa: PLC0415 - bumble is optional
    from gateway.handheld.ble import BleHandheldServer  # noqa: PLC0415 - bumble is optional

    if not isinstance(transport, BumbleTransport):
        raise ConfigError("handheld.listen", "ble needs a bluez: or bumble: adapter")
    return BleHandheldServer(
        transport.bumble_adapter,
        handheld.handle,
        name=name,
        slots=budget,
        max_links=config.ble.max_connections - 1,
    )
