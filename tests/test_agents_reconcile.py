"""Breaker agents agree with the plant: measured positions against the operations the gateway knows of.

A position change the gateway announced (its own request, a protection trip or reclose, a
switching operation reported through `on_switching`) is normal; any other is a discrepancy that
raises an alarm, and the transition table says whether the agent follows the measurement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agents.actions import Alert, Severity
from gateway.agents.base import Links
from gateway.agents.elements.circuit_breaker import (
    CLOSED_STATES,
    BreakerInputs,
    BreakerMemory,
    BreakerState,
    CircuitBreakerAgent,
)
from gateway.agents.runtime import AgentRuntime
from gateway.agents.schema import CircuitBreakerAttributes
from gateway.config import load

SITE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml"
CONFIRM_S = 10.0


def breaker() -> CircuitBreakerAgent:
    return CircuitBreakerAgent(
        "CB-1",
        CircuitBreakerAttributes(position_confirm_timeout_s=CONFIRM_S),
        Links(substation="SUB", lines=("L-1",)),
        fault_level_a=1600.0,
    )


def locked_out(cb: CircuitBreakerAgent) -> BreakerMemory:
    """Closed, then a permanent fault: trip, reclose, trip, lockout; the breaker reads open."""
    m = cb.initial_memory(0)
    m, _ = cb.step(m, BreakerInputs(closed=True, ia=100), 0)
    m, _ = cb.on_protection_event(m, "trip", "51P", "A", 3000, 1)
    m, _ = cb.step(m, BreakerInputs(closed=False), 1.1)
    m, _ = cb.on_protection_event(m, "reclose", "79", "", 0, 1.5)
    m, _ = cb.step(m, BreakerInputs(closed=True, ia=3000), 1.6)
    m, _ = cb.on_protection_event(m, "trip", "51P", "A", 3000, 1.7)
    m, _ = cb.step(m, BreakerInputs(closed=False), 1.8)
    m, actions = cb.on_protection_event(m, "lockout", "79", "", 3000, 1.8)
    assert m.state is BreakerState.LOCKED_OUT
    lockout = next(a for a in actions if isinstance(a, Alert))
    assert lockout.message.startswith(
        "CB-1 locked out after 2 trip(s) (reclose sequence exhausted); last trip: phase fault (51P phase A, 3000 A)"
    )
    return m


def alerts(actions: list[Any]) -> list[Alert]:
    return [a for a in actions if isinstance(a, Alert)]


def test_locked_out_breaker_closed_outside_the_gateway_is_a_discrepancy_and_followed() -> None:
    cb = breaker()
    m = locked_out(cb)
    m, actions = cb.step(m, BreakerInputs(closed=True, ia=120), 50)
    assert m.state is BreakerState.CLOSED_NORMAL
    (alarm,) = alerts(actions)
    assert alarm.severity is Severity.CRITICAL
    assert alarm.message.startswith("CB-1 position discrepancy: closed while Locked_Out with no close known")
    last = m.history[-1]
    assert (last["old"], last["new"], last["event"]) == ("Locked_Out", "Closed_Normal", "closed_unexpected")
    assert "position discrepancy" in last["cause"]
    assert cb.attributes(m)["position_discrepancies"] == 1
    # it follows the plant once: the next readings agree and raise nothing
    m, actions = cb.step(m, BreakerInputs(closed=True, ia=120), 51)
    assert not alerts(actions) and m.state is BreakerState.CLOSED_NORMAL


def test_an_announced_close_of_a_locked_out_breaker_is_normal() -> None:
    cb = breaker()
    m = locked_out(cb)
    m = cb.expect_operation(m, "close", "local:alice", 60)
    m, actions = cb.step(m, BreakerInputs(closed=True, ia=120), 60.4)
    assert m.state is BreakerState.CLOSED_NORMAL and not alerts(actions)
    assert m.history[-1]["cause"] == "closed by local:alice" and m.history[-1]["event"] == "closed"
    assert m.sequence_trips == 0 and m.recent_trips == []  # the lockout is over


def test_an_announced_close_that_comes_too_late_is_a_discrepancy() -> None:
    cb = breaker()
    m = locked_out(cb)
    m = cb.expect_operation(m, "close", "scada:host1", 60)
    m, actions = cb.step(m, BreakerInputs(closed=True, ia=120), 60 + CONFIRM_S + 0.5)
    assert m.state is BreakerState.CLOSED_NORMAL
    assert [a.severity for a in alerts(actions)] == [Severity.CRITICAL]


@pytest.mark.parametrize("state", ["Open_Manual", "Tripped"])
def test_open_breaker_closed_with_no_close_known_is_a_major_discrepancy(state: str) -> None:
    cb = breaker()
    m = cb.initial_memory(0)
    m, _ = cb.step(m, BreakerInputs(closed=True), 0)
    if state == "Open_Manual":
        m, _ = cb.request(m, "open", {}, 1)
    else:
        m, _ = cb.on_protection_event(m, "trip", "51N", "N", 300, 1)
    m, _ = cb.step(m, BreakerInputs(closed=False), 1.1)
    assert m.state.value == state
    m, actions = cb.step(m, BreakerInputs(closed=True), 100)
    assert m.state is BreakerState.CLOSED_NORMAL
    (alarm,) = alerts(actions)
    assert alarm.severity is Severity.MAJOR and f"closed while {state}" in alarm.message


def test_uncommanded_open_alarms_and_goes_tripped() -> None:
    cb = breaker()
    m = cb.initial_memory(0)
    m, _ = cb.step(m, BreakerInputs(closed=True), 0)
    m, actions = cb.step(m, BreakerInputs(closed=False), 5)
    assert m.state is BreakerState.TRIPPED
    (alarm,) = alerts(actions)
    assert alarm.severity is Severity.MAJOR
    assert alarm.message == (
        "CB-1 opened with no protection trip and no command known to the gateway "
        "(uncommanded open: external trip, local operation or mechanism fault)"
    )
    assert m.trip_cause == "uncommanded_open" and m.trip_count == 0  # not a protection trip
    assert m.history[-1]["event"] == "opened_unexpected"


def test_announced_open_is_open_manual_with_its_origin() -> None:
    cb = breaker()
    m = cb.initial_memory(0)
    m, _ = cb.step(m, BreakerInputs(closed=True), 0)
    m = cb.expect_operation(m, "open", "flisr", 4.9)
    m, actions = cb.step(m, BreakerInputs(closed=False), 5)
    assert m.state is BreakerState.OPEN_MANUAL and not alerts(actions)
    assert m.history[-1]["cause"] == "opened by flisr"


def test_breaker_in_maintenance_read_closed_alarms_and_stays_in_maintenance() -> None:
    cb = breaker()
    m = cb.initial_memory(0)
    m, _ = cb.step(m, BreakerInputs(closed=True), 0)
    m, _ = cb.request(m, "open", {}, 1)
    m, _ = cb.step(m, BreakerInputs(closed=False), 1.1)
    m, _ = cb.request(m, "maintenance", {"on": True}, 2)
    m, actions = cb.step(m, BreakerInputs(closed=True), 30)
    assert m.state is BreakerState.MAINTENANCE
    (alarm,) = alerts(actions)
    assert alarm.severity is Severity.CRITICAL and "stays in Maintenance" in alarm.message
    assert cb.attributes(m)["position"] == "closed"
    # no repeat while it stays closed, and an open meanwhile is no alarm
    m, actions = cb.step(m, BreakerInputs(closed=True), 31)
    assert not alerts(actions)
    m, actions = cb.step(m, BreakerInputs(closed=False), 32)
    assert not alerts(actions) and m.state is BreakerState.MAINTENANCE
    m, _ = cb.request(m, "maintenance", {"on": False}, 40)
    assert m.state is BreakerState.OPEN_MANUAL


def test_a_reclose_whose_open_was_never_polled_is_followed() -> None:
    """Trip and reclose inside one poll period: the agent never reads open, yet ends closed, no alarm."""
    cb = breaker()
    m = cb.initial_memory(0)
    m, _ = cb.step(m, BreakerInputs(closed=True), 0)
    m, a1 = cb.on_protection_event(m, "trip", "50P", "A", 4000, 1.0)
    m, a2 = cb.step(m, BreakerInputs(closed=True), 1.01)  # the reading from before the trip
    assert m.state is BreakerState.TRIPPED
    m, a3 = cb.on_protection_event(m, "reclose", "79", "", 0, 1.5)
    m, a4 = cb.step(m, BreakerInputs(closed=True), 1.6)
    assert m.state is BreakerState.CLOSED_NORMAL and m.expected_operations == []
    assert not alerts(a1 + a2 + a3 + a4)


def test_first_reading_after_a_fresh_start_is_followed_without_alarm() -> None:
    cb = breaker()
    m, actions = cb.step(cb.initial_memory(0), BreakerInputs(closed=False), 0)
    assert m.state is BreakerState.OPEN_MANUAL and not alerts(actions)


def test_runtime_on_switching_and_a_simulator_restart(tmp_path: Path) -> None:
    site = load(SITE)
    rt = AgentRuntime(site, now=0.0)
    for cb in ("CB-044", "CB-045", "CB-046"):
        rt.on_point(cb, "closed", True, True, 0.0)
    rt.tick(0.0)
    # an operator opens CB-046 through the gateway: announced, normal
    rt.on_switching("CB-046", "open", "local:alice", 10.0)
    actions = rt.on_point("CB-046", "closed", False, True, 10.2)
    assert rt.show("CB-046")["state"] == "Open_Manual" and not alerts(actions)
    assert rt.show("CB-046")["last_transitions"][-1]["cause"] == "opened by local:alice"
    # CB-044 locks out; the simulator restarts with every breaker closed
    for t, kind in ((20.0, "trip"), (20.5, "reclose"), (20.6, "trip"), (20.6, "lockout")):
        rt.on_protection_event(kind, "CB-044", "51P" if kind == "trip" else "79", "A", 2500.0, t)
        rt.on_point("CB-044", "closed", kind == "reclose", True, t + 0.01)
    assert rt.show("CB-044")["state"] == "Locked_Out"
    snap = rt.snapshot()
    rt2 = AgentRuntime(site, now=100.0)
    rt2.restore(snap)
    actions = rt2.on_point("CB-044", "closed", True, True, 101.0) + rt2.tick(101.0)
    actions += rt2.on_point("CB-044", "closed", True, True, 101.5)
    assert rt2.show("CB-044")["state"] == "Closed_Normal"
    assert [(a.agent_id, a.severity) for a in alerts(actions) if a.agent_id == "CB-044"] == [
        ("CB-044", Severity.CRITICAL)
    ]
    with pytest.raises(ValueError, match="'open' or 'close'"):
        rt.on_switching("CB-044", "toggle", "local:alice", 102.0)
    rt.on_switching("NO-SUCH-SWITCH", "open", "flisr", 102.0)  # elements without an agent are left alone


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.booleans()),
        st.tuples(st.just("switch"), st.sampled_from(["open", "close"])),
        st.tuples(st.just("protection"), st.sampled_from(["trip", "reclose", "lockout", "reset"])),
        st.tuples(st.just("request"), st.sampled_from(["open", "reset"])),
        st.tuples(st.just("wait"), st.floats(0.01, 30.0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_STEPS)
def test_the_agent_agrees_with_the_plant_or_says_why_not(steps: list[tuple[str, Any]]) -> None:
    """After every reading the state agrees with the measured position, unless the breaker is in
    Maintenance or an operation is under way that the reading has not caught up with; and every
    change the agent made on a reading with nothing announced was alarmed."""
    cb = breaker()
    m = cb.initial_memory(0)
    now = 0.0
    position: bool | None = None
    for kind, arg in steps:
        now += 0.05
        if kind == "read":
            position = arg
            before = len(m.history)
            m, actions = cb.step(m, BreakerInputs(closed=arg), now)
            moves = m.history[before:]
            unexpected = [h for h in moves if h["event"] in ("closed_unexpected", "opened_unexpected")]
            assert len(alerts(actions)) >= len(
                [
                    h
                    for h in unexpected
                    if h["event"] == "closed_unexpected" or h["old"] in ("Closed_Normal", "Closed_High_Current")
                ]
            )
            pending = {e[1] for e in m.expected_operations if now - e[0] <= CONFIRM_S}
            agrees = (m.state in CLOSED_STATES) == arg
            assert agrees or m.state is BreakerState.MAINTENANCE or pending, (m.state, arg, m.expected_operations)
        elif kind == "switch":
            m = cb.expect_operation(m, arg, "scada:host1", now)
        elif kind == "protection":
            m, _ = cb.on_protection_event(m, arg, "51P" if arg == "trip" else "79", "A", 2000, now)
        elif kind == "request":
            m, _ = cb.request(m, arg, {}, now)
        else:
            now += arg
    assert position is None or m.closed == position


def test_one_operation_announced_twice_is_expected_once() -> None:
    """Protection's trip and the switching record of the same trip: after it, an open is a discrepancy again."""
    cb = breaker()
    m = cb.initial_memory(0)
    m, _ = cb.step(m, BreakerInputs(closed=True), 0)
    m, _ = cb.on_protection_event(m, "trip", "51P", "A", 3000, 1.0)
    m = cb.expect_operation(m, "open", "protection", 1.0)
    assert [e[1] for e in m.expected_operations] == ["open"]
    m, _ = cb.step(m, BreakerInputs(closed=False), 1.1)
    m, _ = cb.on_protection_event(m, "reclose", "79", "", 0, 1.5)
    m, _ = cb.step(m, BreakerInputs(closed=True, ia=100), 1.6)
    assert m.state is BreakerState.CLOSED_NORMAL and m.expected_operations == []
    m, actions = cb.step(m, BreakerInputs(closed=False), 2.0)
    assert m.state is BreakerState.TRIPPED and [a.severity for a in alerts(actions)] == [Severity.MAJOR]
