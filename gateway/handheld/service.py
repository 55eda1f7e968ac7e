"""The gateway side of handheld terminals: pairing codes, pairing, sessions, request dispatch.

One connection is either a pairing or a session (docs/handheld.md). Pairing proves the MS
certificate, possession of its device key and knowledge of the one-time code shown on the
console (through SPAKE2, so each wrong code costs one counted online attempt); sessions prove
both identities again and then carry AEAD records whose requests go to the OperationsBackend.
Every attempt, success, denial and request is an audit event, committed through `emit` before
the gateway acts on it. Codes never appear in events or logs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.auth.config import DEFAULT_SKEW_S
from gateway.auth.policy import GatewayTrust, OperationRequest, decide_read
from gateway.errors import AuthError, GatewayError, ProtocolError, StorageError
from gateway.handheld.api import OperationsBackend
from gateway.handheld.budget import FailureBudget
from gateway.handheld.config import HandheldSection
from gateway.handheld.store import PairedDevice, PairedDeviceStore
from gateway.handheld.transport import MessageStream
from gateway.protocol.canonical import JSONValue
from gateway.protocol.certs import OperatorCertificate, RevocationList, decode_certificate
from gateway.protocol.clock import Clock
from gateway.protocol.events import Emit, EventType, Priority, make_draft
from gateway.protocol.handheld import (
    PROTOCOL_VERSION,
    REFUSAL_VERSIONS,
    HandheldReason,
    Message,
    PairHello,
    PairProof,
    Record,
    Refusal,
    SessionConfirm,
    SessionHello,
    UnsupportedVersionError,
)
from gateway.protocol.handheld_crypto import (
    Channel,
    GatewayHandshake,
    GatewayPairing,
    ed25519_public_bytes,
    key_fingerprint,
)

__all__ = ["CODE_DIGITS", "HandheldService", "IssuedCode"]

_log = logging.getLogger(__name__)

CODE_DIGITS = 8
Revocations = Callable[[], RevocationList | None]
M = TypeVar("M")
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TICKET_ID = re.compile(r"^[0-9a-f]{32}$")
_LOCK_OPS = ("unseal", "seal")
_AUDITED_ARGS = ("seal_id", "work_order", "ticket_id", "op_id")


class _RefusedError(GatewayError):
    """Internal: end the exchange with `reason` (already decided, to be audited)."""

    def __init__(
        self, reason: HandheldReason | str, detail: str = "", *, version: int = PROTOCOL_VERSION
    ) -> None:
        super().__init__(detail or str(reason))
        self.reason = str(reason)
        self.detail = detail
        self.version = version


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """A pairing code for the console: the digits, when it expires, how many tries it allows."""

    code: str
    expires_at: datetime
    ttl_s: float
    max_attempts: int


@dataclass(slots=True)
class _CodeState:
    code: str
    expires_mono: float
    max_attempts: int
    failures: int = 0
    used: bool = False


class HandheldService:
    """Serves handheld connections (pairing or session) for one gateway."""

    def __init__(
        self,
        section: HandheldSection,
        *,
        identity: Ed25519PrivateKey,
        trust: GatewayTrust,
        store: PairedDeviceStore,
        backend: OperationsBackend,
        emit: Emit,
        clock: Clock,
        skew_s: int = DEFAULT_SKEW_S,
        revocations: Revocations = lambda: None,
    ) -> None:
        self.section = section
        self._identity = identity
        self._trust = trust
        self._store = store
        self._backend = backend
        self._emit = emit
        self._clock = clock
        self._skew_s = skew_s
        self._revocations = revocations
        self._code: _CodeState | None = None
        self.failure_budget = FailureBudget(clock.monotonic)

    # -- pairing codes (console) ---------------------------------------------------------

    async def issue_pairing_code(self, ttl_s: float | None = None) -> IssuedCode:
        """A fresh one-time code, replacing any earlier one; audited without the digits."""
        ttl = float(ttl_s if ttl_s is not None else self.section.code_ttl_s)
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        attempts = self.section.max_attempts
        expires_at = self._clock.now() + timedelta(seconds=ttl)
        data: dict[str, JSONValue] = {"ttl_s": ttl, "max_attempts": attempts}
        await self._audit(EventType.HANDHELD_PAIRING_CODE_ISSUED, self._trust.gateway_id, data)
        self._code = _CodeState(code, self._clock.monotonic() + ttl, attempts)
        _log.info("pairing code issued, valid %g s", ttl)
        return IssuedCode(code, expires_at, ttl, attempts)

    async def pair_command(self) -> dict[str, Any]:
        """The control socket's `pair` handler: a fresh code for `sealgw pair` to print."""
        issued = await self.issue_pairing_code()
        return {
            "code": issued.code,
            "expires_at": issued.expires_at.astimezone(UTC).isoformat(timespec="seconds"),
            "ttl_s": issued.ttl_s,
            "max_attempts": issued.max_attempts,
            "gateway": self._trust.gateway_id,
            "gateway_key": key_fingerprint(ed25519_public_bytes(self._identity)),
        }

    # -- connections ---------------------------------------------------------------------

    async def handle(self, stream: MessageStream) -> None:
        """Serve one connection: a pairing or a session, then close."""
        try:
            first = await self._read(stream, object, self.section.handshake_timeout_s)
        except _RefusedError as refused:
            if refused.reason == HandheldReason.TIMEOUT:  # said nothing: not a session attempt
                _log.debug("silent handheld connection closed")
                return
            await self._deny_session(stream, refused, self._trust.gateway_id, {})
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if isinstance(first, PairHello):
            await self._guard(stream, self._pair(stream, first))
        elif isinstance(first, SessionHello):
            await self._guard(stream, self._session(stream, first))
        else:
            unexpected = _RefusedError(HandheldReason.UNEXPECTED_MESSAGE, type(first).__name__)
            await self._deny_session(stream, unexpected, self._trust.gateway_id, {})

    async def _guard(self, stream: MessageStream, work: Awaitable[None]) -> None:
        try:
            await work
        except (asyncio.IncompleteReadError, ConnectionError):
            _log.debug("handheld went away")
        except StorageError as exc:
            _log.warning("handheld refused, audit events cannot be stored: %s", exc)
            await _send_refusal(stream, _RefusedError(HandheldReason.STORAGE_FULL))

    # -- pairing -------------------------------------------------------------------------

    async def _pair(self, stream: MessageStream, hello: PairHello) -> None:
        subject, data = self._trust.gateway_id, {}
        try:
            cert = _parse_cert(hello.certificate, self._trust)
            subject, data = cert.operator, _cert_data(cert)
            await self._audit_refusal(stream, EventType.HANDHELD_PAIRING_ATTEMPT, subject, data)
            self._check_cert(cert)
            snapshot, code = self._code_for_pairing()
            pairing = _start_pairing(self._identity, self._trust.gateway_id, hello, cert, code)
            await stream.write(pairing.challenge())
            proof = await self._read(stream, PairProof, self.section.handshake_timeout_s)
            self._check_proof(pairing, proof, cert, snapshot)
        except _RefusedError as refused:
            if subject == self._trust.gateway_id:
                await self._audit_refusal(stream, EventType.HANDHELD_PAIRING_ATTEMPT, subject, data)
            await self._audit_refusal(
                stream, EventType.HANDHELD_PAIRING_FAILED, subject, _refusal_data(refused, data)
            )
            await _send_refusal(stream, refused)
            return
        await self._complete_pairing(stream, pairing, proof, cert)

    async def _complete_pairing(
        self,
        stream: MessageStream,
        pairing: GatewayPairing,
        proof: PairProof,
        cert: OperatorCertificate,
    ) -> None:
        paired_at = int(self._clock.now().timestamp())
        device = PairedDevice(
            cert.operator, cert.device_key, cert.serial, paired_at, pairing.hello.certificate
        )
        await self._audit(
            EventType.HANDHELD_PAIRED, cert.operator, {**_cert_data(cert), "at": paired_at}
        )
        self._store.add(device)
        _log.info("handheld of %s paired (certificate %s)", cert.operator, cert.serial)
        await stream.write(pairing.done(proof, paired_at))

    def _check_cert(self, cert: OperatorCertificate) -> None:
        moment = self._clock.now().timestamp()
        if moment < cert.not_before - self._skew_s:
            raise _RefusedError(HandheldReason.CERTIFICATE_NOT_YET_VALID, f"{cert.not_before}")
        if moment > cert.not_after + self._skew_s:
            raise _RefusedError(HandheldReason.CERTIFICATE_EXPIRED, f"{cert.not_after}")
        revocations = self._revocations()
        if revocations is not None and (
            revocations.revokes_certificate(cert.serial)
            or revocations.revokes_operator(cert.operator)
        ):
            raise _RefusedError(HandheldReason.CERTIFICATE_REVOKED, cert.serial)
        if self._trust.district not in cert.districts:
            raise _RefusedError(HandheldReason.DISTRICT_OUT_OF_SCOPE, self._trust.district)

    def _code_for_pairing(self) -> tuple[_CodeState | None, str]:
        """The live code and its state, or a random stand-in: the challenge tells nothing."""
        try:
            state = self._live_code()
        except _RefusedError:
            return None, f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        return state, state.code

    def _check_proof(
        self,
        pairing: GatewayPairing,
        proof: PairProof,
        cert: OperatorCertificate,
        snapshot: _CodeState | None,
    ) -> None:
        """Device signature first, then the code's state, then the key-confirmation MAC."""
        if not pairing.device_signed(proof, cert.device_key):
            raise _RefusedError(HandheldReason.STOLEN_CERTIFICATE_NO_KEY, "device signature")
        state = self._live_code()
        if state is not snapshot:
            raise _RefusedError(HandheldReason.CODE_EXPIRED, "a new code replaced it; retry")
        if not pairing.code_matches(proof):
            state.failures += 1
            left = state.max_attempts - state.failures
            raise _RefusedError(HandheldReason.BAD_CODE, f"{left} attempts left")
        state.used = True

    def _live_code(self) -> _CodeState:
        state = self._code
        if state is None:
            raise _RefusedError(HandheldReason.NO_CODE, "run `sealgw pair` on the gateway")
        if state.used:
            raise _RefusedError(HandheldReason.CODE_USED, "the code was already used")
        if self._clock.monotonic() >= state.expires_mono:
            raise _RefusedError(HandheldReason.CODE_EXPIRED, "ask for a new code")
        if state.failures >= state.max_attempts:
            raise _RefusedError(HandheldReason.TOO_MANY_ATTEMPTS, "ask for a new code")
        return state

    # -- sessions ------------------------------------------------------------------------

    async def _session(self, stream: MessageStream, hello: SessionHello) -> None:
        device = self._store.get(hello.device_key)
        subject = device.operator if device else self._trust.gateway_id
        data: dict[str, JSONValue] = {"device": key_fingerprint(hello.device_key)}
        try:
            device = self._check_device(device)
            handshake = GatewayHandshake(self._identity, self._trust.gateway_id, hello)
            await stream.write(handshake.accept())
            confirm = await self._read(stream, SessionConfirm, self.section.handshake_timeout_s)
            channel = _confirm(handshake, confirm)
        except _RefusedError as refused:
            await self._deny_session(stream, refused, subject, data)
            return
        data["session"] = channel.session_id.hex()
        await self._audit(EventType.HANDHELD_SESSION_OPENED, device.operator, data)
        await stream.write(channel.seal_ready({"operator": device.operator}))
        await self._serve_records(stream, channel, device, data)

    def _check_device(self, device: PairedDevice | None) -> PairedDevice:
        if device is None:
            raise _RefusedError(HandheldReason.UNPAIRED_DEVICE, "pair with a code first")
        try:
            cert = _parse_cert(device.certificate, self._trust)
        except _RefusedError:
            raise _RefusedError(HandheldReason.BAD_CERTIFICATE, device.cert_serial) from None
        self._check_cert(cert)
        return device

    async def _serve_records(
        self,
        stream: MessageStream,
        channel: Channel,
        device: PairedDevice,
        data: dict[str, JSONValue],
    ) -> None:
        count = 0
        while True:
            try:
                record = await self._read(stream, Record, self.section.idle_timeout_s)
                body = _open(channel, record)
            except _RefusedError as refused:
                if refused.reason != HandheldReason.TIMEOUT:
                    await self._deny_session(stream, refused, device.operator, data)
                    return
                break
            except asyncio.IncompleteReadError:
                break
            count += 1
            answer = await self._dispatch(device, body, record.ctr, data)
            await stream.write(channel.seal_response(answer, record))
        await self._audit(
            EventType.HANDHELD_SESSION_CLOSED, device.operator, {**data, "requests": count}
        )

    async def _deny_session(
        self,
        stream: MessageStream,
        refused: _RefusedError,
        subject: str,
        data: Mapping[str, JSONValue],
    ) -> None:
        _log.info("handheld session denied: %s", refused.reason)
        denied = _refusal_data(refused, data)
        await self._audit_refusal(stream, EventType.HANDHELD_SESSION_DENIED, subject, denied)
        await _send_refusal(stream, refused)

    # -- requests ------------------------------------------------------------------------

    async def _dispatch(
        self,
        device: PairedDevice,
        body: Mapping[str, Any],
        ctr: int,
        session: Mapping[str, JSONValue],
    ) -> dict[str, JSONValue]:
        op = body.get("op")
        args = {k: str(body[k])[:64] for k in _AUDITED_ARGS if k in body}
        audit: dict[str, JSONValue] = {**session, "op": str(op)[:32], "ctr": ctr, **args}
        await self._audit(EventType.HANDHELD_REQUEST, device.operator, audit)
        try:
            return await self._answer(device, op, body)
        except ProtocolError as exc:
            return {"ok": False, "error": "bad_request", "detail": str(exc)[:200]}

    async def _answer(
        self, device: PairedDevice, op: Any, body: Mapping[str, Any]
    ) -> dict[str, JSONValue]:
        if op == "list_tickets":
            tickets = await self._backend.list_tickets(device.operator)
            return {"ok": True, "tickets": [t.to_json() for t in tickets]}
        if op == "seal_state":
            seal_id = _need(body, "seal_id", _ID)
            refusal = self._read_refusal(device)
            if refusal is not None:
                return refusal
            status = await self._backend.seal_state(seal_id)
            return {"ok": True, "seal": status.to_json()} if status else _unknown("seal")
        if op in _LOCK_OPS:
            outcome = await self._backend.execute(_operation(device, str(op), body))
            return {"ok": True, "operation": outcome.to_json()}
        if op == "result":
            found = await self._backend.result(_need(body, "op_id", _ID))
            if found is None or found.operator != device.operator:
                return _unknown("operation")
            return {"ok": True, "operation": found.to_json()}
        raise ProtocolError(f"unknown op {str(op)[:32]!r}")

    def _read_refusal(self, device: PairedDevice) -> dict[str, JSONValue] | None:
        """The policy's read rule for `device`'s operator; None when the read may go ahead."""
        try:
            cert = _parse_cert(device.certificate, self._trust)
        except _RefusedError:
            return {"ok": False, "error": HandheldReason.BAD_CERTIFICATE.value, "detail": ""}
        decision = decide_read(
            cert,
            revocations=self._revocations(),
            now=self._clock.now(),
            skew_s=self._skew_s,
            gateway=self._trust,
        )
        if decision.allowed or decision.reason is None:
            return None
        _log.info("seal_state refused to %s: %s", device.operator, decision.reason)
        return {"ok": False, "error": decision.reason.value, "detail": decision.detail[:200]}

    # -- helpers -------------------------------------------------------------------------

    async def _read(self, stream: MessageStream, kind: type[M], limit_s: float) -> M:
        try:
            async with asyncio.timeout(limit_s):
                message: Message = await stream.read()
        except TimeoutError:
            raise _RefusedError(HandheldReason.TIMEOUT, f"nothing within {limit_s:g} s") from None
        except UnsupportedVersionError as exc:
            answer_in = exc.version if exc.version in REFUSAL_VERSIONS else PROTOCOL_VERSION
            raise _RefusedError(
                HandheldReason.UNSUPPORTED_VERSION, str(exc), version=answer_in
            ) from None
        except ProtocolError as exc:
            raise _RefusedError(HandheldReason.MALFORMED, str(exc)[:200]) from None
        if not isinstance(message, kind):
            raise _RefusedError(HandheldReason.UNEXPECTED_MESSAGE, type(message).__name__)
        return message

    async def _audit_refusal(
        self, stream: MessageStream, kind: EventType, subject: str, data: Mapping[str, JSONValue]
    ) -> None:
        """Audit a pairing attempt or a refusal within the peer's budget; count it beyond."""
        suppressed = self.failure_budget.take(stream.peer)
        if suppressed is None:
            return
        await self._audit(kind, subject, {**data, "suppressed": suppressed} if suppressed else data)

    async def _audit(self, kind: EventType, subject: str, data: Mapping[str, JSONValue]) -> None:
        await self._emit(make_draft(self._clock.now(), kind, subject, dict(data), Priority.AUDIT))


# -- module helpers ---------------------------------------------------------------------------


def _parse_cert(document: str, trust: GatewayTrust) -> OperatorCertificate:
    try:
        return decode_certificate(document, trust.master_key)
    except (ProtocolError, AuthError) as exc:
        raise _RefusedError(HandheldReason.BAD_CERTIFICATE, str(exc)[:200]) from None


def _start_pairing(
    identity: Ed25519PrivateKey,
    gateway_id: str,
    hello: PairHello,
    cert: OperatorCertificate,
    code: str,
) -> GatewayPairing:
    try:
        return GatewayPairing(identity, gateway_id, hello, cert.device_key, code)
    except AuthError as exc:  # the handheld's SPAKE2 message is not a group element
        raise _RefusedError(HandheldReason.MALFORMED, str(exc)[:200]) from None


def _confirm(handshake: GatewayHandshake, confirm: SessionConfirm) -> Channel:
    try:
        return handshake.on_confirm(confirm)
    except AuthError as exc:
        raise _RefusedError(exc.code, str(exc)) from None


def _open(channel: Channel, record: Record) -> dict[str, Any]:
    try:
        return channel.open_request(record)
    except AuthError as exc:
        raise _RefusedError(exc.code, str(exc)) from None
    except ProtocolError as exc:
        raise _RefusedError(HandheldReason.MALFORMED, str(exc)[:200]) from None


def _operation(device: PairedDevice, op: str, body: Mapping[str, Any]) -> OperationRequest:
    return OperationRequest(
        operator=device.operator,
        device_key=device.device_key,
        ticket_id=_need(body, "ticket_id", _TICKET_ID),
        work_order=_need(body, "work_order", _ID),
        seal_id=_need(body, "seal_id", _ID),
        op=op,
    )


def _need(body: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ProtocolError(f"{name} is missing or malformed")
    return value


def _unknown(what: str) -> dict[str, JSONValue]:
    return {"ok": False, "error": f"unknown_{what}", "detail": ""}


def _cert_data(cert: OperatorCertificate) -> dict[str, JSONValue]:
    return {
        "operator": cert.operator,
        "cert_serial": cert.serial,
        "device": key_fingerprint(cert.device_key),
    }


def _refusal_data(refused: _RefusedError, data: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    return {**data, "reason": refused.reason, "detail": refused.detail[:200]}


async def _send_refusal(stream: MessageStream, refused: _RefusedError) -> None:
    try:
        await stream.write(Refusal(refused.reason, refused.detail[:200]), version=refused.version)
    except (ConnectionError, OSError):
        _log.debug("handheld gone before the refusal")
