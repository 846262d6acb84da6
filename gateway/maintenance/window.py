"""The outage window: a weekly load forecast from the history, and the lowest-impact slot.

**Forecast.** For each hour of the week (local time, Monday 00:00 = hour 0), the highest of the
hourly mean loads seen at that hour over the last `weeks` weeks: a conservative forecast (the
plans must hold on the heaviest recent week, not the average one). An hour of the week with no
history takes the highest load seen at the same hour of the day; a forecast with no history at
all is refused.

**Window.** Every start on the hour from the earliest allowed (the longest customer notice
ahead, so critical customers hear 72 h before) to the latest that still ends within the
recommended lead time; each candidate's impact is its forecast peak load (what backup supply
must carry, and what is lost if it cannot), then its energy (what customers would miss). The
least is chosen, earliest first on a tie, with the reasons spelt out.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HOUR_S = 3600.0
WEEK_H = 168
_EPOCH_WEEKDAY = 3
"""1970-01-01 was a Thursday (Monday = 0)."""
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def hour_of_week(wall: float, utc_offset_h: float) -> int:
    hours = math.floor((wall + utc_offset_h * HOUR_S) / HOUR_S)
    return int((hours + _EPOCH_WEEKDAY * 24) % WEEK_H)


def local_label(wall: float, utc_offset_h: float) -> str:
    """`Sunday 2025-10-26 02:00` in the site's local time."""
    local = dt.datetime.fromtimestamp(wall + utc_offset_h * HOUR_S, tz=dt.UTC)
    return f"{DAYS[local.weekday()]} {local:%Y-%m-%d %H:%M}"


class ForecastError(ValueError):
    """No history to forecast from."""


@dataclass(frozen=True, slots=True)
class LoadForecast:
    profile_kw: tuple[float, ...]
    """Forecast load for each hour of the week (168 values, local time, Monday 00:00 first)."""
    utc_offset_h: float
    weeks: float
    """How many weeks of history it was made from."""
    filled_hours: int = 0
    """Hours of the week without history, filled from the same hour of other days."""

    def at(self, wall: float) -> float:
        return self.profile_kw[hour_of_week(wall, self.utc_offset_h)]

    def over(self, start: float, hours: int) -> tuple[float, float]:
        """(peak kW, energy kWh) forecast for `hours` from `start`."""
        values = [self.at(start + k * HOUR_S) for k in range(hours)]
        return max(values), sum(values)

    @property
    def weekly_peak_kw(self) -> float:
        return max(self.profile_kw)


def weekly_forecast(
    times: Sequence[float], values_kw: Sequence[float], now: float, *, utc_offset_h: float = 0.0, weeks: int = 4
) -> LoadForecast:
    """The conservative hour-of-week profile of the last `weeks` weeks of hourly loads."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values_kw, dtype=np.float64)
    keep = (t > now - weeks * WEEK_H * HOUR_S) & (t <= now) & np.isfinite(v)
    t, v = t[keep], v[keep]
    if not len(t):
        raise ForecastError("no load history to forecast the outage window from")
    how = np.asarray([hour_of_week(float(x), utc_offset_h) for x in t], dtype=np.int64)
    profile = np.full(WEEK_H, np.nan)
    for h in range(WEEK_H):
        sel = v[how == h]
        if len(sel):
            profile[h] = sel.max()
    filled = int(np.isnan(profile).sum())
    if filled:
        hod = how % 24
        for gap in np.flatnonzero(np.isnan(profile)).tolist():
            sel = v[hod == gap % 24]
            profile[gap] = sel.max() if len(sel) else float(v.max())
    span_weeks = (float(t[-1]) - float(t[0])) / (WEEK_H * HOUR_S)
    return LoadForecast(tuple(float(x) for x in profile), utc_offset_h, round(span_weeks, 2), filled)


@dataclass(frozen=True, slots=True)
class WindowChoice:
    start: float
    end: float
    duration_h: int
    peak_kw: float
    energy_kwh: float
    candidates: int
    median_peak_kw: float
    reasons: tuple[str, ...] = field(default_factory=tuple)
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "duration_h": self.duration_h,
            "label": self.label,
            "forecast_peak_kw": round(self.peak_kw, 1),
            "forecast_energy_kwh": round(self.energy_kwh, 1),
            "candidates": self.candidates,
            "median_candidate_peak_kw": round(self.median_peak_kw, 1),
            "reasons": list(self.reasons),
        }


def choose_window(
    forecast: LoadForecast,
    now: float,
    *,
    duration_h: int,
    notice_h: float,
    lead_days: float,
    preparation_h: float = 0.0,
) -> WindowChoice:
    """The lowest-impact `duration_h` slot that starts after the notice and ends within the lead time."""
    if duration_h < 1 or duration_h > WEEK_H:
        raise ValueError(f"the outage window lasts 1..{WEEK_H} hours, found {duration_h}")
    earliest = math.ceil((now + max(notice_h, preparation_h) * HOUR_S) / HOUR_S) * HOUR_S
    deadline = now + lead_days * 86400.0
    latest = deadline - duration_h * HOUR_S
    reasons: list[str] = []
    if latest < earliest:
        latest = earliest
        reasons.append(
            f"the {notice_h:g} h customer notice leaves no window inside the recommended "
            f"{lead_days:g} days: the earliest possible window is taken"
        )
    starts = np.arange(earliest, latest + 1.0, HOUR_S)
    scored = [(*forecast.over(float(s), duration_h), float(s)) for s in starts]
    peak, energy, start = min(scored, key=lambda x: (round(x[0], 6), round(x[1], 6), x[2]))
    median_peak = float(np.median([p for p, _, _ in scored]))
    off = forecast.utc_offset_h
    label = (
        f"{local_label(start, off)} to {local_label(start + duration_h * HOUR_S, off)[-5:]} "
        f"(UTC{'+' if off >= 0 else '-'}{abs(off):g})"
    )
    reasons += [
        f"lowest forecast load of {len(scored)} candidate {duration_h} h windows: peak {peak:.0f} kW, "
        f"{energy:.0f} kWh ({100 * peak / forecast.weekly_peak_kw:.0f} % of the weekly peak "
        f"{forecast.weekly_peak_kw:.0f} kW; the median window peaks at {median_peak:.0f} kW)",
        f"starts {(start - now) / HOUR_S:.0f} h from now, after the {notice_h:g} h notice customers need",
        f"ends {(deadline - start - duration_h * HOUR_S) / 86400.0:.1f} days before the recommended deadline "
        f"({lead_days:g} days)",
        f"forecast from {forecast.weeks:g} weeks of load history, the heaviest week at each hour",
    ]
    return WindowChoice(
        start=start,
        end=start + duration_h * HOUR_S,
        duration_h=duration_h,
        peak_kw=peak,
        energy_kwh=energy,
        candidates=len(scored),
        median_peak_kw=median_peak,
        reasons=tuple(reasons),
        label=label,
    )
