"""Capacitor bank control modes (var, time, temperature, manual) with the voltage override and guards."""

from __future__ import annotations

import copy
import math
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.agents.actions import Alert, ControlRequest
from gateway.agents.elements.capacitor_bank import CapacitorBankAgent, CapacitorInputs, CapacitorMemory, CapacitorState
from gateway.agents.runtime import AgentRuntime
from gateway.agents.schema import CapacitorBankAttributes
from gateway.config import ConfigError, validate

SITE_FILE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml"
DAY_S = 86400.0
MIDNIGHT = 1_790_000_000.0 - 1_790_000_000.0 % DAY_S
"""A UTC midnight, as the wall time of `now = 0`."""
STEP_KVAR = 300.0  # 1.2 MVAR in 4 steps


def make(mode: str, **kw: Any) -> CapacitorBankAgent:
    attrs: dict[str, Any] = dict(
        control_mode=mode,
        rated_capacity=1.2,
        num_steps=4,
        voltage_level=12.0,
        on_delay_s=30,
        off_delay_s=30,
        discharge_time_s=300,
        max_daily_operations=8,
    )
    attrs.update(kw)
    return CapacitorBankAgent("CAP-1", CapacitorBankAttributes(**attrs))


def kv(v120: float) -> float:
    return v120 / 120.0 * 12.0


def commands(actions: list[Any]) -> list[float]:
    return [float(a.value) for a in actions if isinstance(a, ControlRequest)]


class Bank:
    """The bank and a plant around it: commands are confirmed on the next cycle."""

    def __init__(self, agent: CapacitorBankAgent, now: float = 0.0) -> None:
        self.agent = agent
        self.memory: CapacitorMemory = agent.initial_memory(now)
        self.steps = 0
        self.log: list[tuple[float, float]] = []
        self.alerts: list[Alert] = []

    def step(self, now: float, **inputs: Any) -> list[float]:
        inputs.setdefault("wall_time", MIDNIGHT + now)
        self.memory, actions = self.agent.step(self.memory, CapacitorInputs(steps_active=self.steps, **inputs), now)
        cmds = commands(actions)
        self.alerts += [a for a in actions if isinstance(a, Alert)]
        for value in cmds:
            self.log.append((now, value))
            self.steps = int(value)
        return cmds

    def run(self, start: float, stop: float, dt: float = 1.0, **inputs: Any) -> list[tuple[float, float]]:
        """Step from start to stop (inclusive); inputs may be callables of (time, steps)."""
        out = []
        n = int(math.floor((stop - start) / dt + 1e-9))
        for i in range(n + 1):
            t = start + i * dt
            values = {k: (v(t, self.steps) if callable(v) else v) for k, v in inputs.items()}
            out += [(t, c) for c in self.step(t, **values)]
        return out


# --------------------------------------------------------------------------- var


def source_kvar(load_kvar: float) -> Any:
    """Reactive power from the source: the load's less what the closed steps supply."""
    return lambda _t, steps: load_kvar - steps * STEP_KVAR


def test_var_mode_closes_after_the_on_delay_one_step_at_a_time() -> None:
    bank = Bank(make("var"))
    assert bank.run(0, 29, source_reactive_power_kvar=source_kvar(800)) == []  # 800 > 200 but not yet 30 s
    assert bank.run(30, 30, source_reactive_power_kvar=source_kvar(800)) == [(30, 1.0)]
    assert bank.memory.state is CapacitorState.SWITCHING
    # 500 kvar left: the next step after another full ON delay, counted from the cycle after the feedback
    ops = bank.run(31, 200, source_reactive_power_kvar=source_kvar(800))
    assert ops == [(62, 2.0)]  # 800 − 2·300 = 200 kvar is not above 200: stop there
    assert bank.memory.state is CapacitorState.PARTIAL_ENERGIZATION


def test_var_mode_opens_when_the_source_is_leading() -> None:
    bank = Bank(make("var"))
    bank.run(0, 100, source_reactive_power_kvar=source_kvar(800))
    assert bank.steps == 2
    # load falls to 400 kvar: 400 − 600 = −200 < −100 → open after the OFF delay, then −100+... holds
    ops = bank.run(101, 300, source_reactive_power_kvar=source_kvar(400))
    assert ops == [(131, 1.0)]
    assert bank.steps == 1


def test_var_mode_holds_without_a_source_reading() -> None:
    bank = Bank(make("var"))
    assert bank.run(0, 100, reactive_power_kvar=900.0) == []  # the bank's own output is not the source


def test_var_mode_defaults_come_from_the_step_size() -> None:
    a = CapacitorBankAttributes(control_mode="var", rated_capacity=0.9, num_steps=3)
    assert a.step_kvar == pytest.approx(300.0)
    assert a.var_on_threshold_kvar == pytest.approx(200.0)
    assert a.var_off_threshold_kvar == pytest.approx(-100.0)


# --------------------------------------------------------------------------- time


def test_time_mode_brings_steps_in_after_schedule_on_and_out_after_schedule_off() -> None:
    # local time UTC+3: 07:00 local is 04:00 UTC
    bank = Bank(make("time", schedule_on="07:00", schedule_off="22:00", utc_offset_h=3))
    assert bank.run(0, 4 * 3600 - 1, dt=30) == []
    ops = bank.run(4 * 3600, 4 * 3600 + 600, dt=10)
    assert [c for _, c in ops] == [1.0, 2.0, 3.0, 4.0]
    times = [t for t, _ in ops]
    assert times[0] == 4 * 3600 + 30  # the ON delay
    assert all(b - a >= 30 for a, b in zip(times, times[1:]))  # one step per ON delay
    assert bank.memory.state is CapacitorState.FULLY_ENERGIZED
    assert bank.run(4 * 3600 + 610, 19 * 3600 - 10, dt=60) == []  # held all day
    ops = bank.run(19 * 3600, 19 * 3600 + 600, dt=10)  # 22:00 local
    assert [c for _, c in ops] == [3.0, 2.0, 1.0, 0.0]
    assert ops[0][0] == 19 * 3600 + 30
    assert bank.memory.state is CapacitorState.ALL_STEPS_OFF


def test_time_mode_window_across_midnight() -> None:
    bank = Bank(make("time", num_steps=1, max_daily_operations=2, schedule_on="22:00", schedule_off="02:00"))
    assert bank.run(21 * 3600, 22 * 3600 - 1, dt=60) == []
    assert [c for _, c in bank.run(22 * 3600, 22 * 3600 + 60)] == [1.0]
    assert bank.run(22 * 3600 + 61, DAY_S + 2 * 3600 - 1, dt=60) == []  # still in after midnight
    assert [c for _, c in bank.run(DAY_S + 2 * 3600, DAY_S + 2 * 3600 + 60)] == [0.0]


def test_time_mode_holds_without_wall_time() -> None:
    bank = Bank(make("time", schedule_on="00:00", schedule_off="23:59"))
    assert bank.run(0, 600, wall_time=None) == []


def test_time_mode_respects_the_daily_limit_and_says_so() -> None:
    bank = Bank(make("time", num_steps=2, max_daily_operations=4, discharge_time_s=0))
    bank.run(7 * 3600, 7 * 3600 + 120)
    bank.run(22 * 3600, 22 * 3600 + 120)
    assert [c for _, c in bank.log] == [1.0, 2.0, 1.0, 0.0]
    # an operator moves the schedule: the limit for today is spent
    bank.agent = make(
        "time", num_steps=2, max_daily_operations=4, discharge_time_s=0, schedule_on="22:30", schedule_off="23:30"
    )
    assert bank.run(22 * 3600 + 1800, 23 * 3600) == []
    assert any("daily switching limit 4" in a.message for a in bank.alerts)
    assert bank.memory.operations_today == 4


# --------------------------------------------------------------------------- temperature


def test_temperature_mode_with_hysteresis() -> None:
    bank = Bank(make("temperature", temp_on_c=30, temp_off_c=25, discharge_time_s=0))
    assert bank.run(0, 600, ambient_temp_c=28.0) == []  # inside the band: hold
    assert bank.run(601, 630, ambient_temp_c=31.0) == []  # not yet the ON delay
    ops = bank.run(631, 800, ambient_temp_c=31.0)
    assert [c for _, c in ops] == [1.0, 2.0, 3.0, 4.0]
    assert bank.run(801, 2000, ambient_temp_c=27.0) == []  # cooler but above temp_off: hold
    ops = bank.run(2001, 2200, ambient_temp_c=24.0)
    assert [c for _, c in ops] == [3.0, 2.0, 1.0, 0.0]
    assert ops[0][0] == 2031


def test_temperature_mode_ignores_impossible_readings() -> None:
    bank = Bank(make("temperature"))
    assert bank.run(0, 300, ambient_temp_c=-273.0) == []
    assert bank.run(301, 600, ambient_temp_c=1e6) == []
    assert bank.memory.ambient_c is None


def test_temperature_mode_waits_for_the_discharge_time() -> None:
    bank = Bank(make("temperature", on_delay_s=0, off_delay_s=0, discharge_time_s=300))
    bank.run(0, 2, ambient_temp_c=35.0)
    assert bank.steps >= 1
    ops = bank.run(3, 20, ambient_temp_c=10.0)
    opened = {c: t for t, c in ops}
    assert bank.steps == 0 and 0.0 in opened
    ops = bank.run(21, 400, ambient_temp_c=35.0)
    assert ops[0] == (opened[0.0] + 300, 1.0)


# --------------------------------------------------------------------------- voltage override


@pytest.mark.parametrize(
    "mode,inputs",
    [
        ("var", {"source_reactive_power_kvar": 2000.0}),
        ("time", {}),
        ("temperature", {"ambient_temp_c": 40.0}),
        ("voltage", {}),
    ],
)
def test_override_opens_above_vmax_whatever_the_mode_wants(mode: str, inputs: dict[str, Any]) -> None:
    kw = {"schedule_on": "00:00", "schedule_off": "23:59"} if mode == "time" else {}
    bank = Bank(make(mode, discharge_time_s=0, **kw))
    bank.steps = 2
    ops = bank.run(0, 100, bus_voltage_kv=kv(127.0), **inputs)
    assert ops[0] == (30, 1.0)  # OFF delay, then one step at a time
    assert [c for _, c in ops] == [1.0, 0.0]
    assert "voltage override" in bank.memory.last_reason


@pytest.mark.parametrize(
    "mode,inputs",
    [
        ("var", {"source_reactive_power_kvar": -2000.0}),
        ("time", {}),
        ("temperature", {"ambient_temp_c": 0.0}),
    ],
)
def test_override_closes_below_vmin_whatever_the_mode_wants(mode: str, inputs: dict[str, Any]) -> None:
    kw = {"schedule_on": "12:00", "schedule_off": "13:00"} if mode == "time" else {}
    bank = Bank(make(mode, **kw))
    ops = bank.run(0, 30, bus_voltage_kv=kv(113.0), **inputs)
    assert ops == [(30, 1.0)]
    assert "below 115.0 V" in bank.memory.last_reason


def test_override_can_be_switched_off_and_never_acts_on_a_dead_bus() -> None:
    bank = Bank(make("var", voltage_override=False))
    assert bank.run(0, 100, bus_voltage_kv=kv(113.0), source_reactive_power_kvar=0.0) == []
    bank = Bank(make("var"))
    assert bank.run(0, 100, bus_voltage_kv=0.0, source_reactive_power_kvar=0.0) == []


def test_mode_does_not_close_a_step_the_override_would_open_again() -> None:
    """A step lifted the bus 1.5 V: near Vmax the mode stops closing instead of hunting."""
    bank = Bank(make("temperature", on_delay_s=0, off_delay_s=0, discharge_time_s=0, max_daily_operations=50))

    def voltage(_t: float, steps: int) -> float:
        return kv(122.0 + 1.5 * steps)

    bank.run(0, 600, bus_voltage_kv=voltage, ambient_temp_c=35.0)
    assert bank.memory.step_change_v == pytest.approx(1.5)
    assert bank.steps == 2  # 125 V: a third step would give 126.5 V, above Vmax
    assert len(bank.log) == 2


@pytest.mark.parametrize(
    "mode,inputs",
    [
        ("var", {"source_reactive_power_kvar": -2000.0}),
        ("time", {}),
        ("temperature", {"ambient_temp_c": 0.0}),
    ],
)
def test_var_support_keeps_steps_in_and_closes_up_to_the_set_point(mode: str, inputs: dict[str, Any]) -> None:
    kw = {"schedule_on": "12:00", "schedule_off": "13:00"} if mode == "time" else {}
    bank = Bank(make(mode, **kw))
    bank.steps = 1
    bank.memory, _ = bank.agent.request(bank.memory, "var_support", {"on": True}, 0.0)
    bus = {"bus_voltage_kv": lambda _t, steps: kv(118.5 + 1.0 * steps)}
    assert [c for _, c in bank.run(0, 200, **bus, **inputs)] == [2.0, 3.0]  # 121.5 V: at the set point, hold
    bank.memory, _ = bank.agent.request(bank.memory, "var_support", {"on": False}, 201.0)
    assert [c for _, c in bank.run(201, 240, bus_voltage_kv=kv(121.5), **inputs)] == [2.0]  # the mode again


def test_manual_mode_never_switches_on_its_own() -> None:
    bank = Bank(make("manual", on_delay_s=0, off_delay_s=0))
    assert bank.run(0, 600, bus_voltage_kv=kv(100.0), source_reactive_power_kvar=5000.0, ambient_temp_c=45.0) == []
    bank.steps = 4
    assert bank.run(601, 1200, bus_voltage_kv=kv(135.0), source_reactive_power_kvar=-5000.0) == []


def test_operator_steps_in_manual_mode_under_the_guards() -> None:
    bank = Bank(make("manual", max_daily_operations=1))
    bank.step(0.0, bus_voltage_kv=kv(120.0))
    bank.memory, actions = bank.agent.request(bank.memory, "close_step", {}, 1.0)
    assert commands(actions) == [1.0]
    assert bank.memory.state is CapacitorState.SWITCHING
    with pytest.raises(ValueError, match="Switching"):
        bank.agent.request(bank.memory, "close_step", {}, 1.5)
    bank.steps = 1
    bank.step(2.0)
    bank.memory, actions = bank.agent.request(bank.memory, "open_step", {"reason": "feeder work"}, 3.0)
    assert [a.reason for a in actions if isinstance(a, ControlRequest)] == ["feeder work"]
    bank.steps = 0
    bank.step(4.0)
    with pytest.raises(ValueError, match="discharging; it may close in 299 s"):
        bank.agent.request(bank.memory, "close_step", {}, 4.0)
    with pytest.raises(ValueError, match="no step is on"):
        bank.agent.request(bank.memory, "open_step", {}, 4.0)
    bank.memory, actions = bank.agent.request(bank.memory, "close_step", {}, 303.0)
    assert commands(actions) == [1.0]  # operators are not held to the automatic daily limit
    assert bank.memory.operations_today == 3
    with pytest.raises(ValueError, match="close_step, open_step"):
        bank.agent.request(bank.memory, "step", {}, 304.0)


# --------------------------------------------------------------------------- invariants


Segment = tuple[float, int, dict[str, Any], bool, str | None]


@st.composite
def trajectories(draw: Any) -> tuple[str, dict[str, Any], list[Segment]]:
    mode = draw(st.sampled_from(["voltage", "var", "time", "temperature", "manual"]))
    steps = draw(st.integers(1, 4))
    limit = draw(st.integers(2 * steps if mode == "time" else 1, 12))
    settings_ = dict(
        num_steps=steps,
        max_daily_operations=limit,
        on_delay_s=draw(st.sampled_from([0, 5, 30])),
        off_delay_s=draw(st.sampled_from([0, 5, 30])),
        discharge_time_s=draw(st.sampled_from([0, 60, 300])),
        utc_offset_h=draw(st.sampled_from([0, 3, -5.5])),
        schedule_on=draw(st.sampled_from(["06:00", "23:00"])),
        schedule_off=draw(st.sampled_from(["18:00", "01:30"])),
    )
    sample = st.fixed_dictionaries(
        {},
        optional={
            "bus_voltage_kv": st.one_of(
                st.sampled_from([kv(110.0), kv(117.0), kv(121.0), kv(125.0), kv(130.0)]), st.floats(0, 20)
            ),
            "source_reactive_power_kvar": st.one_of(st.sampled_from([-1500.0, 0.0, 1500.0]), st.floats(-3000, 3000)),
            "ambient_temp_c": st.one_of(st.sampled_from([10.0, 27.0, 40.0]), st.floats(-80, 90)),
        },
    )
    # segments: inputs held for `repeat` cycles `dt` apart; position feedback given or not; an operator's request
    items = draw(
        st.lists(
            st.tuples(
                st.sampled_from([1.0, 10.0, 61.0, 900.0, 7200.0]),
                st.integers(1, 40),
                sample,
                st.booleans(),
                st.sampled_from([None, None, "close_step", "open_step"]),
            ),
            max_size=30,
        )
    )
    return mode, settings_, items


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trajectories())
def test_never_beyond_the_daily_limit_nor_closing_a_discharging_step(
    case: tuple[str, dict[str, Any], list[Segment]],
) -> None:
    """Automatic commands stay within the daily limit (operators' steps count towards it too);
    no command of any origin closes a step within the discharge time after it was opened."""
    mode, kw, segments = case
    cap = make(mode, **kw)
    a = cap.attrs
    memory = cap.initial_memory(0.0)
    steps, now = 0, 0.0
    per_day: Counter[int] = Counter()
    opened_at: dict[int, float] = {}
    items = [
        (dt, inputs, confirm, request if i == 0 else None)
        for dt, repeat, inputs, confirm, request in segments
        for i in range(repeat)
    ]
    for dt, inputs, confirm, request in items:
        now += dt
        wall = MIDNIGHT + now
        memory, actions = cap.step(memory, CapacitorInputs(steps_active=steps, wall_time=wall, **inputs), now)
        cmds = [(c, False) for c in commands(actions)]
        assert len(cmds) <= 1
        if mode == "manual":
            assert cmds == []
        if request and not cmds:
            try:
                memory, actions = cap.request(memory, request, {}, now)
                cmds = [(c, True) for c in commands(actions)]
            except ValueError as exc:
                assert str(exc)
        for value, by_operator in cmds:
            target = int(value)
            assert abs(target - steps) == 1  # one step per operation
            if not by_operator:
                per_day[math.floor((wall + a.utc_offset_h * 3600) / DAY_S)] += 1
            if target > steps:  # closing step index `steps`
                assert now - opened_at.get(steps, -math.inf) >= a.discharge_time_s
            else:
                opened_at[target] = now
            if confirm:
                steps = target
        if memory.state is CapacitorState.LOCKED_OUT:
            memory, _ = cap.request(memory, "reset", {}, now)
    assert all(n <= a.max_daily_operations for n in per_day.values())


def test_memory_snapshot_round_trip_keeps_the_mode_timers() -> None:
    bank = Bank(make("var"))
    bank.run(0, 10, source_reactive_power_kvar=900.0)
    again = bank.agent.memory_from_dict(copy.deepcopy(bank.memory.to_dict()))
    assert again.close_since == 0
    again.shift_times(100.0)
    assert again.close_since == 100


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kw,key,words",
    [
        ({"var_on_kvar": 100.0}, "var_off_kvar", "less than one step"),
        ({"var_on_kvar": 250.0, "var_off_kvar": 0.0}, "var_off_kvar", "hunt"),
        ({"temp_on_c": 25.0, "temp_off_c": 25.0}, "temp_off_c", "below temp_on_c"),
        ({"schedule_on": "7:00"}, "schedule_on", "HH:MM"),
        ({"schedule_off": "24:00"}, "schedule_off", "HH:MM"),
        ({"schedule_on": "08:00", "schedule_off": "08:00"}, "schedule_off", "equals schedule_on"),
        ({"control_mode": "time", "max_daily_operations": 4}, "max_daily_operations", "at least 8"),
        ({"override_min_v": 126.0, "override_max_v": 120.0}, "override_max_v", "above override_min_v"),
        ({"utc_offset_h": 15}, "utc_offset_h", "less than or equal"),
        ({"control_mode": "power_factor"}, "control_mode", "voltage"),
    ],
)
def test_invalid_settings_are_refused_naming_the_key(kw: dict[str, Any], key: str, words: str) -> None:
    attrs = {"rated_capacity": 1.2, "num_steps": 4, **kw}
    with pytest.raises(ValidationError) as info:
        CapacitorBankAttributes(**attrs)
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [(key,)]
    assert words in str(errors[0]["msg"])


def _site_with_cap(**attributes: Any) -> dict[str, Any]:
    data = tomllib.loads(SITE_FILE.read_text())
    for agent in data["agents"]:
        if agent["id"] == "CAP-301":
            agent["attributes"].update(attributes)
    return data


def test_site_file_error_gives_the_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        validate(_site_with_cap(control_mode="var", var_on_kvar=50.0, var_off_kvar=0.0))
    text = str(info.value)
    assert "CAP-301].attributes.var_off_kvar" in text and "one step (300.0 kvar)" in text


def test_runtime_feeds_the_mode_inputs_from_their_points() -> None:
    site = validate(_site_with_cap(control_mode="temperature", on_delay_s=0, temp_on_c=30.0, temp_off_c=25.0))
    rt = AgentRuntime(site, now=0.0)
    rt.on_point("CAP-301", "steps_active", 0, True, 0.0)
    rt.on_point("CAP-301", "bus_voltage_kv", 11.0, True, 0.0)
    rt.on_point("CAP-301", "ambient_temp_c", 33.0, True, 0.0)
    actions = rt.tick(1.0, wall=MIDNIGHT + 1.0)
    assert [(a.agent_id, a.value) for a in actions if isinstance(a, ControlRequest)] == [("CAP-301", 1.0)]
    site = validate(_site_with_cap(control_mode="var", on_delay_s=0))
    rt = AgentRuntime(site, now=0.0)
    rt.on_point("CAP-301", "steps_active", 0, True, 0.0)
    rt.on_point("CAP-301", "source_reactive_power_kvar", 900.0, True, 0.0)
    actions = rt.tick(1.0, wall=MIDNIGHT + 1.0)
    assert [(a.agent_id, a.value) for a in actions if isinstance(a, ControlRequest)] == [("CAP-301", 1.0)]
    assert rt.show("CAP-301")["attributes"]["source_reactive_power_kvar"] == 900.0
