"""Shared fixtures. Each fixture module registers itself here with one line."""

from hypothesis import settings

pytest_plugins: list[str] = [
    "tests.fixtures.browser",
    "tests.fixtures.mosquitto",
    "tests.fixtures.remote",
]

# Hypothesis's per-example deadline (200 ms) is a timing assertion: on a loaded 2-core machine a
# pure example took 425 ms and failed the suite. Timings belong in bench/, so no deadline here.
settings.register_profile("sealgw", deadline=None)
settings.load_profile("sealgw")
