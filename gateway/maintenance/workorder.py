"""Work orders for the asset-management system (IBM Maximo, SAP EAM): what, why, when, who, with what.

A work order is plain data published on `<base>/maintenance/work_orders/<id>` (retained: the
latest state of each order) and moved through its life by signed SCADA commands
(`maintenance/accept`, `maintenance/reschedule`, `maintenance/close`) or the local CLI. Its
states and moves are one table, as the agents' are:

    proposed ──accept──▶ accepted ──close──▶ closed
        │  ╰reschedule╯     │ ╰reschedule╯
        ╰──────close────────┴──────────────▶ closed

A closed order takes no more commands (refused, with the reason). Tasks, parts and success
criteria follow from the evidence the health model found (docs/maintenance.md).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.agents.fsm import TransitionTable, row


class WorkOrderState(enum.Enum):
    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    CLOSED = "closed"


class WorkOrderEvent(enum.Enum):
    ACCEPT = "accept"
    RESCHEDULE = "reschedule"
    CLOSE = "close"
    EVIDENCE = "evidence"
    """A further maintenance request for the same asset while the order is open."""


_S, _E = WorkOrderState, WorkOrderEvent
TABLE: TransitionTable[WorkOrderState, WorkOrderEvent] = TransitionTable(
    WorkOrderState,
    WorkOrderEvent,
    initial=_S.PROPOSED,
    rows={
        _S.PROPOSED: row(_E, ACCEPT=_S.ACCEPTED, CLOSE=_S.CLOSED, ignore="RESCHEDULE EVIDENCE"),
        _S.ACCEPTED: row(_E, CLOSE=_S.CLOSED, ignore="ACCEPT RESCHEDULE EVIDENCE"),
        _S.CLOSED: {},  # nothing moves a closed order
    },
)


class Priority(enum.Enum):
    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class WorkOrderError(ValueError):
    """A command a work order cannot take (unknown order, closed, bad window); says why."""


@dataclass(frozen=True, slots=True)
class Part:
    item: str
    quantity: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {"item": self.item, "quantity": self.quantity, "unit": self.unit}


@dataclass(frozen=True, slots=True)
class WorkOrder:
    id: str
    asset: str
    asset_type: str
    substation: str
    status: WorkOrderState
    priority: Priority
    created: float
    reason: str
    tasks: tuple[str, ...]
    parts: tuple[Part, ...]
    equipment: tuple[str, ...]
    crew: str
    crew_skill: str
    window: Mapping[str, Any]
    """start, end (wall s), label (local time), reasons."""
    duration_h: float
    success_criteria: tuple[str, ...]
    assessment: Mapping[str, Any] = field(default_factory=dict)
    """failure_probability, horizon_days, failure_mode, contributions, recommended_within_days, health."""
    plans: tuple[Mapping[str, Any], ...] = ()
    recommended_plan: str | None = None
    backup_sequence: str | None = None
    """The recommended plan's switching sequence, proposed in the sequence runner."""
    customers: Mapping[str, Any] = field(default_factory=dict)
    external_id: str | None = None
    """The asset-management system's own number, given when it accepts the order."""
    history: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "asset": self.asset,
            "asset_type": self.asset_type,
            "substation": self.substation,
            "status": self.status.value,
            "priority": self.priority.value,
            "created": self.created,
            "reason": self.reason,
            "tasks": list(self.tasks),
            "parts": [p.to_dict() for p in self.parts],
            "equipment": list(self.equipment),
            "crew": self.crew,
            "crew_skill": self.crew_skill,
            "window": dict(self.window),
            "duration_h": self.duration_h,
            "success_criteria": list(self.success_criteria),
            "assessment": dict(self.assessment),
            "plans": [dict(p) for p in self.plans],
            "recommended_plan": self.recommended_plan,
            "backup_sequence": self.backup_sequence,
            "customers": dict(self.customers),
            "external_id": self.external_id,
            "history": [dict(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorkOrder:
        return cls(
            id=d["id"],
            asset=d["asset"],
            asset_type=d["asset_type"],
            substation=d["substation"],
            status=WorkOrderState(d["status"]),
            priority=Priority(d["priority"]),
            created=float(d["created"]),
            reason=d["reason"],
            tasks=tuple(d["tasks"]),
            parts=tuple(Part(**p) for p in d["parts"]),
            equipment=tuple(d["equipment"]),
            crew=d["crew"],
            crew_skill=d["crew_skill"],
            window=dict(d["window"]),
            duration_h=float(d["duration_h"]),
            success_criteria=tuple(d["success_criteria"]),
            assessment=dict(d.get("assessment", {})),
            plans=tuple(d.get("plans", ())),
            recommended_plan=d.get("recommended_plan"),
            backup_sequence=d.get("backup_sequence"),
            customers=dict(d.get("customers", {})),
            external_id=d.get("external_id"),
            history=tuple(d.get("history", ())),
        )


def work_order_id(prefix: str, asset: str, wall: float, utc_offset_h: float, taken: Sequence[str] = ()) -> str:
    """`PM-2025-1024-234`: prefix, local date of creation, the asset's number (a suffix if taken)."""
    local = dt.datetime.fromtimestamp(wall + utc_offset_h * 3600.0, tz=dt.UTC)
    digits = re.findall(r"\d+", asset)
    number = digits[-1] if digits else re.sub(r"[^A-Z0-9]", "", asset.upper())[-6:] or "X"
    base = f"{prefix}-{local:%Y-%m%d}-{number}"
    out, k = base, 1
    while out in taken:
        k += 1
        out = f"{base}-{k}"
    return out


def apply(order: WorkOrder, event: WorkOrderEvent, who: str, wall: float, note: str = "", **changes: Any) -> WorkOrder:
    """The order after `event` (accept, reschedule, close, evidence), recorded in its history."""
    try:
        status = TABLE.next(order.status, event)
    except Exception:
        raise WorkOrderError(f"work order {order.id} is {order.status.value}: it takes no {event.value}") from None
    entry = {"time": wall, "who": who, "event": event.value, "note": note}
    return replace(order, status=status, history=order.history + (entry,), **changes)


# --------------------------------------------------------------------------- what the work is


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the health model found, as the work order's contents need it."""

    failure_mode_key: str = "ageing"
    thermal_trend: bool = False
    top_oil_excess: bool = False
    cooling: bool = False
    acetylene: bool = False
    dga_status: int = 1
    efficiency_drop: bool = False
    hours_due: bool = False
    ageing: bool = False
    normal_top_oil_max_c: float | None = None
    baseline_efficiency_pct: float | None = None
    rated_kva: float = 1000.0


def contents(ev: Evidence) -> tuple[tuple[str, ...], tuple[Part, ...], tuple[str, ...], tuple[str, ...], str]:
    """(tasks, parts, equipment, success criteria, crew skill) for what was found."""
    tasks = ["oil sampling and laboratory DGA, to confirm the online monitor"]
    parts = [Part("gasket set", 1, "set"), Part("oil filter cartridges", 4, "pcs")]
    equipment = ["oil sampling kit"]
    criteria: list[str] = []
    if ev.thermal_trend or ev.top_oil_excess or ev.cooling:
        tasks.append("thermal imaging of tank, radiators, bushings and connections")
        equipment.append("thermal camera")
    if ev.cooling:
        tasks.append("cooling system service: fans, fan motors and controls; radiators cleaned")
        parts.append(Part("cooling fan motor", 1, "pcs"))
        criteria.append("fans cycling with the load again (duty back near its baseline)")
    if ev.acetylene or ev.failure_mode_key == "winding" or ev.dga_status >= 3:
        tasks.append(
            "tap changer inspection and service (diverter contacts and oil; a leak from its compartment "
            "is ruled out as the acetylene's source)"
        )
        tasks.append("winding resistance, turns-ratio and insulation power-factor tests")
        parts.append(Part("tap changer contact set", 1, "set"))
        equipment += ["turns-ratio tester", "winding resistance meter", "insulation power-factor test set"]
        criteria.append("no acetylene generation after degassing (C2H2 rate ≤ 0.5 µL/L a year) and DGA status 1")
        criteria.append(
            "all electrical tests passed (turns ratio within 0.5 % of nameplate, winding resistance "
            "within 2 % between phases)"
        )
    if ev.efficiency_drop:
        tasks.append("no-load loss and excitation current measurement")
        if ev.baseline_efficiency_pct is not None:
            criteria.append(
                f"efficiency at comparable load back within 0.1 point of its baseline "
                f"({ev.baseline_efficiency_pct:.1f} %)"
            )
    if ev.ageing:
        tasks.append("furan analysis of the oil (the paper's degree of polymerisation)")
    if ev.hours_due:
        tasks.append("scheduled major maintenance: the operating hours are at the maintenance interval")
    # top-up and treatment: about a tenth of the oil, which is about 0.8 L per kVA in units of this size
    oil_l = 50.0 * math.ceil(0.1 * 0.8 * ev.rated_kva / 50.0)
    parts.insert(0, Part("transformer oil (top-up and treatment)", oil_l, "L"))
    if ev.normal_top_oil_max_c is not None and (ev.thermal_trend or ev.top_oil_excess or ev.cooling):
        criteria.insert(0, f"top-oil temperature at comparable load below {ev.normal_top_oil_max_c - 5:.0f} °C")
    criteria.append("the transformer returned to service and carrying its load")
    skill = "transformer specialists (oil, tap changer and electrical testing)"
    return tuple(tasks), tuple(parts), tuple(equipment), tuple(criteria), skill


def priority_for(
    probability: float | None,
    threshold: float,
    critical_customers: int,
    reason: str,
    recommended_within_days: float | None,
) -> Priority:
    if probability is None:
        return Priority.HIGH if "critical" in reason else Priority.MEDIUM
    if probability >= 0.8 or (recommended_within_days is not None and recommended_within_days <= 7):
        return Priority.CRITICAL
    if probability >= threshold and (critical_customers > 0 or probability >= 0.4):
        return Priority.HIGH
    if probability >= threshold:
        return Priority.MEDIUM
    return Priority.LOW
