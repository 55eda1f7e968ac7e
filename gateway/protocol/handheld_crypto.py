"""Handheld protocol cryptography: pairing and session handshakes, and the record channel.

Pure and synchronous: the objects here hold handshake state and keys, never sockets.
- Pairing: SPAKE2 (python-spake2, Ed25519 group, sides A = handheld and B = gateway) with the
  one-time code as password, so a code guess can only be tested online, against the gateway
  (which counts it) or against the handheld (one guess per pairing run). The gateway signs
  transcript 1 with its Ed25519 identity, the handheld signs transcript 2 with its certified
  device key, and both key-confirmation MACs use a key from the SPAKE2 output and TH2.
- Sessions (SIGMA-style): ephemeral X25519, both identity signatures over the transcript,
  key-confirmation MACs, then per-direction ChaCha20-Poly1305 keys from HKDF-SHA256.
- Records: strictly consecutive counters in nonce and AD; responses bound to their request.
Specified in docs/handheld.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spake2 import SPAKE2_A, SPAKE2_B, SPAKEError

from gateway.errors import AuthCode, AuthError, ProtocolError
from gateway.protocol.canonical import canonical_bytes
from gateway.protocol.certs import parse_certificate
from gateway.protocol.handheld import (
    MAX_COUNTER,
    NONCE_LEN,
    HandheldReason,
    Message,
    PairChallenge,
    PairDone,
    PairHello,
    PairProof,
    Record,
    RecordKind,
    SessionAccept,
    SessionConfirm,
    SessionHello,
    message_fields,
)
from gateway.protocol.strict_json import load_object

__all__ = [
    "Channel",
    "GatewayHandshake",
    "GatewayPairing",
    "HandheldHandshake",
    "HandheldPairing",
    "PairedGateway",
    "Role",
    "ed25519_public_bytes",
    "key_fingerprint",
    "pairing_key",
    "pairing_transcript",
    "pake_password",
]

DOMAIN = b"sealgw/v1 handheld "
SESSION_ID_LEN = 16
PAKE_ID_HANDHELD = DOMAIN + b"handheld"
"""SPAKE2 idA. The identities proper (certificate, keys, gateway id) are bound by TH1."""
PAKE_ID_GATEWAY = DOMAIN + b"gateway"
"""SPAKE2 idB."""
Entropy = Callable[[int], bytes]
_AUTH_MEMBERS = frozenset({"sig", "mac"})


class Role(Enum):
    """Which end of a channel this is; it picks the send and receive keys."""

    HANDHELD = "handheld"
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class PairedGateway:
    """What a handheld keeps after pairing: the gateway id and its pinned identity key."""

    gateway: str
    gateway_key: bytes
    paired_at: int


def key_fingerprint(public_key: bytes) -> str:
    """First 16 hex digits of SHA-256 of a raw public key: what the console and events show."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def ed25519_public_bytes(key: Ed25519PrivateKey) -> bytes:
    """Raw 32-byte Ed25519 public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# -- pairing (SPAKE2) -------------------------------------------------------------------------


class HandheldPairing:
    """The handheld's side of pairing with one code (SPAKE2 side A)."""

    def __init__(
        self,
        certificate: str,
        device_key: Ed25519PrivateKey,
        code: str,
        *,
        expected_fingerprint: str | None = None,
        random: Entropy = os.urandom,
    ) -> None:
        self._device = device_key
        self._certified_key = _certified_device_key(certificate)
        self._expected = expected_fingerprint
        nonce = random(NONCE_LEN)
        self._spake = SPAKE2_A(
            pake_password(code), idA=PAKE_ID_HANDHELD, idB=PAKE_ID_GATEWAY, entropy_f=random
        )
        self._hello = PairHello(certificate, self._spake.start(), nonce)
        self._th2 = b""
        self._kpair = b""
        self._challenge: PairChallenge | None = None

    def hello(self) -> PairHello:
        """The first message."""
        return self._hello

    def on_challenge(self, challenge: PairChallenge) -> PairProof:
        """Check the pin and the gateway's signature, finish SPAKE2; sign and MAC transcript 2.

        Nothing is accepted yet: the gateway's key is pinned only by on_done, after its MAC.
        """
        if self._expected is not None and not hmac.compare_digest(
            self._expected.lower().encode("utf-8"), key_fingerprint(challenge.gateway_key).encode()
        ):
            raise AuthError(
                "gateway identity is not the expected one", code=AuthCode.GATEWAY_MISMATCH
            )
        th1 = pairing_transcript(self._hello, challenge, self._certified_key)
        _verify(challenge.gateway_key, b"pair gateway", th1, challenge.sig, AuthCode.BAD_GATEWAY)
        spake_key = _finish(self._spake, challenge.pake, AuthCode.BAD_GATEWAY)
        self._th2 = _transcript("pair 2", th1, challenge.sig)
        self._kpair = pairing_key(spake_key, self._th2)
        self._challenge = challenge
        sig = self._device.sign(DOMAIN + b"pair device\x00" + self._th2)
        return PairProof(sig, _mac(self._kpair, b"handheld", self._th2))

    def on_done(self, done: PairDone, proof: PairProof) -> PairedGateway:
        """Check the gateway's key-confirmation MAC (it knew the code); return what to pin."""
        if self._challenge is None:
            raise ProtocolError("pair_done before pair_challenge")
        expected = pairing_done_mac(self._kpair, self._th2, proof, done.paired_at)
        if not hmac.compare_digest(expected, done.mac):
            raise AuthError("gateway did not prove the pairing code", code=AuthCode.BAD_GATEWAY)
        return PairedGateway(self._challenge.gateway, self._challenge.gateway_key, done.paired_at)


class GatewayPairing:
    """The gateway's side of one pairing attempt (SPAKE2 side B), after it has read the hello.

    `code` is the live code, or a random stand-in when there is none, so that the challenge
    looks the same either way and the code's state is told only after the device signature.
    """

    def __init__(
        self,
        identity: Ed25519PrivateKey,
        gateway_id: str,
        hello: PairHello,
        device_key: bytes,
        code: str,
        *,
        random: Entropy = os.urandom,
    ) -> None:
        self.hello = hello
        nonce = random(NONCE_LEN)
        spake = SPAKE2_B(
            pake_password(code), idA=PAKE_ID_HANDHELD, idB=PAKE_ID_GATEWAY, entropy_f=random
        )
        draft = PairChallenge(gateway_id, ed25519_public_bytes(identity), spake.start(), nonce, b"")
        th1 = pairing_transcript(hello, draft, device_key)
        sig = identity.sign(DOMAIN + b"pair gateway\x00" + th1)
        self._challenge = PairChallenge(draft.gateway, draft.gateway_key, draft.pake, nonce, sig)
        self._th2 = _transcript("pair 2", th1, sig)
        self._kpair = pairing_key(_finish(spake, hello.pake, HandheldReason.MALFORMED), self._th2)

    def challenge(self) -> PairChallenge:
        """The signed challenge to send."""
        return self._challenge

    def device_signed(self, proof: PairProof, device_key: bytes) -> bool:
        """True when the proof is signed by the certificate's device key."""
        return _signature_ok(device_key, b"pair device", self._th2, proof.sig)

    def code_matches(self, proof: PairProof) -> bool:
        """True when the handheld's key-confirmation MAC verifies (constant-time compare)."""
        return hmac.compare_digest(_mac(self._kpair, b"handheld", self._th2), proof.mac)

    def done(self, proof: PairProof, paired_at: int) -> PairDone:
        """The final message, proving to the handheld that this gateway showed the code."""
        return PairDone(paired_at, pairing_done_mac(self._kpair, self._th2, proof, paired_at))


def pake_password(code: str) -> bytes:
    """The SPAKE2 password: the domain, `pair code`, a zero byte, the code's ASCII digits."""
    return DOMAIN + b"pair code\x00" + code.encode("utf-8")


def pairing_transcript(hello: PairHello, challenge: PairChallenge, device_key: bytes) -> bytes:
    """TH1: both SPAKE2 messages, the certificate, the device key and the gateway's identity."""
    return _transcript(
        "pair 1", _unsigned(hello), _unsigned(challenge), device_key, challenge.gateway_key
    )


def pairing_key(spake_key: bytes, th2: bytes) -> bytes:
    """K_pair = HKDF(IKM = SPAKE2 output, salt = TH2): the key of both confirmation MACs."""
    return _hkdf(spake_key, th2, b"pair key")


def pairing_done_mac(kpair: bytes, th2: bytes, proof: PairProof, paired_at: int) -> bytes:
    """The gateway's confirmation: MAC over TH3 = T("pair 3", TH2, sig_H, mac_H) and paired_at."""
    th3 = _transcript("pair 3", th2, proof.sig, proof.mac)
    return _mac(kpair, b"gateway", th3 + paired_at.to_bytes(8, "big"))


def _certified_device_key(certificate: str) -> bytes:
    """The device key the certificate names (TH1 binds it; the gateway checks the MS signature)."""
    try:
        return parse_certificate(certificate).device_key
    except (ProtocolError, ValueError) as exc:
        raise ProtocolError(f"the handheld's certificate does not parse: {exc}") from None


def _finish(spake: SPAKE2_A | SPAKE2_B, inbound: bytes, code: str) -> bytes:
    """The SPAKE2 output; a peer message off the group or from the wrong side raises AuthError."""
    try:
        key: bytes = spake.finish(inbound)
    except (SPAKEError, ValueError, AssertionError) as exc:
        raise AuthError(f"bad SPAKE2 message: {type(exc).__name__}", code=code) from None
    return key


# -- sessions -------------------------------------------------------------------------------


class HandheldHandshake:
    """The handheld's side of a session handshake with a paired gateway."""

    def __init__(self, device_key: Ed25519PrivateKey, paired: PairedGateway) -> None:
        self._device = device_key
        self._paired = paired
        self._eph = X25519PrivateKey.generate()
        self._hello = SessionHello(
            ed25519_public_bytes(device_key), _x25519_public(self._eph), os.urandom(NONCE_LEN)
        )
        self._channel: Channel | None = None

    def hello(self) -> SessionHello:
        """The first message."""
        return self._hello

    def on_accept(self, accept: SessionAccept) -> SessionConfirm:
        """Authenticate the gateway (pinned key, MAC); sign the transcript; derive the keys."""
        if accept.gateway != self._paired.gateway:
            raise AuthError(
                f"gateway {accept.gateway} is not the paired one", code=AuthCode.BAD_GATEWAY
            )
        th1 = _transcript("session 1", _unsigned(self._hello), _unsigned(accept))
        _verify(self._paired.gateway_key, b"session gateway", th1, accept.sig, AuthCode.BAD_GATEWAY)
        shared = _exchange(self._eph, accept.eph)
        kconfirm = _hkdf(shared, th1, b"session confirm")
        if not hmac.compare_digest(_mac(kconfirm, b"gateway", th1), accept.mac):
            raise AuthError("gateway key confirmation failed", code=AuthCode.BAD_GATEWAY)
        th2 = _transcript("session 2", th1, accept.sig, accept.mac)
        sig = self._device.sign(DOMAIN + b"session device\x00" + th2)
        confirm = SessionConfirm(sig, _mac(kconfirm, b"handheld", th2))
        th3 = _transcript("session 3", th2, confirm.sig, confirm.mac)
        self._channel = Channel(Role.HANDHELD, shared, th3)
        return confirm

    def channel(self) -> Channel:
        """The record channel, once on_accept has succeeded."""
        if self._channel is None:
            raise ProtocolError("handshake not complete")
        return self._channel


class GatewayHandshake:
    """The gateway's side of a session handshake, after it has read the hello."""

    def __init__(self, identity: Ed25519PrivateKey, gateway_id: str, hello: SessionHello) -> None:
        eph = X25519PrivateKey.generate()
        self.hello = hello
        self._shared = _exchange(eph, hello.eph)
        draft = SessionAccept(gateway_id, _x25519_public(eph), os.urandom(NONCE_LEN), b"", b"")
        self._th1 = _transcript("session 1", _unsigned(hello), _unsigned(draft))
        self._kconfirm = _hkdf(self._shared, self._th1, b"session confirm")
        sig = identity.sign(DOMAIN + b"session gateway\x00" + self._th1)
        mac = _mac(self._kconfirm, b"gateway", self._th1)
        self._accept = SessionAccept(draft.gateway, draft.eph, draft.nonce, sig, mac)
        self._th2 = _transcript("session 2", self._th1, sig, mac)

    def accept(self) -> SessionAccept:
        """The signed answer to send."""
        return self._accept

    def on_confirm(self, confirm: SessionConfirm) -> Channel:
        """Check the device signature (key from the hello) and MAC; return the channel."""
        if not _signature_ok(self.hello.device_key, b"session device", self._th2, confirm.sig):
            raise AuthError(
                "session not signed by the paired device key",
                code=HandheldReason.STOLEN_CERTIFICATE_NO_KEY,
            )
        if not hmac.compare_digest(_mac(self._kconfirm, b"handheld", self._th2), confirm.mac):
            raise AuthError("handheld key confirmation failed", code=HandheldReason.BAD_RECORD)
        th3 = _transcript("session 3", self._th2, confirm.sig, confirm.mac)
        return Channel(Role.GATEWAY, self._shared, th3)


# -- the record channel -----------------------------------------------------------------------


class Channel:
    """One end of an established session: AEAD records with strictly consecutive counters."""

    def __init__(self, role: Role, shared: bytes, th3: bytes) -> None:
        h2g = ChaCha20Poly1305(_hkdf(shared, th3, b"session handheld to gateway"))
        g2h = ChaCha20Poly1305(_hkdf(shared, th3, b"session gateway to handheld"))
        self.role = role
        self.session_id = th3[:SESSION_ID_LEN]
        self._send, self._recv = (h2g, g2h) if role is Role.HANDHELD else (g2h, h2g)
        self._sent = 0
        self._received = 0

    # handheld side

    def seal_request(self, body: Mapping[str, Any]) -> Record:
        """Encrypt the next request (counters start at 1)."""
        self._require(Role.HANDHELD)
        ctr = self._next_send()
        ad = _record_ad(self.session_id, RecordKind.REQUEST, ctr, b"")
        return Record(RecordKind.REQUEST, ctr, self._seal(ctr, body, ad))

    def open_response(self, record: Record, request: Record) -> dict[str, Any]:
        """Decrypt the response to `request`; anything else raises AuthError."""
        self._require(Role.HANDHELD)
        if record.kind is not RecordKind.RESPONSE or record.ctr != request.ctr:
            raise AuthError("response does not answer the request", code=HandheldReason.BAD_RECORD)
        ad = _record_ad(self.session_id, RecordKind.RESPONSE, record.ctr, _digest(request.ct))
        return self._open(record, ad)

    def open_ready(self, record: Record) -> dict[str, Any]:
        """Decrypt the gateway's `ready` record (counter 0)."""
        self._require(Role.HANDHELD)
        if record.kind is not RecordKind.READY or record.ctr != 0:
            raise AuthError("expected the ready record", code=HandheldReason.BAD_RECORD)
        return self._open(record, _record_ad(self.session_id, RecordKind.READY, 0, b""))

    # gateway side

    def seal_ready(self, body: Mapping[str, Any]) -> Record:
        """Encrypt the `ready` record that tells the handheld the session is open."""
        self._require(Role.GATEWAY)
        ad = _record_ad(self.session_id, RecordKind.READY, 0, b"")
        return Record(RecordKind.READY, 0, self._seal(0, body, ad))

    def open_request(self, record: Record) -> dict[str, Any]:
        """Decrypt a request; reject tampered, replayed and reordered records (AuthError)."""
        self._require(Role.GATEWAY)
        if record.kind is not RecordKind.REQUEST:
            raise AuthError(
                f"unexpected {record.kind.value} record", code=HandheldReason.BAD_RECORD
            )
        ad = _record_ad(self.session_id, RecordKind.REQUEST, record.ctr, b"")
        body = self._open(record, ad)
        if record.ctr <= self._received:
            raise AuthError(
                f"counter {record.ctr} already seen", code=HandheldReason.REPLAYED_REQUEST
            )
        if record.ctr != self._received + 1:
            raise AuthError(
                f"counter {record.ctr} after {self._received}",
                code=HandheldReason.REORDERED_REQUEST,
            )
        self._received = record.ctr
        return body

    def seal_response(self, body: Mapping[str, Any], request: Record) -> Record:
        """Encrypt the answer to `request`, bound to its counter and ciphertext."""
        self._require(Role.GATEWAY)
        ad = _record_ad(self.session_id, RecordKind.RESPONSE, request.ctr, _digest(request.ct))
        return Record(RecordKind.RESPONSE, request.ctr, self._seal(request.ctr, body, ad))

    # internals

    def _next_send(self) -> int:
        if self._sent >= MAX_COUNTER:
            raise AuthError(
                "session counter exhausted; open a new session", code=HandheldReason.BAD_RECORD
            )
        self._sent += 1
        return self._sent

    def _seal(self, ctr: int, body: Mapping[str, Any], ad: bytes) -> bytes:
        return self._send.encrypt(_nonce(ctr), canonical_bytes(body), ad)

    def _open(self, record: Record, ad: bytes) -> dict[str, Any]:
        try:
            plain = self._recv.decrypt(_nonce(record.ctr), record.ct, ad)
        except InvalidTag:
            raise AuthError(
                "record does not authenticate", code=HandheldReason.BAD_RECORD
            ) from None
        return load_object(plain, "record body")  # depth and size capped, never RecursionError

    def _require(self, role: Role) -> None:
        if self.role is not role:
            raise ProtocolError(f"only the {role.value} end may do that")


# -- primitives -------------------------------------------------------------------------------


def _transcript(label: str, *parts: bytes) -> bytes:
    """SHA-256 over the domain, a label and length-prefixed parts."""
    digest = hashlib.sha256(DOMAIN + label.encode("ascii") + b"\x00")
    for part in parts:
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.digest()


def _unsigned(message: Message) -> bytes:
    """Canonical JSON of a message without its sig and mac members."""
    fields = message_fields(message)
    return canonical_bytes({k: v for k, v in fields.items() if k not in _AUTH_MEMBERS})


def _hkdf(ikm: bytes, salt: bytes, label: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, DOMAIN + label).derive(ikm)


def _mac(key: bytes, who: bytes, data: bytes) -> bytes:
    return hmac.new(key, DOMAIN + who + b"\x00" + data, hashlib.sha256).digest()


def _exchange(private: X25519PrivateKey, peer: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # an all-zero shared secret: a small-order point
        raise AuthError(
            "peer ephemeral key is degenerate", code=HandheldReason.BAD_RECORD
        ) from None


def _x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _signature_ok(public: bytes, label: bytes, data: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, DOMAIN + label + b"\x00" + data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _verify(public: bytes, label: bytes, data: bytes, sig: bytes, code: str) -> None:
    if not _signature_ok(public, label, data, sig):
        raise AuthError(f"{label.decode()} signature does not verify", code=code)


def _nonce(ctr: int) -> bytes:
    return bytes(4) + ctr.to_bytes(8, "big")


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _record_ad(session_id: bytes, kind: RecordKind, ctr: int, bound: bytes) -> bytes:
    head = DOMAIN + b"record " + kind.value.encode("ascii") + b"\x00"
    return head + session_id + ctr.to_bytes(8, "big") + bound
