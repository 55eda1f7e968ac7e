"""`sealgw master serve` as operators run it, in real processes: HTTPS only when given a
certificate, plain HTTP refused off loopback, no secret in its output, the login limit not
fooled by forwarding headers, and both ways of running beside the listener: in its process
(`serve --broker URL --listen`) and next to `sealgw master listen` over one ledger."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.console import PASSWORD, ConsoleClient, csrf_of, self_signed
from tests.fixtures.master import ChainBuilder
from tests.fixtures.mosquitto import Broker
from tests.fixtures.procs import kill_marked, marked_env, new_mark, poll_until

_URL = re.compile(r"console at (https?://[^/\s]+)/")


class _Program:
    """A `sealgw` subprocess with its output in a file."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", *args], stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def url(self) -> str:
        poll_until(lambda: bool(_URL.search(self.text())) or self.process.poll() is not None,
                   60, "the console's URL")  # fmt: skip
        found = _URL.search(self.text())
        assert found is not None, self.text()
        parts = urlsplit(found.group(1))
        poll_until(lambda: _accepts(parts.hostname or "", parts.port or 0), 60,
                   "the console accepting connections")  # fmt: skip
        return found.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def _programs(tmp_path: Path) -> Iterator[Any]:
    mark = new_mark()
    env = {**marked_env(mark), "SEALGW_CONSOLE_PASSWORD": PASSWORD}
    started: list[_Program] = []

    def start(name: str, *args: str) -> _Program:
        program = _Program(args, tmp_path / f"{name}.log", env)
        started.append(program)
        return program

    try:
        yield start
    finally:
        for program in reversed(started):
            program.stop()
        kill_marked(mark)


def _add_admin(start: Any, ledger: Path) -> None:
    adding = start("user-add", "master", "user", "add", "--ledger", str(ledger),
                   "--username", "admin", "--role", "admin")  # fmt: skip
    assert adding.process.wait(60) == 0, adding.text()


def test_serve_with_a_certificate_speaks_only_https_and_prints_no_secret(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    ledger = tmp_path / "ledger.db"
    with _programs(tmp_path) as start:
        _add_admin(start, ledger)
        serve = start("serve", "master", "serve", "--ledger", str(ledger), "--port", "0",
                      "--cert", str(cert), "--key", str(key))  # fmt: skip
        base = serve.url()
        assert base.startswith("https://127.0.0.1:")
        with httpx.Client(timeout=10) as plain:  # the same port, without TLS: no HTTP answer
            try:
                answer = plain.get(base.replace("https://", "http://") + "/login")
            except httpx.HTTPError:
                answer = None
            assert answer is None or answer.status_code >= 400
        client = ConsoleClient(base, cert)
        try:
            assert client.login("admin").status_code == 303
            page = client.get("/districts")
            assert page.status_code == 200
            assert page.headers["strict-transport-security"].startswith("max-age=")
            assert "server" not in page.headers
            session = next(v for k, v in client.http.cookies.items() if "session" in k)
            csrf = csrf_of(page.text)
            guesses = ConsoleClient(base, cert)
            try:
                token = csrf_of(guesses.get("/login").text)
                codes = [guesses.http.post("/login", headers={"x-forwarded-for": f"10.0.0.{n}"},
                                           data={"username": f"nobody-{n}", "password": "guess",
                                                 "csrf_token": token}).status_code
                         for n in range(6)]  # fmt: skip
            finally:
                guesses.close()
            assert codes == [401] * 5 + [429], codes  # the connection's address, not the header
        finally:
            client.close()
        serve.stop()
        output = serve.text()
    for secret in (PASSWORD, session, csrf):
        assert secret not in output


def test_serve_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    """Without a certificate, a console on an intranet address took passwords in clear."""
    ledger = tmp_path / "ledger.db"
    with _programs(tmp_path) as start:
        refused = start("refused", "master", "serve", "--ledger", str(ledger), "--port", "0",
                        "--host", "0.0.0.0")  # fmt: skip
        assert refused.process.wait(60) == 2, refused.text()
        assert "--cert" in refused.text() and "console at" not in refused.text()
        allowed = start("plain", "master", "serve", "--ledger", str(ledger), "--port", "0",
                        "--host", "0.0.0.0", "--plain-http")  # fmt: skip
        assert allowed.url().startswith("http://0.0.0.0:")


def test_serve_listen_runs_the_listener_in_the_consoles_process(
    mosquitto: Broker, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.db"
    cert, key = self_signed(tmp_path)
    with _programs(tmp_path) as start:
        _add_admin(start, ledger)
        serve = start("serve", "master", "serve", "--ledger", str(ledger), "--port", "0",
                      "--cert", str(cert), "--key", str(key), "--broker", mosquitto.url,
                      "--listen")  # fmt: skip
        base = serve.url()
        poll_until(lambda: "listening as" in serve.text(), 30, "the listener in serve")
        tamper = _publish_a_tamper(mosquitto, "gw-s", "d-s")
        _see_the_alarm(base, cert, tamper, "d-s")
        pids = {serve.process.pid}
        assert _programs_on(ledger) <= pids  # nothing else holds the ledger


def test_serve_beside_a_listener_reads_what_it_stores(mosquitto: Broker, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    cert, key = self_signed(tmp_path)
    with _programs(tmp_path) as start:
        _add_admin(start, ledger)
        listen = start("listen", "master", "listen", "--ledger", str(ledger), "--broker",
                       mosquitto.url)  # fmt: skip
        serve = start("serve", "master", "serve", "--ledger", str(ledger), "--port", "0",
                      "--cert", str(cert), "--key", str(key))  # fmt: skip
        base = serve.url()
        poll_until(lambda: "listening as" in listen.text(), 30, "the listener")
        tamper = _publish_a_tamper(mosquitto, "gw-t", "d-t")
        _see_the_alarm(base, cert, tamper, "d-t")
        assert "listening as" not in serve.text()  # the console itself listens to nothing


def _publish_a_tamper(broker: Broker, gateway: str, district: str) -> str:
    chain = ChainBuilder(gateway)
    chain.add("gateway.started", data={"district": district})
    tamper = chain.add("seal.tamper", "SL-0001", {"source": "advert"})
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=gateway, protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for event in chain.events:
            client.publish(f"sealgw/v1/{gateway}/events/{event.type}", event.payload,
                           qos=1).wait_for_publish(10)  # fmt: skip
    finally:
        client.disconnect()
        client.loop_stop()
    return tamper.id


def _see_the_alarm(base: str, cert: Path, alarm_id: str, district: str) -> None:
    client = ConsoleClient(base, cert)
    try:
        assert client.login("admin").status_code == 303

        def shown() -> bool:
            summary = client.get("/api/summary").json()
            return bool(summary["open_alarms_by_district"].get(district))

        poll_until(shown, 30, "the alarm in the console")
        page = client.get(f"/alarms/{alarm_id}")
        assert page.status_code == 200 and f'data-alarm-id="{alarm_id}"' in page.text
    finally:
        client.close()


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _programs_on(path: Path) -> set[int]:
    """Processes with `path` open (from /proc), this test's own process left out."""
    found: set[int] = set()
    target = str(path.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        found.add(int(entry.name))
    return found
