"""docs/deploy.md's BlueZ settings are the ones the test bed runs bluetoothd with.

tests/bluez/guest_handheld.py restarts bluetoothd 5.66 with `DEPLOY_MAIN_CONF` and checks
that it takes every key; this keeps that text equal to the `main.conf` the guide tells a Pi
to install (section 3.1), key for key, so a setting changed in one place fails here.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from tests.bluez.guest_handheld import DEPLOY_MAIN_CONF

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "deploy.md"


def _ini(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def _section_3_1_main_conf() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### 3.1 BlueZ settings") : text.index("### 3.2")]
    (block,) = re.findall(r"```ini\n(.*?)```", section, flags=re.DOTALL)
    return block


def test_the_bed_runs_bluetoothd_with_the_guides_main_conf() -> None:
    documented = _ini(_section_3_1_main_conf())
    assert documented == _ini(DEPLOY_MAIN_CONF)
    assert "SecureConnections" not in documented["General"]  # BlueZ 5.66 does not know it
