"""The console's login limiter (master_station/console/accounts.py), on an injected clock."""

from __future__ import annotations

from master_station.console.accounts import LoginLimiter


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_attempts_are_counted_before_the_check_and_a_success_takes_its_own_back() -> None:
    clock = _Clock()
    limiter = LoginLimiter(max_failures=2, window_s=60, clock=clock)
    assert limiter.attempt("10.0.0.1", "mgr-1") == 0
    assert limiter.attempt("10.0.0.1", "MGR-1") == 0  # the name's case is folded
    assert limiter.attempt("10.0.0.2", "mgr-1") > 0  # the name is spent, from anywhere
    assert limiter.attempt("10.0.0.1", "auditor") > 0  # so is the address
    clock.now += 61
    assert limiter.attempt("10.0.0.1", "auditor") == 0
    limiter.succeeded("10.0.0.1", "auditor")
    assert limiter.attempt("10.0.0.1", "admin") == 0


def test_the_limiter_forgets_the_oldest_names_past_its_bound() -> None:
    """A spray of made-up names from many addresses grew the table without end."""
    clock = _Clock()
    limiter = LoginLimiter(max_failures=5, window_s=300, max_keys=1000, clock=clock)
    for n in range(20_000):
        limiter.attempt(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", f"user-{n}")
    assert limiter.remembered() <= 1000
    clock.now += 301
    limiter.attempt("10.9.9.9", "late")
    assert limiter.remembered() <= 1000
