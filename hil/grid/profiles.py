"""Daily load shapes, clear-sky irradiance, ambient temperature and seeded smooth noise.

All functions of simulated time only, so a scenario replays identically from its seed
whatever the step size: noise is drawn per (seed, stream, period) and interpolated linearly
between periods, never from a generator advanced call by call.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from hil.grid.settings import IrradianceSettings, LoadProfileName

# Fraction of daily peak demand, hours 0..23. Shapes after typical utility load-research
# curves: residential evening peak, commercial office-hours plateau, industrial two-shift.
DAILY_SHAPES: dict[LoadProfileName, tuple[float, ...]] = {
    LoadProfileName.RESIDENTIAL: (
        0.38,
        0.33,
        0.30,
        0.29,
        0.30,
        0.36,
        0.50,
        0.62,
        0.58,
        0.52,
        0.50,
        0.50,
        0.52,
        0.50,
        0.49,
        0.52,
        0.60,
        0.78,
        0.94,
        1.00,
        0.96,
        0.82,
        0.63,
        0.47,
    ),
    LoadProfileName.COMMERCIAL: (
        0.30,
        0.28,
        0.27,
        0.27,
        0.28,
        0.31,
        0.40,
        0.60,
        0.85,
        0.95,
        1.00,
        1.00,
        0.97,
        1.00,
        1.00,
        0.97,
        0.90,
        0.75,
        0.56,
        0.46,
        0.40,
        0.35,
        0.32,
        0.30,
    ),
    LoadProfileName.INDUSTRIAL: (
        0.60,
        0.58,
        0.58,
        0.58,
        0.60,
        0.66,
        0.80,
        0.95,
        1.00,
        1.00,
        1.00,
        0.98,
        0.90,
        0.98,
        1.00,
        1.00,
        0.95,
        0.86,
        0.76,
        0.70,
        0.68,
        0.65,
        0.62,
        0.60,
    ),
    LoadProfileName.FLAT: (1.0,) * 24,
}


def hour_of_day(now_s: float, start_hour: float) -> float:
    return (start_hour + now_s / 3600.0) % 24.0


def shape_matrix(shapes: list[tuple[float, ...]]) -> npt.NDArray[np.float64]:
    """Stack 24-value shapes with hour 0 repeated at the end, for cyclic interpolation."""
    m = np.array([list(s) + [s[0]] for s in shapes], dtype=np.float64)
    return m.reshape(len(shapes), 25)


def shape_at(matrix: npt.NDArray[np.float64], hour: float) -> npt.NDArray[np.float64]:
    """Every shape's value at `hour` (linear between hourly points)."""
    h = int(hour)
    frac = hour - h
    return matrix[:, h] * (1.0 - frac) + matrix[:, h + 1] * frac


def clear_sky_irradiance_w_m2(settings: IrradianceSettings, hour: float) -> float:
    if settings.hourly is not None:
        values = settings.hourly
        h = int(hour) % 24
        frac = hour - int(hour)
        return max(0.0, values[h] * (1 - frac) + values[(h + 1) % 24] * frac)
    if not settings.sunrise_h < hour < settings.sunset_h:
        return 0.0
    x = (hour - settings.sunrise_h) / (settings.sunset_h - settings.sunrise_h)
    return settings.peak_w_m2 * math.sin(math.pi * x) ** 1.5


def ambient_temperature_c(mean_c: float, swing_c: float, hour: float) -> float:
    """Daily sinusoid: coolest at 05:00, warmest at 17:00."""
    return mean_c - swing_c * math.cos(2 * math.pi * (hour - 5.0) / 24.0)


class SmoothNoise:
    """Standard-normal noise per stream, piecewise linear in time, reproducible from the seed."""

    def __init__(self, seed: int, stream: int, size: int, period_s: float) -> None:
        self._seed = seed
        self._stream = stream
        self._size = size
        self._period_s = period_s
        self._cache: dict[int, npt.NDArray[np.float64]] = {}

    def _draw(self, bucket: int) -> npt.NDArray[np.float64]:
        values = self._cache.get(bucket)
        if values is None:
            rng = np.random.default_rng([self._seed, self._stream, bucket])
            values = rng.standard_normal(self._size)
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[bucket] = values
        return values

    def at(self, now_s: float) -> npt.NDArray[np.float64]:
        if self._size == 0:
            return np.zeros(0)
        position = max(now_s, 0.0) / self._period_s
        bucket = int(position)
        frac = position - bucket
        return self._draw(bucket) * (1.0 - frac) + self._draw(bucket + 1) * frac
