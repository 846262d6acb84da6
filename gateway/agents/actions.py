"""What agents ask of the world. The daemon carries these out; agents never do I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.Enum):
    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


class Topic(enum.Enum):
    """Publish-subscribe topics of the internal bus (from the use case)."""

    FAULT_ALERTS = "fault_alerts"
    LOAD_CHANGES = "load_changes"
    VOLTAGE_EVENTS = "voltage_events"
    MAINTENANCE_SCHEDULED = "maintenance_scheduled"


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlRequest:
    """Write `value` to the agent's command point `point_name`; the daemon applies interlocks."""

    agent_id: str
    point_name: str
    value: float | bool
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    agent_id: str
    severity: Severity
    message: str
    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BusMessage:
    """A publication on `topic`, or a direct message to agent `target` (exactly one is set)."""

    source: str
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    topic: Topic | None = None
    target: str | None = None
    urgent: bool = False
    """Fault traffic: delivered before everything else."""

    def __post_init__(self) -> None:
        if (self.topic is None) == (self.target is None):
            raise ValueError("a bus message has either a topic or a target, not both or neither")


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    agent_id: str
    agent_type: str
    old: str
    new: str
    cause: str
    time: float


Action = ControlRequest | Alert | BusMessage | StateChange
