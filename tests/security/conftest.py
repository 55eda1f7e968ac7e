"""Marks every test under tests/security with the `security` marker (docs/security.md)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/security/" in str(item.path):
            item.add_marker(pytest.mark.security)
