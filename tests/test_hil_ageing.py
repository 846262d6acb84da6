"""The simulator's transformer condition: months of ageing in seconds (drift, efficiency, fans,
gases, hour counter) and its live values; a bypassed meter; station transformers' oil following
the power they pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from gateway.config import validate
from hil.grid.ageing import PROFILES, Climate, Condition, LoadComponent, monitor_log
from hil.grid.model import GridModel
from hil.scenarios.predictive_maintenance import AGED, TWIN, site

SHAPE = (0.6,) * 7 + (0.9,) * 12 + (1.0,) * 3 + (0.7,) * 2


def by_point(rows: list[dict]) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["point_id"].split(".", 1)[1], []).append(r["mean"])
    return {k: np.asarray(v) for k, v in out.items()}


def run(profile: str, months: float = 6.0, seed: int = 1) -> tuple[Condition, dict[str, np.ndarray], list[dict]]:
    cond = Condition("X", PROFILES[profile], operating_hours=83_000.0, seed=seed)
    rows = monitor_log(
        cond,
        [LoadComponent(4000.0, 0.93, SHAPE)],
        rated_kva=6000.0,
        rated_rise_c=50.0,
        loss_ratio=5.0,
        cooling_type="ONAF",
        tau_min=150.0,
        months=months,
        end_wall=1.79e9,
        utc_offset_h=3.0,
        climate=Climate(mean_c=27.0, swing_c=5.0),
        seed=seed,
    )
    return cond, by_point(rows), rows


def test_the_ageing_unit_drifts_loses_efficiency_runs_its_fans_and_gasses() -> None:
    cond, p, rows = run("scenario-3")
    hours = len(p["load_kw"])
    assert hours == round(6 * 30.44 * 24)
    assert len(rows) == hours * 14 and all(r["interval_s"] == 3600.0 for r in rows[:14])
    assert rows[0]["bucket_start"] % 3600 == 0 and rows[-1]["bucket_start"] < 1.79e9
    month = hours // 6
    assert p["fans_running"][:month].mean() < 0.8 < p["fans_running"][-month:].mean()  # cycled, then constantly
    eff = p["load_kw"] / p["primary_power_kw"]
    assert eff[:24].mean() == pytest.approx(0.982, abs=5e-4) and eff[-24:].mean() == pytest.approx(0.974, abs=5e-4)
    assert p["c2h2_ppm"][0] == pytest.approx(0.3, rel=0.1) and p["c2h2_ppm"][-1] == pytest.approx(14.0, rel=0.05)
    assert p["c2h2_ppm"][hours // 2] < 0.5 * 14.0  # an active fault: most of the rise late
    assert p["operating_hours"][-1] == 83_000 + hours
    assert cond.age_months == pytest.approx(6.0, abs=1e-3) and cond.operating_hours == 83_000 + hours  # whole hours
    assert cond.drift_c() == pytest.approx(2.4 * 6, abs=0.01)


def test_the_healthy_twin_cycles_its_fans_and_keeps_its_gases() -> None:
    _, p, _ = run("healthy")
    month = len(p["load_kw"]) // 6
    duty = [p["fans_running"][k * month : (k + 1) * month].mean() for k in range(6)]
    assert all(0.1 < d < 0.9 for d in duty), duty  # on and off every month (more in the warm season)
    assert p["c2h2_ppm"].max() < 0.3 and p["h2_ppm"].max() < 45
    assert (p["load_kw"] / p["primary_power_kw"]).std() < 1e-4


def test_the_log_is_deterministic_by_seed_and_hot_spells_come_and_go() -> None:
    a = run("healthy", months=2, seed=3)[1]
    b = run("healthy", months=2, seed=3)[1]
    c = run("healthy", months=2, seed=4)[1]
    assert np.array_equal(a["ambient_temp_c"], b["ambient_temp_c"])
    assert not np.array_equal(a["ambient_temp_c"], c["ambient_temp_c"])
    temps = a["ambient_temp_c"]
    daily = temps[: len(temps) // 24 * 24].reshape(-1, 24).mean(axis=1)
    assert daily.max() - daily.min() > 4.0  # some days in a hot spell


def test_live_values_of_a_transformer_with_a_condition() -> None:
    m = GridModel.from_site(validate(site()), seed=1)
    m.advance(30.0)
    v = m.point_values()
    for name in ("primary_power_kw", "fans_running", "operating_hours", "h2_ppm", "c2h2_ppm", "co2_ppm"):
        assert f"{AGED}.{name}" in v and f"{TWIN}.{name}" in v
    assert "XFMR-101.c2h2_ppm" not in v  # no condition, no DGA monitor
    assert v[f"{AGED}.primary_power_kw"] == pytest.approx(v[f"{AGED}.load_kw"] / 0.982, rel=1e-6)
    assert v[f"{AGED}.top_oil_temp_c"] > v[f"{AGED}.ambient_temp_c"] + 10  # a station transformer's oil heats
    before = v[f"{AGED}.c2h2_ppm"]
    m.conditions[AGED].age_months = 6.0
    m.advance(31.0)
    assert m.point_values()[f"{AGED}.c2h2_ppm"] > 10 * before


def test_the_model_ages_a_transformer_behind_its_own_loads() -> None:
    m = GridModel.from_site(validate(site()), seed=1)
    cond = copy.deepcopy(m.conditions[AGED])
    loads = m.loads_behind(AGED)
    assert sum(c.peak_kw for c in loads) == pytest.approx(900 + 1500 + 1500)  # LINE-045's groups
    rows = monitor_log(
        cond,
        loads,
        rated_kva=6000.0,
        rated_rise_c=50.0,
        loss_ratio=5.0,
        cooling_type="ONAF",
        tau_min=None,
        months=6.0,
        end_wall=1.79e9,
    )
    assert len(rows) == 14 * round(6 * 30.44 * 24)  # how long it takes: tests/bench/bench_maintenance.py


def test_a_bypassed_meter_registers_a_share_and_the_transformer_still_supplies_all() -> None:
    m = GridModel.from_site(validate(site()), seed=1)
    m.advance(10.0)
    r0 = m.meter_readings(10.0)
    k = r0.ids.index("MTR-164-00003")
    m.bypass.set(k, 0.0)
    m.meter_readings(10.0)  # the bypass starts at this reading
    m.advance(3610.0)
    r1 = m.meter_readings(3610.0)
    others = [i for i, g in enumerate(r1.group_ids) if g == "MTR-GRP-164" and i != k]
    assert r1.energy_kwh[k] == pytest.approx(r0.energy_kwh[k], abs=1e-6)
    assert r1.demand_kw[k] == 0.0
    assert all(r1.energy_kwh[i] > r0.energy_kwh[i] for i in others)
    m.bypass.set(k, 1.0)
    m.meter_readings(3610.0)
    m.advance(7210.0)
    r2 = m.meter_readings(7210.0)
    assert r2.energy_kwh[k] > r1.energy_kwh[k] and r2.demand_kw[k] > 0
    with pytest.raises(ValueError):
        m.bypass.set(k, 1.5)
