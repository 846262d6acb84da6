"""What a Modbus master decides, without sockets or clocks: when to poll, what goes next, how
long to wait before reconnecting.

Rules these classes keep:

- Polls run at a fixed rate from a phase-shifted start. A cycle that overran is never made up:
  the missed cycles are counted as skipped and the next one is due on the original grid.
- Within a cycle every block is read once, in plan order. A write that is waiting goes before
  the next block read (never in the middle of one: one request is on the wire at a time).
- A link that will not come up is tried again after a jittered delay that doubles up to a cap;
  a link that came up and was then lost is tried again after the first delay.

Every method takes the time (monotonic seconds) and returns what to do; the master carries it out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic, TypeVar

BlockT = TypeVar("BlockT")


class PollSchedule:
    """When the next poll cycle is due, and how many cycles an overrun skipped."""

    __slots__ = ("period_s", "phase", "next_due_s", "skipped_cycles")

    def __init__(self, period_s: float, phase: float = 0.0) -> None:
        if not period_s > 0.0:
            raise ValueError(f"poll period must be positive, found {period_s!r} s")
        self.period_s = period_s
        self.phase = phase
        """Fraction of the period by which this IED's cycles are shifted."""
        self.next_due_s = 0.0
        self.skipped_cycles = 0
        """Cycles not run because the one before overran, since this schedule was made."""

    def restart(self, now: float) -> None:
        """A link came up at `now`: the first cycle is due one phase shift later."""
        self.next_due_s = now + self.phase * self.period_s

    def wait_s(self, now: float) -> float:
        """Seconds until the next cycle is due (0 or less: due now)."""
        return self.next_due_s - now

    def start_cycle(self, now: float) -> int:
        """Begin the cycle due at or before `now`; returns how many cycles it skipped."""
        missed = int((now - self.next_due_s) / self.period_s) if now > self.next_due_s else 0
        self.skipped_cycles += missed
        self.next_due_s += (missed + 1) * self.period_s
        return missed


WRITES_FIRST = "writes first"
"""The step meaning: carry out the waiting writes before reading the next block."""


class PollCycle(Generic[BlockT]):
    """One cycle's order of work: every block once, in order, a waiting write before any block."""

    __slots__ = ("_blocks", "_next")

    def __init__(self, blocks: Sequence[BlockT]) -> None:
        self._blocks = blocks
        self._next = 0

    def next_step(self, writes_waiting: bool) -> BlockT | str | None:
        """`WRITES_FIRST`, the next block to read, or None when the cycle is done."""
        if self._next >= len(self._blocks):
            return None
        if writes_waiting:
            return WRITES_FIRST
        block = self._blocks[self._next]
        self._next += 1
        return block


class ReconnectBackoff:
    """Delays before reconnecting: doubling from `first_s` up to `max_s`, each jittered ±20 %.

    The jitter keeps masters that lost one shared network from coming back in lock step.
    """

    __slots__ = ("first_s", "max_s", "_current_s", "_rng")

    JITTER = (0.8, 1.2)

    def __init__(self, first_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._current_s = first_s
        self._rng = rng if rng is not None else random.Random()

    def connect_failed(self) -> float:
        """A connection attempt failed: the delay before the next one (the one after waits longer)."""
        delay = self._current_s * self._rng.uniform(*self.JITTER)
        self._current_s = min(self._current_s * 2.0, self.max_s)
        return delay

    def connected(self) -> None:
        """The link is up: the next loss starts again from the first delay."""
        self._current_s = self.first_s

    def link_lost(self) -> float:
        """A link that was up is lost: the delay before connecting again."""
        return self._current_s * self._rng.uniform(*self.JITTER)
