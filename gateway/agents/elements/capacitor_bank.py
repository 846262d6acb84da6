"""Capacitor Bank agent: step-by-step switching by the field controller's modes and guards.

Every automatic mode decides one thing per cycle: close the next step, open the last one, or
hold; the condition must last the ON (`on_delay_s`) or OFF (`off_delay_s`) delay. Decisions use
this cycle's readings only: a missing or bad-quality reading holds the bank and restarts the delay.

- voltage (120 V base): close below `setpoint − bandwidth/2`, open above `setpoint +
  bandwidth/2`.
- var: input `source_reactive_power_kvar`, the reactive power the source supplies past the
  measuring point (lagging positive, i.e. drawn by the load; the feeder breaker's or bus IED's
  reading, not the bank's own output `reactive_power_kvar`). Close above `var_on_kvar` (default
  2/3 of a step), open below `var_off_kvar` (default −1/3 of a step, leading).
- time: a daily window from `schedule_on` to `schedule_off` ("HH:MM" local time, where local
  time is the wall time the runtime passes in plus the fixed `utc_offset_h`; no daylight-saving
  rules). Inside the window steps come in one at a time, outside they go out one at a time.
  Without wall time the schedule is unknown and the bank holds.
- temperature: input `ambient_temp_c`; close above `temp_on_c` (air-conditioning load), open
  below `temp_off_c`. Readings outside −60…70 °C are sensor faults and ignored.
- manual: never switches on its own; operators switch with the `close_step` / `open_step`
  requests (in any mode), under the state and discharge guards.

A `var_support` request (the substation's emergency "maximize var support") makes every
automatic mode close steps while the bus is below `voltage_setpoint_v` and stop opening them.

Voltage override, in every automatic mode when the bus voltage is measured (and
`voltage_override` is on): above `override_max_v` open a step, below `override_min_v` close one,
whatever the mode says. The mode may not close a step that is expected to lift the voltage above
`override_max_v`, nor open one expected to drop it below `override_min_v`; the expected change
per step is learnt from the last confirmed operation, so mode and override do not hunt. A
voltage outside 60…180 V (0.5…1.5 pu) is a dead bus or a decoding fault: no automatic switching.

Guards, whatever the mode: one step per operation, then wait for the position feedback
(Switching, Locked_Out on timeout). A step that was opened may not close again before
`discharge_time_s` (residual charge). At most `max_daily_operations` automatic commands per
local calendar day (operators' steps count towards it but are not refused by it). If more than `excessive_switching_count` operations fall inside
`excessive_switching_window_s`, the voltage deadband is widened by `deadband_widening_factor`
and operators are told.
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.agents.actions import Action, Alert, BusMessage, ControlRequest, Severity, Topic
from gateway.agents import spec, visualization
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
_STEADY = dict(
    NO_STEPS_ON=_S.ALL_STEPS_OFF,
    SOME_STEPS_ON=_S.PARTIAL_ENERGIZATION,
    ALL_STEPS_ON=_S.FULLY_ENERGIZED,
    STEP_COMMANDED=_S.SWITCHING,
    SWITCH_FAILED=_S.LOCKED_OUT,
    MAINTENANCE_START=_S.MAINTENANCE,
)


def _steady(own: str) -> dict[CapacitorEvent, Any]:
    return row(_E, **{**_STEADY, own: IGNORE}, ignore="RESET MAINTENANCE_END")  # nothing to reset, not in maintenance


TABLE: TransitionTable[CapacitorState, CapacitorEvent] = TransitionTable(
    CapacitorState,
    CapacitorEvent,
    initial=_S.ALL_STEPS_OFF,
    rows={
        _S.ALL_STEPS_OFF: _steady("NO_STEPS_ON"),
        _S.PARTIAL_ENERGIZATION: _steady("SOME_STEPS_ON"),
        _S.FULLY_ENERGIZED: _steady("ALL_STEPS_ON"),
        # a switching operation finishes before another starts or maintenance begins
        _S.SWITCHING: row(
            _E,
            NO_STEPS_ON=_S.ALL_STEPS_OFF,
            SOME_STEPS_ON=_S.PARTIAL_ENERGIZATION,
            ALL_STEPS_ON=_S.FULLY_ENERGIZED,
            SWITCH_FAILED=_S.LOCKED_OUT,
            ignore="STEP_COMMANDED RESET MAINTENANCE_START MAINTENANCE_END",
        ),
        _S.LOCKED_OUT: row(
            _E,
            RESET=_S.ALL_STEPS_OFF,
            MAINTENANCE_START=_S.MAINTENANCE,
            ignore="NO_STEPS_ON SOME_STEPS_ON ALL_STEPS_ON STEP_COMMANDED SWITCH_FAILED MAINTENANCE_END",
        ),
        _S.MAINTENANCE: row(
            _E,
            MAINTENANCE_END=_S.ALL_STEPS_OFF,
            ignore="NO_STEPS_ON SOME_STEPS_ON ALL_STEPS_ON STEP_COMMANDED SWITCH_FAILED RESET MAINTENANCE_START",
        ),
    },
)


VOLTAGE_PLAUSIBLE_V120 = (60.0, 180.0)
"""Bus voltages (120 V base) the controller acts on; outside is a dead bus or a decoding fault."""
AMBIENT_PLAUSIBLE_C = (-60.0, 70.0)
"""Ambient temperatures a sensor can really report; outside is a sensor fault."""
MAX_STEP_CHANGE_V = 6.0
"""Cap on the learnt voltage change per step (120 V base): a larger jump was something else."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacitorInputs:
    bus_voltage_kv: float | None = None
    reactive_power_kvar: float | None = None
    """The bank's own output (shown, not used for control)."""
    source_reactive_power_kvar: float | None = None
    """Var mode: reactive power supplied by the source past the measuring point, lagging positive."""
    ambient_temp_c: float | None = None
    """Temperature mode."""
    steps_active: float | None = None
    wall_time: float | None = None
    """POSIX seconds, for the daily operation limit (monotonic `now` is used when absent)."""


@dataclass
class CapacitorMemory(Memory):
    TIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "switching_since",
        "step_opened_at",
        "close_since",
        "open_since",
        "recent_operations",
        "last_switched",
    )

    steps_active: int = 0
    steps_commanded: int | None = None
    switching_since: float | None = None
    step_opened_at: list[float | None] = field(default_factory=list)
    close_since: float | None = None
    """Since when the mode (or the override) has asked for one more step."""
    open_since: float | None = None
    """Since when the mode (or the override) has asked for one step less."""
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
    source_kvar: float | None = None
    ambient_c: float | None = None
    voltage_before_v120: float | None = None
    """Bus voltage when the pending step command went out (to learn the change per step)."""
    step_change_v: float = 0.0
    """Voltage change per step (120 V base) seen on the last confirmed operation."""
    last_reason: str = ""


class CapacitorBankAgent(Agent[CapacitorState, CapacitorEvent]):
    agent_type = "capacitor_bank"
    TABLE = TABLE

    def __init__(
        self, agent_id: str, attrs: CapacitorBankAttributes, links: Links | None = None, has_feedback: bool = True
    ) -> None:
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

    def step(
        self, memory: CapacitorMemory, inputs: CapacitorInputs, now: float
    ) -> tuple[CapacitorMemory, list[Action]]:
        m = copy.deepcopy(memory)
        x = inputs
        a = self.attrs
        out: list[Action] = []
        if len(m.step_opened_at) != a.num_steps:  # memory restored from a bank with another step count
            m.step_opened_at = (m.step_opened_at + [None] * a.num_steps)[: a.num_steps]
        wall = x.wall_time if x.wall_time is not None and math.isfinite(x.wall_time) else None
        day = math.floor(((wall if wall is not None else now) + a.utc_offset_h * 3600.0) / 86400.0)
        if m.day != day:
            m.day, m.operations_today, m.limit_alerted = day, 0, False
        m.recent_operations = [t for t in m.recent_operations if now - t < a.excessive_switching_window_s]
        if m.deadband_widened and not m.recent_operations:
            m.deadband_widened = False
            out.append(
                BusMessage(
                    source=self.agent_id,
                    topic=Topic.VOLTAGE_EVENTS,
                    kind="deadband_restored",
                    payload={"capacitor": self.agent_id, "bandwidth_v": a.bandwidth_v},
                )
            )
        if x.steps_active is not None and math.isfinite(x.steps_active):
            m.steps_active = min(max(int(round(x.steps_active)), 0), a.num_steps)
        v = _finite(x.bus_voltage_kv)
        v = v / a.voltage_level * 120.0 if v is not None else None
        if v is not None:
            m.voltage_v120 = v
        if v is not None and not VOLTAGE_PLAUSIBLE_V120[0] <= v <= VOLTAGE_PLAUSIBLE_V120[1]:
            v = None  # dead bus or a decoding fault: nothing to regulate on
        m.source_kvar = _finite(x.source_reactive_power_kvar)
        t = _finite(x.ambient_temp_c)
        m.ambient_c = t if t is not None and AMBIENT_PLAUSIBLE_C[0] <= t <= AMBIENT_PLAUSIBLE_C[1] else None

        if m.maintenance:
            self.fire(m, _E.MAINTENANCE_START, "maintenance requested", now, out)
        elif m.state is _S.MAINTENANCE:
            self.fire(m, _E.MAINTENANCE_END, "maintenance finished", now, out)

        if m.state is _S.SWITCHING:
            if m.steps_active == m.steps_commanded:
                self.fire(m, self._feedback_event(m.steps_active), f"{m.steps_active} step(s) confirmed", now, out)
                if v is not None and m.voltage_before_v120 is not None:
                    m.step_change_v = min(abs(v - m.voltage_before_v120), MAX_STEP_CHANGE_V)
                m.steps_commanded, m.switching_since, m.voltage_before_v120 = None, None, None
            elif m.switching_since is not None and now - m.switching_since >= a.switching_timeout_s:
                self.fire(
                    m,
                    _E.SWITCH_FAILED,
                    f"commanded {m.steps_commanded} step(s), feedback "
                    f"{m.steps_active} after {a.switching_timeout_s:.0f} s",
                    now,
                    out,
                )
                out.append(
                    Alert(
                        agent_id=self.agent_id,
                        severity=Severity.MAJOR,
                        time=now,
                        message="capacitor switching failed: bank locked out until reset",
                    )
                )
                m.steps_commanded, m.switching_since, m.voltage_before_v120 = None, None, None
        elif m.state in (_S.ALL_STEPS_OFF, _S.PARTIAL_ENERGIZATION, _S.FULLY_ENERGIZED):
            self.fire(m, self._feedback_event(m.steps_active), f"{m.steps_active} step(s) on", now, out)
            close_reason, open_reason = self.decide(m, v, wall)
            self._control(m, v, close_reason, open_reason, now, out)
        else:
            m.close_since = m.open_since = None
        return m, out

    def decide(self, m: CapacitorMemory, v: float | None, wall: float | None) -> tuple[str | None, str | None]:
        """Why the bank wants one more step, or one less (at most one of the two); None for no."""
        a = self.attrs
        mode = a.control_mode
        if mode == "manual":
            return None, None
        if a.voltage_override and v is not None:
            if v > a.override_max_v:
                return None, f"voltage override: bus {v:.1f} V above {a.override_max_v:.1f} V"
            if v < a.override_min_v:
                return f"voltage override: bus {v:.1f} V below {a.override_min_v:.1f} V", None
        close_reason: str | None = None
        open_reason: str | None = None
        if mode == "voltage":
            if v is not None:
                half = self.bandwidth_v(m) / 2.0
                v_on, v_off = a.voltage_setpoint_v - half, a.voltage_setpoint_v + half
                if m.var_support:
                    v_on = a.voltage_setpoint_v  # maximum reactive support: close steps up to the set point
                if v < v_on:
                    close_reason = f"bus voltage {v:.1f} V below {v_on:.1f} V"
                elif v > v_off:
                    open_reason = f"bus voltage {v:.1f} V above {v_off:.1f} V"
        elif mode == "var":
            close_reason, open_reason = _above_closes(
                m.source_kvar, a.var_on_threshold_kvar, a.var_off_threshold_kvar, "source supplies", "kvar", 0
            )
        elif mode == "time":
            if wall is not None:
                local = wall + a.utc_offset_h * 3600.0
                minute = int(math.floor(local / 60.0)) % 1440
                on, off = _minutes(a.schedule_on), _minutes(a.schedule_off)
                inside = on <= minute < off if on < off else (minute >= on or minute < off)
                if inside:
                    close_reason = f"schedule: in from {a.schedule_on} to {a.schedule_off}"
                else:
                    open_reason = f"schedule: out from {a.schedule_off} to {a.schedule_on}"
        elif mode == "temperature":
            close_reason, open_reason = _above_closes(m.ambient_c, a.temp_on_c, a.temp_off_c, "ambient", "°C", 1)
        if m.var_support and mode != "voltage":
            # substation emergency: keep every step in, add more up to the voltage set point
            open_reason = None
            if close_reason is None and v is not None and v < a.voltage_setpoint_v:
                close_reason = f"maximum reactive support: bus {v:.1f} V below {a.voltage_setpoint_v:.1f} V"
        if a.voltage_override and v is not None and m.step_change_v > 0:
            # the override would undo this operation: do not start it
            if close_reason and v + m.step_change_v > a.override_max_v:
                close_reason = None
            if open_reason and v - m.step_change_v < a.override_min_v:
                open_reason = None
        return close_reason, open_reason

    def _control(
        self,
        m: CapacitorMemory,
        v: float | None,
        close_reason: str | None,
        open_reason: str | None,
        now: float,
        out: list[Action],
    ) -> None:
        a = self.attrs
        m.close_since = (m.close_since if m.close_since is not None else now) if close_reason else None
        m.open_since = (m.open_since if m.open_since is not None else now) if open_reason else None
        target: int | None = None
        reason = ""
        if (
            close_reason
            and m.close_since is not None
            and now - m.close_since >= a.on_delay_s
            and m.steps_active < a.num_steps
        ):
            opened_at = m.step_opened_at[m.steps_active]
            if opened_at is None or now - opened_at >= a.discharge_time_s:
                target, reason = m.steps_active + 1, close_reason
        elif open_reason and m.open_since is not None and now - m.open_since >= a.off_delay_s and m.steps_active > 0:
            target, reason = m.steps_active - 1, open_reason
        if target is None:
            return
        if m.operations_today >= a.max_daily_operations:
            if not m.limit_alerted:
                m.limit_alerted = True
                out.append(
                    Alert(
                        agent_id=self.agent_id,
                        severity=Severity.WARNING,
                        time=now,
                        message=f"daily switching limit {a.max_daily_operations} reached; {reason} left uncorrected",
                    )
                )
            return
        self._operate(m, target, reason, v, now, out)

    def _operate(
        self, m: CapacitorMemory, target: int, reason: str, v: float | None, now: float, out: list[Action]
    ) -> None:
        """Command one step in or out and count it (guards already checked by the caller)."""
        a = self.attrs
        if target < m.steps_active:
            m.step_opened_at[target] = now
        m.steps_commanded = target
        m.switching_since = now
        m.voltage_before_v120 = v
        m.operations_today += 1
        m.switch_count += 1
        m.last_switched = now
        m.last_reason = reason
        m.recent_operations.append(now)
        m.close_since = m.open_since = None
        out.append(ControlRequest(agent_id=self.agent_id, point_name="steps_cmd", value=float(target), reason=reason))
        self.fire(
            m,
            _E.STEP_COMMANDED,
            f"{'close' if target > m.steps_active else 'open'} step {max(target, m.steps_active)}: {reason}",
            now,
            out,
        )
        if not self.has_feedback:
            m.steps_active = target
        if len(m.recent_operations) > a.excessive_switching_count and not m.deadband_widened:
            m.deadband_widened = True
            out.append(
                Alert(
                    agent_id=self.agent_id,
                    severity=Severity.WARNING,
                    time=now,
                    message=f"Excessive switching detected: {len(m.recent_operations)} operations in "
                    f"{a.excessive_switching_window_s / 60:.0f} min; deadband widened to "
                    f"{self.bandwidth_v(m):.1f} V",
                )
            )
            out.append(
                BusMessage(
                    source=self.agent_id,
                    topic=Topic.VOLTAGE_EVENTS,
                    kind="excessive_switching",
                    payload={
                        "capacitor": self.agent_id,
                        "operations": len(m.recent_operations),
                        "bandwidth_v": self.bandwidth_v(m),
                    },
                )
            )

    def request(
        self, memory: CapacitorMemory, request: str, args: dict[str, Any], now: float
    ) -> tuple[CapacitorMemory, list[Action]]:
        m = copy.deepcopy(memory)
        out: list[Action] = []
        if request == "maintenance":
            m.maintenance = bool(args.get("on", True))
        elif request == "reset":
            self.fire(m, _E.RESET, "operator reset", now, out)
        elif request == "var_support":
            m.var_support = bool(args.get("on", True))
        elif request in ("close_step", "open_step"):
            self._operator_step(m, request == "close_step", str(args.get("reason", "") or "operator request"), now, out)
        else:
            raise ValueError(
                f"capacitor bank {self.agent_id}: unknown request {request!r} "
                "(expected maintenance, reset, var_support, close_step, open_step)"
            )
        return m, out

    def _operator_step(self, m: CapacitorMemory, close: bool, reason: str, now: float, out: list[Action]) -> None:
        """One step in or out by hand (the way to switch in manual mode), under the same guards.

        The daily limit is for automatic operations: an operator's step is refused only by the
        bank's state and the discharge lock-out, and is counted like any other.
        """
        a = self.attrs
        if m.state not in (_S.ALL_STEPS_OFF, _S.PARTIAL_ENERGIZATION, _S.FULLY_ENERGIZED):
            raise ValueError(f"capacitor bank {self.agent_id} is {m.state.value}: no step can be switched now")
        if close:
            if m.steps_active >= a.num_steps:
                raise ValueError(f"capacitor bank {self.agent_id}: all {a.num_steps} steps are already on")
            if len(m.step_opened_at) != a.num_steps:
                m.step_opened_at = (m.step_opened_at + [None] * a.num_steps)[: a.num_steps]
            opened_at = m.step_opened_at[m.steps_active]
            if opened_at is not None and now - opened_at < a.discharge_time_s:
                raise ValueError(
                    f"capacitor bank {self.agent_id}: step {m.steps_active + 1} was opened "
                    f"{now - opened_at:.0f} s ago and is discharging; it may close in "
                    f"{a.discharge_time_s - (now - opened_at):.0f} s"
                )
            target = m.steps_active + 1
        else:
            if m.steps_active <= 0:
                raise ValueError(f"capacitor bank {self.agent_id}: no step is on")
            target = m.steps_active - 1
        self._operate(m, target, reason, m.voltage_v120, now, out)

    def attributes(self, memory: Memory) -> dict[str, Any]:
        m = memory
        assert isinstance(m, CapacitorMemory)
        a = self.attrs
        return {
            "rated_capacity": a.rated_capacity,
            "num_steps": a.num_steps,
            "voltage_level": a.voltage_level,
            "current_steps_active": m.steps_active,
            "control_mode": a.control_mode,
            "switch_count": m.switch_count,
            "operations_today": m.operations_today,
            "last_switched": m.last_switched,
            "bus_voltage_v120": m.voltage_v120,
            "bandwidth_v": self.bandwidth_v(m),
            "deadband_widened": m.deadband_widened,
            "var_support": m.var_support,
            "source_reactive_power_kvar": m.source_kvar,
            "ambient_temp_c": m.ambient_c,
            "step_change_v": m.step_change_v,
            "last_reason": m.last_reason,
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _minutes(hh_mm: str) -> int:
    hours, minutes = hh_mm.split(":")
    return int(hours) * 60 + int(minutes)


def _above_closes(
    x: float | None, on: float, off: float, what: str, unit: str, decimals: int
) -> tuple[str | None, str | None]:
    """(close reason, open reason) for a mode where a high reading asks for steps in: above `on`
    close one, below `off` open one, inside the hysteresis band nothing."""
    if x is None:
        return None, None
    if x > on:
        return f"{what} {x:.{decimals}f} {unit}, above {on:.{decimals}f} {unit}", None
    if x < off:
        return None, f"{what} {x:.{decimals}f} {unit}, below {off:.{decimals}f} {unit}"
    return None, None


# --------------------------------------------------------------------------- the type, declared once

POINTS: dict[str, spec.PointName] = {
    "bus_voltage_kv": spec.KV,
    "reactive_power_kvar": spec.KVAR,
    "source_reactive_power_kvar": spec.KVAR,
    "ambient_temp_c": spec.TEMP,
    "steps_active": spec.COUNTER,
    "steps_cmd": spec.SETPOINT,
}


def _links(b: spec.Build) -> Links:
    return Links(upstream_breaker=b.protecting_breaker, substation=b.substation)


def _derive_inputs(rt: spec.RuntimeView, agent_id: str, wall: float | None) -> dict[str, Any]:
    """The wall clock, for the daily operation limit and the time schedule."""
    return {"wall_time": wall} if wall is not None else {}


def _var_support(rt: spec.RuntimeView, agent_id: str, message: BusMessage, now: float) -> list[Action]:
    """The substation asks for the most reactive support the bank can give (or releases it)."""
    return rt.request(agent_id, "var_support", now, on=bool(message.payload.get("on", True)))


SPEC = spec.AgentSpec(
    type_name="capacitor_bank",
    listing_order=6,
    table=TABLE,
    attributes=CapacitorBankAttributes,
    points=POINTS,
    inputs=CapacitorInputs,
    derived=frozenset({"wall_time"}),
    derive_inputs=_derive_inputs,
    links=_links,
    factory=lambda b, links: CapacitorBankAgent(b.agent_id, b.attrs, links, has_feedback="steps_active" in b.points),
    step_order=3,
    requests=("maintenance", "reset", "var_support", "close_step", "open_step"),
    subscriptions=(Topic.VOLTAGE_EVENTS,),
    message_handlers={"maximize_var_support": _var_support},
    visualization=visualization.capacitor_view,
    description="a switched capacitor bank: voltage, var, time or temperature control, operation limits",
)
