"""The control socket: a real Unix socket server in-process, the client, and `sealgw status`."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.admin import cmd_status, format_table, register_status_command
from gateway.daemon.control import (
    MAX_LINE,
    ControlServer,
    control_socket_path,
    query_status,
    request,
)
from gateway.errors import ControlError, GatewayError, GatewayNotRunningError

STATUS: dict[str, Any] = {
    "gateway": "gw-0001",
    "version": "0.1.0",
    "uptime_s": 12.5,
    "broker_connected": True,
    "buffer_depth": {"alarm": 0, "audit": 3, "state": 1, "telemetry": 250},
    "seals": {"S-1": {"state": "sealed", "battery": 87}},
    "last_error": None,
    "transports": ["bluez:hci0", "rtu:///dev/ttyUSB0"],
}


async def status_handler() -> dict[str, Any]:
    return STATUS


async def broken_handler() -> dict[str, Any]:
    raise RuntimeError("boom")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ControlServer]:
    srv = ControlServer(
        control_socket_path(tmp_path), {"status": status_handler, "broken": broken_handler}
    )
    await srv.start()
    yield srv
    await srv.stop()


def parse_status(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_status_command(parser.add_subparsers())
    return parser.parse_args(["status", *argv])


async def exchange(path: Path, *lines: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=2 * MAX_LINE)
    try:
        writer.write(b"".join(lines))
        await writer.drain()
        return [json.loads(await reader.readline()) for _ in lines]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_status_request_gets_the_handlers_dict(server: ControlServer) -> None:
    [reply] = await exchange(server.path, b'{"cmd":"status"}\n')
    assert reply == {"ok": True, "status": STATUS}


async def test_one_connection_carries_several_requests_and_errors(server: ControlServer) -> None:
    replies = await exchange(
        server.path,
        b'{"cmd":"status"}\n',
        b"not json\n",
        b'{"cmd":"reboot"}\n',
        b"[1,2]\n",
        b'{"cmd":"broken"}\n',
        b'{"cmd":"status"}\n',
    )
    assert [r["ok"] for r in replies] == [True, False, False, False, False, True]
    assert replies[1]["error"] == "bad request: not JSON"
    assert "unknown command 'reboot'" in replies[2]["error"]
    assert "known: broken, status" in replies[2]["error"]
    assert "unknown command None" in replies[3]["error"]
    assert replies[4]["error"] == "command broken failed; see the gateway log"
    assert "boom" not in json.dumps(replies)
    assert replies[5]["status"] == STATUS


async def test_overlong_request_is_answered_with_an_error(server: ControlServer) -> None:
    [reply] = await exchange(server.path, b'{"cmd":"' + b"x" * (MAX_LINE + 10) + b'"}\n')
    assert reply == {"ok": False, "error": "request too long"}
    [again] = await exchange(server.path, b'{"cmd":"status"}\n')
    assert again["ok"] is True


async def test_socket_is_mode_0660_and_removed_at_stop(tmp_path: Path) -> None:
    srv = ControlServer(tmp_path / "c.sock", {"status": status_handler})
    await srv.start()
    info = srv.path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    await srv.stop()
    assert not srv.path.exists()
    await srv.stop()  # idempotent


async def test_start_creates_a_missing_state_dir_private(tmp_path: Path) -> None:
    srv = ControlServer(tmp_path / "state" / "control.sock", {"status": status_handler})
    await srv.start()
    try:
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        assert await asyncio.to_thread(query_status, srv.path, 5.0) == STATUS
    finally:
        await srv.stop()


async def test_overlong_socket_path_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / ("d" * 120) / "control.sock"
    with pytest.raises(GatewayError, match="longer than 107 bytes"):
        await ControlServer(path, {}).start()


async def test_stop_drops_an_idle_client(tmp_path: Path) -> None:
    srv = ControlServer(tmp_path / "c.sock", {"status": status_handler})
    await srv.start()
    reader, writer = await asyncio.open_unix_connection(str(srv.path))
    writer.write(b'{"cmd":"status"}\n')
    assert json.loads(await reader.readline())["ok"] is True
    async with asyncio.timeout(5):
        await srv.stop()
        assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_start_replaces_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    make_stale_socket(path)
    srv = ControlServer(path, {"status": status_handler})
    await srv.start()
    try:
        [reply] = await exchange(path, b'{"cmd":"status"}\n')
        assert reply["ok"] is True
    finally:
        await srv.stop()


async def test_start_refuses_a_live_socket_and_a_regular_file(
    server: ControlServer, tmp_path: Path
) -> None:
    with pytest.raises(GatewayError, match="already listening"):
        await ControlServer(server.path, {}).start()
    [reply] = await exchange(server.path, b'{"cmd":"status"}\n')
    assert reply["ok"] is True
    regular = tmp_path / "file.sock"
    regular.write_text("data")
    with pytest.raises(GatewayError, match="not a socket"):
        await ControlServer(regular, {}).start()
    assert regular.read_text() == "data"


async def test_query_status_client(server: ControlServer) -> None:
    assert await asyncio.to_thread(query_status, server.path, 5.0) == STATUS


async def test_client_raises_the_gateways_error(server: ControlServer) -> None:
    with pytest.raises(ControlError, match="command broken failed"):
        await asyncio.to_thread(request, server.path, "broken", 5.0)


async def test_cli_status_prints_a_flattened_table(
    server: ControlServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(cmd_status, parse_status("--socket", str(server.path)))
    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert rows["gateway"] == "gw-0001"
    assert rows["broker_connected"] == "yes"
    assert rows["buffer_depth.telemetry"] == "250"
    assert rows["seals.S-1.state"] == "sealed"
    assert rows["seals.S-1.battery"] == "87"
    assert rows["last_error"] == "-"
    assert rows["transports"] == '["bluez:hci0", "rtu:///dev/ttyUSB0"]'
    assert len({len(line) - len(line.split(None, 1)[1]) for line in out.splitlines()}) == 1


async def test_cli_status_json(server: ControlServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(cmd_status, parse_status("--socket", str(server.path), "--json"))
    assert code == 0
    assert json.loads(capsys.readouterr().out) == STATUS


async def test_cli_status_finds_the_socket_through_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nid = "gw-0001"\nstate_dir = "state"\n')
    srv = ControlServer(control_socket_path(state), {"status": status_handler})
    await srv.start()
    try:
        code = await asyncio.to_thread(cmd_status, parse_status("-c", str(config), "--json"))
    finally:
        await srv.stop()
    assert code == 0
    assert json.loads(capsys.readouterr().out)["gateway"] == "gw-0001"


async def test_cli_status_on_a_stale_socket_says_no_gateway_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "control.sock"
    make_stale_socket(path)
    code = await asyncio.to_thread(cmd_status, parse_status("--socket", str(path)))
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.startswith(f"no gateway running: cannot connect to {path}")
    assert "stale" in err


def test_cli_status_without_a_socket_says_no_gateway_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing.sock"
    assert cmd_status(parse_status("--socket", str(path))) == 1
    assert f"no gateway running: cannot connect to {path}" in capsys.readouterr().err
    with pytest.raises(GatewayNotRunningError) as info:
        query_status(path, 1.0)
    assert info.value.path == path


async def test_cli_status_reports_a_daemon_side_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = ControlServer(tmp_path / "c.sock", {"status": broken_handler})
    await srv.start()
    try:
        code = await asyncio.to_thread(cmd_status, parse_status("--socket", str(srv.path)))
    finally:
        await srv.stop()
    assert code == 1
    assert "error: gateway refused 'status'" in capsys.readouterr().err


async def test_client_times_out_on_a_silent_listener(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        with pytest.raises(GatewayError, match=r"did not answer within 0\.2 s"):
            await asyncio.to_thread(query_status, path, 0.2)


def test_format_table_flattens_and_aligns() -> None:
    table = format_table({"a": 1, "nested": {"deeper": {"x": False}}, "empty": {}})
    assert table.splitlines() == [
        "a                1",
        "nested.deeper.x  no",
        "empty            {}",
    ]
    assert format_table({}) == "(empty status)"


def make_stale_socket(path: Path) -> None:
    """A socket file left behind by a process that died without unlinking it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    assert stat.S_ISSOCK(path.stat().st_mode)
