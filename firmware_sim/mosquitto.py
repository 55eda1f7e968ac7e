"""A private Mosquitto broker on a free port, for the bench, the demo and the tests."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """Server-side TLS files; `require_certificate` makes clients present one."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True


def find_mosquitto() -> str:
    """The mosquitto binary, or a clear error saying how to get it."""
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise GatewayError("mosquitto not found: install it (apt-get install mosquitto)")
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
        acl_file: Path | None = None,
        password_file: Path | None = None,
        receive_maximum: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.acl_file = acl_file
        self.password_file = password_file
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

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(self._config_text())
        self._process = subprocess.Popen(
            [find_mosquitto(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
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
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _config_text(self) -> str:
        lines = [
            f"user {getpass.getuser()}",  # as root, mosquitto would switch to "mosquitto"
            f"listener {self.port} {self.host}",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 0",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
        ]
        if self.receive_maximum:  # also the MQTT 5 Receive Maximum announced to clients
            lines.append(f"max_inflight_messages {self.receive_maximum}")
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        if self.tls:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
            if self.tls.require_certificate and not self.password_file:
                lines.append("use_identity_as_username true")
        return "\n".join(lines) + "\n"

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise GatewayError(f"mosquitto exited at start:\n{self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise GatewayError(f"mosquitto did not listen on {self.host}:{self.port}")
