"""Peak demand: the actions in order, each measured against the trend, stopping at the target;
shedding last and never a feeder that exports or feeds a critical customer unless nothing is left."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.switching.peak import ORDER, Load, PeakManager, PeakPhase, PeakSettings, Release, Start, shedding_order


def simulate(
    effects: dict[str, float],
    *,
    ramp_kw_per_h: float = 500.0,
    start_kw: float = 28_500.0,
    settle_s: float = 120.0,
    horizon_peak_add: float = 1_000.0,
) -> PeakManager:
    """A substation of 30 MW ramping; each action, once started, takes its effect off the load."""
    mgr = PeakManager(capacity_kva=30_000.0, settings=PeakSettings(settle_s=settle_s, basis="active"))
    active: dict[str, float] = {}
    for k in range(0, 3600, 10):
        t = float(k)
        load = start_kw + ramp_kw_per_h * t / 3600.0 - sum(active.values())
        peak = load + horizon_peak_add
        for action in mgr.step(t, Load(load), peak, ramp_kw_per_h):
            if isinstance(action, Start):
                active[action.action] = effects.get(action.action, 0.0)
                mgr.in_force(action.action, t)
    return mgr


def test_actions_run_in_order_and_stop_at_the_target() -> None:
    mgr = simulate({"cvr": 600.0, "capacitors": 200.0, "demand_response": 1800.0, "der": 400.0})
    assert mgr.phase is PeakPhase.HOLDING
    assert list(mgr.contributions) == ["cvr", "capacitors", "demand_response"]
    assert mgr.contributions["cvr"].counted == pytest.approx(600.0, abs=1.0)
    assert mgr.contributions["demand_response"].kw == pytest.approx(1800.0, abs=1.0)
    assert "shed" not in mgr.contributions and "transfer" not in mgr.contributions


def test_shedding_only_when_nothing_else_suffices() -> None:
    mgr = simulate(
        {"cvr": 100.0, "capacitors": 50.0, "demand_response": 100.0, "der": 100.0, "transfer": 0.0, "shed": 3000.0}
    )
    assert list(mgr.contributions) == list(ORDER)
    assert mgr.contributions["shed"].counted == pytest.approx(3000.0, abs=1.0)


def test_an_action_that_cannot_start_passes_to_the_next_at_once() -> None:
    mgr = PeakManager(capacity_kva=30_000.0, settings=PeakSettings(basis="active"))
    [start] = mgr.step(0.0, Load(28_500.0), 29_500.0, 500.0)
    assert isinstance(start, Start) and start.action == "cvr" and start.need_kw == pytest.approx(2_500.0)
    [start] = mgr.on_result("cvr", "taps already at their limit", 1.0, Load(28_500.0), 500.0)
    assert start.action == "capacitors" and mgr.skipped == {"cvr": "taps already at their limit"}


def test_the_peak_passing_releases_what_was_done() -> None:
    mgr = simulate({"cvr": 3000.0})
    assert mgr.phase is PeakPhase.HOLDING
    out = mgr.step(5000.0, Load(20_000.0), 21_000.0, -500.0)
    assert out == [Release(("cvr",))] and mgr.phase is PeakPhase.IDLE


def test_apparent_basis_counts_the_capacitors_reactive_relief() -> None:
    """On the transformer's rating (kVA) capacitors count for the reactive power they supply;
    their active-power effect is reported apart (here a small rise from the higher voltage)."""
    mgr = PeakManager(capacity_kva=30_000.0, settings=PeakSettings(settle_s=60.0, actions=("capacitors",)))
    before = Load(28_500.0, 13_600.0)  # 105 % of 30 MVA
    [start] = mgr.step(0.0, before, before.kva + 500.0, 0.0)
    assert start.action == "capacitors" and start.need == pytest.approx(before.kva + 500.0 - 27_000.0)
    assert start.need_kw == pytest.approx(start.need * before.power_factor)
    assert mgr.phase is PeakPhase.WAITING and mgr.step(100.0, before, before.kva, 0.0) == []  # not in force yet
    mgr.in_force("capacitors", 100.0)
    after = Load(28_900.0, 8_600.0)
    assert mgr.step(130.0, after, after.kva, 0.0) == []  # settling
    mgr.step(170.0, after, after.kva, 0.0)
    c = mgr.contributions["capacitors"]
    assert c.counted == pytest.approx(before.kva - after.kva)
    assert c.kw == pytest.approx(-400.0) and c.kvar == pytest.approx(5_000.0)
    assert c.power_factor_after > c.power_factor_before
    assert mgr.phase is PeakPhase.HOLDING  # every action used


def test_a_transfer_that_never_comes_into_force_passes_to_shedding() -> None:
    mgr = PeakManager(capacity_kva=30_000.0, settings=PeakSettings(actions=("transfer", "shed"), basis="active"))
    [start] = mgr.step(0.0, Load(28_500.0), 29_500.0, 0.0)
    assert start.action == "transfer" and mgr.phase is PeakPhase.WAITING
    [start] = mgr.on_result("transfer", "SUB-006 refused: no headroom", 30.0, Load(28_500.0), 0.0)
    assert start.action == "shed" and mgr.skipped == {"transfer": "SUB-006 refused: no headroom"}


@settings(max_examples=200, deadline=None)
@given(
    feeders=st.lists(
        st.fixed_dictionaries(
            {
                "feeder": st.text("ABCDEF", min_size=1, max_size=3),
                "load_kw": st.floats(-2000.0, 6000.0),
                "customers": st.integers(0, 3000),
                "critical_customers": st.integers(0, 2),
            }
        ),
        max_size=8,
    ),
    need=st.floats(0.0, 20_000.0),
)
def test_shedding_never_takes_exporters_and_critical_feeders_last(
    feeders: list[dict[str, object]], need: float
) -> None:
    plan = shedding_order(feeders, need)
    assert all(float(f["load_kw"]) > 0 for f in plan)  # type: ignore[arg-type]
    critical_at = [i for i, f in enumerate(plan) if f["critical_customers"]]
    plain_total = sum(
        float(f["load_kw"])
        for f in feeders
        if float(f["load_kw"]) > 0  # type: ignore[arg-type]
        and not f["critical_customers"]
    )
    if critical_at:
        # a critical feeder only once every plain one is in the plan and still not enough
        assert all(not f["critical_customers"] for f in plan[: critical_at[0]])
        assert plain_total < need


def test_a_small_need_sheds_the_one_feeder_with_the_fewest_customers_that_covers_it() -> None:
    feeders = [
        {"feeder": "A", "load_kw": 4300.0, "customers": 1262, "critical_customers": 0},
        {"feeder": "B", "load_kw": 900.0, "customers": 150, "critical_customers": 0},
        {"feeder": "C", "load_kw": 200.0, "customers": 10, "critical_customers": 0},
        {"feeder": "H", "load_kw": 300.0, "customers": 5, "critical_customers": 1},
    ]
    assert [f["feeder"] for f in shedding_order(feeders, 90.0)] == ["C"]
    assert [f["feeder"] for f in shedding_order(feeders, 800.0)] == ["B"]
    assert [f["feeder"] for f in shedding_order(feeders, 5000.0)] == ["C", "B", "A"]
    assert [f["feeder"] for f in shedding_order(feeders, 5500.0)] == ["C", "B", "A", "H"]
