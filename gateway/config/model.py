"""Gateway configuration: TOML loaded once into frozen dataclasses and validated.

Each section is a dataclass; each field may carry validation metadata (`spec(...)`). The
loader in gateway.config.loader walks these declarations, so adding a key is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.audit.config import AuditSection
from gateway.auth.config import AuthorizationSection
from gateway.config.spec import spec
from gateway.errors import ConfigError
from gateway.handheld.config import HandheldSection
from gateway.locks.config import BleSection
from gateway.meters.config import MetersSection, TheftSection
from gateway.store.config import MIB, BufferSection
from gateway.uplink.config import UplinkSection

__all__ = [
    "MIB",
    "BufferSection",
    "GatewayConfig",
    "MetersSection",
    "TheftSection",
    "UplinkSection",
    "spec",
]


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """Who this gateway is and where it keeps its state."""

    id: str = field(metadata=spec(pattern=r"^[A-Za-z0-9_-]{1,64}$", doc="gateway id"))
    district: str = field(default="district-1", metadata=spec(pattern=r"^[A-Za-z0-9_.-]{1,64}$"))
    state_dir: Path = Path("/var/lib/sealgw")


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

    def __post_init__(self) -> None:
        if self.handheld.enabled and self.handheld.listen == "ble":
            _check_handheld_ble(self.ble)

    @property
    def buffer_path(self) -> Path:
        return self.buffer.path or self.gateway.state_dir / "buffer.db"

    @property
    def client_id(self) -> str:
        return self.uplink.client_id or self.gateway.id


def _check_handheld_ble(ble: BleSection) -> None:
    """Handhelds over BLE share the locks' adapter (BlueZ or bumble): `[ble]` must be set."""
    if not ble.locks:
        raise ConfigError("handheld.listen", "ble needs the [ble] adapter and its locks")
    if ble.max_connections < 2:
        raise ConfigError("ble.max_connections", "handhelds over BLE need at least 2 links")
