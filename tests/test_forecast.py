"""The load forecast: a ramp, a daily shape, both, a short history; the crossing of a limit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agents.forecast import ForecastSettings, forecast

DAY = 86_400.0
T0 = 1_767_225_600.0  # a midnight, UTC


def shape(t: float) -> float:
    """A distribution feeder's day: low at night, evening peak at 19:00 (kW)."""
    hour = (t % DAY) / 3600.0
    return (
        20_000.0 + 6_000.0 * math.exp(-(((hour - 19.0) / 2.5) ** 2)) - 3_000.0 * math.exp(-(((hour - 4.0) / 3.0) ** 2))
    )


def history(days: float, now: float, f, step: float = 60.0) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    n = int(days * DAY / step)
    return [(now - k * step, f(now - k * step)) for k in range(n, 0, -1)]


def test_a_ramp_alone_is_carried_forward_and_crosses_the_limit_when_it_should() -> None:
    now = T0 + 10 * 3600.0
    ramp = lambda t: 28_500.0 + 500.0 * (t - now) / 3600.0  # noqa: E731  0.5 MW/h, 28.5 MW now
    f = forecast(history(0.2, now, ramp), now, limit_kw=30_000.0, settings=ForecastSettings(trend_fade_s=0.0))
    assert "too short" in f.method
    assert f.slope_kw_per_h == pytest.approx(500.0, rel=1e-6)
    assert f.crossing_s == pytest.approx(3 * 3600.0, abs=300.0)  # 1.5 MW at 0.5 MW/h, 5-minute steps


def test_the_daily_shape_is_learnt_and_forecast_without_a_false_trend() -> None:
    now = T0 + 7 * DAY + 15 * 3600.0  # 15:00 on day eight
    f = forecast(history(7, now, shape), now, limit_kw=30_000.0)
    assert "daily shape" in f.method
    for t, v in zip(f.times, f.values_kw, strict=True):
        assert v == pytest.approx(shape(t), rel=0.02)
    assert f.crossing_s is None
    assert abs((f.peak_at % DAY) / 3600.0 - 19.0) < 0.5


def test_shape_and_ramp_together_cross_at_the_evening_peak() -> None:
    now = T0 + 7 * DAY + 16 * 3600.0
    start = now - 3 * 3600.0  # a heat wave since 13:00: +0.5 MW/h on top of the usual day
    hot = lambda t: shape(t) + max(0.0, t - start) / 3600.0 * 500.0 + (2_000.0 if t >= start else 0.0)  # noqa: E731
    f = forecast(history(7, now, hot), now, limit_kw=30_000.0)
    truth = next(t for t in (now + k * 60.0 for k in range(1, 240)) if hot(t) > 30_000.0)
    assert f.crossing_s is not None and abs(now + f.crossing_s - truth) < 1800.0
    assert f.slope_kw_per_h == pytest.approx(500.0, rel=0.2)


def test_no_history_is_an_error_and_a_present_overload_crosses_now() -> None:
    with pytest.raises(ValueError):
        forecast([], T0)
    f = forecast([(T0 - 60, 31_000.0), (T0, 31_000.0)], T0, limit_kw=30_000.0)
    assert f.crossing_s == 0.0


@settings(max_examples=80, deadline=None)
@given(level=st.floats(1_000.0, 40_000.0), slope=st.floats(-2_000.0, 2_000.0))
def test_a_steady_line_is_forecast_as_that_line(level: float, slope: float) -> None:
    now = T0 + 12 * 3600.0
    line = lambda t: level + slope * (t - now) / 3600.0  # noqa: E731
    f = forecast(history(0.1, now, line), now, settings=ForecastSettings(trend_fade_s=0.0, horizon_s=3600.0))
    for t, v in zip(f.times, f.values_kw, strict=True):
        assert v == pytest.approx(line(t), rel=1e-6, abs=1e-3)


def test_a_switching_step_is_not_carried_forward_as_a_trend() -> None:
    """A part of the load transferred away (a 2.4 MW step down) during a 0.5 MW/h ramp: the trend
    stays the ramp's, and once the step has lasted a quarter of the trend window the level is the
    new one; a least-squares line would have forecast a fall of several MW an hour."""
    now = T0 + 10 * 3600.0

    def load(t: float) -> float:
        return 28_500.0 + 500.0 * (t - now) / 3600.0 - (2_400.0 if t > now - 40 * 60.0 else 0.0)

    f = forecast(history(0.2, now, load), now, limit_kw=30_000.0, settings=ForecastSettings(trend_fade_s=0.0))
    assert f.slope_kw_per_h == pytest.approx(500.0, rel=0.02)
    assert f.level_kw == pytest.approx(load(now), abs=30.0)
    assert f.values_kw[0] == pytest.approx(load(now) + 500.0 * 300.0 / 3600.0, abs=40.0)


@settings(max_examples=60, deadline=None)
@given(step_kw=st.floats(-5_000.0, 5_000.0), at_min=st.floats(1.0, 30.0), noise_seed=st.integers(0, 1000))
def test_one_step_in_the_latest_quarter_window_moves_the_trend_less_than_a_least_squares_line(
    step_kw: float, at_min: float, noise_seed: int
) -> None:
    """A single step in the last quarter of a two-hour trend window, on a noisy 0.5 MW/h ramp: the
    trend moves by at most half what a least-squares line moves (plus what the noise allows).
    Further back, a step biases any trend fitted over the window until it leaves the window."""
    import random

    import numpy as np

    rng = random.Random(noise_seed)
    now = T0 + 10 * 3600.0
    pts = [
        (now - k * 60.0, 28_500.0 - 500.0 * k / 60.0 + rng.gauss(0.0, 100.0) + (step_kw if k < at_min else 0.0))
        for k in range(120, -1, -1)
    ]
    f = forecast(pts, now, settings=ForecastSettings(trend_window_s=7200.0, trend_fade_s=0.0))
    lsq = float(np.polyfit([t - now for t, _ in pts], [v for _, v in pts], 1)[0]) * 3600.0
    assert abs(f.slope_kw_per_h - 500.0) <= 0.5 * abs(lsq - 500.0) + 150.0


def test_a_window_days_ahead_is_forecast_from_the_daily_shape_at_its_times_of_day() -> None:
    now = T0 + 7 * DAY + 15 * 3600.0
    f = forecast(history(7, now, shape), now)
    night = f.peak_over(T0 + 10 * DAY + 1 * 3600.0, T0 + 10 * DAY + 6 * 3600.0)
    evening = f.peak_over(T0 + 10 * DAY + 17 * 3600.0, T0 + 10 * DAY + 21 * 3600.0)
    assert night is not None and evening is not None
    truth_night = max(shape(T0 + 3600.0 + k * 60.0) for k in range(301))
    assert night == pytest.approx(truth_night, rel=0.02)
    assert evening == pytest.approx(26_000.0, rel=0.02)
    short = forecast(history(0.2, now, shape), now)
    assert short.peak_over(now + DAY, now + DAY + 3600.0) is None  # no daily shape: nothing to say
