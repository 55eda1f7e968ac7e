"""The master's ledger understands chain epochs: announced ones verify, unannounced breaks don't."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.protocol.events import GENESIS_HASH
from master_station.ledger.factory import open_ledger
from master_station.ledger.models import Ledger
from tests.unit.protocol.test_chain_epoch import after, chain, epoch_event


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = open_ledger(tmp_path / "ledger.db")
    yield led
    led.close()


def _add(ledger: Ledger, objs: list[dict[str, Any]]) -> None:
    for obj in objs:
        ledger.add(json.dumps(obj, separators=(",", ":")).encode(), topic_gateway="gw-1")


def test_an_announced_epoch_is_no_gap_and_no_broken_link(ledger: Ledger) -> None:
    old = chain(10)
    epoch = epoch_event(16, old[-1], (11, 15))  # seqs 11..15 were rolled back and lost
    _add(ledger, [*old, epoch, *after(epoch, 5)])
    report = ledger.verify("gw-1", full=True)
    assert report.ok, report
    assert ledger.gaps("gw-1") == []
    assert report.verified_seq == 21
    assert not ledger.problems("gw-1")


def test_a_restart_at_zero_without_an_epoch_is_a_broken_link(ledger: Ledger) -> None:
    old = chain(10)
    restarted = chain(5, start=11, prev=GENESIS_HASH)  # prev_hash zeros, but not an epoch event
    _add(ledger, [*old, *restarted])
    report = ledger.verify("gw-1", full=True)
    assert not report.ok
    assert [(p.seq, p.kind) for p in report.problems] == [(11, "broken_link")], report.problems
