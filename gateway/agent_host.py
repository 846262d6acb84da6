"""Carries the agents' decisions out: feeds them points, steps them, acts on what they return.

Agents are sans-IO (gateway/agents/); this host is the only place their actions meet the
world: control requests become operations for the switching authority (its interlocks, its
audit, its check-back; gateway/switching/), alerts and state changes go to the event log and
the uplink, the bus messages people outside need are published as notices (`notices/<kind>`,
gateway/agents/notices.py) and logged, and their state is snapshotted to the state database so
it survives restarts.

Fast events reach the agents when they happen: protection events (from the protection bridge's
bookkeeping) and breaker position changes step the agents concerned at once, and the switching
the gateway carries out is announced with `on_switching` so the agents can tell it from a
position discrepancy.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.agents.actions import Alert, BusMessage, ControlRequest, StateChange
from gateway.agents.notices import notices
from gateway.agents.runtime import AgentRuntime, restore_from_store, save_to_store
from gateway.agents.elements.smart_meter import BulkStateChange
from gateway.config import SiteConfig
from gateway.contract.points import Point, PointUpdate, ProcessImage
from gateway.storage import Store
from gateway.switching.authority import Refused, kind_for_point
from gateway.switching.model import Operation, Origin, Via

log = logging.getLogger("stima.agents")

Publish = Callable[..., None]
Operate = Callable[[Operation], Any]
"""Hands an operation to the switching authority (raises Refused when it is refused)."""


class AgentHost:
    def __init__(
        self,
        site: SiteConfig,
        image: ProcessImage,
        *,
        store: Store,
        publish: Publish,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        operate: Operate | None = None,
        defer: Callable[[Callable[[], None]], Any] | None = None,
    ) -> None:
        self.site = site
        self._defer = defer or (lambda fn: fn())
        """Runs what a point update set off after the update's other listeners (protection first)."""
        self._store = store
        self._publish = publish
        self._monotonic = monotonic
        self._wall = wall
        self.operate = operate
        """The switching authority's entry point (set by the daemon once it is built)."""
        self.runtime = AgentRuntime(site, monotonic())
        try:
            if restore_from_store(store, self.runtime):
                log.info("agent state restored")
        except Exception:
            log.exception("agent snapshot could not be restored; starting from initial states")
        self._feeds: dict[str, list[tuple[str, str]]] = {}
        for agent in site.agents:
            for name, point_id in agent.points.items():
                self._feeds.setdefault(point_id, []).append((agent.id, name))
        for point_id in self._feeds:
            if point_id in image:
                image.subscribe(point_id, self._on_point)
        self.message_listeners: list[Callable[[BusMessage], None]] = []
        """Called with every bus message the agents say (the maintenance service hears its requests)."""
        self.actions_done = 0
        self.control_refused = 0
        self.notices_published = 0
        self._position_step_due = False
        self.dirty = False
        """Agent states changed since the last snapshot (saved by the daemon's agent loop)."""

    def _on_point(self, point: Point, update: PointUpdate) -> None:
        for agent_id, name in self._feeds.get(point.point_id, ()):
            self.runtime.on_point(
                agent_id, name, update.value, update.quality.good, update.receive_monotonic, step=False
            )
        if self.runtime.position_changes and not self._position_step_due:
            # a breaker moved: step its agents once the rest of this batch of readings is in
            self._position_step_due = True
            self._defer(self._step_position_changes)

    def _step_position_changes(self) -> None:
        self._position_step_due = False
        self.carry_out(self.runtime.step_position_changes())

    def resync(self, points: Sequence[Point]) -> None:
        """Readings carried over from a previous configuration (a reload), without stepping."""
        for point in points:
            for agent_id, name in self._feeds.get(point.point_id, ()):
                self.runtime.on_point(
                    agent_id,
                    name,
                    point.value,
                    point.quality.good,
                    point.receive_monotonic or self._monotonic(),
                    step=False,
                )

    def on_protection_event(self, event: Any) -> None:
        self.carry_out(
            self.runtime.on_protection_event(
                event.kind, event.breaker, event.element, event.phase, float(event.current_a or 0.0), event.time
            )
        )

    def on_switching(self, agent_id: str, action: str, origin: str, now: float | None = None) -> None:
        """The gateway is carrying out `action` ("open"/"close") on `agent_id` for `origin`; call it
        when the operation is issued (AgentRuntime.on_switching)."""
        self.runtime.on_switching(agent_id, action, origin, self._monotonic() if now is None else now)

    def ingest_meters(self, meter_ids: Sequence[str], columns: Mapping[str, Any], _reading_time: float) -> None:
        self.runtime.ingest_meter_batch(meter_ids, columns, self._monotonic())

    def tick(self) -> None:
        self.carry_out(self.runtime.tick(self._monotonic(), self._wall()))

    def request(self, agent_id: str, request: str, origin: Origin | None = None, **args: Any) -> list[dict[str, Any]]:
        """An operator's request to an agent; what it asks of the plant carries `origin`."""
        actions = self.runtime.request(agent_id, request, self._monotonic(), **args)
        refusals = self.carry_out(actions, origin)
        if refusals:  # the operator hears why the plant was not operated
            raise refusals[0]
        return [_describe(a) for a in actions]

    def current_states(self) -> list[tuple[str, dict[str, Any]]]:
        """`state/<agent>` of every agent of the site file as it is now (retained: a host that joins
        reads each agent's state at once, not only those that changed since it last connected)."""
        out: list[tuple[str, dict[str, Any]]] = []
        for agent in self.site.agents:
            memory = self.runtime.memory.get(agent.id)
            if memory is None:
                continue
            out.append(
                (
                    f"state/{agent.id}",
                    {
                        "time": self._wall(),
                        "agent": agent.id,
                        "agent_type": str(agent.type),
                        "old": None,
                        "new": _name(memory.state),
                        "cause": "current state",
                    },
                )
            )
        return out

    def snapshot(self) -> None:
        save_to_store(self._store, self.runtime, self._wall())
        self.dirty = False

    def carry_out(self, actions: Sequence[Any], origin: Origin | None = None) -> list[Refused]:
        """Act on the agents' actions; the switching authority's refusals of their control requests."""
        changed = False
        refusals: list[Refused] = []
        messages: list[BusMessage] = []
        for action in actions:
            self.actions_done += 1
            if isinstance(action, ControlRequest):
                refused = self._control(action, origin)
                if refused is not None:
                    refusals.append(refused)
            elif isinstance(action, StateChange):
                changed = True
                record: dict[str, Any] = {
                    "agent_type": str(getattr(action.agent_type, "value", action.agent_type)),
                    "old": _name(action.old),
                    "new": _name(action.new),
                    "cause": action.cause,
                }
                self._log_event(self._wall(), action.agent_id, "state", record)
                self._publish(
                    f"state/{action.agent_id}", {"time": self._wall(), "agent": action.agent_id, **record}, retain=True
                )
                log.info("agent state", extra={"agent": action.agent_id, **record})
            elif isinstance(action, BulkStateChange):
                changed = True
                record = {
                    "agent_type": action.agent_type,
                    "old": action.old,
                    "new": action.new,
                    "cause": action.cause,
                    "count": len(action.meter_ids),
                }
                self._log_event(self._wall(), action.group_id, "state", {**record, "meters": list(action.meter_ids)})
                self._publish(
                    "events",
                    {
                        "time": self._wall(),
                        "source": action.group_id,
                        "kind": "meters.state",
                        **record,
                        "meters": list(action.meter_ids[:1000]),
                    },
                )
                log.info("meter states", extra={"group": action.group_id, **record})
            elif isinstance(action, Alert):
                record = {"severity": _name(action.severity), "message": action.message}
                self._log_event(self._wall(), action.agent_id, "alert", record)
                self._publish("alarms", {"time": self._wall(), "source": action.agent_id, **record})
                log.warning(
                    "agent alert",
                    extra={"agent": action.agent_id, "severity": record["severity"], "alert": action.message},
                )
            elif isinstance(action, BusMessage):
                messages.append(action)
        if messages:
            self._notify(messages)
            for listener in self.message_listeners:
                for message in messages:
                    try:
                        listener(message)
                    except Exception:
                        log.exception("bus message listener failed", extra={"kind": message.kind})
        if changed:
            self.dirty = True
        return refusals

    def _log_event(self, time: float, source: str, kind: str, record: dict[str, Any]) -> None:
        """The event log, when the disk allows: a full or read-only state directory loses the record
        (logged), never the agents' decisions or what they publish."""
        try:
            self._store.append_event(time, source, kind, record)
        except sqlite3.Error as exc:
            log.error(
                "agent event not written to the event log", extra={"source": source, "kind": kind, "error": str(exc)}
            )

    def _notify(self, messages: list[BusMessage]) -> None:
        """Publish the notices among this batch's bus messages (QoS 1, not retained) and log them."""
        wall = self._wall()
        published, unknown = notices(messages, wall)
        for kind in unknown:
            log.error(
                "agent message kind missing from the notices table; published with its raw payload",
                extra={"kind": kind},
            )
        for suffix, payload in published:
            self._log_event(
                wall,
                payload["source"],
                f"notice.{payload['kind']}",
                {k: v for k, v in payload.items() if k not in ("time", "source", "kind")},
            )
            self._publish(suffix, payload)
        self.notices_published += len(published)

    def _control(self, req: ControlRequest, origin: Origin | None) -> Refused | None:
        """An agent's control request, as an operation of the agent (or of the operator whose
        request it carries out) for the switching authority."""
        who = origin or Origin(via=Via.AGENT, who=f"agent:{req.agent_id}")
        try:
            kind = kind_for_point(req.point_name, req.value)
            op = Operation(
                kind=kind,
                target=req.agent_id,
                origin=who,
                reason=req.reason,
                value=None if kind.switching else req.value,
                point=None if kind.switching else req.point_name,
            )
            if self.operate is None:
                raise Refused("failed", "the switching authority is not running")
            self.operate(op)
        except (Refused, ValueError) as exc:
            self.control_refused += 1
            log.warning(
                "control request refused",
                extra={"agent": req.agent_id, "point_name": req.point_name, "error": str(exc), "origin": who.who},
            )
            self.runtime.on_command_result(req.agent_id, req.point_name, False, self._monotonic())
            return exc if isinstance(exc, Refused) else Refused("bad_args", str(exc))
        log.info(
            "control request",
            extra={
                "agent": req.agent_id,
                "point_name": req.point_name,
                "value": req.value,
                "reason": req.reason,
                "origin": who.who,
            },
        )
        return None


def _name(state: Any) -> str:
    return str(getattr(state, "value", state))


def _describe(action: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"action": type(action).__name__}
    for key in getattr(action, "__dataclass_fields__", {}):
        value = getattr(action, key)
        out[key] = value if isinstance(value, str | int | float | bool | None) else str(getattr(value, "value", value))
    return out
