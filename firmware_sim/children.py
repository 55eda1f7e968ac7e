"""Child processes that never outlive the program that started them (demo, sim, bench).

Two mechanisms, because each covers what the other cannot:

- `exit_on_signals()`: SIGTERM and SIGHUP raise SystemExit in the main thread (SIGINT already
  raises KeyboardInterrupt), so every `with` and `finally` runs and stops its children in order,
  gracefully: SIGTERM, a wait, then SIGKILL to the child's process group. `timeout`, systemd and
  a terminal all end a program this way. Further signals are ignored during that cleanup, so a
  second SIGTERM cannot cut it short.
- `die_with_parent(signum)`, a `preexec_fn`: Linux `prctl(PR_SET_PDEATHSIG)` sends `signum` to
  the child when its parent dies for any reason, SIGKILL included, when no cleanup can run.
  Python children get SIGTERM, so they in turn stop their own children; leaf tools (mosquitto,
  socat) get SIGKILL. The signal is tied to the *thread* that forked the child, so children must
  be started from a thread that lives as long as they do (ours start from the main thread).
  Elsewhere than Linux it does nothing; the cleanup above still applies. Python warns that a
  `preexec_fn` may deadlock in a threaded parent; this one calls one prebuilt C function and
  `getppid` and touches no lock another thread could hold (no import, no logging, no I/O).

Process groups (`start_new_session=True`) remain what the graceful path signals: one `killpg`
reaches a child and whatever it started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

__all__ = ["die_with_parent", "exit_on_signals"]

PR_SET_PDEATHSIG = 1
_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `signum` when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    parent = os.getpid()

    def _preexec() -> None:  # runs in the child between fork and exec: no locks, no logging
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return _preexec


def exit_on_signals() -> None:
    """SIGTERM/SIGHUP -> SystemExit(128 + n), SIGINT -> KeyboardInterrupt; the first one only."""
    for signum in _EXIT_SIGNALS:
        signal.signal(signum, _raise_exit)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    for other in _EXIT_SIGNALS:  # the cleanup this starts must not be interrupted in turn
        signal.signal(other, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)
