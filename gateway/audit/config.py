"""Config section of the audit trail ([audit]): checkpoint interval, and whether the identity
key that signs checkpoints is required (production default: yes).

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
    require_identity: bool = field(
        default=True,
        metadata=spec(
            doc="refuse to start without state_dir/identity.key (exit 78); false only for "
            "bench, demo and test gateways, whose trail is then unsigned"
        ),
    )
