"""A simulated distribution district (台区): customer meters and the district meter (总表).

The district meter's load is what really enters the district: the sum of what every customer
really draws (metered or bypassed), plus a technical loss (lines and transformer, a share of
the load) and a little noise that changes day by day. Each customer's load is a household curve
scaled by a factor drawn per day, so days differ. Everything is seeded: the same seed gives the
same days.

The bypass theft scenario: a customer's box is tampered, and from then on a share of that
customer's load flows around the meter (`SimMeter.bypass`). The customer's meter counts less;
the district meter, upstream, still counts all of it, so the district's line loss jumps.

`ScaledClock` compresses time for a demonstration: on it a simulated day passes in seconds,
so daily line-loss intervals close within a short demo. Its meters ignore broadcast time
syncs, which would otherwise pull them back to the wall clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal

from firmware_sim.meters.dlt645 import LoadCurve, SimMeter, residential_load
from gateway.protocol.clock import Clock
from gateway.protocol.dlt645 import METER_TZ

__all__ = ["DAY_S", "ScaledClock", "SimDistrict", "daily_varied"]

DAY_S = 86400.0


class ScaledClock:
    """`base` time `factor` times faster, starting just before the next meter-local midnight.

    It never runs behind `base`: the start is at most a minute before that midnight, and not
    before `base.now()`. So the first daily freeze comes at once and every later one follows
    a simulated day (`DAY_S / factor` seconds of `base`) after the previous.
    """

    def __init__(self, base: Clock, factor: float) -> None:
        if factor < 1:
            raise ValueError("a scaled clock runs at least as fast as its base")
        self._base = base
        self._factor = factor
        self._mono0 = base.monotonic()
        now = base.now().astimezone(METER_TZ)
        midnight = datetime.combine(now.date() + timedelta(days=1), dtime(), METER_TZ)
        self._start = max(now, midnight - timedelta(minutes=1))

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    def monotonic(self) -> float:
        return (self._base.monotonic() - self._mono0) * self._factor

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds / self._factor)


def daily_varied(base: LoadCurve, seed: str, spread: float) -> LoadCurve:
    """`base` scaled by a factor in [1 - spread, 1 + spread] drawn once per meter-local day."""
    factors: dict[date, float] = {}

    def load(when: datetime) -> float:
        day = when.date()
        if day not in factors:
            factors[day] = 1.0 + random.Random(f"{seed}:{day}").uniform(-spread, spread)
        return base(when) * factors[day]

    return load


class SimDistrict:
    """`customers` meters and one district meter on one clock; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        customers: int,
        *,
        seed: int = 1,
        technical_loss: float = 0.04,
        noise: float = 0.003,
        spread: float = 0.15,
        district_address: str = "310000000000",
    ) -> None:
        self.technical_loss = technical_loss
        self.noise = noise
        self.seed = seed
        self.customers = [
            SimMeter(
                f"3100000001{n:02d}",
                clock,
                load=daily_varied(_scaled(residential_load, 0.6 + 0.2 * n), f"{seed}:{n}", spread),
                forward_kwh=Decimal(1000 + 37 * n),
            )
            for n in range(1, customers + 1)
        ]
        self.district_meter = SimMeter(
            district_address, clock, load=self.supply_kw, phases=3, forward_kwh=Decimal("50000.00")
        )
        if isinstance(clock, ScaledClock):
            for meter in self.meters:
                meter.clock_settable = False

    @property
    def meters(self) -> list[SimMeter]:
        """The district meter first, then the customers."""
        return [self.district_meter, *self.customers]

    def supply_kw(self, when: datetime) -> float:
        """Power entering the district: every customer's real load, plus loss and noise."""
        drawn = sum(customer.load_kw(when) for customer in self.customers)
        wobble = random.Random(f"{self.seed}:noise:{when.date()}").uniform(-1.0, 1.0)
        return drawn * (1.0 + self.technical_loss + self.noise * wobble)

    def bypass(self, index: int, share: float) -> SimMeter:
        """Start the theft: customer `index` (0-based) loses `share` of its load to a bypass."""
        customer = self.customers[index]
        customer.advance()
        customer.bypass = share
        return customer


def _scaled(curve: LoadCurve, factor: float) -> Callable[[datetime], float]:
    return lambda when: curve(when) * factor
