"""The weekly load forecast and the choice of the lowest-impact outage window."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from gateway.maintenance import window
from gateway.maintenance.window import ForecastError

UTC3 = 3.0
# Wednesday 2025-10-01 12:00 local (UTC+3)
NOW = dt.datetime(2025, 10, 1, 9, 0, tzinfo=dt.UTC).timestamp()


def weekly_load(weeks: int = 4, weekend: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Hourly kW: a daily cycle, lighter at weekends, lightest on Sunday night."""
    t = NOW - np.arange(weeks * 168, 0, -1) * 3600.0
    hod = np.array([window.hour_of_week(x, UTC3) % 24 for x in t])
    dow = np.array([window.hour_of_week(x, UTC3) // 24 for x in t])
    kw = 3000 + 2000 * np.sin(np.pi * np.clip(hod - 6, 0, 16) / 16)
    kw = kw * np.where(dow >= 5, weekend, 1.0) * np.where(dow == 6, 0.95, 1.0)
    return t, kw


def test_hour_of_week_is_local_and_monday_based() -> None:
    monday_midnight = dt.datetime(2025, 10, 6, 0, 0, tzinfo=dt.UTC).timestamp() - UTC3 * 3600
    assert window.hour_of_week(monday_midnight, UTC3) == 0
    assert window.hour_of_week(monday_midnight + 6 * 86400 + 2 * 3600, UTC3) == 6 * 24 + 2  # Sunday 02:00
    assert window.local_label(monday_midnight, UTC3) == "Monday 2025-10-06 00:00"


def test_the_forecast_is_the_heaviest_recent_week_at_each_hour() -> None:
    t, kw = weekly_load()
    kw = kw.copy()
    kw[-10] *= 1.5  # one unusually heavy hour last week
    f = window.weekly_forecast(t, kw, NOW, utc_offset_h=UTC3)
    assert f.at(float(t[-10]) + 7 * 86400) == pytest.approx(kw[-10])
    assert f.weeks == pytest.approx(4, abs=0.01) and f.filled_hours == 0
    with pytest.raises(ForecastError):
        window.weekly_forecast([], [], NOW)


def test_gaps_in_the_history_are_filled_from_the_same_hour_of_other_days() -> None:
    t, kw = weekly_load(weeks=1)
    keep = np.array([window.hour_of_week(x, UTC3) // 24 != 2 for x in t])  # no Wednesday
    f = window.weekly_forecast(t[keep], kw[keep], NOW, utc_offset_h=UTC3)
    assert f.filled_hours == 24
    assert f.profile_kw[2 * 24 + 13] == pytest.approx(max(f.profile_kw[d * 24 + 13] for d in (0, 1, 3, 4)))


def test_the_window_is_sunday_night_after_the_notice_and_before_the_deadline() -> None:
    t, kw = weekly_load()
    f = window.weekly_forecast(t, kw, NOW, utc_offset_h=UTC3)
    w = window.choose_window(f, NOW, duration_h=6, notice_h=72, lead_days=30)
    assert w.label.startswith("Sunday 2025-10-05 00:00 to 06:00 (UTC+3)")  # the first Sunday night past the notice
    assert w.start >= NOW + 72 * 3600
    assert w.end <= NOW + 30 * 86400
    assert w.peak_kw < w.median_peak_kw
    text = " ".join(w.reasons)
    assert "72 h notice" in text and "recommended deadline" in text and f"{w.candidates} candidate" in text


def test_no_candidate_beats_the_chosen_window() -> None:
    t, kw = weekly_load(weekend=0.9)
    f = window.weekly_forecast(t, kw, NOW, utc_offset_h=UTC3)
    w = window.choose_window(f, NOW, duration_h=6, notice_h=48, lead_days=14)
    starts = np.arange(NOW + 48 * 3600, NOW + 14 * 86400 - 6 * 3600 + 1, 3600.0)
    assert min(f.over(float(x), 6) for x in starts) == (w.peak_kw, w.energy_kwh)


def test_a_lead_time_shorter_than_the_notice_takes_the_earliest_window_and_says_so() -> None:
    t, kw = weekly_load()
    f = window.weekly_forecast(t, kw, NOW, utc_offset_h=UTC3)
    w = window.choose_window(f, NOW, duration_h=6, notice_h=72, lead_days=2)
    assert w.candidates == 1
    assert w.start == pytest.approx(NOW + 72 * 3600)
    assert "no window inside" in w.reasons[0]
    with pytest.raises(ValueError):
        window.choose_window(f, NOW, duration_h=0, notice_h=72, lead_days=2)
