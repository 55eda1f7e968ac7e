"""The [uplink] section: the MQTT connection's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.config.spec import spec

__all__ = ["UplinkSection"]


@dataclass(frozen=True, slots=True)
class UplinkSection:
    """The MQTT connection to the master station's broker."""

    url: str = field(
        default="mqtt://127.0.0.1:1883", metadata=spec(pattern=r"^mqtts?://[^/\s]+:\d+$")
    )
    client_id: str = ""  # default: the gateway id
    topic_root: str = field(default="sealgw/v1", metadata=spec(pattern=r"^[^#+\s]+[^/#+\s]$"))
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive_s: int = field(default=30, metadata=spec(minimum=5, maximum=3600))
    username: str = ""
    password_file: Path | None = field(
        default=None, metadata=spec(must_exist=True, secret_file=True)
    )
    ca_file: Path | None = field(default=None, metadata=spec(must_exist=True))
    cert_file: Path | None = field(default=None, metadata=spec(must_exist=True))
    key_file: Path | None = field(default=None, metadata=spec(must_exist=True, secret_file=True))
    reconnect_min_s: float = field(default=1.0, metadata=spec(minimum=0.05, maximum=600))
    reconnect_max_s: float = field(default=60.0, metadata=spec(minimum=0.1, maximum=3600))
    drain_rate_per_s: float = field(default=500.0, metadata=spec(minimum=0))
    max_inflight: int = field(default=100, metadata=spec(minimum=1, maximum=65535))
    encoding: Literal["json", "batch"] = "json"  # batch: docs/mqtt.md "Batch form"
    batch_max_events: int = field(default=256, metadata=spec(minimum=1, maximum=65536))
    batch_max_bytes: int = field(default=262144, metadata=spec(minimum=1024, maximum=4194304))
    batch_linger_s: float = field(default=2.0, metadata=spec(minimum=0, maximum=600))
    batch_workers: int = field(default=1, metadata=spec(minimum=0, maximum=16))
