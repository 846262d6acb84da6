"""The daemon's side of switching: owns the authority, the sequences and FLISR, and carries out
what they decide through injected callables.

Every road to the plant ends here: SCADA commands (gateway/commands.py), the local control
socket and CLI, agent requests and shedding (gateway/agent_host.py), FLISR and operator
sequences. Protection's own trips keep their fast path and are recorded after they went.

Nothing here opens a socket or reads a clock: writes go out through `submit` (which returns a
future-like object), protected breakers are operated through the protection bridge, time comes
from the injected `monotonic` and `wall`, and `wake` tells the daemon's switching loop that
something is due.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.config import SiteConfig
from gateway.switching.authority import (
    Accepted,
    AuditEntry,
    Outcome,
    PlantHooks,
    PointWrite,
    ProtectionOperate,
    Refused,
    Selection,
    SwitchingAuthority,
)
from gateway.switching.faults import FaultBook, FaultRecord
from gateway.switching.flisr import LOCKOUT_ROWS, FlisrController, FlisrSettings
from gateway.switching.model import Kind, Operation, Origin, Override, Role, Via
from gateway.switching.network import Network
from gateway.switching.sequences import Sequence, SequenceRunner, Status, validate, with_validation
from gateway.switching.state import GridState

log = logging.getLogger("stima.switching")

SNAPSHOT_KEY = "switching"
FLISR_ORIGIN = Origin(via=Via.FLISR, who="flisr")
LOAD_SAMPLE_PERIOD_S = 1.0
FAR_SIDE_WAIT_S = 3.0
"""How long a close step waits for its far-side voltage to be read again after the previous step."""


class SwitchingService:
    def __init__(
        self,
        site: SiteConfig,
        *,
        image: Any,
        store: Any,
        publish: Callable[..., None],
        submit: Callable[[str, Any], Any],
        protection: Any,
        agents: Any,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        wake: Callable[[], None] = lambda: None,
        flisr: FlisrSettings | None = None,
        select_timeout_s: float = 30.0,
    ) -> None:
        self.site = site
        self._store = store
        self._publish = publish
        self._submit = submit
        self._protection = protection
        self._agents = agents
        self._monotonic = monotonic
        self._wall = wall
        self._wake = wake
        self.network = Network.from_site(site)
        self.state = GridState(self.network)
        self.faults = FaultBook()
        self.authority = SwitchingAuthority(
            self.network,
            self.state,
            self.faults,
            PlantHooks(agent_state=self._agent_state, locked_out=self._locked_out, wall=wall),
            select_timeout_s=select_timeout_s,
        )
        self.runner = SequenceRunner()
        self.flisr = FlisrController(
            self.network, self.state, self.faults, flisr or FlisrSettings(), unusable=self._unusable
        )
        self._recloses = {s.breaker: s.reclose is not None for s in site.protection}
        self._voltage_point = {s.breaker: s.point("voltage_kv") for s in site.protection}
        self._image = image
        self.outcome_listeners: list[Callable[[Outcome], None]] = []
        """Told of every operation's check-back (the load-transfer exchange follows its own)."""
        self.fault_locator: Callable[[str], dict[str, Any] | None] | None = None
        """Breaker → the distance estimate of its latest trip (the disturbance recorder's)."""
        self._last_sample = -1e18
        self._waiting_until: float | None = None
        self._positions_seen = 0
        self._restore()
        for point_id in self.state.points:
            if point_id in image:
                image.subscribe(point_id, self._on_point)
        self.resync()

    # ------------------------------------------------------------------ inputs

    def take_over(self, old: SwitchingService) -> None:
        """A reload: carry over what is in flight in the running configuration — sequences,
        pending check-backs, selections and FLISR's plans — where the devices they name still
        exist (fault records and tags come back from the state database anyway)."""
        known = set(self.network.devices)
        keep = {
            sid: seq for sid, seq in old.runner.sequences.items() if all(step.device in known for step in seq.steps)
        }
        self.runner.sequences.update(keep)
        self.runner._in_flight.update({op: e for op, e in old.runner._in_flight.items() if e[0] in keep})
        self.runner._busy |= {sid for sid in old.runner._busy if sid in keep}
        self.authority._pending.update(
            {op: p for op, p in old.authority._pending.items() if p.accepted.operation.target in known}
        )
        self.authority.sbo = old.authority.sbo
        self.flisr.plans.update(old.flisr.plans)
        self.flisr._due.update({b: d for b, d in old.flisr._due.items() if b in known})
        self.flisr._attempts.update(old.flisr._attempts)
        self.flisr._failed.update(old.flisr._failed)
        dropped = len(old.runner.sequences) - len(keep)
        if dropped:
            log.warning(
                "sequences naming devices the new site file no longer has were not carried over",
                extra={"dropped": dropped},
            )
        self._wake()

    def resync(self) -> None:
        """Read the image's present values again (after a reload carried points over)."""
        for point_id in self.state.points:
            if point_id in self._image:
                p = self._image[point_id]
                if p.receive_monotonic is not None:
                    self.state.on_point(point_id, p.value, p.quality.good, p.receive_monotonic)

    def _on_point(self, point: Any, update: Any) -> None:
        self.state.on_point(point.point_id, update.value, update.quality.good, update.receive_monotonic)
        if self.state.position_changes != self._positions_seen:
            self._positions_seen = self.state.position_changes
            self._wake()

    def on_protection_event(self, event: Any) -> None:
        """Trips, lockouts and resets open, harden and end fault records; lockouts start FLISR."""
        now, wall = self._monotonic(), self._wall()
        breaker = event.breaker
        if breaker not in self.network.devices:
            return
        if event.kind == "trip":
            config = self.state.configuration()
            config[breaker] = True
            feeder = self.network.downstream(breaker, config)
            point = self._voltage_point.get(breaker)
            voltage = None
            if point and point in self._image and self._image[point].quality.good:
                voltage = float(self._image[point].value)
            location = None
            if self.fault_locator is not None:
                try:
                    location = self.fault_locator(breaker)
                except Exception:
                    log.exception("fault location failed", extra={"breaker": breaker})
            self.faults.on_trip(
                breaker,
                event.element,
                float(event.current_a or 0.0),
                voltage,
                feeder,
                now,
                wall,
                recloses=self._recloses.get(breaker, False),
                location=location,
            )
            rec = self.faults.active_for(breaker)
            if rec is not None and rec.status.value == "permanent":
                self._flisr_lockout(breaker, now, wall)
        elif event.kind == "lockout":
            self.faults.on_lockout(breaker, wall)
            self._flisr_lockout(breaker, now, wall)
        elif event.kind == "reset":
            self.faults.on_reset(breaker, wall)
        self._flush()
        self._wake()

    def _flisr_lockout(self, breaker: str, now: float, wall: float) -> None:
        stopped = self.flisr.on_lockout(breaker, now, wall)
        if stopped:
            for seq in self.runner.sequences.values():
                if (
                    seq.source == "flisr"
                    and seq.status is Status.RUNNING
                    and seq.fault == getattr(self.faults.active_for(breaker), "id", None)
                ):
                    self.runner.abort(seq.id, "flisr (the breaker tripped again)", wall)
            self._alarm(breaker, "critical", stopped)

    def on_protection_command(self, command: Any) -> None:
        action = "open" if command.reason in ("trip", "retrip", "backup_trip") else "close"
        self.authority.record_protection(command.breaker, action, command.reason, command.element, command.time)
        self._flush()

    # ------------------------------------------------------------------ requests

    def select(self, op: Operation) -> Selection:
        try:
            return self.authority.select(op, self._monotonic())
        finally:
            self._flush()

    def cancel(self, select_id: str, origin: Origin) -> Selection:
        try:
            return self.authority.cancel(select_id, origin, self._monotonic())
        finally:
            self._flush()

    def operate(self, op: Operation) -> Accepted:
        """Check `op` through the authority and carry it out; raises Refused."""
        try:
            accepted = self.authority.request(op, self._monotonic())
            self._execute(accepted)
            return accepted
        finally:
            self._flush()
            self._wake()

    def _execute(self, accepted: Accepted) -> None:
        op = accepted.operation
        now = self._monotonic()
        for write in accepted.writes:
            if isinstance(write, ProtectionOperate):
                try:
                    engine = self._protection.engine
                    if write.action == "open":
                        actions = engine.manual_trip(write.breaker, now)
                    else:
                        actions = engine.manual_close(write.breaker, now, authorised=write.authorised)
                    self._protection.carry_out(actions)
                except Exception as exc:
                    log.exception("protection operate failed", extra={"breaker": write.breaker})
                    self._outcome(self.authority.write_failed(accepted.op_id, str(exc), now))
            elif isinstance(write, PointWrite):
                try:
                    future = self._submit(write.point, write.value)
                except Exception as exc:
                    self._outcome(self.authority.write_failed(accepted.op_id, str(exc), now))
                    continue
                future.add_done_callback(lambda f, a=accepted: self._write_done(a, f))
        if op.kind.switching and self._agents is not None and hasattr(self._agents, "on_switching"):
            try:
                self._agents.on_switching(op.target, op.action, op.origin.who)
            except Exception:
                log.exception("agents could not be told about a switching operation", extra={"target": op.target})

    def _write_done(self, accepted: Accepted, future: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            error = "cancelled" if future.cancelled() else str(future.exception())
            self._outcome(self.authority.write_failed(accepted.op_id, error, self._monotonic()))
            self._flush()

    # ------------------------------------------------------------------ the switching loop

    def tick(self) -> None:
        now, wall = self._monotonic(), self._wall()
        for outcome in self.authority.tick(now):
            self._outcome(outcome)
        for seq in self.flisr.tick(now, wall, clock=self._monotonic):
            self._add_flisr(seq)
        self._run_due(now, wall)
        if now - self._last_sample >= LOAD_SAMPLE_PERIOD_S:
            self._last_sample = now
            config = self.state.configuration()
            energised = self.network.energise(config).source_of
            frozen = {n for rec in self.faults.active() for n in rec.feeder}
            for breaker in self._picked_up():
                frozen.update(self.network.downstream(breaker, config))
            self.state.sample_loads(now, energised, frozen)
        self._flush()

    def next_deadline(self) -> float | None:
        times = [t for t in (self.authority.next_deadline(), self.flisr.next_deadline()) if t is not None]
        if self._waiting_until is not None:
            times.append(self._waiting_until)
        elif any(self.runner.due()):
            times.append(self._monotonic())
        return min(times, default=None)

    def _add_flisr(self, seq: Sequence) -> None:
        if not seq.steps:
            self.runner.add(replace(seq, status=Status.DONE, finished=self._wall()))
            log.warning("FLISR found nothing to switch", extra={"sequence": seq.id, "plan": dict(seq.plan)})
            return
        problems = validate(
            seq,
            self.network,
            self._planning_config(seq),
            self.faults,
            self._loads(seq),
            source_voltage_pu=self.state.source_voltages(),
        )
        self.runner.add(with_validation(seq, problems))
        if problems:
            log.error("FLISR plan failed validation", extra={"sequence": seq.id, "problems": problems})
            self._alarm(seq.fault or "flisr", "major", f"FLISR plan {seq.id} not valid: {problems[0]}")
            return
        if self.flisr.settings.mode == "automatic":
            self.runner.start(seq.id, "flisr (automatic)")
            log.warning("FLISR sequence started", extra={"sequence": seq.id, "steps": len(seq.steps)})
        else:
            log.warning("FLISR plan proposed: runs on approval", extra={"sequence": seq.id})

    def _planning_config(self, seq: Sequence) -> dict[str, bool | None]:
        config = self.state.configuration()
        if seq.fault:
            try:
                config[self.faults.get(seq.fault).breaker] = False
            except KeyError:
                pass
        return config

    def _loads(self, seq: Sequence) -> dict[str, complex]:
        now = self._monotonic()
        if seq.fault:
            try:
                now = self.faults.get(seq.fault).started - 0.2
            except KeyError:
                pass
        loads = self.authority.loads_kva(self._monotonic())
        for sec in self.network.sections:
            before = self.state.load_before(sec, now)
            if before is not None and self.state.section_load(sec) is None:
                loads[sec] = before.kva
        return loads

    def _run_due(self, now: float, wall: float) -> None:
        self._waiting_until = None
        for due in self.runner.due():
            seq, step = due.sequence, due.step
            if step.action == "close" and self.state.far_side_waiting(step.device, now, FAR_SIDE_WAIT_S):
                # the previous step moved a device around this one's far side: wait (bounded) for
                # the far-side voltage read after it, so the parallel check judges the present
                self._waiting_until = min(now + 0.05, self._waiting_until or math.inf)
                continue
            origin = FLISR_ORIGIN if seq.approved_by == "flisr (automatic)" else self._approver(seq)
            override = None
            if step.override_reason:
                rows = frozenset(step.override) or LOCKOUT_ROWS
                override = Override(
                    reason=step.override_reason
                    if origin.via is Via.FLISR
                    else f"{step.override_reason}; approved by {seq.approved_by}",
                    rows=rows,
                )
            op = Operation(
                kind=Kind.CLOSE if step.action == "close" else Kind.OPEN,
                target=step.device,
                origin=origin,
                reason=f"{seq.name}, step {due.index + 1}: {step.purpose}".strip(),
                override=override,
                sequence=seq.id,
            )
            try:
                if origin.via.remote:
                    sel = self.authority.select(op, now)
                    op = Operation(
                        kind=op.kind,
                        target=op.target,
                        origin=op.origin,
                        reason=op.reason,
                        override=op.override,
                        sequence=op.sequence,
                        select_id=sel.select_id,
                    )
                accepted = self.authority.request(op, now)
            except Refused as exc:
                self.runner.refused(seq.id, due.index, exc.message, wall)
                self._sequence_failed(self.runner.get(seq.id), step.device, now)
                continue
            self.runner.issued(seq.id, due.index, accepted.op_id, wall)
            self._execute(accepted)

    def _approver(self, seq: Sequence) -> Origin:
        who = seq.approved_by or "unknown"
        via = Via.MQTT if who.startswith("scada:") else Via.HMI if who.startswith("hmi:") else Via.LOCAL
        return Origin(via=via, who=who, role=Role.OPERATOR)

    def _outcome(self, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        for listener in self.outcome_listeners:
            try:
                listener(outcome)
            except Exception:
                log.exception("switching outcome listener failed", extra={"op_id": outcome.op_id})
        seq = self.runner.outcome(outcome.op_id, outcome.ok, outcome.message, outcome.elapsed_s, self._wall())
        if not outcome.ok:
            self._alarm(
                outcome.target,
                "critical" if seq is not None else "major",
                f"{outcome.action} of {outcome.target} failed: {outcome.message}"
                + (f" (sequence {seq.id} stopped)" if seq is not None else ""),
            )
        if seq is not None and seq.status is Status.FAILED:
            self._sequence_failed(seq, outcome.target, self._monotonic())
        if seq is not None and seq.status is Status.DONE and seq.source == "flisr":
            self._reset_indicators(seq)

    def _reset_indicators(self, seq: Sequence) -> None:
        """After a FLISR sequence, reset the fault-passage indicators that latched on its feeder, so
        the next fault is located by fresh ones."""
        nodes = (
            set(seq.plan.get("isolated_zone", []))
            | set(seq.plan.get("restored_upstream", []))
            | set(seq.plan.get("restored_downstream", []))
            | set(seq.plan.get("left_out", []))
        )
        devices = {d for n in nodes for d in self.network.devices_of(n)}
        for dev in sorted(devices):
            if self.state.fpi(dev) and "fpi_reset" in self.network.devices[dev].points:
                op = Operation(
                    kind=Kind.INDICATOR_RESET,
                    target=dev,
                    origin=FLISR_ORIGIN,
                    point="fpi_reset",
                    value=True,
                    reason=f"{seq.name}: done; indicator reset for the next fault",
                )
                try:
                    self.operate(op)
                except Refused as exc:
                    log.warning("indicator not reset", extra={"device": dev, "error": exc.message})

    def _sequence_failed(self, seq: Sequence, device: str, now: float) -> None:
        log.error(
            "switching sequence stopped",
            extra={"sequence": seq.id, "device": device, "result": seq.results[-1].message if seq.results else None},
        )
        if seq.source == "flisr" and seq.fault:
            try:
                breaker = self.faults.get(seq.fault).breaker
            except KeyError:
                return
            self.flisr.on_failed(breaker, seq.fault, device, now)

    # ------------------------------------------------------------------ operators

    def approve(self, seq_id: str, origin: Origin) -> Sequence:
        """Run a proposed sequence (a FLISR plan in advisory mode, or an operator's) after
        validating it again against the plant as it is now."""
        if origin.role is None or origin.role < Role.OPERATOR:
            raise Refused("not_allowed", "running a switching sequence needs the operator role")
        seq = self.runner.get(seq_id)
        if seq.status is not Status.PROPOSED:
            raise Refused("bad_args", f"sequence {seq_id} is {seq.status.value}; only a proposed one can run")
        problems = validate(
            seq,
            self.network,
            self._planning_config(seq),
            self.faults,
            self._loads(seq),
            source_voltage_pu=self.state.source_voltages(),
        )
        if problems:
            self.runner.add(with_validation(seq, problems))
            self._flush()
            raise Refused("interlock", f"sequence {seq_id} is no longer valid: {problems[0]}")
        started = self.runner.start(seq_id, origin.who)
        self._flush()
        self._wake()
        return started

    def submit_sequence(self, seq: Sequence, origin: Origin, *, run: bool) -> Sequence:
        """An operator's sequence: validated now, kept as proposed (or run at once with `run`)."""
        problems = self.validate_sequence(seq)
        seq = self.runner.add(with_validation(seq, problems))
        self._flush()
        if problems or not run:
            return seq
        return self.approve(seq.id, origin)

    def validate_sequence(self, seq: Sequence) -> list[str]:
        return validate(
            seq,
            self.network,
            self.state.configuration(),
            self.faults,
            self.authority.loads_kva(self._monotonic()),
            source_voltage_pu=self.state.source_voltages(),
        )

    def abort(self, seq_id: str, origin: Origin) -> Sequence:
        seq = self.runner.abort(seq_id, origin.who, self._wall())
        self._flush()
        return seq

    def clear_fault(self, record_id: str, origin: Origin, reason: str) -> FaultRecord:
        """An operator declares a fault repaired (locally only: closing onto an indicated fault
        cannot be decided remotely)."""
        if origin.via is not Via.LOCAL or origin.role is None or origin.role < Role.OPERATOR:
            raise Refused(
                "not_allowed", "a fault is declared cleared at the substation's control socket, by an operator"
            )
        try:
            record = self.faults.clear(record_id, origin.who, reason, self._wall())
        except KeyError as exc:
            raise Refused("bad_args", str(exc)) from None
        except ValueError as exc:
            raise Refused("bad_args", str(exc)) from None
        self._flush()
        return record

    # ------------------------------------------------------------------ views

    def network_view(self) -> dict[str, Any]:
        """The network with each section's energisation and load (live, and the last remembered)."""
        now = self._monotonic()
        view = self.network.describe()
        en = self.network.energise(self.state.configuration())
        for sec in view["sections"]:
            live = self.state.section_load(sec["id"])
            kept = self.state.load_before(sec["id"], now)
            sec["energised"] = en.energised(sec["id"])
            sec["load_kw"] = None if live is None else round(live.kva.real, 1)
            sec["load_kvar"] = None if live is None else round(live.kva.imag, 1)
            sec["load_method"] = None if live is None else live.method
            sec["remembered_kw"] = None if kept is None else round(kept.kva.real, 1)
            sec["remembered_age_s"] = None if kept is None else round(now - kept.time, 1)
        for dev in view["devices"]:
            position = self.state.position(dev["id"])
            dev["position"] = {None: "unknown", True: "closed", False: "open"}[position]
            dev["current_a"] = self.state.current_a(dev["id"])
        view["source_voltage_pu"] = self.state.source_voltages()
        return view

    def sequences(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in sorted(self.runner.sequences.values(), key=lambda s: s.created)]

    def fault_records(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in sorted(self.faults.records(), key=lambda r: r.started_wall)]

    def device_status(self, device: str) -> dict[str, Any]:
        if device not in self.network.devices:
            raise KeyError(f"no switching device {device!r}")
        dev = self.network.devices[device]
        now = self._monotonic()
        held = self.authority.sbo.holder(device, now)
        return {
            "device": device,
            "function": dev.function,
            "between": [dev.a, dev.b],
            "tie": dev.tie,
            "position": {None: "unknown", True: "closed", False: "open"}[self.state.position(device)],
            "fpi": self.state.fpi(device),
            "local": self.state.local(device),
            "current_a": self.state.current_a(device),
            "agent_state": self._agent_state(device),
            "locked_out": self._locked_out(device) if dev.protected else None,
            "tags": [{"who": t.who, "reason": t.reason, "time": t.time} for t in self.authority.tags.get(device, [])],
            "selected_by": None if held is None else held.origin,
            "select_expires_in_s": None if held is None else round(held.expires_at - now, 3),
        }

    def status(self) -> dict[str, Any]:
        return {
            "accepted": self.authority.accepted,
            "refused": self.authority.refused,
            "pending": len(self.authority.pending()),
            "flisr": self.flisr.settings.mode,
            "active_faults": [r.id for r in self.faults.active()],
            "sequences_running": [s.id for s in self.runner.sequences.values() if s.status is Status.RUNNING],
            "tags": sum(len(t) for t in self.authority.tags.values()),
        }

    # ------------------------------------------------------------------ plumbing

    def _agent_state(self, agent_id: str) -> str | None:
        runtime = getattr(self._agents, "runtime", None)
        memory = getattr(runtime, "memory", {}).get(agent_id) if runtime is not None else None
        return None if memory is None else str(getattr(memory.state, "value", memory.state))

    def _locked_out(self, breaker: str) -> bool:
        if self._protection is None:
            return False
        try:
            return bool(self._protection.engine.status(breaker).get("locked_out"))
        except KeyError:
            return False

    def _picked_up(self) -> list[str]:
        """Protected breakers whose overcurrent elements are picked up now (a fault in progress)."""
        if self._protection is None:
            return []
        out = []
        for breaker in self._recloses:
            if breaker not in self.network.devices:  # protected, but not in the site's feeder model
                continue
            try:
                pickups = self._protection.engine.status(breaker).get("pickups", [])
            except KeyError:
                continue
            if any(str(p).startswith(("50", "51")) for p in pickups):
                out.append(breaker)
        return out

    def _unusable(self, device: str) -> str | None:
        local = self.state.local(device)
        if local is None:
            return "its local/remote mode is unknown"
        if local:
            return "it is in local control"
        if self.state.position(device) is None:
            return "its position is unknown"
        if self.authority.tags.get(device):
            return f"it is tagged: {self.authority.tags[device][0].reason}"
        if self._agent_state(device) in ("Maintenance",):
            return "it is in maintenance"
        dev = self.network.devices[device]
        points = dev.points
        if not dev.protected and not any(p in points for p in ("position_cmd", "trip_cmd", "close_cmd")):
            return "it has no command point"
        return None

    def _alarm(self, source: str, severity: str, message: str) -> None:
        wall = self._wall()
        record = {"severity": severity, "message": message}
        try:
            self._store.append_event(wall, source, "alert", record)
        except Exception:
            log.exception("switching alarm could not be written to the event log")
        self._publish("alarms", {"time": wall, "source": source, **record})
        log.error("switching alarm", extra={"source": source, "severity": severity, "alert": message})

    def _flush(self) -> None:
        """Audit entries to the event log and the uplink; changed sequences and faults published."""
        entries: list[AuditEntry] = self.authority.take_audit()
        rows = [(e.time, e.source, e.kind, e.record) for e in entries]
        for seq in self.runner.take_changed():
            rows.append((self._wall(), seq.id, "switching.sequence", seq.to_dict()))
            self._publish("switching", {"time": self._wall(), **seq.to_dict()})
        changed_faults = self.faults.take_changed()
        for rec in changed_faults:
            rows.append((self._wall(), rec.breaker, f"fault.{rec.status.value}", rec.to_dict()))
            self._publish("faults", {"time": self._wall(), **rec.to_dict()})
        if rows:
            try:
                self._store.append_events(rows)
            except Exception:
                log.exception("switching audit could not be written to the event log")
        for e in entries:
            self._publish("events", {"time": e.time, "source": e.source, "kind": e.kind, **e.record})
        if changed_faults or any(e.kind in ("switching.tagged", "switching.untagged") for e in entries):
            self._save()

    def _save(self) -> None:
        try:
            self._store.save_snapshot(
                SNAPSHOT_KEY,
                {
                    "faults": self.faults.snapshot(),
                    "authority": self.authority.snapshot(),
                    "wall_offset": self._wall() - self._monotonic(),
                },
                self._wall(),
            )
        except Exception:
            log.exception("switching state could not be saved")

    def _restore(self) -> None:
        try:
            saved = self._store.load_snapshot(SNAPSHOT_KEY)
        except Exception:
            log.exception("switching state could not be read")
            return
        if not saved:
            return
        try:
            offset = float(saved.get("wall_offset", 0.0))
            shift = offset - (self._wall() - self._monotonic())
            self.faults.restore(saved["faults"], shift_s=shift)
            self.authority.restore(saved["authority"])
        except (KeyError, TypeError, ValueError) as exc:
            log.error(
                "switching state could not be restored; starting without fault records and tags",
                extra={"error": str(exc)},
            )
