"""Carries the agents' decisions out: feeds them points, steps them, acts on what they return.

Agents are sans-IO (gateway/agents/); this host is the only place their actions meet the
world: control requests become writes through the IED adapters (after interlocks), alerts and
state changes go to the event log and the uplink, the bus messages people outside need are
published as notices (`notices/<kind>`, gateway/agents/notices.py) and logged, and their state
is snapshotted to the state database so it survives restarts.

Fast events reach the agents when they happen: protection events (from the protection bridge's
bookkeeping) and breaker position changes step the agents concerned at once, and the switching
the gateway carries out is announced with `on_switching` so the agents can tell it from a
position discrepancy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.agents.actions import Alert, BusMessage, ControlRequest, StateChange
from gateway.agents.notices import notices
from gateway.agents.runtime import AgentRuntime, restore_from_store, save_to_store
from gateway.agents.smart_meter import BulkStateChange
from gateway.config import SiteConfig
from gateway.points import Point, PointUpdate, ProcessImage
from gateway.storage import Store
from protocols.base import CommandError, Priority

log = logging.getLogger("stima.agents")

Write = Callable[[str, Any, Priority], Any]
Publish = Callable[..., None]
Interlock = Callable[[str, str, Any], str | None]
"""(agent_id, point name, value) → reason to refuse, or None to allow."""


class AgentHost:
    def __init__(
        self,
        site: SiteConfig,
        image: ProcessImage,
        *,
        store: Store,
        write: Write,
        publish: Publish,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        interlock: Interlock | None = None,
        defer: Callable[[Callable[[], None]], Any] | None = None,
    ) -> None:
        self.site = site
        self._defer = defer or (lambda fn: fn())
        """Runs what a point update set off after the update's other listeners (protection first)."""
        self._store = store
        self._write = write
        self._publish = publish
        self._monotonic = monotonic
        self._wall = wall
        self._interlock = interlock
        self.runtime = AgentRuntime(site, monotonic())
        try:
            if restore_from_store(store, self.runtime):
                log.info("agent state restored")
        except Exception:
            log.exception("agent snapshot could not be restored; starting from initial states")
        self._feeds: dict[str, list[tuple[str, str]]] = {}
        self._agent_points: dict[str, Mapping[str, str]] = {a.id: a.points for a in site.agents}
        for agent in site.agents:
            for name, point_id in agent.points.items():
                self._feeds.setdefault(point_id, []).append((agent.id, name))
        for point_id in self._feeds:
            if point_id in image:
                image.subscribe(point_id, self._on_point)
        self.actions_done = 0
        self.control_refused = 0
        self.notices_published = 0
        self._position_step_due = False
        self.dirty = False
        """Agent states changed since the last snapshot (saved by the daemon's agent loop)."""

    def _on_point(self, point: Point, update: PointUpdate) -> None:
        for agent_id, name in self._feeds.get(point.point_id, ()):
            self.runtime.on_point(agent_id, name, update.value, update.quality.good, update.receive_monotonic,
                                  step=False)
        if self.runtime.position_changes and not self._position_step_due:
            # a breaker moved: step its agents once the rest of this batch of readings is in
            self._position_step_due = True
            self._defer(self._step_position_changes)

    def _step_position_changes(self) -> None:
        self._position_step_due = False
        self.carry_out(self.runtime.step_position_changes())

    def on_protection_event(self, event: Any) -> None:
        self.carry_out(self.runtime.on_protection_event(
            event.kind, event.breaker, event.element, event.phase, float(event.current_a or 0.0), event.time
        ))

    def on_switching(self, agent_id: str, action: str, origin: str, now: float | None = None) -> None:
        """The gateway is carrying out `action` ("open"/"close") on `agent_id` for `origin`; call it
        when the operation is issued (AgentRuntime.on_switching)."""
        self.runtime.on_switching(agent_id, action, origin, self._monotonic() if now is None else now)

    def ingest_meters(self, meter_ids: Sequence[str], columns: Mapping[str, Any], _reading_time: float) -> None:
        self.runtime.ingest_meter_batch(meter_ids, columns, self._monotonic())

    def tick(self) -> None:
        self.carry_out(self.runtime.tick(self._monotonic(), self._wall()))

    def request(self, agent_id: str, request: str, **args: Any) -> list[dict[str, Any]]:
        actions = self.runtime.request(agent_id, request, self._monotonic(), **args)
        self.carry_out(actions)
        return [_describe(a) for a in actions]

    def snapshot(self) -> None:
        save_to_store(self._store, self.runtime, self._wall())
        self.dirty = False

    def carry_out(self, actions: Sequence[Any]) -> None:
        changed = False
        messages: list[BusMessage] = []
        for action in actions:
            self.actions_done += 1
            if isinstance(action, ControlRequest):
                self._control(action)
            elif isinstance(action, StateChange):
                changed = True
                record: dict[str, Any] = {"agent_type": str(getattr(action.agent_type, "value", action.agent_type)),
                          "old": _name(action.old), "new": _name(action.new), "cause": action.cause}
                self._store.append_event(self._wall(), action.agent_id, "state", record)
                self._publish(f"state/{action.agent_id}", {"time": self._wall(), "agent": action.agent_id, **record},
                              retain=True)
                log.info("agent state", extra={"agent": action.agent_id, **record})
            elif isinstance(action, BulkStateChange):
                changed = True
                record = {"agent_type": action.agent_type, "old": action.old, "new": action.new,
                                          "cause": action.cause, "count": len(action.meter_ids)}
                self._store.append_event(self._wall(), action.group_id, "state",
                                         {**record, "meters": list(action.meter_ids)})
                self._publish("events", {"time": self._wall(), "source": action.group_id, "kind": "meters.state",
                                         **record, "meters": list(action.meter_ids[:1000])})
                log.info("meter states", extra={"group": action.group_id, **record})
            elif isinstance(action, Alert):
                record = {"severity": _name(action.severity), "message": action.message}
                self._store.append_event(self._wall(), action.agent_id, "alert", record)
                self._publish("alarms", {"time": self._wall(), "source": action.agent_id, **record})
                log.warning("agent alert", extra={"agent": action.agent_id, "severity": record["severity"],
                                                  "alert": action.message})
            elif isinstance(action, BusMessage):
                messages.append(action)
        if messages:
            self._notify(messages)
        if changed:
            self.dirty = True

    def _notify(self, messages: list[BusMessage]) -> None:
        """Publish the notices among this batch's bus messages (QoS 1, not retained) and log them."""
        wall = self._wall()
        published, unknown = notices(messages, wall)
        for kind in unknown:
            log.error("agent message kind missing from the notices table; published with its raw payload",
                      extra={"kind": kind})
        for suffix, payload in published:
            self._store.append_event(wall, payload["source"], f"notice.{payload['kind']}",
                                     {k: v for k, v in payload.items() if k not in ("time", "source", "kind")})
            self._publish(suffix, payload)
        self.notices_published += len(published)

    def _control(self, req: ControlRequest) -> None:
        point_id = self._agent_points.get(req.agent_id, {}).get(req.point_name)
        if point_id is None:
            log.error("control request names no point of the agent",
                      extra={"agent": req.agent_id, "point_name": req.point_name})
            return
        refusal = self._interlock(req.agent_id, req.point_name, req.value) if self._interlock else None
        if refusal:
            self.control_refused += 1
            log.warning("control refused by interlock", extra={"agent": req.agent_id, "point": point_id, "reason": refusal})
            self._store.append_event(self._wall(), req.agent_id, "control.refused",
                                     {"point": point_id, "value": req.value, "reason": refusal})
            self.runtime.on_command_result(req.agent_id, req.point_name, False, self._monotonic())
            return
        try:
            future = self._write(point_id, req.value, Priority.CONTROL)
        except CommandError as exc:
            log.warning("control request failed", extra={"agent": req.agent_id, "point": point_id, "error": str(exc)})
            self.runtime.on_command_result(req.agent_id, req.point_name, False, self._monotonic())
            return
        self._store.append_event(self._wall(), req.agent_id, "control",
                                 {"point": point_id, "value": req.value, "reason": req.reason})
        log.info("control request", extra={"agent": req.agent_id, "point": point_id, "value": req.value,
                                            "reason": req.reason})

        def done(f: Any) -> None:
            ok = not f.cancelled() and f.exception() is None
            if not ok:
                log.warning("control write failed", extra={"agent": req.agent_id, "point": point_id,
                                                            "error": "cancelled" if f.cancelled() else str(f.exception())})
            self.runtime.on_command_result(req.agent_id, req.point_name, ok, self._monotonic())

        future.add_done_callback(done)


def _name(state: Any) -> str:
    return str(getattr(state, "value", state))


def _describe(action: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"action": type(action).__name__}
    for key in getattr(action, "__dataclass_fields__", {}):
        value = getattr(action, key)
        out[key] = value if isinstance(value, str | int | float | bool | None) else str(getattr(value, "value", value))
    return out
