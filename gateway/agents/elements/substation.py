"""Substation agent: load against capacity, a short-horizon forecast, feeder-fault coordination.

The forecast is a least-squares line through the recent load (`forecast_window_s`); the agent
reports the time until the load would exceed rated capacity. Above `high_load_percent` it asks
for load transfer and prepares a load-shedding plan (least critical feeders first, until the
load is back under `shed_target_percent`); the plan is published (`load_shedding_plan`) and
carried out only on an operator's `shed` request. On a feeder fault it counts the customers
affected, critical ones apart (from the topology), and publishes the isolation and reroute plan
through the feeder's normally-open ties (`reroute_plan`).
"""

from __future__ import annotations

import copy
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.agents.actions import Action, Alert, BusMessage, Severity, Topic
from gateway.agents import spec, visualization
from gateway.agents.base import Agent, Links, Memory
from gateway.agents.elements.capacitor_bank import CapacitorState
from gateway.agents.fsm import IGNORE, TransitionTable, row
from gateway.agents.physics import linear_trend, time_to_limit_s
from gateway.agents.elements.power_line import LineState
from gateway.agents.schema import SubstationAttributes
from gateway.agents.elements.transformer import TransformerState


class SubstationState(enum.Enum):
    NORMAL_OPERATION = "Normal_Operation"
    HIGH_LOAD = "High_Load"
    VOLTAGE_REGULATION_ACTIVE = "Voltage_Regulation_Active"
    FEEDER_FAULT = "Feeder_Fault"
    TRANSFORMER_FAULT = "Transformer_Fault"
    EMERGENCY_MODE = "Emergency_Mode"
    MAINTENANCE_MODE = "Maintenance_Mode"


class SubstationEvent(enum.Enum):
    """The most severe condition seen in a step (at most one per step)."""

    ALL_NORMAL = enum.auto()
    HIGH_LOAD = enum.auto()
    REGULATING = enum.auto()
    FEEDER_FAULT = enum.auto()
    TRANSFORMER_FAULT = enum.auto()
    EMERGENCY = enum.auto()
    MAINTENANCE_START = enum.auto()
    MAINTENANCE_END = enum.auto()


_S, _E = SubstationState, SubstationEvent
_FOLLOW: dict[str, Any] = dict(
    ALL_NORMAL=_S.NORMAL_OPERATION,
    HIGH_LOAD=_S.HIGH_LOAD,
    REGULATING=_S.VOLTAGE_REGULATION_ACTIVE,
    FEEDER_FAULT=_S.FEEDER_FAULT,
    TRANSFORMER_FAULT=_S.TRANSFORMER_FAULT,
    EMERGENCY=_S.EMERGENCY_MODE,
    MAINTENANCE_START=_S.MAINTENANCE_MODE,
    MAINTENANCE_END=IGNORE,
)


def _follow(own: str) -> dict[SubstationEvent, SubstationState | Any]:
    return row(_E, **{**_FOLLOW, own: IGNORE})


TABLE: TransitionTable[SubstationState, SubstationEvent] = TransitionTable(
    SubstationState,
    SubstationEvent,
    initial=_S.NORMAL_OPERATION,
    rows={
        _S.NORMAL_OPERATION: _follow("ALL_NORMAL"),
        _S.HIGH_LOAD: _follow("HIGH_LOAD"),
        _S.VOLTAGE_REGULATION_ACTIVE: _follow("REGULATING"),
        _S.FEEDER_FAULT: _follow("FEEDER_FAULT"),
        _S.TRANSFORMER_FAULT: _follow("TRANSFORMER_FAULT"),
        _S.EMERGENCY_MODE: _follow("EMERGENCY"),
        # in maintenance the conditions seen are the crew's doing: only ending it moves the state
        _S.MAINTENANCE_MODE: row(
            _E,
            MAINTENANCE_END=_S.NORMAL_OPERATION,
            ignore="ALL_NORMAL HIGH_LOAD REGULATING FEEDER_FAULT TRANSFORMER_FAULT EMERGENCY MAINTENANCE_START",
        ),
    },
)


@dataclass(frozen=True, slots=True)
class FeederInfo:
    line: str
    breaker: str | None
    customers: int
    transfer_options: tuple[dict[str, Any], ...] = ()
    critical_customers: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SubstationInputs:
    bus_voltage_kv: float | None = None
    total_load_kw: float | None = None
    total_load_kvar: float | None = None
    frequency_hz: float | None = None
    feeder_loads_kw: Mapping[str, float] = field(default_factory=dict)
    faulted_feeders: tuple[str, ...] = ()
    fault_descriptions: Mapping[str, str] = field(default_factory=dict)
    """Faulted feeder → what its line says the fault is."""
    faulted_transformers: tuple[str, ...] = ()
    regulating: tuple[str, ...] = ()
    overheated_transformers: tuple[str, ...] = ()


@dataclass
class SubstationMemory(Memory):
    TIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "load_history",
        "high_load_since",
        "emergency_load_since",
        "forecast_made",
    )

    load_kw: float = 0.0
    load_kvar: float = 0.0
    load_percent: float = 0.0
    bus_voltage_kv: float | None = None
    load_history: list[list[float]] = field(default_factory=list)
    trend_kw_per_h: float = 0.0
    time_to_capacity_s: float | None = None
    shedding_plan: list[dict[str, Any]] = field(default_factory=list)
    handled_faults: list[str] = field(default_factory=list)
    maintenance: bool = False
    transfer_requested: bool = False
    high_load_since: float | None = None
    emergency_load_since: float | None = None
    forecast_crossing_s: float | None = None
    """Seconds from the last forecast until the load exceeds `high_load_percent` (None: not within its horizon)."""
    forecast_peak_kw: float | None = None
    forecast_made: float | None = None


class SubstationAgent(Agent[SubstationState, SubstationEvent]):
    agent_type = "substation"
    TABLE = TABLE

    def __init__(
        self,
        agent_id: str,
        attrs: SubstationAttributes,
        links: Links | None = None,
        feeders: tuple[FeederInfo, ...] = (),
    ) -> None:
        super().__init__(agent_id, links)
        self.attrs = attrs
        self.feeders = {f.line: f for f in feeders}

    def initial_memory(self, now: float) -> SubstationMemory:
        return SubstationMemory(state=TABLE.initial, since=now)

    def memory_from_dict(self, data: dict[str, Any]) -> SubstationMemory:
        return SubstationMemory.from_dict(data, SubstationState)

    @property
    def capacity_kva(self) -> float:
        return self.attrs.rated_capacity * 1000.0

    def forecast(self, m: SubstationMemory) -> tuple[float, float | None]:
        """(trend kVA per hour, seconds until rated capacity is exceeded or None)."""
        if len(m.load_history) < 2:
            return 0.0, time_to_limit_s(m.load_percent, 0.0, 100.0)
        times = [p[0] for p in m.load_history]
        loads = [p[1] for p in m.load_history]
        slope, fitted = linear_trend(times, loads)
        return slope * 3600.0, time_to_limit_s(max(fitted, loads[-1]), slope, self.capacity_kva)

    def shedding_plan(self, load_kva: float, feeder_loads_kw: Mapping[str, float]) -> list[dict[str, Any]]:
        target = self.attrs.shed_target_percent / 100.0 * self.capacity_kva
        excess = load_kva - target
        if excess <= 0:
            return []
        priority = list(self.attrs.feeder_priority)
        others = sorted((f for f in feeder_loads_kw if f not in priority), key=lambda f: -feeder_loads_kw[f])
        order = list(reversed(priority)) if priority else []
        order = others + order
        plan: list[dict[str, Any]] = []
        for feeder in order:
            if excess <= 0:
                break
            kw = feeder_loads_kw.get(feeder, 0.0)
            if kw <= 0:
                continue
            info = self.feeders.get(feeder)
            plan.append(
                {
                    "feeder": feeder,
                    "breaker": info.breaker if info else None,
                    "load_kw": kw,
                    "customers": info.customers if info else 0,
                    "critical_customers": info.critical_customers if info else 0,
                }
            )
            excess -= kw
        return plan

    def step(
        self, memory: SubstationMemory, inputs: SubstationInputs, now: float
    ) -> tuple[SubstationMemory, list[Action]]:
        m = copy.deepcopy(memory)
        x = inputs
        a = self.attrs
        out: list[Action] = []
        me = self.agent_id
        if x.total_load_kw is not None:
            m.load_kw = x.total_load_kw
        elif x.feeder_loads_kw:
            m.load_kw = sum(x.feeder_loads_kw.values())
        if x.total_load_kvar is not None:
            m.load_kvar = x.total_load_kvar
        if x.bus_voltage_kv is not None:
            m.bus_voltage_kv = x.bus_voltage_kv
        load_kva = math.hypot(m.load_kw, m.load_kvar)
        m.load_percent = 100.0 * load_kva / self.capacity_kva
        spacing = a.forecast_window_s / 120.0
        if not m.load_history or now - m.load_history[-1][0] >= spacing:
            m.load_history = [p for p in m.load_history if now - p[0] <= a.forecast_window_s] + [[now, load_kva]]
        trend, m.time_to_capacity_s = self.forecast(m)
        m.trend_kw_per_h = trend

        # feeder faults: respond once per fault
        new_faults = [f for f in x.faulted_feeders if f not in m.handled_faults]
        m.handled_faults = [f for f in m.handled_faults if f in x.faulted_feeders] + new_faults
        for feeder in new_faults:
            out += self._feeder_fault_response(feeder, x.fault_descriptions.get(feeder), now)

        # a feeder fault draws fault current, not load: load thresholds count only when it has
        # lasted `load_persistence_s` with no fault present
        faulted = bool(x.faulted_feeders)
        m.high_load_since = (
            None
            if faulted or m.load_percent < a.high_load_percent
            else (m.high_load_since if m.high_load_since is not None else now)
        )
        m.emergency_load_since = (
            None
            if faulted or m.load_percent <= a.emergency_load_percent
            else (m.emergency_load_since if m.emergency_load_since is not None else now)
        )
        high = m.high_load_since is not None and now - m.high_load_since >= a.load_persistence_s
        # the forecast sees the limit coming: act before the load gets there
        coming = (
            not faulted
            and m.forecast_crossing_s is not None
            and m.forecast_made is not None
            and m.forecast_made + m.forecast_crossing_s - now <= a.forecast_lead_s
        )
        high = high or coming
        emergency = m.emergency_load_since is not None and now - m.emergency_load_since >= a.load_persistence_s
        if m.maintenance:
            event, cause = _E.MAINTENANCE_START, "maintenance mode requested"
        elif emergency or x.overheated_transformers:
            event, cause = (
                _E.EMERGENCY,
                (
                    f"load {m.load_percent:.0f} % of capacity"
                    if emergency
                    else f"transformer(s) above critical temperature: {', '.join(x.overheated_transformers)}"
                ),
            )
        elif x.faulted_transformers:
            event, cause = _E.TRANSFORMER_FAULT, f"transformer fault: {', '.join(x.faulted_transformers)}"
        elif x.faulted_feeders:
            event, cause = _E.FEEDER_FAULT, f"feeder fault: {', '.join(x.faulted_feeders)}"
        elif high:
            event, cause = (
                _E.HIGH_LOAD,
                (
                    f"load {m.load_percent:.0f} % of capacity"
                    if m.high_load_since is not None
                    else f"forecast: load above {a.high_load_percent:.0f} % of capacity in "
                    f"{max(0.0, (m.forecast_made or now) + (m.forecast_crossing_s or 0.0) - now) / 60:.0f} min"
                ),
            )
        elif x.regulating:
            event, cause = _E.REGULATING, f"voltage regulation by {', '.join(x.regulating)}"
        else:
            event, cause = _E.ALL_NORMAL, f"load {m.load_percent:.0f} % of capacity"
        if m.state is _S.MAINTENANCE_MODE and not m.maintenance:
            self.fire(m, _E.MAINTENANCE_END, "maintenance mode ended", now, out)
        self.fire(m, event, cause, now, out)

        if m.state in (_S.HIGH_LOAD, _S.EMERGENCY_MODE) and not m.transfer_requested:
            m.transfer_requested = True
            m.shedding_plan = self.shedding_plan(load_kva, x.feeder_loads_kw)
            severity = Severity.CRITICAL if m.state is _S.EMERGENCY_MODE else Severity.MAJOR
            hot = ", ".join(x.overheated_transformers)
            why = (
                f"Emergency: transformer(s) above critical temperature: {hot}; "
                if hot and not emergency
                else "Capacity constraint: "
            )
            out.append(
                Alert(
                    agent_id=me,
                    severity=severity,
                    time=now,
                    message=f"{why}load {m.load_percent:.0f} % of {a.rated_capacity:.0f} MVA"
                    + (f", capacity exceeded in {m.time_to_capacity_s / 60:.0f} min" if m.time_to_capacity_s else ""),
                )
            )
            options = [o for f in self.feeders.values() for o in f.transfer_options]
            out.append(
                BusMessage(
                    source=me,
                    topic=Topic.LOAD_CHANGES,
                    kind="load_transfer_request",
                    payload={
                        "element": me,
                        "element_type": self.agent_type,
                        "load_percent": m.load_percent,
                        "available_kva": max(0.0, self.capacity_kva - load_kva),
                        "time_to_capacity_s": m.time_to_capacity_s,
                        "transfer_options": options,
                    },
                )
            )
            if m.shedding_plan:
                out.append(
                    BusMessage(
                        source=me,
                        topic=Topic.LOAD_CHANGES,
                        kind="load_shedding_plan",
                        payload={
                            "substation": me,
                            "state": m.state.value,
                            "load_percent": m.load_percent,
                            "target_percent": a.shed_target_percent,
                            "plan": m.shedding_plan,
                            "customers": sum(p["customers"] for p in m.shedding_plan),
                            "critical_customers": sum(p["critical_customers"] for p in m.shedding_plan),
                        },
                    )
                )
            if a.peak_actions == "immediate":
                out += [
                    BusMessage(source=me, target=t, kind="optimize_taps", payload={"cvr": True})
                    for t in self.links.transformers
                ]
                out += [
                    BusMessage(source=me, target=c, kind="maximize_var_support", payload={"on": True})
                    for c in self.links.capacitors
                ]
        elif m.state not in (_S.HIGH_LOAD, _S.EMERGENCY_MODE) and m.load_percent < a.high_load_percent - 5.0:
            if m.transfer_requested and a.peak_actions == "immediate":
                out += [
                    BusMessage(source=me, target=t, kind="optimize_taps", payload={"cvr": False})
                    for t in self.links.transformers
                ]
                out += [
                    BusMessage(source=me, target=c, kind="maximize_var_support", payload={"on": False})
                    for c in self.links.capacitors
                ]
            m.transfer_requested = False
            m.shedding_plan = []
        return m, out

    def _feeder_fault_response(self, feeder: str, description: str | None, now: float) -> list[Action]:
        info = self.feeders.get(feeder, FeederInfo(feeder, None, 0))
        plan = {
            "feeder": feeder,
            "isolate_with": info.breaker,
            "description": description,
            "customers_affected": info.customers,
            "critical_customers_affected": info.critical_customers,
            "reroute_options": list(info.transfer_options),
        }
        critical = f" ({info.critical_customers} critical)" if info.critical_customers else ""
        return [
            Alert(
                agent_id=self.agent_id,
                severity=Severity.CRITICAL,
                time=now,
                message=f"Feeder {feeder} fault"
                + (f" ({description})" if description else "")
                + f": {info.customers} customers{critical} affected; "
                f"{len(info.transfer_options)} reroute option(s)",
            ),
            BusMessage(source=self.agent_id, topic=Topic.FAULT_ALERTS, kind="reroute_plan", payload=plan, urgent=True),
        ]

    def on_forecast(
        self, memory: SubstationMemory, crossing_s: float | None, peak_kw: float, now: float
    ) -> SubstationMemory:
        """The gateway's load forecast: when the load crosses `high_load_percent`, and its peak."""
        m = copy.deepcopy(memory)
        m.forecast_crossing_s, m.forecast_peak_kw, m.forecast_made = crossing_s, peak_kw, now
        return m

    def request(
        self, memory: SubstationMemory, request: str, args: dict[str, Any], now: float
    ) -> tuple[SubstationMemory, list[Action]]:
        m = copy.deepcopy(memory)
        if request == "maintenance":
            m.maintenance = bool(args.get("on", True))
            return m, []
        raise ValueError(f"substation {self.agent_id}: unknown request {request!r} (expected maintenance)")

    def attributes(self, memory: Memory) -> dict[str, Any]:
        m = memory
        assert isinstance(m, SubstationMemory)
        a = self.attrs
        return {
            "rated_capacity": a.rated_capacity,
            "current_load": m.load_kw / 1000.0,
            "load_percentage": m.load_percent,
            "bus_voltage_kv": m.bus_voltage_kv,
            "load_trend_kw_per_h": m.trend_kw_per_h,
            "time_to_capacity_s": m.time_to_capacity_s,
            "load_shedding_plan": m.shedding_plan,
            "forecast_peak_kw": m.forecast_peak_kw,
            "forecast_crossing_s": m.forecast_crossing_s,
            "num_feeders": a.num_feeders or len(self.feeders),
            "feeder_agents": sorted(self.feeders),
        }


# --------------------------------------------------------------------------- the type, declared once

POINTS: dict[str, spec.PointName] = {
    "bus_voltage_kv": spec.KV,
    "total_load_kw": spec.KW,
    "total_load_kvar": spec.KVAR,
    "frequency_hz": spec.HZ,
}


def _links(b: spec.Build) -> Links:
    down = b.topology.downstream(b.agent_id)
    return Links(
        transformers=b.of_type(down, "transformer"),
        capacitors=b.of_type(down, "capacitor_bank"),
        breakers=b.of_type(down, "circuit_breaker"),
        lines=b.of_type(down, "power_line"),
        customers_downstream=b.topology.meters_downstream(b.agent_id),
    )


def _build(b: spec.Build, links: Links) -> SubstationAgent:
    topo = b.topology
    feeders = tuple(
        FeederInfo(
            n,
            topo.protecting_breaker(n),
            topo.meters_downstream(n),
            tuple(o.to_dict() for o in topo.alternative_supply_paths(n)),
            critical_customers=b.critical_downstream(n),
        )
        for n in links.lines
    )
    return SubstationAgent(b.agent_id, b.attrs, links, feeders=feeders)


def _derive_inputs(rt: spec.RuntimeView, agent_id: str, wall: float | None) -> dict[str, Any]:
    """The feeders' loads and faults, and what the transformers and capacitor banks are doing."""
    links = rt.agents[agent_id].links
    loads = {}
    for line in links.lines:
        v = rt.readings.get(line, {}).get("active_power_kw")
        if v is not None:
            loads[line] = float(v)
    faulted = tuple(sorted(ln for ln in links.lines if rt.memory[ln].state is LineState.FAULTED))
    xfmrs = links.transformers
    return {
        "feeder_loads_kw": loads,
        "faulted_feeders": faulted,
        "fault_descriptions": {ln: getattr(rt.memory[ln], "fault_description", None) or "" for ln in faulted},
        "faulted_transformers": tuple(t for t in xfmrs if rt.memory[t].state is TransformerState.FAULTED),
        "overheated_transformers": tuple(t for t in xfmrs if getattr(rt.memory[t], "critical_alerted", False)),
        "regulating": tuple(t for t in xfmrs if rt.memory[t].state is TransformerState.VOLTAGE_REGULATION)
        + tuple(
            c for c, ty in rt.types.items() if ty == "capacitor_bank" and rt.memory[c].state is CapacitorState.SWITCHING
        ),
    }


def _shed(rt: spec.RuntimeView, substation: str, now: float, args: Mapping[str, Any]) -> list[Action]:
    """Carry out the substation's load-shedding plan: open the listed feeder breakers."""
    plan = getattr(rt.memory[substation], "shedding_plan", [])
    if not plan:
        raise ValueError(f"substation {substation} has no load-shedding plan (load is below its high-load level)")
    actions: list[Action] = []
    for item in plan:
        breaker = item.get("breaker")
        if breaker in rt.agents:
            actions += rt.request(
                breaker,
                "open",
                now,
                reason=f"load shedding by {substation}: {item['feeder']} ({item['load_kw']:.0f} kW)",
            )
    actions.append(
        Alert(
            agent_id=substation,
            severity=Severity.CRITICAL,
            time=now,
            message=f"load shedding: {', '.join(i['feeder'] for i in plan)} opened on request",
        )
    )
    return actions


SPEC = spec.AgentSpec(
    type_name="substation",
    listing_order=5,
    table=TABLE,
    attributes=SubstationAttributes,
    points=POINTS,
    inputs=SubstationInputs,
    derived=frozenset(
        {
            "feeder_loads_kw",
            "faulted_feeders",
            "fault_descriptions",
            "faulted_transformers",
            "regulating",
            "overheated_transformers",
        }
    ),
    derive_inputs=_derive_inputs,
    links=_links,
    factory=_build,
    step_order=5,
    requests=("maintenance", "shed"),
    runtime_requests={"shed": _shed},
    subscriptions=(Topic.FAULT_ALERTS, Topic.LOAD_CHANGES, Topic.VOLTAGE_EVENTS),
    visualization=visualization.substation_view,
    description="the substation: total load and its forecast, feeder and transformer faults, coordinated "
    "response, load shedding",
)
