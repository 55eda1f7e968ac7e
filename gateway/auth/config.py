"""Config section of the authorization policy ([authorization]); see docs/authorization.md.

Kept apart from the policy so the config model can import it without pulling in the policy
(and so without an import cycle); gateway.auth.policy turns it into a RoleTable with `role_table`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.spec import spec

__all__ = ["DEFAULT_SKEW_S", "AuthorizationSection", "RoleGrant"]

DEFAULT_SKEW_S = 120
_NAME = r"^[a-z][a-z0-9_]{0,31}$"


@dataclass(frozen=True, slots=True)
class RoleGrant:
    """One override of the role table: `role` in `flow` may do exactly `ops` ([] removes it)."""

    flow: str = field(metadata=spec(pattern=_NAME, doc="business flow"))
    role: str = field(metadata=spec(pattern=_NAME, doc="operator role"))
    ops: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationSection:
    """Ticket policy: clock-skew tolerance and overrides of the default role table."""

    skew_s: int = field(
        default=DEFAULT_SKEW_S,
        metadata=spec(minimum=0, maximum=3600, doc="tolerance on ticket and certificate windows"),
    )
    use_default_table: bool = True
    grants: tuple[RoleGrant, ...] = ()
    master_key_file: Path | None = field(
        default=None,
        metadata=spec(must_exist=True, doc="the master station's Ed25519 public key (hex or PEM)"),
    )
