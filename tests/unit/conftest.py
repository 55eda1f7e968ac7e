"""Unit tests are pure: no process, no network socket, no pseudo-terminal.

The guard below makes that a checked rule rather than a convention: a unit test that binds or
connects a socket, starts a process or opens a pty fails with a message naming what it did.
(asyncio's own self-pipe is a socketpair, which stays allowed.)
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest


class ImpureUnitTestError(AssertionError):
    """A unit test reached for a process, a socket or a pty."""


def _refuse(what: str) -> object:
    def refuse(*_args: object, **_kwargs: object) -> object:
        raise ImpureUnitTestError(f"unit tests may not {what}; move the test to tests/integration")

    return refuse


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("bind a socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
    monkeypatch.setattr(os, "openpty", _refuse("open a pseudo-terminal"))
    monkeypatch.setattr(os, "fork", _refuse("fork"))
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/unit/" in str(item.path):
            item.add_marker(pytest.mark.unit)
