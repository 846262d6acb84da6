"""AgentRuntime: every agent of one site, the topology, the bus and the meter fleet.

Sans-IO. The daemon feeds it point values, protection events, command results and meter
batches, calls `tick(now)` at its cadence, and carries out the returned actions:
`ControlRequest` (write the agent's command point through the IED adapter, with interlocks),
`Alert`, `BusMessage` (already delivered inside; forward to the uplink if wanted),
`StateChange` and `BulkStateChange` (append to the event log). Actions produced by
`on_protection_event` and `on_command_result` are queued and returned by the next `tick`.

Persistence: `snapshot()` gives a msgpack-able dict, `restore()` takes it back; see
`save_to_store` / `restore_from_store` for the SQLite store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from gateway.agents.actions import Action, Alert, BusMessage, Severity, Topic
from gateway.agents.base import Agent, Links, Memory
from gateway.agents.capacitor_bank import CapacitorBankAgent, CapacitorInputs, CapacitorState
from gateway.agents.circuit_breaker import BreakerInputs, BreakerState, CircuitBreakerAgent
from gateway.agents.power_line import LineInputs, LineState, PowerLineAgent
from gateway.agents.renewable import DerInputs, RenewableEnergyAgent
from gateway.agents.schema import (
    AGENT_ATTRIBUTE_MODELS,
    AgentType,
    CapacitorBankAttributes,
    CircuitBreakerAttributes,
    PowerLineAttributes,
    RenewableEnergyAttributes,
    SmartMeterAttributes,
    SubstationAttributes,
    TransformerAttributes,
)
from gateway.agents.smart_meter import BulkStateChange, MeterFleet
from gateway.agents.substation import FeederInfo, SubstationAgent, SubstationInputs
from gateway.agents.transformer import TransformerAgent, TransformerInputs, TransformerState
from gateway.bus import Bus
from gateway.config import SiteConfig
from gateway.reliability import MOMENTARY_THRESHOLD_S
from gateway.topology import Topology

log = logging.getLogger(__name__)

# No quantity an agent reads (amperes, kilowatts, volts, degrees, operation counts) comes near this;
# a reading beyond it is a decoding fault, not a measurement.
MAX_MAGNITUDE = 1e12

SNAPSHOT_KEY = "agents"
SNAPSHOT_VERSION = 1

_OPEN_STATES = {BreakerState.TRIPPED, BreakerState.OPEN_MANUAL, BreakerState.LOCKED_OUT, BreakerState.MAINTENANCE,
                BreakerState.RECLOSING}
# stepping order: what others read first
_ORDER = [AgentType.CIRCUIT_BREAKER, AgentType.POWER_LINE, AgentType.TRANSFORMER, AgentType.CAPACITOR_BANK,
          AgentType.RENEWABLE_ENERGY, AgentType.SUBSTATION]
_INPUT_TYPES: dict[AgentType, type] = {
    AgentType.CIRCUIT_BREAKER: BreakerInputs, AgentType.POWER_LINE: LineInputs,
    AgentType.TRANSFORMER: TransformerInputs, AgentType.CAPACITOR_BANK: CapacitorInputs,
    AgentType.RENEWABLE_ENERGY: DerInputs, AgentType.SUBSTATION: SubstationInputs,
}


TIME_ATTRIBUTES = frozenset({"last_trip_date", "last_switched", "overload_since", "last_reading_date", "since"})
"""Attributes holding monotonic times; views show them as POSIX seconds once the wall offset is known."""


class UnknownAgent(KeyError):
    def __str__(self) -> str:
        return f"no agent or meter named {self.args[0]!r}"


class AgentRuntime:
    def __init__(self, site: SiteConfig, now: float, *, infrastructure_period_s: float = 1.0,
                 meter_period_s: float = 5.0, momentary_threshold_s: float | None = None,
                 meter_attributes: SmartMeterAttributes | None = None) -> None:
        self.site = site
        self.topology = Topology.from_site(site)
        self.bus = Bus()
        self.infrastructure_period_s = infrastructure_period_s
        self.meter_period_s = meter_period_s
        self.agents: dict[str, Agent[Any, Any]] = {}
        self.types: dict[str, AgentType] = {}
        self.memory: dict[str, Memory] = {}
        self.readings: dict[str, dict[str, float | bool | None]] = {}
        self.last_step: dict[str, float] = {}
        self.fault_pending: set[str] = set()
        self.failed: set[str] = set()
        self._pending: list[Action] = []
        self._lost_groups: set[str] = set()
        self._last_meter_eval: float | None = None
        self.wall_offset: float | None = None
        """wall − monotonic, learnt from `tick(now, wall)`; used to move restored times."""
        self._restored_offset: float | None = None
        self.started = now
        for cfg in site.agents:
            if cfg.type is AgentType.SMART_METER:
                # an [[agents]] entry of type smart_meter carries the fleet-wide meter settings
                if meter_attributes is None:
                    meter_attributes = SmartMeterAttributes.model_validate(cfg.attributes)
                continue
            attrs = AGENT_ATTRIBUTE_MODELS[cfg.type].model_validate(cfg.attributes)
            agent = self._build(cfg.id, cfg.type, attrs, set(cfg.points))
            self.agents[cfg.id] = agent
            self.types[cfg.id] = cfg.type
            self.memory[cfg.id] = agent.initial_memory(now)
            self.readings[cfg.id] = {}
        self.fleet = MeterFleet(site.meter_groups, now, meter_attributes)
        if momentary_threshold_s is None:
            subs = [a for a in self.agents.values() if isinstance(a, SubstationAgent)]
            momentary_threshold_s = (subs[0].attrs.momentary_interruption_threshold_s if subs
                                     else MOMENTARY_THRESHOLD_S)
        self.momentary_threshold_s = momentary_threshold_s
        for agent_id, t in self.types.items():
            if t is AgentType.SUBSTATION:
                self.bus.subscribe(agent_id, Topic.FAULT_ALERTS, Topic.LOAD_CHANGES, Topic.VOLTAGE_EVENTS)
            elif t in (AgentType.TRANSFORMER, AgentType.CAPACITOR_BANK, AgentType.RENEWABLE_ENERGY):
                self.bus.subscribe(agent_id, Topic.VOLTAGE_EVENTS)
            elif t is AgentType.CIRCUIT_BREAKER:
                self.bus.subscribe(agent_id, Topic.FAULT_ALERTS)
        self.messages_received: dict[str, int] = {a: 0 for a in self.agents}

    # ------------------------------------------------------------------ building

    def _first_upstream(self, node: str, node_type: str) -> str | None:
        return next((u for u in self.topology.upstream(node) if self.topology.type_of(u) == node_type), None)

    def _build(self, agent_id: str, agent_type: AgentType, attrs: Any, points: set[str]) -> Agent[Any, Any]:
        topo = self.topology
        sub = self._first_upstream(agent_id, AgentType.SUBSTATION.value)
        breaker = topo.protecting_breaker(agent_id)
        if agent_type is AgentType.POWER_LINE:
            down = topo.downstream(agent_id)
            links = Links(upstream_breaker=breaker,
                          breakers=tuple(dict.fromkeys([b for b in [breaker, *topo.controllers(agent_id)] if b])),
                          transformers=tuple(n for n in down if topo.type_of(n) == AgentType.TRANSFORMER.value),
                          substation=sub, adjacent_lines=tuple(topo.neighbours(agent_id, AgentType.POWER_LINE.value)),
                          transfer_options=tuple(o.to_dict() for o in topo.alternative_supply_paths(agent_id)),
                          customers_downstream=topo.meters_downstream(agent_id))
            assert isinstance(attrs, PowerLineAttributes)
            return PowerLineAgent(agent_id, attrs, links)
        if agent_type is AgentType.TRANSFORMER:
            line = self._first_upstream(agent_id, AgentType.POWER_LINE.value)
            siblings = [n for n in (topo.children(line) if line else []) if n != agent_id
                        and topo.type_of(n) == AgentType.TRANSFORMER.value]
            links = Links(upstream_breaker=breaker, upstream_line=line, substation=sub,
                          adjacent_transformers=tuple(siblings), customers_downstream=topo.meters_downstream(agent_id),
                          transfer_options=tuple(o.to_dict() for o in topo.alternative_supply_paths(line)) if line else ())
            assert isinstance(attrs, TransformerAttributes)
            return TransformerAgent(agent_id, attrs, links)
        if agent_type is AgentType.CIRCUIT_BREAKER:
            lines = [n for n in topo.children(agent_id) if topo.type_of(n) == AgentType.POWER_LINE.value]
            links = Links(upstream_breaker=breaker, lines=tuple(lines), substation=sub,
                          customers_downstream=topo.meters_downstream(agent_id))
            assert isinstance(attrs, CircuitBreakerAttributes)
            cmds = ("position_cmd",) if "position_cmd" in points else ("trip_cmd", "close_cmd")
            return CircuitBreakerAgent(agent_id, attrs, links, command_points=cmds)
        if agent_type is AgentType.SUBSTATION:
            down = topo.downstream(agent_id)
            feeders = []
            for n in down:
                if topo.type_of(n) == AgentType.POWER_LINE.value:
                    feeders.append(FeederInfo(n, topo.protecting_breaker(n), topo.meters_downstream(n),
                                              tuple(o.to_dict() for o in topo.alternative_supply_paths(n))))
            links = Links(transformers=tuple(n for n in down if topo.type_of(n) == AgentType.TRANSFORMER.value),
                          capacitors=tuple(n for n in down if topo.type_of(n) == AgentType.CAPACITOR_BANK.value),
                          breakers=tuple(n for n in down if topo.type_of(n) == AgentType.CIRCUIT_BREAKER.value),
                          lines=tuple(f.line for f in feeders), customers_downstream=topo.meters_downstream(agent_id))
            assert isinstance(attrs, SubstationAttributes)
            return SubstationAgent(agent_id, attrs, links, feeders=tuple(feeders))
        if agent_type is AgentType.CAPACITOR_BANK:
            assert isinstance(attrs, CapacitorBankAttributes)
            return CapacitorBankAgent(agent_id, attrs, Links(upstream_breaker=breaker, substation=sub),
                                      has_feedback="steps_active" in points)
        if agent_type is AgentType.RENEWABLE_ENERGY:
            assert isinstance(attrs, RenewableEnergyAttributes)
            return RenewableEnergyAgent(agent_id, attrs, Links(upstream_breaker=breaker, substation=sub),
                                        has_connection_feedback="connected" in points)
        raise ValueError(f"agent {agent_id}: no runtime for type {agent_type.value}")

    # ------------------------------------------------------------------ inputs from the daemon

    def on_point(self, agent_id: str, name: str, value: float | bool | None, good: bool, now: float) -> None:
        values = self.readings.get(agent_id)
        if values is None:
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not abs(value) <= MAX_MAGNITUDE:
            good = False  # NaN, infinity and absurd magnitudes are never measurements
        values[name] = value if good else None

    def on_protection_event(self, kind: str, breaker: str, element: str, phase: str, current_a: float,
                            now: float) -> None:
        agent = self.agents.get(breaker)
        if not isinstance(agent, CircuitBreakerAgent):
            log.warning("protection event %s for %r, which is not a breaker agent", kind, breaker)
            return
        memory, actions = agent.on_protection_event(self.memory[breaker], kind, element, phase, current_a, now)  # type: ignore[arg-type]
        self.memory[breaker] = memory
        if kind == "trip":
            self.fault_pending.add(breaker)
        self._pending += actions
        self._update_supply(now)

    def on_command_result(self, agent_id: str, name: str, ok: bool, now: float) -> None:
        if not ok:
            self._pending.append(Alert(agent_id=agent_id, severity=Severity.MAJOR, time=now,
                                       message=f"command {name} was refused or failed"))

    def ingest_meter_batch(self, meter_ids: Sequence[str], columns: Mapping[str, np.ndarray], now: float) -> int:
        return self.fleet.ingest(meter_ids, columns, now)

    # ------------------------------------------------------------------ the cycle

    def breaker_is_open(self, breaker: str) -> bool | None:
        m = self.memory.get(breaker)
        if m is None:
            return None
        closed = getattr(m, "closed", None)
        if m.state in _OPEN_STATES:
            return True
        if closed is not None:
            return not closed
        return False

    def open_breakers(self) -> set[str]:
        return {b for b, t in self.types.items() if t is AgentType.CIRCUIT_BREAKER and self.breaker_is_open(b)}

    def _update_supply(self, now: float) -> None:
        open_ = self.open_breakers()
        lost: set[str] = set()
        for b in open_:
            lost.update(self.topology.meter_groups_downstream(b))
        if lost != self._lost_groups:
            newly_lost, back = lost - self._lost_groups, self._lost_groups - lost
            if newly_lost:
                self.fleet.set_supply(sorted(newly_lost), True, now)
            if back:
                self.fleet.set_supply(sorted(back), False, now)
            self._lost_groups = lost

    def _inputs(self, agent_id: str, agent_type: AgentType, wall: float | None) -> Any:
        values = self.readings[agent_id]
        cls = _INPUT_TYPES[agent_type]
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for name, value in values.items():
            key = "in_" if name == "in" else name
            if key in names and value is not None:
                kw[key] = bool(value) if key in ("closed", "connected") else value
        agent = self.agents[agent_id]
        upstream = agent.links.upstream_breaker
        upstream_open = self.breaker_is_open(upstream) if upstream else None
        if agent_type is AgentType.POWER_LINE:
            if upstream:
                kw["breaker_closed"] = None if upstream_open is None else not upstream_open
                kw["fault_reported"] = upstream in self.fault_pending
        elif agent_type is AgentType.TRANSFORMER:
            if upstream_open:
                kw["energized"] = False
        elif agent_type is AgentType.RENEWABLE_ENERGY:
            if upstream_open:
                kw["grid_available"] = False
        elif agent_type is AgentType.CAPACITOR_BANK:
            if wall is not None:
                kw["wall_time"] = wall
        elif agent_type is AgentType.SUBSTATION:
            loads = {}
            for line in agent.links.lines:
                v = self.readings.get(line, {}).get("active_power_kw")
                if v is not None:
                    loads[line] = float(v)  # type: ignore[arg-type]
            kw["feeder_loads_kw"] = loads
            kw["faulted_feeders"] = tuple(sorted(ln for ln in agent.links.lines
                                                 if self.memory[ln].state is LineState.FAULTED))
            xfmrs = agent.links.transformers
            kw["faulted_transformers"] = tuple(t for t in xfmrs if self.memory[t].state is TransformerState.FAULTED)
            kw["overheated_transformers"] = tuple(t for t in xfmrs if getattr(self.memory[t], "critical_alerted", False))
            kw["regulating"] = tuple(t for t in xfmrs if self.memory[t].state is TransformerState.VOLTAGE_REGULATION) + \
                tuple(c for c, ty in self.types.items() if ty is AgentType.CAPACITOR_BANK
                      and self.memory[c].state is CapacitorState.SWITCHING)
        return cls(**kw)

    def tick(self, now: float, wall: float | None = None) -> list[Action | BulkStateChange]:
        """Step every agent that is due (meters in bulk); return what the daemon must do."""
        if wall is not None:
            self.wall_offset = wall - now
            if self._restored_offset is not None:
                self.shift_times(self._restored_offset - self.wall_offset)
                self._restored_offset = None
        out: list[Action | BulkStateChange] = list(self._pending)
        self._pending = []
        self._update_supply(now)
        for agent_type in _ORDER:
            for agent_id, t in self.types.items():
                if t is not agent_type:
                    continue
                last = self.last_step.get(agent_id)
                if last is not None and now - last < self.infrastructure_period_s:
                    continue
                self.last_step[agent_id] = now
                agent = self.agents[agent_id]
                try:
                    memory, actions = agent.step(self.memory[agent_id], self._inputs(agent_id, t, wall), now)  # type: ignore[attr-defined]
                except Exception as exc:  # one agent's failure must not stop the others
                    log.exception("agent %s step failed", agent_id)
                    if agent_id not in self.failed:
                        out.append(Alert(agent_id=agent_id, severity=Severity.MAJOR, time=now,
                                         message=f"agent logic failed and is skipped until it recovers: {exc}"))
                    self.failed.add(agent_id)
                    continue
                self.failed.discard(agent_id)
                self.memory[agent_id] = memory
                out += actions
                if t is AgentType.CIRCUIT_BREAKER and agent_id in self.fault_pending and \
                        memory.state in (BreakerState.CLOSED_NORMAL, BreakerState.CLOSED_HIGH_CURRENT):
                    self.fault_pending.discard(agent_id)
        self._update_supply(now)
        if self._last_meter_eval is None or now - self._last_meter_eval >= self.meter_period_s:
            self._last_meter_eval = now
            changes, actions = self.fleet.evaluate(now)
            out += changes
            out += actions
        out += self._deliver(out, now)
        out.sort(key=lambda a: 0 if isinstance(a, BusMessage) and a.urgent else 1)
        return out

    def _deliver(self, actions: Sequence[Action | BulkStateChange], now: float) -> list[Action]:
        """Put this cycle's bus messages on the bus and hand them to their recipients (one hop)."""
        self.bus.post_all(a for a in actions if isinstance(a, BusMessage))
        follow: list[Action] = []
        for delivery in self.bus.drain():
            recipient = delivery.recipient
            if recipient not in self.agents:
                continue
            self.messages_received[recipient] = self.messages_received.get(recipient, 0) + 1
            follow += self._on_message(recipient, delivery.message, now)
        return follow

    def _on_message(self, agent_id: str, message: BusMessage, now: float) -> list[Action]:
        t = self.types[agent_id]
        if t is AgentType.TRANSFORMER and message.kind == "optimize_taps":
            return self.request(agent_id, "cvr", now, on=bool(message.payload.get("cvr", True)))
        if t is AgentType.TRANSFORMER and message.kind == "reduce_load":
            return self.request(agent_id, "cvr", now, on=True)
        if t is AgentType.CAPACITOR_BANK and message.kind == "maximize_var_support":
            return self.request(agent_id, "var_support", now, on=bool(message.payload.get("on", True)))
        return []

    # ------------------------------------------------------------------ operator requests

    def request(self, agent_id: str, request: str, now: float, **args: Any) -> list[Action]:
        if agent_id not in self.agents:
            if request == "clear_tamper":
                ids = args.get("meters") or [agent_id]
                cleared = self.fleet.clear_tamper(ids)
                if not cleared:
                    raise UnknownAgent(agent_id)
                return []
            raise UnknownAgent(agent_id)
        agent = self.agents[agent_id]
        if self.types[agent_id] is AgentType.SUBSTATION and request == "shed":
            return self._shed(agent_id, now)
        handler = getattr(agent, "request", None)
        if handler is None:
            raise ValueError(f"agent {agent_id} ({self.types[agent_id].value}) takes no requests")
        memory, actions = handler(self.memory[agent_id], request, args, now)
        self.memory[agent_id] = memory
        return list(actions)

    def _shed(self, substation: str, now: float) -> list[Action]:
        """Carry out the substation's load-shedding plan: open the listed feeder breakers."""
        plan = getattr(self.memory[substation], "shedding_plan", [])
        if not plan:
            raise ValueError(f"substation {substation} has no load-shedding plan (load is below its high-load level)")
        actions: list[Action] = []
        for item in plan:
            breaker = item.get("breaker")
            if breaker in self.agents:
                actions += self.request(breaker, "open", now, reason=f"load shedding by {substation}: "
                                        f"{item['feeder']} ({item['load_kw']:.0f} kW)")
        actions.append(Alert(agent_id=substation, severity=Severity.CRITICAL, time=now,
                             message=f"load shedding: {', '.join(i['feeder'] for i in plan)} opened on request"))
        return actions

    # ------------------------------------------------------------------ views

    def list_agents(self) -> list[dict[str, Any]]:
        rows = [{"id": a, "type": t.value, "state": self.memory[a].state.value, "since": self.memory[a].since,
                 "since_wall": self.to_wall(self.memory[a].since)} for a, t in self.types.items()]
        for g in self.fleet.groups:
            counts = self.fleet.counts(slice(g.start, g.stop))
            top = max(counts, key=lambda k: counts[k]) if counts else "Active"
            rows.append({"id": g.config.id, "type": AgentType.SMART_METER.value, "state": top,
                         "since": None, "meters": g.config.count, "states": counts})
        return rows

    def show(self, agent_id: str) -> dict[str, Any]:
        if agent_id in self.agents:
            agent, m = self.agents[agent_id], self.memory[agent_id]
            links = {f.name: getattr(agent.links, f.name) for f in fields(agent.links)}
            return {"id": agent_id, "type": self.types[agent_id].value, "state": m.state.value, "since": m.since,
                    "since_wall": self.to_wall(m.since), "wall_offset": self.wall_offset,
                    "attributes": _plain(self._wall_times(agent.attributes(m))), "last_transitions": list(m.history),
                    "links": _plain({k: v for k, v in links.items() if v not in (None, (), 0)}),
                    "readings": _plain(self.readings[agent_id]),
                    "messages_received": self.messages_received.get(agent_id, 0)}
        for g in self.fleet.groups:
            if g.config.id == agent_id:
                sl = slice(g.start, g.stop)
                return {"id": agent_id, "type": AgentType.SMART_METER.value, "meters": g.config.count,
                        "connected_transformer": g.config.connected_transformer, "meter_type": g.config.meter_type,
                        "states": self.fleet.counts(sl),
                        "attributes": {"total_demand_kw": float(np.nansum(self.fleet.demand_kw[sl])),
                                       "energy_consumed": float(self.fleet.energy_kwh[sl].sum())}}
        if agent_id in self.fleet.index:
            meter = self.fleet.meter(agent_id)
            return {"id": agent_id, "type": AgentType.SMART_METER.value, "state": meter.pop("state"),
                    "since": meter["since"], "since_wall": self.to_wall(meter.pop("since")),
                    "attributes": _plain(self._wall_times(meter))}
        raise UnknownAgent(agent_id)

    def reliability(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        since = self.started if since is None else since
        until = max(self.last_time, since + 1e-9) if until is None else until
        result = self.fleet.ledger.indices(since, until, ongoing_starts=self.fleet.outage_start,
                                           momentary_threshold_s=self.momentary_threshold_s)
        return result.to_dict()

    def _wall_times(self, attributes: dict[str, Any]) -> dict[str, Any]:
        if self.wall_offset is None:
            return attributes
        return {k: (v + self.wall_offset if k in TIME_ATTRIBUTES and isinstance(v, int | float)
                    and not isinstance(v, bool) else v) for k, v in attributes.items()}

    def to_wall(self, monotonic: float | None) -> float | None:
        if monotonic is None or self.wall_offset is None:
            return None
        return monotonic + self.wall_offset

    @property
    def last_time(self) -> float:
        times = list(self.last_step.values()) + ([self._last_meter_eval] if self._last_meter_eval else [])
        return max(times) if times else self.started

    # ------------------------------------------------------------------ persistence

    def shift_times(self, delta_s: float) -> None:
        """Move every stored monotonic time by `delta_s` (monotonic origin differs after a reboot)."""
        if abs(delta_s) < 1e-6:
            return
        log.info("agent times moved by %.3f s to the new monotonic clock", delta_s)
        for memory in self.memory.values():
            memory.shift_times(delta_s)
        self.fleet.shift_times(delta_s)

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "wall_offset": self.wall_offset,
            "agents": {a: {"type": self.types[a].value, "memory": m.to_dict()} for a, m in self.memory.items()},
            "fault_pending": sorted(self.fault_pending),
            "fleet": self.fleet.snapshot(),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"agent snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
        for agent_id, saved in snapshot.get("agents", {}).items():
            agent = self.agents.get(agent_id)
            if agent is None or saved.get("type") != self.types[agent_id].value:
                log.info("snapshot: agent %s is no longer in the site (or changed type); skipped", agent_id)
                continue
            try:
                self.memory[agent_id] = agent.memory_from_dict(saved["memory"])
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("snapshot: agent %s could not be restored (%s); starting fresh", agent_id, exc)
        self.fault_pending = set(snapshot.get("fault_pending", [])) & set(self.agents)
        if "fleet" in snapshot and not self.fleet.restore(snapshot["fleet"]):
            log.warning("snapshot: the meter population changed; meter states start fresh")
        self._lost_groups = set()
        self._restored_offset = snapshot.get("wall_offset")


def save_to_store(store: Any, runtime: AgentRuntime, now: float) -> None:
    store.save_snapshot(SNAPSHOT_KEY, runtime.snapshot(), now)


def restore_from_store(store: Any, runtime: AgentRuntime) -> bool:
    snap = store.load_snapshot(SNAPSHOT_KEY)
    if snap is None:
        return False
    runtime.restore(snap)
    return True


def _plain(value: Any) -> Any:
    """JSON-friendly copy (tuples to lists, NaN to None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
