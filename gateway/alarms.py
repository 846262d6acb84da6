"""The active alarm list: every alarm the gateway raises, held until someone acknowledges it.

Alarms are what the agents, the switching authority and protection publish on the uplink's
`alarms` topic (the daemon feeds each one here as it is published). One alarm stays on the list
until an operator acknowledges it (the HMI, with their user name; the event log keeps who and
when); the same alarm raised again while unacknowledged counts up instead of filling the list.
The list is bounded: beyond `limit` the oldest unacknowledged alarm is dropped and counted.

Sans-IO: times come in as arguments (wall seconds); the daemon saves `snapshot()` in the state
database so unacknowledged alarms survive a restart.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_LIMIT = 1000
RECENT_ACKNOWLEDGED = 100
SEVERITIES = ("critical", "major", "warning", "minor", "info")


@dataclass(slots=True)
class Alarm:
    id: str
    time: float
    """Wall time it was first raised."""
    last_time: float
    source: str
    severity: str
    message: str
    count: int = 1
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlarmBook:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._active: dict[str, Alarm] = {}
        self._recent: deque[Alarm] = deque(maxlen=RECENT_ACKNOWLEDGED)
        self._next = 1
        self.dropped = 0
        self.version = 0
        """Counts changes (raised, repeated, acknowledged): a view redraws when it moves."""
        self.dirty = False

    def raise_alarm(self, time: float, source: str, severity: str, message: str) -> Alarm:
        severity = severity if severity in SEVERITIES else "warning"
        for alarm in self._active.values():
            if alarm.source == source and alarm.message == message:
                alarm.count += 1
                alarm.last_time = time
                alarm.severity = _worse(alarm.severity, severity)
                self._changed()
                return alarm
        alarm = Alarm(id=f"A{self._next}", time=time, last_time=time, source=source[:128], severity=severity,
                      message=message[:1000])
        self._next += 1
        self._active[alarm.id] = alarm
        while len(self._active) > self.limit:
            del self._active[next(iter(self._active))]
            self.dropped += 1
        self._changed()
        return alarm

    def acknowledge(self, alarm_id: str, who: str, time: float) -> Alarm:
        """Take `alarm_id` off the active list (KeyError if it is not there: unknown, or
        acknowledged already)."""
        alarm = self._active.pop(alarm_id, None)
        if alarm is None:
            done = next((a for a in self._recent if a.id == alarm_id), None)
            if done is not None:
                raise KeyError(f"alarm {alarm_id} was acknowledged by {done.acknowledged_by}")
            raise KeyError(f"no active alarm {alarm_id}")
        alarm.acknowledged_by, alarm.acknowledged_at = who, time
        self._recent.appendleft(alarm)
        self._changed()
        return alarm

    def active(self) -> list[Alarm]:
        """Unacknowledged alarms, most severe first, then newest first."""
        rank = {s: n for n, s in enumerate(SEVERITIES)}
        return sorted(self._active.values(), key=lambda a: (rank.get(a.severity, 9), -a.last_time))

    def recent(self) -> list[Alarm]:
        return list(self._recent)

    def get(self, alarm_id: str) -> Alarm | None:
        return self._active.get(alarm_id) or next((a for a in self._recent if a.id == alarm_id), None)

    def _changed(self) -> None:
        self.version += 1
        self.dirty = True

    def snapshot(self) -> dict[str, Any]:
        return {"version": 1, "next": self._next, "dropped": self.dropped,
                "active": [a.to_dict() for a in self._active.values()],
                "recent": [a.to_dict() for a in self._recent]}

    def restore(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("alarm snapshot: expected a dict with version 1")
        self._active = {a["id"]: Alarm(**a) for a in data.get("active", [])}
        self._recent = deque((Alarm(**a) for a in data.get("recent", [])), maxlen=RECENT_ACKNOWLEDGED)
        self._next = int(data.get("next", len(self._active) + 1))
        self.dropped = int(data.get("dropped", 0))
        self.version += 1


def _worse(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) <= SEVERITIES.index(b) else b
