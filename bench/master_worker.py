"""One master listener in its own process, driven by `bench.master_ingest` over stdin/stdout.

`python -m bench.master_worker --dsn DSN --broker URL --client-id ID [--share-group G]`

1. subscribes once with a persistent session, prints `subscribed`, and disconnects: the broker
   now queues this listener's share of what is published;
2. on `go`, connects again with the same client id and writes what the broker delivers, as
   `sealgw master listen` does: a chain keeper on a second connection, and the console's
   rollups folded after each commit;
3. on `stop`, stops and prints one JSON object: its counters, the size of each ledger
   transaction of events (the raw baseline replays the same sizes) and the CPU seconds the
   process used from `go` to `stop`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from master_station.ledger.factory import open_ledger
from master_station.ledger.models import AddResult, Ledger
from master_station.ledger.recent import RecentlyVerified
from master_station.ledger.rollup import rollups_for
from master_station.listener import ListenerOptions, MasterListener

TICK_S = 0.25


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.master_worker")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--share-group")
    args = parser.parse_args()
    options = ListenerOptions(broker_url=args.broker, client_id=args.client_id,
                              share_group=args.share_group, tick_s=TICK_S)  # fmt: skip
    recent = RecentlyVerified()
    ledger = open_ledger(args.dsn, recent=recent)
    chains = open_ledger(args.dsn, recent=recent)
    sizes = _record_sizes(ledger)
    MasterListener(options, ledger, chain_ledger=chains).start().stop()
    _say("subscribed")
    _expect("go")
    cpu = time.process_time()
    listener = MasterListener(
        options, ledger, chain_ledger=chains, observer=rollups_for(ledger)
    ).start()
    _expect("stop")
    listener.stop()
    cpu = time.process_time() - cpu
    _say(json.dumps({"stats": listener.stats.to_json(), "transaction_sizes": sizes,
                     "cpu_s": round(cpu, 3)}))  # fmt: skip
    ledger.close()
    chains.close()
    return 0


def _record_sizes(ledger: Ledger) -> list[int]:
    """Wrap `ledger.add_many` so each call's size is kept."""
    sizes: list[int] = []
    add_many = ledger.add_many

    def recording(
        payloads: Sequence[bytes],
        topic_gateways: Sequence[str | None] | None = None,
        *,
        content_hashes: Sequence[str | None] | None = None,
    ) -> list[AddResult]:
        sizes.append(len(payloads))
        return add_many(payloads, topic_gateways, content_hashes=content_hashes)

    ledger.add_many = recording  # type: ignore[method-assign]
    return sizes


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _expect(word: str) -> None:
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")


if __name__ == "__main__":
    sys.exit(main())
