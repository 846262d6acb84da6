"""Peak demand: the actions in order, each measured against the trend, stopping at the target;
shedding last and never a feeder that exports or feeds a critical customer unless nothing is left."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.switching.peak import ORDER, PeakManager, PeakPhase, PeakSettings, Release, Start, shedding_order


def simulate(effects: dict[str, float], *, ramp_kw_per_h: float = 500.0, start_kw: float = 28_500.0,
             settle_s: float = 120.0, horizon_peak_add: float = 1_000.0) -> PeakManager:
    """A substation of 30 MW ramping; each action, once started, takes its effect off the load."""
    mgr = PeakManager(capacity_kw=30_000.0, settings=PeakSettings(settle_s=settle_s))
    active: dict[str, float] = {}
    for k in range(0, 3600, 10):
        t = float(k)
        load = start_kw + ramp_kw_per_h * t / 3600.0 - sum(active.values())
        peak = load + horizon_peak_add
        for action in mgr.step(t, load, peak, ramp_kw_per_h):
            if isinstance(action, Start):
                active[action.action] = effects.get(action.action, 0.0)
    return mgr


def test_actions_run_in_order_and_stop_at_the_target() -> None:
    mgr = simulate({"cvr": 600.0, "capacitors": 200.0, "demand_response": 1800.0, "der": 400.0})
    assert mgr.phase is PeakPhase.HOLDING
    assert list(mgr.contributions) == ["cvr", "capacitors", "demand_response"]
    assert mgr.contributions["cvr"] == pytest.approx(600.0, abs=1.0)
    assert mgr.contributions["demand_response"] == pytest.approx(1800.0, abs=1.0)
    assert "shed" not in mgr.contributions and "transfer" not in mgr.contributions


def test_shedding_only_when_nothing_else_suffices() -> None:
    mgr = simulate({"cvr": 100.0, "capacitors": 50.0, "demand_response": 100.0, "der": 100.0, "transfer": 0.0,
                    "shed": 3000.0})
    assert list(mgr.contributions) == list(ORDER)
    assert mgr.contributions["shed"] == pytest.approx(3000.0, abs=1.0)


def test_an_action_that_cannot_start_passes_to_the_next_at_once() -> None:
    mgr = PeakManager(capacity_kw=30_000.0)
    [start] = mgr.step(0.0, 28_500.0, 29_500.0, 500.0)
    assert isinstance(start, Start) and start.action == "cvr" and start.need_kw == pytest.approx(2_500.0)
    [start] = mgr.on_result("cvr", "taps already at their limit", 1.0, 28_500.0, 500.0)
    assert start.action == "capacitors" and mgr.skipped == {"cvr": "taps already at their limit"}


def test_the_peak_passing_releases_what_was_done() -> None:
    mgr = simulate({"cvr": 3000.0})
    assert mgr.phase is PeakPhase.HOLDING
    out = mgr.step(5000.0, 20_000.0, 21_000.0, -500.0)
    assert out == [Release(("cvr",))] and mgr.phase is PeakPhase.IDLE


@settings(max_examples=200, deadline=None)
@given(feeders=st.lists(st.fixed_dictionaries({
    "feeder": st.text("ABCDEF", min_size=1, max_size=3), "load_kw": st.floats(-2000.0, 6000.0),
    "customers": st.integers(0, 3000), "critical_customers": st.integers(0, 2)}), max_size=8),
    need=st.floats(0.0, 20_000.0))
def test_shedding_never_takes_exporters_and_critical_feeders_last(feeders: list[dict[str, object]],
                                                                  need: float) -> None:
    plan = shedding_order(feeders, need)
    assert all(float(f["load_kw"]) > 0 for f in plan)  # type: ignore[arg-type]
    critical_at = [i for i, f in enumerate(plan) if f["critical_customers"]]
    plain_total = sum(float(f["load_kw"]) for f in feeders if float(f["load_kw"]) > 0  # type: ignore[arg-type]
                      and not f["critical_customers"])
    if critical_at:
        # a critical feeder only once every plain one is in the plan and still not enough
        assert all(not f["critical_customers"] for f in plan[:critical_at[0]])
        assert plain_total < need
