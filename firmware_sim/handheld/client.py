"""A simulated handheld terminal: the far end of the real handheld protocol (docs/handheld.md).

It holds what MS enrolment produces, an operator certificate and the handheld's Ed25519 device
key, in a directory (`operator.cert`, `device.key` mode 0600), and after pairing the gateway's
pinned identity (`gateway.json`). It pairs with a console code (the SPAKE2 password, side A),
opens sessions and sends the operations a field worker uses: list tickets, seal state, unseal,
seal, fetch a result.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_sim.handheld.transport import Dialer, HandheldLink, connect
from gateway.errors import AuthError, ProtocolError
from gateway.protocol.certs import encode_certificate
from gateway.protocol.handheld import (
    Message,
    PairChallenge,
    PairDone,
    Record,
    Refusal,
    SessionAccept,
)
from gateway.protocol.handheld_crypto import (
    Channel,
    HandheldHandshake,
    HandheldPairing,
    PairedGateway,
    ed25519_public_bytes,
)
from gateway.protocol.signed import b64url, b64url_decode
from master_station.authority import MasterAuthority

__all__ = [
    "HandheldIdentity",
    "HandheldRefusedError",
    "HandheldSession",
    "SimulatedHandheld",
    "enroll_handheld",
    "load_identity",
    "load_pairing",
    "save_pairing",
]

_log = logging.getLogger(__name__)

CERT_FILE = "operator.cert"
KEY_FILE = "device.key"
PAIRING_FILE = "gateway.json"


class HandheldRefusedError(AuthError):
    """The gateway refused (its reason code is in `code`)."""


@dataclass(frozen=True, slots=True)
class HandheldIdentity:
    """An operator certificate document and the handheld's device key."""

    certificate: str
    device_key: Ed25519PrivateKey


# -- files ------------------------------------------------------------------------------------


def enroll_handheld(
    directory: Path,
    authority: MasterAuthority,
    *,
    operator: str,
    name: str,
    roles: Sequence[str],
    districts: Sequence[str],
    not_before: int,
    not_after: int,
) -> HandheldIdentity:
    """Generate a device key, have MS certify it, and write both files into `directory`."""
    key = Ed25519PrivateKey.generate()
    cert = authority.enroll_operator(
        operator=operator,
        name=name,
        roles=roles,
        districts=districts,
        device_key=ed25519_public_bytes(key),
        not_before=not_before,
        not_after=not_after,
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(directory / KEY_FILE, key.private_bytes_raw(), 0o600)
    document = encode_certificate(cert).decode("utf-8")
    _write(directory / CERT_FILE, document.encode("utf-8"), 0o644)
    return HandheldIdentity(document, key)


def load_identity(directory: Path) -> HandheldIdentity:
    """Read the certificate and device key written by `enroll_handheld`."""
    raw = (directory / KEY_FILE).read_bytes()
    if len(raw) != 32:
        raise ProtocolError(f"{directory / KEY_FILE} must hold a raw 32-byte Ed25519 key")
    document = (directory / CERT_FILE).read_text(encoding="utf-8").strip()
    return HandheldIdentity(document, Ed25519PrivateKey.from_private_bytes(raw))


def save_pairing(directory: Path, paired: PairedGateway, address: str) -> None:
    """Remember the paired gateway (its pinned key) and where it listens."""
    data = {
        "gateway": paired.gateway,
        "gateway_key": b64url(paired.gateway_key),
        "paired_at": paired.paired_at,
        "address": address,
    }
    _write(directory / PAIRING_FILE, json.dumps(data, indent=1).encode("utf-8"), 0o600)


def load_pairing(directory: Path) -> tuple[PairedGateway, str]:
    """The paired gateway and its address, as `save_pairing` wrote them."""
    data = json.loads((directory / PAIRING_FILE).read_text(encoding="utf-8"))
    key = b64url_decode(data["gateway_key"], "gateway_key")
    return PairedGateway(data["gateway"], key, int(data["paired_at"])), str(data["address"])


# -- the terminal -----------------------------------------------------------------------------


class SimulatedHandheld:
    """One handheld: pairs with a gateway, then opens sessions to it."""

    def __init__(
        self,
        identity: HandheldIdentity,
        paired: PairedGateway | None = None,
        *,
        dial: Dialer = connect,
    ) -> None:
        self.identity = identity
        self.paired = paired
        self.dial = dial

    async def pair(
        self, address: str, code: str, *, gateway_fingerprint: str | None = None
    ) -> PairedGateway:
        """Run the pairing exchange with `code`; pin and return the gateway."""
        pairing = HandheldPairing(
            self.identity.certificate,
            self.identity.device_key,
            code,
            expected_fingerprint=gateway_fingerprint,
        )
        stream = await self.dial(address)
        try:
            await stream.write(pairing.hello())
            challenge = _expect(await stream.read(), PairChallenge)
            proof = pairing.on_challenge(challenge)
            await stream.write(proof)
            done = _expect(await stream.read(), PairDone)
        finally:
            await stream.close()
        self.paired = pairing.on_done(done, proof)
        _log.info("paired with gateway %s", self.paired.gateway)
        return self.paired

    async def open_session(self, address: str) -> HandheldSession:
        """A mutually authenticated session with the paired gateway."""
        if self.paired is None:
            raise HandheldRefusedError("this handheld is not paired", code="unpaired_device")
        handshake = HandheldHandshake(self.identity.device_key, self.paired)
        stream = await self.dial(address)
        try:
            await stream.write(handshake.hello())
            confirm = handshake.on_accept(_expect(await stream.read(), SessionAccept))
            await stream.write(confirm)
            channel = handshake.channel()
            ready = channel.open_ready(_expect(await stream.read(), Record))
        except BaseException:
            await stream.close()
            raise
        return HandheldSession(stream, channel, str(ready.get("operator", "")))


class HandheldSession:
    """An open session: one request at a time, each answered by its bound response."""

    def __init__(self, stream: HandheldLink, channel: Channel, operator: str) -> None:
        self.stream = stream
        self.channel = channel
        self.operator = operator

    async def __aenter__(self) -> HandheldSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request and return the decrypted response body."""
        record = self.channel.seal_request(body)
        return await self.exchange(record)

    async def exchange(self, record: Record) -> dict[str, Any]:
        """Send a prepared record (tests replay and reorder with this) and open the answer."""
        await self.stream.write(record)
        answer = _expect(await self.stream.read(), Record)
        return self.channel.open_response(answer, record)

    async def tickets(self) -> list[dict[str, Any]]:
        """The operator's tickets held by the gateway."""
        return list(_ok(await self.request({"op": "list_tickets"}))["tickets"])

    async def seal_state(self, seal_id: str) -> dict[str, Any]:
        """The gateway's belief about a seal."""
        return dict(_ok(await self.request({"op": "seal_state", "seal_id": seal_id}))["seal"])

    async def unseal(
        self, seal_id: str, work_order: str, ticket_id: str | None = None
    ) -> dict[str, Any]:
        """Ask to unseal under a work order; the ticket is looked up when not given."""
        return await self._lock_op("unseal", seal_id, work_order, ticket_id)

    async def seal(
        self, seal_id: str, work_order: str, ticket_id: str | None = None
    ) -> dict[str, Any]:
        """Ask to seal under a work order; the ticket is looked up when not given."""
        return await self._lock_op("seal", seal_id, work_order, ticket_id)

    async def result(self, op_id: str) -> dict[str, Any]:
        """The current outcome of an operation."""
        return dict(_ok(await self.request({"op": "result", "op_id": op_id}))["operation"])

    async def close(self) -> None:
        """End the session."""
        await self.stream.close()

    async def _lock_op(
        self, op: str, seal_id: str, work_order: str, ticket_id: str | None
    ) -> dict[str, Any]:
        ticket = ticket_id or await self._find_ticket(op, seal_id, work_order)
        body = {"op": op, "seal_id": seal_id, "work_order": work_order, "ticket_id": ticket}
        return dict(_ok(await self.request(body))["operation"])

    async def _find_ticket(self, op: str, seal_id: str, work_order: str) -> str:
        for ticket in await self.tickets():
            if (
                ticket["work_order"] == work_order
                and seal_id in ticket["seals"]
                and op in ticket["ops"]
            ):
                return str(ticket["ticket_id"])
        raise HandheldRefusedError(
            f"no ticket lets you {op} {seal_id} for {work_order}", code="unknown_ticket"
        )


def _expect(message: Message, kind: type[Any]) -> Any:
    if isinstance(message, Refusal):
        raise HandheldRefusedError(
            f"gateway refused: {message.reason} {message.detail}".strip(), code=message.reason
        )
    if not isinstance(message, kind):
        raise ProtocolError(f"expected {kind.__name__}, got {type(message).__name__}")
    return message


def _ok(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    if answer.get("ok") is not True:
        code = str(answer.get("error", "refused"))
        raise HandheldRefusedError(f"{code} {answer.get('detail', '')}".strip(), code=code)
    return answer


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
