"""The [ble] config section: what the simulator writes validates; mistakes name their key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.locks.config import read_key_file
from tests.fixtures.ble import ble_section

KEY_HEX = "11" * 32


def _key(path: Path, text: str = KEY_HEX, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return path.name


def _lock(tmp_path: Path, seal: str = "SL-1", lock_id: str = "5ea1000000000001") -> dict[str, Any]:
    return {
        "seal_id": seal,
        "lock_id": lock_id,
        "adv_key_file": _key(tmp_path / f"{seal}.adv"),
        "log_key_file": _key(tmp_path / f"{seal}.log"),
    }


def _error_key(table: Mapping[str, Any], base_dir: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        ble_section(table, base_dir)
    return caught.value.key


def test_defaults_and_raw_key_files(tmp_path: Path) -> None:
    lock = _lock(tmp_path)
    (tmp_path / "raw.key").write_bytes(bytes(range(32)))
    (tmp_path / "raw.key").chmod(0o600)
    lock["log_key_file"] = "raw.key"
    section = ble_section({"locks": [lock]}, tmp_path)
    assert (section.adapter, section.max_connections, section.scan_mode) == (
        "bluez:hci0",
        5,
        "active",
    )
    assert read_key_file(section.lock("SL-1").log_key_file) == bytes(range(32))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"adapter": "bumble:tcp-client:nohost"}, "ble.adapter"),
        ({"adapter": "hci0"}, "ble.adapter"),
        ({"max_connections": 0}, "ble.max_connections"),
        ({"scan_mode": "loud"}, "ble.scan_mode"),
        ({"scan_interval_s": 1.0, "scan_window_s": 5.0}, "ble.scan_interval_s"),
        ({"unreachable_after_s": 60.0, "offline_after_s": 30.0}, "ble.unreachable_after_s"),
        ({"unreachable_after_s": 0.5}, "ble.unreachable_after_s"),
    ],
)
def test_bad_settings_name_their_key(tmp_path: Path, change: dict[str, Any], key: str) -> None:
    assert _error_key({"adapter": "bumble:tcp-client:127.0.0.1:1", **change}, tmp_path) == key


def test_bad_locks_name_their_key(tmp_path: Path) -> None:
    one, two = _lock(tmp_path, "SL-1"), _lock(tmp_path, "SL-2", "5ea1000000000002")
    assert _error_key({"locks": [one, {**two, "seal_id": "SL-1"}]}, tmp_path) == (
        "ble.locks[1].seal_id"
    )
    assert _error_key({"locks": [one, {**two, "lock_id": one["lock_id"]}]}, tmp_path) == (
        "ble.locks[1].lock_id"
    )
    assert _error_key({"locks": [{**one, "lock_id": "5EA1"}]}, tmp_path) == "ble.locks[0].lock_id"
    assert _error_key({"locks": [{**one, "address": "f5:ea"}]}, tmp_path) == "ble.locks[0].address"
    short = _key(tmp_path / "short.key", "abcd")
    assert _error_key({"locks": [{**one, "adv_key_file": short}]}, tmp_path) == (
        "ble.locks[0].adv_key_file"
    )
    shared = _key(tmp_path / "shared.key", mode=0o644)
    assert _error_key({"locks": [{**one, "log_key_file": shared}]}, tmp_path) == (
        "ble.locks[0].log_key_file"
    )
    missing = {k: v for k, v in one.items() if k != "log_key_file"}
    assert _error_key({"locks": [missing]}, tmp_path) == "ble.locks[0].log_key_file"
