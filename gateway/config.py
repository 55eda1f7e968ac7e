"""Gateway configuration: TOML loaded once into frozen dataclasses and validated.

Each section is a dataclass; each field may carry validation metadata (`spec(...)`). The
loader in gateway.config_loader walks these declarations, so adding a key is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.config_audit import AuditSection
from gateway.config_authorization import AuthorizationSection
from gateway.config_ble import BleSection
from gateway.config_handheld import HandheldSection
from gateway.config_meters import MetersSection, TheftSection
from gateway.config_spec import spec

__all__ = ["GatewayConfig", "MetersSection", "TheftSection", "spec"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """Who this gateway is and where it keeps its state."""

    id: str = field(metadata=spec(pattern=r"^[A-Za-z0-9_-]{1,64}$", doc="gateway id"))
    district: str = field(default="district-1", metadata=spec(pattern=r"^[A-Za-z0-9_.-]{1,64}$"))
    state_dir: Path = Path("/var/lib/sealgw")


@dataclass(frozen=True, slots=True)
class BufferSection:
    """The durable SQLite event buffer."""

    path: Path | None = None  # default: state_dir / "buffer.db"
    max_bytes: int = field(default=256 * MIB, metadata=spec(minimum=256 * 1024))
    audit_reserve_bytes: int = field(default=16 * MIB, metadata=spec(minimum=0))
    retain_published_s: float = field(default=72 * 3600.0, metadata=spec(minimum=0))
    synchronous: Literal["full", "normal"] = "full"
    batch_max: int = field(default=2048, metadata=spec(minimum=1, maximum=100_000))


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


@dataclass(frozen=True, slots=True)
class LogSection:
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True, slots=True)
class HealthSection:
    """Periodic gateway.health events."""

    interval_s: float = field(default=60.0, metadata=spec(minimum=1, maximum=86400))


@dataclass(frozen=True, slots=True)
class SyntheticSection:
    """A synthetic telemetry source for demos, benches and crash tests; off in production."""

    enabled: bool = False
    rate_per_s: float = field(default=10.0, metadata=spec(minimum=0.1, maximum=100_000))
    priority: Literal["alarm", "audit", "state", "telemetry"] = "telemetry"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole gateway configuration."""

    gateway: GatewaySection
    buffer: BufferSection = field(default_factory=BufferSection)
    uplink: UplinkSection = field(default_factory=UplinkSection)
    log: LogSection = field(default_factory=LogSection)
    health: HealthSection = field(default_factory=HealthSection)
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    ble: BleSection = field(default_factory=BleSection)
    meters: MetersSection = field(default_factory=MetersSection)
    theft: TheftSection = field(default_factory=TheftSection)
    handheld: HandheldSection = field(default_factory=HandheldSection)
    authorization: AuthorizationSection = field(default_factory=AuthorizationSection)
    audit: AuditSection = field(default_factory=AuditSection)
    source: Path | None = field(default=None, metadata=spec(doc="the file it was loaded from"))

    @property
    def buffer_path(self) -> Path:
        return self.buffer.path or self.gateway.state_dir / "buffer.db"

    @property
    def client_id(self) -> str:
        return self.uplink.client_id or self.gateway.id
