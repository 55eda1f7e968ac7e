"""The import contracts of the gateway's outside users forbid every part of it but the contract.

import-linter's `forbidden` contracts list modules; they cannot say "everything but". So a new
subpackage of `gateway` would be open to the simulator, the master station and the bench until
someone listed it. This test lists them: every child of `gateway` except `protocol` and
`errors` must be forbidden to each of the three (docs/architecture.md).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import gateway

REPO = Path(__file__).resolve().parents[2]
ALLOWED = {"protocol", "errors", "__init__", "__main__"}
OUTSIDERS = ("firmware_sim", "master_station", "bench")


def _gateway_children() -> set[str]:
    root = Path(gateway.__file__).parent
    names = {p.stem for p in root.glob("*.py")} | {
        p.name for p in root.iterdir() if (p / "__init__.py").is_file()
    }
    return {f"gateway.{name}" for name in names - ALLOWED}


def _forbidden_to(source: str) -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["type"] == "forbidden" and contract["source_modules"] == [source]:
            return set(contract["forbidden_modules"])
    raise AssertionError(f"no forbidden contract for {source}")


@pytest.mark.parametrize("source", OUTSIDERS)
def test_every_part_of_the_gateway_but_its_contract_is_forbidden(source: str) -> None:
    children = _gateway_children()
    assert {"gateway.probe", "gateway.locks", "gateway.cli"} <= children  # the scan works

    missing = children - _forbidden_to(source)

    assert not missing, f"{source} may import {sorted(missing)}: add them to its contract"
