"""The fast path: a protection-bound sample → the core → a breaker command at top priority.

The bridge listens on the process image's per-point hook, so a sample is evaluated the moment
its adapter decodes it, not at an agent tick. Commands go to the breaker's IED adapter with
`Priority.PROTECTION`, ahead of every queued read and write. Reclose and lockout state is
written to the state database whenever it changes, and restored at start: a breaker locked
out before a restart is still locked out after it.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from gateway.contract.points import Point, PointUpdate, ProcessImage
from gateway.protection.engine import BreakerCommand, ProtectionEngine, ProtectionEvent
from gateway.storage import Store
from gateway.contract.ports import CommandError, Priority

log = logging.getLogger("stima.protection")

SNAPSHOT_KEY = "protection"
SNAPSHOT_RETRY_S = 2.0
"""How often a protection state the disk refused is written again."""

Submit = Callable[[str, Any, Priority], Any]
"""Hands a write to the breaker's adapter; returns a future (add_done_callback, result)."""
Publish = Callable[[str, dict[str, Any]], None]
EventListener = Callable[[ProtectionEvent], None]


def event_record(event: ProtectionEvent) -> dict[str, Any]:
    """A protection event as the event log and the uplink's `events` carry it: the current the
    element measured, or for 27/59 the voltage (`voltage_kv`) and for 81 the frequency
    (`frequency_hz`) it acted on."""
    record: dict[str, Any] = {
        "breaker": event.breaker,
        "element": event.element,
        "phase": event.phase,
        "current_a": event.current_a,
        "monotonic": event.time,
    }
    if event.measured is not None:
        key = "frequency_hz" if event.element.startswith("81") else "voltage_kv"
        record[key] = round(float(event.measured), 4)
    return record


class ProtectionBridge:
    def __init__(
        self,
        engine: ProtectionEngine,
        image: ProcessImage,
        *,
        submit: Submit,
        store: Store,
        publish: Publish,
        publish_many: Callable[[list[tuple[str, dict[str, Any]]]], None],
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        defer: Callable[[Callable[[], None]], Any] | None = None,
    ) -> None:
        self.engine = engine
        self._image = image
        self._submit = submit
        self._store = store
        self._publish = publish
        self._publish_many = publish_many
        self._wall = wall
        self._monotonic = monotonic
        self._defer = defer or (lambda fn: fn())
        """Runs bookkeeping (event log, uplink, snapshot) after the breaker command has gone."""
        self.event_listeners: list[EventListener] = []
        self.command_listeners: list[Callable[[BreakerCommand], None]] = []
        """Told of every breaker command after it went (the switching authority records them)."""
        self.commands_sent = 0
        self.command_failures = 0
        self.queue_latencies_s: deque[float] = deque(maxlen=100_000)
        """Decoded sample → command accepted by the breaker's adapter (on an idle Modbus TCP command
        link it is already on the socket by then)."""
        self._snapshot_pending = False
        """The last state could not be saved (disk full or read-only): saved again by `step`."""
        self._snapshot_retry_at = -math.inf
        self.wire_latencies_s: deque[float] = deque(maxlen=100_000)
        """Decoded sample → command handed to the breaker's transport (the socket)."""
        saved = store.load_snapshot(SNAPSHOT_KEY)
        if saved:
            engine.restore(saved)
            log.info("protection state restored", extra={"breakers": len(saved) if hasattr(saved, "__len__") else 0})
        for point_id in engine.bound_points:
            if point_id in image:
                image.subscribe(point_id, self._on_sample)

    def save_snapshot(self) -> None:
        """Write the engine's reclose / lockout / thermal state to the state database now."""
        self._store.save_snapshot(SNAPSHOT_KEY, self.engine.snapshot(), self._wall())

    def _on_sample(self, point: Point, update: PointUpdate) -> None:
        value = update.value
        actions = self.engine.on_sample(point.point_id, value, update.quality.good, update.receive_monotonic)
        if actions:
            self.carry_out(actions, sample_monotonic=update.receive_monotonic)

    def step(self, now: float) -> None:
        actions = self.engine.step(now)
        if actions:
            self.carry_out(actions)
        if self._snapshot_pending and now >= self._snapshot_retry_at:
            self._snapshot_retry_at = now + SNAPSHOT_RETRY_S
            self._defer(self._save_pending_snapshot)

    def _save_pending_snapshot(self) -> None:
        """A state the disk refused (e.g. a reclose in its dead time) must not be the one a restart
        finds: write the present state as soon as the disk takes it."""
        try:
            self._store.save_snapshot(SNAPSHOT_KEY, self.engine.snapshot(), self._wall())
        except sqlite3.Error:
            return
        self._snapshot_pending = False
        log.warning("protection state saved again after a failed write")

    def carry_out(self, actions: Iterable[Any], sample_monotonic: float | None = None) -> None:
        """Breaker commands first and at once; the bookkeeping after them."""
        actions = list(actions)
        commands = [a for a in actions if isinstance(a, BreakerCommand)]
        events = [a for a in actions if isinstance(a, ProtectionEvent)]
        for command in commands:
            self._command(command, sample_monotonic)
        changed = bool(commands) or any(e.kind in ("trip", "reclose", "lockout", "reset") for e in events)
        if events or changed:
            self._defer(lambda: self._record(events, changed, commands))

    def _record(self, events: list[ProtectionEvent], changed: bool, commands: list[BreakerCommand]) -> None:
        """Event log, uplink and snapshot for one evaluation, each in one write."""
        wall = self._wall()
        now = self._monotonic()
        rows, messages = [], []
        for event in events:
            record = event_record(event)
            # when the decision was taken: the time of the sample it was taken on, on the wall clock
            record["decision_time"] = wall - max(0.0, now - event.time)
            kind = f"protection.{event.kind}"
            rows.append((wall, event.breaker, kind, record))
            messages.append(("events", {"time": wall, "source": event.breaker, "kind": kind, **record}))
            level = logging.WARNING if event.kind in ("trip", "lockout") else logging.INFO
            log.log(level, f"protection {event.kind}", extra=record)
        # a full or read-only disk loses the records, never the decisions: the listeners below
        # (fault records, FLISR, the switching authority) still hear of every trip
        try:
            self._store.append_events(rows)
        except sqlite3.Error as exc:
            log.error("protection events not written to the event log", extra={"events": len(rows), "error": str(exc)})
        if messages:
            self._publish_many(messages)
        if changed:
            try:
                self._store.save_snapshot(SNAPSHOT_KEY, self.engine.snapshot(), wall)
            except sqlite3.Error as exc:
                self._snapshot_pending = True
                log.error("protection state not saved; retried every few seconds", extra={"error": str(exc)})
        for command in commands:
            for command_listener in self.command_listeners:
                try:
                    command_listener(command)
                except Exception:
                    log.exception("protection command listener failed")
        for event in events:
            for listener in self.event_listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("protection event listener failed")

    def _command(self, cmd: BreakerCommand, sample_monotonic: float | None) -> None:
        try:
            future = self._submit(cmd.point_id, cmd.value, Priority.PROTECTION)
        except CommandError as exc:
            self.command_failures += 1
            log.error(
                "breaker command not sent", extra={"breaker": cmd.breaker, "reason": cmd.reason, "error": str(exc)}
            )
            return
        self.commands_sent += 1
        if sample_monotonic is not None:
            self.queue_latencies_s.append(max(self._monotonic() - sample_monotonic, 0.0))
        log.warning(
            "breaker command",
            extra={
                "breaker": cmd.breaker,
                "point": cmd.point_id,
                "value": cmd.value,
                "reason": cmd.reason,
                "element": cmd.element,
                "phase": cmd.phase,
            },
        )
        future.add_done_callback(lambda f, c=cmd, o=sample_monotonic: self._command_done(c, f, o))

    def _command_done(self, cmd: BreakerCommand, future: Any, origin: float | None) -> None:
        if not future.cancelled() and future.exception() is None:
            sent = future.result()
            if isinstance(sent, float) and origin is not None:
                self.wire_latencies_s.append(max(sent - origin, 0.0))
            return
        self.command_failures += 1
        error = "cancelled" if future.cancelled() else str(future.exception())
        log.error("breaker command failed", extra={"breaker": cmd.breaker, "reason": cmd.reason, "error": error})
        self._publish(
            "alarms",
            {
                "time": self._wall(),
                "source": cmd.breaker,
                "severity": "critical",
                "message": f"{cmd.reason} command to {cmd.breaker} failed: {error}",
            },
        )
