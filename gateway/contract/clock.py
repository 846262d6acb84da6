"""The one source of time.

Everything that decides takes `now` as an argument; only the daemon's wiring and the
adapters hold a `Clock`. Monotonic seconds drive timers and protection; wall time only
stamps records for people and for SCADA.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""

    def wall(self) -> float:
        """POSIX seconds (UTC) for timestamps shown to people and SCADA."""


class SystemClock:
    """The live clock: the operating system's monotonic and real-time clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class SimClock:
    """A clock that only moves when told to, for tests, replays and the simulator."""

    def __init__(self, start_monotonic: float = 0.0, start_wall: float = 1_767_225_600.0) -> None:
        self._mono = start_monotonic
        self._wall_offset = start_wall - start_monotonic

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._mono + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._mono += seconds
