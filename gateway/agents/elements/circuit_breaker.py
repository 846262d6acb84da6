"""Circuit Breaker agent: position and protection events, trip history and contact wear.

The protection core decides trips and recloses; this agent keeps the breaker's story: why it
is open, how often it tripped, how worn its contacts are (Σ I²t of interrupted currents, kA²s),
and when it needs maintenance. More than `max_trips_in_period` trips inside
`trip_count_period_s` lock it out even if the protection core has not (use case: persistent
fault). A locked-out breaker stays locked out across restarts until an operator resets it.

The agent agrees with the plant. It is told of every operation the gateway makes or sees
coming — its own open/close requests, protection trips and recloses, and switching operations
reported through `expect_operation` — and a measured position change within
`position_confirm_timeout_s` of one of them is that operation (`CLOSED`, `OPENED`). Any other
change is a position discrepancy (`CLOSED_UNEXPECTED`, `OPENED_UNEXPECTED`), raised as an alarm;
the transition table says where each leads:

- held `Locked_Out`, `Tripped`, `Open_Manual` or `Reclosing` and measured closed with no close
  known: the agent follows the measurement to `Closed_Normal` (a close at the panel, by another
  system, or a device restart has put the feeder back; pretending it is still open would hide a
  live feeder). A critical alarm for a locked-out breaker, major otherwise.
- held `Maintenance` and measured closed: critical alarm, and it stays in `Maintenance`. The tag
  belongs to the people who placed it and only ending the maintenance lifts it; the crew must
  check the breaker is isolated (it may be closed in its test position, or not).
- held closed and measured open with no trip and no command: an uncommanded open (an external
  trip, a local operation or a mechanism fault). Major alarm, and it goes to `Tripped`: it opened
  without an operator, it is not `Open_Manual`.
- the first position reading after a fresh start (nothing known yet) is followed without alarm.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.agents.actions import Action, Alert, BusMessage, ControlRequest, Severity, Topic
from gateway.agents import spec, visualization
from gateway.agents.base import Agent, Links, Memory
from gateway.agents.fsm import TransitionTable, row
from gateway.agents.schema import CircuitBreakerAttributes, PowerLineAttributes


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
    """Measured closed, as an operation the gateway knows of said it would be (or a first reading)."""
    CLOSED_UNEXPECTED = enum.auto()
    """Measured closed with no close known to the gateway: a position discrepancy."""
    OPENED = enum.auto()
    """Opened by a known operation (a request, or a switching operation reported to the agent)."""
    OPENED_UNEXPECTED = enum.auto()
    """Measured open with no trip and no command known to the gateway: an uncommanded open."""
    LOCKOUT = enum.auto()
    RESET = enum.auto()
    MAINTENANCE_START = enum.auto()
    MAINTENANCE_END = enum.auto()


_S, _E = BreakerState, BreakerEvent
_CLOSED = dict(PROTECTION_TRIP=_S.TRIPPED, OPENED=_S.OPEN_MANUAL, OPENED_UNEXPECTED=_S.TRIPPED, LOCKOUT=_S.LOCKED_OUT)
_FOLLOW_CLOSE = dict(CLOSED=_S.CLOSED_NORMAL, CLOSED_UNEXPECTED=_S.CLOSED_NORMAL)
_CLOSED_IGNORES = "RECLOSE_STARTED CLOSED CLOSED_UNEXPECTED RESET MAINTENANCE_START MAINTENANCE_END"
_OPEN_IGNORES = "HIGH_CURRENT CURRENT_NORMAL OPENED OPENED_UNEXPECTED"

TABLE: TransitionTable[BreakerState, BreakerEvent] = TransitionTable(
    BreakerState,
    BreakerEvent,
    initial=_S.CLOSED_NORMAL,
    rows={
        # closed: a close confirms the state; reset, reclose and maintenance need an open breaker
        _S.CLOSED_NORMAL: row(
            _E, **_CLOSED, HIGH_CURRENT=_S.CLOSED_HIGH_CURRENT, ignore=_CLOSED_IGNORES + " CURRENT_NORMAL"
        ),
        _S.CLOSED_HIGH_CURRENT: row(
            _E, **_CLOSED, CURRENT_NORMAL=_S.CLOSED_NORMAL, ignore=_CLOSED_IGNORES + " HIGH_CURRENT"
        ),
        # open: currents read on an open breaker are noise; an open confirms the state
        _S.TRIPPED: row(
            _E,
            **_FOLLOW_CLOSE,
            RECLOSE_STARTED=_S.RECLOSING,
            LOCKOUT=_S.LOCKED_OUT,
            MAINTENANCE_START=_S.MAINTENANCE,
            ignore=_OPEN_IGNORES + " PROTECTION_TRIP RESET MAINTENANCE_END",
        ),
        _S.OPEN_MANUAL: row(
            _E,
            **_FOLLOW_CLOSE,
            LOCKOUT=_S.LOCKED_OUT,
            MAINTENANCE_START=_S.MAINTENANCE,
            PROTECTION_TRIP=_S.TRIPPED,
            ignore=_OPEN_IGNORES + " RECLOSE_STARTED RESET MAINTENANCE_END",
        ),
        _S.RECLOSING: row(
            _E,
            **_FOLLOW_CLOSE,
            PROTECTION_TRIP=_S.TRIPPED,
            LOCKOUT=_S.LOCKED_OUT,
            ignore=_OPEN_IGNORES + " RECLOSE_STARTED RESET MAINTENANCE_START MAINTENANCE_END",
        ),
        # locked out: only a reset, maintenance or a measured close leaves it
        _S.LOCKED_OUT: row(
            _E,
            **_FOLLOW_CLOSE,
            RESET=_S.OPEN_MANUAL,
            MAINTENANCE_START=_S.MAINTENANCE,
            ignore=_OPEN_IGNORES + " PROTECTION_TRIP RECLOSE_STARTED LOCKOUT MAINTENANCE_END",
        ),
        # a maintenance tag is lifted by people only: a close measured meanwhile is alarmed, not followed
        _S.MAINTENANCE: row(
            _E,
            MAINTENANCE_END=_S.OPEN_MANUAL,
            ignore="HIGH_CURRENT CURRENT_NORMAL PROTECTION_TRIP RECLOSE_STARTED CLOSED CLOSED_UNEXPECTED "
            "OPENED OPENED_UNEXPECTED LOCKOUT RESET MAINTENANCE_START",
        ),
    },
)

CLOSED_STATES = frozenset({_S.CLOSED_NORMAL, _S.CLOSED_HIGH_CURRENT})
OVERCURRENT_ELEMENTS = ("50", "51", "49", "67")
"""Elements whose pickup means high current through the breaker (not 27/59/81)."""

TRIP_CAUSES = {
    "phase_fault": "phase fault",
    "ground_fault": "ground fault",
    "overload": "overload",
    "thermal_overload": "thermal overload",
    "breaker_failure": "breaker failure (50BF backup trip)",
    "undervoltage": "undervoltage",
    "overvoltage": "overvoltage",
    "underfrequency": "underfrequency",
    "overfrequency": "overfrequency",
    "protection": "protection trip",
}
"""Trip cause code → words for alarms."""
FAULT_CAUSES = frozenset({"phase_fault", "ground_fault", "breaker_failure"})
"""Causes that mean a fault on what the breaker feeds (the other trips are on load, voltage or frequency)."""


def trip_cause(element: str, phase: str, current_a: float, fault_level_a: float | None) -> str:
    """What a protection trip says happened: a fault, an overload, or a voltage/frequency condition.

    A time-overcurrent (51) trip on a current below the protected line's fault level is a trip
    on load current, an overload; an instantaneous (50) element is set above any load.
    """
    e = element.upper()
    if e.startswith("49"):
        return "thermal_overload"
    if e.startswith("50BF"):
        return "breaker_failure"
    if e.startswith("27"):
        return "undervoltage"
    if e.startswith("59"):
        return "overvoltage"
    if e.startswith("81U"):
        return "underfrequency"
    if e.startswith("81O"):
        return "overfrequency"
    if e.endswith(("N", "G")) or phase.upper() in ("N", "G"):
        return "ground_fault"
    if e.startswith("50"):
        return "phase_fault"
    if e.startswith("51"):
        return "overload" if fault_level_a is not None and current_a < fault_level_a else "phase_fault"
    return "protection"


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
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("recent_trips", "last_trip_time", "expected_operations")

    trip_count: int = 0
    recent_trips: list[float] = field(default_factory=list)
    last_trip_time: float | None = None
    trip_reason: str | None = None
    trip_cause: str | None = None
    """Code of what the last trip says happened (TRIP_CAUSES), e.g. phase_fault, overload."""
    sequence_trips: int = 0
    """Trips since the reclose sequence (or the last close by an operator) began."""
    contact_wear_ka2s: float = 0.0
    operations: int = 0
    max_phase_current_a: float = 0.0
    closed: bool | None = None
    """The last measured position (None until the first reading)."""
    pickup: bool = False
    maintenance_alerted: bool = False
    last_fault_current_a: float = 0.0
    last_trip_element: str | None = None
    last_trip_phase: str | None = None
    expected_operations: list[list[Any]] = field(default_factory=list)
    """[time, "open"|"close", origin] of operations whose position change has not been seen yet."""
    discrepancies: int = 0


class CircuitBreakerAgent(Agent[BreakerState, BreakerEvent]):
    agent_type = "circuit_breaker"
    TABLE = TABLE

    def __init__(
        self,
        agent_id: str,
        attrs: CircuitBreakerAttributes,
        links: Links | None = None,
        command_points: tuple[str, ...] = ("trip_cmd", "close_cmd"),
        fault_level_a: float | None = None,
    ) -> None:
        super().__init__(agent_id, links)
        self.attrs = attrs
        self.command_points = command_points
        self.fault_level_a = fault_level_a
        """Current at and above which a time-overcurrent trip is a fault, not an overload (the
        protected line's fault level); None: every overcurrent trip counts as a fault."""

    def initial_memory(self, now: float) -> BreakerMemory:
        return BreakerMemory(state=TABLE.initial, since=now)

    def memory_from_dict(self, data: dict[str, Any]) -> BreakerMemory:
        return BreakerMemory.from_dict(data, BreakerState)

    @property
    def contact_wear_percent_limit(self) -> float:
        return self.attrs.contact_wear_limit_ka2s

    # ------------------------------------------------------------------ position and expectations

    def expect_operation(self, memory: BreakerMemory, action: str, origin: str, now: float) -> BreakerMemory:
        """Note an operation under way (`action` "open" or "close") so its position change is not a discrepancy."""
        if action not in ("open", "close"):
            raise ValueError(f"breaker {self.agent_id}: switching action must be 'open' or 'close', not {action!r}")
        m = copy.deepcopy(memory)
        self._expect(m, action, origin, now)
        return m

    def _expect(self, m: BreakerMemory, action: str, origin: str, now: float) -> None:
        window = self.attrs.position_confirm_timeout_s
        pending = [e for e in m.expected_operations if now - e[0] <= window]
        if pending and pending[-1][1] == action:
            pending.pop()  # the same operation announced twice (e.g. by protection and by the switching record)
        m.expected_operations = pending[-7:] + [[now, action, origin]]

    def _pending(self, m: BreakerMemory, action: str, now: float) -> int | None:
        """Index of the oldest pending `action` still inside the confirm window, or None."""
        window = self.attrs.position_confirm_timeout_s
        m.expected_operations = [e for e in m.expected_operations if now - e[0] <= window]
        return next((i for i, e in enumerate(m.expected_operations) if e[1] == action), None)

    def _position_event(self, m: BreakerMemory, closed: bool, now: float) -> tuple[BreakerEvent, str] | None:
        """Classify a measured position against the state and the operations under way (None: nothing to do).

        A position that agrees with the state confirms it. One that disagrees is the operation
        under way that it matches; while only the opposite operation is under way the reading has
        not caught up yet (a trip reported before the next poll); otherwise it is a discrepancy.
        """
        first = m.closed is None and not m.history
        implied = m.closed if m.state is _S.MAINTENANCE else m.state in CLOSED_STATES
        action, opposite = ("close", "open") if closed else ("open", "close")
        m.closed = closed
        if first:
            return (
                None
                if closed == implied
                else ((_E.CLOSED if closed else _E.OPENED), f"first position reading: {'closed' if closed else 'open'}")
            )
        index = self._pending(m, action, now)
        if closed == implied:
            if index is not None:
                del m.expected_operations[index]  # e.g. the open after a trip: confirmed
            return None
        if index is not None:
            origin = m.expected_operations[index][2]
            # anything older was carried out between two readings (a trip and reclose inside one poll)
            m.expected_operations = m.expected_operations[index + 1 :]
            return (_E.CLOSED, f"closed by {origin}") if closed else (_E.OPENED, f"opened by {origin}")
        if self._pending(m, opposite, now) is not None:
            return None
        if closed:
            return _E.CLOSED_UNEXPECTED, "measured closed with no close known to the gateway (position discrepancy)"
        return _E.OPENED_UNEXPECTED, "measured open with no trip and no command known to the gateway (uncommanded open)"

    def _discrepancy_alert(self, old: BreakerState, event: BreakerEvent, now: float) -> Alert | None:
        me = self.agent_id
        if event is _E.CLOSED_UNEXPECTED:
            if old is _S.MAINTENANCE:
                return Alert(
                    agent_id=me,
                    severity=Severity.CRITICAL,
                    time=now,
                    message=f"{me} reads closed while in Maintenance, with no close known to the gateway: "
                    "make sure it is isolated before work goes on; it stays in Maintenance "
                    "until the maintenance is ended",
                )
            return Alert(
                agent_id=me,
                severity=Severity.CRITICAL if old is _S.LOCKED_OUT else Severity.MAJOR,
                time=now,
                message=f"{me} position discrepancy: closed while {old.value} with no close known to the "
                "gateway (closed at the panel, by another system, or after a device restart); "
                "the agent follows the measured position"
                + (
                    "; the lockout was not reset: check the feeder before leaving it in service"
                    if old is _S.LOCKED_OUT
                    else ""
                ),
            )
        if event is _E.OPENED_UNEXPECTED and old in CLOSED_STATES:
            return Alert(
                agent_id=me,
                severity=Severity.MAJOR,
                time=now,
                message=f"{me} opened with no protection trip and no command known to the gateway "
                "(uncommanded open: external trip, local operation or mechanism fault)",
            )
        return None

    # ------------------------------------------------------------------ step

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
        classified = self._position_event(m, x.closed, now) if x.closed is not None else None
        if classified is not None:
            event, cause = classified
            old = m.state
            alert = self._discrepancy_alert(old, event, now)
            if alert is not None:
                m.discrepancies += 1
                out.append(alert)
            if self.fire(m, event, cause, now, out):
                if event is _E.OPENED_UNEXPECTED:
                    m.trip_reason, m.trip_cause = "uncommanded", "uncommanded_open"
                if old is _S.LOCKED_OUT:
                    m.recent_trips, m.sequence_trips = [], 0
        # current events: the table follows them in the closed states and ignores them when open
        threshold = self.attrs.high_current_percent / 100.0 * self.attrs.rated_current
        if m.pickup or m.max_phase_current_a >= threshold:
            self.fire(
                m,
                _E.HIGH_CURRENT,
                f"phase current {m.max_phase_current_a:.0f} A" + (" (protection pickup)" if m.pickup else ""),
                now,
                out,
            )
        else:
            self.fire(m, _E.CURRENT_NORMAL, f"phase current {m.max_phase_current_a:.0f} A", now, out)
        self._maintenance_due(m, now, out)
        return m, out

    def _maintenance_due(self, m: BreakerMemory, now: float, out: list[Action]) -> None:
        a = self.attrs
        worn = m.contact_wear_ka2s >= 0.8 * a.contact_wear_limit_ka2s or m.operations >= a.maintenance_operations
        if worn and not m.maintenance_alerted:
            m.maintenance_alerted = True
            msg = (
                f"maintenance due: contact wear {m.contact_wear_ka2s:.1f} of {a.contact_wear_limit_ka2s:.0f} kA²s, "
                f"{m.operations} operations"
            )
            out.append(Alert(agent_id=self.agent_id, severity=Severity.WARNING, time=now, message=msg))
            reason = "contact wear" if m.contact_wear_ka2s >= 0.8 * a.contact_wear_limit_ka2s else "operations count"
            out.append(
                BusMessage(
                    source=self.agent_id,
                    topic=Topic.MAINTENANCE_SCHEDULED,
                    kind="maintenance_due",
                    payload={
                        "element": self.agent_id,
                        "element_type": self.agent_type,
                        "reason": reason,
                        "contact_wear_ka2s": m.contact_wear_ka2s,
                        "contact_wear_limit_ka2s": a.contact_wear_limit_ka2s,
                        "operations": m.operations,
                        "maintenance_operations": a.maintenance_operations,
                        "customers": self.links.customers_downstream,
                    },
                )
            )

    def describe_trip(self, m: BreakerMemory) -> str:
        """The last trip in words for alarms: cause, element, phase, current."""
        words = TRIP_CAUSES.get(m.trip_cause or "", m.trip_cause or "trip")
        return (
            f"{words} ({m.last_trip_element or 'protection'}{_phase_words(m.last_trip_phase)}, "
            f"{m.last_fault_current_a:.0f} A)"
        )

    def on_protection_event(
        self, memory: BreakerMemory, kind: str, element: str, phase: str, current_a: float, now: float
    ) -> tuple[BreakerMemory, list[Action]]:
        m = copy.deepcopy(memory)
        out: list[Action] = []
        a = self.attrs
        me = self.agent_id
        overcurrent = element.upper().startswith(OVERCURRENT_ELEMENTS)
        if kind == "pickup":
            if overcurrent:  # an undervoltage or frequency pickup is no high current
                m.pickup = True  # the table moves only a closed, normal breaker
                self.fire(m, _E.HIGH_CURRENT, f"protection pickup {element} phase {phase}", now, out)
        elif kind == "dropout":
            if overcurrent:
                m.pickup = False
        elif kind == "trip":
            m.pickup = False
            cause = trip_cause(element, phase, current_a, self.fault_level_a)
            self._expect(m, "open", f"protection ({element})", now)
            if self.fire(
                m,
                _E.PROTECTION_TRIP,
                f"{element} trip, phase {phase}, {current_a:.0f} A: {TRIP_CAUSES[cause]}",
                now,
                out,
            ):
                m.trip_count += 1
                m.sequence_trips += 1
                m.operations += 1
                m.last_trip_time = now
                m.last_fault_current_a = current_a
                m.last_trip_element, m.last_trip_phase = element, phase
                m.trip_cause = cause
                m.trip_reason = (
                    "ground_fault"
                    if cause == "ground_fault"
                    else (
                        "overcurrent"
                        if cause in ("phase_fault", "overload", "thermal_overload", "breaker_failure")
                        else cause
                    )
                )
                m.contact_wear_ka2s += (current_a / 1000.0) ** 2 * a.interrupt_time_s
                # bounded: one more than the limit decides the lockout, older trips add nothing
                m.recent_trips = ([t for t in m.recent_trips if now - t < a.trip_count_period_s] + [now])[
                    -(a.max_trips_in_period + 1) :
                ]
                payload = {
                    "breaker": me,
                    "line": self.links.lines[0] if self.links.lines else None,
                    "cause": cause,
                    "element": element,
                    "phase": phase,
                    "fault_current_a": current_a,
                    "trip_count": m.trip_count,
                    "sequence_trips": m.sequence_trips,
                    "customers": self.links.customers_downstream,
                }
                out.append(
                    BusMessage(source=me, topic=Topic.FAULT_ALERTS, kind="breaker_trip", payload=payload, urgent=True)
                )
                if cause not in FAULT_CAUSES or not self.links.lines:
                    # a fault on a line is announced by the line; anything else by the breaker
                    out.append(
                        Alert(
                            agent_id=me,
                            severity=Severity.MAJOR,
                            time=now,
                            message=f"{me} tripped on {self.describe_trip(m)}"
                            + (
                                f" on load current, below the fault level {self.fault_level_a:.0f} A"
                                if cause == "overload" and self.fault_level_a
                                else ""
                            ),
                        )
                    )
                if self.links.upstream_breaker:
                    out.append(
                        BusMessage(
                            source=me,
                            target=self.links.upstream_breaker,
                            kind="fault_cleared_downstream",
                            payload=payload,
                            urgent=True,
                        )
                    )
                if len(m.recent_trips) > a.max_trips_in_period and self.fire(
                    m, _E.LOCKOUT, f"{len(m.recent_trips)} trips within {a.trip_count_period_s:.0f} s", now, out
                ):
                    out += self._lockout_notice(m, len(m.recent_trips), f"within {a.trip_count_period_s:.0f} s", now)
        elif kind == "reclose":
            self._expect(m, "close", f"auto-reclose ({element})", now)
            self.fire(m, _E.RECLOSE_STARTED, f"auto-reclose by {element}", now, out)
        elif kind == "lockout":
            if self.fire(
                m, _E.LOCKOUT, f"reclose sequence exhausted ({element}) after {m.sequence_trips} trip(s)", now, out
            ):
                out += self._lockout_notice(m, m.sequence_trips, "(reclose sequence exhausted)", now)
        elif kind == "reset":
            m.sequence_trips = 0
            self.fire(m, _E.RESET, "protection reset", now, out)
        else:
            raise ValueError(
                f"breaker {me}: unknown protection event kind {kind!r} "
                "(expected pickup, dropout, trip, reclose, lockout, reset)"
            )
        self._maintenance_due(m, now, out)
        return m, out

    def _lockout_notice(self, m: BreakerMemory, trips: int, why: str, now: float) -> list[Action]:
        me = self.agent_id
        cause = m.trip_cause or "protection"
        payload = {
            "breaker": me,
            "line": self.links.lines[0] if self.links.lines else None,
            "trips": trips,
            "cause": cause,
            "last_trip": self.describe_trip(m),
            "trip_count": m.trip_count,
            "customers": self.links.customers_downstream,
        }
        return [
            Alert(
                agent_id=me,
                severity=Severity.CRITICAL,
                time=now,
                message=f"{me} locked out after {trips} trip(s) {why}; last trip: {self.describe_trip(m)}; "
                "manual intervention required",
            ),
            BusMessage(source=me, topic=Topic.FAULT_ALERTS, kind="breaker_lockout", payload=payload, urgent=True),
        ]

    def on_message(self, memory: BreakerMemory, message: BusMessage, now: float) -> tuple[BreakerMemory, list[Action]]:
        """A breaker downstream cleared the fault whose through-current this one saw: its pickup is over."""
        m = copy.deepcopy(memory)
        if message.kind == "fault_cleared_downstream":
            m.pickup = False
        return m, []

    def request(
        self, memory: BreakerMemory, request: str, args: dict[str, Any], now: float
    ) -> tuple[BreakerMemory, list[Action]]:
        """Operator/SCADA requests: open, close, reset, maintenance (on=bool)."""
        m = copy.deepcopy(memory)
        out: list[Action] = []
        me = self.agent_id
        origin = str(args.get("origin") or "operator request")
        if request == "open":
            m.trip_reason = "manual" if args.get("local") else "remote"
            m.operations += 1
            self._expect(m, "open", origin, now)
            out.append(self._command(open_=True, reason=str(args.get("reason", "operator open"))))
            self.fire(m, _E.OPENED, f"open command ({origin})", now, out)  # the table ignores it unless closed
        elif request == "close":
            if m.state in (_S.LOCKED_OUT, _S.MAINTENANCE):
                raise ValueError(f"breaker {me} is {m.state.value}: reset it (or end maintenance) before closing")
            m.operations += 1
            m.sequence_trips = 0
            self._expect(m, "close", origin, now)
            out.append(self._command(open_=False, reason=str(args.get("reason", "operator close"))))
        elif request == "reset":
            m.recent_trips = []
            m.sequence_trips = 0
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
        return ControlRequest(
            agent_id=self.agent_id, point_name="trip_cmd" if open_ else "close_cmd", value=True, reason=reason
        )

    def attributes(self, memory: Memory) -> dict[str, Any]:
        m = memory
        assert isinstance(m, BreakerMemory)
        a = self.attrs
        return {
            "breaker_type": a.breaker_type,
            "rated_current": a.rated_current,
            "interrupting_capacity": a.interrupting_capacity,
            "position": None if m.closed is None else ("closed" if m.closed else "open"),
            "trip_count": m.trip_count,
            "last_trip_date": m.last_trip_time,
            "trip_reason": m.trip_reason,
            "trip_cause": m.trip_cause,
            "sequence_trips": m.sequence_trips,
            "position_discrepancies": m.discrepancies,
            "contact_wear_ka2s": m.contact_wear_ka2s,
            "contact_wear_percent": 100.0 * m.contact_wear_ka2s / a.contact_wear_limit_ka2s,
            "operations": m.operations,
            "max_phase_current_a": m.max_phase_current_a,
            "condition_score": max(
                0.0,
                min(
                    a.condition_score,
                    100.0
                    * (
                        1.0
                        - max(m.contact_wear_ka2s / a.contact_wear_limit_ka2s, m.operations / a.maintenance_operations)
                    ),
                ),
            ),
            "protected_line": a.protected_line or (self.links.lines[0] if self.links.lines else ""),
        }


def _phase_words(phase: str | None) -> str:
    return f" phase {phase}" if phase and phase.upper() not in ("", "N", "G") else ""


# --------------------------------------------------------------------------- the type, declared once

_PHASORS = {f"v{p}_kv": spec.KV for p in "abc"} | {f"{q}{p}_deg": spec.analog("deg", "°") for q in "vi" for p in "abc"}

POINTS: dict[str, spec.PointName] = {
    "ia": spec.AMP,
    "ib": spec.AMP,
    "ic": spec.AMP,
    "in": spec.AMP,
    "closed": spec.BIT,
    "operations": spec.COUNTER,
    "voltage_kv": spec.KV,
    "frequency_hz": spec.HZ,
    "active_power_kw": spec.KW,
    "reactive_power_kvar": spec.KVAR,
    "fpi": spec.BIT,
    "local": spec.BIT,
    "trip_cmd": spec.BIT_COMMAND,
    "close_cmd": spec.BIT_COMMAND,
    "position_cmd": spec.BIT_COMMAND,
    "fpi_reset": spec.BIT_COMMAND,
    **_PHASORS,
}


def _links(b: spec.Build) -> Links:
    lines = b.of_type(b.topology.children(b.agent_id), "power_line")
    return Links(
        upstream_breaker=b.protecting_breaker,
        lines=lines,
        substation=b.substation,
        customers_downstream=b.topology.meters_downstream(b.agent_id),
    )


def _line_fault_level_a(b: spec.Build, line: str) -> float:
    attrs = PowerLineAttributes.model_validate(b.site.agent(line).attributes)
    return attrs.fault_current_a or 4.0 * attrs.ampacity


def _build(b: spec.Build, links: Links) -> CircuitBreakerAgent:
    """One position command point when the site maps one, else separate trip and close points."""
    cmds = ("position_cmd",) if "position_cmd" in b.points else ("trip_cmd", "close_cmd")
    levels = [_line_fault_level_a(b, ln) for ln in links.lines]
    return CircuitBreakerAgent(
        b.agent_id, b.attrs, links, command_points=cmds, fault_level_a=min(levels) if levels else None
    )


SPEC = spec.AgentSpec(
    type_name="circuit_breaker",
    listing_order=4,
    table=TABLE,
    attributes=CircuitBreakerAttributes,
    points=POINTS,
    inputs=BreakerInputs,
    links=_links,
    factory=_build,
    step_order=0,
    requests=("open", "close", "reset", "maintenance"),
    subscriptions=(Topic.FAULT_ALERTS,),
    visualization=visualization.switch_view,
    description="a breaker, recloser or load-break switch: position, trips, reclosing, contact wear",
)
