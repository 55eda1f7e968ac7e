"""Owns the daemon's long-running tasks: restarts a crashed one with backoff, stops all promptly.

A stop cancels the components and gives their clean-up `STOP_GRACE_S`. A clean-up still
waiting after that (on a peer that never answers: a frozen BLE controller, a black-holed
broker) is cancelled again every `RECANCEL_S`, which ends the wait it is stuck in, so a stop
finishes in seconds whatever the peers do (issue 13, item 8).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.protocol.clock import Clock

_LOGGER = logging.getLogger(__name__)

STOP_GRACE_S = 1.5
"""How long a stopping component may clean up before its waits are cancelled too."""
RECANCEL_S = 0.25
"""Then: how often a component still running is cancelled again."""

TaskFactory = Callable[[], Awaitable[None]]

STOP_BUDGET_S = 2.0
"""How long a cancelled component may take to finish stopping before it is abandoned."""


@dataclass(slots=True)
class _Component:
    name: str
    factory: TaskFactory
    restarts: int = 0
    failures: int = 0  # in a row; reset after a healthy run
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Runs components until stopped; a component that raises is restarted after a backoff."""

    def __init__(self, clock: Clock, *, backoff_min_s: float = 1.0, backoff_max_s: float = 60.0):
        self._clock = clock
        self._backoff = (backoff_min_s, backoff_max_s)
        self._components: dict[str, _Component] = {}
        self._stopping = False
        self.abandoned: list[str] = []
        """Components that did not finish stopping within their budget, in the order found."""

    def start(self, name: str, factory: TaskFactory) -> None:
        """Start `factory()` as component `name`, restarting it if it fails."""
        component = _Component(name, factory)
        self._components[name] = component
        component.task = asyncio.create_task(self._keep_running(component), name=name)

    def names(self) -> list[str]:
        """The names of the components started so far, in start order."""
        return list(self._components)

    def restarts(self) -> dict[str, int]:
        """How often each component was restarted after a failure."""
        return {name: comp.restarts for name, comp in self._components.items()}

    async def stop(
        self, *names: str, grace_s: float = STOP_GRACE_S, budget_s: float = STOP_BUDGET_S
    ) -> None:
        """Cancel the named components (all when none named) and wait for them.

        A component still running `grace_s` later is cancelled again every RECANCEL_S (so its
        clean-up waits end too). One still running `budget_s` after the first cancel is
        abandoned: logged at ERROR with every task still pending, named in `abandoned`, and no
        longer waited for.
        """
        if not names:
            self._stopping = True
        chosen = [c for n, c in self._components.items() if not names or n in names]
        tasks = {
            comp.task: comp.name
            for comp in chosen
            if comp.task is not None and not comp.task.done()
        }
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        deadline = asyncio.get_running_loop().time() + budget_s
        _, pending = await asyncio.wait(tasks, timeout=min(grace_s, budget_s))
        if pending:
            late = ", ".join(sorted(tasks[task] for task in pending))
            _LOGGER.warning("%s still stopping after %.1f s: cancelling its waits", late, grace_s)
        while pending and (left := deadline - asyncio.get_running_loop().time()) > 0:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))
        for comp in chosen:
            if comp.task in pending and comp.name not in self.abandoned:
                self.abandoned.append(comp.name)
                _LOGGER.error(
                    "component %s did not finish stopping within %.1f s: abandoned; "
                    "tasks still pending: %s",
                    comp.name,
                    budget_s,
                    pending_tasks(),
                )
        await asyncio.gather(*(t for t in tasks if t not in pending), return_exceptions=True)

    async def _keep_running(self, component: _Component) -> None:
        while not self._stopping:
            started = self._clock.monotonic()
            try:
                await component.factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                if _cancelling():  # an error raised while stopping must not replace the stop
                    raise asyncio.CancelledError from None
                _LOGGER.exception("component %s failed; restarting", component.name)
            else:
                return
            component.restarts += 1
            healthy = self._clock.monotonic() - started >= self._backoff[1]
            component.failures = 1 if healthy else component.failures + 1
            await self._clock.sleep(self._delay(component.failures))

    def _delay(self, attempt: int) -> float:
        """Backoff for the `attempt`-th failure in a row (a run as long as the ceiling resets)."""
        low, high = self._backoff
        return float(min(high, low * 2 ** min(attempt - 1, 16)) * random.uniform(0.5, 1.0))


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def pending_tasks() -> str:
    """Every unfinished task but the current one: its name and where it waits, for a stop log."""
    current = asyncio.current_task()
    described = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        if task is current or task.done():
            continue
        frames = task.get_stack()
        where = (
            f" at {frames[-1].f_code.co_filename}:{frames[-1].f_lineno}"
            f" in {frames[-1].f_code.co_name}"
            if frames
            else ""
        )
        described.append(f"{task.get_name()}{where}")
    return "; ".join(described) or "none"
