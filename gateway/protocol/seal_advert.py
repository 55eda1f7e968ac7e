"""The authenticated advertising payload of a seal lock (docs/protocol.md, section 9).

Manufacturer-specific data, company id 0xFFFF on the bench, carries 21 bytes:
`version(1) | short_id(4) | state(1) | flags(1) | adv_counter(4) | log_head(4) | mac(6)`,
where mac = HMAC-SHA256(K_adv, label || full lock id || the 15 bytes before it)[:6].
A gateway drops adverts whose MAC fails or whose counter went backwards.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import AuthCode, AuthError, ProtocolError
from gateway.protocol.seal_crypto import ADVERT_MAC_LEN, advert_mac, verify_advert_mac
from gateway.protocol.seal_frames import LOCK_ID_LEN, LockState, StatusFlags

__all__ = [
    "ADVERT_PAYLOAD_LEN",
    "ADVERT_VERSION",
    "COMPANY_ID",
    "LEGACY_ADV_MAX",
    "Advert",
    "AdvertObservation",
    "AdvertTracker",
    "advertising_data",
    "check_advert",
    "decode_advert",
    "encode_advert",
    "manufacturer_payload",
    "short_id",
    "sign_advert",
]

_log = logging.getLogger(__name__)

COMPANY_ID = 0xFFFF
ADVERT_VERSION = 1
LEGACY_ADV_MAX = 31
AD_TYPE_FLAGS = 0x01
AD_TYPE_MANUFACTURER = 0xFF
AD_FLAGS_LE_GENERAL_NO_BREDR = 0x06
_SIGNED = struct.Struct(">BIBBII")
ADVERT_PAYLOAD_LEN = _SIGNED.size + ADVERT_MAC_LEN


@dataclass(frozen=True, slots=True)
class Advert:
    """One decoded advert payload; `mac` is checked by check_advert, not by decode."""

    short_id: int
    state: LockState
    flags: int
    counter: int
    log_head: int
    mac: bytes = b""
    version: int = ADVERT_VERSION

    @property
    def tamper(self) -> bool:
        """The lock has seen a tamper event not yet cleared by an authorized seal."""
        return bool(self.flags & StatusFlags.TAMPER)

    @property
    def battery_low(self) -> bool:
        """The lock's battery is low."""
        return bool(self.flags & StatusFlags.BATTERY_LOW)

    @property
    def wire_cut(self) -> bool:
        """The wire loop is open right now."""
        return bool(self.flags & StatusFlags.WIRE_CUT)

    def signed_part(self) -> bytes:
        """The 15 bytes the MAC covers."""
        return _pack_signed(self)


@dataclass(frozen=True, slots=True)
class AdvertObservation:
    """A verified advert; `fresh` is False when it repeats the last accepted one."""

    lock_id: bytes
    advert: Advert
    fresh: bool


def short_id(lock_id: bytes) -> int:
    """The advert's short lock id: the last four bytes of the 8-byte id, big-endian."""
    if len(lock_id) != LOCK_ID_LEN:
        raise ProtocolError(f"lock id must be {LOCK_ID_LEN} bytes")
    return int.from_bytes(lock_id[-4:], "big")


def sign_advert(advert: Advert, lock_id: bytes, k_adv: bytes) -> Advert:
    """Return `advert` with its MAC computed under K_adv (used by the lock)."""
    mac = advert_mac(k_adv, lock_id, _pack_signed(advert))
    return Advert(advert.short_id, advert.state, advert.flags, advert.counter, advert.log_head, mac)


def encode_advert(advert: Advert) -> bytes:
    """The 21-byte manufacturer payload (after the company id)."""
    if len(advert.mac) != ADVERT_MAC_LEN:
        raise ProtocolError(f"advert MAC must be {ADVERT_MAC_LEN} bytes")
    return _pack_signed(advert) + advert.mac


def decode_advert(payload: bytes) -> Advert:
    """Parse a manufacturer payload; raise ProtocolError if it is not a version-1 advert."""
    if len(payload) != ADVERT_PAYLOAD_LEN:
        raise ProtocolError(f"advert payload must be {ADVERT_PAYLOAD_LEN} bytes")
    version, short, state, flags, counter, head = _SIGNED.unpack_from(payload)
    if version != ADVERT_VERSION:
        raise ProtocolError(f"unsupported advert version {version}")
    mac = bytes(payload[_SIGNED.size :])
    return Advert(short, LockState(state), flags, counter, head, mac, version)


def advertising_data(payload: bytes) -> bytes:
    """A legacy advertising data block: the Flags AD plus the manufacturer AD (<= 31 bytes)."""
    flags = bytes([2, AD_TYPE_FLAGS, AD_FLAGS_LE_GENERAL_NO_BREDR])
    body = COMPANY_ID.to_bytes(2, "little") + payload
    data = flags + bytes([len(body) + 1, AD_TYPE_MANUFACTURER]) + body
    if len(data) > LEGACY_ADV_MAX:
        raise ProtocolError(f"advertising data of {len(data)} bytes exceeds {LEGACY_ADV_MAX}")
    return data


def manufacturer_payload(data: bytes) -> bytes | None:
    """Find our company's manufacturer data in an AD block; None when absent."""
    pos = 0
    while pos < len(data):
        length = data[pos]
        if length == 0:
            break
        end = pos + 1 + length
        if end > len(data):
            raise ProtocolError("AD structure runs past the end of the data")
        ad_type, value = data[pos + 1], data[pos + 2 : end]
        if ad_type == AD_TYPE_MANUFACTURER and value[:2] == COMPANY_ID.to_bytes(2, "little"):
            return bytes(value[2:])
        pos = end
    return None


def check_advert(advert: Advert, lock_id: bytes, k_adv: bytes, last: Advert | None) -> bool:
    """Verify MAC and counter against the last accepted advert; return True when it is new."""
    if advert.short_id != short_id(lock_id):
        raise AuthError("advert short id does not match the lock", code=AuthCode.ADVERT_WRONG_LOCK)
    verify_advert_mac(k_adv, lock_id, advert.signed_part(), advert.mac)
    if last is None or advert.counter > last.counter:
        return True
    if advert.counter == last.counter and advert == last:
        return False
    if advert.counter == last.counter:
        raise AuthError("advert counter reused with other content", code=AuthCode.ADVERT_CONFLICT)
    raise AuthError(
        f"advert counter went back from {last.counter} to {advert.counter}",
        code=AuthCode.ADVERT_REPLAY,
    )


class AdvertTracker:
    """Verifies adverts of known locks and keeps each lock's last accepted advert."""

    def __init__(self, keys: Mapping[bytes, bytes]) -> None:
        self._keys = dict(keys)
        self._by_short: dict[int, list[bytes]] = {}
        for lock_id in self._keys:
            self._by_short.setdefault(short_id(lock_id), []).append(lock_id)
        self._last: dict[bytes, Advert] = {}
        self._floors: dict[bytes, tuple[int, int]] = {}

    def last(self, lock_id: bytes) -> Advert | None:
        """The last accepted advert of a lock."""
        return self._last.get(lock_id)

    def restore(self, lock_id: bytes, advert: Advert) -> None:
        """Seed the high-water mark from durable storage after a restart."""
        self._last[lock_id] = advert

    def seed(self, lock_id: bytes, *, counter: int = 0, log_head: int = 0) -> None:
        """Seed a lock with no accepted advert yet (provisioning, docs/protocol.md section 9).

        Until an advert is accepted, one must have a counter above `counter` and a log head of
        at least `log_head`, else it is `advert_replay`. `log_head` comes from a fresh, MAC'd
        LOG_FETCH probe (max_count 0); `counter` from the master station's provisioning record.
        """
        self._floors[lock_id] = (counter, log_head)

    def observe(self, payload: bytes) -> AdvertObservation | None:
        """Check one payload: None when it names no known lock, else a verified observation."""
        advert = decode_advert(payload)
        candidates = self._by_short.get(advert.short_id, [])
        if not candidates:
            return None
        error: AuthError | None = None
        for lock_id in candidates:
            try:
                fresh = check_advert(advert, lock_id, self._keys[lock_id], self.last(lock_id))
            except AuthError as exc:
                error = exc
                continue
            if fresh and self.last(lock_id) is None:
                self._check_floor(lock_id, advert)
            if fresh:
                self._last[lock_id] = advert
            return AdvertObservation(lock_id, advert, fresh)
        assert error is not None
        _log.debug("advert for short id %08x rejected: %s", advert.short_id, error.code)
        raise error

    def _check_floor(self, lock_id: bytes, advert: Advert) -> None:
        counter, log_head = self._floors.get(lock_id, (0, 0))
        if advert.counter <= counter or advert.log_head < log_head:
            raise AuthError(
                f"advert older than the provisioning seed (counter {advert.counter})",
                code="advert_replay",
            )


def _pack_signed(advert: Advert) -> bytes:
    try:
        return _SIGNED.pack(
            advert.version,
            advert.short_id,
            advert.state,
            advert.flags,
            advert.counter,
            advert.log_head,
        )
    except struct.error as exc:
        raise ProtocolError(f"advert field out of range: {exc}") from None
