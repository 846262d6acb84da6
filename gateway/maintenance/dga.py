"""Dissolved-gas analysis: IEEE C57.104-2019 status per gas and rate, and Duval triangle 1.

Concentrations are µL/L (ppm) of gas dissolved in mineral oil, as an online DGA monitor or a
laboratory reports them.

**C57.104-2019 status.** The guide judges each gas against norms taken from a population of
transformers: the 90th percentile of concentrations (Table 1), the 95th percentile (Table 2),
the 95th percentile of the change between two samples (Table 3) and of the rate of increase
per year (Table 4), each split by the O2/N2 ratio (≤ 0.2: sealed, nitrogen-blanketed or
membrane preservation; > 0.2: free-breathing) and, for some gases, by the transformer's age.
This module rates each gas:

    status 3  level ≥ Table 2, or level ≥ Table 1 with a change or rate above Table 3/4
    status 2  level ≥ Table 1, or a change or rate above Table 3/4 at a lower level
    status 1  otherwise

and the transformer's status is the worst gas's. Tables 1 and 2 are as published (cross-checked
against ToniMellin/dga-diagtool `ieee_2019_typical_calculation`); the Table 3 and 4 values are
the ones commonly quoted from the guide and were not re-read from the standard itself — check
them against your copy (they are data: `DELTA_95` and `RATE_95`). The guide gives no rate norm
for acetylene; any measurable increase (0.5 µL/L a year, 1 µL/L between samples) counts here.

**Duval triangle 1** (M. Duval, IEEE Electrical Insulation Magazine 18(3), 2002; IEC 60599:2015
Annex B) places the relative shares of CH4, C2H4 and C2H2 in one of seven zones: PD partial
discharges, D1 low- and D2 high-energy discharges (arcing), T1 < 300 °C, T2 300–700 °C and
T3 > 700 °C thermal faults, DT a mix of thermal and electrical faults. Zone limits, in % of
CH4 + C2H4 + C2H2:

    PD  CH4 ≥ 98
    D1  C2H2 ≥ 13, C2H4 < 23
    D2  C2H2 ≥ 13, C2H4 ≥ 23, and C2H4 < 40 or C2H2 ≥ 29
    T1  C2H2 < 4, C2H4 < 20
    T2  C2H2 < 4, 20 ≤ C2H4 < 50
    T3  C2H2 < 15, C2H4 ≥ 50
    DT  the rest

The triangle says which fault, not whether there is one: it is read only when the gases are
above their typical levels (status 2 or 3), as the guide advises.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class Gas(enum.Enum):
    H2 = "h2"
    CH4 = "ch4"
    C2H6 = "c2h6"
    C2H4 = "c2h4"
    C2H2 = "c2h2"
    CO = "co"
    CO2 = "co2"

    @property
    def point_name(self) -> str:
        """The point name a transformer agent reads the gas from (e.g. `c2h2_ppm`)."""
        return f"{self.value}_ppm"


GASES: tuple[Gas, ...] = tuple(Gas)

# Age classes of the tables: unknown, 1-9 years, 10-30 years, more than 30 years.
_U, _Y, _M, _O = "unknown", "1-9", "10-30", ">30"


def age_class(age_years: float | None) -> str:
    if age_years is None or not math.isfinite(age_years):
        return _U
    if age_years < 10:
        return _Y
    return _M if age_years <= 30 else _O


def _by_age(unknown: float, young: float, mid: float, old: float) -> dict[str, float]:
    return {_U: unknown, _Y: young, _M: mid, _O: old}


def _flat(v: float) -> dict[str, float]:
    return _by_age(v, v, v, v)


# Table 1: 90th percentile concentrations, µL/L. Keys: sealed (O2/N2 ≤ 0.2) True / False.
P90: dict[bool, dict[Gas, dict[str, float]]] = {
    True: {
        Gas.H2: _by_age(80, 75, 75, 100),
        Gas.CH4: _by_age(90, 45, 90, 110),
        Gas.C2H6: _by_age(90, 30, 90, 150),
        Gas.C2H4: _by_age(50, 20, 50, 90),
        Gas.C2H2: _flat(1),
        Gas.CO: _flat(900),
        Gas.CO2: _by_age(9000, 5000, 10000, 10000),
    },
    False: {
        Gas.H2: _flat(40),
        Gas.CH4: _flat(20),
        Gas.C2H6: _flat(15),
        Gas.C2H4: _by_age(50, 25, 60, 60),
        Gas.C2H2: _flat(2),
        Gas.CO: _flat(500),
        Gas.CO2: _by_age(5000, 3500, 5500, 5500),
    },
}

# Table 2: 95th percentile concentrations, µL/L.
P95: dict[bool, dict[Gas, dict[str, float]]] = {
    True: {
        Gas.H2: _flat(200),
        Gas.CH4: _by_age(150, 100, 150, 200),
        Gas.C2H6: _by_age(175, 70, 175, 250),
        Gas.C2H4: _by_age(100, 40, 95, 175),
        Gas.C2H2: _by_age(2, 2, 2, 4),
        Gas.CO: _flat(1100),
        Gas.CO2: _by_age(12500, 7000, 14000, 14000),
    },
    False: {
        Gas.H2: _flat(90),
        Gas.CH4: _by_age(50, 60, 60, 30),
        Gas.C2H6: _by_age(40, 30, 40, 40),
        Gas.C2H4: _by_age(100, 80, 125, 125),
        Gas.C2H2: _flat(7),
        Gas.CO: _flat(600),
        Gas.CO2: _by_age(7000, 5000, 8000, 8000),
    },
}

# Table 3: 95th percentile of the absolute change between two samples, µL/L.
DELTA_95: dict[bool, dict[Gas, float]] = {
    True: {Gas.H2: 40, Gas.CH4: 30, Gas.C2H6: 25, Gas.C2H4: 20, Gas.C2H2: 1, Gas.CO: 250, Gas.CO2: 2500},
    False: {Gas.H2: 25, Gas.CH4: 10, Gas.C2H6: 9, Gas.C2H4: 20, Gas.C2H2: 1, Gas.CO: 175, Gas.CO2: 1700},
}

# Table 4: 95th percentile of the rate of increase, µL/L per year.
RATE_95: dict[bool, dict[Gas, float]] = {
    True: {Gas.H2: 20, Gas.CH4: 10, Gas.C2H6: 9, Gas.C2H4: 7, Gas.C2H2: 0.5, Gas.CO: 100, Gas.CO2: 1000},
    False: {Gas.H2: 25, Gas.CH4: 7, Gas.C2H6: 7, Gas.C2H4: 10, Gas.C2H2: 0.5, Gas.CO: 80, Gas.CO2: 1000},
}


@dataclass(frozen=True, slots=True)
class Norms:
    p90_ppm: float
    p95_ppm: float
    delta_ppm: float
    rate_ppm_per_year: float


def norms(gas: Gas, *, sealed: bool, age_years: float | None) -> Norms:
    cls = age_class(age_years)
    return Norms(P90[sealed][gas][cls], P95[sealed][gas][cls], DELTA_95[sealed][gas], RATE_95[sealed][gas])


@dataclass(frozen=True, slots=True)
class GasStatus:
    gas: Gas
    ppm: float
    status: int
    """1, 2 or 3 (C57.104-2019 DGA status)."""
    level: str
    """below_p90, p90 (at or above Table 1), p95 (at or above Table 2)."""
    delta_ppm: float | None
    rate_ppm_per_year: float | None
    delta_exceeded: bool
    rate_exceeded: bool
    norms: Norms

    def to_dict(self) -> dict[str, Any]:
        return {
            "gas": self.gas.name,
            "ppm": self.ppm,
            "status": self.status,
            "level": self.level,
            "delta_ppm": self.delta_ppm,
            "rate_ppm_per_year": self.rate_ppm_per_year,
            "delta_exceeded": self.delta_exceeded,
            "rate_exceeded": self.rate_exceeded,
            "p90_ppm": self.norms.p90_ppm,
            "p95_ppm": self.norms.p95_ppm,
            "delta_limit_ppm": self.norms.delta_ppm,
            "rate_limit_ppm_per_year": self.norms.rate_ppm_per_year,
        }


def gas_status(
    gas: Gas,
    ppm: float,
    *,
    sealed: bool,
    age_years: float | None,
    delta_ppm: float | None = None,
    rate_ppm_per_year: float | None = None,
) -> GasStatus:
    """One gas against its C57.104-2019 norms. A decrease never counts as a change (degassing)."""
    if not math.isfinite(ppm) or ppm < 0:
        raise ValueError(f"{gas.name}: a concentration must be a finite number ≥ 0 µL/L, found {ppm!r}")
    n = norms(gas, sealed=sealed, age_years=age_years)
    level = "p95" if ppm >= n.p95_ppm else "p90" if ppm >= n.p90_ppm else "below_p90"
    delta_hit = delta_ppm is not None and delta_ppm > n.delta_ppm
    rate_hit = rate_ppm_per_year is not None and rate_ppm_per_year > n.rate_ppm_per_year
    changing = delta_hit or rate_hit
    if level == "p95" or (level == "p90" and changing):
        status = 3
    elif level == "p90" or changing:
        status = 2
    else:
        status = 1
    return GasStatus(gas, ppm, status, level, delta_ppm, rate_ppm_per_year, delta_hit, rate_hit, n)


# --------------------------------------------------------------------------- Duval triangle 1


class DuvalZone(enum.Enum):
    PD = "PD"
    D1 = "D1"
    D2 = "D2"
    T1 = "T1"
    T2 = "T2"
    T3 = "T3"
    DT = "DT"

    @property
    def meaning(self) -> str:
        return _ZONE_MEANING[self]

    @property
    def electrical(self) -> bool:
        """A discharge (partial, low or high energy): a fault in the insulation's dielectric."""
        return self in (DuvalZone.PD, DuvalZone.D1, DuvalZone.D2, DuvalZone.DT)


_ZONE_MEANING = {
    DuvalZone.PD: "partial discharges",
    DuvalZone.D1: "discharges of low energy",
    DuvalZone.D2: "discharges of high energy (arcing)",
    DuvalZone.T1: "thermal fault below 300 °C",
    DuvalZone.T2: "thermal fault 300-700 °C",
    DuvalZone.T3: "thermal fault above 700 °C",
    DuvalZone.DT: "mix of thermal and electrical faults",
}


@dataclass(frozen=True, slots=True)
class DuvalPoint:
    zone: DuvalZone
    ch4_pct: float
    c2h4_pct: float
    c2h2_pct: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "zone": self.zone.value,
            "meaning": self.zone.meaning,
            "ch4_pct": round(self.ch4_pct, 2),
            "c2h4_pct": round(self.c2h4_pct, 2),
            "c2h2_pct": round(self.c2h2_pct, 2),
        }


def duval_zone(ch4_pct: float, c2h4_pct: float, c2h2_pct: float) -> DuvalZone:
    """The zone of a point given as shares (they are normalised to 100 %)."""
    total = ch4_pct + c2h4_pct + c2h2_pct
    if not (math.isfinite(total) and total > 0) or min(ch4_pct, c2h4_pct, c2h2_pct) < 0:
        raise ValueError("Duval triangle: shares must be finite, ≥ 0 and not all zero")
    ch4, c2h4, c2h2 = (100.0 * x / total for x in (ch4_pct, c2h4_pct, c2h2_pct))
    if ch4 >= 98.0:
        return DuvalZone.PD
    if c2h2 >= 13.0 and c2h4 < 23.0:
        return DuvalZone.D1
    if c2h2 >= 13.0 and (c2h4 < 40.0 or c2h2 >= 29.0):
        return DuvalZone.D2
    if c2h2 < 4.0 and c2h4 < 20.0:
        return DuvalZone.T1
    if c2h2 < 4.0 and c2h4 < 50.0:
        return DuvalZone.T2
    if c2h2 < 15.0 and c2h4 >= 50.0:
        return DuvalZone.T3
    return DuvalZone.DT


def duval_triangle_1(ch4_ppm: float, c2h4_ppm: float, c2h2_ppm: float) -> DuvalPoint | None:
    """The zone of three concentrations (µL/L); None when all three are zero."""
    values = (ch4_ppm, c2h4_ppm, c2h2_ppm)
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"Duval triangle: concentrations must be finite and ≥ 0 µL/L, found {values}")
    total = sum(values)
    if total <= 0:
        return None
    shares = [100.0 * v / total for v in values]
    return DuvalPoint(duval_zone(*shares), *shares)


# --------------------------------------------------------------------------- a transformer's DGA


@dataclass(frozen=True, slots=True)
class DgaAssessment:
    status: int
    gases: tuple[GasStatus, ...]
    duval: DuvalPoint | None
    """Read only when the status is 2 or 3 (otherwise None)."""
    sealed: bool

    def ppm(self, gas: Gas) -> float | None:
        return next((g.ppm for g in self.gases if g.gas is gas), None)

    def get(self, gas: Gas) -> GasStatus | None:
        return next((g for g in self.gases if g.gas is gas), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "sealed": self.sealed,
            "gases": [g.to_dict() for g in self.gases],
            "duval": None if self.duval is None else self.duval.to_dict(),
        }


def assess(
    ppm: Mapping[Gas, float],
    *,
    sealed: bool = True,
    age_years: float | None = None,
    deltas: Mapping[Gas, float] | None = None,
    rates: Mapping[Gas, float] | None = None,
) -> DgaAssessment:
    """The transformer's DGA status from the gases measured (any subset of the seven)."""
    deltas = deltas or {}
    rates = rates or {}
    statuses = tuple(
        gas_status(
            g,
            float(ppm[g]),
            sealed=sealed,
            age_years=age_years,
            delta_ppm=deltas.get(g),
            rate_ppm_per_year=rates.get(g),
        )
        for g in GASES
        if g in ppm
    )
    status = max((s.status for s in statuses), default=1)
    duval = None
    if status >= 2 and all(g in ppm for g in (Gas.CH4, Gas.C2H4, Gas.C2H2)):
        duval = duval_triangle_1(float(ppm[Gas.CH4]), float(ppm[Gas.C2H4]), float(ppm[Gas.C2H2]))
    return DgaAssessment(status, statuses, duval, sealed)


def rate_per_year(times_s: Sequence[float], ppm: Sequence[float]) -> float | None:
    """Least-squares slope of a gas over time, µL/L per year (None with fewer than 3 samples)."""
    if len(times_s) < 3 or len(times_s) != len(ppm):
        return None
    n = len(times_s)
    mt = sum(times_s) / n
    mv = sum(ppm) / n
    sxx = sum((t - mt) ** 2 for t in times_s)
    if sxx <= 0:
        return None
    slope_s = sum((t - mt) * (v - mv) for t, v in zip(times_s, ppm, strict=True)) / sxx
    return slope_s * 365.25 * 86400.0
