"""Paired handhelds, kept across restarts in `handhelds.json` (state dir, mode 0600).

A record names the operator, the device's Ed25519 public key, the serial of the certificate
it paired with (and the certificate document itself, to re-check validity and revocation at
every session), and when it paired. Writes are atomic (temporary file, fsync, rename, fsync of
the directory). A file that does not parse is moved aside (`corrupt` says so) and the store
starts empty: the handhelds pair again.
"""

from __future__ import annotations

import json
import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, StorageError
from gateway.protocol.signed import b64url, b64url_decode
from gateway.store.state_files import CorruptFile, move_aside, write_atomic

__all__ = ["HANDHELDS_FILE", "PairedDevice", "PairedDeviceStore"]

_log = logging.getLogger(__name__)

HANDHELDS_FILE = "handhelds.json"
STORE_VERSION = 1


@dataclass(frozen=True, slots=True)
class PairedDevice:
    """One paired handheld."""

    operator: str
    device_key: bytes
    cert_serial: str
    paired_at: int
    certificate: str

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "operator": self.operator,
            "device_key": b64url(self.device_key),
            "cert_serial": self.cert_serial,
            "paired_at": self.paired_at,
            "certificate": self.certificate,
        }

    @classmethod
    def from_json(cls, obj: Any) -> PairedDevice:
        """Parse a stored record; raise ValueError when it is not one."""
        if not isinstance(obj, dict):
            raise ValueError("paired device record is not an object")
        return cls(
            operator=str(obj["operator"]),
            device_key=b64url_decode(str(obj["device_key"]), "device_key"),
            cert_serial=str(obj["cert_serial"]),
            paired_at=int(obj["paired_at"]),
            certificate=str(obj["certificate"]),
        )


class PairedDeviceStore:
    """Paired handhelds by device key, loaded once and rewritten on every change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._devices: dict[bytes, PairedDevice] = {}
        self.corrupt: CorruptFile | None = None

    @classmethod
    def open(cls, path: Path) -> PairedDeviceStore:
        """Load the store (an absent file is an empty store); refuse a world-readable one."""
        store = cls(path)
        store._load()
        return store

    def get(self, device_key: bytes) -> PairedDevice | None:
        """The record of a paired device, or None."""
        return self._devices.get(bytes(device_key))

    def devices(self) -> tuple[PairedDevice, ...]:
        """Every paired device, oldest pairing first."""
        return tuple(sorted(self._devices.values(), key=lambda d: d.paired_at))

    def add(self, device: PairedDevice) -> None:
        """Record a pairing (replacing an earlier one of the same device) durably."""
        devices = dict(self._devices)
        devices[device.device_key] = device
        self._save(devices)
        self._devices = devices

    def remove(self, device_key: bytes) -> bool:
        """Forget a device; True if it was paired."""
        if device_key not in self._devices:
            return False
        devices = {k: v for k, v in self._devices.items() if k != device_key}
        self._save(devices)
        self._devices = devices
        return True

    def _load(self) -> None:
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        if mode & 0o077:
            raise ConfigError(str(self.path), f"paired-device file has mode {mode:o}; use 600")
        try:
            obj = json.loads(raw)
            records = [PairedDevice.from_json(item) for item in obj["devices"]]
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"not a paired-device file: {exc}"
            self.corrupt = move_aside(self.path, reason, "every handheld must pair again")
            return
        self._devices = {record.device_key: record for record in records}
        _log.info("%d paired handhelds loaded", len(self._devices))

    def _save(self, devices: dict[bytes, PairedDevice]) -> None:
        records = sorted(devices.values(), key=lambda d: d.paired_at)
        data = {"v": STORE_VERSION, "devices": [d.to_json() for d in records]}
        payload = json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
        try:
            write_atomic(self.path, payload)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror}") from exc
