"""Fault records: what protection tripped on, where the fault is believed to be, and whether it
is still there.

A record opens on a fault trip (a phase or earth overcurrent element, or breaker failure) and
names the *zone*: the nodes of the switching network that the tripping breaker fed. While a
record is active, closing anything that would energise a node of its zone is refused (the
`fault_indicated` interlock). A record ends when:

- the reclose sequence succeeds (the relay's reset after its reclaim time): a transient fault;
- an operator declares the fault cleared (the crew repaired it), with a reason, locally.

Location narrows the zone to the faulted section(s); isolation records the open devices that
bound it, after which closes outside the zone pass again. Sans-IO; persisted by the caller
through `snapshot()` / `restore()` so a restart does not forget a fault.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

FAULT_ELEMENT_PREFIXES = ("50", "51")
"""Trips by these elements are faults (overcurrent, earth fault, breaker failure); 27/59/81/49
trips are abnormal conditions, not faults on the line."""


class FaultStatus(enum.Enum):
    TRIPPED = "tripped"
    """Protection tripped; auto-reclose may still clear it."""
    PERMANENT = "permanent"
    """Locked out (or a breaker without auto-reclose tripped): the fault is still there."""
    TRANSIENT = "transient"
    """A reclose held: the fault was gone. Inactive."""
    CLEARED = "cleared"
    """Declared repaired by an operator. Inactive."""

    @property
    def active(self) -> bool:
        return self in (FaultStatus.TRIPPED, FaultStatus.PERMANENT)


def is_fault_element(element: str) -> bool:
    return element.upper().startswith(FAULT_ELEMENT_PREFIXES)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    id: str
    breaker: str
    status: FaultStatus
    started: float
    """Monotonic time of the first trip."""
    started_wall: float
    element: str
    current_a: float
    voltage_kv: float | None
    feeder: tuple[str, ...]
    """Nodes the breaker fed when it tripped."""
    zone: tuple[str, ...]
    """Nodes the fault may be in (the whole feeder until located)."""
    trips: int = 1
    located_by: str | None = None
    isolated_by: tuple[str, ...] = ()
    """Open devices that bound the zone (checked back)."""
    distance_m: float | None = None
    location: dict[str, Any] | None = None
    """The distance estimate from the relay's measurements at the first trip (gateway.fault_location):
    distance_m, distance_km, section, method, loop, fault type."""
    cleared_by: str | None = None
    cleared_reason: str | None = None
    history: tuple[tuple[float, str], ...] = field(default=())

    @property
    def active(self) -> bool:
        return self.status.active

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        out["feeder"], out["zone"], out["isolated_by"] = list(self.feeder), list(self.zone), list(self.isolated_by)
        out["history"] = [list(h) for h in self.history]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRecord:
        return cls(
            id=str(data["id"]),
            breaker=str(data["breaker"]),
            status=FaultStatus(data["status"]),
            started=float(data["started"]),
            started_wall=float(data["started_wall"]),
            element=str(data["element"]),
            current_a=float(data["current_a"]),
            voltage_kv=None if data.get("voltage_kv") is None else float(data["voltage_kv"]),
            feeder=tuple(data["feeder"]),
            zone=tuple(data["zone"]),
            trips=int(data.get("trips", 1)),
            located_by=data.get("located_by"),
            isolated_by=tuple(data.get("isolated_by", ())),
            distance_m=None if data.get("distance_m") is None else float(data["distance_m"]),
            location=dict(data["location"]) if isinstance(data.get("location"), dict) else None,
            cleared_by=data.get("cleared_by"),
            cleared_reason=data.get("cleared_reason"),
            history=tuple((float(t), str(w)) for t, w in data.get("history", ())),
        )


def _where(location: dict[str, Any] | None) -> str:
    if not location:
        return ""
    section = f" in {location['section']}" if location.get("section") else ""
    return f"; fault at {float(location['distance_m']):.0f} m{section} ({location.get('method')})"


class UnknownFault(KeyError):
    def __str__(self) -> str:
        return f"no fault record {self.args[0]!r}"


class FaultBook:
    """Every fault record of this gateway; at most one active record per breaker."""

    def __init__(self, keep: int = 200) -> None:
        self._records: dict[str, FaultRecord] = {}
        self._keep = keep
        self._seq = 0
        self.changed: list[FaultRecord] = []
        """Records changed since the caller last took them (event log, uplink)."""

    # ------------------------------------------------------------------ protection

    def on_trip(
        self,
        breaker: str,
        element: str,
        current_a: float,
        voltage_kv: float | None,
        feeder: Iterable[str],
        now: float,
        wall: float,
        *,
        recloses: bool,
        location: dict[str, Any] | None = None,
    ) -> FaultRecord | None:
        """A protection trip. Opens a record for a fault trip (or counts another trip of the active
        one). `recloses` false: no auto-reclose will follow, the fault is taken as permanent.
        `location`: the distance estimate from the relay's measurements (kept from the first trip
        that has one)."""
        if not is_fault_element(element):
            return None
        current = self.active_for(breaker)
        if current is not None:
            updated = replace(
                current,
                trips=current.trips + 1,
                current_a=max(current.current_a, current_a),
                status=current.status if recloses else FaultStatus.PERMANENT,
                history=current.history + ((wall, f"trip {current.trips + 1} by {element}"),),
            )
            if updated.location is None and location is not None:
                updated = replace(updated, location=location, distance_m=location.get("distance_m"))
            return self._put(updated)
        self._seq += 1
        nodes = tuple(feeder)
        record = FaultRecord(
            id=f"F-{int(wall)}-{self._seq}",
            breaker=breaker,
            status=FaultStatus.TRIPPED if recloses else FaultStatus.PERMANENT,
            started=now,
            started_wall=wall,
            element=element,
            current_a=current_a,
            voltage_kv=voltage_kv,
            feeder=nodes,
            zone=nodes,
            location=location,
            distance_m=None if location is None else location.get("distance_m"),
            history=((wall, f"{element} trip of {breaker}, {current_a:.0f} A" + _where(location)),),
        )
        return self._put(record)

    def on_lockout(self, breaker: str, wall: float) -> FaultRecord | None:
        current = self.active_for(breaker)
        if current is None or current.status is FaultStatus.PERMANENT:
            return current
        return self._put(
            replace(
                current, status=FaultStatus.PERMANENT, history=current.history + ((wall, "lockout: permanent fault"),)
            )
        )

    def on_reset(self, breaker: str, wall: float) -> FaultRecord | None:
        """The relay's reclaim ran out after a reclose: the fault was transient."""
        current = self.active_for(breaker)
        if current is None or current.status is not FaultStatus.TRIPPED:
            return None
        return self._put(
            replace(
                current,
                status=FaultStatus.TRANSIENT,
                history=current.history + ((wall, "reclose held: transient fault"),),
            )
        )

    # ------------------------------------------------------------------ location, isolation, clearing

    def locate(
        self, record_id: str, zone: Iterable[str], method: str, wall: float, distance_m: float | None = None
    ) -> FaultRecord:
        rec = self.get(record_id)
        nodes = tuple(zone)
        return self._put(
            replace(
                rec,
                zone=nodes,
                located_by=method,
                distance_m=distance_m,
                history=rec.history + ((wall, f"located in {', '.join(nodes)} by {method}"),),
            )
        )

    def isolated(self, record_id: str, devices: Iterable[str], wall: float) -> FaultRecord:
        rec = self.get(record_id)
        devs = tuple(devices)
        return self._put(
            replace(
                rec, isolated_by=devs, history=rec.history + ((wall, f"isolated by {', '.join(devs) or 'nothing'}"),)
            )
        )

    def clear(self, record_id: str, who: str, reason: str, wall: float) -> FaultRecord:
        if not reason.strip():
            raise ValueError("clearing a fault needs a reason (what the crew found and did)")
        rec = self.get(record_id)
        if not rec.active:
            raise ValueError(f"fault {record_id} is already {rec.status.value}")
        return self._put(
            replace(
                rec,
                status=FaultStatus.CLEARED,
                cleared_by=who,
                cleared_reason=reason,
                history=rec.history + ((wall, f"cleared by {who}: {reason}"),),
            )
        )

    # ------------------------------------------------------------------ questions

    def get(self, record_id: str) -> FaultRecord:
        try:
            return self._records[record_id]
        except KeyError:
            raise UnknownFault(record_id) from None

    def active(self) -> list[FaultRecord]:
        return [r for r in self._records.values() if r.active]

    def active_for(self, breaker: str) -> FaultRecord | None:
        return next((r for r in self._records.values() if r.active and r.breaker == breaker), None)

    def records(self) -> list[FaultRecord]:
        return list(self._records.values())

    def faulted_nodes(self) -> dict[str, FaultRecord]:
        """Every node inside the zone of an active record → that record."""
        out: dict[str, FaultRecord] = {}
        for rec in self.active():
            for node in rec.zone:
                out[node] = rec
        return out

    def take_changed(self) -> list[FaultRecord]:
        changed, self.changed = self.changed, []
        return changed

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        return {"version": 1, "seq": self._seq, "records": [r.to_dict() for r in self._records.values()]}

    def restore(self, data: dict[str, Any], shift_s: float = 0.0) -> None:
        """Take back a snapshot; `shift_s` moves the monotonic start times to this boot's clock."""
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("fault snapshot: expected a dict with version 1")
        self._seq = int(data.get("seq", 0))
        for item in data.get("records", []):
            rec = FaultRecord.from_dict(item)
            self._records[rec.id] = replace(rec, started=rec.started + shift_s)

    def _put(self, record: FaultRecord) -> FaultRecord:
        self._records[record.id] = record
        self.changed.append(record)
        if len(self._records) > self._keep:
            for rid in [r.id for r in self._records.values() if not r.active][: len(self._records) - self._keep]:
                del self._records[rid]
        return record
