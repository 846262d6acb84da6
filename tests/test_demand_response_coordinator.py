"""Demand response at the gateway: which groups are asked (never a critical one), confirmations
counted once, non-responders, and each accepting meter's credit from its readings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.demand_response import DrCoordinator, Group, Program
from gateway.contract.demand_response import DrConfirmation

HVAC = Program("DR-HVAC", "curtail", 15.0, 7200.0, 0.12)
SHIFT = Program("DR-SHIFT", "shift", 35.0, 10800.0, 0.08)
GROUPS = [
    Group("G-COMM", 250, ("DR-HVAC",)),
    Group("G-IND", 100, ("DR-SHIFT",)),
    Group("G-HOSP", 12, (), critical=True),
    Group("G-RES", 1200, ()),
]
T0 = 1_800_000_000.0


def coordinator() -> DrCoordinator:
    ids = iter(f"E{n}" for n in range(100))
    return DrCoordinator("SUB-7", [HVAC, SHIFT], GROUPS, confirm_timeout_s=60.0, new_id=lambda: next(ids))


def confirm(
    event_id: str, group: str, answers: list[tuple[str, str, float]], substation: str = "SUB-7"
) -> DrConfirmation:
    return DrConfirmation(
        event_id=event_id,
        substation_id=substation,
        concentrator_id=group,
        time=T0,
        meters=tuple(m for m, _, _ in answers),
        answers=tuple(a for _, a, _ in answers),
        demand_kw=tuple(d for _, _, d in answers),
    )


def test_only_enrolled_groups_are_asked_most_reduction_per_customer_first_until_enough() -> None:
    dr = coordinator()
    demand = {"G-COMM": 3000.0, "G-IND": 2000.0, "G-HOSP": 1500.0, "G-RES": 3000.0}
    events = dr.plan(300.0, demand, T0, 3600.0)
    # the industrial group gives 700 kW from 100 customers: 7 kW each, before commercial (1.8 kW each)
    assert [e.concentrator_id for e in events] == ["G-IND"]
    assert events[0].program == "DR-SHIFT" and events[0].duration_s == 3600.0
    more = dr.plan(1000.0, demand, T0, 3 * 3600.0)
    assert [e.concentrator_id for e in more] == ["G-COMM"]  # G-IND already has an event
    assert more[0].duration_s == HVAC.max_duration_s  # within the program's longest event
    assert not dr.plan(1e6, demand, T0, 3600.0)  # nothing else enrolled: hospital never


def test_confirmations_counted_once_and_non_responders_named_at_the_end() -> None:
    dr = coordinator()
    [ev] = dr.plan(100.0, {"G-IND": 2000.0}, T0, 3600.0)
    answers = [(f"M{k}", "accepted", 20.0) for k in range(80)] + [
        ("M90", "not_enrolled", 5.0),
        ("M91", "critical", 50.0),
    ]
    got = dr.on_confirmation(confirm(ev.event_id, "G-IND", answers), T0 + 1)
    assert got is not None and got.counts == {"accepted": 80, "not_enrolled": 1, "critical": 1}
    dr.on_confirmation(confirm(ev.event_id, "G-IND", answers), T0 + 2)  # repeated: counted once
    assert got.counts["accepted"] == 80
    assert dr.on_confirmation(confirm("E-other", "G-IND", answers), T0) is None
    assert dr.on_confirmation(confirm(ev.event_id, "G-COMM", answers), T0) is None  # wrong concentrator
    assert dr.on_confirmation(confirm(ev.event_id, "G-IND", answers, "SUB-6"), T0) is None
    assert dr.bad_confirmations == 3
    [ended] = dr.tick(T0 + 3600.0)
    assert ended.non_responders == 100 - 80 - 1 - 1
    assert dr.tick(T0 + 7200.0) == []  # reported once


def test_credits_are_the_energy_not_drawn_times_the_incentive() -> None:
    dr = coordinator()
    [ev] = dr.plan(100.0, {"G-COMM": 3000.0}, T0, 3600.0)
    dr.on_confirmation(confirm(ev.event_id, "G-COMM", [("A", "accepted", 10.0), ("B", "accepted", 4.0)]), T0)
    for k in range(5):  # readings every 15 min: A draws 8.5 kW (1.5 less), B draws more than before
        dr.on_readings(["A", "B", "C"], np.array([8.5, 4.5, 3.0]), T0 + k * 900.0)
    [ended] = dr.tick(T0 + 3600.0)
    assert ended.credits == {"A": pytest.approx(1.5 * 1.0 * 0.12)}  # 1.5 kW for an hour at 0.12 per kWh
    assert "B" not in ended.credits and ended.summary()["reduced_kwh"] == pytest.approx(1.5)


def test_an_event_no_concentrator_answers_ends_as_unanswered() -> None:
    dr = coordinator()
    [ev] = dr.plan(100.0, {"G-IND": 2000.0}, T0, 3600.0)
    assert dr.tick(T0 + 30.0) == []
    [ended] = dr.tick(T0 + 61.0)
    assert "no confirmation" in ended.error and not dr.active()


@settings(max_examples=150, deadline=None)
@given(
    need=st.floats(0.0, 20_000.0),
    demand=st.dictionaries(st.sampled_from([g.id for g in GROUPS]), st.floats(0.0, 10_000.0)),
    readings=st.lists(st.tuples(st.floats(0.0, 7200.0), st.floats(0.0, 50.0)), max_size=20),
    baseline=st.floats(0.0, 50.0),
)
def test_never_a_critical_group_and_no_credit_beyond_the_baseline(
    need: float, demand: dict[str, float], readings: list[tuple[float, float]], baseline: float
) -> None:
    dr = coordinator()
    events = dr.plan(need, demand, T0, 3600.0)
    assert all(e.concentrator_id not in ("G-HOSP", "G-RES") for e in events)
    for ev in events:
        dr.on_confirmation(confirm(ev.event_id, ev.concentrator_id, [("M", "accepted", baseline)]), T0)
    for t, kw in readings:  # in any order, repeated
        dr.on_readings(["M"], np.array([kw]), T0 + t)
    for ended in dr.tick(T0 + 3600.0):
        program = dr.programs[ended.program.id]
        # credits are rounded to 6 decimals
        assert all(0 <= c <= baseline * 1.0 * program.incentive_per_kwh + 5e-7 for c in ended.credits.values())
