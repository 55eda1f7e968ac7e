"""Which data identifiers each DL/T 645 meter actually answers: pure bookkeeping, no I/O.

Real meters stay silent on (or refuse) identifiers they do not hold. An identifier that failed
`unsupported_after` polls in a row, while the meter answered others, is marked unsupported for
that meter: polls skip it and retry it once every `retry_every` polls, so a meter whose firmware
gains it (or a fault that clears) is picked up again. See docs/dlt645.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["IdentifierSupport"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class IdentifierSupport:
    """Failure counts and the unsupported set of one meter's identifiers."""

    meter: str = ""
    unsupported_after: int = 3
    retry_every: int = 30
    failures: dict[int, int] = field(default_factory=dict)
    skipped_polls: dict[int, int] = field(default_factory=dict)
    answered_ever: set[int] = field(default_factory=set)
    silent_tries: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.unsupported_after < 1 or self.retry_every < 1:
            raise ValueError("unsupported_after and retry_every must be >= 1")

    @property
    def unsupported(self) -> frozenset[int]:
        """The identifiers marked unsupported."""
        return frozenset(self.skipped_polls)

    def plan(self, dis: Sequence[int]) -> tuple[list[int], list[int]]:
        """(identifiers to read this poll, identifiers skipped as unsupported).

        Identifiers the meter has answered come first, so a meter that is silent on the first
        few of the profile's identifiers is not taken for a dead one (see `record_silent`).
        """
        read: list[int] = []
        skipped: list[int] = []
        for di in sorted(dis, key=self._order):
            if di not in self.skipped_polls:
                read.append(di)
                continue
            self.skipped_polls[di] += 1
            if self.skipped_polls[di] >= self.retry_every:
                self.skipped_polls[di] = 0
                read.append(di)
            else:
                skipped.append(di)
        if not read:  # everything unsupported: ask for all of it again
            return list(dis), []
        return read, skipped

    def record(self, answered: Iterable[int], failed: Iterable[int]) -> None:
        """Count one poll in which the meter answered `answered` and not `failed`."""
        for di in answered:
            self.answered_ever.add(di)
            self.failures.pop(di, None)
            if self.skipped_polls.pop(di, None) is not None:
                _log.info("meter %s: %08X answers again", self.meter, di)
        for di in failed:
            count = self.failures.get(di, 0) + 1
            self.failures[di] = count
            if count >= self.unsupported_after and di not in self.skipped_polls:
                self.skipped_polls[di] = 0
                _log.warning(
                    "meter %s: %08X failed %d polls in a row; unsupported, retried every %d",
                    self.meter,
                    di,
                    count,
                    self.retry_every,
                )

    def record_silent(self, tried: Iterable[int]) -> None:
        """A poll in which nothing answered: try other identifiers first next time."""
        for di in tried:
            self.silent_tries[di] = self.silent_tries.get(di, 0) + 1

    def _order(self, di: int) -> tuple[bool, int]:
        return (di not in self.answered_ever, self.silent_tries.get(di, 0))
