"""The private broker launcher: ready means this mosquitto runs, and a picked port can move."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from firmware_sim.mosquitto import MosquittoBroker
from gateway.errors import GatewayError


def squat() -> tuple[socket.socket, int]:
    """A listening socket on a free port: what another process taking 'our' port looks like."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, int(sock.getsockname()[1])


def test_a_picked_port_taken_meanwhile_moves_and_a_restart_keeps_it(tmp_path: Path) -> None:
    squatter, taken = squat()
    with squatter:
        broker = MosquittoBroker(tmp_path)
        broker.port = taken  # as if someone bound it between our pick and mosquitto's bind
        broker.start()
        try:
            assert broker.port != taken
            assert broker.running
            moved = broker.port
            broker.restart()
            assert (broker.port, broker.running) == (moved, True)
        finally:
            broker.stop()


def test_an_explicit_port_that_is_taken_is_a_clear_error(tmp_path: Path) -> None:
    squatter, taken = squat()
    with squatter:
        broker = MosquittoBroker(tmp_path, port=taken)
        with pytest.raises(GatewayError, match="mosquitto exited at start"):
            broker.start()
        assert not broker.running
