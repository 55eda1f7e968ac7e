"""Shared fixtures: the fixture modules of tests/fixtures/ are pytest plugins, one line each.

A test asks for a plugin's fixture by name (`mosquitto`, `auth_world`, `handheld_bench`,
`lock_bench`, ...); the modules' helpers stay importable for tests that need other settings.
"""

from hypothesis import settings

pytest_plugins: list[str] = [
    "tests.fixtures.auth",
    "tests.fixtures.browser",
    "tests.fixtures.handheld",
    "tests.fixtures.locks",
    "tests.fixtures.mosquitto",
    "tests.fixtures.remote",
]

# Hypothesis's per-example deadline (200 ms) is a timing assertion: on a loaded 2-core machine a
# pure example took 425 ms and failed the suite. Timings belong in bench/, so no deadline here.
settings.register_profile("sealgw", deadline=None)
settings.load_profile("sealgw")
