"""What the uplink and pipeline benches share: the raw-paho baseline and a timed Uplink drain."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.mosquitto import MosquittoBroker
from gateway.store.buffer import EventBuffer
from gateway.uplink.uplink import Uplink


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


async def timed_drain(uplink: Uplink, buffer: EventBuffer) -> float:
    """Run `uplink` until `buffer` holds nothing unpublished; the seconds that took."""
    start = time.perf_counter()
    task = asyncio.create_task(uplink.run())
    while sum(buffer.depth().values()) > 0:
        if task.done():
            task.result()
            raise RuntimeError("uplink stopped during the drain")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    await uplink.stop(timeout=5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return elapsed
