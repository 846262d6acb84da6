"""Dissolved-gas analysis: Duval triangle 1 zones and IEEE C57.104-2019 status, with known answers.

Duval vectors: points inside each zone and on its published limits (IEC 60599:2015 Annex B;
the zone polygons as drawn in M. Duval, IEEE EI Magazine 18(3), 2002), and the test vectors of
an independent implementation (ToniMellin/dga-diagtool, tests/test_diagnostic_calculation.py,
argument order CH4, C2H2, C2H4) wherever the two agree on which side of a limit a point on the
limit lies (that implementation puts some limits on the other side; those points are left out).
C57.104 vectors: concentrations from Tables 1 and 2 of the guide, by O2/N2 ratio and age.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.maintenance import dga
from gateway.maintenance.dga import DuvalZone, Gas

# (CH4, C2H2, C2H4) in % → zone; from dga-diagtool's tests where both put the point in the same zone
INDEPENDENT = [
    ((16, 8, 76), "T3"),
    ((46, 4, 50), "T3"),
    ((48, 2, 50), "T3"),
    ((40, 10, 50), "T3"),
    ((64, 2, 34), "T2"),
    ((88, 2, 10), "T1"),
    ((98, 0, 2), "PD"),
    ((98, 2, 0), "PD"),
    ((99, 1, 1), "PD"),
    ((57, 8, 35), "DT"),
    ((40, 15, 45), "DT"),
    ((20, 20, 60), "DT"),
    ((42, 46, 12), "D1"),
    ((87, 13, 0), "D1"),
    ((77, 13, 10), "D1"),
    ((25, 40, 35), "D2"),
    ((10, 40, 50), "D2"),
    ((57, 13, 30), "D2"),
    ((31, 29, 40), "D2"),
    ((15, 29, 56), "D2"),
    ((0, 29, 71), "D2"),
]
# Points on a limit where that implementation and this one (lower bound inclusive, as the zones
# are written in IEC 60599) differ: (CH4, C2H2, C2H4) → this module's zone
ON_A_LIMIT = [
    ((61, 4, 35), "DT"),
    ((78, 2, 20), "T2"),
    ((96, 4, 0), "DT"),
    ((64, 13, 23), "D2"),
    ((47, 13, 40), "DT"),
    ((0, 77, 23), "D2"),
    ((35, 15, 50), "DT"),
]
# Corners of each zone's polygon (CH4, C2H2, C2H4 %), as published
POLYGONS = {
    "PD": [(100, 0, 0), (98, 2, 0), (98, 0, 2)],
    "T1": [(96, 4, 0), (76, 4, 20), (80, 0, 20), (98, 0, 2), (98, 2, 0)],
    "T2": [(80, 0, 20), (76, 4, 20), (46, 4, 50), (50, 0, 50)],
    "T3": [(50, 0, 50), (35, 15, 50), (0, 15, 85), (0, 0, 100)],
    "D1": [(0, 100, 0), (0, 77, 23), (64, 13, 23), (87, 13, 0)],
    "D2": [(64, 13, 23), (0, 77, 23), (0, 29, 71), (31, 29, 40), (47, 13, 40)],
    "DT": [(87, 13, 0), (47, 13, 40), (31, 29, 40), (0, 29, 71), (0, 15, 85), (35, 15, 50), (46, 4, 50), (96, 4, 0)],
}


@pytest.mark.parametrize(("shares", "zone"), INDEPENDENT)
def test_duval_triangle_1_against_an_independent_implementations_vectors(
    shares: tuple[int, int, int], zone: str
) -> None:
    ch4, c2h2, c2h4 = shares
    assert dga.duval_zone(ch4, c2h4, c2h2).value == zone


@pytest.mark.parametrize(("shares", "zone"), ON_A_LIMIT)
def test_points_on_a_limit_belong_to_the_zone_whose_lower_bound_it_is(shares: tuple[int, int, int], zone: str) -> None:
    ch4, c2h2, c2h4 = shares
    assert dga.duval_zone(ch4, c2h4, c2h2).value == zone


@pytest.mark.parametrize("zone", list(POLYGONS))
def test_the_centre_of_each_published_zone_polygon_lies_in_that_zone(zone: str) -> None:
    corners = POLYGONS[zone]
    ch4, c2h2, c2h4 = (sum(c[k] for c in corners) / len(corners) for k in range(3))
    assert dga.duval_zone(ch4, c2h4, c2h2).value == zone


@pytest.mark.parametrize(
    ("ppm", "zone"),
    [
        ((100, 100, 100), "D2"),  # equal parts: C2H2 33 %, C2H4 33 %
        ((5, 10, 60), "D1"),  # acetylene dominant, little ethylene: low-energy discharges
        ((120, 20, 0.5), "T1"),  # methane rich, no acetylene: a low-temperature hot spot
        ((20, 160, 2), "T3"),  # ethylene dominant: > 700 °C
        ((200, 1, 0), "PD"),
    ],
)
def test_duval_from_concentrations(ppm: tuple[float, float, float], zone: str) -> None:
    point = dga.duval_triangle_1(*ppm)
    assert point is not None and point.zone.value == zone
    assert point.ch4_pct + point.c2h4_pct + point.c2h2_pct == pytest.approx(100.0)


def test_duval_needs_gas_and_refuses_nonsense() -> None:
    assert dga.duval_triangle_1(0, 0, 0) is None
    with pytest.raises(ValueError, match="finite"):
        dga.duval_triangle_1(-1, 2, 3)
    with pytest.raises(ValueError):
        dga.duval_zone(float("nan"), 1, 1)


@given(st.floats(0, 100), st.floats(0, 100), st.floats(0, 100))
def test_every_point_of_the_triangle_has_exactly_one_zone_and_the_limits_hold(a: float, b: float, c: float) -> None:
    if a + b + c <= 0:
        return
    zone = dga.duval_zone(a, b, c)
    total = a + b + c
    ch4, c2h4, c2h2 = 100 * a / total, 100 * b / total, 100 * c / total
    if zone is DuvalZone.PD:
        assert ch4 >= 98 - 1e-9
    if zone in (DuvalZone.T1, DuvalZone.T2):
        assert c2h2 < 4 + 1e-9
    if zone is DuvalZone.T3:
        assert c2h2 < 15 + 1e-9 and c2h4 >= 50 - 1e-9
    if zone in (DuvalZone.D1, DuvalZone.D2):
        assert c2h2 >= 13 - 1e-9
    if zone is DuvalZone.D1:
        assert c2h4 < 23 + 1e-9


# --------------------------------------------------------------------------- C57.104-2019


@pytest.mark.parametrize(
    ("gas", "sealed", "age", "p90", "p95"),
    [
        (Gas.H2, True, None, 80, 200),
        (Gas.H2, True, 5, 75, 200),
        (Gas.H2, True, 35, 100, 200),
        (Gas.CH4, True, 5, 45, 100),
        (Gas.CH4, True, 20, 90, 150),
        (Gas.CH4, True, 40, 110, 200),
        (Gas.C2H6, True, None, 90, 175),
        (Gas.C2H4, True, 20, 50, 95),
        (Gas.C2H2, True, 20, 1, 2),
        (Gas.C2H2, True, 40, 1, 4),
        (Gas.CO, True, 20, 900, 1100),
        (Gas.CO2, True, 5, 5000, 7000),
        (Gas.H2, False, 20, 40, 90),
        (Gas.CH4, False, 20, 20, 60),
        (Gas.C2H4, False, 5, 25, 80),
        (Gas.C2H2, False, 20, 2, 7),
        (Gas.CO, False, 20, 500, 600),
        (Gas.CO2, False, 20, 5500, 8000),
    ],
)
def test_norms_are_the_guides_tables_1_and_2(gas: Gas, sealed: bool, age: float | None, p90: float, p95: float) -> None:
    n = dga.norms(gas, sealed=sealed, age_years=age)
    assert (n.p90_ppm, n.p95_ppm) == (p90, p95)


def test_status_per_gas_by_level_change_and_rate() -> None:
    s = dga.gas_status(Gas.C2H2, 0.5, sealed=True, age_years=20)
    assert (s.status, s.level) == (1, "below_p90")
    s = dga.gas_status(Gas.C2H2, 1.5, sealed=True, age_years=20)
    assert (s.status, s.level) == (2, "p90")
    s = dga.gas_status(Gas.C2H2, 1.5, sealed=True, age_years=20, rate_ppm_per_year=3.0)
    assert (s.status, s.rate_exceeded) == (3, True)
    s = dga.gas_status(Gas.C2H2, 2.0, sealed=True, age_years=20)
    assert (s.status, s.level) == (3, "p95")
    s = dga.gas_status(Gas.H2, 30, sealed=True, age_years=20, rate_ppm_per_year=25.0)
    assert (s.status, s.level) == (2, "below_p90")  # rising fast from a low level: caution
    s = dga.gas_status(Gas.H2, 30, sealed=True, age_years=20, rate_ppm_per_year=-50.0, delta_ppm=-60.0)
    assert s.status == 1  # falling (after degassing) is not a change for the worse
    with pytest.raises(ValueError, match="µL/L"):
        dga.gas_status(Gas.H2, -1, sealed=True, age_years=20)


def test_a_transformers_status_is_its_worst_gas_and_duval_is_read_only_above_typical() -> None:
    healthy = dga.assess(
        {Gas.H2: 30, Gas.CH4: 20, Gas.C2H6: 15, Gas.C2H4: 8, Gas.C2H2: 0.2, Gas.CO: 300, Gas.CO2: 3000},
        sealed=True,
        age_years=15,
    )
    assert healthy.status == 1 and healthy.duval is None
    arcing = dga.assess(
        {Gas.H2: 150, Gas.CH4: 40, Gas.C2H6: 20, Gas.C2H4: 30, Gas.C2H2: 15, Gas.CO: 400, Gas.CO2: 3500},
        sealed=True,
        age_years=15,
    )
    assert arcing.status == 3
    assert arcing.duval is not None and arcing.duval.zone is DuvalZone.D2
    assert arcing.get(Gas.C2H2).status == 3 and arcing.get(Gas.CO).status == 1


def test_rate_is_a_least_squares_slope_per_year() -> None:
    day = 86400.0
    times = [k * 30 * day for k in range(7)]
    values = [1.0 + 0.5 * k for k in range(7)]  # +0.5 µL/L every 30 days
    assert dga.rate_per_year(times, values) == pytest.approx(0.5 * 365.25 / 30)
    assert dga.rate_per_year(times[:2], values[:2]) is None
