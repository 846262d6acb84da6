"""Load forecast from the point history: a daily shape, today's level, and the trend.

The substation's load is forecast from its downsampled history (gateway/history.py: one mean
per interval). The method, chosen because it is explainable and handles both what the issue
calls a ramp and what every distribution load has, a daily shape:

1. **Daily shape.** With at least `MIN_DAYS_FOR_SHAPE` days of history, the expected load at a
   time of day is the mean of the history at that time of day (slots of `slot_s`, in local time
   by `utc_offset_h`) over the previous days (up to `days`). Without that much history the shape
   is flat (the method falls back to the trend alone).
2. **Trend.** The slope of the residuals (actual − shape) over the last `trend_window_s` is the
   Theil–Sen estimate (the median of the slopes between pairs of points), so a recent step in the
   load (a feeder switched away, a transfer, CVR taking effect) is not carried forward as a trend
   the way a least-squares line would carry it; the ramp is. (Once a step is further back than
   about a quarter of the window it biases the trend, as it would any fit over the window, until it
   leaves the window.) The trend is damped to zero over
   `trend_fade_s` so a short-lived slope is not extrapolated for a whole day.
3. **Level.** Where the residuals stand now: the median of residual − slope × age over the last
   `level_fraction` of the trend window (a step is in the level once it has lasted that long).

    forecast(t + h) = shape(t + h) + level + slope · fade(h) · h

The forecast says when it first exceeds a limit (`crossing_s`) and its peak over the horizon.
Sans-IO and pure: history in, forecast out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SLOT_S = 900.0
MIN_DAYS_FOR_SHAPE = 1.0
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class ForecastSettings:
    horizon_s: float = 4 * 3600.0
    step_s: float = 300.0
    slot_s: float = SLOT_S
    days: int = 7
    level_fraction: float = 0.25
    trend_window_s: float = 2 * 3600.0
    trend_fade_s: float = 6 * 3600.0
    utc_offset_h: float = 0.0


@dataclass(frozen=True, slots=True)
class Forecast:
    made_at: float
    """Wall time (s) the forecast starts from."""
    times: tuple[float, ...]
    values_kw: tuple[float, ...]
    method: str
    level_kw: float
    slope_kw_per_h: float
    limit_kw: float | None
    crossing_s: float | None
    """Seconds from `made_at` until the forecast first exceeds `limit_kw` (None: not within the horizon)."""
    peak_kw: float
    peak_at: float
    daily_kw: tuple[float, ...] = ()
    """The daily shape, one expected load per slot of the local day (empty: too little history)."""
    slot_s: float = SLOT_S
    utc_offset_h: float = 0.0

    def peak_over(self, start: float, end: float) -> float | None:
        """The expected peak (kW) in a window beyond the horizon: the daily shape at the window's
        times of day plus today's level, without the trend (None without a daily shape)."""
        if not self.daily_kw or not end > start:
            return None
        n = len(self.daily_kw)
        times = [start + k * self.slot_s for k in range(int((end - start) // self.slot_s) + 1)]
        slots = {int(((t + self.utc_offset_h * 3600.0) % DAY_S) // self.slot_s) % n for t in times}
        return max(self.daily_kw[k] for k in slots) + self.level_kw

    def to_dict(self) -> dict[str, object]:
        return {
            "made_at": self.made_at,
            "method": self.method,
            "level_kw": round(self.level_kw, 1),
            "slope_kw_per_h": round(self.slope_kw_per_h, 1),
            "limit_kw": self.limit_kw,
            "crossing_s": None if self.crossing_s is None else round(self.crossing_s, 1),
            "crossing_at": None if self.crossing_s is None else self.made_at + self.crossing_s,
            "peak_kw": round(self.peak_kw, 1),
            "peak_at": self.peak_at,
            "times": list(self.times),
            "values_kw": [round(v, 1) for v in self.values_kw],
        }


def _slot(t: float, s: ForecastSettings) -> int:
    local = t + s.utc_offset_h * 3600.0
    return int((local % DAY_S) // s.slot_s)


MAX_TREND_POINTS = 240
"""Points the Theil–Sen slope is taken over (evenly thinned beyond): at most ~29,000 pairs."""


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _fit_line(xs: Sequence[float], ys: Sequence[float], level_fraction: float = 0.25) -> tuple[float, float]:
    """(level at x = 0, slope): the Theil–Sen slope, and the median of y − slope·x over the points
    of the last `level_fraction` of the x span (x ≤ 0 is the past, 0 is now). Slope 0 for fewer
    than two distinct x."""
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    if n > MAX_TREND_POINTS:
        keep = [round(k * (n - 1) / (MAX_TREND_POINTS - 1)) for k in range(MAX_TREND_POINTS)]
        xs, ys = [xs[k] for k in keep], [ys[k] for k in keep]
        n = len(xs)
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(n) for j in range(i + 1, n) if xs[j] != xs[i]]
    slope = _median(slopes) if slopes else 0.0
    first, last = min(xs), max(xs)
    cut = last - level_fraction * (last - first)
    recent = [y - slope * x for x, y in zip(xs, ys, strict=True) if x >= cut]
    return _median(recent), slope


def forecast(
    history: Sequence[tuple[float, float]],
    now: float,
    *,
    limit_kw: float | None = None,
    settings: ForecastSettings | None = None,
) -> Forecast:
    """Forecast from `history` ((wall time, kW) means, any order, NaN and non-finite dropped)."""
    s = settings or ForecastSettings()
    points = sorted((t, v) for t, v in history if math.isfinite(t) and math.isfinite(v) and t <= now)
    if not points:
        raise ValueError("no history to forecast from")
    span = now - points[0][0]
    use_shape = span >= MIN_DAYS_FOR_SHAPE * DAY_S
    shape: dict[int, float] = {}
    if use_shape:
        sums: dict[int, list[float]] = {}
        oldest = now - s.days * DAY_S
        today = now - (now + s.utc_offset_h * 3600.0) % DAY_S  # local midnight, as wall time
        for t, v in points:
            if oldest <= t < today:
                sums.setdefault(_slot(t, s), []).append(v)
        shape = {k: sum(v) / len(v) for k, v in sums.items()}
        use_shape = len(shape) >= int(DAY_S / s.slot_s) // 2

    def expected(t: float) -> float:
        if not use_shape:
            return 0.0
        k = _slot(t, s)
        if k in shape:
            return shape[k]
        nearest = min(shape, key=lambda j: min(abs(j - k), len(shape) - abs(j - k)))
        return shape[nearest]

    recent = [(t, v - expected(t)) for t, v in points if t >= now - s.trend_window_s]
    if not recent:
        recent = [(points[-1][0], points[-1][1] - expected(points[-1][0]))]
    trend = [(t - now, r) for t, r in recent if t >= now - s.trend_window_s]
    intercept, slope = _fit_line([x for x, _ in trend], [y for _, y in trend], s.level_fraction)
    if use_shape:
        # the level is where the residual line stands now (a ramp is not averaged away)
        level = intercept
        method = (
            f"daily shape over {min(s.days, int(span // DAY_S))} day(s), level and trend of the last "
            f"{s.trend_window_s / 3600.0:g} h"
        )
    else:
        level = intercept
        method = f"trend of the last {s.trend_window_s / 3600.0:g} h (history too short for a daily shape)"
    times, values = [], []
    steps = max(1, int(s.horizon_s // s.step_s))
    for k in range(1, steps + 1):
        h = k * s.step_s
        fade = max(0.0, 1.0 - h / s.trend_fade_s) if s.trend_fade_s > 0 else 1.0
        times.append(now + h)
        values.append(expected(now + h) + level + slope * h * fade)
    crossing = None
    if limit_kw is not None:
        for t, v in zip(times, values, strict=True):
            if v > limit_kw:
                crossing = t - now
                break
        current = points[-1][1]
        if current > limit_kw:
            crossing = 0.0
    peak_i = max(range(len(values)), key=lambda i: values[i])
    midnight = now - (now + s.utc_offset_h * 3600.0) % DAY_S
    daily = tuple(expected(midnight + (k + 0.5) * s.slot_s) for k in range(int(DAY_S // s.slot_s))) if use_shape else ()
    return Forecast(
        made_at=now,
        times=tuple(times),
        values_kw=tuple(values),
        method=method,
        level_kw=level,
        slope_kw_per_h=slope * 3600.0,
        limit_kw=limit_kw,
        crossing_s=crossing,
        peak_kw=values[peak_i],
        peak_at=times[peak_i],
        daily_kw=daily,
        slot_s=s.slot_s,
        utc_offset_h=s.utc_offset_h,
    )
