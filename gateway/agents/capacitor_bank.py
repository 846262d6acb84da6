"""Capacitor Bank agent: step-by-step voltage control with the field controller's guards.

Voltage mode on the 120 V base: below `setpoint − bandwidth/2` for `on_delay_s` close the next
step; above `setpoint + bandwidth/2` for `off_delay_s` open the last one. One step per
operation, then wait for the position feedback (Switching). A step that was opened may not
close again before `discharge_time_s` (residual charge). At most `max_daily_operations`
commands per calendar day (wall time comes in with the inputs). If more than
`excessive_switching_count` operations fall inside `excessive_switching_window_s`, the
deadband is widened by `deadband_widening_factor` and operators are told.
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.agents.actions import Action, Alert, BusMessage, ControlRequest, Severity, Topic
from gateway.agents.base import Agent, Links, Memory
from gateway.agents.fsm import IGNORE, TransitionTable, row
from gateway.agents.schema import CapacitorBankAttributes


class CapacitorState(enum.Enum):
    ALL_STEPS_OFF = "All_Steps_Off"
    PARTIAL_ENERGIZATION = "Partial_Energization"
    FULLY_ENERGIZED = "Fully_Energized"
    SWITCHING = "Switching"
    LOCKED_OUT = "Locked_Out"
    MAINTENANCE = "Maintenance"


class CapacitorEvent(enum.Enum):
    NO_STEPS_ON = enum.auto()
    SOME_STEPS_ON = enum.auto()
    ALL_STEPS_ON = enum.auto()
    STEP_COMMANDED = enum.auto()
    SWITCH_FAILED = enum.auto()
    RESET = enum.auto()
    MAINTENANCE_START = enum.auto()
    MAINTENANCE_END = enum.auto()


_S, _E = CapacitorState, CapacitorEvent
_STEADY = dict(NO_STEPS_ON=_S.ALL_STEPS_OFF, SOME_STEPS_ON=_S.PARTIAL_ENERGIZATION, ALL_STEPS_ON=_S.FULLY_ENERGIZED,
               STEP_COMMANDED=_S.SWITCHING, SWITCH_FAILED=_S.LOCKED_OUT, MAINTENANCE_START=_S.MAINTENANCE)


def _steady(own: str) -> dict[CapacitorEvent, Any]:
    return row(IGNORE, _E, **{**_STEADY, own: IGNORE})


TABLE: TransitionTable[CapacitorState, CapacitorEvent] = TransitionTable(
    CapacitorState, CapacitorEvent, initial=_S.ALL_STEPS_OFF,
    rows={
        _S.ALL_STEPS_OFF: _steady("NO_STEPS_ON"),
        _S.PARTIAL_ENERGIZATION: _steady("SOME_STEPS_ON"),
        _S.FULLY_ENERGIZED: _steady("ALL_STEPS_ON"),
        _S.SWITCHING: row(IGNORE, _E, NO_STEPS_ON=_S.ALL_STEPS_OFF, SOME_STEPS_ON=_S.PARTIAL_ENERGIZATION,
                          ALL_STEPS_ON=_S.FULLY_ENERGIZED, SWITCH_FAILED=_S.LOCKED_OUT),
        _S.LOCKED_OUT: row(IGNORE, _E, RESET=_S.ALL_STEPS_OFF, MAINTENANCE_START=_S.MAINTENANCE),
        _S.MAINTENANCE: row(IGNORE, _E, MAINTENANCE_END=_S.ALL_STEPS_OFF),
    },
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacitorInputs:
    bus_voltage_kv: float | None = None
    reactive_power_kvar: float | None = None
    steps_active: float | None = None
    wall_time: float | None = None
    """POSIX seconds, for the daily operation limit (monotonic `now` is used when absent)."""


@dataclass
class CapacitorMemory(Memory):
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("switching_since", "step_opened_at", "below_since", "above_since",
                                              "recent_operations", "last_switched")

    steps_active: int = 0
    steps_commanded: int | None = None
    switching_since: float | None = None
    step_opened_at: list[float | None] = field(default_factory=list)
    below_since: float | None = None
    above_since: float | None = None
    day: int | None = None
    operations_today: int = 0
    recent_operations: list[float] = field(default_factory=list)
    switch_count: int = 0
    last_switched: float | None = None
    deadband_widened: bool = False
    voltage_v120: float | None = None
    maintenance: bool = False
    limit_alerted: bool = False
    var_support: bool = False


class CapacitorBankAgent(Agent[CapacitorState, CapacitorEvent]):
    agent_type = "capacitor_bank"
    TABLE = TABLE

    def __init__(self, agent_id: str, attrs: CapacitorBankAttributes, links: Links | None = None,
                 has_feedback: bool = True) -> None:
        super().__init__(agent_id, links)
        self.attrs = attrs
        self.has_feedback = has_feedback

    def initial_memory(self, now: float) -> CapacitorMemory:
        return CapacitorMemory(state=TABLE.initial, since=now, step_opened_at=[None] * self.attrs.num_steps)

    def memory_from_dict(self, data: dict[str, Any]) -> CapacitorMemory:
        return CapacitorMemory.from_dict(data, CapacitorState)

    def bandwidth_v(self, m: CapacitorMemory) -> float:
        bw = self.attrs.bandwidth_v
        return bw * self.attrs.deadband_widening_factor if m.deadband_widened else bw

    def _feedback_event(self, steps: int) -> CapacitorEvent:
        if steps <= 0:
            return _E.NO_STEPS_ON
        return _E.ALL_STEPS_ON if steps >= self.attrs.num_steps else _E.SOME_STEPS_ON

    def step(self, memory: CapacitorMemory, inputs: CapacitorInputs, now: float
             ) -> tuple[CapacitorMemory, list[Action]]:
        m = copy.deepcopy(memory)
        x = inputs
        a = self.attrs
        out: list[Action] = []
        day = math.floor((x.wall_time if x.wall_time is not None else now) / 86400.0)
        if m.day != day:
            m.day, m.operations_today, m.limit_alerted = day, 0, False
        m.recent_operations = [t for t in m.recent_operations if now - t < a.excessive_switching_window_s]
        if m.deadband_widened and not m.recent_operations:
            m.deadband_widened = False
            out.append(BusMessage(source=self.agent_id, topic=Topic.VOLTAGE_EVENTS, kind="deadband_restored",
                                  payload={"capacitor": self.agent_id, "bandwidth_v": a.bandwidth_v}))
        if x.steps_active is not None:
            m.steps_active = min(max(int(round(x.steps_active)), 0), a.num_steps)
        if x.bus_voltage_kv is not None:
            m.voltage_v120 = x.bus_voltage_kv / a.voltage_level * 120.0

        if m.maintenance:
            self.fire(m, _E.MAINTENANCE_START, "maintenance requested", now, out)
        elif m.state is _S.MAINTENANCE:
            self.fire(m, _E.MAINTENANCE_END, "maintenance finished", now, out)

        if m.state is _S.SWITCHING:
            if m.steps_active == m.steps_commanded:
                self.fire(m, self._feedback_event(m.steps_active), f"{m.steps_active} step(s) confirmed", now, out)
                m.steps_commanded, m.switching_since = None, None
            elif m.switching_since is not None and now - m.switching_since >= a.switching_timeout_s:
                self.fire(m, _E.SWITCH_FAILED, f"commanded {m.steps_commanded} step(s), feedback "
                          f"{m.steps_active} after {a.switching_timeout_s:.0f} s", now, out)
                out.append(Alert(agent_id=self.agent_id, severity=Severity.MAJOR, time=now,
                                 message="capacitor switching failed: bank locked out until reset"))
                m.steps_commanded, m.switching_since = None, None
        elif m.state in (_S.ALL_STEPS_OFF, _S.PARTIAL_ENERGIZATION, _S.FULLY_ENERGIZED):
            self.fire(m, self._feedback_event(m.steps_active), f"{m.steps_active} step(s) on", now, out)
            if a.control_mode == "voltage" and m.voltage_v120 is not None:
                self._voltage_control(m, now, out)
        return m, out

    def _voltage_control(self, m: CapacitorMemory, now: float, out: list[Action]) -> None:
        a = self.attrs
        v = m.voltage_v120
        assert v is not None
        half = self.bandwidth_v(m) / 2.0
        v_on, v_off = a.voltage_setpoint_v - half, a.voltage_setpoint_v + half
        if m.var_support:
            v_on = a.voltage_setpoint_v  # maximum reactive support: close steps up to the set point
        m.below_since = (m.below_since if m.below_since is not None else now) if v < v_on else None
        m.above_since = (m.above_since if m.above_since is not None else now) if v > v_off else None
        target: int | None = None
        if m.below_since is not None and now - m.below_since >= a.on_delay_s and m.steps_active < a.num_steps:
            opened_at = m.step_opened_at[m.steps_active] if m.steps_active < len(m.step_opened_at) else None
            if opened_at is None or now - opened_at >= a.discharge_time_s:
                target = m.steps_active + 1
        elif m.above_since is not None and now - m.above_since >= a.off_delay_s and m.steps_active > 0:
            target = m.steps_active - 1
        if target is None:
            return
        if m.operations_today >= a.max_daily_operations:
            if not m.limit_alerted:
                m.limit_alerted = True
                out.append(Alert(agent_id=self.agent_id, severity=Severity.WARNING, time=now,
                                 message=f"daily switching limit {a.max_daily_operations} reached; "
                                         f"voltage {v:.1f} V left uncorrected"))
            return
        if target < m.steps_active:
            m.step_opened_at[target] = now
        m.steps_commanded = target
        m.switching_since = now
        m.operations_today += 1
        m.switch_count += 1
        m.last_switched = now
        m.recent_operations.append(now)
        m.below_since = m.above_since = None
        out.append(ControlRequest(agent_id=self.agent_id, point_name="steps_cmd", value=float(target),
                                  reason=f"bus voltage {v:.1f} V outside {v_on:.1f}-{v_off:.1f} V"))
        self.fire(m, _E.STEP_COMMANDED, f"{'close' if target > m.steps_active else 'open'} step {max(target, m.steps_active)}"
                  f" at {v:.1f} V", now, out)
        if not self.has_feedback:
            m.steps_active = target
        if len(m.recent_operations) > a.excessive_switching_count and not m.deadband_widened:
            m.deadband_widened = True
            out.append(Alert(agent_id=self.agent_id, severity=Severity.WARNING, time=now,
                             message=f"Excessive switching detected: {len(m.recent_operations)} operations in "
                                     f"{a.excessive_switching_window_s / 60:.0f} min; deadband widened to "
                                     f"{self.bandwidth_v(m):.1f} V"))
            out.append(BusMessage(source=self.agent_id, topic=Topic.VOLTAGE_EVENTS, kind="excessive_switching",
                                  payload={"capacitor": self.agent_id, "operations": len(m.recent_operations),
                                           "bandwidth_v": self.bandwidth_v(m)}))

    def request(self, memory: CapacitorMemory, request: str, args: dict[str, Any], now: float
                ) -> tuple[CapacitorMemory, list[Action]]:
        m = copy.deepcopy(memory)
        out: list[Action] = []
        if request == "maintenance":
            m.maintenance = bool(args.get("on", True))
        elif request == "reset":
            self.fire(m, _E.RESET, "operator reset", now, out)
        elif request == "var_support":
            m.var_support = bool(args.get("on", True))
        else:
            raise ValueError(f"capacitor bank {self.agent_id}: unknown request {request!r} "
                             "(expected maintenance, reset, var_support)")
        return m, out

    def attributes(self, memory: Memory) -> dict[str, Any]:
        m = memory
        assert isinstance(m, CapacitorMemory)
        a = self.attrs
        return {
            "rated_capacity": a.rated_capacity, "num_steps": a.num_steps, "voltage_level": a.voltage_level,
            "current_steps_active": m.steps_active, "control_mode": a.control_mode, "switch_count": m.switch_count,
            "operations_today": m.operations_today, "last_switched": m.last_switched,
            "bus_voltage_v120": m.voltage_v120, "bandwidth_v": self.bandwidth_v(m), "deadband_widened": m.deadband_widened,
            "var_support": m.var_support,
        }
