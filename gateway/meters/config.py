"""Config sections of the meter service ([meters]) and of theft correlation ([theft]).

The loader in gateway.config.loader builds these like every other section; `__post_init__`
checks what spans several keys (bus names, meter ids, addresses), naming the offending key.
See docs/meters.md and docs/theft.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.spec import spec
from gateway.errors import ConfigError

__all__ = ["BusConfig", "Deadbands", "MeterConfig", "MetersSection", "TheftSection"]

_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_DLT645_ADDRESS = re.compile(r"^[0-9]{12}$")
_BUS_SCHEMES = ("modbus-tcp://", "rtu://", "rtu-over-tcp://", "dlt645-tcp://", "dlt645-serial://")


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One line and its owner: a transport string, the inter-frame gap and the timeout."""

    name: str = field(metadata=spec(pattern=_NAME, doc="bus name meters refer to"))
    transport: str = field(metadata=spec(doc="modbus-tcp://, rtu://, dlt645-tcp://, ..."))
    gap_s: float | None = field(default=None, metadata=spec(minimum=0, maximum=10))
    timeout_s: float = field(default=1.0, metadata=spec(minimum=0.01, maximum=60))

    @property
    def protocol(self) -> str:
        """`dlt645` or `modbus`, from the transport's scheme."""
        return "dlt645" if self.transport.startswith("dlt645-") else "modbus"


@dataclass(frozen=True, slots=True)
class Deadbands:
    """Smallest change of a value, by kind, that makes a reading worth reporting.

    Energy is in kWh, voltage in V, current in A, power in W (a kW value is compared with
    power / 1000), frequency in Hz. Status values report on any change.
    """

    energy: float = field(default=0.1, metadata=spec(minimum=0))
    voltage: float = field(default=2.0, metadata=spec(minimum=0))
    current: float = field(default=0.2, metadata=spec(minimum=0))
    power: float = field(default=50.0, metadata=spec(minimum=0))
    power_factor: float = field(default=0.02, metadata=spec(minimum=0))
    frequency: float = field(default=0.05, metadata=spec(minimum=0))


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """One meter: where it is, what it speaks and which box seal guards it."""

    id: str = field(metadata=spec(pattern=_NAME, doc="meter id, the subject of its events"))
    bus: str = field(metadata=spec(pattern=_NAME, doc="name of a [[meters.buses]] entry"))
    profile: str = field(metadata=spec(pattern=r"^[a-z0-9][a-z0-9_.-]*$"))
    unit: int = field(default=1, metadata=spec(minimum=1, maximum=247, doc="Modbus unit id"))
    address: str = field(default="", metadata=spec(doc="DL/T 645 address, 12 digits"))
    poll_s: float = field(default=60.0, metadata=spec(minimum=0.1, maximum=86400))
    seal: str = field(default="", metadata=spec(doc="id of the box seal; empty: none"))
    district: str = field(default="", metadata=spec(doc="empty: the gateway's district"))
    deadbands: Deadbands = Deadbands()
    district_meter: bool = field(
        default=False, metadata=spec(doc="the district's own meter (总表): what enters it")
    )
    ct_ratio: float = field(
        default=1.0, metadata=spec(minimum=0.001, maximum=100_000, doc="current transformer")
    )
    vt_ratio: float = field(
        default=1.0, metadata=spec(minimum=0.001, maximum=100_000, doc="voltage transformer")
    )


@dataclass(frozen=True, slots=True)
class MetersSection:
    """The meter service: buses, meters, profiles and time sync."""

    profiles_dir: Path = Path("/etc/sealgw/profiles")
    time_sync_s: float = field(default=86400.0, metadata=spec(minimum=0, doc="0: never"))
    heartbeat_polls: int = field(default=10, metadata=spec(minimum=1, maximum=100_000))
    buses: tuple[BusConfig, ...] = ()
    meters: tuple[MeterConfig, ...] = ()

    def __post_init__(self) -> None:
        buses = _unique_buses(self.buses)
        ids: set[str] = set()
        districts: set[str] = set()
        for index, meter in enumerate(self.meters):
            _check_meter(meter, index, buses, ids)
            if meter.district_meter:
                if meter.district in districts:
                    key = f"meters.meters[{index}].district_meter"
                    raise ConfigError(key, f"district {meter.district!r} has two district meters")
                districts.add(meter.district)

    def bus(self, name: str) -> BusConfig:
        """The bus called `name`; KeyError if there is none."""
        for bus in self.buses:
            if bus.name == name:
                return bus
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class TheftSection:
    """Theft correlation rules (docs/theft.md): toggles and thresholds."""

    enabled: bool = True
    cover_open_under_seal: bool = True
    energy_decrease_under_seal: bool = True
    energy_drop_under_seal: bool = True
    armed_states: tuple[str, ...] = ("sealed",)
    energy_drop_ratio: float = field(default=0.2, metadata=spec(minimum=0, maximum=1))
    window_s: float = field(default=3600.0, metadata=spec(minimum=1, maximum=7 * 86400))
    trailing_windows: int = field(default=24, metadata=spec(minimum=1, maximum=10_000))
    min_windows: int = field(default=3, metadata=spec(minimum=1, maximum=10_000))
    min_trailing_kwh: float = field(default=0.1, metadata=spec(minimum=0))
    decrease_tolerance_kwh: float = field(default=0.01, metadata=spec(minimum=0))
    powered_voltage: float = field(default=100.0, metadata=spec(minimum=0))
    debounce_s: float | None = field(default=None, metadata=spec(minimum=0, doc="default window_s"))
    line_loss: bool = True
    line_loss_interval_s: float = field(default=86400.0, metadata=spec(minimum=60, maximum=86400))
    line_loss_min_rate: float = field(default=0.0, metadata=spec(minimum=-1, maximum=1))
    line_loss_max_rate: float = field(default=0.10, metadata=spec(minimum=0, maximum=1))
    line_loss_jump: float = field(default=0.03, metadata=spec(minimum=0, maximum=1))
    line_loss_baseline_intervals: int = field(default=7, metadata=spec(minimum=1, maximum=1000))
    line_loss_min_baseline: int = field(default=3, metadata=spec(minimum=1, maximum=1000))
    line_loss_settle_s: float = field(default=3600.0, metadata=spec(minimum=0, maximum=86400))
    line_loss_max_skew_s: float = field(default=300.0, metadata=spec(minimum=0, maximum=3600))
    line_loss_max_interp_s: float = field(default=7200.0, metadata=spec(minimum=1, maximum=86400))
    line_loss_min_drop_ratio: float = field(default=0.15, metadata=spec(minimum=0, maximum=1))
    line_loss_supply_tolerance: float = field(default=0.10, metadata=spec(minimum=0, maximum=1))

    @property
    def debounce(self) -> float:
        """Seconds between two alarms of one rule for one meter."""
        return self.window_s if self.debounce_s is None else self.debounce_s


def _unique_buses(buses: tuple[BusConfig, ...]) -> dict[str, BusConfig]:
    named: dict[str, BusConfig] = {}
    for index, bus in enumerate(buses):
        if bus.name in named:
            raise ConfigError(f"meters.buses[{index}].name", f"duplicate bus {bus.name!r}")
        if not bus.transport.startswith(_BUS_SCHEMES):
            known = ", ".join(_BUS_SCHEMES)
            raise ConfigError(f"meters.buses[{index}].transport", f"expected one of {known}")
        named[bus.name] = bus
    return named


def _check_meter(
    meter: MeterConfig, index: int, buses: dict[str, BusConfig], ids: set[str]
) -> None:
    key = f"meters.meters[{index}]"
    if meter.id in ids:
        raise ConfigError(f"{key}.id", f"duplicate meter {meter.id!r}")
    ids.add(meter.id)
    bus = buses.get(meter.bus)
    if bus is None:
        raise ConfigError(f"{key}.bus", f"no bus named {meter.bus!r} in meters.buses")
    if bus.protocol == "dlt645" and not _DLT645_ADDRESS.match(meter.address):
        raise ConfigError(f"{key}.address", "a DL/T 645 meter needs a 12-digit address")
    if bus.protocol == "modbus" and meter.address:
        raise ConfigError(f"{key}.address", "Modbus meters use unit, not address")
