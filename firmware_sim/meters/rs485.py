"""An RS-485 line in the middle: a pseudo-terminal proxy that echoes and splits, for tests.

Real half-duplex adapters without echo suppression hand the master back every byte it sent,
and a slow line (or a converter's buffer) delivers a reply in pieces. `EchoSplitProxy` sits
between the gateway's pty pair and the simulator's pty pair:

    gateway <-> [pty A] <-> proxy <-> [pty B] <-> simulated meters

Bytes from the gateway are echoed back to it (with `echo`) and forwarded to the meters; bytes
from the meters are forwarded to the gateway in pieces of `split` bytes, `pause_s` apart. The
proxy stamps what it forwards (`log`), so a test can check the silence the master kept between
a reply and its next request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from firmware_sim.meters.fleet import PtyPair

__all__ = ["EchoSplitProxy"]

_LOGGER = logging.getLogger(__name__)


class EchoSplitProxy:
    """Two pty pairs and a relay between them; `gateway_end` and `meter_end` are the outer ends."""

    def __init__(
        self, directory: Path, *, echo: bool = True, split: int = 3, pause_s: float = 0.002
    ) -> None:
        self.gateway_pair = PtyPair(directory, "proxy-a")
        self.meter_pair = PtyPair(directory, "proxy-b")
        self.echo = echo
        self.split = split
        self.pause_s = pause_s
        self.log: list[tuple[float, str, bytes]] = []
        """(monotonic time, "request" or "reply", bytes) of everything relayed."""
        self._ports: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()

    @property
    def gateway_end(self) -> Path:
        """The device the gateway opens."""
        return self.gateway_pair.client_end

    @property
    def meter_end(self) -> Path:
        """The device the simulator serves on."""
        return self.meter_pair.server_end

    async def start(self) -> None:
        """Start both pty pairs and the relay."""
        import serial  # noqa: PLC0415 - pyserial is optional (the meters extra)

        await self.gateway_pair.start()
        await self.meter_pair.start()
        near = serial.Serial(str(self.gateway_pair.server_end), timeout=0)
        far = serial.Serial(str(self.meter_pair.client_end), timeout=0)
        self._ports = [near, far]
        loop = asyncio.get_running_loop()
        loop.add_reader(near.fileno(), self._from_gateway, near, far)
        loop.add_reader(far.fileno(), self._from_meters, far)
        task = asyncio.create_task(self._deliver(near))
        self._tasks.add(task)

    async def close(self) -> None:
        """Stop relaying and close everything."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for port in self._ports:
            loop.remove_reader(port.fileno())
            port.close()
        await self.meter_pair.close()
        await self.gateway_pair.close()

    def requests_after_replies(self) -> list[float]:
        """Seconds between the last byte of each reply and the next request's first byte."""
        gaps: list[float] = []
        last_reply: float | None = None
        for stamp, kind, _data in self.log:
            if kind == "reply":
                last_reply = stamp
            elif last_reply is not None:
                gaps.append(stamp - last_reply)
                last_reply = None
        return gaps

    def _from_gateway(self, near: Any, far: Any) -> None:
        data = _read(near)
        if not data:
            return
        self.log.append((time.monotonic(), "request", data))
        if self.echo:
            near.write(data)
        far.write(data)

    def _from_meters(self, far: Any) -> None:
        data = _read(far)
        if data:
            self._replies.put_nowait(data)

    async def _deliver(self, near: Any) -> None:
        while True:
            data = await self._replies.get()
            for start in range(0, len(data), self.split):
                near.write(data[start : start + self.split])
                self.log.append((time.monotonic(), "reply", data[start : start + self.split]))
                await asyncio.sleep(self.pause_s)


def _read(port: Any) -> bytes:
    try:
        data: bytes = port.read(max(port.in_waiting, 1))
    except OSError as exc:
        _LOGGER.debug("proxy: %s", exc)
        return b""
    return data
