"""Alarms with a life cycle: raised, cleared when their condition is gone, acknowledged by an
operator (after ISA-18.2, simplified), and the list of active alarms a host can read at any time.

An alarm from an agent (a breaker locked out, a position discrepancy, an overloaded line, a
switching operation that failed on a device) stands while its agent is not back in a normal
state; it clears when the agent's state becomes normal again. An alarm with no such agent (a
sequence that stopped, FLISR) is an event: it is cleared when raised. An alarm stays in the
active list until it is both cleared and acknowledged.

Sans-IO: times come in as arguments; the daemon publishes what `take_changes()` returns and
persists `snapshot()`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

SEVERITIES = ("info", "warning", "major", "critical")
NORMAL_STATES = frozenset(
    {
        "Closed_Normal",
        "Open_Manual",  # circuit breaker
        "Operational",
        "Loaded",  # power line
        "Normal_Operation",  # transformer, substation
        "Generating",
        "Standby",
        "Curtailed",  # renewable energy
        "All_Steps_Off",
        "Partial_Energization",
        "Fully_Energized",  # capacitor bank
        "Active",  # smart meters
    }
)
"""Agent states in which no condition stands: the agent's active alarms clear on entering one."""
SNAPSHOT_KEY = "alarms"
DEFAULT_LIMIT = 1000
RECENT = 100


@dataclass(frozen=True, slots=True)
class Alarm:
    id: str
    source: str
    severity: str
    message: str
    raised: float
    cleared: float | None = None
    acknowledged: float | None = None
    acknowledged_by: str | None = None

    @property
    def active(self) -> bool:
        """In the active list: not yet both cleared and acknowledged."""
        return self.cleared is None or self.acknowledged is None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}

    to_dict = as_dict


class AlarmBook:
    def __init__(self, agents: Iterable[str] = (), limit: int = DEFAULT_LIMIT) -> None:
        self.agents = frozenset(agents)
        self.limit = limit
        self._alarms: dict[str, Alarm] = {}
        self._recent: deque[Alarm] = deque(maxlen=RECENT)
        self._next = 1
        self._changes: list[tuple[str, Alarm]] = []
        self.dropped = 0
        """Alarms pushed off a full list (the oldest cleared ones first), counted."""
        self.version = 0
        """Counts changes: a view redraws when it moves."""

    def raise_alarm(self, source: str, severity: str, message: str, now: float) -> Alarm:
        """A new alarm; standing while `source` is an agent not in a normal state, else cleared at once."""
        if severity not in SEVERITIES:
            severity = "major"
        alarm = Alarm(
            id=f"alm-{self._next}",
            source=source,
            severity=severity,
            message=message,
            raised=now,
            cleared=None if source in self.agents else now,
        )
        self._next += 1
        self._alarms[alarm.id] = alarm
        self._changes.append(("raised", alarm))
        self.version += 1
        while len(self._alarms) > self.limit:
            oldest = next((a for a in self._alarms.values() if a.cleared is not None), None)
            del self._alarms[(oldest or next(iter(self._alarms.values()))).id]
            self.dropped += 1
        return alarm

    def on_state(self, agent: str, state: str, now: float) -> list[Alarm]:
        """An agent's new state: in a normal one, its standing alarms clear."""
        if state not in NORMAL_STATES:
            return []
        out = []
        for alarm in list(self._alarms.values()):
            if alarm.source == agent and alarm.cleared is None:
                cleared = replace(alarm, cleared=now)
                self._store(cleared)
                self._changes.append(("cleared", cleared))
                out.append(cleared)
        return out

    def acknowledge(self, alarm_id: str, who: str, now: float) -> Alarm:
        """An operator saw it. KeyError when no such alarm is active; acknowledging twice is a no-op."""
        alarm = self._alarms.get(alarm_id)
        if alarm is None:
            raise KeyError(f"no active alarm {alarm_id!r}")
        if alarm.acknowledged is not None:
            return alarm
        acked = replace(alarm, acknowledged=now, acknowledged_by=who)
        self._store(acked)
        self._changes.append(("acknowledged", acked))
        return acked

    def active(self) -> list[Alarm]:
        return sorted(self._alarms.values(), key=lambda a: (a.raised, int(a.id.split("-")[1])))

    def recent(self) -> list[Alarm]:
        """The latest alarms that left the active list (cleared and acknowledged), newest first."""
        return list(self._recent)

    def get(self, alarm_id: str) -> Alarm | None:
        return self._alarms.get(alarm_id) or next((a for a in self._recent if a.id == alarm_id), None)

    def take_changes(self) -> list[tuple[str, Alarm]]:
        out, self._changes = self._changes, []
        return out

    def _store(self, alarm: Alarm) -> None:
        self.version += 1
        if alarm.active:
            self._alarms[alarm.id] = alarm
        else:
            self._alarms.pop(alarm.id, None)
            self._recent.appendleft(alarm)

    def snapshot(self) -> dict[str, Any]:
        return {"version": 1, "next": self._next, "alarms": [asdict(a) for a in self.active()]}

    def restore(self, data: Any) -> None:
        if not data:
            return
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise ValueError("alarm snapshot: expected a map with version 1")
        self._next = int(data["next"])
        self._alarms = {str(a["id"]): Alarm(**a) for a in data.get("alarms", [])}
        self.version += 1
