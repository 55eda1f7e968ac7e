"""Issue 13 item 8: a stop finishes in seconds even when the broker's port swallows SYNs."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from firmware_sim.network import black_hole, syn_sent_to
from tests.e2e.faults.daemon import log_text, start_gateway, write_config
from tests.fixtures.procs import poll_until

STOP_BOUND_S = 5.0


def _connect_hangs(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def test_sigterm_with_black_holed_broker_exits_promptly(tmp_path: Path) -> None:
    with black_hole() as port:
        if not _connect_hangs(port):
            pytest.skip("this kernel answers SYNs to a full accept queue; no black hole")
        config = write_config(tmp_path, f"mqtt://127.0.0.1:{port}")
        fillers = syn_sent_to(port)
        gateway = start_gateway(config)
        try:
            poll_until(lambda: "running" in log_text(config), 30, "gateway running")
            poll_until(
                lambda: syn_sent_to(port) > fillers, 30, "a connect attempt hanging in SYN_SENT"
            )
            gateway.send_signal(signal.SIGTERM)
            try:
                code = gateway.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {STOP_BOUND_S} s after SIGTERM (blocked connect)")
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait()
    assert code == 0
    assert "stopped" in log_text(config)
