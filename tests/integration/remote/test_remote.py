"""Remote management over signed MQTT commands, against a real broker and a running gateway."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
import tomllib
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.protocol.events import EventDraft, Priority
from gateway.remote.service import EXIT_RESTART
from tests.fixtures.mosquitto import wait_until
from tests.fixtures.remote import (
    GATEWAY,
    ROOT,
    RemoteRig,
    signed_command,
)


def buffer_fingerprint(db: Path) -> tuple[int, str, str]:
    """Inode and content hashes of the buffer file and its WAL."""
    wal = db.with_name(db.name + "-wal")
    wal_hash = hashlib.sha256(wal.read_bytes()).hexdigest() if wal.exists() else ""
    return db.stat().st_ino, hashlib.sha256(db.read_bytes()).hexdigest(), wal_hash


async def test_signed_config_patch_is_applied_atomically(
    rig: RemoteRig, config_path: Path, master: Ed25519PrivateKey
) -> None:
    before_text, before_inode = config_path.read_text(), config_path.stat().st_ino
    patch = {"health": {"interval_s": 30}, "log": {"level": "DEBUG"}}

    reply = await rig.command("config", signed_command(master, "config", {"patch": patch}))

    assert reply["ok"] is True, reply
    result = reply["result"]
    assert result["applied"] is True
    assert sorted(result["changed"]) == ["health.interval_s", "log.level"]
    assert result["live"] == ["log.level"]
    assert result["requires_restart"] is True and result["restart_keys"] == ["health.interval_s"]
    written = tomllib.loads(config_path.read_text())
    assert written["health"]["interval_s"] == 30 and written["log"]["level"] == "DEBUG"
    assert written["uplink"]["url"].startswith("mqtt://")
    assert config_path.stat().st_ino != before_inode, "replaced by rename, not rewritten in place"
    assert Path(result["backup"]).read_text() == before_text
    assert logging.getLogger().level == logging.DEBUG
    assert not list(config_path.parent.glob(".gw.toml.tmp*"))


async def test_full_toml_update_and_restart_flag(
    rig: RemoteRig, config_path: Path, master: Ed25519PrivateKey
) -> None:
    text = config_path.read_text().replace("interval_s = 3600", "interval_s = 120")

    reply = await rig.command(
        "config", signed_command(master, "config", {"toml": text, "restart": True})
    )

    assert reply["ok"] is True, reply
    assert reply["result"]["restarting"] is True
    assert config_path.read_text() == text
    await wait_until(lambda: rig.task.done(), 20, "clean shutdown for the restart")
    assert rig.restarts == [EXIT_RESTART]


async def test_bad_config_is_rejected_and_the_buffer_is_untouched(
    rig: RemoteRig, config_path: Path, master: Ed25519PrivateKey
) -> None:
    gateway = rig.gateway
    for n in range(20):
        now = gateway.clock.now()
        gateway.emit(EventDraft("test.marker", GATEWAY, {"n": n}, Priority.AUDIT, now))
    await wait_until(lambda: gateway.buffer.stats.committed >= 21, 10, "markers committed")
    await wait_until(lambda: not any(gateway.buffer.depth().values()), 10, "markers published")
    db = gateway.buffer.path
    fingerprint, config_text = buffer_fingerprint(db), config_path.read_text()

    bad_key = await rig.command(
        "config", signed_command(master, "config", {"patch": {"uplink": {"bogus_key": 1}}})
    )
    resize = await rig.command(
        "config", signed_command(master, "config", {"patch": {"buffer": {"max_bytes": 512 << 20}}})
    )
    move = await rig.command(
        "config",
        signed_command(master, "config", {"patch": {"gateway": {"state_dir": "/tmp/elsewhere"}}}),
    )
    broken = await rig.command(
        "config", signed_command(master, "config", {"toml": "[gateway\nid = 1"})
    )

    assert bad_key["ok"] is False and bad_key["error"] == "bad_request"
    assert bad_key["detail"].startswith("uplink.bogus_key: unknown key")
    assert resize["error"] == "bad_request" and resize["detail"].startswith("buffer.max_bytes:")
    assert move["error"] == "bad_request" and move["detail"].startswith("gateway.state_dir:")
    assert broken["error"] == "bad_request" and "not valid TOML" in broken["detail"]
    assert buffer_fingerprint(db) == fingerprint, "the buffer file was touched"
    assert config_path.read_text() == config_text
    assert not config_path.with_name("gw.toml.bak").exists()
    await rig.stop()
    with sqlite3.connect(db) as conn:
        markers = conn.execute("SELECT COUNT(*) FROM events WHERE type = 'test.marker'").fetchone()
        types = [row[0] for row in conn.execute("SELECT type FROM events ORDER BY seq")]
    assert markers[0] == 20
    assert types[0] == "gateway.started" and types[-1] == "gateway.stopped"
    assert "gateway.command" not in types, "a rejected command changed nothing, not even the log"


async def test_unsigned_forged_expired_replayed_and_misdirected_commands_are_rejected(
    rig: RemoteRig, master: Ed25519PrivateKey
) -> None:
    forger = Ed25519PrivateKey.generate()
    now = int(time.time())
    level = {"level": "ERROR"}
    cases = {
        "unsigned": b'{"level": "ERROR"}',
        "bad_signature": signed_command(forger, "log_level", level),
        "expired": signed_command(master, "log_level", level, issued_at=now - 900, lifetime_s=60),
        "wrong_gateway": signed_command(master, "log_level", level, gateway="gw-other"),
        "malformed": b'{"v":1,"kind":"command","body":{},"sig":"AAAA"}',
    }
    for code, document in cases.items():
        reply = await rig.command("log_level", document)
        assert reply["ok"] is False and reply["error"] == code, (code, reply)
    assert logging.getLogger().level != logging.ERROR, "no rejected command took effect"

    wrong_topic = await rig.command("restart", signed_command(master, "time_check"))
    assert wrong_topic["error"] == "wrong_command"
    assert not rig.restarts

    once = signed_command(master, "time_check")
    first, again = await rig.command("time_check", once), await rig.command("time_check", once)
    assert first["ok"] is True
    assert again["ok"] is False and again["error"] == "replayed"


async def test_log_level_and_time_check(rig: RemoteRig, master: Ed25519PrivateKey) -> None:
    args = {"level": "WARNING", "logger": "gateway.uplink"}
    level = await rig.command("log_level", signed_command(master, "log_level", args))
    issued = int(time.time())
    check = await rig.command("time_check", signed_command(master, "time_check", issued_at=issued))

    assert level["ok"] is True, level
    assert level["result"]["level"] == "WARNING" and level["result"]["logger"] == "gateway.uplink"
    assert logging.getLogger("gateway.uplink").level == logging.WARNING
    assert check["ok"] is True, check
    result = check["result"]
    assert result["issued_at"] == issued
    assert -1.0 <= result["offset_s"] < 5.0 and result["within_skew"] is True
    gateway_time = datetime.fromisoformat(result["gateway_utc"].replace("Z", "+00:00"))
    assert abs(gateway_time.timestamp() - time.time()) < 5


async def test_restart_replies_first_then_stops(rig: RemoteRig, master: Ed25519PrivateKey) -> None:
    reply = await rig.command("restart", signed_command(master, "restart"))

    assert reply["ok"] is True and reply["result"]["exit_code"] == EXIT_RESTART
    await wait_until(lambda: rig.task.done(), 20, "clean shutdown")
    assert rig.restarts == [EXIT_RESTART]
    status = rig.subscriber.on(f"{ROOT}/status")
    assert b'"offline"' in status[-1].payload
