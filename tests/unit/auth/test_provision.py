"""`sealgw init`: key and directory modes, a CSR signed by the MQTT key, refusal, force, no leaks."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from gateway.auth.provision import init_gateway, load_identity
from gateway.cli.admin import cmd_init, register_init_command
from gateway.errors import ConfigError, ProvisionError
from gateway.protocol.checkpoint import public_key_fingerprint


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def parse_init(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_init_command(parser.add_subparsers())
    return parser.parse_args(["init", *argv])


def test_init_creates_private_dir_and_keys_with_tight_modes(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "sealgw"
    result = init_gateway(state, "gw-0001")
    assert mode_of(state) == 0o700
    assert mode_of(result.identity_key) == 0o600
    assert mode_of(result.mqtt_key) == 0o600
    assert mode_of(result.csr) == 0o644
    assert mode_of(result.identity_public) == 0o644
    assert sorted(p.name for p in state.iterdir()) == [
        "identity.key",
        "identity.pub",
        "mqtt-client.csr",
        "mqtt-client.key",
    ]


def test_modes_hold_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        result = init_gateway(tmp_path / "state", "gw-0001")
    finally:
        os.umask(old)
    assert mode_of(result.identity_key) == 0o600
    assert mode_of(result.mqtt_key) == 0o600
    assert mode_of(result.state_dir) == 0o700


def test_existing_state_dir_is_tightened_to_0700(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    init_gateway(state, "gw-0001")
    assert mode_of(state) == 0o700


def test_identity_is_an_ed25519_pkcs8_key_matching_its_public_file(tmp_path: Path) -> None:
    result = init_gateway(tmp_path / "state", "gw-0001")
    pem = result.identity_key.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    key = load_identity(result.state_dir)
    assert isinstance(key, Ed25519PrivateKey)
    public = serialization.load_pem_public_key(result.identity_public.read_bytes())
    assert public_key_fingerprint(public) == public_key_fingerprint(key.public_key())
    assert result.identity_fingerprint == public_key_fingerprint(key.public_key())
    assert result.identity_fingerprint.startswith("sha256:")
    assert len(result.identity_fingerprint) == len("sha256:") + 64


def test_csr_has_gateway_cn_and_is_signed_by_the_mqtt_key(tmp_path: Path) -> None:
    result = init_gateway(tmp_path / "state", "gw-district-0042")
    csr = x509.load_pem_x509_csr(result.csr.read_bytes())
    assert csr.is_signature_valid
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attr.value for attr in cn] == ["gw-district-0042"]
    mqtt_key = serialization.load_pem_private_key(result.mqtt_key.read_bytes(), password=None)
    assert isinstance(mqtt_key, ec.EllipticCurvePrivateKey)
    assert mqtt_key.curve.name == "secp256r1"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert csr.public_key().public_bytes(der, spki) == mqtt_key.public_key().public_bytes(der, spki)
    assert result.mqtt_fingerprint == public_key_fingerprint(csr.public_key())


def test_rerun_refuses_and_leaves_keys_untouched(tmp_path: Path) -> None:
    first = init_gateway(tmp_path / "state", "gw-0001")
    before = {p.name: p.read_bytes() for p in first.state_dir.iterdir()}
    with pytest.raises(ProvisionError, match="already provisioned") as info:
        init_gateway(first.state_dir, "gw-0001")
    assert first.identity_key in info.value.paths
    assert {p.name: p.read_bytes() for p in first.state_dir.iterdir()} == before


def test_refuses_even_when_only_one_key_exists(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "mqtt-client.key").write_text("operator's own key")
    with pytest.raises(ProvisionError, match=r"mqtt-client\.key"):
        init_gateway(state, "gw-0001")
    assert (state / "mqtt-client.key").read_text() == "operator's own key"
    assert not (state / "identity.key").exists()


def test_force_replaces_every_key(tmp_path: Path) -> None:
    first = init_gateway(tmp_path / "state", "gw-0001")
    second = init_gateway(first.state_dir, "gw-0002", force=True)
    assert second.identity_fingerprint != first.identity_fingerprint
    assert second.mqtt_fingerprint != first.mqtt_fingerprint
    csr = x509.load_pem_x509_csr(second.csr.read_bytes())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-0002"
    assert mode_of(second.identity_key) == 0o600
    assert mode_of(second.mqtt_key) == 0o600
    assert not [p for p in second.state_dir.iterdir() if p.name.endswith(".tmp")]


def test_bad_gateway_id_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.id"):
        init_gateway(tmp_path / "state", "gw 1/../x")
    assert not (tmp_path / "state").exists()


def test_load_identity_refuses_a_world_readable_key(tmp_path: Path) -> None:
    result = init_gateway(tmp_path / "state", "gw-0001")
    result.identity_key.chmod(0o644)
    with pytest.raises(ProvisionError, match="mode 644"):
        load_identity(result.state_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_root_provisioning_hands_files_to_the_state_dir_owner(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4321, 4322)
    result = init_gateway(state, "gw-0001")
    for path in (result.identity_key, result.mqtt_key, result.csr, result.identity_public):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (4321, 4322)


def test_cli_init_prints_fingerprints_and_never_key_material(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert cmd_init(parse_init("--state-dir", str(state), "--id", "gw-0001")) == 0
    out, err = capsys.readouterr()
    keys = [(state / name).read_text() for name in ("identity.key", "mqtt-client.key")]
    body_lines = [line for key in keys for line in key.splitlines() if "-----" not in line]
    assert body_lines
    for line in body_lines:
        assert line not in out
        assert line not in err
    assert "PRIVATE KEY" not in out + err
    fingerprint = public_key_fingerprint(load_identity(state).public_key())
    assert fingerprint in out
    assert "mqtt-client.csr" in out


def test_cli_init_refusal_is_an_error_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse_init("--state-dir", str(tmp_path / "s"), "--id", "gw-0001")
    assert cmd_init(args) == 0
    capsys.readouterr()
    assert cmd_init(args) == 1
    out, err = capsys.readouterr()
    assert "already provisioned" in err
    assert "--force" in err
    assert "PRIVATE KEY" not in out + err
    assert (
        cmd_init(parse_init("--state-dir", str(tmp_path / "s"), "--id", "gw-0001", "--force")) == 0
    )


def test_cli_init_reads_only_the_gateway_table_of_the_config(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw-from-config"\nstate_dir = "state"\n'
        '[uplink]\nurl = "mqtts://broker:8883"\ncert_file = "not-issued-yet.pem"\n'
    )
    assert cmd_init(parse_init("-c", str(config))) == 0
    csr = x509.load_pem_x509_csr((tmp_path / "state" / "mqtt-client.csr").read_bytes())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-from-config"
