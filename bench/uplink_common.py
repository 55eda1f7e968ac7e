"""What the uplink and pipeline benches share: the raw-paho baseline and the drain probe's work.

The probe (`sealgw probe drain --drafts FILE`) commits the drafts the bench wrote and drains
them through the gateway's uplink; the bench seals the same drafts itself (gateway.protocol's
`seal_event`, exactly as the buffer does) to publish the same payloads with plain paho.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.mosquitto import MosquittoBroker
from gateway.protocol.draft_lines import encode_draft_line
from gateway.protocol.events import GENESIS_HASH, EventDraft, seal_event


@dataclass(slots=True)
class CpuSpent:
    """CPU seconds spent inside a `cpu_spent` block: this process (all threads) and broker."""

    process_s: float = 0.0
    broker_s: float = 0.0


class CpuMeter:
    """A block that measures the CPU time this process and the broker spend in it.

    Unlike a rate, CPU time per reading hardly depends on what else the machine runs.
    """

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.spent = CpuSpent()
        self._start = (0.0, 0.0)

    def __enter__(self) -> CpuMeter:
        self._start = (time.process_time(), _broker_cpu_s(self.broker))
        return self

    def __exit__(self, *_exc: object) -> None:
        self.spent.process_s = time.process_time() - self._start[0]
        self.spent.broker_s = _broker_cpu_s(self.broker) - self._start[1]


def _broker_cpu_s(broker: MosquittoBroker) -> float:
    """user + system CPU seconds of the broker process so far (Linux /proc; 0 elsewhere)."""
    pid = broker.pid
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# paho numbers a message when it is queued, so queueing more than 65,535 at once makes message
# ids collide and acks vanish: at most this many wait unacknowledged.
RAW_QUEUE_MAX = 1000


def raw_paho_rate(
    broker: MosquittoBroker, payloads: list[bytes], *, client_id: str, topic: str, max_inflight: int
) -> float:
    """Messages per second: publish every payload at QoS 1 with `max_inflight`, wait for acks."""
    done = threading.Event()
    room = threading.BoundedSemaphore(RAW_QUEUE_MAX)
    acked = 0

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        acked += 1
        room.release()
        if acked == len(payloads):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    start = time.perf_counter()
    for payload in payloads:
        room.acquire()
        client.publish(topic, payload, qos=1)
    if not done.wait(300):
        raise RuntimeError(f"raw paho: only {acked} of {len(payloads)} acknowledged")
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return len(payloads) / elapsed


def write_drafts(path: Path, drafts: Sequence[EventDraft]) -> Path:
    """The drafts as a drafts file for `sealgw probe drain --drafts`."""
    with path.open("w", encoding="utf-8") as out:
        out.writelines(encode_draft_line(draft) + "\n" for draft in drafts)
    return path


def sealed_payloads(drafts: Sequence[EventDraft], gateway: str) -> list[bytes]:
    """The payloads a fresh buffer of `gateway` commits for `drafts`: seq 1.., one hash chain."""
    payloads, prev = [], GENESIS_HASH
    for seq, draft in enumerate(drafts, start=1):
        event = seal_event(draft, gateway, seq, prev)
        payloads.append(event.payload)
        prev = event.hash
    return payloads
