"""What every probe measures with: batched per-call times, medians, nearest-rank percentiles."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

__all__ = ["median", "per_call_us", "percentile"]


def per_call_us(operation: Callable[[], object], batch: int, rounds: int) -> float:
    """Median over `rounds` of the mean microseconds per call in a batch of `batch` calls."""
    operation()  # warm caches (lru_cache of key order, imports)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(samples)


def median(values: Sequence[float]) -> float:
    """The median; ValueError on no values."""
    return statistics.median(values)


def percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile (p50 of 1..4 is 2); ValueError on no values."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * percent / 100) - 1)]
