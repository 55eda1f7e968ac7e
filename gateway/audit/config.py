"""Config section of the audit trail ([audit]): how often the gateway signs a checkpoint.

Kept apart from gateway.checkpoint so gateway.config.model can import it without the cryptography
imports; see docs/audit.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config.spec import spec

__all__ = ["AuditSection"]


@dataclass(frozen=True, slots=True)
class AuditSection:
    """Signed checkpoints of the event chain (gateway.checkpoint)."""

    checkpoint_interval_s: float = field(
        default=300.0,
        metadata=spec(
            minimum=10, maximum=86_400, doc="seconds between signed checkpoints of the chain"
        ),
    )
