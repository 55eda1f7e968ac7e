"""The master directory under a console (docs/security.md, "Master console"): the console
writes no key, the files it and `sealgw master ...` share are written whole and never lose each
other's changes, and a signing key readable by others is refused. Real files, real processes."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.protocol.tickets import x25519_public_bytes
from master_station.authority import SIGNING_KEY_FILE, MasterAuthority
from master_station.console.app import create_app
from master_station.ledger.factory import open_ledger
from tests.fixtures.console import ConsoleClient, add_users, district_day, serve_console
from tests.fixtures.procs import marked_env, new_mark


def test_revocations_issued_together_from_two_processes_lose_none(tmp_path: Path) -> None:
    """The console and `sealgw master revoke` each read the last list, added theirs and wrote
    serial + 1 through the same `revocations.tmp`: one list overwrote the other (a revoked
    ticket came back to life) or the rename failed."""
    MasterAuthority.create(tmp_path / "master")
    writers = [MasterAuthority.open(tmp_path / "master") for _ in range(2)]  # two processes
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def revoke(n: int) -> None:
        start.wait(10)
        try:
            for i in range(15):
                writers[n].revoke(tickets=[f"{n:02d}{i:030x}"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=revoke, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    last = MasterAuthority.open(tmp_path / "master").last_revocations()
    assert last is not None and last.serial == 30 and len(last.tickets) == 30
    assert _leftovers(tmp_path / "master") == []


def test_the_console_writes_no_key_and_leaves_whole_files(tmp_path: Path) -> None:
    """Issuing and revoking from the console reads keys and writes only the revocation list,
    0600, with no temporary file left behind."""
    authority = MasterAuthority.create(tmp_path / "master")
    authority.provision_lock(bytes.fromhex("0000000000000001"))
    authority.set_gateway_credential("gw-a", x25519_public_bytes(X25519PrivateKey.generate()))
    before = _keys(tmp_path / "master")
    ledger = open_ledger(tmp_path / "ledger.db")
    add_users(ledger)
    district_day(ledger)
    try:
        with serve_console(create_app(ledger, authority=authority, tls=True), tmp_path) as served:
            client = ConsoleClient(*served)
            try:
                assert client.login("mgr-1").status_code == 303
                page = client.submit("/work-orders", "/work-orders", {
                    "gateway": "gw-a", "work_order": "WO-1", "flow": "meter_replace",
                    "operator": "op-1", "role": "meter_installer", "seals": "SL-A1",
                    "ops": ["unseal", "seal"]})  # fmt: skip
                found = re.search(r'data-ticket-id="([0-9a-f]{32})"', page.text)
                assert found is not None, page.text
                revoked = client.submit("/work-orders", f"/work-orders/{found.group(1)}/revoke",
                                        {"note": "cancelled"})  # fmt: skip
                assert revoked.status_code == 303
            finally:
                client.close()
    finally:
        ledger.close()
    assert _keys(tmp_path / "master") == before
    listing = tmp_path / "master" / "revocations.json"
    assert stat.S_IMODE(listing.stat().st_mode) == 0o600
    assert found.group(1) in json.loads(listing.read_text())["body"]["tickets"]
    assert _leftovers(tmp_path / "master") == []


def test_a_key_is_never_written_over_nor_shown(tmp_path: Path) -> None:
    authority = MasterAuthority.create(tmp_path / "master")
    signing = (tmp_path / "master" / SIGNING_KEY_FILE).read_bytes()
    assert signing.hex() not in repr(authority) and signing.hex() not in str(vars(authority))
    key = authority.provision_lock(bytes.fromhex("00000000000000aa"))
    with pytest.raises(FileExistsError):
        authority.provision_lock(bytes.fromhex("00000000000000aa"))
    assert authority.lock_key(bytes.fromhex("00000000000000aa")) == key
    with pytest.raises(FileExistsError):
        MasterAuthority.create(tmp_path / "master")
    assert _leftovers(tmp_path / "master") == []


def test_serve_refuses_a_signing_key_readable_by_others(tmp_path: Path) -> None:
    MasterAuthority.create(tmp_path / "master")
    (tmp_path / "master" / SIGNING_KEY_FILE).chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "master", "serve", "--ledger",
         str(tmp_path / "ledger.db"), "--master-dir", str(tmp_path / "master"), "--port", "0"],
        capture_output=True, text=True, env=marked_env(new_mark()), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "readable by others" in done.stderr and "console at" not in done.stdout


def _keys(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every key file: bytes, mode, modification time."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*.key"))
    }


def _leftovers(directory: Path) -> list[str]:
    return sorted(str(p.name) for p in directory.rglob("*.tmp"))
