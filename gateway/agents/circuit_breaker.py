"""Circuit Breaker agent: position and protection events, trip history and contact wear.

The protection core decides trips and recloses; this agent keeps the breaker's story: why it
is open, how often it tripped, how worn its contacts are (Σ I²t of interrupted currents, kA²s),
and when it needs maintenance. More than `max_trips_in_period` trips inside
`trip_count_period_s` lock it out even if the protection core has not (use case: persistent
fault). A locked-out breaker stays locked out across restarts until an operator resets it.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.agents.actions import Action, Alert, BusMessage, ControlRequest, Severity, Topic
from gateway.agents.base import Agent, Links, Memory
from gateway.agents.fsm import IGNORE, TransitionTable, row
from gateway.agents.schema import CircuitBreakerAttributes


class BreakerState(enum.Enum):
    CLOSED_NORMAL = "Closed_Normal"
    CLOSED_HIGH_CURRENT = "Closed_High_Current"
    TRIPPED = "Tripped"
    OPEN_MANUAL = "Open_Manual"
    RECLOSING = "Reclosing"
    LOCKED_OUT = "Locked_Out"
    MAINTENANCE = "Maintenance"


class BreakerEvent(enum.Enum):
    HIGH_CURRENT = enum.auto()
    CURRENT_NORMAL = enum.auto()
    PROTECTION_TRIP = enum.auto()
    RECLOSE_STARTED = enum.auto()
    CLOSED = enum.auto()
    OPENED = enum.auto()
    LOCKOUT = enum.auto()
    RESET = enum.auto()
    MAINTENANCE_START = enum.auto()
    MAINTENANCE_END = enum.auto()


_S, _E = BreakerState, BreakerEvent
_CLOSED = dict(PROTECTION_TRIP=_S.TRIPPED, OPENED=_S.OPEN_MANUAL, LOCKOUT=_S.LOCKED_OUT)

TABLE: TransitionTable[BreakerState, BreakerEvent] = TransitionTable(
    BreakerState, BreakerEvent, initial=_S.CLOSED_NORMAL,
    rows={
        _S.CLOSED_NORMAL: row(IGNORE, _E, **_CLOSED, HIGH_CURRENT=_S.CLOSED_HIGH_CURRENT),
        _S.CLOSED_HIGH_CURRENT: row(IGNORE, _E, **_CLOSED, CURRENT_NORMAL=_S.CLOSED_NORMAL),
        _S.TRIPPED: row(IGNORE, _E, RECLOSE_STARTED=_S.RECLOSING, CLOSED=_S.CLOSED_NORMAL,
                        LOCKOUT=_S.LOCKED_OUT, MAINTENANCE_START=_S.MAINTENANCE),
        _S.OPEN_MANUAL: row(IGNORE, _E, CLOSED=_S.CLOSED_NORMAL, LOCKOUT=_S.LOCKED_OUT,
                            MAINTENANCE_START=_S.MAINTENANCE, PROTECTION_TRIP=_S.TRIPPED),
        _S.RECLOSING: row(IGNORE, _E, CLOSED=_S.CLOSED_NORMAL, PROTECTION_TRIP=_S.TRIPPED, LOCKOUT=_S.LOCKED_OUT),
        _S.LOCKED_OUT: row(IGNORE, _E, RESET=_S.OPEN_MANUAL, MAINTENANCE_START=_S.MAINTENANCE),
        _S.MAINTENANCE: row(IGNORE, _E, MAINTENANCE_END=_S.OPEN_MANUAL),
    },
)


MAX_OPERATIONS_COUNT = 2**32 - 1

@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerInputs:
    ia: float | None = None
    ib: float | None = None
    ic: float | None = None
    in_: float | None = None
    closed: bool | None = None
    operations: float | None = None


@dataclass
class BreakerMemory(Memory):
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("recent_trips", "last_trip_time")

    trip_count: int = 0
    recent_trips: list[float] = field(default_factory=list)
    last_trip_time: float | None = None
    trip_reason: str | None = None
    contact_wear_ka2s: float = 0.0
    operations: int = 0
    max_phase_current_a: float = 0.0
    closed: bool | None = None
    pickup: bool = False
    maintenance_alerted: bool = False
    last_fault_current_a: float = 0.0


class CircuitBreakerAgent(Agent[BreakerState, BreakerEvent]):
    agent_type = "circuit_breaker"
    TABLE = TABLE

    def __init__(self, agent_id: str, attrs: CircuitBreakerAttributes, links: Links | None = None,
                 command_points: tuple[str, ...] = ("trip_cmd", "close_cmd")) -> None:
        super().__init__(agent_id, links)
        self.attrs = attrs
        self.command_points = command_points

    def initial_memory(self, now: float) -> BreakerMemory:
        return BreakerMemory(state=TABLE.initial, since=now)

    def memory_from_dict(self, data: dict[str, Any]) -> BreakerMemory:
        return BreakerMemory.from_dict(data, BreakerState)

    @property
    def contact_wear_percent_limit(self) -> float:
        return self.attrs.contact_wear_limit_ka2s

    def step(self, memory: BreakerMemory, inputs: BreakerInputs, now: float) -> tuple[BreakerMemory, list[Action]]:
        m = copy.deepcopy(memory)
        x = inputs
        out: list[Action] = []
        phases = [v for v in (x.ia, x.ib, x.ic) if v is not None]
        if phases:
            m.max_phase_current_a = max(abs(v) for v in phases)
        # an operations counter is a 32-bit register at most; anything else is not a count
        if x.operations is not None and 0 <= x.operations <= MAX_OPERATIONS_COUNT:
            m.operations = max(m.operations, int(x.operations))
        if x.closed is not None and x.closed != m.closed:
            m.closed = x.closed
            if x.closed:
                self.fire(m, _E.CLOSED, "position closed", now, out)
            elif m.state in (_S.CLOSED_NORMAL, _S.CLOSED_HIGH_CURRENT):
                self.fire(m, _E.OPENED, "position open without a protection trip", now, out)
        if m.state in (_S.CLOSED_NORMAL, _S.CLOSED_HIGH_CURRENT):
            threshold = self.attrs.high_current_percent / 100.0 * self.attrs.rated_current
            if m.pickup or m.max_phase_current_a >= threshold:
                self.fire(m, _E.HIGH_CURRENT, f"phase current {m.max_phase_current_a:.0f} A"
                          + (" (protection pickup)" if m.pickup else ""), now, out)
            else:
                self.fire(m, _E.CURRENT_NORMAL, f"phase current {m.max_phase_current_a:.0f} A", now, out)
        self._maintenance_due(m, now, out)
        return m, out

    def _maintenance_due(self, m: BreakerMemory, now: float, out: list[Action]) -> None:
        a = self.attrs
        worn = m.contact_wear_ka2s >= 0.8 * a.contact_wear_limit_ka2s or m.operations >= a.maintenance_operations
        if worn and not m.maintenance_alerted:
            m.maintenance_alerted = True
            msg = (f"maintenance due: contact wear {m.contact_wear_ka2s:.1f} of {a.contact_wear_limit_ka2s:.0f} kA²s, "
                   f"{m.operations} operations")
            out.append(Alert(agent_id=self.agent_id, severity=Severity.WARNING, time=now, message=msg))
            out.append(BusMessage(source=self.agent_id, topic=Topic.MAINTENANCE_SCHEDULED, kind="maintenance_due",
                                  payload={"breaker": self.agent_id, "contact_wear_ka2s": m.contact_wear_ka2s,
                                           "operations": m.operations}))

    def on_protection_event(self, memory: BreakerMemory, kind: str, element: str, phase: str, current_a: float,
                            now: float) -> tuple[BreakerMemory, list[Action]]:
        m = copy.deepcopy(memory)
        out: list[Action] = []
        a = self.attrs
        me = self.agent_id
        if kind == "pickup":
            m.pickup = True
            if m.state is _S.CLOSED_NORMAL:
                self.fire(m, _E.HIGH_CURRENT, f"protection pickup {element} phase {phase}", now, out)
        elif kind == "dropout":
            m.pickup = False
        elif kind == "trip":
            m.pickup = False
            if self.fire(m, _E.PROTECTION_TRIP, f"{element} trip, phase {phase}, {current_a:.0f} A", now, out):
                m.trip_count += 1
                m.operations += 1
                m.closed = False  # the trip opens it; the next 'closed' feedback is a real close
                m.last_trip_time = now
                m.last_fault_current_a = current_a
                m.trip_reason = "ground_fault" if element.upper().endswith("N") or phase.upper() in ("N", "G") else "overcurrent"
                m.contact_wear_ka2s += (current_a / 1000.0) ** 2 * a.interrupt_time_s
                # bounded: one more than the limit decides the lockout, older trips add nothing
                m.recent_trips = ([t for t in m.recent_trips if now - t < a.trip_count_period_s]
                                  + [now])[-(a.max_trips_in_period + 1):]
                payload = {"breaker": me, "element": element, "phase": phase, "fault_current_a": current_a,
                           "trip_count": m.trip_count, "line": self.links.lines[0] if self.links.lines else None}
                out.append(BusMessage(source=me, topic=Topic.FAULT_ALERTS, kind="breaker_trip", payload=payload,
                                      urgent=True))
                if self.links.upstream_breaker:
                    out.append(BusMessage(source=me, target=self.links.upstream_breaker, kind="fault_cleared_downstream",
                                          payload=payload, urgent=True))
                if self.links.substation:
                    out.append(BusMessage(source=me, target=self.links.substation, kind="breaker_trip", payload=payload,
                                          urgent=True))
                if len(m.recent_trips) > a.max_trips_in_period and self.fire(
                        m, _E.LOCKOUT, f"{len(m.recent_trips)} trips within {a.trip_count_period_s:.0f} s", now, out):
                    out += self._lockout_notice(m, now)
        elif kind == "reclose":
            self.fire(m, _E.RECLOSE_STARTED, f"auto-reclose by {element}", now, out)
        elif kind == "lockout":
            if self.fire(m, _E.LOCKOUT, f"reclose sequence exhausted ({element})", now, out):
                out += self._lockout_notice(m, now)
        elif kind == "reset":
            self.fire(m, _E.RESET, "protection reset", now, out)
        else:
            raise ValueError(f"breaker {me}: unknown protection event kind {kind!r} "
                             "(expected pickup, dropout, trip, reclose, lockout, reset)")
        self._maintenance_due(m, now, out)
        return m, out

    def _lockout_notice(self, m: BreakerMemory, now: float) -> list[Action]:
        payload = {"breaker": self.agent_id, "trip_count": m.trip_count}
        return [
            Alert(agent_id=self.agent_id, severity=Severity.CRITICAL, time=now,
                  message="Persistent fault condition: breaker locked out, manual intervention required"),
            BusMessage(source=self.agent_id, topic=Topic.FAULT_ALERTS, kind="breaker_lockout", payload=payload, urgent=True),
        ]

    def request(self, memory: BreakerMemory, request: str, args: dict[str, Any], now: float
                ) -> tuple[BreakerMemory, list[Action]]:
        """Operator/SCADA requests: open, close, reset, maintenance (on=bool)."""
        m = copy.deepcopy(memory)
        out: list[Action] = []
        me = self.agent_id
        if request == "open":
            m.trip_reason = "manual" if args.get("local") else "remote"
            m.operations += 1
            out.append(self._command(open_=True, reason=str(args.get("reason", "operator open"))))
            if m.state in (_S.CLOSED_NORMAL, _S.CLOSED_HIGH_CURRENT):
                self.fire(m, _E.OPENED, "operator open command", now, out)
        elif request == "close":
            if m.state in (_S.LOCKED_OUT, _S.MAINTENANCE):
                raise ValueError(f"breaker {me} is {m.state.value}: reset it (or end maintenance) before closing")
            m.operations += 1
            out.append(self._command(open_=False, reason=str(args.get("reason", "operator close"))))
        elif request == "reset":
            m.recent_trips = []
            self.fire(m, _E.RESET, "operator reset", now, out)
        elif request == "maintenance":
            if args.get("on", True):
                if not self.fire(m, _E.MAINTENANCE_START, "maintenance started", now, out):
                    raise ValueError(f"breaker {me} is {m.state.value}: open it before maintenance")
            else:
                if self.fire(m, _E.MAINTENANCE_END, "maintenance finished", now, out):
                    m.contact_wear_ka2s = 0.0 if args.get("contacts_replaced") else m.contact_wear_ka2s
                    m.maintenance_alerted = False
                    m.recent_trips = []
        else:
            raise ValueError(f"breaker {me}: unknown request {request!r} (expected open, close, reset, maintenance)")
        return m, out

    def _command(self, open_: bool, reason: str) -> ControlRequest:
        if "position_cmd" in self.command_points:
            return ControlRequest(agent_id=self.agent_id, point_name="position_cmd", value=not open_, reason=reason)
        return ControlRequest(agent_id=self.agent_id, point_name="trip_cmd" if open_ else "close_cmd", value=True,
                              reason=reason)

    def attributes(self, memory: Memory) -> dict[str, Any]:
        m = memory
        assert isinstance(m, BreakerMemory)
        a = self.attrs
        return {
            "breaker_type": a.breaker_type, "rated_current": a.rated_current,
            "interrupting_capacity": a.interrupting_capacity,
            "position": None if m.closed is None else ("closed" if m.closed else "open"),
            "trip_count": m.trip_count, "last_trip_date": m.last_trip_time, "trip_reason": m.trip_reason,
            "contact_wear_ka2s": m.contact_wear_ka2s,
            "contact_wear_percent": 100.0 * m.contact_wear_ka2s / a.contact_wear_limit_ka2s,
            "operations": m.operations, "max_phase_current_a": m.max_phase_current_a,
            "condition_score": max(0.0, min(a.condition_score, 100.0 * (1.0 - max(
                m.contact_wear_ka2s / a.contact_wear_limit_ka2s, m.operations / a.maintenance_operations)))),
            "protected_line": a.protected_line or (self.links.lines[0] if self.links.lines else ""),
        }
