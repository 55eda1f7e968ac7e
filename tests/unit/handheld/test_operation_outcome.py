"""The one operation outcome type, and its handheld wire form pinned byte for byte.

The expected bytes were produced by the gateway before the lock path had one outcome type
(`OperationResult` turned into `OperationOutcome` by the handheld backend), so a handheld
sees exactly what it saw before, UNKNOWN included (reported as status failed, result unknown).
"""

from __future__ import annotations

import pytest

from gateway.handheld.api import OperationOutcome, OperationStatus
from gateway.protocol.canonical import canonical_bytes

OP_ID = "01J0000000000000000000000A"
HEAD = f'{{"log_index":%s,"op":"unseal","op_id":"{OP_ID}","reason":"%s","result":"%s",'
TAIL = '"seal_id":"SL-0001","state":"%s","status":"%s"}'

CASES = [
    (OperationStatus.PENDING, "", "", "", None, ("null", "", "", "", "pending")),
    (OperationStatus.DONE, "", "unsealed", "intact", 2, ("2", "", "done", "unsealed", "done")),
    (OperationStatus.DONE, "", "sealed", "", None, ("null", "", "done", "sealed", "done")),
    (
        OperationStatus.DENIED,
        "seal_out_of_scope",
        "",
        "",
        None,
        ("null", "seal_out_of_scope", "denied", "", "denied"),
    ),
    (
        OperationStatus.FAILED,
        "mechanical_failure",
        "sealed",
        "intact",
        3,
        ("3", "mechanical_failure", "failed", "sealed", "failed"),
    ),
    (
        OperationStatus.FAILED,
        "unreachable",
        "",
        "",
        None,
        ("null", "unreachable", "failed", "", "failed"),
    ),
    (
        OperationStatus.UNKNOWN,
        "link_lost",
        "",
        "",
        None,
        ("null", "link_lost", "unknown", "", "failed"),
    ),
    (OperationStatus.FAILED, "", "", "", None, ("null", "failed", "failed", "", "failed")),
]


@pytest.mark.parametrize(("status", "reason", "state", "wire", "index", "expected"), CASES)
def test_wire_form_is_byte_identical_to_the_documented_answer(
    status: OperationStatus,
    reason: str,
    state: str,
    wire: str,
    index: int | None,
    expected: tuple[str, str, str, str, str],
) -> None:
    outcome = OperationOutcome(
        OP_ID, "op-0042", "unseal", "SL-0001", status, reason, state, wire, index
    )
    log_index, why, result, seal_state, reported = expected

    body = canonical_bytes(outcome.to_json())

    assert body == ((HEAD % (log_index, why, result)) + (TAIL % (seal_state, reported))).encode()
    assert "wire" not in outcome.to_json()  # the wire loop stays inside the gateway


def test_only_done_is_ok_and_only_pending_is_unsettled() -> None:
    for status in OperationStatus:
        outcome = OperationOutcome(OP_ID, "op-0042", "seal", "SL-0001", status)
        assert outcome.ok is (status is OperationStatus.DONE)
        assert outcome.settled is (status is not OperationStatus.PENDING)
        assert OperationStatus(outcome.to_json()["status"]) is status.reported
