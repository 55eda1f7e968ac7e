"""Per-meter identifier bookkeeping: unsupported after repeated failures, retried rarely."""

from __future__ import annotations

import pytest

from gateway.meters.support import IdentifierSupport

ENERGY, OUTAGES, DATE = 0x00010000, 0x03110000, 0x04000101


def test_identifier_failing_in_a_row_becomes_unsupported_then_is_retried() -> None:
    support = IdentifierSupport("M", unsupported_after=2, retry_every=3)
    for _ in range(2):
        assert support.plan([ENERGY, OUTAGES]) == ([ENERGY, OUTAGES], [])
        support.record([ENERGY], [OUTAGES])
    assert support.unsupported == {OUTAGES}
    plans = [support.plan([ENERGY, OUTAGES]) for _ in range(3)]
    assert plans[:2] == [([ENERGY], [OUTAGES])] * 2
    assert plans[2] == ([ENERGY, OUTAGES], [])  # the rare retry
    support.record([ENERGY, OUTAGES], [])
    assert support.unsupported == frozenset()
    assert support.failures == {}


def test_a_success_resets_the_count() -> None:
    support = IdentifierSupport("M", unsupported_after=2)
    support.record([ENERGY], [OUTAGES])
    support.record([ENERGY, OUTAGES], [])
    support.record([ENERGY], [OUTAGES])
    assert support.unsupported == frozenset()


def test_answered_identifiers_first_and_silent_ones_rotated_back() -> None:
    support = IdentifierSupport("M")
    support.record_silent([OUTAGES, DATE])  # a poll where the first two got nothing
    assert support.plan([OUTAGES, DATE, ENERGY])[0] == [ENERGY, OUTAGES, DATE]
    support.record([DATE], [])
    assert support.plan([OUTAGES, DATE, ENERGY])[0] == [DATE, ENERGY, OUTAGES]


def test_all_unsupported_reads_everything() -> None:
    support = IdentifierSupport("M", unsupported_after=1)
    support.record([], [ENERGY])
    assert support.plan([ENERGY]) == ([ENERGY], [])


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        IdentifierSupport("M", retry_every=0)
