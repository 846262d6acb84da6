"""Probability that a transformer fails within a horizon, from its health inputs, and why.

A proportional-hazards model, chosen because every number in it can be explained to an asset
engineer: a base failure rate λ0 for a transformer in normal condition, multiplied by
`exp(β·x)` for each risk factor x (zero when the factor is normal), so the annual failure rate
is `λ = λ0·exp(Σ βᵢ·xᵢ)` and the probability of failing within H days, with the rate constant
over so short a horizon, is

    P(H) = 1 − exp(−λ · H / 365.25)

Each factor's contribution is its term βᵢ·xᵢ (its share of the log-hazard), and the
probability the model would give without it. The most likely failure mode is the one whose
factors contribute most. P grows with every factor (β > 0, each x a non-decreasing function of
its input, capped), and the tests hold it to that.

| factor | x | β | mode | why |
| --- | --- | --- | --- | --- |
| thermal_trend | lower end of the 95 % interval of the top-oil slope at comparable load, °C/month (≥ 0, ≤ 5) | 0.30 | thermal | a rise at the same load and ambient means losses or cooling getting worse (C57.91: every 6-7 °C doubles the aging rate) |
| top_oil_excess | recent top oil at comparable load above the unit's normal maximum, °C (≤ 20) | 0.10 | thermal | operating beyond its own normal |
| efficiency_drop | baseline minus recent efficiency, percentage points (≤ 3) | 1.0 | winding | more losses at the same load: shorted turns, circulating currents, core faults |
| cooling_duty_rise | recent minus baseline share of hours the fans run (≤ 1) | 1.0 | cooling | cooling working harder for the same duty: fouled radiators, failing fans, sludge |
| dga_status | C57.104-2019 status − 1 (0, 1 or 2) | 0.9 | Duval zone | the guide's population norms: status 3 units are the ones that fail |
| acetylene | ln(1 + C2H2 / its 90th-percentile norm) (≤ 5) | 0.6 | winding | acetylene is made only by arcing (> 700 °C discharges): IEC 60599, C57.104 |
| operating_hours | 2·(hours / maintenance interval − 0.5), from half the interval (≤ 2) | 0.4 | ageing | overdue maintenance |
| loss_of_life | share of the normal insulation life used (C57.91) (≤ 1.5) | 2.0 | ageing | paper near its end of life |

The β are engineering weights, set so that the factors rank as the sources above rank them
(acetylene and the DGA status first). The one fitted parameter is λ0: `calibrate_base_rate`
solves it in closed form so that the use case's scenario 3 (oil trending up 2 °C a month,
78 °C against a normal 75 °C, efficiency 98.2 → 97.5 %, fans running constantly where they
used to cycle, elevated acetylene, 87 500 of 90 000 operating hours) gives the 45 % chance of
failure in 60 days the use case states. The result, about 0.6 % a year, lies inside the range
surveys report for substation transformers in service (CIGRE TB 642, 2015: about 0.5-1 % a
year), which is the check that the weights are of the right size. Both the fitting code and its
test are kept (`calibrate_base_rate`, tests/test_maintenance_failure.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.maintenance.dga import Gas
from gateway.maintenance.health import HealthInputs

YEAR_DAYS = 365.25


@dataclass(frozen=True, slots=True)
class Factor:
    name: str
    beta: float
    cap: float
    unit: str
    mode: str
    """Failure mode the factor points to (`dga` for the DGA status: the Duval zone says which)."""


FACTORS: tuple[Factor, ...] = (
    Factor("thermal_trend", 0.30, 5.0, "°C/month", "thermal"),
    Factor("top_oil_excess", 0.10, 20.0, "°C", "thermal"),
    Factor("efficiency_drop", 1.0, 3.0, "percentage points", "winding"),
    Factor("cooling_duty_rise", 1.0, 1.0, "share of hours", "cooling"),
    Factor("dga_status", 0.9, 2.0, "status − 1", "dga"),
    Factor("acetylene", 0.6, 5.0, "ln(1 + C2H2/p90)", "winding"),
    Factor("operating_hours", 0.4, 2.0, "2·(hours/interval − 0.5)", "ageing"),
    Factor("loss_of_life", 2.0, 1.5, "share of normal life", "ageing"),
)
BY_NAME = {f.name: f for f in FACTORS}

MODES: dict[str, str] = {
    "winding": "winding insulation breakdown",
    "thermal": "overheating of windings, core or connections",
    "cooling": "cooling system failure and thermal runaway",
    "ageing": "end of life of the paper insulation",
}

# The use case's scenario 3, as factor values (docs/maintenance.md shows the arithmetic)
SCENARIO_3_FEATURES: dict[str, float] = {
    "thermal_trend": 1.9,  # 2 °C/month, lower end of its interval
    "top_oil_excess": 3.0,  # 78 °C against a normal 75 °C
    "efficiency_drop": 0.7,  # 98.2 → 97.5 %
    "cooling_duty_rise": 0.6,  # fans from about 40 % of the time to all the time
    "dga_status": 2.0,  # status 3: elevated acetylene
    "acetylene": math.log(1.0 + 12.0 / 1.0),  # 12 µL/L against a 90th percentile of 1 µL/L
    "operating_hours": 2.0 * (87_500 / 90_000 - 0.5),
    "loss_of_life": 0.25,
}
SCENARIO_3_PROBABILITY = 0.45
SCENARIO_3_HORIZON_DAYS = 60.0
CIGRE_TB642_RANGE_PER_YEAR = (0.005, 0.01)


def log_hazard(features: Mapping[str, float]) -> float:
    return sum(f.beta * min(max(float(features.get(f.name, 0.0)), 0.0), f.cap) for f in FACTORS)


def probability(features: Mapping[str, float], horizon_days: float, base_rate_per_year: float) -> float:
    rate = base_rate_per_year * math.exp(log_hazard(features))
    return 1.0 - math.exp(-rate * horizon_days / YEAR_DAYS)


def calibrate_base_rate(features: Mapping[str, float], target_probability: float, horizon_days: float) -> float:
    """λ0 such that `features` give `target_probability` within `horizon_days` (closed form)."""
    if not 0.0 < target_probability < 1.0 or horizon_days <= 0:
        raise ValueError("calibration needs a probability in (0, 1) and a positive horizon")
    rate = -math.log(1.0 - target_probability) / (horizon_days / YEAR_DAYS)
    return rate / math.exp(log_hazard(features))


BASE_RATE_PER_YEAR = calibrate_base_rate(SCENARIO_3_FEATURES, SCENARIO_3_PROBABILITY, SCENARIO_3_HORIZON_DAYS)


def features(h: HealthInputs) -> dict[str, float]:
    """The factor values of a transformer's health inputs (0 where the input is unknown)."""
    x = {f.name: 0.0 for f in FACTORS}
    if h.top_oil is not None:
        x["thermal_trend"] = max(0.0, h.top_oil.low_c_per_month)
    if h.top_oil_recent_c is not None and h.normal_top_oil_max_c is not None:
        x["top_oil_excess"] = max(0.0, h.top_oil_recent_c - h.normal_top_oil_max_c)
    if h.efficiency is not None:
        x["efficiency_drop"] = max(0.0, h.efficiency.drop_pct_points)
    if h.cooling is not None:
        x["cooling_duty_rise"] = max(0.0, h.cooling.recent - h.cooling.baseline)
    if h.dga is not None:
        x["dga_status"] = float(h.dga.status - 1)
        c2h2 = h.dga.get(Gas.C2H2)
        if c2h2 is not None:
            x["acetylene"] = math.log1p(max(c2h2.ppm, 0.0) / c2h2.norms.p90_ppm)
    if h.operating_hours is not None and h.maintenance_interval_h:
        x["operating_hours"] = max(0.0, 2.0 * (h.operating_hours / h.maintenance_interval_h - 0.5))
    if h.loss_of_life_percent is not None:
        x["loss_of_life"] = max(0.0, h.loss_of_life_percent / 100.0)
    return {k: min(v, BY_NAME[k].cap) for k, v in x.items()}


@dataclass(frozen=True, slots=True)
class Contribution:
    factor: str
    value: float
    beta: float
    term: float
    """β·x: the factor's part of the log-hazard."""
    share: float
    """Its share of the log-hazard (0..1)."""
    probability_without: float
    """The probability within the horizon if this factor were normal."""
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "value": round(self.value, 4),
            "unit": BY_NAME[self.factor].unit,
            "beta": self.beta,
            "term": round(self.term, 4),
            "share": round(self.share, 4),
            "probability_without": round(self.probability_without, 4),
            "mode": self.mode,
        }


@dataclass(frozen=True, slots=True)
class FailurePrediction:
    probability: float
    horizon_days: float
    probabilities: Mapping[int, float]
    """Within 30, 60 and 90 days."""
    annual_rate: float
    hazard_ratio: float
    mode: str
    mode_key: str
    contributions: tuple[Contribution, ...]
    recommended_within_days: float
    """Days until the probability of failure reaches the acceptable risk."""
    base_rate_per_year: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "probability": round(self.probability, 4),
            "horizon_days": self.horizon_days,
            "probabilities": {str(k): round(v, 4) for k, v in self.probabilities.items()},
            "annual_rate": round(self.annual_rate, 5),
            "hazard_ratio": round(self.hazard_ratio, 2),
            "failure_mode": self.mode,
            "failure_mode_key": self.mode_key,
            "contributions": [c.to_dict() for c in self.contributions],
            "recommended_within_days": round(self.recommended_within_days, 1),
            "base_rate_per_year": round(self.base_rate_per_year, 6),
        }


def predict(
    h: HealthInputs,
    *,
    horizon_days: float = 60.0,
    acceptable_risk: float = 0.25,
    base_rate_per_year: float = BASE_RATE_PER_YEAR,
) -> FailurePrediction:
    x = features(h)
    total = log_hazard(x)
    rate = base_rate_per_year * math.exp(total)
    p = 1.0 - math.exp(-rate * horizon_days / YEAR_DAYS)
    dga_mode = "winding"
    if h.dga is not None and h.dga.duval is not None and not h.dga.duval.zone.electrical:
        dga_mode = "thermal"
    contributions = []
    by_mode: dict[str, float] = {}
    for f in FACTORS:
        term = f.beta * x[f.name]
        mode = dga_mode if f.mode == "dga" else f.mode
        by_mode[mode] = by_mode.get(mode, 0.0) + term
        without = dict(x)
        without[f.name] = 0.0
        contributions.append(
            Contribution(
                f.name,
                x[f.name],
                f.beta,
                term,
                term / total if total > 0 else 0.0,
                probability(without, horizon_days, base_rate_per_year),
                mode,
            )
        )
    contributions.sort(key=lambda c: -c.term)
    mode_key = max(by_mode, key=lambda k: by_mode[k]) if total > 0 else "ageing"
    within = -math.log(1.0 - acceptable_risk) / rate * YEAR_DAYS if rate > 0 else math.inf
    return FailurePrediction(
        probability=p,
        horizon_days=horizon_days,
        probabilities={d: 1.0 - math.exp(-rate * d / YEAR_DAYS) for d in (30, 60, 90)},
        annual_rate=rate,
        hazard_ratio=math.exp(total),
        mode=MODES[mode_key],
        mode_key=mode_key,
        contributions=tuple(contributions),
        recommended_within_days=min(within, 365.0),
        base_rate_per_year=base_rate_per_year,
    )
