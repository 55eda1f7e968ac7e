"""Shared fixtures. Each fixture module registers itself here with one line."""

pytest_plugins: list[str] = [
    "tests.fixtures.mosquitto",
    "tests.fixtures.remote",
]
