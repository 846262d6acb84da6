"""Power Line agent: a feeder section watched against its ampacity.

Load states follow the current: Loaded above `loaded_percent` of ampacity, Overloaded only
when the current has stayed above ampacity for `overload_persistence_s` (use case: 5 minutes),
Emergency above `emergency_percent` or when the thermal replica reaches its trip level.
Faults come from protection (a fault trip of the protecting breaker: phase or ground fault,
breaker failure) or from a current no load can draw; the line stays Faulted until its breaker
is closed again with normal current. A trip on overload, voltage or frequency de-energises the
line without making it Faulted, and the cause says which.

On a fault the line publishes `line_fault` on `fault_alerts`, where its breaker(s) and the
substation hear it ("fault current detected", "feeder fault"), and tells its transformers to
prepare for power loss and its neighbours to stand by for load transfer.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.agents.actions import Action, Alert, BusMessage, Severity, Topic
from gateway.agents import spec, visualization
from gateway.agents.base import Agent, Links, Memory
from gateway.agents.elements.circuit_breaker import BreakerMemory, BreakerState, CircuitBreakerAgent
from gateway.agents.fsm import IGNORE, TransitionTable, row
from gateway.agents.physics import line_losses_kw, thermal_level
from gateway.agents.schema import PowerLineAttributes


class LineState(enum.Enum):
    OPERATIONAL = "Operational"
    LOADED = "Loaded"
    OVERLOADED = "Overloaded"
    FAULTED = "Faulted"
    DE_ENERGIZED = "De-energized"
    EMERGENCY = "Emergency"


class LineEvent(enum.Enum):
    LIGHT_LOAD = enum.auto()
    HEAVY_LOAD = enum.auto()
    OVERLOAD_PERSISTED = enum.auto()
    EMERGENCY_LOAD = enum.auto()
    FAULT_DETECTED = enum.auto()
    FAULT_CLEARED = enum.auto()
    DEENERGIZED = enum.auto()
    ENERGIZED = enum.auto()


_S, _E = LineState, LineEvent
_LOAD_MOVES: dict[str, LineState | Any] = dict(
    LIGHT_LOAD=_S.OPERATIONAL,
    HEAVY_LOAD=_S.LOADED,
    OVERLOAD_PERSISTED=_S.OVERLOADED,
    EMERGENCY_LOAD=_S.EMERGENCY,
    FAULT_DETECTED=_S.FAULTED,
    DEENERGIZED=_S.DE_ENERGIZED,
)

_LIVE_IGNORES = "FAULT_CLEARED ENERGIZED"  # a live line is already energized and has no fault to clear

TABLE: TransitionTable[LineState, LineEvent] = TransitionTable(
    LineState,
    LineEvent,
    initial=_S.OPERATIONAL,
    rows={
        _S.OPERATIONAL: row(_E, **{**_LOAD_MOVES, "LIGHT_LOAD": IGNORE}, ignore=_LIVE_IGNORES),
        _S.LOADED: row(_E, **{**_LOAD_MOVES, "HEAVY_LOAD": IGNORE}, ignore=_LIVE_IGNORES),
        _S.OVERLOADED: row(_E, **{**_LOAD_MOVES, "OVERLOAD_PERSISTED": IGNORE}, ignore=_LIVE_IGNORES),
        _S.EMERGENCY: row(_E, **{**_LOAD_MOVES, "EMERGENCY_LOAD": IGNORE}, ignore=_LIVE_IGNORES),
        # a faulted line waits for the fault to clear: load readings and energization say nothing new
        _S.FAULTED: row(
            _E,
            FAULT_CLEARED=_S.OPERATIONAL,
            ignore="LIGHT_LOAD HEAVY_LOAD OVERLOAD_PERSISTED EMERGENCY_LOAD FAULT_DETECTED DEENERGIZED ENERGIZED",
        ),
        _S.DE_ENERGIZED: row(
            _E,
            ENERGIZED=_S.OPERATIONAL,
            FAULT_DETECTED=_S.FAULTED,
            ignore="LIGHT_LOAD HEAVY_LOAD OVERLOAD_PERSISTED EMERGENCY_LOAD FAULT_CLEARED DEENERGIZED",
        ),
    },
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LineInputs:
    current_a: float | None = None
    voltage_kv: float | None = None
    active_power_kw: float | None = None
    reactive_power_kvar: float | None = None
    breaker_closed: bool | None = None
    fault_reported: bool = False
    """The protecting breaker tripped on a fault and has not been closed since."""
    trip_cause: str | None = None
    """Code of the protecting breaker's last trip (circuit_breaker.TRIP_CAUSES), while it is open after it."""
    breaker_trip: str | None = None
    """What the protecting breaker's last trip says, while it is open after it (e.g. "overload (51P phase A, 620 A)")."""


@dataclass
class LineMemory(Memory):
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("overload_since", "last_time", "fault_since")

    overload_since: float | None = None
    thermal_level: float = 0.0
    last_time: float | None = None
    current_a: float = 0.0
    losses_kw: float = 0.0
    energy_loss_kwh: float = 0.0
    peak_current_a: float = 0.0
    maintenance: bool = False
    fault_description: str | None = None
    """Why the line is Faulted, in words (for alarms and the substation)."""
    fault_cause: str | None = None
    """Code of the fault: the protecting breaker's trip cause (phase_fault, ground_fault, ...) or fault_current."""
    fault_since: float | None = None


class PowerLineAgent(Agent[LineState, LineEvent]):
    agent_type = "power_line"
    TABLE = TABLE

    def __init__(self, agent_id: str, attrs: PowerLineAttributes, links: Links | None = None) -> None:
        super().__init__(agent_id, links)
        self.attrs = attrs
        self.fault_current_a = attrs.fault_current_a or 4.0 * attrs.ampacity

    def initial_memory(self, now: float) -> LineMemory:
        return LineMemory(state=TABLE.initial, since=now)

    def memory_from_dict(self, data: dict[str, Any]) -> LineMemory:
        return LineMemory.from_dict(data, LineState)

    def classify(self, m: LineMemory, x: LineInputs, now: float) -> tuple[LineEvent, str]:
        a = self.attrs
        current = abs(x.current_a) if x.current_a is not None else m.current_a
        breaker = self.links.upstream_breaker or "its breaker"
        if x.fault_reported:
            return _E.FAULT_DETECTED, f"{x.breaker_trip or 'fault'}, tripped by {breaker}"
        if current >= self.fault_current_a:
            return (
                _E.FAULT_DETECTED,
                f"fault current {current:.0f} A at or above the fault level {self.fault_current_a:.0f} A",
            )
        if m.maintenance and m.state is not _S.FAULTED:
            return _E.DEENERGIZED, "taken out for maintenance"
        dead = x.breaker_closed is False or (x.voltage_kv is not None and x.voltage_kv < 0.1 * a.voltage_rating)
        if m.state is _S.FAULTED:
            if x.breaker_closed and not dead and current < a.ampacity:
                return _E.FAULT_CLEARED, "breaker closed with normal current"
            return _E.FAULT_DETECTED, "fault not yet cleared"
        if dead:
            if x.breaker_closed is False:
                return _E.DEENERGIZED, f"{breaker} tripped on {x.breaker_trip}" if x.breaker_trip else f"{breaker} open"
            return _E.DEENERGIZED, "no voltage"
        if m.state is _S.DE_ENERGIZED:
            return _E.ENERGIZED, "voltage restored"
        pct = 100.0 * current / a.ampacity
        if pct >= a.emergency_percent or m.thermal_level >= 1.0:
            return _E.EMERGENCY_LOAD, f"current {pct:.0f} % of ampacity, thermal level {m.thermal_level:.2f}"
        if m.overload_since is not None and now - m.overload_since >= a.overload_persistence_s:
            return _E.OVERLOAD_PERSISTED, f"current {pct:.0f} % of ampacity for {now - m.overload_since:.0f} s"
        loaded = a.loaded_percent - (2.0 if m.state in (_S.LOADED, _S.OVERLOADED, _S.EMERGENCY) else 0.0)
        if pct >= loaded:
            return _E.HEAVY_LOAD, f"current {pct:.0f} % of ampacity"
        return _E.LIGHT_LOAD, f"current {pct:.0f} % of ampacity"

    def step(self, memory: LineMemory, inputs: LineInputs, now: float) -> tuple[LineMemory, list[Action]]:
        m = copy.deepcopy(memory)
        a = self.attrs
        actions: list[Action] = []
        if inputs.current_a is not None:
            m.current_a = abs(inputs.current_a)  # reverse flow loads the conductor as much as forward flow
        dt = 0.0 if m.last_time is None else max(0.0, now - m.last_time)
        m.last_time = now
        m.thermal_level = thermal_level(m.thermal_level, m.current_a, a.ampacity, dt, a.thermal_time_constant_s)
        m.losses_kw = line_losses_kw(m.current_a, a.impedance.r_ohm_per_km, a.length)
        m.energy_loss_kwh += m.losses_kw * dt / 3600.0
        m.peak_current_a = max(m.peak_current_a, m.current_a)
        if m.current_a > a.ampacity:
            if m.overload_since is None:
                m.overload_since = now
        else:
            m.overload_since = None
        event, cause = self.classify(m, inputs, now)
        old = m.state
        if event is _E.FAULT_DETECTED and m.state is not _S.FAULTED:
            m.fault_description = cause
            m.fault_cause = (inputs.trip_cause or "fault") if inputs.fault_reported else "fault_current"
            m.fault_since = now
        if self.fire(m, event, cause, now, actions):
            actions += self._on_enter(m, old, now)
        return m, actions

    def _on_enter(self, m: LineMemory, old: LineState, now: float) -> list[Action]:
        links = self.links
        out: list[Action] = []
        me = self.agent_id
        a = self.attrs
        load = {
            "line": me,
            "current_a": m.current_a,
            "ampacity": a.ampacity,
            "loading_percent": 100.0 * m.current_a / a.ampacity,
            "thermal_level": m.thermal_level,
            "customers": links.customers_downstream,
        }
        if m.state is _S.OVERLOADED:
            out.append(
                Alert(
                    agent_id=me,
                    severity=Severity.MAJOR,
                    time=now,
                    message=f"{me} overloaded: {m.current_a:.0f} A on {a.ampacity:.0f} A ampacity "
                    f"for {a.overload_persistence_s:.0f} s",
                )
            )
            out += [
                BusMessage(source=me, target=t, kind="reduce_load", payload={"line": me}) for t in links.transformers
            ]
            out += [
                BusMessage(
                    source=me,
                    target=b,
                    kind="prepare_for_trip",
                    payload={**load, "state": m.state.value, "breakers": list(links.breakers)},
                )
                for b in links.breakers
            ]
            out.append(
                BusMessage(
                    source=me,
                    topic=Topic.LOAD_CHANGES,
                    kind="line_overload",
                    payload={**load, "transfer_options": list(links.transfer_options)},
                )
            )
        elif m.state is _S.EMERGENCY:
            out.append(
                Alert(
                    agent_id=me,
                    severity=Severity.CRITICAL,
                    time=now,
                    message=f"{me} in emergency: {m.current_a:.0f} A on {a.ampacity:.0f} A ampacity, "
                    f"thermal level {m.thermal_level:.2f}",
                )
            )
            out += [
                BusMessage(
                    source=me,
                    target=b,
                    kind="prepare_for_trip",
                    urgent=True,
                    payload={**load, "state": m.state.value, "breakers": list(links.breakers)},
                )
                for b in links.breakers
            ]
            if links.substation:
                out.append(
                    BusMessage(source=me, target=links.substation, kind="line_emergency", payload=load, urgent=True)
                )
        elif m.state is _S.FAULTED:
            out.append(
                Alert(agent_id=me, severity=Severity.CRITICAL, time=now, message=f"{me} fault: {m.fault_description}")
            )
            payload = {
                "line": me,
                "breaker": links.upstream_breaker,
                "cause": m.fault_cause,
                "description": m.fault_description,
                "current_a": m.current_a,
                "peak_current_a": m.peak_current_a,
                "customers": links.customers_downstream,
                "transfer_options": list(links.transfer_options),
            }
            out.append(BusMessage(source=me, topic=Topic.FAULT_ALERTS, kind="line_fault", payload=payload, urgent=True))
            out += [
                BusMessage(
                    source=me,
                    target=t,
                    kind="prepare_for_power_loss",
                    urgent=True,
                    payload={
                        "line": me,
                        "transformers": list(links.transformers),
                        "description": m.fault_description,
                        "customers": links.customers_downstream,
                    },
                )
                for t in links.transformers
            ]
            out += [
                BusMessage(
                    source=me,
                    target=ln,
                    kind="standby_for_load_transfer",
                    urgent=True,
                    payload={
                        "line": me,
                        "adjacent_lines": list(links.adjacent_lines),
                        "transfer_options": list(links.transfer_options),
                        "customers": links.customers_downstream,
                    },
                )
                for ln in links.adjacent_lines
            ]
        elif old is _S.FAULTED:
            out.append(
                BusMessage(
                    source=me,
                    topic=Topic.FAULT_ALERTS,
                    kind="line_fault_cleared",
                    urgent=True,
                    payload={
                        "line": me,
                        "cause": m.fault_cause,
                        "description": m.fault_description,
                        "fault_duration_s": now - m.fault_since if m.fault_since is not None else None,
                    },
                )
            )
        if m.state is _S.OPERATIONAL:
            m.peak_current_a = m.current_a
        return out

    def request(
        self, memory: LineMemory, request: str, args: dict[str, Any], now: float
    ) -> tuple[LineMemory, list[Action]]:
        m = copy.deepcopy(memory)
        if request != "maintenance":
            raise ValueError(f"line {self.agent_id}: unknown request {request!r} (expected maintenance)")
        m.maintenance = bool(args.get("on", True))
        out: list[Action] = []
        if m.maintenance:
            out.append(
                BusMessage(
                    source=self.agent_id,
                    topic=Topic.MAINTENANCE_SCHEDULED,
                    kind="line_maintenance",
                    payload={
                        "line": self.agent_id,
                        "customers": self.links.customers_downstream,
                        "transfer_options": list(self.links.transfer_options),
                    },
                )
            )
        return m, out

    def attributes(self, memory: Memory) -> dict[str, Any]:
        m = memory
        assert isinstance(m, LineMemory)
        a = self.attrs
        return {
            "line_type": a.line_type,
            "voltage_rating": a.voltage_rating,
            "length": a.length,
            "ampacity": a.ampacity,
            "current_a": m.current_a,
            "loading_percent": 100.0 * m.current_a / a.ampacity,
            "thermal_level": m.thermal_level,
            "losses_kw": m.losses_kw,
            "energy_loss_kwh": m.energy_loss_kwh,
            "overload_since": m.overload_since,
            "condition_score": a.condition_score,
        }


# --------------------------------------------------------------------------- the type, declared once

POINTS: dict[str, spec.PointName] = {
    "current_a": spec.AMP,
    "voltage_kv": spec.KV,
    "active_power_kw": spec.KW,
    "reactive_power_kvar": spec.KVAR,
    "end_voltage_kv": spec.KV,
}


def _links(b: spec.Build) -> Links:
    topo, breaker = b.topology, b.protecting_breaker
    return Links(
        upstream_breaker=breaker,
        breakers=tuple(dict.fromkeys([x for x in [breaker, *topo.controllers(b.agent_id)] if x])),
        transformers=b.of_type(topo.downstream(b.agent_id), "transformer"),
        substation=b.substation,
        adjacent_lines=tuple(topo.adjacent_lines(b.agent_id)),
        transfer_options=tuple(o.to_dict() for o in topo.alternative_supply_paths(b.agent_id)),
        customers_downstream=topo.meters_downstream(b.agent_id),
    )


def _derive_inputs(rt: spec.RuntimeView, agent_id: str, wall: float | None) -> dict[str, Any]:
    """The protecting breaker's position, and why it tripped while it is open after a trip."""
    upstream = rt.agents[agent_id].links.upstream_breaker
    if not upstream:
        return {}
    upstream_open = rt.breaker_is_open(upstream)
    kw: dict[str, Any] = {
        "breaker_closed": None if upstream_open is None else not upstream_open,
        "fault_reported": upstream in rt.fault_pending,
    }
    bm = rt.memory[upstream]
    breaker = rt.agents[upstream]
    if (
        bm.state in (BreakerState.TRIPPED, BreakerState.RECLOSING, BreakerState.LOCKED_OUT)
        and isinstance(breaker, CircuitBreakerAgent)
        and isinstance(bm, BreakerMemory)
        and bm.trip_cause
    ):
        kw["trip_cause"] = bm.trip_cause
        kw["breaker_trip"] = breaker.describe_trip(bm)
    return kw


SPEC = spec.AgentSpec(
    type_name="power_line",
    listing_order=1,
    table=TABLE,
    attributes=PowerLineAttributes,
    points=POINTS,
    inputs=LineInputs,
    derived=frozenset({"breaker_closed", "fault_reported", "trip_cause", "breaker_trip"}),
    derive_inputs=_derive_inputs,
    links=_links,
    factory=lambda b, links: PowerLineAgent(b.agent_id, b.attrs, links),
    step_order=1,
    requests=("maintenance",),
    visualization=visualization.line_view,
    description="an overhead or underground line section: loading, thermal level, faults, transfer options",
)
