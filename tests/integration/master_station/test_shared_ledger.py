"""Several masters on one PostgreSQL ledger behind a shared subscription (docs/master.md).

A real Mosquitto splits each gateway's events between the listeners message by message, so
every chain arrives in pieces at two writers. Each event must be stored once, every chain must
still be verified to its end (by whichever master walks it), a finding must be recorded once,
and a gap must be asked for once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock

import psycopg
import pytest

from gateway.protocol.batch_encode import encode_batch
from gateway.protocol.events import EventDraft, Priority, seal_event
from master_station.ledger.factory import open_ledger
from master_station.ledger.models import Ledger
from master_station.ledger.postgres import PostgresDb
from master_station.ledger.recent import RecentlyVerified
from master_station.listener import ListenerOptions, MasterListener
from tests.fixtures.master import (
    ROOT,
    T0,
    chain,
    cli_listener,
    publish_events,
    publisher,
    schema_dsn,
    scratch_database,
)
from tests.fixtures.mosquitto import Broker, SubscriberFactory, wait_until


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with scratch_database() as dsn:
        yield dsn


@pytest.fixture
def dsn(pg_database: str) -> str:
    return schema_dsn(pg_database)


def options(broker: Broker, client_id: str, **kw: Any) -> ListenerOptions:
    return ListenerOptions(broker_url=f"mqtt://{broker.host}:{broker.port}", client_id=client_id,
                           share_group="masters", tick_s=0.1, **kw)  # fmt: skip


def heads(dsn: str) -> dict[str, int]:
    """chain_head as the listeners left it (read without walking anything)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT gateway, verified_seq FROM chain_head").fetchall()
    return {str(gw): int(seq) for gw, seq in rows}


def gateways_written(spy: Mock) -> Counter[str]:
    """Events per gateway that went through one listener's `add_many`."""
    return Counter(gw for call in spy.call_args_list for gw in call.args[1])


async def test_two_listener_processes_store_each_event_once_and_verify_every_chain(
    mosquitto: Broker, dsn: str
) -> None:
    one, two, three = chain("gw-1", 60), chain("gw-2", 60), chain("gw-3", 60)
    ledger = open_ledger(dsn)
    spy = Mock(wraps=ledger.add_many)
    ledger.add_many = spy  # type: ignore[method-assign]
    recent = RecentlyVerified()
    chains = open_ledger(dsn, recent=recent)
    with (
        cli_listener(mosquitto, dsn, "--share-group", "masters", "--client-id", "m-cli"),
        MasterListener(options(mosquitto, "m-thread"), ledger, chain_ledger=chains) as listener,
        publisher(mosquitto) as pub,
    ):
        publish_events(pub, one + two)
        runs = [encode_batch([e.payload for e in three[i : i + 10]]) for i in range(0, 60, 10)]
        for run in runs:
            pub.publish(f"{ROOT}/gw-3/batch", run, qos=1).wait_for_publish(5)
        publish_events(pub, one[20:30])  # a gateway publishing again what it already sent
        await wait_until(lambda: ledger.count() == 180, 30, "every event stored")
        await wait_until(
            lambda: heads(dsn) == {"gw-1": 60, "gw-2": 60, "gw-3": 60}, 30, "every chain verified"
        )
        await wait_until(
            lambda: sum(ledger.verify(gw).duplicates for gw in ("gw-1", "gw-2", "gw-3")) == 10,
            30,
            "the repeats counted",
        )
        mine = gateways_written(spy)
        stats = listener.stats
    assert ledger.count() == 180 and ledger.problems() == []
    for gateway in ("gw-1", "gw-2", "gw-3"):
        assert 0 < mine[gateway] < 60, f"{gateway} was not split between the listeners"
        report = ledger.verify(gateway, full=True)
        assert report.ok and report.verified_seq == 60
    assert 0 < stats.stored < 180 and stats.chain_checks > 0
    ledger.close()
    chains.close()


async def test_a_gap_is_asked_for_once_by_two_listeners(
    mosquitto: Broker, dsn: str, subscriber_factory: SubscriberFactory
) -> None:
    events = chain("gw-1", 8)
    gateway = await subscriber_factory(mosquitto, [f"{ROOT}/gw-1/cmd/resend"]).start()
    ledgers = [open_ledger(dsn) for _ in range(2)]
    opts = {"gap_grace_s": 0.2, "resend_interval_s": 60}
    with (
        MasterListener(options(mosquitto, "m-a", **opts), ledgers[0]) as first,
        MasterListener(options(mosquitto, "m-b", **opts), ledgers[1]) as second,
        publisher(mosquitto) as pub,
    ):
        assert first.healing and second.healing  # a shared ledger: gaps are judged on the union
        publish_events(pub, [e for e in events if e.seq != 4])
        await gateway.wait_for(lambda ms: bool(ms), 10)
        checks = first.stats.chain_checks + second.stats.chain_checks
        await wait_until(
            lambda: first.stats.chain_checks + second.stats.chain_checks >= checks + 6,
            10,
            "both keepers looking at the open gap again",
        )
        assert first.stats.resend_requests + second.stats.resend_requests == 1
        publish_events(pub, [events[3]])
        await wait_until(lambda: heads(dsn).get("gw-1") == 8, 10, "the chain closed")
    assert ledgers[0].verify("gw-1").ok
    for led in ledgers:
        led.close()


async def test_a_broken_link_is_recorded_once_when_two_masters_walk(
    mosquitto: Broker, dsn: str
) -> None:
    good = chain("gw-1", 11)
    draft = EventDraft("synthetic.sample", "gw-1", {"n": 11}, Priority.AUDIT, T0)
    relinked = seal_event(draft, "gw-1", 12, "f" * 64)
    ledgers = [open_ledger(dsn) for _ in range(2)]
    with (
        MasterListener(options(mosquitto, "m-a"), ledgers[0]) as first,
        MasterListener(options(mosquitto, "m-b"), ledgers[1]) as second,
        publisher(mosquitto) as pub,
    ):
        publish_events(pub, [*good, relinked])
        await wait_until(lambda: ledgers[0].count() == 12, 10, "all stored")
        checks = (first.stats.chain_checks, second.stats.chain_checks)
        await wait_until(
            lambda: first.stats.chain_checks > checks[0] and second.stats.chain_checks > checks[1],
            10,
            "both keepers walked after the last commit",
        )
    assert heads(dsn) == {"gw-1": 11}
    found = [(p.kind, p.seq) for p in ledgers[0].problems("gw-1")]
    assert found == [("broken_link", 12)]
    for led in ledgers:
        led.close()


def test_a_chain_another_master_is_walking_is_left_for_later(dsn: str) -> None:
    ledger: Ledger = open_ledger(dsn)
    ledger.add_many([e.payload for e in chain("gw-1", 5)])
    other = PostgresDb(dsn)  # another master's connection
    with other.exclusive("chain:gw-1") as held:
        assert held
        assert ledger.check_chain("gw-1") is None
        assert heads(dsn) == {}
    assert ledger.check_chain("gw-1") == []
    assert heads(dsn) == {"gw-1": 5}
    other.close()
    ledger.close()
