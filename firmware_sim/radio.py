"""The bench radio: bumble virtual controllers on one LocalLink, one of them served over TCP HCI.

Locks run a bumble `Device` on their own controller of the link. The gateway's controller is
exposed on a TCP socket, so the gateway opens it with `ble.adapter = "bumble:tcp-client:HOST:PORT"`
and drives it through the real HCI, L2CAP, ATT and GATT stack, exactly as it would drive a USB
dongle. This is what bumble's `bumble-controllers` app does, with two fixes to the virtual
controller that a gateway relies on (see `SpecController`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any

from bumble import hci, ll
from bumble.controller import Controller
from bumble.core import PhysicalTransport
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink, StreamPacketSource, Transport

__all__ = [
    "HciServer",
    "KernelFacingController",
    "RadioLink",
    "SpecController",
    "VhciController",
    "attach_host",
    "attach_vhci",
    "serve_controller",
]

_log = logging.getLogger(__name__)
_bumble_log = logging.getLogger("bumble.controller")


class SpecController(Controller):
    """A bumble virtual controller that cancels connections and resets as the spec says.

    The stock controller acknowledges LE Create Connection Cancel but never completes the
    pending connection, so a host waiting for it hangs and the controller refuses every later
    connect. Its HCI Reset also keeps links of a previous host. Core spec Vol 4, Part E,
    7.8.13 and 7.3.2.

    It also formats packets only when debug logging is on: bumble 0.0.236's
    `Controller.on_hci_packet` and `send_hci_packet` build their debug line with an f-string,
    so every HCI packet (every advertising report) is turned into coloured text and thrown
    away; that was a fifth of the simulator's CPU with twenty locks advertising.
    """

    def on_hci_packet(self, packet: hci.HCI_Packet) -> None:
        """Dispatch a packet from the host (bumble's own method when debug logging is on)."""
        if _bumble_log.isEnabledFor(logging.DEBUG):
            super().on_hci_packet(packet)
        elif isinstance(packet, hci.HCI_Command):
            self.on_hci_command_packet(packet)
        elif isinstance(packet, hci.HCI_AclDataPacket):
            self.on_hci_acl_data_packet(packet)
        else:
            super().on_hci_packet(packet)

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        """Hand a packet to the host (bumble's own method when debug logging is on)."""
        if _bumble_log.isEnabledFor(logging.DEBUG):
            super().send_hci_packet(packet)
        elif self.host:
            asyncio.get_running_loop().call_soon(self.host.on_packet, bytes(packet))

    def on_hci_le_create_connection_cancel_command(
        self, command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        """Complete the pending connection with Unknown Connection Identifier (0x02)."""
        del command
        pending: Any = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        event = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address.address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # The spec orders this event after the Command Complete the caller is about to send.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, event)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    def on_hci_reset_command(
        self, command: hci.HCI_Reset_Command
    ) -> hci.HCI_StatusReturnParameters:
        """Drop the links, pending connect and scan of the previous host."""
        del command
        reason = hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR
        for peer_address, connection in list(self.le_connections.items()):
            connection.send_ll_control_pdu(ll.TerminateInd(reason))
            del self.le_connections[peer_address]
        self.pending_le_connection = None
        self.le_scan_enable = False
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)


@dataclass(slots=True)
class HciServer:
    """A controller on the link, reachable by one host at a time over TCP HCI."""

    controller: SpecController
    host: str
    port: int
    _transport: Any

    @property
    def adapter(self) -> str:
        """The gateway's `ble.adapter` string for this controller."""
        return f"bumble:tcp-client:{self.host}:{self.port}"

    def drop_host(self) -> None:
        """Cut the TCP connection of the current host, as a crashed simulator would."""
        tcp = self._transport.sink.transport
        if tcp is not None:
            tcp.close()

    async def close(self) -> None:
        """Stop listening, cut the host and leave the link."""
        self.drop_host()
        server = self._transport.server
        server.close()
        await server.wait_closed()
        await self._transport.close()
        self.controller.link.remove_controller(self.controller)


async def serve_controller(
    link: LocalLink, *, host: str = "127.0.0.1", port: int = 0, name: str = "gateway"
) -> HciServer:
    """Put a `SpecController` on `link` and serve its HCI on host:port (0 picks a free port)."""
    # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted sockets; without it, Nagle and
    # delayed ACKs add about 40 ms to every ATT round trip.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
        transport = await _open_tcp_hci_server(sock)
    except BaseException:
        sock.close()
        raise
    bound_port = int(sock.getsockname()[1])
    controller = SpecController(
        name, host_source=transport.source, host_sink=transport.sink, link=link
    )
    _log.info("controller %s served over TCP HCI on %s:%d", name, host, bound_port)
    return HciServer(controller, host, bound_port, transport)


class _HostSink:
    """Packets to the current host; dropped while none is connected."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None

    def on_packet(self, packet: bytes) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.write(packet)


class _HostProtocol(asyncio.Protocol):
    """One host connection of a TCP HCI server.

    Unlike bumble's tcp-server transport (0.0.236), a late `connection_lost` of a previous
    host does not detach the host that has just connected: a handheld process that closes its
    host and opens the next one at once would otherwise get no answer to HCI Reset.
    """

    def __init__(self, source: StreamPacketSource, sink: _HostSink) -> None:
        self._source = source
        self._sink = sink
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._sink.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sink.transport is self._transport:
            self._sink.transport = None

    def data_received(self, data: bytes) -> None:
        if self._sink.transport is self._transport:
            self._source.data_received(data)


class _TcpHciServer(Transport):
    def __init__(self, source: StreamPacketSource, sink: _HostSink, server: asyncio.Server):
        super().__init__(source, sink)
        self.server = server


async def _open_tcp_hci_server(sock: socket.socket) -> _TcpHciServer:
    source, sink = StreamPacketSource(), _HostSink()
    server = await asyncio.get_running_loop().create_server(
        lambda: _HostProtocol(source, sink), sock=sock
    )
    return _TcpHciServer(source, sink, server)


def attach_host(controller: Controller) -> tuple[Controller, AsyncPipeSink]:
    """The (source, sink) pair a bumble Host uses to drive `controller` in-process."""
    return controller, AsyncPipeSink(controller)


class RadioLink(LocalLink):
    """The bench's LocalLink: LE data from the connection's address, a link that tolerates a
    peer gone, and controllers that go out of range.

    Workaround for bumble 0.0.236, `bumble.link.LocalLink.send_acl_data`: LE ACL data is
    tagged with the sending controller's *random* address even when the connection was made
    with its public one. Linux scans with a throwaway non-resolvable random address and then
    connects from its public address, so every peer drops every packet from BlueZ ("no
    connection for ..."). Reported in docs/ble-transport.md ("bumble LocalLink addressing").
    Harmless for bumble hosts, which use one address for both.

    Workaround for bumble 0.0.236, `LocalLink.send_ll_control_pdu`: it raises when the peer
    has left the link, so a controller's Disconnect command sends Command Status but never
    "Disconnection Complete", and its host waits for ever (a simulator stopping after the
    gateway's controller left hung there). Over the air an LL PDU to nobody is simply lost:
    here it is dropped. Reported in docs/ble-transport.md ("bumble LocalLink disconnect").

    `leave_range(controller)` is what a real radio does when a device is carried away or loses
    its battery: nothing it sends is heard and nothing reaches it, and every LE link it had
    ends on both sides after the supervision timeout with "Connection Timeout" (0x08). bumble's
    LocalLink has no such notion: links to a removed controller stay up for ever.
    `enter_range(controller)` brings it back.
    """

    SUPERVISION_TIMEOUT_S = 0.42
    """Linux's default LE supervision timeout (42 x 10 ms), what BlueZ asks for."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._away: set[Controller] = set()

    def leave_range(self, controller: Controller) -> None:
        """From now on `controller` is not heard; its links time out on both sides."""
        if controller in self._away:
            return
        self._away.add(controller)
        asyncio.get_running_loop().call_later(
            self.SUPERVISION_TIMEOUT_S, self._time_out_links, controller
        )

    def enter_range(self, controller: Controller) -> None:
        """`controller` is heard again (its links, if any timed out, stay gone)."""
        self._away.discard(controller)

    def out_of_range(self, controller: Controller) -> bool:
        """True while `controller` is away."""
        return controller in self._away

    def send_acl_data(
        self,
        sender_controller: Controller,
        destination_address: hci.Address,
        transport: PhysicalTransport,
        data: bytes,
    ) -> None:
        """Deliver LE ACL data from the connection's own address; BR/EDR as bumble does."""
        if transport != PhysicalTransport.LE:
            super().send_acl_data(sender_controller, destination_address, transport, data)
            return
        if sender_controller in self._away:
            return
        connection = sender_controller.le_connections.get(destination_address)
        source = connection.self_address if connection else sender_controller.random_address
        destination = self.find_le_controller(destination_address)
        if destination is not None and destination not in self._away:
            asyncio.get_running_loop().call_soon(
                destination.on_link_acl_data, source, transport, data
            )

    def send_advertising_pdu(self, sender_controller: Controller, packet: Any) -> None:
        """Every other controller in range hears it; one out of range is not heard."""
        if sender_controller in self._away:
            return
        loop = asyncio.get_running_loop()
        for controller in list(self.controllers):
            if controller is not sender_controller and controller not in self._away:
                loop.call_soon(controller.on_ll_advertising_pdu, packet)

    def send_ll_control_pdu(
        self, sender_address: hci.Address, receiver_address: hci.Address, packet: Any
    ) -> None:
        """Deliver an LL control PDU; one to or from nobody in range is lost, as on air."""
        receiver = self.find_le_controller(receiver_address)
        sender = self.find_le_controller(sender_address)
        if receiver is None or receiver in self._away or sender in self._away:
            _log.debug("LL PDU %s from %s to %s lost", packet, sender_address, receiver_address)
            return
        asyncio.get_running_loop().call_soon(receiver.on_ll_control_pdu, sender_address, packet)

    def _time_out_links(self, away: Controller) -> None:
        if away not in self._away:
            return  # back within the supervision timeout: the links survive, as on air
        reason = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR
        addresses = {c.self_address for c in away.le_connections.values()}
        addresses |= {away.public_address, away.random_address}
        for controller in list(self.controllers):
            if controller is away:
                continue
            for connection in list(controller.le_connections.values()):
                if connection.peer_address in addresses:
                    controller.on_le_disconnected(connection, reason)
        for connection in list(away.le_connections.values()):
            away.on_le_disconnected(connection, reason)


class KernelFacingController(SpecController):
    """A SpecController for a Linux host: LE Enhanced Connection Complete when it was asked for.

    Workaround for bumble 0.0.236, `bumble.controller.Controller`: it always reports "LE
    Connection Complete" and ignores the host's LE event mask. Core spec Vol 4, Part E,
    7.7.65.10: when the host unmasked "LE Enhanced Connection Complete" the controller must
    send that event instead. Linux (for a controller that claims LL privacy) waits for the
    enhanced event, cancels the connection after about 4 s, and later disconnects hang.
    Reported in docs/ble-transport.md ("bumble enhanced connection complete").
    """

    ENHANCED_CONNECTION_COMPLETE = 1 << (0x0A - 1)

    def send_hci_packet(self, packet: Any) -> None:
        """Send `packet`, as the enhanced event where the spec says so."""
        if isinstance(packet, hci.HCI_LE_Connection_Complete_Event) and (
            self.le_event_mask & self.ENHANCED_CONNECTION_COMPLETE
        ):
            packet = hci.HCI_LE_Enhanced_Connection_Complete_Event(
                status=packet.status,
                connection_handle=packet.connection_handle,
                role=packet.role,
                peer_address_type=packet.peer_address_type,
                peer_address=packet.peer_address,
                local_resolvable_private_address=hci.Address.ANY_RANDOM,
                peer_resolvable_private_address=hci.Address.ANY_RANDOM,
                connection_interval=packet.connection_interval,
                peripheral_latency=packet.peripheral_latency,
                supervision_timeout=packet.supervision_timeout,
                central_clock_accuracy=packet.central_clock_accuracy,
            )
        super().send_hci_packet(packet)


@dataclass(slots=True)
class VhciController:
    """A controller on the link whose host is the Linux kernel, through /dev/vhci."""

    controller: KernelFacingController
    _transport: Any
    adapter: str = "bluez:hci0"

    async def close(self) -> None:
        """Leave the link and close /dev/vhci (the kernel removes the hci device)."""
        await self._transport.close()
        self.controller.link.remove_controller(self.controller)


async def attach_vhci(
    link: LocalLink, *, device: str = "/dev/vhci", adapter: str = "bluez:hci0"
) -> VhciController:
    """Put a KernelFacingController on `link` with /dev/vhci as its host (Linux, root, hci_vhci).

    The kernel then sees a new hciN; bluetoothd and bleak's BlueZ backend drive it, so the
    gateway runs with `ble.adapter = "bluez:hci0"` against the simulated locks.
    """
    transport = await open_transport(f"vhci:{device}")
    controller = KernelFacingController(
        "gateway", host_source=transport.source, host_sink=transport.sink, link=link,
        public_address="F0:F0:F0:F0:F0:F0",
    )  # fmt: skip
    _log.info("controller on %s: the kernel's Bluetooth adapter (%s)", device, adapter)
    return VhciController(controller, transport, adapter)
