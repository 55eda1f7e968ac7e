"""Helpers for tests of the [ble] config section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import loader as config_loader
from gateway.locks.config import BleSection


def ble_section(table: Mapping[str, Any], base_dir: Path) -> BleSection:
    """Build [ble] through the real config loader."""
    config = config_loader.parse_config(
        {"gateway": {"id": "gw-test"}, "ble": table}, base_dir=base_dir
    )
    return config.ble
