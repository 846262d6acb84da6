"""The switching authority: every control write to the plant passes here, whoever asks.

A request (`Operation`) is checked against the one interlock table; a remote origin must have
selected first (select-before-operate, one reservation per device); an explicit override with a
role and a reason passes the rows that allow it, and is recorded. What passes comes back as the
writes to carry out — for a protected breaker, an open or close through its protection scheme
(so auto-reclose knows an operator opened it), else the device's command points — and the
device's position is then checked back: an operation is done when the position reads as
commanded, failed when it does not within the check-back time.

Every request, refusal, override, outcome, protection trip and tag is an audit entry with the
origin, role and reason; the daemon writes them to the event log and the uplink.

Sans-IO: `now` is monotonic seconds, `wall` an injected clock for the audit's wall times.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.switching.faults import FaultBook
from gateway.switching.interlocks import TABLE, Context, Refusal, Row, Tag, evaluate, may_override
from gateway.switching.model import Kind, Operation, Origin, Override, Role
from gateway.switching.network import Network
from gateway.switching.state import GridState

log = logging.getLogger("stima.switching")

CHECKBACK_TIMEOUT_S = 10.0
SETPOINT_POINTS: Mapping[Kind, frozenset[str]] = {
    Kind.CAPACITOR_STEP: frozenset({"steps_cmd"}),
    Kind.TAP_CHANGE: frozenset({"tap_setpoint"}),
    Kind.DER_SETPOINT: frozenset({"p_limit_pct", "q_setpoint_kvar", "connect_cmd", "p_setpoint_kw"}),
    Kind.INDICATOR_RESET: frozenset({"fpi_reset"}),
}
SWITCH_POINTS = ("position_cmd", "trip_cmd", "close_cmd")


class Refused(Exception):
    """An operation not carried out. `reason` is the result code (`interlock`, `reserved`,
    `not_selected`, `bad_args`); `refusals` the interlock rows that refused, with their codes."""

    def __init__(self, reason: str, message: str, refusals: tuple[Refusal, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.refusals = refusals

    @property
    def interlock(self) -> str | None:
        return self.refusals[0].code if self.refusals else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "interlock": self.interlock,
            "message": self.message,
            "interlocks": [r.as_dict() for r in self.refusals],
        }


def kind_for_point(point_name: str, value: Any) -> Kind:
    """The operation a write to an agent's command point is (ValueError when it is none)."""
    if point_name == "trip_cmd":
        return Kind.OPEN
    if point_name == "close_cmd":
        return Kind.CLOSE
    if point_name == "position_cmd":
        return Kind.CLOSE if bool(value) else Kind.OPEN
    for kind, names in SETPOINT_POINTS.items():
        if point_name in names:
            return kind
    raise ValueError(f"{point_name!r} is not a command point the gateway operates")


# --------------------------------------------------------------------------- what to carry out


@dataclass(frozen=True, slots=True)
class ProtectionOperate:
    """Open or close a protected breaker through its protection scheme (blocks or re-arms 79)."""

    breaker: str
    action: str
    authorised: bool


@dataclass(frozen=True, slots=True)
class PointWrite:
    point: str
    value: float | int | bool


Write = ProtectionOperate | PointWrite


@dataclass(frozen=True, slots=True)
class Accepted:
    op_id: str
    operation: Operation
    writes: tuple[Write, ...]
    expect_closed: bool | None
    """The position check-back awaits (None: nothing to check back)."""
    overridden: tuple[Refusal, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    op_id: str
    target: str
    action: str
    ok: bool
    message: str
    elapsed_s: float
    origin: str
    sequence: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: float
    source: str
    kind: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Selection:
    """A device reserved for one origin and one operation until `expires_at` (monotonic s)."""

    select_id: str
    target: str
    action: str
    origin: str
    selected_at: float
    expires_at: float


@dataclass(slots=True)
class _Pending:
    accepted: Accepted
    started: float
    deadline: float


class SelectBeforeOperate:
    """Reservations of devices (IEC 61850 select-before-operate with enhanced security)."""

    def __init__(self, timeout_s: float, new_id: Callable[[], str] | None = None) -> None:
        self.timeout_s = timeout_s
        self._new_id = new_id or (lambda: "sel-" + secrets.token_hex(8))
        self._by_id: dict[str, Selection] = {}

    def _expire(self, now: float) -> None:
        for sid in [s.select_id for s in self._by_id.values() if s.expires_at <= now]:
            del self._by_id[sid]

    def holder(self, target: str, now: float) -> Selection | None:
        self._expire(now)
        return next((s for s in self._by_id.values() if s.target == target), None)

    def select(self, target: str, action: str, origin: str, now: float) -> Selection:
        """Reserve `target`; a select by the origin already holding it replaces that select."""
        held = self.holder(target, now)
        if held is not None:
            if held.origin != origin:
                raise Refused(
                    "reserved", f"{target} is selected by {held.origin} for another {held.expires_at - now:.1f} s"
                )
            del self._by_id[held.select_id]
        sel = Selection(
            select_id=self._new_id(),
            target=target,
            action=action,
            origin=origin,
            selected_at=now,
            expires_at=now + self.timeout_s,
        )
        self._by_id[sel.select_id] = sel
        return sel

    def take(self, select_id: str, target: str, action: str, origin: str, now: float) -> Selection:
        """Consume the select that allows this operate, or refuse (`not_selected`)."""
        self._expire(now)
        sel = self._by_id.get(select_id)
        if sel is None:
            raise Refused(
                "not_selected",
                f"no select {select_id} pending (never made, already operated, "
                f"cancelled, or timed out after {self.timeout_s:g} s): select first",
            )
        if sel.origin != origin:
            raise Refused("not_selected", f"select {select_id} belongs to {sel.origin}, not {origin}")
        if (sel.target, sel.action) != (target, action):
            del self._by_id[select_id]  # a confused client starts again from select
            raise Refused(
                "not_selected",
                f"select {select_id} was for {sel.action} of {sel.target}, "
                f"not {action} of {target}; the select is cancelled",
            )
        del self._by_id[select_id]
        return sel

    def cancel(self, select_id: str, origin: str, now: float) -> Selection:
        self._expire(now)
        sel = self._by_id.get(select_id)
        if sel is None:
            raise Refused("not_selected", f"no select {select_id} pending")
        if sel.origin != origin:
            raise Refused("not_selected", f"select {select_id} belongs to {sel.origin}, not {origin}")
        del self._by_id[select_id]
        return sel


# --------------------------------------------------------------------------- the authority


@dataclass
class PlantHooks:
    """What the authority asks of the rest of the gateway (callables, so it stays sans-IO)."""

    agent_state: Callable[[str], str | None]
    locked_out: Callable[[str], bool]
    wall: Callable[[], float]
    agent_type: Callable[[str], str | None] = field(default=lambda _a: None)


class SwitchingAuthority:
    def __init__(
        self,
        network: Network,
        state: GridState,
        faults: FaultBook,
        hooks: PlantHooks,
        *,
        select_timeout_s: float = 30.0,
        checkback_timeout_s: float = CHECKBACK_TIMEOUT_S,
        table: tuple[Row, ...] = TABLE,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.network = network
        self.state = state
        self.faults = faults
        self.hooks = hooks
        self.table = table
        self.sbo = SelectBeforeOperate(select_timeout_s)
        self.checkback_timeout_s = checkback_timeout_s
        self._new_id = new_id or (lambda: "op-" + secrets.token_hex(6))
        self.tags: dict[str, list[Tag]] = {}
        self._pending: dict[str, _Pending] = {}
        self._audit: list[AuditEntry] = []
        self.accepted = 0
        self.refused = 0

    # ------------------------------------------------------------------ requests

    def check(self, op: Operation, now: float, *, selected: bool = False) -> tuple[list[Refusal], list[Refusal]]:
        """(blocking refusals, overridden refusals) for `op` now, without acting."""
        self._target(op)
        ctx = self._context(op, now, selected)
        blocking: list[Refusal] = []
        overridden: list[Refusal] = []
        for row, message in evaluate(ctx, self.table):
            refusal = Refusal(row.code, message, row.override, row.role)
            (overridden if may_override(row, ctx) else blocking).append(refusal)
        return blocking, overridden

    def select(self, op: Operation, now: float) -> Selection:
        """Reserve the target for `op` after checking every interlock as the operate will."""
        try:
            self._target(op)
            blocking, _ = self.check(op, now, selected=True)
            if blocking:
                raise Refused("interlock", blocking[0].message, tuple(blocking))
            sel = self.sbo.select(op.target, op.action, op.origin.who, now)
        except Refused as exc:
            self._refused(op, exc, stage="select")
            raise
        self._audit_entry(
            op.target,
            "switching.selected",
            {**self._describe(op), "select_id": sel.select_id, "expires_in_s": self.sbo.timeout_s},
        )
        return sel

    def cancel(self, select_id: str, origin: Origin, now: float) -> Selection:
        sel = self.sbo.cancel(select_id, origin.who, now)
        self._audit_entry(
            sel.target, "switching.cancelled", {"select_id": select_id, "origin": origin.who, "action": sel.action}
        )
        return sel

    def request(self, op: Operation, now: float) -> Accepted:
        """Check `op` and, if it passes, return what to carry out (raises Refused otherwise)."""
        try:
            self._target(op)
            selected = False
            if op.select_id is not None:
                self.sbo.take(op.select_id, op.target, op.action, op.origin.who, now)
                selected = True
            else:
                held = self.sbo.holder(op.target, now)
                if held is not None and held.origin != op.origin.who:
                    raise Refused(
                        "reserved",
                        f"{op.target} is selected by {held.origin} for another {held.expires_at - now:.1f} s",
                    )
            blocking, overridden = self.check(op, now, selected=selected)
            if blocking:
                raise Refused("interlock", blocking[0].message, tuple(blocking))
            writes = self._writes(op, overridden)
        except Refused as exc:
            self._refused(op, exc, stage="operate")
            raise
        expect = None
        if (
            op.kind.switching
            and op.target in self.network.devices
            and "closed" in self.network.devices[op.target].points
        ):
            expect = op.kind is Kind.CLOSE
        accepted = Accepted(
            op_id=self._new_id(), operation=op, writes=tuple(writes), expect_closed=expect, overridden=tuple(overridden)
        )
        self.accepted += 1
        if expect is not None:
            self._pending[accepted.op_id] = _Pending(accepted, now, now + self.checkback_timeout_s)
        record = {**self._describe(op), "op_id": accepted.op_id, "writes": [_write_dict(w) for w in writes]}
        if overridden:
            record["overridden"] = [r.as_dict() for r in overridden]
            log.warning(
                "interlock overridden",
                extra={
                    "target": op.target,
                    "action": op.action,
                    "origin": op.origin.who,
                    "rows": [r.code for r in overridden],
                    "override_reason": op.override.reason if op.override else None,
                },
            )
        self._audit_entry(op.target, "switching.accepted", record)
        log.info(
            "switching accepted",
            extra={"target": op.target, "action": op.action, "origin": op.origin.who, "op_id": accepted.op_id},
        )
        return accepted

    def write_failed(self, op_id: str, error: str, now: float) -> Outcome | None:
        """The write of an accepted operation could not be delivered to the device."""
        pending = self._pending.pop(op_id, None)
        if pending is None:
            return None
        return self._finish(pending, False, f"the command did not reach the device: {error}", now)

    def tick(self, now: float) -> list[Outcome]:
        """Check back every pending operation against the device's position."""
        out = []
        for op_id, pending in list(self._pending.items()):
            target = pending.accepted.operation.target
            position = self.state.position(target)
            if position is not None and position == pending.accepted.expect_closed:
                del self._pending[op_id]
                out.append(self._finish(pending, True, f"{target} reads {'closed' if position else 'open'}", now))
            elif now >= pending.deadline:
                del self._pending[op_id]
                seen = {None: "unknown", True: "closed", False: "open"}[position]
                out.append(
                    self._finish(
                        pending,
                        False,
                        f"{target} still reads {seen} {self.checkback_timeout_s:g} s "
                        f"after the {pending.accepted.operation.action} command",
                        now,
                    )
                )
        return out

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def pending(self) -> list[str]:
        return list(self._pending)

    # ------------------------------------------------------------------ protection's fast path, tags

    def record_protection(self, breaker: str, action: str, reason: str, element: str, time: float) -> None:
        """Protection's own commands keep their fast path; they are recorded here after they went."""
        self._audit_entry(
            breaker,
            "switching.protection",
            {
                "target": breaker,
                "action": action,
                "reason": reason,
                "element": element,
                "origin": "protection",
                "via": "protection",
                "monotonic": time,
            },
        )

    def add_tag(self, target: str, origin: Origin, reason: str, now: float) -> Tag:
        if target not in self.network.element_points and target not in self.network.devices:
            raise Refused("bad_args", f"no agent or device {target!r} in the site file")
        if origin.role is None or origin.role < Role.OPERATOR:
            raise Refused("not_allowed", "placing a tag needs the operator role")
        if not reason.strip():
            raise Refused("bad_args", "a tag needs a reason (who is working on what)")
        tag = Tag(target=target, who=origin.who, reason=reason.strip(), time=self.hooks.wall())
        self.tags.setdefault(target, []).append(tag)
        self._audit_entry(
            target,
            "switching.tagged",
            {"target": target, "origin": origin.who, "role": str(origin.role), "reason": tag.reason},
        )
        return tag

    def remove_tags(self, target: str, origin: Origin, reason: str) -> int:
        if origin.role is None or origin.role < Role.OPERATOR:
            raise Refused("not_allowed", "removing a tag needs the operator role")
        removed = len(self.tags.pop(target, []))
        if removed:
            self._audit_entry(
                target,
                "switching.untagged",
                {"target": target, "origin": origin.who, "role": str(origin.role), "reason": reason, "tags": removed},
            )
        return removed

    def take_audit(self) -> list[AuditEntry]:
        out, self._audit = self._audit, []
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "tags": {
                t: [{"who": g.who, "reason": g.reason, "time": g.time} for g in tags] for t, tags in self.tags.items()
            },
        }

    def restore(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("switching snapshot: expected a dict with version 1")
        self.tags = {
            t: [Tag(target=t, who=str(g["who"]), reason=str(g["reason"]), time=float(g["time"])) for g in tags]
            for t, tags in data.get("tags", {}).items()
        }

    # ------------------------------------------------------------------ internals

    def loads_kva(self, now: float) -> dict[str, complex]:
        """Each section's load to estimate with (GridState.loads_for_estimate)."""
        return self.state.loads_for_estimate(now)

    def _context(self, op: Operation, now: float, selected: bool) -> Context:
        device = self.network.devices.get(op.target)
        locked = device is not None and device.protected and op.kind is Kind.CLOSE and self.hooks.locked_out(op.target)
        return Context(
            op=op,
            device=device,
            network=self.network,
            state=self.state,
            faults=self.faults,
            agent_state=self.hooks.agent_state(op.target),
            locked_out=locked,
            tags=tuple(self.tags.get(op.target, ())),
            selected=selected,
            loads_kva=self.loads_kva(now) if op.kind is Kind.CLOSE else {},
            source_voltage_pu=self.state.source_voltages(),
        )

    def _target(self, op: Operation) -> None:
        points = self.network.element_points.get(op.target)
        if points is None:
            raise Refused("bad_args", f"no agent or device {op.target!r} in the site file")
        if op.kind.switching:
            device = self.network.devices.get(op.target)
            if device is not None and device.protected:
                return
            if not any(p in points for p in SWITCH_POINTS):
                raise Refused(
                    "bad_args",
                    f"{op.target} has no command point to {op.action} it (expected one of {', '.join(SWITCH_POINTS)})",
                )
            return
        names = SETPOINT_POINTS[op.kind]
        if op.point not in names:
            raise Refused("bad_args", f"a {op.kind.value} writes one of {', '.join(sorted(names))}, not {op.point!r}")
        if op.point not in points:
            raise Refused("bad_args", f"{op.target} has no {op.point} point")
        if op.value is None:
            raise Refused("bad_args", f"a {op.kind.value} needs a value")

    def _writes(self, op: Operation, overridden: list[Refusal]) -> list[Write]:
        points = self.network.element_points[op.target]
        if not op.kind.switching:
            assert op.point is not None and op.value is not None
            return [PointWrite(points[op.point], op.value)]
        device = self.network.devices.get(op.target)
        if device is not None and device.protected:
            rearm = any(r.code == "protection_lockout" for r in overridden)
            return [ProtectionOperate(op.target, op.action, rearm)]
        if "position_cmd" in points:
            return [PointWrite(points["position_cmd"], op.kind is Kind.CLOSE)]
        name = "close_cmd" if op.kind is Kind.CLOSE else "trip_cmd"
        if name not in points:
            raise Refused("bad_args", f"{op.target} has no {name} point to {op.action} it")
        return [PointWrite(points[name], True)]

    def _finish(self, pending: _Pending, ok: bool, message: str, now: float) -> Outcome:
        op = pending.accepted.operation
        outcome = Outcome(
            op_id=pending.accepted.op_id,
            target=op.target,
            action=op.action,
            ok=ok,
            message=message,
            elapsed_s=max(0.0, now - pending.started),
            origin=op.origin.who,
            sequence=op.sequence,
        )
        self._audit_entry(
            op.target,
            "switching.done" if ok else "switching.failed",
            {
                "op_id": outcome.op_id,
                "target": op.target,
                "action": op.action,
                "ok": ok,
                "message": message,
                "elapsed_s": round(outcome.elapsed_s, 3),
                "origin": op.origin.who,
                "sequence": op.sequence,
            },
        )
        if not ok:
            log.error(
                "switching operation failed",
                extra={"target": op.target, "action": op.action, "op_id": outcome.op_id, "error": message},
            )
        return outcome

    def _refused(self, op: Operation, exc: Refused, *, stage: str) -> None:
        self.refused += 1
        self._audit_entry(op.target, "switching.refused", {**self._describe(op), "stage": stage, **exc.as_dict()})
        log.warning(
            "switching refused",
            extra={
                "target": op.target,
                "action": op.action,
                "origin": op.origin.who,
                "reason": exc.reason,
                "interlock": exc.interlock,
                "error": exc.message,
            },
        )

    def _describe(self, op: Operation) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": op.target,
            "action": op.action,
            "origin": op.origin.who,
            "via": op.origin.via.value,
            "role": None if op.origin.role is None else str(op.origin.role),
            "reason": op.reason,
        }
        if op.value is not None:
            out["value"] = op.value
            out["point"] = op.point
        if op.override is not None:
            out["override"] = {"reason": op.override.reason, "rows": sorted(op.override.rows)}
        if op.sequence is not None:
            out["sequence"] = op.sequence
        return out

    def _audit_entry(self, source: str, kind: str, record: dict[str, Any]) -> None:
        self._audit.append(AuditEntry(self.hooks.wall(), source, kind, record))


def _write_dict(w: Write) -> dict[str, Any]:
    if isinstance(w, ProtectionOperate):
        return {"via": "protection", "breaker": w.breaker, "action": w.action, "rearm": w.authorised}
    return {"point": w.point, "value": w.value}


def override_from(args: Mapping[str, Any]) -> Override | None:
    """The override a command's arguments ask for (`authorised` + `reason`, or `override`)."""
    reason = args.get("reason")
    rows: frozenset[str] = frozenset()
    if args.get("override"):
        raw = args["override"]
        rows = frozenset([raw] if isinstance(raw, str) else raw) if raw is not True else frozenset()
    elif args.get("authorised"):
        rows = frozenset({"protection_lockout", "agent_locked_out"})
    else:
        return None
    return Override(reason=str(reason or ""), rows=rows)
