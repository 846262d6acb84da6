"""AgentRuntime: every agent of one site, the topology, the bus and the meter fleet.

Sans-IO. The daemon feeds it point values, protection events, switching operations, command
results and meter batches, calls `tick(now)` at its cadence, and carries out the returned
actions: `ControlRequest` (write the agent's command point through the IED adapter, with
interlocks), `Alert`, `BusMessage` (already delivered inside; the ones people outside need are
published as notices, gateway/agents/notices.py), `StateChange` and `BulkStateChange` (append
to the event log).

Fast events are not left for the next tick: a protection event (trip, reclose, lockout, reset)
or a breaker's measured position change steps that breaker, everything it feeds and the
substation at once, and `on_protection_event` / `on_point` return the actions to carry out
now. Actions from `on_command_result` are queued and returned by the next `tick`.

Interruptions: the breakers tell at once which meter groups lose and regain supply; the meter
fleet turns that into interruption records (a return by auto-reclose held pending until the
reclose sequence is over) and a `customer_impact` notice says who is affected.

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
from gateway.agents.base import Agent, Memory
from gateway.agents.elements.circuit_breaker import FAULT_CAUSES, BreakerState, CircuitBreakerAgent
from gateway.agents.registry import Registry, spec_for
from gateway.agents.schema import AgentType, SmartMeterAttributes
from gateway.agents.elements.smart_meter import BulkStateChange, MeterFleet
from gateway.agents.spec import AgentSpec, Build, input_field, type_name
from gateway.agents.elements.substation import SubstationAgent
from gateway.agents.visualization import meters_metadata
from gateway.agents.elements.transformer import TransformerAgent, TransformerState
from gateway.agents.bus import Bus
from gateway.config import SiteConfig
from gateway.maintenance.health import HealthInputs
from gateway.maintenance.revenue import RevenueGuard, RevenueSettings
from gateway.agents.reliability import MOMENTARY_THRESHOLD_S
from gateway.agents.topology import METER_GROUP, Topology

log = logging.getLogger(__name__)

# No quantity an agent reads (amperes, kilowatts, volts, degrees, operation counts) comes near this;
# a reading beyond it is a decoding fault, not a measurement.
MAX_MAGNITUDE = 1e12

RECLOSE_SEQUENCE_MARGIN_S = 5.0
"""A reclose sequence not reported over by protection ends this long after its reclaim time."""

SNAPSHOT_KEY = "agents"
SNAPSHOT_VERSION = 1

_OPEN_STATES = {
    BreakerState.TRIPPED,
    BreakerState.OPEN_MANUAL,
    BreakerState.LOCKED_OUT,
    BreakerState.MAINTENANCE,
    BreakerState.RECLOSING,
}
_BREAKER, _LINE, _TRANSFORMER = (
    AgentType.CIRCUIT_BREAKER.value,
    AgentType.POWER_LINE.value,
    AgentType.TRANSFORMER.value,
)
_SUBSTATION, _METERS = AgentType.SUBSTATION.value, AgentType.SMART_METER.value


TIME_ATTRIBUTES = frozenset({"last_trip_date", "last_switched", "overload_since", "last_reading_date", "since"})
"""Attributes holding monotonic times; views show them as POSIX seconds once the wall offset is known."""


class UnknownAgent(KeyError):
    def __str__(self) -> str:
        return f"no agent or meter named {self.args[0]!r}"


class AgentRuntime:
    """Every agent of one site; what each type is and does comes from its spec (gateway/agents/registry.py)."""

    def __init__(
        self,
        site: SiteConfig,
        now: float,
        *,
        infrastructure_period_s: float = 1.0,
        meter_period_s: float = 5.0,
        momentary_threshold_s: float | None = None,
        meter_attributes: SmartMeterAttributes | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.site = site
        self.registry = registry
        """The agent types this runtime knows (None: every type of the gateway, `registry.SPECS`)."""
        self.topology = Topology.from_site(site)
        self.bus = Bus()
        self.infrastructure_period_s = infrastructure_period_s
        self.meter_period_s = meter_period_s
        self.agents: dict[str, Agent[Any, Any]] = {}
        self.types: dict[str, str] = {}
        """Agent id → type name."""
        self.specs: dict[str, AgentSpec] = {}
        """Agent id → its type's spec."""
        self.memory: dict[str, Memory] = {}
        self.readings: dict[str, dict[str, float | bool | None]] = {}
        self.last_step: dict[str, float] = {}
        self.fault_pending: set[str] = set()
        self.failed: set[str] = set()
        self._pending: list[Action] = []
        self._lost_groups: set[str] = set()
        self._lost_since: dict[str, float] = {}
        self._reclose_sequences: dict[str, float] = {}
        """Breakers between a protection trip and the end of their reclose sequence → last event time."""
        self.position_changes: dict[str, float] = {}
        """Breakers whose measured position changed, not yet stepped (see `on_point`)."""
        self._reclaim_s = {sc.breaker: sc.reclose.reclaim_s for sc in site.protection if sc.reclose is not None}
        self._last_meter_eval: float | None = None
        self.wall_offset: float | None = None
        """wall − monotonic, learnt from `tick(now, wall)`; used to move restored times."""
        self._restored_offset: float | None = None
        self.started = now
        for cfg in site.agents:
            spec = spec_for(type_name(cfg.type), registry)
            unknown = spec.unknown_points(set(cfg.points))
            if unknown:
                raise ValueError(
                    f"agent {cfg.id}: {spec.type_name} has no point named {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(spec.points)) or 'none'})"
                )
            attrs = spec.attributes.model_validate(cfg.attributes)
            if spec.factory is None or spec.links is None:
                if spec.type_name == _METERS and meter_attributes is None:
                    # an [[agents]] entry of type smart_meter carries the fleet-wide meter settings
                    assert isinstance(attrs, SmartMeterAttributes)
                    meter_attributes = attrs
                continue
            build = Build(cfg.id, attrs, frozenset(cfg.points), site, self.topology)
            agent = spec.factory(build, spec.links(build))
            self.agents[cfg.id] = agent
            self.types[cfg.id] = spec.type_name
            self.specs[cfg.id] = spec
            self.memory[cfg.id] = agent.initial_memory(now)
            self.readings[cfg.id] = {}
        self._stepping = sorted(self.agents, key=lambda a: self.specs[a].step_order)
        """Agent ids in stepping order: what others read first (breakers, lines, ..., the substation)."""
        self.fleet = MeterFleet(site.meter_groups, now, meter_attributes)
        self.revenue = self._revenue_guard()
        if momentary_threshold_s is None:
            subs = [a for a in self.agents.values() if isinstance(a, SubstationAgent)]
            momentary_threshold_s = subs[0].attrs.momentary_interruption_threshold_s if subs else MOMENTARY_THRESHOLD_S
        self.momentary_threshold_s = momentary_threshold_s
        for agent_id, spec in self.specs.items():
            self.bus.subscribe(agent_id, *spec.subscriptions)
        self.messages_received: dict[str, int] = {a: 0 for a in self.agents}

    # ------------------------------------------------------------------ building

    def _first_upstream(self, node: str, node_type: str) -> str | None:
        return next((u for u in self.topology.upstream(node) if self.topology.type_of(u) == node_type), None)

    def _revenue_guard(self) -> RevenueGuard | None:
        """Energy balances of the transformers that measure their load and have meters behind them."""
        cfg = self.site.maintenance.revenue
        if not cfg.enabled:
            return None
        meters: dict[str, tuple[tuple[str, ...], np.ndarray, list[str]]] = {}
        for g in self.fleet.groups:
            xfmr = g.config.connected_transformer
            if self.types.get(xfmr) != _TRANSFORMER or "load_kw" not in self.site.agent(xfmr).points:
                continue
            groups, idx, ids = meters.get(xfmr, ((), np.zeros(0, dtype=np.int64), []))
            meters[xfmr] = (
                groups + (g.config.id,),
                np.concatenate([idx, np.arange(g.start, g.stop)]),
                ids + self.fleet.ids[g.start : g.stop],
            )
        if not meters:
            return None
        return RevenueGuard(
            meters,
            RevenueSettings(
                window_s=cfg.window_s,
                threshold_percent=cfg.threshold_percent,
                technical_loss_percent=cfg.technical_loss_percent,
                persistence=cfg.persistence,
                baseline_windows=cfg.baseline_windows,
            ),
        )

    # ------------------------------------------------------------------ inputs from the daemon

    def on_point(
        self, agent_id: str, name: str, value: float | bool | None, good: bool, now: float, *, step: bool = True
    ) -> list[Action | BulkStateChange]:
        """Store a reading; a breaker's position change steps it and what it feeds at once (actions returned).

        With `step=False` the change is only noted, for `step_position_changes` once the rest of
        the batch of readings is in.
        """
        values = self.readings.get(agent_id)
        if values is None:
            return []
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not abs(value) <= MAX_MAGNITUDE:
            good = False  # NaN, infinity and absurd magnitudes are never measurements
        previous = values.get(name)
        values[name] = value if good else None
        if (
            name == "closed"
            and good
            and value is not None
            and previous is not None
            and bool(value) != bool(previous)
            and self.types[agent_id] == _BREAKER
        ):
            if step:
                return self._step_now(self._affected_by(agent_id), now)
            self.position_changes.setdefault(agent_id, now)
        return []

    def step_position_changes(self) -> list[Action | BulkStateChange]:
        """Step what the breakers whose position changed (noted by `on_point(step=False)`) concern."""
        changes, self.position_changes = self.position_changes, {}
        out: list[Action | BulkStateChange] = []
        for breaker, now in changes.items():
            out += self._step_now(self._affected_by(breaker), now)
        return out

    def on_protection_event(
        self, kind: str, breaker: str, element: str, phase: str, current_a: float, now: float
    ) -> list[Action | BulkStateChange]:
        """A protection event for `breaker`; trips, recloses, lockouts and resets step it and what it feeds at once."""
        agent = self.agents.get(breaker)
        if not isinstance(agent, CircuitBreakerAgent):
            log.warning("protection event %s for %r, which is not a breaker agent", kind, breaker)
            return []
        memory, actions = agent.on_protection_event(self.memory[breaker], kind, element, phase, current_a, now)  # type: ignore[arg-type]
        self.memory[breaker] = memory
        out: list[Action | BulkStateChange] = list(actions)
        if kind == "trip":
            if memory.trip_cause in FAULT_CAUSES:
                self.fault_pending.add(breaker)
            if breaker in self._reclaim_s:
                self._reclose_sequences[breaker] = now
        elif kind == "reclose" and breaker in self._reclose_sequences:
            self._reclose_sequences[breaker] = now
        elif kind in ("lockout", "reset"):
            self._end_reclose_sequence(breaker)
        if kind in ("trip", "reclose", "lockout", "reset"):
            out += self._step_now(self._affected_by(breaker), now, delivered=actions)
            out.sort(key=lambda a: 0 if isinstance(a, BusMessage) and a.urgent else 1)  # fault traffic first
        return out

    def on_switching(self, agent_id: str, action: str, origin: str, now: float) -> None:
        """The gateway is carrying out `action` ("open"/"close") on `agent_id` for `origin` (e.g.
        "local:alice", "scada:host1", "flisr", "protection"): its position change is expected.

        Call it when the operation is issued; a position change within the agent's confirm window
        is then that operation, not a discrepancy. Elements without an agent that tracks its
        position (a switch with no agent) are left alone.
        """
        if action not in ("open", "close"):
            raise ValueError(f"switching action must be 'open' or 'close', not {action!r}")
        agent = self.agents.get(agent_id)
        expect = getattr(agent, "expect_operation", None)
        if expect is None:
            return
        self.memory[agent_id] = expect(self.memory[agent_id], action, origin, now)
        if action == "close":
            self._end_reclose_sequence(agent_id)  # a close by an operator or a plan starts afresh

    def on_health(
        self,
        agent_id: str,
        health: HealthInputs,
        now: float,
        *,
        horizon_days: float = 60.0,
        threshold: float = 0.2,
        acceptable_risk: float = 0.25,
    ) -> list[Action]:
        """A transformer's health evaluation (from the daemon's history); what its agent says of it."""
        agent = self.agents.get(agent_id)
        if not isinstance(agent, TransformerAgent):
            raise UnknownAgent(agent_id)
        memory, actions = agent.on_health(
            self.memory[agent_id],  # type: ignore[arg-type]
            health,
            now,
            horizon_days=horizon_days,
            threshold=threshold,
            acceptable_risk=acceptable_risk,
        )
        self.memory[agent_id] = memory
        return list(actions) + self._deliver(actions, now)

    def on_command_result(self, agent_id: str, name: str, ok: bool, now: float) -> None:
        if not ok:
            self._pending.append(
                Alert(
                    agent_id=agent_id,
                    severity=Severity.MAJOR,
                    time=now,
                    message=f"command {name} was refused or failed",
                )
            )

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
        # no position read yet: a normally-open device (a tie) is taken as open
        return bool(getattr(getattr(self.agents[breaker], "attrs", None), "normally_open", False))

    def open_breakers(self) -> set[str]:
        return {b for b, t in self.types.items() if t == _BREAKER and self.breaker_is_open(b)}

    def _update_supply(self, now: float) -> list[Action]:
        """Which meter groups have lost supply (no closed path from the substation, ties included):
        tell the fleet, and say who is affected."""
        open_ = self.open_breakers()
        unfed = self.topology.unfed(open_)
        lost = {g for g, t in self.topology.node_types.items() if t == METER_GROUP and g in unfed}
        if lost == self._lost_groups:
            return []
        out: list[Action] = []
        newly_lost, back = sorted(lost - self._lost_groups), sorted(self._lost_groups - lost)
        if newly_lost:
            self.fleet.set_supply(newly_lost, True, now)
            self.fleet.interruption_started(newly_lost, now)
            for g in newly_lost:
                self._lost_since[g] = now
            out.append(self._customer_impact("supply_lost", newly_lost, open_, now))
        if back:
            self.fleet.set_supply(back, False, now)
            reclosing = {g for b in self._reclose_sequences for g in self.topology.meter_groups_downstream(b)}
            pending = [g for g in back if g in reclosing]
            self.fleet.interruption_ended(pending, now, pending=True)
            self.fleet.interruption_ended([g for g in back if g not in reclosing], now, pending=False)
            out.append(self._customer_impact("supply_restored", back, open_, now))
            for g in back:
                self._lost_since.pop(g, None)
        self._lost_groups = lost
        return out

    def _customer_impact(self, event: str, groups: list[str], open_breakers: set[str], now: float) -> BusMessage:
        """Who lost (or got back) supply: customers and critical customers by line section and transformer."""
        fleet, topo = self.fleet, self.topology
        by_line: dict[str, dict[str, Any]] = {}
        by_transformer: list[dict[str, Any]] = []
        critical_ids: list[str] = []
        for gid in groups:
            cfg = next(g.config for g in fleet.groups if g.config.id == gid)
            xfmr = cfg.connected_transformer
            line = self._first_upstream(xfmr, _LINE) if xfmr in topo.node_types else None
            critical_ids += cfg.critical_ids()
            n, c = cfg.count, cfg.critical_count
            by_transformer.append(
                {"transformer": xfmr, "line": line, "group": gid, "customers": n, "critical_customers": c}
            )
            entry = by_line.setdefault(
                line or "",
                {
                    "line": line,
                    "breaker": topo.protecting_breaker(line) if line else None,
                    "customers": 0,
                    "critical_customers": 0,
                },
            )
            entry["customers"] += n
            entry["critical_customers"] += c
        # the open breakers this loss (or what is still open) is behind, and why each is open
        behind = (
            [b for b in sorted(open_breakers) if set(topo.meter_groups_downstream(b)) & set(groups)]
            if event == "supply_lost"
            else []
        )
        causes = []
        for b in behind:
            m = self.memory[b]
            causes.append(
                {
                    "breaker": b,
                    "state": m.state.value,
                    "cause": getattr(m, "trip_cause", None)
                    if m.state in (BreakerState.TRIPPED, BreakerState.RECLOSING, BreakerState.LOCKED_OUT)
                    else None,
                }
            )
        since = [self._lost_since[g] for g in groups if g in self._lost_since]
        payload = {
            "event": event,
            "breakers": causes,
            "customers": sum(t["customers"] for t in by_transformer),
            "critical_customers": len(critical_ids),
            "critical_meters": critical_ids,
            "by_line": list(by_line.values()),
            "by_transformer": by_transformer,
            "interruption_s": (now - min(since)) if event == "supply_restored" and since else None,
            "reclose_pending": event == "supply_restored"
            and any(g in {x for b in self._reclose_sequences for x in topo.meter_groups_downstream(b)} for g in groups),
        }
        source = next((a for a, t in self.types.items() if t == _SUBSTATION), self.site.site.substation_id)
        return BusMessage(
            source=source,
            topic=Topic.FAULT_ALERTS if event == "supply_lost" else Topic.LOAD_CHANGES,
            kind="customer_impact",
            payload=payload,
            urgent=event == "supply_lost",
        )

    def _end_reclose_sequence(self, breaker: str) -> None:
        """The reclose sequence of `breaker` is over: returns of supply it made are final."""
        if self._reclose_sequences.pop(breaker, None) is not None:
            self.fleet.confirm_restorations(self.topology.meter_groups_downstream(breaker))

    def _affected_by(self, breaker: str) -> list[str]:
        """The agents a switching of `breaker` concerns: itself, everything it feeds, its substation."""
        out = [breaker] + [n for n in self.topology.downstream(breaker) if n in self.agents]
        sub = self.agents[breaker].links.substation
        if sub and sub not in out:
            out.append(sub)
        return out

    def _inputs(self, agent_id: str, wall: float | None) -> Any:
        """The agent's inputs: its last good readings by point name, and what its spec derives."""
        spec = self.specs[agent_id]
        assert spec.inputs is not None
        names, booleans = spec.input_fields, spec.boolean_inputs
        kw: dict[str, Any] = {}
        for name, value in self.readings[agent_id].items():
            key = input_field(name)
            if key in names and value is not None:
                kw[key] = bool(value) if key in booleans else value
        kw.update(spec.derive_inputs(self, agent_id, wall))
        return spec.inputs(**kw)

    def tick(self, now: float, wall: float | None = None) -> list[Action | BulkStateChange]:
        """Step every agent that is due (meters in bulk); return what the daemon must do."""
        if wall is not None:
            self.wall_offset = wall - now
            if self._restored_offset is not None:
                self.shift_times(self._restored_offset - self.wall_offset)
                self._restored_offset = None
        out: list[Action | BulkStateChange] = list(self._pending)
        self._pending = []
        for breaker, event_time in list(self._reclose_sequences.items()):
            # a sequence whose end protection never reported (a restart in between): over after its reclaim time
            if now - event_time > self._reclaim_s.get(breaker, 0.0) + RECLOSE_SEQUENCE_MARGIN_S:
                self._end_reclose_sequence(breaker)
        out += self._update_supply(now)
        for agent_id in self._stepping:
            last = self.last_step.get(agent_id)
            if last is not None and now - last < self.infrastructure_period_s:
                continue
            self.last_step[agent_id] = now
            out += self._step_agent(agent_id, now, wall)
        out += self._update_supply(now)
        if self._last_meter_eval is None or now - self._last_meter_eval >= self.meter_period_s:
            self._last_meter_eval = now
            changes, actions = self.fleet.evaluate(now)
            out += changes
            out += actions
        out += self._revenue(now)
        out += self._deliver(out, now)
        out.sort(key=lambda a: 0 if isinstance(a, BusMessage) and a.urgent else 1)
        return out

    def _revenue(self, now: float) -> list[Action]:
        """Revenue protection: integrate each metered transformer's load, close its balances."""
        guard = self.revenue
        if guard is None:
            return []
        supplied = {}
        for xfmr in guard.transformers:
            value = self.readings[xfmr].get("load_kw")
            live = self.memory[xfmr].state not in (TransformerState.OFFLINE, TransformerState.FAULTED)
            supplied[xfmr] = live
            guard.on_load(xfmr, float(value) if isinstance(value, int | float) and live else None, now)
        out: list[Action] = []
        for f in guard.evaluate(now, self.fleet.energy_kwh, self.fleet.last_reading, self.fleet.energy_known, supplied):
            what = (
                "unexplained energy (theft, a bypassed meter or an illegal connection)"
                if f.kind == "unexplained_energy"
                else "meters registering more than was delivered"
            )
            out.append(
                Alert(
                    agent_id=f.transformer,
                    severity=Severity.WARNING,
                    time=now,
                    message=f"{f.transformer}: {what}: {f.gap_percent:+.1f} % of {f.transformer_kwh:.1f} kWh "
                    f"over {f.windows_over} windows; first suspect {f.suspects[0].meter}"
                    if f.suspects
                    else f"{f.transformer}: {what}: {f.gap_percent:+.1f} %",
                )
            )
            out.append(
                BusMessage(
                    source=f.transformer,
                    topic=Topic.MAINTENANCE_SCHEDULED,
                    kind="revenue_protection",
                    payload=f.to_dict(),
                )
            )
        return out

    def _step_agent(self, agent_id: str, now: float, wall: float | None) -> list[Action]:
        """One step of one agent; a failing agent is skipped (and alarmed once), the others go on."""
        agent = self.agents[agent_id]
        try:
            memory, actions = agent.step(self.memory[agent_id], self._inputs(agent_id, wall), now)  # type: ignore[attr-defined]
        except Exception as exc:  # one agent's failure must not stop the others
            log.exception("agent %s step failed", agent_id)
            alerts: list[Action] = []
            if agent_id not in self.failed:
                alerts.append(
                    Alert(
                        agent_id=agent_id,
                        severity=Severity.MAJOR,
                        time=now,
                        message=f"agent logic failed and is skipped until it recovers: {exc}",
                    )
                )
            self.failed.add(agent_id)
            return alerts
        self.failed.discard(agent_id)
        self.memory[agent_id] = memory
        if (
            self.types[agent_id] == _BREAKER
            and agent_id in self.fault_pending
            and memory.state in (BreakerState.CLOSED_NORMAL, BreakerState.CLOSED_HIGH_CURRENT)
        ):
            self.fault_pending.discard(agent_id)
        return list(actions)

    def _step_now(
        self, agent_ids: Sequence[str], now: float, delivered: Sequence[Action] = ()
    ) -> list[Action | BulkStateChange]:
        """Step these agents at once (in the usual order), outside the tick cadence, and deliver what they say.

        `delivered`: actions already produced by the event itself, whose bus messages go out with these.
        """
        wall = None if self.wall_offset is None else now + self.wall_offset
        wanted = set(agent_ids)
        out: list[Action | BulkStateChange] = []
        out += self._update_supply(now)
        for agent_id in self._stepping:
            if agent_id in wanted:
                out += self._step_agent(agent_id, now, wall)
                if self.types[agent_id] == _BREAKER:
                    out += self._update_supply(now)  # what the breaker's new state feeds, before its line steps
        out += self._update_supply(now)
        out += self._deliver([*delivered, *out], now)
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
        runtime_handler = self.specs[agent_id].message_handlers.get(message.kind)
        if runtime_handler is not None:
            return runtime_handler(self, agent_id, message, now)
        handler = getattr(self.agents[agent_id], "on_message", None)
        if handler is None:
            return []
        memory, actions = handler(self.memory[agent_id], message, now)
        self.memory[agent_id] = memory
        return list(actions)

    # ------------------------------------------------------------------ operator requests

    def on_forecast(self, substation: str, crossing_s: float | None, peak_kw: float, now: float) -> None:
        """The gateway's load forecast for `substation` (when it crosses its high-load level)."""
        agent = self.agents.get(substation)
        if isinstance(agent, SubstationAgent):
            self.memory[substation] = agent.on_forecast(self.memory[substation], crossing_s, peak_kw, now)  # type: ignore[arg-type]

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
        runtime_handler = self.specs[agent_id].runtime_requests.get(request)
        if runtime_handler is not None:
            return runtime_handler(self, agent_id, now, args)
        handler = getattr(agent, "request", None)
        if handler is None:
            raise ValueError(f"agent {agent_id} ({self.types[agent_id]}) takes no requests")
        memory, actions = handler(self.memory[agent_id], request, args, now)
        self.memory[agent_id] = memory
        return list(actions)

    # ------------------------------------------------------------------ views

    def list_agents(self) -> list[dict[str, Any]]:
        rows = [
            {
                "id": a,
                "type": t,
                "state": self.memory[a].state.value,
                "since": self.memory[a].since,
                "since_wall": self.to_wall(self.memory[a].since),
            }
            for a, t in self.types.items()
        ]
        for g in self.fleet.groups:
            counts = self.fleet.counts(slice(g.start, g.stop))
            top = max(counts, key=lambda k: counts[k]) if counts else "Active"
            rows.append(
                {
                    "id": g.config.id,
                    "type": _METERS,
                    "state": top,
                    "since": None,
                    "meters": g.config.count,
                    "states": counts,
                }
            )
        return rows

    def show(self, agent_id: str) -> dict[str, Any]:
        if agent_id in self.agents:
            agent, m = self.agents[agent_id], self.memory[agent_id]
            links = {f.name: getattr(agent.links, f.name) for f in fields(agent.links)}
            live = agent.attributes(m)
            return {
                "id": agent_id,
                "type": self.types[agent_id],
                "state": m.state.value,
                "since": m.since,
                "since_wall": self.to_wall(m.since),
                "wall_offset": self.wall_offset,
                "attributes": _plain(self._wall_times(live)),
                "last_transitions": list(m.history),
                "visualization_metadata": self.visualization(agent_id, live),
                "links": _plain({k: v for k, v in links.items() if v not in (None, (), 0)}),
                "readings": _plain(self.readings[agent_id]),
                "messages_received": self.messages_received.get(agent_id, 0),
            }
        for g in self.fleet.groups:
            if g.config.id == agent_id:
                sl = slice(g.start, g.stop)
                counts = self.fleet.counts(sl)
                return {
                    "id": agent_id,
                    "type": _METERS,
                    "meters": g.config.count,
                    "connected_transformer": g.config.connected_transformer,
                    "meter_type": g.config.meter_type,
                    "states": counts,
                    "visualization_metadata": meters_metadata(g.config.meter_type, counts),
                    "attributes": {
                        "total_demand_kw": float(np.nansum(self.fleet.demand_kw[sl])),
                        "energy_consumed": float(self.fleet.energy_kwh[sl].sum()),
                    },
                }
        if agent_id in self.fleet.index:
            meter = self.fleet.meter(agent_id)
            return {
                "id": agent_id,
                "type": _METERS,
                "state": meter.pop("state"),
                "since": meter["since"],
                "since_wall": self.to_wall(meter.pop("since")),
                "attributes": _plain(self._wall_times(meter)),
            }
        raise UnknownAgent(agent_id)

    def visualization(self, agent_id: str, live: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The use case's `visualization_metadata` of an agent now (gateway/agents/visualization.py)."""
        agent, m = self.agents[agent_id], self.memory[agent_id]
        attrs = getattr(agent, "attrs", None)
        configured = attrs.model_dump() if attrs is not None else {}
        view = self.specs[agent_id].visualization
        if view is None:
            return {}
        return view(configured, agent.attributes(m) if live is None else live, m.state.value)

    def meter_states(self) -> dict[str, dict[str, int]]:
        """Meter counts by state for each meter group (bulk, from the fleet's columns)."""
        return {g.config.id: self.fleet.counts(slice(g.start, g.stop)) for g in self.fleet.groups}

    def reliability(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        since = self.started if since is None else since
        until = max(self.last_time, since + 1e-9) if until is None else until
        # interruptions not recorded yet: open ones, and returns by auto-reclose still pending
        result = self.fleet.ledger.indices(
            since,
            until,
            ongoing_starts=self.fleet.outage_start,
            ongoing_ends=self.fleet.restore_pending,
            momentary_threshold_s=self.momentary_threshold_s,
        )
        return result.to_dict()

    def _wall_times(self, attributes: dict[str, Any]) -> dict[str, Any]:
        if self.wall_offset is None:
            return attributes
        return {
            k: (
                v + self.wall_offset
                if k in TIME_ATTRIBUTES and isinstance(v, int | float) and not isinstance(v, bool)
                else v
            )
            for k, v in attributes.items()
        }

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
            "agents": {a: {"type": self.types[a], "memory": m.to_dict()} for a, m in self.memory.items()},
            "fault_pending": sorted(self.fault_pending),
            "fleet": self.fleet.snapshot(),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"agent snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
        for agent_id, saved in snapshot.get("agents", {}).items():
            agent = self.agents.get(agent_id)
            if agent is None or saved.get("type") != self.types[agent_id]:
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
        self._lost_since = {}
        self.fleet.confirm_restorations()  # no reclose sequence survives a restart
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
