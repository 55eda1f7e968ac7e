"""What the uplink and pipeline benches share: the raw-paho baseline and a timed Uplink drain."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.mosquitto import MosquittoBroker
from gateway.store.buffer import EventBuffer
from gateway.uplink.uplink import Uplink

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
