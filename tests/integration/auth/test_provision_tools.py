"""`sealgw init`: key and directory modes, a CSR signed by the MQTT key, refusal, force, no leaks."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.auth.provision import init_gateway
from tests.fixtures.mosquitto import BrokerFactory, Pki


def test_openssl_reads_the_csr_and_the_fingerprints_match(tmp_path: Path) -> None:
    """The files are what the CA's tooling reads; the documented fingerprint check holds."""
    result = init_gateway(tmp_path / "state", "gw-0001")
    subject = openssl("req", "-in", result.csr, "-noout", "-verify", "-subject")
    assert "CN=gw-0001" in subject.replace(" ", "")
    for key, fingerprint in (
        (result.mqtt_key, result.mqtt_fingerprint),
        (result.identity_key, result.identity_fingerprint),
    ):
        der = subprocess.run(
            [openssl_binary(), "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
            capture_output=True,
            check=True,
        ).stdout
        assert fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()


def test_signed_csr_authenticates_to_a_tls_broker(
    tmp_path: Path, mosquitto_factory: BrokerFactory
) -> None:
    """The whole provisioning path: init, CA signs the CSR with openssl, mosquitto accepts it."""
    result = init_gateway(tmp_path / "state", "gw-0001")
    pki = openssl_pki(tmp_path / "pki", result.csr)
    broker = mosquitto_factory(pki=pki, require_certificate=True)
    publish = subprocess.run(
        [
            shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub",
            *("-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(pki.ca_cert)),
            *("--cert", str(pki.client_cert), "--key", str(result.mqtt_key)),
            *("-t", "sealgw/v1/gw-0001/check", "-m", "hello", "-q", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert publish.returncode == 0, publish.stderr
    assert "gw-0001" in broker.log_text()


def openssl_pki(folder: Path, csr: Path) -> Pki:
    """A CA, a server cert for 127.0.0.1, and the gateway's cert signed from its CSR."""
    folder.mkdir()
    ca_key, ca_pem = folder / "ca.key", folder / "ca.pem"
    server_key, server_pem = folder / "server.key", folder / "server.pem"
    client_pem = folder / "mqtt-client.pem"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-subj", "/CN=MS CA",
            "-days", "2")  # fmt: skip
    server_csr = folder / "server.csr"
    openssl("req", "-new", *ec, "-keyout", server_key, "-out", server_csr, "-subj", "/CN=broker")
    extensions = folder / "ext.cnf"
    extensions.write_text(
        "[server]\nsubjectAltName=IP:127.0.0.1\n[client]\nextendedKeyUsage=clientAuth\n"
    )
    for request, out, section in ((server_csr, server_pem, "server"), (csr, client_pem, "client")):
        openssl("x509", "-req", "-in", request, "-CA", ca_pem, "-CAkey", ca_key,
                "-CAcreateserial", "-days", "2", "-sha256", "-extfile", extensions,
                "-extensions", section, "-out", out)  # fmt: skip
    return Pki(ca_pem, server_pem, server_key, client_pem, Path(), ca_pem, client_pem, Path())


def openssl(*argv: str | Path) -> str:
    """Run openssl; return stdout plus stderr (some versions print -subject on stderr)."""
    proc = subprocess.run(
        [openssl_binary(), *map(str, argv)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def openssl_binary() -> str:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("openssl is required (apt install openssl)")
    return binary
