"""Peak demand: the substation's actions in order of least customer impact, each measured.

When the load forecast crosses the substation's target (90 % of capacity by default) within the
lead time, the manager works through the actions one at a time, least customer impact first:

    cvr → capacitors → demand_response → der → transfer → shed

It starts an action, waits until the action is in force (at once for a set-point; a load
transfer only once both substations have confirmed it), lets it settle (`settle_s`), and
measures what it brought: the load the trend says there would have been without it, minus the
load measured now. It stops as soon as the forecast peak less what the actions brought is under
the target; shedding is the last action and only if nothing else sufficed. Each action's
contribution (active, reactive and the loading it counts for) is kept for the operator, SCADA
and the scenario's figures.

The loading is counted on the transformer's rating, which limits apparent power: `basis =
"apparent"` (default) measures kVA, so capacitors relieve the transformer by the reactive power
they supply; `basis = "active"` counts kW only (a site whose capacity is stated in MW of demand).

Sans-IO: the manager returns `Start` actions naming what to do; the wiring
(gateway/peak_service.py) carries each out through the switching authority (taps, capacitor
steps, DER set-points, breaker opens), the AMI feed (demand-response events) or the
load-transfer exchange with the neighbour, says when it is in force (`in_force`), and reports
back with `on_result` when an action could not be started or did not take effect (nothing to
do, refused, aborted).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ORDER = ("cvr", "capacitors", "demand_response", "der", "transfer", "shed")
BASES = ("apparent", "active")


class PeakPhase(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    """An action was started and is not in force yet (a transfer being agreed and switched)."""
    SETTLING = "settling"
    HOLDING = "holding"
    """The target is met (or every action used); the actions stay in force while the peak lasts."""


@dataclass(frozen=True, slots=True)
class PeakSettings:
    target_percent: float = 90.0
    settle_s: float = 120.0
    actions: tuple[str, ...] = ORDER
    release_margin_percent: float = 5.0
    """Release (end every action) once the forecast peak is this far below the target."""
    basis: str = "apparent"

    def __post_init__(self) -> None:
        if self.basis not in BASES:
            raise ValueError(f"basis must be one of {', '.join(BASES)}, found {self.basis!r}")
        unknown = [a for a in self.actions if a not in ORDER]
        if unknown:
            raise ValueError(f"unknown peak action(s) {', '.join(unknown)}; known: {', '.join(ORDER)}")
        if not (0.0 < self.target_percent <= 150.0 and self.settle_s >= 0.0 and self.release_margin_percent >= 0.0):
            raise ValueError("target_percent must be in (0, 150], settle_s and release_margin_percent >= 0")


@dataclass(frozen=True, slots=True)
class Load:
    """One measurement of the substation's load."""

    kw: float
    kvar: float = 0.0

    @property
    def kva(self) -> float:
        return math.hypot(self.kw, self.kvar)

    @property
    def power_factor(self) -> float:
        return abs(self.kw) / self.kva if self.kva > 0 else 1.0


@dataclass(frozen=True, slots=True)
class Contribution:
    counted: float
    """What the action took off the loading, in the basis's unit (kVA or kW)."""
    kw: float
    kvar: float
    power_factor_before: float
    power_factor_after: float

    def to_dict(self) -> dict[str, float]:
        return {
            "counted": round(self.counted, 1),
            "mw": round(self.kw / 1000.0, 3),
            "mvar": round(self.kvar / 1000.0, 3),
            "pf_before": round(self.power_factor_before, 4),
            "pf_after": round(self.power_factor_after, 4),
        }


@dataclass(frozen=True, slots=True)
class Start:
    action: str
    need: float
    """What is still to be found when the action starts, in the basis's unit (its controller
    sizes itself to it)."""
    need_kw: float
    """The same as active power at the present power factor (DER, demand response and transfers
    are sized in kW)."""


@dataclass(frozen=True, slots=True)
class Release:
    """The peak has passed: undo what the actions did (CVR off, DR ended, DER back to normal; a
    transfer and shed feeders are given back by their own procedures)."""

    actions: tuple[str, ...]


@dataclass
class PeakManager:
    capacity_kva: float
    settings: PeakSettings = field(default_factory=PeakSettings)
    phase: PeakPhase = PeakPhase.IDLE
    contributions: dict[str, Contribution] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Action → why it brought nothing (no device, refused, nothing left to use)."""
    current: str | None = None
    started_at: float = 0.0
    """When the current action came into force (its settling starts)."""
    baseline_at: float = 0.0
    baseline: Load = field(default_factory=lambda: Load(0.0))
    trend_kw_per_s: float = 0.0
    peak_before: float | None = None
    """The forecast peak (basis unit) when the manager started acting."""
    first_crossing_at: float | None = None
    target_met_at: float | None = None
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def target(self) -> float:
        return self.settings.target_percent / 100.0 * self.capacity_kva

    @property
    def reduction(self) -> float:
        return sum(c.counted for c in self.contributions.values())

    def measure(self, load: Load) -> float:
        return load.kva if self.settings.basis == "apparent" else load.kw

    def percent(self, value: float) -> float:
        return 100.0 * value / self.capacity_kva

    def step(self, now: float, load: Load, forecast_peak: float, trend_kw_per_h: float) -> list[Start | Release]:
        """One look at the load and its forecast peak (basis unit); what to start or release."""
        if self.phase is PeakPhase.IDLE:
            if forecast_peak <= self.target:
                return []
            self.peak_before = forecast_peak
            self.first_crossing_at = now
            self.target_met_at = None
            self._note(
                now,
                f"forecast peak {self.percent(forecast_peak):.1f} % of capacity, above the "
                f"{self.settings.target_percent:g} % target: acting",
            )
            return self._next(now, load, trend_kw_per_h, 0)
        if self.phase is PeakPhase.SETTLING:
            if now - self.started_at < self.settings.settle_s:
                return []
            assert self.current is not None
            done = self.current
            self.contributions[done] = self._measured(now, load)
            c = self.contributions[done]
            self._note(
                now,
                f"{done}: {c.kw / 1000.0:.2f} MW, {c.kvar / 1000.0:.2f} Mvar "
                f"({self.percent(c.counted):.1f} % of capacity)",
            )
            self.current = None
            assert self.peak_before is not None
            if self.peak_before - self.reduction <= self.target:
                self.phase = PeakPhase.HOLDING
                self.target_met_at = now
                self._note(
                    now,
                    f"target met after {done}: forecast peak "
                    f"{self.percent(self.peak_before - self.reduction):.1f} % of capacity",
                )
                return []
            return self._next(now, load, trend_kw_per_h, ORDER.index(done) + 1)
        if self.phase is PeakPhase.HOLDING:
            # the forecast already contains what the actions bring (they act on the load itself):
            # release only when the peak would be under the target, with a margin, without the
            # actions that a release undoes (a transfer stays until it is given back)
            undone = sum(c.counted for a, c in self.contributions.items() if a != "transfer")
            if (
                forecast_peak + undone < self.target * (1.0 - self.settings.release_margin_percent / 100.0)
                and trend_kw_per_h <= 0.0
            ):
                acted = tuple(a for a in ORDER if a in self.contributions and a not in self.skipped)
                self._note(now, "peak passed: releasing " + (", ".join(acted) or "nothing"))
                self.phase = PeakPhase.IDLE
                self.contributions, self.skipped, self.peak_before = {}, {}, None
                return [Release(acted)]
            used = [ORDER.index(a) for a in self.contributions]
            rest = [a for a in ORDER[max(used, default=-1) + 1 :] if a in self.settings.actions]
            if rest and forecast_peak > self.target * (1.0 + self.settings.release_margin_percent / 200.0):
                # the load grew past what was done: on with the next action
                self.peak_before = forecast_peak + self.reduction
                self._note(
                    now,
                    f"forecast peak {self.percent(forecast_peak):.1f} % of capacity again "
                    "above the target: acting further",
                )
                return self._next(now, load, trend_kw_per_h, max(used, default=-1) + 1)
            return []
        return []

    def in_force(self, action: str, now: float) -> None:
        """The wiring: `action` (started earlier) has taken effect; its settling starts now."""
        if self.current == action and self.phase is PeakPhase.WAITING:
            self.phase = PeakPhase.SETTLING
            self.started_at = now
            self._note(now, f"{action} in force")

    def on_result(
        self, action: str, brought_nothing: str, now: float, load: Load, trend_kw_per_h: float
    ) -> list[Start | Release]:
        """The wiring could not start `action`, or it did not take effect (why): on to the next."""
        if self.current != action:
            return []
        self.skipped[action] = brought_nothing
        self.contributions[action] = Contribution(0.0, 0.0, 0.0, load.power_factor, load.power_factor)
        self._note(now, f"{action}: nothing ({brought_nothing})")
        self.current = None
        return self._next(now, load, trend_kw_per_h, ORDER.index(action) + 1)

    def _measured(self, now: float, load: Load) -> Contribution:
        """What the current action took off: the trend's load without it, less the load now.
        The reactive trend is the active one at the baseline's power factor."""
        dt = now - self.baseline_at
        grow_kw = self.trend_kw_per_s * dt
        ratio = self.baseline.kvar / self.baseline.kw if self.baseline.kw > 0 else 0.0
        without = Load(self.baseline.kw + grow_kw, self.baseline.kvar + grow_kw * ratio)
        counted = max(0.0, self.measure(without) - self.measure(load))
        return Contribution(
            counted, without.kw - load.kw, without.kvar - load.kvar, self.baseline.power_factor, load.power_factor
        )

    def _next(self, now: float, load: Load, trend_kw_per_h: float, start: int) -> list[Start | Release]:
        for name in ORDER[start:]:
            if name not in self.settings.actions:
                continue
            self.current = name
            self.phase = PeakPhase.WAITING
            self.baseline_at = now
            self.baseline = load
            self.trend_kw_per_s = trend_kw_per_h / 3600.0
            need = max(0.0, (self.peak_before or self.measure(load)) - self.reduction - self.target)
            need_kw = need * (load.power_factor if self.settings.basis == "apparent" else 1.0)
            self._note(now, f"start {name} (need {self.percent(need):.1f} % of capacity, ≈{need_kw / 1000.0:.2f} MW)")
            return [Start(name, need, need_kw)]
        self.phase = PeakPhase.HOLDING
        self._note(now, "every action used")
        return []

    def _note(self, now: float, text: str) -> None:
        self.timeline.append((now, text))
        del self.timeline[:-500]

    def figures(self) -> dict[str, dict[str, float]]:
        """Per action (every one of ORDER): MW, Mvar and the loading counted, with power factors."""
        zero = Contribution(0.0, 0.0, 0.0, 1.0, 1.0)
        return {name: self.contributions.get(name, zero).to_dict() for name in ORDER}

    def status(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "basis": self.settings.basis,
            "target_percent": self.settings.target_percent,
            "capacity_kva": self.capacity_kva,
            "current": self.current,
            "peak_before_percent": None if self.peak_before is None else round(self.percent(self.peak_before), 2),
            "reduction_percent": round(self.percent(self.reduction), 2),
            "contributions": {k: v.to_dict() for k, v in self.contributions.items()},
            "skipped": dict(self.skipped),
            "timeline": [{"t": t, "text": x} for t, x in self.timeline[-50:]],
        }


def shedding_order(feeders: Sequence[Mapping[str, Any]], need_kw: float) -> list[Mapping[str, Any]]:
    """Feeders to open until `need_kw` is found, with the fewest customers: the single feeder with
    the fewest customers that covers the need when there is one, else fewest customers per kW
    first. A feeder whose net load is negative (its DER export) never helps; a feeder with a
    critical customer only when nothing else is left."""

    def kw(f: Mapping[str, Any]) -> float:
        return float(f.get("load_kw", 0.0))

    usable = [f for f in feeders if kw(f) > 0.0]
    plain = [f for f in usable if not f.get("critical_customers")]
    critical = [f for f in usable if f.get("critical_customers")]
    enough = [f for f in plain if kw(f) >= need_kw]
    if enough:
        return [min(enough, key=lambda f: (int(f.get("customers", 0)), kw(f)))]
    out: list[Mapping[str, Any]] = []
    found = 0.0
    for group in (plain, critical):
        for f in sorted(group, key=lambda f: int(f.get("customers", 0)) / max(kw(f), 1.0)):
            if found >= need_kw:
                return out
            out.append(f)
            found += kw(f)
    return out
