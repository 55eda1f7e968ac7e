"""Validation metadata for config fields, in a module of its own so section modules can share it.

gateway.config.model imports the section modules (config_meters, ...), and they need `spec`; keeping
`spec` here, below both, avoids an import cycle.
"""

from __future__ import annotations

from typing import Any

__all__ = ["spec"]


def spec(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    pattern: str | None = None,
    must_exist: bool = False,
    secret_file: bool = False,
    doc: str = "",
) -> dict[str, Any]:
    """Validation metadata for a config field."""
    return {
        "minimum": minimum,
        "maximum": maximum,
        "pattern": pattern,
        "must_exist": must_exist,
        "secret_file": secret_file,
        "doc": doc,
    }
