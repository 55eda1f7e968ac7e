"""Authorization and audit bench: policy decisions, ticket verification, checkpoint signatures.

The gateway measures itself: `sealgw probe authz` (gateway/probe/authz.py, docs/probe.md) runs
as a child process and the bench reports its figures under the names below.

- decide: policy.decide on a realistic allowed request (signed ticket for two seals, operator
  certificate, a revocation list with a few hundred entries, the default role table). decide
  re-verifies the three Ed25519 signatures on every call, as the daemon does, so that is what
  decisions_per_s measures. decide takes no pre-verified inputs; for the cost of the decision
  logic alone, the probe also runs it with the signature check stood in for (logic_only_*).
- verify_ticket: decode_ticket (parse the canonical document, then verify) of one ticket.
- checkpoint_sign / checkpoint_verify: one gateway.checkpoint signature, made and checked.
- audit_verify: `sealgw audit verify`'s core over a chain of events with checkpoints.

Every figure is the median over rounds; per-operation times come from batches, not single calls.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.probes import run_probe

FIGURES = (
    "rounds",
    "batch",
    "signatures_per_decision",
    "revocation_entries",
    "ticket_doc_bytes",
    "decide_us",
    "logic_only_decide_us",
    "logic_only_decisions_per_s",
    "audit_chain_events",
    "audit_verify_events_per_s",
    "checkpoint_sign_us",
    "checkpoint_verify_us",
    "verify_ticket_us",
    "decisions_per_s",
)


def run(*, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run the probe and return the result object (headline figures last)."""
    probe = run_probe("authz", *(["--quick"] if quick else []))
    _say(
        verbose,
        f"decide {probe['decide_us']:.1f} us, logic only {probe['logic_only_decide_us']:.2f} us",
    )
    _say(
        verbose,
        f"ticket {probe['verify_ticket_us']:.1f} us, checkpoint "
        f"{probe['checkpoint_sign_us']:.1f}/{probe['checkpoint_verify_us']:.1f} us",
    )
    return {
        "bench": "authz",
        "python": probe["python"],
        "cpus": probe["cpus"],
        **{key: probe[key] for key in FIGURES},
    }


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr)
