"""A transformer's health inputs, computed from the point history over months.

Input: hourly rows of the transformer's points (the state database's history, `Store.history`
aggregated per hour), keyed by the agent's point name: `load_kw`, `load_kvar`,
`primary_power_kw` (power drawn at the primary terminals, for efficiency), `top_oil_temp_c`,
`ambient_temp_c`, `fans_running` (0/1, so an hourly mean is the share of the hour the fans
ran), `operating_hours`, and the dissolved gases `h2_ppm` … `co2_ppm` from an online DGA monitor.
Any of them may be missing; what cannot be computed is None and named in `notes`.

What comes out, and how:

* **Top-oil trend at comparable load.** Hours whose load is within `load_band_pu` of the
  window's median load are kept; each hour's rise over ambient is brought to that reference
  load with the C57.91 ultimate-rise ratio `((K²R+1)/(R+1))^n`; the hours are averaged per day;
  a least-squares line through the daily means gives the slope in °C per month (30.44 days)
  with its 95 % confidence interval (Student's t on n − 2 degrees of freedom). A trend is
  *detected* when the interval's lower end is above `trend_threshold_c_per_month`: the
  temperature rises at the same load and the same ambient, and the data say so with 95 %
  confidence.
* **Efficiency from measured losses.** Output energy over input energy (secondary load over
  primary power) in the same comparable-load hours, over the first `baseline_days` of the
  window and over the last `recent_days`; the drop in percentage points.
* **Cooling duty cycle.** The share of hours the fans ran, baseline against recent.
* **Operating hours** against the maintenance interval (the monitor's counter, else the
  transformer's `operating_hours_at_commissioning` plus the hours in the history).
* **C57.91 loss of life so far.** Hot spot each hour from the measured top oil plus the
  rated hot-spot gradient at that hour's load (Δθ_H,R·K^2m), aging factor F_AA, summed
  equivalent hours over the history, plus the life used before monitoring began
  (`prior_loss_of_life_percent`), against `normal_insulation_life_h`.
* **DGA** (gateway/maintenance/dga.py): the last day's mean of each gas, its rate over
  `rate_window_days` (least squares, at least `min_rate_days` of data, as C57.104 wants rates
  from months of samples), its change over the last `delta_days`, the C57.104-2019 status and
  the Duval zone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.agents.physics import COOLING_EXPONENTS
from gateway.maintenance import dga
from gateway.maintenance.dga import GASES, Gas

COUNTERS = frozenset({"operating_hours"})
"""Points that count up: read at the end of each bucket, not averaged over it."""
DAY_S = 86400.0
MONTH_DAYS = 30.44
HOUR_S = 3600.0

Array = npt.NDArray[np.float64]
Series = tuple[Array, Array]
"""(wall times in s, values), sorted by time."""

_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_975(dof: int) -> float:
    """Student's t, 97.5 % quantile (two-sided 95 %), tabulated to 30 degrees of freedom."""
    if dof < 1:
        return math.inf
    if dof <= 30:
        return _T975[dof - 1]
    return 1.960 + 2.4 / dof  # within 0.002 of the exact quantile above 30


@dataclass(frozen=True, slots=True)
class LinearFit:
    slope: float
    intercept: float
    stderr: float
    n: int
    r2: float

    @property
    def ci95(self) -> float:
        """Half-width of the slope's 95 % confidence interval."""
        return t_975(self.n - 2) * self.stderr


def linear_fit(x: Sequence[float] | Array, y: Sequence[float] | Array) -> LinearFit | None:
    """Ordinary least squares y = a + b·x, with the slope's standard error; None below 3 points."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    n = len(xs)
    if n < 3 or len(ys) != n:
        return None
    mx, my = xs.mean(), ys.mean()
    sxx = float(((xs - mx) ** 2).sum())
    if sxx <= 0:
        return None
    slope = float(((xs - mx) * (ys - my)).sum() / sxx)
    intercept = float(my - slope * mx)
    resid = ys - (intercept + slope * xs)
    sse = float((resid**2).sum())
    syy = float(((ys - my) ** 2).sum())
    stderr = math.sqrt(sse / (n - 2) / sxx) if n > 2 else math.inf
    r2 = 1.0 - sse / syy if syy > 0 else 1.0
    return LinearFit(slope, intercept, stderr, n, r2)


def series(rows: Sequence[Mapping[str, Any]], value: str = "mean") -> Series:
    """History rows (`bucket_start`, `mean`) to a series; rows without a good value are left out.
    `value="max"` for a counter (its mean over a bucket is a time it never showed; the bucket's
    maximum is its reading at the bucket's end), the mean where a row has no maximum."""

    def pick(r: Mapping[str, Any]) -> Any:
        v = r.get(value)
        return r.get("mean") if v is None else v

    pairs = sorted(
        (float(r["bucket_start"]), float(pick(r)))
        for r in rows
        if pick(r) is not None and math.isfinite(float(pick(r)))
    )
    if not pairs:
        return np.zeros(0), np.zeros(0)
    t, v = zip(*pairs, strict=True)
    return np.asarray(t, dtype=np.float64), np.asarray(v, dtype=np.float64)


def _align(*parts: Series) -> tuple[Array, ...]:
    """Common times of several series (to the hour), and each one's values there."""
    keys = []
    for t, _ in parts:
        k = np.round(t / HOUR_S).astype(np.int64)
        keys.append(k)
    common = keys[0]
    for k in keys[1:]:
        common = np.intersect1d(common, k)
    out: list[Array] = [common.astype(np.float64) * HOUR_S]
    for (_, v), k in zip(parts, keys, strict=True):
        uniq, first = np.unique(k, return_index=True)
        out.append(v[first[np.searchsorted(uniq, common)]].astype(np.float64))
    return tuple(out)


def _daily_means(t: Array, v: Array) -> tuple[Array, Array]:
    """(day numbers, mean of each day's values)."""
    days = np.floor(t / DAY_S)
    uniq, inverse = np.unique(days, return_inverse=True)
    return uniq, np.bincount(inverse, weights=v) / np.bincount(inverse)


# --------------------------------------------------------------------------- settings and results


@dataclass(frozen=True, slots=True)
class HealthSettings:
    trend_window_days: float = 180.0
    baseline_days: float = 30.0
    recent_days: float = 14.0
    load_band_pu: float = 0.1
    trend_threshold_c_per_month: float = 0.5
    rate_window_days: float = 365.0
    min_rate_days: float = 90.0
    delta_days: float = 30.0
    min_trend_days: int = 14


@dataclass(frozen=True, slots=True)
class TransformerData:
    """What the health computation needs to know of the transformer (from its attributes)."""

    rated_kva: float
    cooling_type: str = "ONAN"
    rated_top_oil_rise_c: float = 55.0
    rated_hot_spot_rise_c: float = 25.0
    loss_ratio: float = 4.5
    normal_insulation_life_h: float = 180_000.0
    prior_loss_of_life_percent: float = 0.0
    maintenance_interval_h: float | None = None
    operating_hours_at_commissioning: float | None = None
    normal_top_oil_max_c: float | None = None
    age_years: float | None = None
    sealed: bool = True
    """Oil preservation keeps O2/N2 ≤ 0.2 (sealed, nitrogen blanket, membrane): C57.104 norms."""


@dataclass(frozen=True, slots=True)
class TopOilTrend:
    slope_c_per_month: float
    ci95_c_per_month: float
    days: int
    reference_load_pu: float
    rise_first_c: float
    """Fitted rise over ambient at the reference load, at the window's first day."""
    rise_last_c: float
    detected: bool

    @property
    def low_c_per_month(self) -> float:
        return self.slope_c_per_month - self.ci95_c_per_month

    def to_dict(self) -> dict[str, Any]:
        return {
            "slope_c_per_month": round(self.slope_c_per_month, 3),
            "ci95_c_per_month": round(self.ci95_c_per_month, 3),
            "low_c_per_month": round(self.low_c_per_month, 3),
            "days": self.days,
            "reference_load_pu": round(self.reference_load_pu, 3),
            "rise_first_c": round(self.rise_first_c, 2),
            "rise_last_c": round(self.rise_last_c, 2),
            "detected": self.detected,
        }


@dataclass(frozen=True, slots=True)
class Efficiency:
    baseline_pct: float
    recent_pct: float

    @property
    def drop_pct_points(self) -> float:
        return self.baseline_pct - self.recent_pct

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_pct": round(self.baseline_pct, 3),
            "recent_pct": round(self.recent_pct, 3),
            "drop_pct_points": round(self.drop_pct_points, 3),
        }


@dataclass(frozen=True, slots=True)
class CoolingDuty:
    baseline: float
    recent: float

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": round(self.baseline, 3), "recent": round(self.recent, 3)}


@dataclass(frozen=True, slots=True)
class HealthInputs:
    transformer: str
    time: float
    """Wall time of the evaluation."""
    history_days: float
    load_pu: float | None
    """Mean load over the recent days, per unit of rating."""
    top_oil: TopOilTrend | None
    top_oil_recent_c: float | None
    """Mean top-oil temperature in the recent comparable-load hours."""
    normal_top_oil_max_c: float | None
    efficiency: Efficiency | None
    cooling: CoolingDuty | None
    operating_hours: float | None
    maintenance_interval_h: float | None
    loss_of_life_percent: float | None
    dga: dga.DgaAssessment | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None, nd: int = 3) -> float | None:
            return None if v is None else round(v, nd)

        return {
            "transformer": self.transformer,
            "time": self.time,
            "history_days": round(self.history_days, 1),
            "load_pu": r(self.load_pu),
            "top_oil_trend": None if self.top_oil is None else self.top_oil.to_dict(),
            "top_oil_recent_c": r(self.top_oil_recent_c, 2),
            "normal_top_oil_max_c": self.normal_top_oil_max_c,
            "efficiency": None if self.efficiency is None else self.efficiency.to_dict(),
            "cooling_duty": None if self.cooling is None else self.cooling.to_dict(),
            "operating_hours": r(self.operating_hours, 0),
            "maintenance_interval_h": self.maintenance_interval_h,
            "loss_of_life_percent": r(self.loss_of_life_percent, 4),
            "dga": None if self.dga is None else self.dga.to_dict(),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- the computation


def _ultimate_ratio(k: Array | float, loss_ratio: float, n: float) -> Array | float:
    return ((np.asarray(k) ** 2 * loss_ratio + 1.0) / (loss_ratio + 1.0)) ** n


def evaluate(
    transformer: str,
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    data: TransformerData,
    now: float,
    settings: HealthSettings | None = None,
) -> HealthInputs:
    """Health inputs of one transformer from its hourly history rows, keyed by point name."""
    s = settings or HealthSettings()
    oldest = now - (s.trend_window_days + s.rate_window_days) * DAY_S
    return evaluate_series(
        transformer,
        {
            name: series([r for r in rs if float(r["bucket_start"]) >= oldest], "max" if name in COUNTERS else "mean")
            for name, rs in rows.items()
        },
        data,
        now,
        s,
    )


def evaluate_series(
    transformer: str,
    got: Mapping[str, Series],
    data: TransformerData,
    now: float,
    settings: HealthSettings | None = None,
) -> HealthInputs:
    """`evaluate` on series already made (sorted wall times and values per point name)."""
    s = settings or HealthSettings()
    notes: list[str] = []
    since = now - s.trend_window_days * DAY_S

    def get(name: str, window_start: float = since) -> Series:
        t, v = got.get(name, (np.zeros(0), np.zeros(0)))
        keep = (t >= window_start) & (t <= now)
        return t[keep], v[keep]

    m_exp, n_exp = COOLING_EXPONENTS.get(data.cooling_type, (0.8, 0.8))
    load = _apparent_kva(get("load_kw"), get("load_kvar"))
    first = min((float(t[0]) for t, _ in got.values() if len(t)), default=now)
    history_days = max(0.0, (now - max(first, since)) / DAY_S)
    recent_from = now - s.recent_days * DAY_S
    load_pu = None
    if len(load[0]):
        recent = load[1][load[0] >= recent_from]
        load_pu = float(recent.mean() / data.rated_kva) if len(recent) else None
    else:
        notes.append("no load history (load_kw)")

    top_oil, top_recent, comparable = _top_oil(
        get("top_oil_temp_c"), get("ambient_temp_c"), load, data, s, now, n_exp, notes
    )
    efficiency = _efficiency(get("load_kw"), get("primary_power_kw"), comparable, s, now, since, notes)
    cooling = _duty(get("fans_running"), s, now, since, notes)
    hours = _hours(get("operating_hours"), load, data, notes)
    lol = _loss_of_life(get("top_oil_temp_c", now - 10 * 365 * DAY_S), load, data, m_exp, notes)
    assessment = _dga(got, data, s, now, notes)
    return HealthInputs(
        transformer=transformer,
        time=now,
        history_days=history_days,
        load_pu=load_pu,
        top_oil=top_oil,
        top_oil_recent_c=top_recent,
        normal_top_oil_max_c=data.normal_top_oil_max_c,
        efficiency=efficiency,
        cooling=cooling,
        operating_hours=hours,
        maintenance_interval_h=data.maintenance_interval_h,
        loss_of_life_percent=lol,
        dga=assessment,
        notes=tuple(notes),
    )


def _apparent_kva(kw: Series, kvar: Series) -> Series:
    if not len(kw[0]):
        return kw
    if not len(kvar[0]):
        return kw[0], np.abs(kw[1])
    t, p, q = _align(kw, kvar)
    return t, np.hypot(p, q)


def _top_oil(
    top: Series,
    ambient: Series,
    load: Series,
    data: TransformerData,
    s: HealthSettings,
    now: float,
    n_exp: float,
    notes: list[str],
) -> tuple[TopOilTrend | None, float | None, Array]:
    if not len(top[0]) or not len(ambient[0]) or not len(load[0]):
        notes.append("no top-oil trend: top_oil_temp_c, ambient_temp_c and load_kw are all needed")
        return None, None, np.zeros(0)
    t, oil, amb, kva = _align(top, ambient, load)
    if len(t) < 24:
        notes.append("no top-oil trend: fewer than 24 hours with top oil, ambient and load together")
        return None, None, np.zeros(0)
    k = kva / data.rated_kva
    k_ref = float(np.median(k))
    keep = np.abs(k - k_ref) <= s.load_band_pu
    t, oil, amb, k = t[keep], oil[keep], amb[keep], k[keep]
    rise = (
        (oil - amb)
        * _ultimate_ratio(k_ref, data.loss_ratio, n_exp)
        / np.maximum(_ultimate_ratio(k, data.loss_ratio, n_exp), 1e-6)
    )
    recent = t >= now - s.recent_days * DAY_S
    top_recent = float(oil[recent].mean()) if recent.any() else None
    unique_days, daily = _daily_means(t, rise)
    if len(unique_days) < s.min_trend_days:
        notes.append(f"no top-oil trend: {len(unique_days)} days with comparable load, {s.min_trend_days} needed")
        return None, top_recent, t
    x = (unique_days - unique_days[0]) / MONTH_DAYS
    fit = linear_fit(x, daily)
    if fit is None:
        return None, top_recent, t
    slope, ci = fit.slope, fit.ci95
    trend = TopOilTrend(
        slope_c_per_month=slope,
        ci95_c_per_month=ci,
        days=len(unique_days),
        reference_load_pu=k_ref,
        rise_first_c=fit.intercept,
        rise_last_c=fit.intercept + slope * float(x[-1]),
        detected=slope - ci > s.trend_threshold_c_per_month,
    )
    return trend, top_recent, t


def _efficiency(
    output_kw: Series, primary: Series, comparable: Array, s: HealthSettings, now: float, since: float, notes: list[str]
) -> Efficiency | None:
    """Active power out (the secondary's kW) over active power in (the primary's kW)."""
    if not len(primary[0]) or not len(output_kw[0]):
        notes.append("no efficiency: primary_power_kw and load_kw are both needed")
        return None
    t2, out_kw, in_kw = _align(output_kw, primary)
    if len(comparable):
        keep = np.isin(np.round(t2 / HOUR_S), np.round(comparable / HOUR_S))
        t2, out_kw, in_kw = t2[keep], out_kw[keep], in_kw[keep]
    base = (t2 < since + s.baseline_days * DAY_S) & (in_kw > 0)
    recent = (t2 >= now - s.recent_days * DAY_S) & (in_kw > 0)
    if base.sum() < 24 or recent.sum() < 24:
        notes.append("no efficiency: fewer than 24 hours in the baseline or the recent period")
        return None
    if (since + s.baseline_days * DAY_S) > now - s.recent_days * DAY_S:
        notes.append("no efficiency: the history does not yet span a baseline and a recent period apart")
        return None
    return Efficiency(
        100.0 * out_kw[base].sum() / in_kw[base].sum(), 100.0 * out_kw[recent].sum() / in_kw[recent].sum()
    )


def _duty(fans: Series, s: HealthSettings, now: float, since: float, notes: list[str]) -> CoolingDuty | None:
    t, v = fans
    if not len(t):
        notes.append("no cooling duty cycle: no fans_running history")
        return None
    base = t < since + s.baseline_days * DAY_S
    recent = t >= now - s.recent_days * DAY_S
    if not base.any() or not recent.any():
        notes.append("no cooling duty cycle: the history does not cover both the baseline and the recent period")
        return None
    return CoolingDuty(float(np.clip(v[base], 0, 1).mean()), float(np.clip(v[recent], 0, 1).mean()))


def _hours(counter: Series, load: Series, data: TransformerData, notes: list[str]) -> float | None:
    """The hour counter's highest reading: it only counts up, so a lower one after it is a stale
    value (or an older historian's export laid over newer readings), not fewer hours."""
    if len(counter[0]):
        return float(counter[1].max())
    if data.operating_hours_at_commissioning is not None:
        energised = float((load[1] > 0).sum()) if len(load[0]) else 0.0
        return data.operating_hours_at_commissioning + energised
    notes.append("no operating hours: neither an operating_hours point nor operating_hours_at_commissioning")
    return None


def _loss_of_life(top: Series, load: Series, data: TransformerData, m_exp: float, notes: list[str]) -> float | None:
    if not len(top[0]) or not len(load[0]):
        notes.append("loss of life from the attributes only: no top-oil and load history")
        return data.prior_loss_of_life_percent
    t, oil, kva = _align(top, load)
    k = kva / data.rated_kva
    hot_spot = oil + data.rated_hot_spot_rise_c * np.power(np.maximum(k, 0.0), 2.0 * m_exp)
    faa = np.exp(15000.0 / 383.0 - 15000.0 / (np.clip(hot_spot, -50.0, 250.0) + 273.0))
    equivalent_h = float(faa.sum())  # one hour per row
    return data.prior_loss_of_life_percent + 100.0 * equivalent_h / data.normal_insulation_life_h


def _dga(
    got: Mapping[str, Series], data: TransformerData, s: HealthSettings, now: float, notes: list[str]
) -> dga.DgaAssessment | None:
    latest: dict[Gas, float] = {}
    rates: dict[Gas, float] = {}
    deltas: dict[Gas, float] = {}
    for gas in GASES:
        t, v = got.get(gas.point_name, (np.zeros(0), np.zeros(0)))
        keep = t <= now
        t, v = t[keep], v[keep]
        if not len(t):
            continue
        day = t >= now - DAY_S
        latest[gas] = float(v[day].mean()) if day.any() else float(v[-1])
        window = t >= now - s.rate_window_days * DAY_S
        if window.any() and (t[window][-1] - t[window][0]) >= s.min_rate_days * DAY_S:
            unique, daily = _daily_means(t[window], v[window])
            fit = linear_fit(unique * DAY_S, daily)
            rate = None if fit is None else fit.slope * 365.25 * DAY_S
            if rate is not None:
                rates[gas] = rate
        before = (t >= now - (s.delta_days + 1) * DAY_S) & (t < now - s.delta_days * DAY_S)
        if before.any():
            deltas[gas] = latest[gas] - float(v[before].mean())
    if not latest:
        notes.append("no DGA: no dissolved-gas history")
        return None
    if len(rates) < len(latest):
        notes.append(
            f"DGA rates need {s.min_rate_days:g} days of data: rate of "
            f"{', '.join(g.name for g in latest if g not in rates)} not judged"
        )
    return dga.assess(latest, sealed=data.sealed, age_years=data.age_years, deltas=deltas, rates=rates)
