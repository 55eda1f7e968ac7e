"""Pacing on an injected clock: jittered reconnect backoff and a token-bucket drain limit."""

from __future__ import annotations

import random

from gateway.protocol.clock import Clock


class Backoff:
    """Full-jitter exponential backoff between `minimum` and `maximum` seconds."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self._minimum = minimum
        self._maximum = max(minimum, maximum)
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to `maximum`."""
        ceiling = min(self._maximum, self._minimum * 2.0 ** min(self._attempt, 32))
        self._attempt += 1
        return self._rng.uniform(self._minimum, ceiling)

    def reset(self) -> None:
        """Start again from `minimum` (after a successful connection)."""
        self._attempt = 0


class TokenBucket:
    """Allows `rate` items per second with a burst of one second's worth; rate 0 is unbounded."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self._rate = rate
        self._clock = clock
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._stamp = clock.monotonic()

    @property
    def unbounded(self) -> bool:
        return self._rate <= 0

    def take(self, wanted: int) -> int:
        """Take up to `wanted` whole tokens now and return how many were granted."""
        if self.unbounded:
            return wanted
        self._refill()
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def borrow(self, wanted: int, *, now: bool = False) -> int:
        """Take `wanted` tokens at once, into debt if need be, or none (0).

        For items that go in lumps (a batch message): a lump may go while the bucket is not in
        debt (or at once when `now`), and the debt then delays the next one, so the rate holds
        on average without cutting lumps to the tokens at hand.
        """
        if self.unbounded:
            return wanted
        self._refill()
        if self._tokens < 1 and not now:
            return 0
        self._tokens -= wanted
        return wanted

    def give_back(self, count: int) -> None:
        """Return tokens taken but not used (fewer events were pending than granted)."""
        if not self.unbounded and count > 0:
            self._tokens = min(self._capacity, self._tokens + count)

    def wait_time(self) -> float:
        """Seconds until at least one whole token is available."""
        if self.unbounded:
            return 0.0
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self._rate)

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
