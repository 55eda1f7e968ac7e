"""`handheld.listen = "ble"`: valid beside a [ble] adapter (BlueZ or bumble) with locks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.errors import ConfigError

KEY_HEX = "11" * 32


def _config(tmp_path: Path, *, adapter: str | None, listen: str, max_connections: int = 5) -> Path:
    for name in ("adv", "log"):
        key = tmp_path / f"SL-1.{name}"
        key.write_text(KEY_HEX)
        key.chmod(0o600)
    text = '[gateway]\nid = "gw-1"\nstate_dir = "state"\n'
    text += f'[handheld]\nenabled = true\nlisten = "{listen}"\n'
    if adapter is not None:
        text += f'[ble]\nadapter = "{adapter}"\nmax_connections = {max_connections}\n'
        text += '[[ble.locks]]\nseal_id = "SL-1"\nlock_id = "5ea1000000000001"\n'
        text += 'adv_key_file = "SL-1.adv"\nlog_key_file = "SL-1.log"\n'
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "adapter", ["bumble:tcp-client:127.0.0.1:9000", "bluez:hci0", "bluez", "bumble:usb:0"]
)
def test_ble_listen_on_a_bluez_or_bumble_adapter_is_valid(tmp_path: Path, adapter: str) -> None:
    config = load_config(_config(tmp_path, adapter=adapter, listen="ble"))
    assert config.handheld.listen == "ble"
    assert config.ble.adapter == adapter


@pytest.mark.parametrize(
    ("adapter", "listen", "max_connections", "key", "words"),
    [
        (None, "ble", 5, "handheld.listen", "[ble]"),
        ("bluez:hci0", "ble", 1, "ble.max_connections", "2 links"),
        ("bluez:hcizero", "ble", 5, "ble.adapter", "hci0"),
        ("bumble:tcp-client:127.0.0.1:9000", "ble", 1, "ble.max_connections", "2 links"),
        ("bumble:tcp-client:127.0.0.1:9000", "bluetooth", 5, "handheld.listen", ""),
    ],
)
def test_ble_listen_mistakes_name_their_key(
    tmp_path: Path, adapter: str | None, listen: str, max_connections: int, key: str, words: str
) -> None:
    path = _config(tmp_path, adapter=adapter, listen=listen, max_connections=max_connections)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    assert words in str(caught.value)
