"""A debug hook that freezes the event loop on SIGUSR2, to prove the systemd watchdog works.

Only when the environment has SEALGW_DEBUG_STALL=1: SIGUSR2 then runs, on the loop, a callback
that blocks in time.sleep for SEALGW_DEBUG_STALL_S seconds (default 30). While it blocks no
WATCHDOG=1 ping can be sent, as with any real stuck loop, so systemd (WatchdogSec) kills the
process. Without the variable the hook is not installed and SIGUSR2 keeps its default action.
Never set it in production.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping

__all__ = ["ENV_FLAG", "ENV_SECONDS", "install_debug_stall"]

_log = logging.getLogger(__name__)

ENV_FLAG = "SEALGW_DEBUG_STALL"
ENV_SECONDS = "SEALGW_DEBUG_STALL_S"
DEFAULT_STALL_S = 30.0


def install_debug_stall(environ: Mapping[str, str] | None = None) -> bool:
    """Install the SIGUSR2 stall handler on the running loop if enabled; True if installed."""
    env = os.environ if environ is None else environ
    if env.get(ENV_FLAG) != "1":
        return False
    seconds = _seconds(env.get(ENV_SECONDS, ""))
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _stall, seconds)
    _log.warning("debug stall hook armed: SIGUSR2 blocks the event loop for %.1f s", seconds)
    return True


def _stall(seconds: float) -> None:
    _log.warning("debug stall: blocking the event loop for %.1f s", seconds)
    time.sleep(seconds)  # deliberately blocking: this simulates a stuck loop
    _log.warning("debug stall: event loop released")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_STALL_S
    return value if value > 0 else DEFAULT_STALL_S
