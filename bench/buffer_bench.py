"""Benchmark of the durable buffer: ingest throughput, commit latency, drain rate, open time.

Run: .venv/bin/python -m bench.buffer_bench [--events 100000] [--rate 20000] [--sync full]

The gateway measures itself (`sealgw probe buffer`, gateway/probe/buffer.py); this runs the
probe and prints its figures as lines.
"""

from __future__ import annotations

import argparse

from bench.probes import run_probe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--sync", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    r = run_probe(
        "buffer", "--events", args.events, "--rate", args.rate, "--synchronous", args.sync
    )
    print(f"burst: {r['burst_events']} events = {r['burst_events_per_s']:,} events/s")
    print(
        f"paced {r['paced_rate_per_s']}/s: {r['paced_events_per_s']:,}/s,"
        f" latency p50 {r['paced_p50_ms']} ms p99 {r['paced_p99_ms']} ms"
        f" max {r['paced_max_ms']} ms, mean batch {r['paced_mean_batch']}"
    )
    print(f"open with integrity_check: {r['file_mib']} MiB in {r['open_s']}s")
    print(f"drain: {r['drained']}/{r['pending_before']} = {r['drain_events_per_s']:,} events/s")
    print(
        f"drain stats: {r['drain_batches']} batches, p99 <= {r['drain_commit_p99_ms_at_most']} ms"
    )


if __name__ == "__main__":
    main()
