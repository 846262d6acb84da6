"""A transformer's condition for the simulator: thermal drift, efficiency, fans, dissolved gases
and hour counter, live and over months of history in seconds.

A condition follows a profile over its service age (months): the top-oil temperature drifts up
`drift_c_per_month` at any load (fouled radiators, sludge, losses rising), the efficiency moves
from `efficiency_start_pct` to `efficiency_end_pct` over `months` (the primary draws the output
over it), each gas moves from its start to its end concentration (linearly, or growing
exponentially for an active fault: most of the rise late), and the hour counter runs. Fans are
thermostatic: on above `fan_on_c` of top oil, off below `fan_off_c`; with the fans off the oil
rises `onan_rise_factor` times what it does with them on (an ONAF unit's rating is with fans).
So a unit whose oil drifts up ends with its fans running all the time, where a healthy one
cycles them with the daily load — the use case's scenario 3, from causes, not by decree.

Two profiles: `scenario-3` (the use case's ageing unit: its oil drifting 2.4 °C a month — about
2 °C a month seen at comparable load once the fans run more —, 98.2 → 97.4 %, acetylene
rising to 14 µL/L with hydrogen and ethylene, a D2 discharge pattern) and `healthy` (its twin:
no drift, steady efficiency, typical gas levels growing slowly, as DGA norms expect of a sound
unit). A site file names them per transformer:

    [simulation.ageing]
    "XFMR-234" = { profile = "scenario-3", operating_hours = 83180 }
    "XFMR-235" = { profile = "healthy", operating_hours = 83180 }

`monitor_log` runs a condition through months of hourly operation — daily load cycles from the
model's own load profiles, a lighter weekend, ambient with its daily swing, seasons and hot
spells — as the transformer's monitor and DGA monitor would have logged it: rows ready for
`stima history import`. It advances the condition; the live values then carry on from there.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.grid.profiles import SmoothNoise, ambient_temperature_c

MONTH_S = 30.44 * 86400.0
HOUR_S = 3600.0
GASES = ("h2", "ch4", "c2h6", "c2h4", "c2h2", "co", "co2")
CONDITION_NAMES = frozenset({"primary_power_kw", "fans_running", "operating_hours", *(f"{g}_ppm" for g in GASES)})
"""Point names a transformer with a condition adds (its monitor and its DGA monitor)."""
OIL_EXPONENT = {"ONAN": 0.8, "oil_filled": 0.8, "dry_type": 0.8, "ONAF": 0.9, "OFAF": 1.0, "ODAF": 1.0}
WEEKLY = (1.0, 1.0, 1.0, 1.0, 1.0, 0.85, 0.8)
"""Load by day of the week (Monday first): lighter at weekends — except a load with no daily
cycle (a process plant running round the clock), which has no weekly one either."""


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    months: float
    drift_c_per_month: float
    efficiency_start_pct: float
    efficiency_end_pct: float
    gases_start: Mapping[str, float]
    gases_end: Mapping[str, float]
    exponential: bool = False
    """Gases grow exponentially (an active fault), else linearly."""
    gas_noise_pct: float = 1.0


PROFILES: dict[str, Profile] = {
    "scenario-3": Profile(
        "scenario-3",
        6.0,
        2.4,
        98.2,
        97.4,
        {"h2": 60.0, "ch4": 20.0, "c2h6": 10.0, "c2h4": 8.0, "c2h2": 0.3, "co": 300.0, "co2": 2500.0},
        {"h2": 160.0, "ch4": 45.0, "c2h6": 20.0, "c2h4": 35.0, "c2h2": 14.0, "co": 420.0, "co2": 3400.0},
        exponential=True,
    ),
    "healthy": Profile(
        "healthy",
        12.0,
        0.0,
        98.2,
        98.2,
        {"h2": 35.0, "ch4": 18.0, "c2h6": 12.0, "c2h4": 7.0, "c2h2": 0.2, "co": 280.0, "co2": 2600.0},
        {"h2": 36.0, "ch4": 18.5, "c2h6": 12.2, "c2h4": 7.1, "c2h2": 0.2, "co": 286.0, "co2": 2660.0},
    ),
}


@dataclass
class Condition:
    transformer: str
    profile: Profile
    operating_hours: float
    age_months: float = 0.0
    fan_on_c: float = 60.0
    fan_off_c: float = 52.0
    onan_rise_factor: float = 1.25
    fans_on: bool = False
    seed: int = 0
    _noise: SmoothNoise | None = field(default=None, repr=False)

    def _progress(self) -> float:
        return min(max(self.age_months / self.profile.months, 0.0), 1.0) if self.profile.months > 0 else 1.0

    def drift_c(self) -> float:
        return self.profile.drift_c_per_month * self.age_months

    def efficiency_pct(self) -> float:
        p = self.profile
        return p.efficiency_start_pct + (p.efficiency_end_pct - p.efficiency_start_pct) * self._progress()

    def gases_ppm(self, noise: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
        p = self.profile
        x = self._progress()
        shape = (math.exp(3.0 * x) - 1.0) / (math.exp(3.0) - 1.0) if p.exponential else x
        out = {}
        for k, g in enumerate(GASES):
            value = p.gases_start[g] + (p.gases_end[g] - p.gases_start[g]) * shape
            if noise is not None:
                value *= 1.0 + p.gas_noise_pct / 100.0 * float(noise[k])
            out[g] = max(0.0, value)
        return out

    def top_oil_c(self, ambient_c: float, rise_fans_on_c: float) -> float:
        """Top oil from the rise the model computed (its rating: fans on), the fans as they are
        now (switched by this reading, thermostat with hysteresis) and the drift."""

        def oil(fans: bool) -> float:
            return ambient_c + rise_fans_on_c * (1.0 if fans else self.onan_rise_factor) + self.drift_c()

        value = oil(self.fans_on)
        if not self.fans_on and value > self.fan_on_c:
            self.fans_on = True
        elif self.fans_on and value < self.fan_off_c:
            self.fans_on = False
        return oil(self.fans_on)

    def live(self, values: dict[str, float | int | bool], now_s: float) -> dict[str, float | int | bool]:
        """A modelled transformer's values with its condition: top oil, primary power, fans,
        hours and gases (the model's values have the top oil of a healthy unit, fans on)."""
        if self._noise is None:
            self._noise = SmoothNoise(self.seed, 11, len(GASES), 600.0)
        ambient = float(values["ambient_temp_c"])
        rise = float(values["top_oil_temp_c"]) - ambient
        out = dict(values)
        out["top_oil_temp_c"] = self.top_oil_c(ambient, rise)
        out["primary_power_kw"] = float(values["load_kw"]) / (self.efficiency_pct() / 100.0)
        out["fans_running"] = self.fans_on
        out["operating_hours"] = int(self.operating_hours + now_s / HOUR_S)
        for g, ppm in self.gases_ppm(self._noise.at(now_s)).items():
            out[f"{g}_ppm"] = ppm
        return out


def conditions(settings: Mapping[str, Any], transformers: Iterable[str], seed: int) -> dict[str, Condition]:
    """The `[simulation.ageing]` table to conditions (ValueError names the key and what was expected)."""
    known = set(transformers)
    out: dict[str, Condition] = {}
    for xfmr, cfg in settings.items():
        if xfmr not in known:
            raise ValueError(f"simulation.ageing.{xfmr}: not a modelled transformer; known: {', '.join(sorted(known))}")
        profile = PROFILES.get(cfg.profile)
        if profile is None:
            raise ValueError(
                f"simulation.ageing.{xfmr}.profile: expected one of {', '.join(PROFILES)}, found {cfg.profile!r}"
            )
        out[xfmr] = Condition(
            xfmr,
            profile,
            cfg.operating_hours,
            cfg.age_months,
            cfg.fan_on_c,
            cfg.fan_off_c,
            cfg.onan_rise_factor,
            seed=seed + len(out),
        )
    return out


def top_oil_rise_step(
    rise_c: float | None,
    k: float,
    dt_s: float,
    *,
    rated_rise_c: float,
    loss_ratio: float,
    cooling_type: str,
    tau_min: float | None,
) -> float:
    """IEEE C57.91 clause 7 top-oil rise, first order, exact over `dt_s` at per-unit load `k`."""
    n = OIL_EXPONENT.get(cooling_type, 0.8)
    ultimate = rated_rise_c * ((k * k * loss_ratio + 1.0) / (loss_ratio + 1.0)) ** n
    if rise_c is None:
        return ultimate
    tau_s = (tau_min or 180.0) * 60.0
    return ultimate + (rise_c - ultimate) * math.exp(-dt_s / tau_s)


# --------------------------------------------------------------------------- months in seconds


@dataclass(frozen=True, slots=True)
class LoadComponent:
    peak_kw: float
    power_factor: float
    shape: tuple[float, ...]
    """24 hourly values, fraction of the peak."""


@dataclass(frozen=True, slots=True)
class Climate:
    mean_c: float = 25.0
    swing_c: float = 5.0
    seasonal_c: float = 3.0
    """Half the year's swing of the daily mean."""
    hot_spell_c: float = 6.0
    hot_spell_chance: float = 0.15
    """Chance that a week brings a hot spell of three to six days."""


def monitor_log(
    condition: Condition,
    loads: Sequence[LoadComponent],
    *,
    rated_kva: float,
    rated_rise_c: float,
    loss_ratio: float,
    cooling_type: str,
    tau_min: float | None,
    months: float,
    end_wall: float,
    utc_offset_h: float = 0.0,
    climate: Climate | None = None,
    seed: int = 0,
    point_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """Hourly rows of the transformer's monitor and DGA monitor for the `months` ending at
    `end_wall` (whole hours), advancing the condition by as much."""
    c = climate or Climate()
    rng = np.random.default_rng([seed, 7])
    prefix = point_prefix or condition.transformer
    hours = int(round(months * MONTH_S / HOUR_S))
    first = (math.floor(end_wall / HOUR_S) - hours) * HOUR_S
    shapes = np.array([comp.shape for comp in loads]) if loads else np.zeros((0, 24))
    peaks = np.array([comp.peak_kw for comp in loads])
    cycling = np.array([max(comp.shape) > min(comp.shape) for comp in loads], dtype=bool)
    tans = np.array([math.tan(math.acos(comp.power_factor)) for comp in loads])
    load_noise = rng.normal(0.0, 0.03, hours)
    gas_noise = rng.normal(0.0, 1.0, (hours, len(GASES)))
    spell = np.zeros(hours)
    for week in range(hours // 168 + 1):
        if rng.random() < c.hot_spell_chance:
            start = week * 168 + int(rng.integers(0, 96))
            spell[start : start + int(rng.integers(72, 145))] = c.hot_spell_c
    rows: list[dict[str, Any]] = []
    rise: float | None = None
    step_months = HOUR_S / MONTH_S
    start_hours = condition.operating_hours
    for h in range(hours):
        wall = first + h * HOUR_S
        local_h = (wall / HOUR_S + utc_offset_h) % 24.0
        day = int(((wall / HOUR_S + utc_offset_h) // 24 + 3) % 7)  # 1970-01-01 was a Thursday
        hour = int(local_h)
        factor = np.where(cycling, WEEKLY[day], 1.0) * (1.0 + load_noise[h])
        kw_parts = peaks * shapes[:, hour] * factor if len(loads) else np.zeros(0)
        kw = float(kw_parts.sum())
        kvar = float((kw_parts * tans).sum())
        k = math.hypot(kw, kvar) / rated_kva
        season = c.seasonal_c * math.sin(2.0 * math.pi * wall / (365.25 * 86400.0))
        ambient = ambient_temperature_c(c.mean_c, c.swing_c, local_h) + season + float(spell[h])
        rise = top_oil_rise_step(
            rise,
            k,
            HOUR_S,
            rated_rise_c=rated_rise_c,
            loss_ratio=loss_ratio,
            cooling_type=cooling_type,
            tau_min=tau_min,
        )
        oil = condition.top_oil_c(ambient, rise)
        values: dict[str, float] = {
            "load_kw": kw,
            "load_kvar": kvar,
            "primary_power_kw": kw / (condition.efficiency_pct() / 100.0),
            "top_oil_temp_c": oil,
            "ambient_temp_c": ambient,
            "fans_running": 1.0 if condition.fans_on else 0.0,
            "operating_hours": start_hours + h + 1,
        }
        for g, ppm in condition.gases_ppm(gas_noise[h]).items():
            values[f"{g}_ppm"] = ppm
        for name, value in values.items():
            rows.append(
                {
                    "point_id": f"{prefix}.{name}",
                    "bucket_start": wall,
                    "interval_s": HOUR_S,
                    "mean": round(value, 4),
                    "n": 60,
                }
            )
        condition.age_months += step_months
    condition.operating_hours = start_hours + hours
    return rows


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Rows to the CSV `stima history import` reads; how many were written."""
    n = 0
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["point_id", "bucket_start", "interval_s", "mean", "n"])
        for r in rows:
            writer.writerow([r["point_id"], f"{r['bucket_start']:.0f}", f"{r['interval_s']:.0f}", r["mean"], r["n"]])
            n += 1
    return n
