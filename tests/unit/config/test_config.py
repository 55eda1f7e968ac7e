"""Config loading: good files load, every kind of bad key is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "config" / "gateway.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[gateway]\nid = "gw-1"\nstate_dir = "state"\n'))
    assert config.gateway.id == "gw-1"
    assert config.buffer_path == tmp_path / "state" / "buffer.db"
    assert config.client_id == "gw-1"
    assert config.uplink.topic_root == "sealgw/v1"
    assert config.uplink.protocol == "auto"


def test_example_config_is_valid_once_its_files_exist(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("/etc/sealgw/", f"{tmp_path}/")
    text = text.replace("/var/lib/sealgw/mqtt-client", f"{tmp_path}/client")
    (tmp_path / "locks").mkdir()
    for name in ("ca.pem", "client.pem", "client.key", "master.pub"):
        (tmp_path / name).write_text("x")
    for name in ("SL-0001.adv.key", "SL-0001.log.key"):
        (tmp_path / "locks" / name).write_text("ab" * 32)
        (tmp_path / "locks" / name).chmod(0o600)
    (tmp_path / "client.key").chmod(0o600)
    config = load_config(write(tmp_path, text))
    assert config.uplink.url.startswith("mqtts://")
    assert config.uplink.key_file == tmp_path / "client.key"
    assert config.ble.locks[0].seal_id == config.meters.meters[0].seal == "SL-0001"
    assert config.meters.meters[0].profile == "dlt645-residential"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[gateway]\n", "gateway.id", "missing required key"),
        ('[gateway]\nid = "gw"\n[uplnk]\n', "uplnk", "unknown key"),
        ('[gateway]\nid = "gw"\ncolour = 1\n', "gateway.colour", "unknown key"),
        (
            '[gateway]\nid = "gw"\n[uplink]\nkeepalive_s = "30"\n',
            "uplink.keepalive_s",
            "expected an integer",
        ),
        ('[gateway]\nid = "gw"\n[uplink]\nkeepalive_s = 1\n', "uplink.keepalive_s", "must be >= 5"),
        ('[gateway]\nid = "gw"\n[uplink]\nprotocol = "4"\n', "uplink.protocol", "expected one of"),
        ('[gateway]\nid = "gw"\n[uplink]\nurl = "http://x:1"\n', "uplink.url", "does not match"),
        ('[gateway]\nid = "g w"\n', "gateway.id", "does not match"),
        ('[gateway]\nid = "gw"\n[buffer]\nmax_bytes = 1024\n', "buffer.max_bytes", "must be >= "),
        (
            '[gateway]\nid = "gw"\n[synthetic]\nenabled = "yes"\n',
            "synthetic.enabled",
            "expected a boolean",
        ),
        (
            '[gateway]\nid = "gw"\n[uplink]\nca_file = "missing.pem"\n',
            "uplink.ca_file",
            "does not exist",
        ),
        ('[gateway]\nid = "gw"\nbuffer = 3\n', "gateway.buffer", "unknown key"),
        (
            '[gateway]\nid = "gw"\n[uplink]\nreconnect_min_s = 9\nreconnect_max_s = 2\n',
            "uplink.reconnect_min_s",
            "must not exceed",
        ),
        ("gateway = 1\n", "gateway", "expected a table"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key == key
    assert reason in caught.value.reason


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    secret.chmod(0o644)
    path = write(tmp_path, f'[gateway]\nid = "gw"\n[uplink]\npassword_file = "{secret}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "uplink.password_file"
    assert "600" in caught.value.reason
    assert "hunter2" not in str(caught.value)


def test_not_toml_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[gateway\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")
