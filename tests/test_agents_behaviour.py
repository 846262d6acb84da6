"""Behaviour of each infrastructure agent type, driven step by step with a simulated `now`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agents.actions import Alert, BusMessage, ControlRequest, Severity, StateChange, Topic
from gateway.agents.base import Links
from gateway.agents.elements.capacitor_bank import CapacitorBankAgent, CapacitorInputs, CapacitorState
from gateway.agents.elements.circuit_breaker import BreakerInputs, BreakerState, CircuitBreakerAgent
from gateway.agents.physics import volt_var_q_pu
from gateway.agents.elements.power_line import LineInputs, LineState, PowerLineAgent
from gateway.agents.elements.renewable import DerInputs, DerState, RenewableEnergyAgent
from gateway.agents.schema import (
    CapacitorBankAttributes,
    CircuitBreakerAttributes,
    PowerLineAttributes,
    RenewableEnergyAttributes,
    SubstationAttributes,
    TransformerAttributes,
)
from gateway.agents.elements.substation import FeederInfo, SubstationAgent, SubstationInputs, SubstationState
from gateway.agents.elements.transformer import TransformerAgent, TransformerInputs, TransformerState


def run(agent: Any, memory: Any, inputs: Any, start: float, stop: float, dt: float = 1.0) -> tuple[Any, list[Any]]:
    actions: list[Any] = []
    t = start
    while t <= stop:
        memory, out = agent.step(memory, inputs, t)
        actions += out
        t += dt
    return memory, actions


# --------------------------------------------------------------------------- power line


LINE_LINKS = Links(
    upstream_breaker="CB-1",
    breakers=("CB-1",),
    transformers=("X-1", "X-2"),
    substation="SUB",
    adjacent_lines=("L-2",),
    transfer_options=({"tie": ["L-2", "L-1"], "via": "L-2"},),
)


def make_line() -> PowerLineAgent:
    return PowerLineAgent(
        "L-1",
        PowerLineAttributes(ampacity=400, length=2000, thermal_time_constant_s=3600, emergency_percent=160),
        LINE_LINKS,
    )


@pytest.mark.parametrize(
    ("current", "expected"), [(100, LineState.OPERATIONAL), (350, LineState.LOADED), (700, LineState.EMERGENCY)]
)
def test_line_load_states(current: float, expected: LineState) -> None:
    line = make_line()
    m, _ = line.step(line.initial_memory(0), LineInputs(current_a=current, voltage_kv=11, breaker_closed=True), 0)
    assert m.state is expected


def test_line_overload_needs_five_minutes_then_notifies_neighbours() -> None:
    line = make_line()
    m = line.initial_memory(0)
    x = LineInputs(current_a=450, voltage_kv=11, breaker_closed=True)
    m, actions = run(line, m, x, 0, 299, 1.0)
    assert m.state is LineState.LOADED  # above ampacity, but not yet for 5 minutes
    m, actions = line.step(m, x, 300.0)
    assert m.state is LineState.OVERLOADED
    assert any(isinstance(a, Alert) and "overload" in a.message for a in actions)
    targets = {(a.target, a.kind) for a in actions if isinstance(a, BusMessage) and a.target}
    assert {("X-1", "reduce_load"), ("X-2", "reduce_load"), ("CB-1", "prepare_for_trip")} <= targets
    pub = next(a for a in actions if isinstance(a, BusMessage) and a.topic is Topic.LOAD_CHANGES)
    assert pub.payload["transfer_options"][0]["via"] == "L-2"
    change = next(a for a in actions if isinstance(a, StateChange))
    assert (change.old, change.new, change.time) == ("Loaded", "Overloaded", 300.0)
    assert "for 300 s" in change.cause


def test_line_losses_from_impedance_and_current() -> None:
    line = make_line()  # r = 0.306 ohm/km, 2 km
    m, _ = line.step(line.initial_memory(0), LineInputs(current_a=200, breaker_closed=True), 0)
    assert m.losses_kw == pytest.approx(3 * 200**2 * 0.306 * 2 / 1000)


def test_line_fault_until_breaker_recloses() -> None:
    line = make_line()
    m, actions = line.step(line.initial_memory(0), LineInputs(current_a=8500, breaker_closed=True), 0)
    assert m.state is LineState.FAULTED
    urgent = [a for a in actions if isinstance(a, BusMessage) and a.urgent]
    # transformers and neighbours directly; the breaker and the substation hear it on fault_alerts
    assert {(a.target, a.kind) for a in urgent if a.target} == {
        ("X-1", "prepare_for_power_loss"),
        ("X-2", "prepare_for_power_loss"),
        ("L-2", "standby_for_load_transfer"),
    }
    fault = next(a for a in urgent if a.topic is Topic.FAULT_ALERTS)
    assert fault.kind == "line_fault" and fault.payload["cause"] == "fault_current"
    alert = next(a for a in actions if isinstance(a, Alert))
    assert alert.message == "L-1 fault: fault current 8500 A at or above the fault level 1600 A"
    m, _ = line.step(m, LineInputs(current_a=0, breaker_closed=False, fault_reported=True), 1)
    assert m.state is LineState.FAULTED
    m, _ = line.step(m, LineInputs(current_a=200, voltage_kv=11, breaker_closed=True), 31)
    assert m.state is LineState.OPERATIONAL


def test_line_de_energized_when_breaker_open() -> None:
    line = make_line()
    m, _ = line.step(line.initial_memory(0), LineInputs(current_a=0, breaker_closed=False), 0)
    assert m.state is LineState.DE_ENERGIZED
    m, _ = line.step(m, LineInputs(current_a=10, voltage_kv=11, breaker_closed=True), 1)
    assert m.state is LineState.OPERATIONAL


# --------------------------------------------------------------------------- transformer


def make_xfmr(**kw: Any) -> TransformerAgent:
    attrs = dict(rated_capacity=1000, secondary_voltage=415, top_oil_time_constant_min=180, regulation_enabled=False)
    attrs.update(kw)
    return TransformerAgent(
        "X-1", TransformerAttributes(**attrs), Links(substation="SUB", adjacent_transformers=("X-2",))
    )


@pytest.mark.parametrize(
    ("load_kw", "state"),
    [(500, TransformerState.NORMAL_OPERATION), (850, TransformerState.HIGH_LOAD), (1100, TransformerState.OVERLOADED)],
)
def test_transformer_load_states(load_kw: float, state: TransformerState) -> None:
    x = make_xfmr()
    m, _ = x.step(x.initial_memory(0), TransformerInputs(load_kw=load_kw, load_kvar=0, ambient_temp_c=30), 0)
    assert m.state is state


def test_transformer_capacity_notice_once_above_90_percent() -> None:
    x = make_xfmr()
    m = x.initial_memory(0)
    m, a1 = x.step(m, TransformerInputs(load_kw=950, load_kvar=0), 0)
    m, a2 = x.step(m, TransformerInputs(load_kw=960, load_kvar=0), 1)
    notices = [a for a in a1 if isinstance(a, BusMessage)]
    # the neighbour directly; the substation hears the constraint on load_changes
    assert {(a.target, a.kind) for a in notices if a.target} == {("X-2", "load_transfer_request")}
    assert {(a.topic, a.kind) for a in notices if a.topic} == {(Topic.LOAD_CHANGES, "capacity_constraint")}
    assert not [a for a in a2 if isinstance(a, BusMessage)]


def test_transformer_thermal_model_reaches_c5791_steady_state_and_ages() -> None:
    x = make_xfmr(hot_spot_alarm_c=150, hot_spot_critical_c=160, top_oil_alarm_c=120)
    m = x.initial_memory(0)
    inputs = TransformerInputs(load_kw=1200, load_kvar=0, ambient_temp_c=30)
    m, _ = run(x, m, inputs, 0, 48 * 3600, 600)
    assert m.hot_spot_c == pytest.approx(133.807, abs=0.05)
    assert m.aging_factor == pytest.approx(9.89407, rel=2e-3)
    assert m.equivalent_aging_h > 48  # aged faster than real time
    assert m.loss_of_life_percent == pytest.approx(m.equivalent_aging_h / 1800, rel=1e-9)


def test_transformer_overheating_from_measured_top_oil() -> None:
    x = make_xfmr()
    m, actions = x.step(x.initial_memory(0), TransformerInputs(load_kw=500, top_oil_temp_c=100, ambient_temp_c=30), 0)
    assert m.state is TransformerState.OVERHEATING
    assert any(isinstance(a, Alert) for a in actions)
    m, _ = x.step(m, TransformerInputs(load_kw=500, top_oil_temp_c=60, ambient_temp_c=30), 60)
    assert m.state is TransformerState.NORMAL_OPERATION


def test_tap_changer_raises_after_delay_with_ldc() -> None:
    # reference LDC vector: 122 V out, 400 A at 0.9 pf on a 600 A CT, R = 6 V, X = 3 V -> 117.528 V: raise
    x = make_xfmr(
        secondary_voltage=120,
        regulation_enabled=True,
        ldc_r_v=6,
        ldc_x_v=3,
        ct_primary_a=600,
        bandwidth_v=2,
        time_delay_s=30,
        inter_tap_delay_s=5,
        rated_capacity=100_000,
    )
    m = x.initial_memory(0)
    inputs = TransformerInputs(secondary_voltage_v=122.0, current_a=400, load_kw=900, load_kvar=900 * 0.484322)
    m, actions = run(x, m, inputs, 0, 29)
    assert not [a for a in actions if isinstance(a, ControlRequest)]
    assert m.control_voltage_v == pytest.approx(117.528, abs=1e-3)
    m, actions = run(x, m, inputs, 30, 40)
    taps = [a.value for a in actions if isinstance(a, ControlRequest)]
    assert taps == [1.0, 2.0, 3.0]  # one step, re-evaluate, next after the inter-tap delay
    assert m.state is TransformerState.VOLTAGE_REGULATION
    m, _ = x.step(m, TransformerInputs(secondary_voltage_v=124.5, current_a=400, load_kw=900, load_kvar=436), 41)
    assert m.state is TransformerState.NORMAL_OPERATION


def test_tap_changer_respects_limits() -> None:
    x = make_xfmr(
        secondary_voltage=120, regulation_enabled=True, tap_min=-2, tap_max=2, time_delay_s=0, inter_tap_delay_s=0
    )
    m, actions = run(x, x.initial_memory(0), TransformerInputs(secondary_voltage_v=100.0), 0, 10)
    assert [a.value for a in actions if isinstance(a, ControlRequest)] == [1.0, 2.0]
    assert sum(isinstance(a, Alert) for a in actions) == 1


def test_cvr_lowers_the_regulated_voltage_not_below_the_floor() -> None:
    x = make_xfmr(cvr_reduction_percent=5, cvr_floor_v=114, bandwidth_v=2)
    m = x.initial_memory(0)
    assert x.regulated_voltage_v(m) == 120
    m, _ = x.request(m, "cvr", {"on": True}, 0)
    assert x.regulated_voltage_v(m) == pytest.approx(115.0)  # 114 floor + half band


# --------------------------------------------------------------------------- circuit breaker


def make_breaker(**kw: Any) -> CircuitBreakerAgent:
    return CircuitBreakerAgent(
        "CB-1", CircuitBreakerAttributes(**kw), Links(upstream_breaker="CB-0", substation="SUB", lines=("L-1",))
    )


def test_breaker_trip_reclose_close_cycle_counts_trips_and_wear() -> None:
    cb = make_breaker(interrupt_time_s=0.05)
    m = cb.initial_memory(0)
    m, _ = cb.step(m, BreakerInputs(ia=100, ib=100, ic=100, closed=True), 0)
    assert m.state is BreakerState.CLOSED_NORMAL
    m, _ = cb.on_protection_event(m, "pickup", "51", "A", 900, 1)
    assert m.state is BreakerState.CLOSED_HIGH_CURRENT
    m, actions = cb.on_protection_event(m, "trip", "51", "A", 8500, 2)
    assert m.state is BreakerState.TRIPPED
    assert m.trip_count == 1 and m.trip_reason == "overcurrent"
    assert m.contact_wear_ka2s == pytest.approx(8.5**2 * 0.05)
    # the upstream breaker directly; the substation and the other breakers through fault_alerts
    assert {a.target for a in actions if isinstance(a, BusMessage) and a.target} == {"CB-0"}
    trip = next(a for a in actions if isinstance(a, BusMessage) and a.kind == "breaker_trip")
    assert trip.topic is Topic.FAULT_ALERTS and trip.payload["cause"] == "phase_fault"
    m, _ = cb.step(m, BreakerInputs(closed=False), 2.1)
    assert m.state is BreakerState.TRIPPED  # opening after a trip is not a manual open
    m, _ = cb.on_protection_event(m, "reclose", "79", "", 0, 32)
    assert m.state is BreakerState.RECLOSING
    m, _ = cb.step(m, BreakerInputs(closed=True, ia=90), 32.1)
    assert m.state is BreakerState.CLOSED_NORMAL


def test_breaker_locks_out_on_repeated_trips_and_needs_reset() -> None:
    cb = make_breaker(max_trips_in_period=2, trip_count_period_s=600)
    m = cb.initial_memory(0)
    for i in range(3):
        m, actions = cb.on_protection_event(m, "trip", "51N", "N", 2000, 10 + 60 * i)
        if i < 2:
            m, _ = cb.step(m, BreakerInputs(closed=False), 10.1 + 60 * i)
            m, _ = cb.on_protection_event(m, "reclose", "79", "", 0, 20 + 60 * i)
            m, _ = cb.step(m, BreakerInputs(closed=True), 20.1 + 60 * i)
            assert m.state is BreakerState.CLOSED_NORMAL
    assert m.state is BreakerState.LOCKED_OUT
    lockout = next(a for a in actions if isinstance(a, Alert) and a.severity is Severity.CRITICAL)
    assert (
        lockout.message.startswith("CB-1 locked out after 3 trip(s) within 600 s") and "ground fault" in lockout.message
    )
    assert m.trip_reason == "ground_fault"
    with pytest.raises(ValueError, match="Locked_Out"):
        cb.request(m, "close", {}, 200)
    m, _ = cb.request(m, "reset", {}, 300)
    assert m.state is BreakerState.OPEN_MANUAL
    m, actions = cb.request(m, "close", {}, 301)
    assert actions == [ControlRequest(agent_id="CB-1", point_name="close_cmd", value=True, reason="operator close")]


def test_breaker_remembers_only_the_trips_that_decide_its_lockout() -> None:
    """A storm of trips with resets between them (e.g. a test set or a bench) keeps the
    memory bounded; the lockout still comes on the trip past the limit."""
    cb = make_breaker(max_trips_in_period=3, trip_count_period_s=86_400)
    m = cb.initial_memory(0)
    lockouts = 0
    for i in range(500):
        if m.state is not BreakerState.OPEN_MANUAL:  # reclosed by protection after the last trip
            m, _ = cb.on_protection_event(m, "reclose", "79", "", 0.0, 10.0 * i)
        else:  # reset after the lockout: closed by the operator
            m = cb.expect_operation(m, "close", "local:op", 10.0 * i)
        m, _ = cb.step(m, BreakerInputs(closed=True), 10.0 * i + 0.5)
        m, _ = cb.on_protection_event(m, "trip", "50", "A", 9000, 10.0 * i + 1)
        assert len(m.recent_trips) <= 4
        if m.state is BreakerState.LOCKED_OUT:
            lockouts += 1
            assert len(m.recent_trips) == 4
            m, _ = cb.request(m, "reset", {}, 10.0 * i + 2)
    assert m.trip_count == 500 and lockouts == 500 // 4


def test_breaker_manual_open_and_maintenance() -> None:
    cb = CircuitBreakerAgent("CB-6", CircuitBreakerAttributes(), command_points=("position_cmd",))
    m, actions = cb.request(cb.initial_memory(0), "open", {}, 1)
    assert m.state is BreakerState.OPEN_MANUAL
    assert actions[0] == ControlRequest(agent_id="CB-6", point_name="position_cmd", value=False, reason="operator open")
    m, _ = cb.request(m, "maintenance", {"on": True}, 2)
    assert m.state is BreakerState.MAINTENANCE
    m, _ = cb.request(m, "maintenance", {"on": False}, 3)
    assert m.state is BreakerState.OPEN_MANUAL


def test_breaker_maintenance_due_on_contact_wear() -> None:
    cb = make_breaker(contact_wear_limit_ka2s=10, interrupt_time_s=0.1)
    m, actions = cb.on_protection_event(cb.initial_memory(0), "trip", "50", "B", 10_000, 1)
    assert any(isinstance(a, BusMessage) and a.topic is Topic.MAINTENANCE_SCHEDULED for a in actions)


# --------------------------------------------------------------------------- substation


def make_sub(**kw: Any) -> SubstationAgent:
    feeders = (FeederInfo("L-1", "CB-1", 1250, ({"via": "L-2"},)), FeederInfo("L-2", "CB-2", 750))
    kw.setdefault("load_persistence_s", 0.0)
    return SubstationAgent(
        "SUB", SubstationAttributes(rated_capacity=30, **kw), Links(transformers=("X-1",)), feeders=feeders
    )


def test_substation_forecast_time_to_capacity() -> None:
    sub = make_sub(forecast_window_s=3600)
    m = sub.initial_memory(0)
    # 28.5 MW rising 0.5 MW/h: capacity (30 MW) exceeded in about 3 h
    for i in range(61):
        t = i * 60.0
        m, actions = sub.step(m, SubstationInputs(total_load_kw=28_000 + 500 * t / 3600, total_load_kvar=0), t)
    assert m.state is SubstationState.HIGH_LOAD
    assert m.trend_kw_per_h == pytest.approx(500, rel=1e-6)
    assert m.time_to_capacity_s == pytest.approx(3 * 3600, rel=1e-3)


def test_substation_acts_on_the_forecast_crossing_before_the_load_gets_there() -> None:
    sub = make_sub(forecast_lead_s=3600)
    m, _ = sub.step(sub.initial_memory(0), SubstationInputs(total_load_kw=25_000, total_load_kvar=0), 0)
    assert m.state is SubstationState.NORMAL_OPERATION
    # the forecast crosses 90 % (27 MW) in 2 h: not yet
    m = sub.on_forecast(m, 7200.0, 28_000.0, 10)
    m, _ = sub.step(m, SubstationInputs(total_load_kw=25_000, total_load_kvar=0), 11)
    assert m.state is SubstationState.NORMAL_OPERATION
    # in 40 minutes: the substation asks for transfer and plans now, at 83 % of capacity
    m = sub.on_forecast(m, 2400.0, 28_000.0, 20)
    m, actions = sub.step(m, SubstationInputs(total_load_kw=25_000, total_load_kvar=0), 21)
    assert m.state is SubstationState.HIGH_LOAD and "forecast" in m.history[-1]["cause"]
    assert any(isinstance(a, BusMessage) and a.kind == "load_transfer_request" for a in actions)
    # the forecast no longer crosses: the present value decides again
    m = sub.on_forecast(m, None, 25_500.0, 30)
    m, _ = sub.step(m, SubstationInputs(total_load_kw=20_000, total_load_kvar=0), 31)
    assert m.state is SubstationState.NORMAL_OPERATION


def test_substation_high_load_plans_shedding_least_critical_first() -> None:
    sub = make_sub(feeder_priority=["L-1", "L-2"], shed_target_percent=80)
    m, actions = sub.step(
        sub.initial_memory(0), SubstationInputs(total_load_kw=28_500, feeder_loads_kw={"L-1": 18_000, "L-2": 10_500}), 0
    )
    assert m.state is SubstationState.HIGH_LOAD
    assert [p["feeder"] for p in m.shedding_plan] == ["L-2"]
    assert any(isinstance(a, BusMessage) and a.kind == "load_transfer_request" for a in actions)
    assert any(isinstance(a, BusMessage) and a.target == "X-1" and a.kind == "optimize_taps" for a in actions)
    m, _ = sub.step(m, SubstationInputs(total_load_kw=31_000), 1)
    assert m.state is SubstationState.EMERGENCY_MODE


def test_substation_load_must_persist_and_fault_current_is_not_load() -> None:
    sub = make_sub(load_persistence_s=60)
    m = sub.initial_memory(0)
    # a fault draws 3.6 times rated capacity for a fraction of a second: a feeder fault, not an emergency
    m, actions = sub.step(m, SubstationInputs(total_load_kw=110_000, faulted_feeders=("L-1",)), 0)
    assert m.state is SubstationState.FEEDER_FAULT
    assert not any(isinstance(a, BusMessage) and a.kind == "load_transfer_request" for a in actions)
    m, _ = sub.step(m, SubstationInputs(total_load_kw=10_000), 1)
    assert m.state is SubstationState.NORMAL_OPERATION
    m, _ = sub.step(m, SubstationInputs(total_load_kw=28_000), 10)
    m, _ = sub.step(m, SubstationInputs(total_load_kw=28_000), 69)
    assert m.state is SubstationState.NORMAL_OPERATION
    m, actions = sub.step(m, SubstationInputs(total_load_kw=28_000), 70)
    assert m.state is SubstationState.HIGH_LOAD
    assert any(isinstance(a, BusMessage) and a.kind == "optimize_taps" and a.payload["cvr"] for a in actions)
    m, actions = sub.step(m, SubstationInputs(total_load_kw=20_000), 80)
    assert m.state is SubstationState.NORMAL_OPERATION
    assert any(isinstance(a, BusMessage) and a.kind == "optimize_taps" and not a.payload["cvr"] for a in actions)


def test_substation_coordinates_a_feeder_fault_once() -> None:
    sub = make_sub()
    m, actions = sub.step(sub.initial_memory(0), SubstationInputs(total_load_kw=10_000, faulted_feeders=("L-1",)), 0)
    assert m.state is SubstationState.FEEDER_FAULT
    plan = next(a for a in actions if isinstance(a, BusMessage) and a.kind == "reroute_plan")
    assert plan.urgent and plan.payload["customers_affected"] == 1250 and plan.payload["isolate_with"] == "CB-1"
    m, again = sub.step(m, SubstationInputs(total_load_kw=10_000, faulted_feeders=("L-1",)), 1)
    assert not [a for a in again if isinstance(a, BusMessage)]
    m, _ = sub.step(m, SubstationInputs(total_load_kw=10_000), 2)
    assert m.state is SubstationState.NORMAL_OPERATION


# --------------------------------------------------------------------------- capacitor bank


def make_cap(**kw: Any) -> CapacitorBankAgent:
    attrs = dict(
        voltage_level=12.0,
        num_steps=3,
        voltage_setpoint_v=121,
        bandwidth_v=6,
        on_delay_s=30,
        off_delay_s=30,
        discharge_time_s=300,
        max_daily_operations=4,
    )
    attrs.update(kw)
    return CapacitorBankAgent("CAP-1", CapacitorBankAttributes(**attrs))


def kv(v120: float) -> float:
    return v120 / 120 * 12.0


def test_capacitor_closes_one_step_after_delay_and_waits_for_feedback() -> None:
    cap = make_cap()
    m = cap.initial_memory(0)
    m, actions = run(cap, m, CapacitorInputs(bus_voltage_kv=kv(116), steps_active=0, wall_time=0), 0, 29)
    assert not [a for a in actions if isinstance(a, ControlRequest)]
    m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(116), steps_active=0, wall_time=30), 30)
    assert [a.value for a in actions if isinstance(a, ControlRequest)] == [1.0]
    assert m.state is CapacitorState.SWITCHING
    m, _ = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(117.5), steps_active=1, wall_time=31), 31)
    assert m.state is CapacitorState.PARTIAL_ENERGIZATION


def test_capacitor_var_support_closes_steps_up_to_the_set_point() -> None:
    cap = make_cap(on_delay_s=0)
    m = cap.initial_memory(0)
    m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(119.5), steps_active=0), 0)
    assert not [a for a in actions if isinstance(a, ControlRequest)]  # inside the band: nothing to do
    m, _ = cap.request(m, "var_support", {"on": True}, 1)
    m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(119.5), steps_active=0), 2)
    assert [a.value for a in actions if isinstance(a, ControlRequest)] == [1.0]
    m, _ = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(121.2), steps_active=1), 3)
    m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(121.2), steps_active=1), 4)
    assert not [a for a in actions if isinstance(a, ControlRequest)]  # at the set point: stop


def test_capacitor_discharge_lockout_after_opening() -> None:
    cap = make_cap(on_delay_s=0, off_delay_s=0)
    m = cap.initial_memory(0)
    m, _ = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(116), steps_active=0), 0)
    m, _ = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(121), steps_active=1), 1)
    m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(126), steps_active=1), 2)  # open step 1
    assert [a.value for a in actions if isinstance(a, ControlRequest)] == [0.0]
    m, _ = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(121), steps_active=0), 3)
    m, actions = run(cap, m, CapacitorInputs(bus_voltage_kv=kv(116), steps_active=0), 4, 301, 1)
    assert not [a for a in actions if isinstance(a, ControlRequest)]  # step 1 still discharging
    m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(116), steps_active=0), 302)
    assert [a.value for a in actions if isinstance(a, ControlRequest)] == [1.0]


def test_capacitor_switching_failure_locks_out() -> None:
    cap = make_cap(on_delay_s=0, switching_timeout_s=10)
    m, _ = cap.step(cap.initial_memory(0), CapacitorInputs(bus_voltage_kv=kv(116), steps_active=0), 0)
    m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(116), steps_active=0), 10)
    assert m.state is CapacitorState.LOCKED_OUT
    m, _ = cap.request(m, "reset", {}, 20)
    assert m.state is CapacitorState.ALL_STEPS_OFF


def test_capacitor_excessive_switching_widens_deadband_and_notifies() -> None:
    cap = make_cap(
        on_delay_s=0, off_delay_s=0, discharge_time_s=0, excessive_switching_count=3, max_daily_operations=100
    )
    m = cap.initial_memory(0)
    alerts: list[Alert] = []
    t = 0.0
    steps = 0
    for i in range(6):  # hunting: low, high, low, high ...
        v = 116 if i % 2 == 0 else 126
        m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(v), steps_active=steps), t)
        for a in actions:
            if isinstance(a, ControlRequest):
                steps = int(a.value)
        alerts += [a for a in actions if isinstance(a, Alert)]
        m, _ = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(121), steps_active=steps), t + 1)
        t += 10
    assert m.deadband_widened
    assert cap.bandwidth_v(m) == pytest.approx(9.0)
    assert any("Excessive switching" in a.message for a in alerts)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(110, 132), st.floats(1, 4000)), min_size=1, max_size=120), st.integers(1, 6))
def test_capacitor_never_exceeds_its_daily_limit(trace: list[tuple[float, float]], limit: int) -> None:
    cap = make_cap(on_delay_s=0, off_delay_s=0, discharge_time_s=0, max_daily_operations=limit)
    m = cap.initial_memory(0)
    t, steps = 0.0, 0
    per_day: dict[int, int] = {}
    for v, dt in trace:
        t += dt
        m, actions = cap.step(m, CapacitorInputs(bus_voltage_kv=kv(v), steps_active=steps, wall_time=t), t)
        for a in actions:
            if isinstance(a, ControlRequest):
                steps = int(a.value)
                per_day[int(t // 86400)] = per_day.get(int(t // 86400), 0) + 1
        assert m.steps_active <= cap.attrs.num_steps
    assert all(n <= limit for n in per_day.values())


# --------------------------------------------------------------------------- renewable


def make_der(**kw: Any) -> RenewableEnergyAgent:
    attrs = dict(rated_capacity=500, ieee1547_category="B", enter_service_delay_s=300)
    attrs.update(kw)
    return RenewableEnergyAgent("PV-1", RenewableEnergyAttributes(**attrs))


def connected(m: Any, agent: RenewableEnergyAgent, **kw: Any) -> Any:
    m, _ = agent.step(m, DerInputs(connected=True, voltage_pu=1.0, active_power_kw=300, **kw), 0)
    return m


def test_der_anti_islanding_and_reconnection_after_enter_service_delay() -> None:
    der = make_der()
    m = connected(der.initial_memory(0), der)
    assert m.state is DerState.GENERATING
    m, actions = der.step(m, DerInputs(connected=True, voltage_pu=1.0, grid_available=False, active_power_kw=300), 10)
    assert m.state is DerState.ISLANDED
    assert (
        ControlRequest(agent_id="PV-1", point_name="connect_cmd", value=False, reason="anti-islanding: grid fault")
        in actions
    )
    m, _ = der.step(m, DerInputs(connected=False, voltage_pu=0.0, grid_available=False), 11)
    assert m.state is DerState.OFFLINE
    grid_back = DerInputs(connected=False, voltage_pu=1.0, grid_available=True)
    m, actions = run(der, m, grid_back, 100, 399, 1)
    assert not [a for a in actions if isinstance(a, ControlRequest)]  # 299 s of good grid: not yet
    m, actions = der.step(m, grid_back, 400)
    assert [a.value for a in actions if isinstance(a, ControlRequest)] == [True]
    m, _ = der.step(m, DerInputs(connected=True, voltage_pu=1.0, active_power_kw=0), 401)
    assert m.state is DerState.STANDBY


def test_der_reconnection_timer_restarts_if_voltage_leaves_window() -> None:
    der = make_der(enter_service_delay_s=60)
    m = der.initial_memory(0)
    m, a1 = run(der, m, DerInputs(connected=False, voltage_pu=1.0), 0, 50, 1)
    m, _ = der.step(m, DerInputs(connected=False, voltage_pu=1.08), 51)  # above 1.05: restart
    m, a2 = run(der, m, DerInputs(connected=False, voltage_pu=1.0), 52, 111, 1)
    assert not [a for a in a1 + a2 if isinstance(a, ControlRequest)]
    m, a3 = der.step(m, DerInputs(connected=False, voltage_pu=1.0), 112)
    assert [a.value for a in a3 if isinstance(a, ControlRequest)] == [True]


def test_der_curtailment_on_request_and_volt_watt() -> None:
    der = make_der()
    m = connected(der.initial_memory(0), der)
    m, _ = der.request(m, "curtail", {"pct": 40}, 1)
    m, actions = der.step(m, DerInputs(connected=True, voltage_pu=1.0, active_power_kw=200), 2)
    assert m.state is DerState.CURTAILED
    assert [a.value for a in actions if isinstance(a, ControlRequest) and a.point_name == "p_limit_pct"] == [40.0]
    m, _ = der.request(m, "curtail", {"pct": None}, 3)
    m, actions = der.step(m, DerInputs(connected=True, voltage_pu=1.08, active_power_kw=300), 4)
    assert m.state is DerState.GENERATING
    assert [a.value for a in actions if isinstance(a, ControlRequest) and a.point_name == "p_limit_pct"] == [60.0]
    with pytest.raises(ValueError, match="0-100"):
        der.request(m, "curtail", {"pct": 140}, 5)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.85, 1.15), st.sampled_from(["A", "B"]))
def test_der_reactive_power_follows_its_curve(voltage: float, category: str) -> None:
    der = make_der(ieee1547_category=category, reactive_power_mode="volt-var")
    m = connected(der.initial_memory(0), der)
    last_q = None
    for i in range(1, 120):  # long after the open-loop response time
        m, actions = der.step(m, DerInputs(connected=True, voltage_pu=voltage, active_power_kw=300), float(i))
        for a in actions:
            if isinstance(a, ControlRequest) and a.point_name == "q_setpoint_kvar":
                last_q = a.value
    expected = volt_var_q_pu(voltage, category) * 500
    assert m.q_target_kvar == pytest.approx(expected, abs=1e-3)
    sent = last_q if last_q is not None else m.q_command_kvar
    assert sent is not None and abs(sent - expected) <= der.q_deadband_kvar + 1e-6


def test_transformer_load_states_have_hysteresis() -> None:
    x = make_xfmr()
    m = x.initial_memory(0)
    seen = []
    for t, kw in enumerate([1010, 995, 1005, 990, 975, 790, 785, 770]):
        m, _ = x.step(m, TransformerInputs(load_kw=kw, load_kvar=0), float(t))
        seen.append(m.state.value)
    assert seen == [
        "Overloaded",
        "Overloaded",
        "Overloaded",
        "Overloaded",
        "High_Load",
        "High_Load",
        "High_Load",
        "Normal_Operation",
    ]


def test_transformer_asks_for_maintenance_after_a_day_of_fast_aging() -> None:
    # 12 h at a 110 °C hot spot and 12 h at 120 °C: F_EQA = 1.85446 (reference sheet); alarm above 1.5
    x = make_xfmr(
        aging_alarm_factor=1.5,
        hot_spot_alarm_c=150,
        hot_spot_critical_c=160,
        top_oil_alarm_c=140,
        winding_time_constant_min=0.001,
    )
    m = x.initial_memory(0)
    msgs: list[BusMessage] = []
    for i in range(0, 24 * 3600 + 1, 60):
        top_oil = 85.0 if i < 12 * 3600 else 95.0  # ambient 30 + rise; hot-spot rise at K = 1 is 25 °C
        m, actions = x.step(
            m, TransformerInputs(load_kw=1000, load_kvar=0, top_oil_temp_c=top_oil, ambient_temp_c=30), float(i)
        )
        msgs += [a for a in actions if isinstance(a, BusMessage) and a.topic is Topic.MAINTENANCE_SCHEDULED]
    assert len(msgs) == 1
    assert msgs[0].payload["equivalent_aging_factor"] == pytest.approx(1.85446, rel=2e-3)
    assert msgs[0].payload["loss_of_life_percent_day"] == pytest.approx(0.0247262, rel=2e-3)


def test_substation_emergency_from_an_overheated_transformer_says_so() -> None:
    sub = make_sub()
    m, actions = sub.step(
        sub.initial_memory(0), SubstationInputs(total_load_kw=12_000, overheated_transformers=("X-1",)), 0
    )
    assert m.state is SubstationState.EMERGENCY_MODE
    (alert,) = [a for a in actions if isinstance(a, Alert)]
    assert alert.message == "Emergency: transformer(s) above critical temperature: X-1; load 40 % of 30 MVA"


def test_only_overcurrent_pickups_mean_high_current() -> None:
    cb = make_breaker()
    m, _ = cb.step(cb.initial_memory(0), BreakerInputs(closed=True, ia=100), 0)
    for element in ("27", "59", "81U"):
        m, _ = cb.on_protection_event(m, "pickup", element, "", 0, 1)
        m, _ = cb.step(m, BreakerInputs(closed=True, ia=100), 1.1)
        assert m.state is BreakerState.CLOSED_NORMAL, element
    m, _ = cb.on_protection_event(m, "pickup", "51P", "A", 700, 2)
    assert m.state is BreakerState.CLOSED_HIGH_CURRENT
    m, _ = cb.on_protection_event(m, "dropout", "27", "", 0, 2.1)  # another element's dropout changes nothing
    m, _ = cb.step(m, BreakerInputs(closed=True, ia=100), 2.2)
    assert m.state is BreakerState.CLOSED_HIGH_CURRENT
    m, _ = cb.on_protection_event(m, "dropout", "51P", "A", 100, 3)
    m, _ = cb.step(m, BreakerInputs(closed=True, ia=100), 3.1)
    assert m.state is BreakerState.CLOSED_NORMAL
