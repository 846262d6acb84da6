"""Peak demand: the substation's actions in order of least customer impact, each measured.

When the load forecast crosses the substation's target (90 % of capacity by default) within the
lead time, the manager works through the actions one at a time, least customer impact first:

    cvr → capacitors → demand_response → der → transfer → shed

It starts an action, lets it settle (`settle_s`), and measures what it brought: the load the
trend says there would have been without it, minus the load measured now. It stops as soon as
the forecast peak less what the actions brought is under the target; shedding is the last action
and only if nothing else sufficed. Each action's contribution is kept for the operator, SCADA and
the scenario's figures.

Sans-IO: the manager returns `Start` actions naming what to do; the daemon's wiring carries each
out through the switching authority (taps, capacitor steps, DER set-points, breaker opens), the
AMI feed (demand-response events) or the load-transfer exchange with the neighbour, and reports
back with `on_result` when an action could not be started at all (nothing to do, refused).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ORDER = ("cvr", "capacitors", "demand_response", "der", "transfer", "shed")


class PeakPhase(enum.Enum):
    IDLE = "idle"
    ACTING = "acting"
    SETTLING = "settling"
    HOLDING = "holding"
    """The target is met; the actions stay in force while the peak lasts."""


@dataclass(frozen=True, slots=True)
class PeakSettings:
    target_percent: float = 90.0
    settle_s: float = 120.0
    actions: tuple[str, ...] = ORDER
    release_margin_percent: float = 5.0
    """Release (end every action) once the forecast peak is this far below the target."""


@dataclass(frozen=True, slots=True)
class Start:
    action: str
    need_kw: float
    """What is still to be found when the action starts (its controller sizes itself to it)."""


@dataclass(frozen=True, slots=True)
class Release:
    """The peak has passed: undo what the actions did (CVR off, DR ended, DER back to normal; a
    transfer and shed feeders are given back by their own procedures)."""

    actions: tuple[str, ...]


@dataclass
class PeakManager:
    capacity_kw: float
    settings: PeakSettings = field(default_factory=PeakSettings)
    phase: PeakPhase = PeakPhase.IDLE
    contributions: dict[str, float] = field(default_factory=dict)
    """Action → measured reduction (kW)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Action → why it brought nothing (no device, refused, nothing left to use)."""
    current: str | None = None
    started_at: float = 0.0
    baseline_kw: float = 0.0
    trend_kw_per_s: float = 0.0
    peak_before_kw: float | None = None
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def target_kw(self) -> float:
        return self.settings.target_percent / 100.0 * self.capacity_kw

    @property
    def reduction_kw(self) -> float:
        return sum(self.contributions.values())

    def step(self, now: float, load_kw: float, forecast_peak_kw: float, trend_kw_per_h: float,
             ) -> list[Start | Release]:
        """One look at the load and its forecast; what to start (at most one action) or release."""
        expected_peak = forecast_peak_kw
        if self.phase is PeakPhase.IDLE:
            if expected_peak <= self.target_kw:
                return []
            self.peak_before_kw = expected_peak
            self.timeline.append((now, f"forecast peak {expected_peak:.0f} kW above the target "
                                       f"{self.target_kw:.0f} kW: acting"))
            return self._next(now, load_kw, trend_kw_per_h, 0)
        if self.phase is PeakPhase.SETTLING:
            if now - self.started_at < self.settings.settle_s:
                return []
            assert self.current is not None
            without = self.baseline_kw + self.trend_kw_per_s * (now - self.started_at)
            brought = max(0.0, without - load_kw)
            self.contributions[self.current] = brought
            self.timeline.append((now, f"{self.current}: {brought:.0f} kW"))
            done = self.current
            self.current = None
            if self.peak_before_kw is not None and self.peak_before_kw - self.reduction_kw <= self.target_kw:
                self.phase = PeakPhase.HOLDING
                self.timeline.append((now, f"target met after {done}: forecast peak "
                                           f"{self.peak_before_kw - self.reduction_kw:.0f} kW"))
                return []
            return self._next(now, load_kw, trend_kw_per_h, ORDER.index(done) + 1)
        if self.phase is PeakPhase.HOLDING:
            # the forecast already contains what the actions bring (they act on the load itself)
            if expected_peak < self.target_kw * (1.0 - self.settings.release_margin_percent / 100.0) \
                    and trend_kw_per_h <= 0.0:
                acted = tuple(a for a in ORDER if a in self.contributions)
                self.timeline.append((now, "peak passed: releasing " + ", ".join(acted)))
                self.phase = PeakPhase.IDLE
                self.contributions, self.skipped, self.peak_before_kw = {}, {}, None
                return [Release(acted)]
            return []
        return []

    def on_result(self, action: str, brought_nothing: str, now: float, load_kw: float,
                  trend_kw_per_h: float) -> list[Start | Release]:
        """The wiring could not start `action` (why): go on with the next one at once."""
        if self.current != action:
            return []
        self.skipped[action] = brought_nothing
        self.contributions[action] = 0.0
        self.timeline.append((now, f"{action}: nothing ({brought_nothing})"))
        self.current = None
        return self._next(now, load_kw, trend_kw_per_h, ORDER.index(action) + 1)

    def _next(self, now: float, load_kw: float, trend_kw_per_h: float, start: int) -> list[Start | Release]:
        for name in ORDER[start:]:
            if name not in self.settings.actions:
                continue
            self.current = name
            self.phase = PeakPhase.SETTLING
            self.started_at = now
            self.baseline_kw = load_kw
            self.trend_kw_per_s = trend_kw_per_h / 3600.0
            need = (self.peak_before_kw or load_kw) - self.reduction_kw - self.target_kw
            self.timeline.append((now, f"start {name} (need {need:.0f} kW)"))
            return [Start(name, max(0.0, need))]
        self.phase = PeakPhase.HOLDING
        self.timeline.append((now, "every action used"))
        return []

    def figures(self) -> dict[str, float]:
        return {name: round(self.contributions.get(name, 0.0), 1) for name in ORDER}


def shedding_order(feeders: Sequence[Mapping[str, Any]], need_kw: float) -> list[Mapping[str, Any]]:
    """Feeders to open, fewest customers per kW first, until `need_kw` is found. A feeder whose net
    load is negative (its DER export) never helps; a feeder with a critical customer only when
    nothing else is left."""
    def kw(f: Mapping[str, Any]) -> float:
        return float(f.get("load_kw", 0.0))

    usable = [f for f in feeders if kw(f) > 0.0]
    plain = [f for f in usable if not f.get("critical_customers")]
    critical = [f for f in usable if f.get("critical_customers")]
    out: list[Mapping[str, Any]] = []
    found = 0.0
    for group in (plain, critical):
        for f in sorted(group, key=lambda f: int(f.get("customers", 0)) / max(kw(f), 1.0)):
            if found >= need_kw:
                return out
            out.append(f)
            found += kw(f)
    return out
