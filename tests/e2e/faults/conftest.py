"""Marks every test under tests/e2e/faults with the `faults` marker."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/e2e/faults/" in str(item.path):
            item.add_marker(pytest.mark.faults)
