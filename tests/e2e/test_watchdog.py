"""The systemd watchdog: pings come from the event loop, so a stuck loop stops them.

The daemon runs as a real process with NOTIFY_SOCKET and WATCHDOG_USEC. The debug stall hook
(SEALGW_DEBUG_STALL=1, gateway/daemon/debug_stall.py) makes SIGUSR2 block the loop in time.sleep,
exactly like a stuck loop; systemd would then miss WATCHDOG=1 and kill the process.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway.daemon.debug_stall import install_debug_stall

REPO = Path(__file__).resolve().parents[2]
PING_INTERVAL_S = 0.1  # WATCHDOG_USEC / 2
STALL_S = 3.0


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nid = "gw-watchdog"\nstate_dir = "{tmp_path / "state"}"\n'
        '[uplink]\nurl = "mqtt://127.0.0.1:9"\nreconnect_min_s = 1\nreconnect_max_s = 5\n'
        "[synthetic]\nenabled = true\nrate_per_s = 20\n"
        "[audit]\nrequire_identity = false\n"
    )
    return config


def receive(sock: socket.socket) -> tuple[float, str]:
    """The next notification and when it arrived."""
    return time.monotonic(), sock.recv(256).decode()


def test_a_stuck_loop_stops_the_watchdog_pings(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(15)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "NOTIFY_SOCKET": str(notify),
            "WATCHDOG_USEC": str(int(PING_INTERVAL_S * 2_000_000)),
            "SEALGW_DEBUG_STALL": "1",
            "SEALGW_DEBUG_STALL_S": str(STALL_S),
        }
        with (tmp_path / "gateway.log").open("wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(write_config(tmp_path))],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            assert receive(sock)[1].startswith("READY=1")
            before = [receive(sock) for _ in range(5)]
            assert all(message == "WATCHDOG=1" for _, message in before)

            daemon.send_signal(signal.SIGUSR2)
            stalled_at = time.monotonic()
            after = [receive(sock) for _ in range(8)]
        finally:
            daemon.send_signal(signal.SIGTERM)
            exit_code = daemon.wait(20)

    normal_gaps = [b[0] - a[0] for a, b in itertools.pairwise(before)]
    assert max(normal_gaps) < 1.0, normal_gaps
    arrivals = [stalled_at] + [at for at, message in after if message == "WATCHDOG=1"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    longest = max(range(len(gaps)), key=gaps.__getitem__)
    assert gaps[longest] >= STALL_S - 0.5, f"pings did not stop while the loop was stuck: {gaps}"
    assert len(gaps) - longest >= 3, f"pings did not resume after the stall: {gaps}"
    assert exit_code == 0
    assert b"debug stall: blocking the event loop" in (tmp_path / "gateway.log").read_bytes()


def test_the_stall_hook_is_off_unless_enabled() -> None:
    assert install_debug_stall({}) is False
    assert install_debug_stall({"SEALGW_DEBUG_STALL": "0"}) is False
