"""Health inputs from months of hourly history: trend at comparable load with its confidence,
efficiency from measured losses, fan duty, operating hours, C57.91 loss of life and DGA."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from gateway.agents.physics import aging_acceleration_factor, ultimate_top_oil_rise_c
from gateway.maintenance import health
from gateway.maintenance.dga import DuvalZone, Gas
from gateway.maintenance.health import HealthSettings, TransformerData

DAY = 86400.0
NOW = 1_790_000_000.0 - (1_790_000_000.0 % 3600)
DATA = TransformerData(
    rated_kva=6000.0,
    cooling_type="ONAF",
    loss_ratio=4.5,
    maintenance_interval_h=90_000,
    operating_hours_at_commissioning=80_000,
    normal_top_oil_max_c=75.0,
    age_years=18,
)


def rows(times: np.ndarray, values: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"bucket_start": float(t), "mean": float(v), "n": 60, "good_fraction": 1.0, "interval_s": 3600.0}
        for t, v in zip(times, values, strict=True)
    ]


def history(
    days: int = 180,
    drift_c_per_month: float = 0.0,
    eff_from: float = 98.2,
    eff_to: float = 98.2,
    duty_from: float = 0.4,
    duty_to: float = 0.4,
    seed: int = 1,
    gases: dict[Gas, tuple[float, float]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Hourly history of a 6 MVA unit: a daily load cycle, ambient with hot spells, noise."""
    rng = np.random.default_rng(seed)
    t = NOW - np.arange(days * 24, 0, -1) * 3600.0
    hour = (t / 3600.0) % 24
    frac = (t - t[0]) / (t[-1] - t[0])
    k = 0.55 + 0.3 * np.sin(2 * np.pi * (hour - 13) / 24) ** 2 + rng.normal(0, 0.02, len(t))
    ambient = 22 + 6 * np.sin(2 * np.pi * (hour - 11) / 24) + 5 * (np.sin(2 * np.pi * t / (23 * DAY)) > 0.8)
    rise = np.array([ultimate_top_oil_rise_c(float(x), 50.0, 4.5, 0.9) for x in k])
    drift = drift_c_per_month * (t - t[0]) / (30.44 * DAY)
    oil = ambient + rise + drift + rng.normal(0, 0.4, len(t))
    kw = k * 6000 * 0.95
    kvar = k * 6000 * math.sqrt(1 - 0.95**2)
    eff = (eff_from + (eff_to - eff_from) * frac) / 100.0
    fans = (rng.random(len(t)) < duty_from + (duty_to - duty_from) * frac).astype(float)
    out = {
        "load_kw": rows(t, kw),
        "load_kvar": rows(t, kvar),
        "top_oil_temp_c": rows(t, oil),
        "ambient_temp_c": rows(t, ambient),
        "primary_power_kw": rows(t, kw / eff),
        "fans_running": rows(t, fans),
        "operating_hours": rows(t, 87_500 - (NOW - t) / 3600.0),
    }
    for gas, (start, end) in (gases or {}).items():
        out[gas.point_name] = rows(t, start + (end - start) * frac + rng.normal(0, 0.02 * max(end, 1), len(t)))
    return out


def test_a_drift_of_2_degrees_a_month_is_found_with_its_confidence() -> None:
    h = health.evaluate("X", history(drift_c_per_month=2.0), DATA, NOW)
    trend = h.top_oil
    assert trend is not None and trend.detected
    assert trend.slope_c_per_month == pytest.approx(2.0, abs=0.1)
    assert 1.5 < trend.low_c_per_month < trend.slope_c_per_month
    assert trend.days >= 150
    assert 0 < trend.ci95_c_per_month < 0.3


@pytest.mark.parametrize("seed", range(5))
def test_a_healthy_unit_through_hot_spells_shows_no_trend(seed: int) -> None:
    h = health.evaluate("X", history(seed=seed), DATA, NOW)
    assert h.top_oil is not None and not h.top_oil.detected
    assert abs(h.top_oil.slope_c_per_month) < 0.3


def test_the_trend_compares_like_with_like_a_load_that_grows_is_no_trend() -> None:
    """Load growing 20 % over the window raises the oil, but at comparable load nothing changed."""
    rs = history()
    factor = {r["bucket_start"]: 1 + 0.2 * i / len(rs["load_kw"]) for i, r in enumerate(rs["load_kw"])}
    for name in ("load_kw", "load_kvar"):
        for r in rs[name]:
            r["mean"] *= factor[r["bucket_start"]]
    for r in rs["top_oil_temp_c"]:
        k = 0.7 * factor[r["bucket_start"]]
        r["mean"] += ultimate_top_oil_rise_c(k, 50, 4.5, 0.9) - ultimate_top_oil_rise_c(0.7, 50, 4.5, 0.9)
    h = health.evaluate("X", rs, DATA, NOW)
    assert h.top_oil is not None and not h.top_oil.detected


def test_efficiency_from_measured_losses_and_fan_duty() -> None:
    h = health.evaluate("X", history(eff_from=98.2, eff_to=97.5, duty_from=0.35, duty_to=1.0), DATA, NOW)
    assert h.efficiency is not None and h.cooling is not None
    assert h.efficiency.baseline_pct == pytest.approx(98.14, abs=0.1)
    assert h.efficiency.recent_pct == pytest.approx(97.53, abs=0.1)
    assert h.efficiency.drop_pct_points == pytest.approx(0.6, abs=0.15)
    assert h.cooling.baseline == pytest.approx(0.4, abs=0.08)
    assert h.cooling.recent > 0.95


def test_operating_hours_from_the_counter_and_loss_of_life_from_the_hot_spot() -> None:
    h = health.evaluate("X", history(days=60), DATA, NOW)
    assert h.operating_hours == pytest.approx(87_500 - 1, abs=1)
    assert h.maintenance_interval_h == 90_000
    assert h.loss_of_life_percent is not None and 0 < h.loss_of_life_percent < 1


def test_the_hour_counter_is_read_at_the_end_of_its_last_bucket_not_averaged_over_it() -> None:
    """The live hour's bucket holds the counter's readings so far: after the monitor's log is
    imported (a jump of months), its mean lies between the old and the new reading."""
    h = history(days=60)
    last = dict(h["operating_hours"][-1])
    last.update(mean=85_000.0, min=83_000.0, max=87_499.0)
    h["operating_hours"] = [*h["operating_hours"][:-1], last]
    assert health.evaluate("X", h, DATA, NOW).operating_hours == pytest.approx(87_499.0)
    imported = [{k: v for k, v in r.items() if k not in ("min", "max")} for r in history(days=60)["operating_hours"]]
    assert health.evaluate("X", {**h, "operating_hours": imported}, DATA, NOW).operating_hours == pytest.approx(
        87_500 - 1, abs=1
    )  # rows with a mean only (an imported log) read as before
    # live readings from before the log was imported, in a later bucket than the log's last
    stale = [*imported[:-1], {**imported[-1], "mean": 83_000.0, "max": 83_000.0}]
    assert health.evaluate("X", {**h, "operating_hours": stale}, DATA, NOW).operating_hours == pytest.approx(
        87_500 - 2, abs=1
    )


def test_loss_of_life_is_the_sum_of_equivalent_hours() -> None:
    """A flat day at the rated point (hot spot 110 °C: F_AA = 1) ages the paper 24 equivalent hours."""
    t = NOW - np.arange(24, 0, -1) * 3600.0
    data = TransformerData(rated_kva=1000.0, rated_hot_spot_rise_c=25.0, prior_loss_of_life_percent=10.0)
    rs = {"load_kw": rows(t, np.full(24, 1000.0)), "top_oil_temp_c": rows(t, np.full(24, 85.0))}
    h = health.evaluate("X", rs, data, NOW)
    assert aging_acceleration_factor(110.0) == pytest.approx(1.0)
    assert h.loss_of_life_percent == pytest.approx(10.0 + 100 * 24 / 180_000, rel=1e-6)


def test_dga_from_the_monitor_history_rates_and_duval() -> None:
    gases = {
        Gas.H2: (60, 160),
        Gas.CH4: (20, 45),
        Gas.C2H6: (10, 20),
        Gas.C2H4: (8, 35),
        Gas.C2H2: (0.3, 14),
        Gas.CO: (300, 420),
        Gas.CO2: (2500, 3400),
    }
    h = health.evaluate("X", history(gases=gases), DATA, NOW)
    assert h.dga is not None and h.dga.status == 3
    c2h2 = h.dga.get(Gas.C2H2)
    assert c2h2 is not None and c2h2.ppm == pytest.approx(14, abs=0.5)
    assert c2h2.rate_ppm_per_year == pytest.approx(13.7 * 365.25 / 180, rel=0.1)
    assert h.dga.duval is not None and h.dga.duval.zone is DuvalZone.D2
    steady = {g: (v[0], v[0]) for g, v in gases.items()}
    assert health.evaluate("X", history(gases=steady), DATA, NOW).dga.status == 1  # type: ignore[union-attr]


def test_missing_points_are_named_not_guessed() -> None:
    h = health.evaluate("X", {"load_kw": history(days=30)["load_kw"]}, DATA, NOW)
    assert h.top_oil is None and h.efficiency is None and h.cooling is None and h.dga is None
    text = " ".join(h.notes)
    for word in ("top_oil_temp_c", "primary_power_kw", "fans_running", "dissolved-gas"):
        assert word in text
    short = health.evaluate("X", history(days=5), DATA, NOW, HealthSettings(min_trend_days=14))
    assert short.top_oil is None and any("days with comparable load" in n for n in short.notes)


def test_linear_fit_known_answer_and_t_quantiles() -> None:
    fit = health.linear_fit([0, 1, 2, 3, 4], [1.0, 3.1, 4.9, 7.2, 8.8])
    assert fit is not None
    assert fit.slope == pytest.approx(1.97, abs=1e-9)
    assert fit.intercept == pytest.approx(1.06, abs=1e-9)
    assert fit.stderr == pytest.approx(math.sqrt(0.091 / 3 / 10), rel=1e-9)  # SSE 0.091, n - 2 = 3, Sxx 10
    assert health.t_975(3) == 3.182 and health.t_975(1000) == pytest.approx(1.962, abs=0.001)
    assert health.linear_fit([1, 1, 1], [1, 2, 3]) is None
