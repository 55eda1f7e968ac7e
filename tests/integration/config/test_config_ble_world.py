"""The [ble] fragment a simulated lock world writes validates and holds no lock secret."""

from __future__ import annotations

import tomllib
from pathlib import Path

from firmware_sim.locks.world import LockWorld
from gateway.locks.config import read_key_file
from tests.fixtures.ble import ble_section


async def test_the_worlds_fragment_validates_and_holds_no_lock_secret(tmp_path: Path) -> None:
    async with LockWorld(2, tmp_path / "sim", None) as world:
        text = world.gateway_ble_toml(max_connections=3, op_timeout_s=4.5)
        section = ble_section(tomllib.loads(text)["ble"], tmp_path)
        assert section.adapter == world.adapter
        assert (section.max_connections, section.op_timeout_s) == (3, 4.5)
        for lock in section.locks:
            keys = world.lock_keys(lock.seal_id)
            assert lock.lock_id_bytes == world.lock_ids[lock.seal_id]
            assert read_key_file(lock.adv_key_file) == keys.advert
            assert read_key_file(lock.log_key_file) == keys.log
        k_lock = world.authority.lock_key(world.lock_ids["SL-0001"])
        assert k_lock.hex() not in text
        assert all(k_lock.hex() not in p.read_text() for p in (tmp_path / "sim/keys").iterdir())
