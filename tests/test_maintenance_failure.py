"""The failure-probability model: calibrated on the use case's numbers, monotone in every risk
factor, explainable (each factor's contribution), with the failure mode its factors point to."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.maintenance import dga, failure
from gateway.maintenance.dga import Gas
from gateway.maintenance.health import CoolingDuty, Efficiency, HealthInputs, TopOilTrend


def inputs(
    *,
    slope: float = 0.0,
    ci: float = 0.1,
    top_oil: float = 65.0,
    eff_drop: float = 0.0,
    duty: tuple[float, float] = (0.4, 0.4),
    c2h2: float = 0.2,
    c2h4: float = 8.0,
    ch4: float = 20.0,
    hours: float = 60_000.0,
    lol: float = 10.0,
) -> HealthInputs:
    assessment = dga.assess(
        {Gas.H2: 40, Gas.CH4: ch4, Gas.C2H6: 15, Gas.C2H4: c2h4, Gas.C2H2: c2h2, Gas.CO: 300, Gas.CO2: 3000},
        sealed=True,
        age_years=18,
    )
    return HealthInputs(
        transformer="X",
        time=0.0,
        history_days=180,
        load_pu=0.85,
        top_oil=TopOilTrend(slope, ci, 180, 0.85, 40.0, 40.0 + 6 * slope, slope - ci > 0.5),
        top_oil_recent_c=top_oil,
        normal_top_oil_max_c=75.0,
        efficiency=Efficiency(98.2, 98.2 - eff_drop),
        cooling=CoolingDuty(*duty),
        operating_hours=hours,
        maintenance_interval_h=90_000,
        loss_of_life_percent=lol,
        dga=assessment,
    )


SCENARIO = dict(
    slope=2.0,
    ci=0.1,
    top_oil=78.0,
    eff_drop=0.7,
    duty=(0.4, 1.0),
    c2h2=12.0,
    c2h4=30.0,
    ch4=40.0,
    hours=87_500,
    lol=25.0,
)


def test_calibration_reproduces_the_use_cases_45_percent_in_60_days() -> None:
    p = failure.probability(failure.SCENARIO_3_FEATURES, 60, failure.BASE_RATE_PER_YEAR)
    assert p == pytest.approx(0.45, abs=1e-12)
    low, high = failure.CIGRE_TB642_RANGE_PER_YEAR
    assert low <= failure.BASE_RATE_PER_YEAR <= high  # the weights are of a plausible size
    base = failure.calibrate_base_rate({"dga_status": 2.0}, 0.1, 30)
    assert failure.probability({"dga_status": 2.0}, 30, base) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        failure.calibrate_base_rate({}, 1.0, 30)


def test_the_scenarios_health_inputs_give_its_numbers_and_its_failure_mode() -> None:
    prediction = failure.predict(inputs(**SCENARIO), horizon_days=60)  # type: ignore[arg-type]
    assert prediction.probability == pytest.approx(0.45, abs=0.03)
    assert prediction.mode == "winding insulation breakdown"
    assert prediction.probabilities[30] < prediction.probabilities[60] < prediction.probabilities[90]
    assert 20 <= prediction.recommended_within_days <= 35  # "within 30 days"
    top = prediction.contributions[0]
    assert top.factor in ("dga_status", "acetylene")
    assert sum(c.share for c in prediction.contributions) == pytest.approx(1.0)
    for c in prediction.contributions:
        assert c.probability_without <= prediction.probability + 1e-12
        assert (c.term > 0) == (c.probability_without < prediction.probability)


def test_a_healthy_transformer_is_far_below_any_threshold() -> None:
    prediction = failure.predict(inputs(), horizon_days=60)
    assert prediction.probability < 0.01
    assert prediction.recommended_within_days == 365.0


def test_a_thermal_fault_points_to_overheating() -> None:
    hot = inputs(slope=1.5, top_oil=85, c2h2=0.5, c2h4=120.0, ch4=60.0)
    prediction = failure.predict(hot)
    assert hot.dga is not None and hot.dga.duval is not None and hot.dga.duval.zone.value == "T3"
    assert prediction.mode == "overheating of windings, core or connections"


RISKS = {
    "slope": st.floats(0, 6),
    "top_oil": st.floats(50, 100),
    "eff_drop": st.floats(0, 4),
    "c2h2": st.floats(0, 80),
    "hours": st.floats(0, 150_000),
    "lol": st.floats(0, 150),
}


@given(st.sampled_from(sorted(RISKS)), st.data())
def test_the_probability_never_falls_when_a_risk_factor_grows(name: str, data: st.DataObject) -> None:
    a, b = sorted((data.draw(RISKS[name]), data.draw(RISKS[name])))
    base = {k: data.draw(v) for k, v in RISKS.items()}
    lower = failure.predict(inputs(**{**base, name: a})).probability  # type: ignore[arg-type]
    higher = failure.predict(inputs(**{**base, name: b})).probability  # type: ignore[arg-type]
    assert higher >= lower - 1e-12


@given(st.floats(0, 1), st.floats(0, 1), st.floats(1, 365))
def test_duty_and_horizon_are_monotone_too(d1: float, d2: float, horizon: float) -> None:
    lo, hi = sorted((d1, d2))
    p_lo = failure.predict(inputs(duty=(0.3, lo)), horizon_days=horizon).probability
    p_hi = failure.predict(inputs(duty=(0.3, hi)), horizon_days=horizon).probability
    assert p_hi >= p_lo - 1e-12
    assert (
        failure.predict(inputs(), horizon_days=horizon).probability
        <= failure.predict(inputs(), horizon_days=horizon + 1).probability
    )


def test_unknown_inputs_count_as_normal_not_as_risk() -> None:
    bare = dataclasses.replace(
        inputs(),
        top_oil=None,
        efficiency=None,
        cooling=None,
        dga=None,
        operating_hours=None,
        loss_of_life_percent=None,
        top_oil_recent_c=None,
    )
    x = failure.features(bare)
    assert set(x.values()) == {0.0}
    assert failure.predict(bare).probability == pytest.approx(1 - math.exp(-failure.BASE_RATE_PER_YEAR * 60 / 365.25))
