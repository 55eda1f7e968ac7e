"""Config section of the seal locks over BLE ([ble]): the adapter, the connection budget, locks.

Each `[[ble.locks]]` entry names a seal, its 8-byte lock id and the files holding the two keys
a gateway may hold for it (docs/protocol.md, section 8): K_adv to verify adverts and K_log to
verify log answers. Never K_lock. Key files are 0600 and hold the 32-byte key raw or as 64 hex
digits; `read_key_file` loads them. `__post_init__` checks what spans several keys and the key
files' contents, naming the offending key, so `sealgw config check` points at it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.config.spec import spec
from gateway.errors import ConfigError

__all__ = ["KEY_LEN", "BleSection", "LockEntry", "read_key_file"]

KEY_LEN = 32
_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_LOCK_ID = r"^[0-9a-f]{16}$"
_ADDRESS = r"^$|^([0-9A-F]{2}:){5}[0-9A-F]{2}(/P)?$"
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class LockEntry:
    """One seal lock the gateway serves, and the keys it may hold for it."""

    seal_id: str = field(metadata=spec(pattern=_NAME, doc="seal id, the subject of its events"))
    lock_id: str = field(metadata=spec(pattern=_LOCK_ID, doc="16 lowercase hex digits"))
    adv_key_file: Path = field(
        metadata=spec(must_exist=True, secret_file=True, doc="K_adv, verifies adverts")
    )
    log_key_file: Path = field(
        metadata=spec(must_exist=True, secret_file=True, doc="K_log, verifies log answers")
    )
    address: str = field(
        default="",
        metadata=spec(pattern=_ADDRESS, doc="BLE address (AA:BB:..., /P if public); empty: scan"),
    )
    adv_counter: int = field(
        default=0,
        metadata=spec(
            minimum=0,
            maximum=0xFFFF_FFFF,
            doc="advert counter of the provisioning record: the first advert must be above it",
        ),
    )

    @property
    def lock_id_bytes(self) -> bytes:
        """The lock id as 8 bytes."""
        return bytes.fromhex(self.lock_id)


@dataclass(frozen=True, slots=True)
class BleSection:
    """The lock service: adapter, connection scheduler budget, timeouts, scanning and locks."""

    adapter: str = field(
        default="bluez:hci0", metadata=spec(doc="bluez:hciN or bumble:<transport>")
    )
    max_connections: int = field(
        default=5, metadata=spec(minimum=1, maximum=32, doc="links held at once (Pi: <= 5)")
    )
    connect_timeout_s: float = field(default=10.0, metadata=spec(minimum=0.5, maximum=120))
    op_timeout_s: float = field(
        default=10.0, metadata=spec(minimum=0.5, maximum=120, doc="one request-answer exchange")
    )
    retries: int = field(default=2, metadata=spec(minimum=0, maximum=10))
    offline_after_s: float = field(
        default=1500.0,
        metadata=spec(minimum=1, maximum=7 * 86400, doc="no new advert counter: offline/stale"),
    )
    unreachable_after_s: float = field(
        default=10.0,
        metadata=spec(
            minimum=1,
            maximum=7 * 86400,
            doc="silent while scanning, no link of ours: seal.unreachable (< offline_after_s)",
        ),
    )
    scan_mode: Literal["active", "passive"] = "active"
    scan_window_s: float = field(default=10.0, metadata=spec(minimum=0.1, maximum=3600))
    scan_interval_s: float = field(
        default=0.0,
        metadata=spec(minimum=0, maximum=3600, doc="0: scan all the time; else every N s"),
    )
    company_id: int = field(
        default=0xFFFF, metadata=spec(minimum=0, maximum=0xFFFF, doc="advert company id")
    )
    locks: tuple[LockEntry, ...] = ()

    def __post_init__(self) -> None:
        from gateway.drivers.ble.adapters import parse_adapter  # noqa: PLC0415 - keeps bleak out of config loading

        parse_adapter(self.adapter)
        if self.scan_interval_s and self.scan_interval_s < self.scan_window_s:
            raise ConfigError("ble.scan_interval_s", "must be 0 or at least ble.scan_window_s")
        if self.unreachable_after_s >= self.offline_after_s:
            raise ConfigError("ble.unreachable_after_s", "must be below ble.offline_after_s")
        seals: set[str] = set()
        lock_ids: set[str] = set()
        for index, lock in enumerate(self.locks):
            _check_lock(lock, f"ble.locks[{index}]", seals, lock_ids)

    def lock(self, seal_id: str) -> LockEntry:
        """The entry of `seal_id`; KeyError if there is none."""
        for lock in self.locks:
            if lock.seal_id == seal_id:
                return lock
        raise KeyError(seal_id)


def read_key_file(path: Path, key: str = "") -> bytes:
    """A 32-byte key from a file holding it raw or as 64 hex digits; ConfigError names `key`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(key or str(path), f"cannot read key file {path}: {exc.strerror}") from exc
    if len(data) == KEY_LEN:
        return data
    text = data.decode("ascii", errors="replace").strip()
    if _HEX_KEY.fullmatch(text):
        return bytes.fromhex(text)
    raise ConfigError(
        key or str(path), f"key file {path} must hold {KEY_LEN} bytes or {2 * KEY_LEN} hex digits"
    )


def _check_lock(lock: LockEntry, key: str, seals: set[str], lock_ids: set[str]) -> None:
    if lock.seal_id in seals:
        raise ConfigError(f"{key}.seal_id", f"duplicate seal {lock.seal_id!r}")
    if lock.lock_id in lock_ids:
        raise ConfigError(f"{key}.lock_id", f"duplicate lock id {lock.lock_id}")
    seals.add(lock.seal_id)
    lock_ids.add(lock.lock_id)
    read_key_file(lock.adv_key_file, f"{key}.adv_key_file")
    read_key_file(lock.log_key_file, f"{key}.log_key_file")
