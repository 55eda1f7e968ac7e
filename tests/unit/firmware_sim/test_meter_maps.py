"""The simulator's own register maps hang together, and its handheld transport checks addresses."""

from __future__ import annotations

import itertools

import pytest

from firmware_sim.handheld.transport import connect
from firmware_sim.meters.fleet import PROFILE_MODELS
from firmware_sim.meters.maps import DDS238_2, DTSU666, MAPS, SDM630, RegisterMap, Table


@pytest.mark.parametrize("regmap", MAPS.values(), ids=list(MAPS))
def test_registers_do_not_overlap_and_cite_a_source(regmap: RegisterMap) -> None:
    spans = sorted((r.table, r.address, r.end, r.name) for r in regmap.registers)
    for (table, _, end, name), (next_table, start, _, other) in itertools.pairwise(spans):
        assert table != next_table or end <= start, f"{name} overlaps {other}"
    assert len({r.name for r in regmap.registers}) == len(regmap.registers)
    assert regmap.source and regmap.phases in (1, 3)


def test_published_anchors() -> None:
    assert (
        DDS238_2.register("energy_total").address,
        DDS238_2.register("energy_import").address,
    ) == (
        0x0000,
        0x000A,
    )
    assert all(not r.bits for r in DDS238_2.registers)  # no status word in the DDS238-2 table
    assert {r.table for r in SDM630.registers} == {Table.INPUT}
    assert SDM630.register("voltage_l1").address == 0x0000
    assert {r.table for r in DTSU666.registers} == {Table.HOLDING}
    assert DTSU666.register("voltage_l1_l2").address == 0x2000
    assert DTSU666.register("energy_import").address == 0x401E
    assert set(PROFILE_MODELS.values()) <= set(MAPS)


@pytest.mark.parametrize("address", ["udp:1.2.3.4:5", "tcp:host", "tcp::7421", "tcp:h:99999", "x"])
async def test_handheld_connect_rejects_a_bad_address(address: str) -> None:
    with pytest.raises(ValueError, match="tcp:HOST:PORT or unix:PATH"):
        await connect(address)
