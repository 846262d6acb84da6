"""Known answers from the grid reference sheet (sections 4-6) and properties of the curves."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.agents import physics

REL = 5e-6


@pytest.mark.parametrize(
    ("hot_spot_c", "faa"),
    [
        (80, 0.0358495),
        (90, 0.115576),
        (98, 0.281738),
        (100, 0.349943),
        (104, 0.536168),
        (110, 1.0),
        (116, 1.82957),
        (120, 2.70893),
        (130, 6.98418),
        (140, 17.1995),
        (150, 40.5890),
        (160, 92.0617),
        (180, 424.923),
    ],
)
def test_aging_acceleration_factor(hot_spot_c: float, faa: float) -> None:
    assert physics.aging_acceleration_factor(hot_spot_c) == pytest.approx(faa, rel=REL)


def test_equivalent_aging_and_loss_of_life() -> None:
    f = [physics.aging_acceleration_factor(110), physics.aging_acceleration_factor(120)]
    feqa = physics.equivalent_aging_factor(f, [12, 12])
    assert feqa == pytest.approx(1.85446, rel=REL)
    assert feqa * 24 == pytest.approx(44.5071, rel=REL)
    assert physics.loss_of_life_percent(feqa * 24) == pytest.approx(0.0247262, rel=REL)


@pytest.mark.parametrize(
    ("k", "top_oil", "hot_spot_rise", "hot_spot"),
    [
        (0.8, 41.6043, 17.4938, 89.0981),
        (1.0, 55, 25, 110),
        (1.2, 70.3386, 33.4680, 133.807),
        (1.3, 78.6816, 38.0408, 146.722),
        (1.5, 96.6301, 47.8284, 174.459),
    ],
)
def test_c5791_steady_state(k: float, top_oil: float, hot_spot_rise: float, hot_spot: float) -> None:
    to = physics.ultimate_top_oil_rise_c(k, 55.0, 4.5, 0.8)
    hs = physics.ultimate_hot_spot_rise_c(k, 25.0, 0.8)
    assert to == pytest.approx(top_oil, rel=REL)
    assert hs == pytest.approx(hot_spot_rise, rel=REL)
    assert 30 + to + hs == pytest.approx(hot_spot, rel=REL)


def test_c5791_transient_converges_to_steady_state() -> None:
    state = physics.ThermalState(0.0, 0.0)
    for _ in range(2000):
        state = physics.thermal_step(
            state,
            1.2,
            60.0,
            rated_top_oil_rise_c=55,
            rated_hot_spot_rise_c=25,
            loss_ratio=4.5,
            n=0.8,
            m=0.8,
            rated_top_oil_tau_s=180 * 60,
            winding_tau_s=300,
        )
    assert state.top_oil_rise_c == pytest.approx(70.3386, rel=1e-4)
    assert state.hot_spot_rise_c == pytest.approx(33.4680, rel=1e-4)


VV_V = [0.88, 0.92, 0.95, 0.98, 1.00, 1.02, 1.05, 1.08, 1.10]
VV_A = [0.25, 0.20, 0.125, 0.05, 0, -0.05, -0.125, -0.20, -0.25]
VV_B = [0.44, 0.44, 0.22, 0, 0, 0, -0.22, -0.44, -0.44]


@pytest.mark.parametrize(("v", "qa", "qb"), list(zip(VV_V, VV_A, VV_B, strict=True)))
def test_volt_var_points(v: float, qa: float, qb: float) -> None:
    assert physics.volt_var_q_pu(v, "A") == pytest.approx(qa, abs=1e-9)
    assert physics.volt_var_q_pu(v, "B") == pytest.approx(qb, abs=1e-9)


@pytest.mark.parametrize(
    ("v", "p02", "p0"),
    [
        (1.05, 1.0, 1.0),
        (1.06, 1.0, 1.0),
        (1.07, 0.8, 0.75),
        (1.08, 0.6, 0.5),
        (1.09, 0.4, 0.25),
        (1.10, 0.2, 0.0),
        (1.12, 0.2, 0.0),
    ],
)
def test_volt_watt_points(v: float, p02: float, p0: float) -> None:
    assert physics.volt_watt_p_pu(v, 0.2) == pytest.approx(p02, abs=1e-9)
    assert physics.volt_watt_p_pu(v, 0.0) == pytest.approx(p0, abs=1e-9)


def test_line_drop_compensation_vector() -> None:
    v_ctrl = physics.ldc_control_voltage_v(122.0, 400.0, 0.9, 600.0, 6.0, 3.0)
    assert v_ctrl == pytest.approx(117.528, abs=5e-4)
    assert 120.0 - v_ctrl == pytest.approx(2.47177, abs=5e-4)
    assert physics.taps_needed(120.0, v_ctrl, 0.75) == 3


@pytest.mark.parametrize(("dev", "delay"), [(1.5, 15.0), (3.0, 7.5), (6.0, 3.75)])
def test_inverse_time_delay(dev: float, delay: float) -> None:
    assert physics.inverse_time_delay_s(15.0, dev, 3.0) == pytest.approx(delay)


def test_thermal_replica_vector() -> None:
    # 60 s at 150 A from cold, tau 600 s, k*I_B 105 A
    assert physics.thermal_level(0.0, 150.0, 105.0, 60.0, 600.0) == pytest.approx(0.194209, rel=1e-5)


def test_first_order_lag_reaches_90_percent_at_olrt() -> None:
    assert physics.first_order_lag(0.0, 1.0, 5.0, 5.0) == pytest.approx(0.9)


@given(st.floats(0.5, 1.5), st.floats(0.5, 1.5), st.sampled_from(["A", "B"]))
def test_volt_var_is_monotone_and_bounded(v1: float, v2: float, cat: str) -> None:
    lo, hi = sorted((v1, v2))
    q_lo, q_hi = physics.volt_var_q_pu(lo, cat), physics.volt_var_q_pu(hi, cat)
    assert q_hi <= q_lo + 1e-12
    limit = 0.25 if cat == "A" else 0.44
    assert -limit - 1e-12 <= q_hi <= limit + 1e-12


@given(st.floats(0.8, 1.3))
def test_volt_watt_is_monotone_and_bounded(v: float) -> None:
    p = physics.volt_watt_p_pu(v)
    assert 0.2 - 1e-12 <= p <= 1.0
    assert physics.volt_watt_p_pu(v + 0.01) <= p + 1e-12


@given(st.lists(st.floats(0, 1000), min_size=2, max_size=30))
def test_linear_trend_of_a_line_is_exact(values: list[float]) -> None:
    times = [float(i * 60) for i in range(len(values))]
    line = [100.0 + 2.0 * t for t in times]
    slope, fitted = physics.linear_trend(times, line)
    assert slope == pytest.approx(2.0)
    assert fitted == pytest.approx(line[-1])
    assert not math.isnan(physics.linear_trend(times, values)[0])
