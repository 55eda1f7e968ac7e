"""The bench's seal locks: N simulated locks on one virtual radio, served to the gateway over TCP.

`LockWorld(count, state_dir, truth_path)` provisions locks SL-0001.. through the master
authority (in `state_dir/master`, so tickets can be issued for them), writes the keys a gateway
may hold (K_adv, K_log; never K_lock) to `state_dir/keys/` (0600), and on `start()` powers the
locks on a `LocalLink` and serves one more controller of that link over TCP HCI: `adapter` is
the gateway's `ble.adapter` string. Each lock keeps its NVM (counters, state, time floor, log)
in `state_dir/locks/`, so a restart on the same state dir resumes it. Every lock log entry is
appended to the truth file as a JSON line; `inject(seal_id, fault)` drives sensors and
transport faults (lock_peripheral.FAULTS).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bumble.link import LocalLink

from firmware_sim.locks.model import LockModel
from firmware_sim.locks.nvm import LockNvm
from firmware_sim.locks.peripheral import LockPeripheral
from firmware_sim.radio import HciServer, RadioLink, VhciController, attach_vhci, serve_controller
from gateway.errors import ConfigError
from gateway.protocol.clock import Clock, SystemClock
from gateway.protocol.events import format_ts
from gateway.protocol.seal_crypto import LockKeys, derive_lock_keys
from gateway.protocol.seal_frames import LockState, LogEntry
from master_station.authority import MasterAuthority

__all__ = [
    "KEYS_DIR",
    "MASTER_DIR",
    "NVM_DIR",
    "LockKeyFiles",
    "LockWorld",
    "TruthWriter",
    "address_for",
    "lock_id_for",
    "seal_id_for",
]

_log = logging.getLogger(__name__)

MASTER_DIR = "master"
KEYS_DIR = "keys"
NVM_DIR = "locks"
LOCK_ID_BASE = 0x5EA1_0000_0000_0000


def seal_id_for(number: int) -> str:
    """The seal id of the n-th simulated lock (1-based): SL-0001."""
    return f"SL-{number:04d}"


def lock_id_for(number: int) -> bytes:
    """The 8-byte lock id of the n-th simulated lock: 5ea1000000000001."""
    return (LOCK_ID_BASE + number).to_bytes(8, "big")


def address_for(number: int) -> str:
    """The static random BLE address of the n-th simulated lock."""
    return f"F5:EA:10:00:{number >> 8 & 0xFF:02X}:{number & 0xFF:02X}"


@dataclass(frozen=True, slots=True)
class LockKeyFiles:
    """Where the gateway-side keys of one lock are stored (0600, 64 hex digits)."""

    adv_key_file: Path
    log_key_file: Path


class TruthWriter:
    """Appends ground-truth records as JSON lines, flushed one by one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._out: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out = path.open("a", encoding="utf-8")

    def lock_log(self, seal_id: str, entry: LogEntry) -> None:
        """Record one lock log entry."""
        moment = datetime.fromtimestamp(entry.rtc, UTC)
        self.write(
            {
                "kind": "lock_log",
                "seal": seal_id,
                "index": entry.index,
                "type": entry.event.name.lower(),
                "result": entry.result.name.lower(),
                "state": entry.state.name.lower(),
                "ts": format_ts(moment),
            }
        )

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record."""
        if self._out is None:
            return
        self._out.write(json.dumps(record, sort_keys=True) + "\n")
        self._out.flush()

    def close(self) -> None:
        """Close the file."""
        if self._out is not None:
            self._out.close()
            self._out = None


RADIOS = ("tcp", "vhci")
"""How the gateway reaches the radio: bumble over TCP HCI, or the kernel through /dev/vhci."""


class LockWorld:
    """N seal locks on one virtual radio, a gateway controller over TCP, truth and faults."""

    def __init__(
        self,
        count: int,
        state_dir: Path,
        truth_path: Path | None,
        clock: Clock | None = None,
        authority: MasterAuthority | None = None,
        *,
        sealed: bool = True,
        advertising_interval_ms: float = 100.0,
        radio: str = "tcp",
    ) -> None:
        if radio not in RADIOS:
            raise ValueError(f"radio must be one of {', '.join(RADIOS)}")
        if not 1 <= count <= 0xFFFF:
            raise ValueError("count must be 1..65535")
        self.state_dir = state_dir
        self.clock: Clock = clock or SystemClock()
        self.authority = authority or MasterAuthority.open_or_create(state_dir / MASTER_DIR)
        self.truth = TruthWriter(truth_path)
        self.lock_ids: dict[str, bytes] = {}
        self.keys: dict[str, LockKeyFiles] = {}
        self.locks: dict[str, LockPeripheral] = {}
        self._sealed = sealed
        self._interval_ms = advertising_interval_ms
        self._link: LocalLink | None = None
        self._server: HciServer | None = None
        self._handheld_server: HciServer | None = None
        self._vhci: VhciController | None = None
        self.radio = radio
        for number in range(1, count + 1):
            self._provision(number)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Power the locks on the radio and give the gateway its controller (TCP HCI or vhci)."""
        self._link = RadioLink()
        if self.radio == "vhci":  # the kernel initialises hci0 (2 s per command) on a quiet loop
            self._vhci = await attach_vhci(self._link)
        for number, seal_id in enumerate(self.lock_ids, start=1):
            lock = self._peripheral(number, seal_id, self._link)
            self.locks[seal_id] = lock
            await lock.start()
        if self.radio == "tcp":
            self._server = await serve_controller(self._link)
        _log.info("%d locks on the radio; gateway adapter %s", len(self.locks), self.adapter)

    async def serve_handheld_controller(self) -> str:
        """One more controller on the radio, over TCP HCI, for a handheld in another process.

        Returns its bumble transport string (`tcp-client:127.0.0.1:PORT`).
        """
        if self._handheld_server is None:
            self._handheld_server = await serve_controller(self.link, name="handheld")
        server = self._handheld_server
        return f"tcp-client:{server.host}:{server.port}"

    async def close(self) -> None:
        """Stop every lock, then the gateway's controller, close the truth file.

        Locks first: a lock still linked to a gateway whose process is gone disconnects through
        the gateway's controller; with that controller already off the radio, bumble's
        controller raises on the disconnect and the lock waits for an answer that never comes.
        """
        for lock in self.locks.values():
            await lock.close()
        self.locks.clear()
        if self._handheld_server is not None:
            await self._handheld_server.close()
            self._handheld_server = None
        if self._vhci is not None:
            await self._vhci.close()
            self._vhci = None
        if self._server is not None:
            await self._server.close()
            self._server = None
        self.truth.close()

    async def __aenter__(self) -> LockWorld:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what the gateway and tests use ----------------------------------------------------

    @property
    def adapter(self) -> str:
        """The gateway's `ble.adapter`: `bumble:tcp-client:127.0.0.1:PORT`, or `bluez:hci0`."""
        if self._vhci is not None:
            return self._vhci.adapter
        if self._server is None:
            raise RuntimeError("LockWorld is not started")
        return self._server.adapter

    @property
    def link(self) -> LocalLink:
        """The virtual radio, for more devices (a BLE handheld) to join."""
        if self._link is None:
            raise RuntimeError("LockWorld is not started")
        return self._link

    @property
    def server(self) -> HciServer:
        """The gateway's controller (e.g. `server.drop_host()` to cut the gateway's socket)."""
        if self._server is None:
            raise RuntimeError("LockWorld is not started")
        return self._server

    def inject(self, seal_id: str, fault: str) -> None:
        """Apply a named fault to one lock (lock_peripheral.FAULTS); KeyError when unknown."""
        _log.info("inject %s into %s", fault, seal_id)
        self.locks[seal_id].inject(fault)

    def lock_keys(self, seal_id: str) -> LockKeys:
        """All derived keys of a lock; a gateway may hold only `.advert` and `.log`."""
        return derive_lock_keys(
            self.authority.lock_key(self.lock_ids[seal_id]), self.lock_ids[seal_id]
        )

    def gateway_ble_toml(self, **settings: float | str) -> str:
        """The gateway's [ble] TOML fragment: adapter, `settings` and one entry per lock."""
        lines = ["[ble]", f"adapter = {_q(self.adapter)}"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
        lines.append("")
        for number, (seal_id, lock_id) in enumerate(self.lock_ids.items(), start=1):
            files = self.keys[seal_id]
            lines += [
                "[[ble.locks]]",
                f"seal_id = {_q(seal_id)}",
                f"lock_id = {_q(lock_id.hex())}",
                f"address = {_q(address_for(number))}",
                f"adv_key_file = {_q(str(files.adv_key_file))}",
                f"log_key_file = {_q(str(files.log_key_file))}",
                "",
            ]
        return "\n".join(lines)

    # -- helpers ---------------------------------------------------------------------------

    def _provision(self, number: int) -> None:
        seal_id, lock_id = seal_id_for(number), lock_id_for(number)
        try:
            k_lock = self.authority.lock_key(lock_id)
        except ConfigError:  # not provisioned yet
            k_lock = self.authority.provision_lock(lock_id)
        keys = derive_lock_keys(k_lock, lock_id)
        directory = self.state_dir / KEYS_DIR
        self.lock_ids[seal_id] = lock_id
        self.keys[seal_id] = LockKeyFiles(
            _write_key(directory / f"{seal_id}.adv.key", keys.advert),
            _write_key(directory / f"{seal_id}.log.key", keys.log),
        )

    def _peripheral(self, number: int, seal_id: str, link: LocalLink) -> LockPeripheral:
        lock_id = self.lock_ids[seal_id]
        model = LockModel(
            lock_id,
            self.authority.lock_key(lock_id),
            clock=self.clock,
            state=LockState.SEALED if self._sealed else LockState.UNSEALED,
            wire_intact=self._sealed,
            nvm=LockNvm(self.state_dir / NVM_DIR / f"{seal_id}.nvm.json"),
        )
        return LockPeripheral(
            seal_id,
            model,
            link,
            address_for(number),
            clock=self.clock,
            on_log=self.truth.lock_log,
            advertising_interval_ms=self._interval_ms,
        )


def _write_key(path: Path, key: bytes) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.hex() + "\n")
    path.chmod(0o600)
    return path.resolve()


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string for these values


def _toml_value(value: float | str) -> str:
    return _q(value) if isinstance(value, str) else json.dumps(value)
