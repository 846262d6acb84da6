"""Secondary injection into a simulated relay: a relay test set wired to one bay's measurement
inputs plays a sequence of states, and notes when the gateway's trip and close commands reach
the breaker.

Sans-IO: the runtime calls `serve` with each step's served values (the set's states replace the
bay's currents, voltage and frequency) and `on_command` with each gateway command. While the
breaker is open no current flows (the set's breaker simulator); the voltage stays. Times are
real seconds, as a test set's own clock, not the simulator's (which runs ahead to catch up
after a lag): a state starts at the first step served after its start time, the measured times
count from the first state's start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_STATES = 200
MAX_TOTAL_S = 3600.0
QUANTITIES = ("ia", "ib", "ic", "in", "voltage_kv", "frequency_hz")
CURRENTS = ("ia", "ib", "ic", "in")


class InjectionRefused(ValueError):
    """A sequence the set cannot play (the message says which state and why)."""


def check_states(states: Any) -> list[dict[str, float]]:
    """States as sent over the control socket: a list of {duration_s, ia, ib, ic, in, voltage_kv,
    frequency_hz}, each value a finite number >= 0 (missing quantities keep the model's)."""
    if not isinstance(states, list) or not 1 <= len(states) <= MAX_STATES:
        raise InjectionRefused(f"states must be a list of 1 to {MAX_STATES} objects")
    out = []
    total = 0.0
    for k, state in enumerate(states, start=1):
        if not isinstance(state, dict):
            raise InjectionRefused(f"state {k}: expected an object with duration_s and quantities")
        unknown = set(state) - {"duration_s", *QUANTITIES}
        if unknown:
            raise InjectionRefused(
                f"state {k}: unknown key(s) {sorted(unknown)}; expected duration_s and any of {', '.join(QUANTITIES)}"
            )
        clean: dict[str, float] = {}
        for key, value in state.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InjectionRefused(f"state {k}: {key} {value!r} must be a finite number >= 0")
            clean[key] = float(value)
        if clean.get("duration_s", 0.0) <= 0:
            raise InjectionRefused(f"state {k}: duration_s must be > 0")
        total += clean["duration_s"]
        out.append(clean)
    if total > MAX_TOTAL_S:
        raise InjectionRefused(f"the states last {total:g} s; at most {MAX_TOTAL_S:g} s")
    return out


@dataclass
class SecondaryInjection:
    """One sequence played into one bay."""

    breaker: str
    points: dict[str, str]
    """Quantity (ia, ib, ic, in, voltage_kv, frequency_hz) -> the point id the bay's IED serves."""
    trip: tuple[str, Any]
    """(point id, value) of the scheme's trip command."""
    close: tuple[str, Any]
    states: list[dict[str, float]]
    started_s: float | None = None
    finished_s: float | None = None
    state_starts_s: list[float] = field(default_factory=list)
    """When each state was first served (from the first state's start)."""
    commands: list[dict[str, Any]] = field(default_factory=list)
    """Trip and close commands that reached the breaker: {time_s, kind, point, value, state}."""

    @property
    def duration_s(self) -> float:
        return sum(s["duration_s"] for s in self.states)

    @property
    def running(self) -> bool:
        return self.finished_s is None

    def _state_at(self, elapsed_s: float) -> int:
        end = 0.0
        for k, state in enumerate(self.states):
            end += state["duration_s"]
            if elapsed_s < end - 1e-9:
                return k
        return len(self.states)

    def serve(self, now_s: float, values: dict[str, Any], breaker_closed: bool) -> None:
        """Replace the bay's served quantities in `values` by the current state's."""
        if not self.running:
            return
        if self.started_s is None:
            self.started_s = now_s
        elapsed = now_s - self.started_s
        k = self._state_at(elapsed)
        if k >= len(self.states):
            self.finished_s = elapsed
            return
        while len(self.state_starts_s) <= k:
            self.state_starts_s.append(elapsed)
        state = self.states[k]
        for quantity, point in self.points.items():
            if quantity in state:
                values[point] = 0.0 if quantity in CURRENTS and not breaker_closed else state[quantity]

    def stop(self, now_s: float) -> None:
        """The test set's stop: the bay's own values are served again from the next step."""
        if self.running:
            self.finished_s = 0.0 if self.started_s is None else now_s - self.started_s

    def on_command(self, now_s: float, point_id: str, value: Any) -> None:
        """Note a gateway command to the breaker under test."""
        if self.started_s is None or not self.running:
            return
        kind = "trip" if (point_id, value) == self.trip else "close" if (point_id, value) == self.close else None
        if kind is not None:
            self.commands.append(
                {
                    "time_s": now_s - self.started_s,
                    "kind": kind,
                    "point": point_id,
                    "value": value,
                    "state": len(self.state_starts_s),
                }
            )

    def status(self) -> dict[str, Any]:
        trip = next((c["time_s"] for c in self.commands if c["kind"] == "trip"), None)
        return {
            "breaker": self.breaker,
            "running": self.running,
            "states": len(self.states),
            "duration_s": self.duration_s,
            "started": self.started_s is not None,
            "state_starts_s": self.state_starts_s,
            "commands": self.commands,
            "trip_s": trip,
            "finished_s": self.finished_s,
        }
