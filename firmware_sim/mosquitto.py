"""A private Mosquitto broker on a free port, for the bench, the demo and the tests."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from firmware_sim.children import die_with_parent
from gateway.errors import GatewayError

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
PASSWD_PATHS = ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd")


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """Server-side TLS files; `require_certificate` makes clients present one."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True
    identity_as_username: bool = False


def find_tool(name: str, candidates: tuple[str, ...] = MOSQUITTO_PATHS) -> str:
    """A Mosquitto binary, or a clear error saying how to get it."""
    found = shutil.which(name) or next((p for p in candidates if os.access(p, os.X_OK)), None)
    if found is None:
        raise GatewayError(f"{name} not found: install it (apt-get install mosquitto)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """Runs mosquitto with its own config in `workdir`; restartable on the same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = 0,
        tls: BrokerTls | None = None,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        receive_maximum: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._may_move = not port  # a port we picked may be taken before mosquitto binds it
        self.tls = tls
        self.users = dict(users or {})
        self.acl = acl
        self.receive_maximum = receive_maximum
        self._process: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benches read its CPU time)."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections.

        On its first start, a broker whose port we picked moves to another free port when the
        picked one was taken in the meantime; a restart always keeps its port.
        """
        for _attempt in range(3 if self._may_move else 1):
            try:
                self._start_once(timeout)
            except GatewayError:
                self.stop()
                if not self._may_move:
                    raise
                self.port = free_port()
            else:
                self._may_move = False
                return
        self._start_once(timeout)
        self._may_move = False

    def _start_once(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(self._config_text())
        self._process = subprocess.Popen(
            [find_tool("mosquitto"), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),  # noqa: PLW1509 (lock-free, children.py)
        )
        self._wait_listening(timeout)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait for it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """What mosquitto logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> MosquittoBroker:
        try:
            self.start()
        except BaseException:  # a failed or interrupted start leaves no broker behind
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _config_text(self) -> str:
        lines = [
            f"user {getpass.getuser()}",  # as root, mosquitto would switch to "mosquitto"
            f"listener {self.port} {self.host}",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type all",
            "connection_messages true",
            "max_queued_messages 0",
            f"allow_anonymous {'false' if self.users else 'true'}",
        ]
        if self.receive_maximum:  # also the MQTT 5 Receive Maximum announced to clients
            lines.append(f"max_inflight_messages {self.receive_maximum}")
        if self.users:
            lines.append(f"password_file {self._write_passwords()}")
        if self.acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        if self.tls:
            lines += self._tls_lines(self.tls)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _tls_lines(tls: BrokerTls) -> list[str]:
        lines = [
            f"cafile {tls.ca_file}",
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
            f"require_certificate {'true' if tls.require_certificate else 'false'}",
        ]
        if tls.identity_as_username:
            lines.append("use_identity_as_username true")
        return lines

    def _write_passwords(self) -> Path:
        path = self.workdir / "passwd"
        path.write_text("")
        path.chmod(0o600)
        tool = find_tool("mosquitto_passwd", PASSWD_PATHS)
        for user, password in self.users.items():
            subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
        return path

    def _wait_listening(self, timeout: float) -> None:
        """Wait until this mosquitto says it runs and its port answers (not someone else's)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                self._process = None
                raise GatewayError(f"mosquitto exited at start:\n{self.log_text()[-2000:]}")
            if self._says_running() and self._port_answers():
                return
            time.sleep(0.02)
        self.stop()
        raise GatewayError(f"mosquitto did not listen on {self.host}:{self.port}")

    def _says_running(self) -> bool:
        """The log of the latest start says "running" (it appends across restarts)."""
        return " running" in self.log_text().rsplit(" starting", 1)[-1]

    def _port_answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), 0.2):
                return True
        except OSError:
            return False
