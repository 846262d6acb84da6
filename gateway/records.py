"""Disturbance recording: a pre-fault ring buffer per protected bay, a record per trip. Sans-IO.

Each protected breaker's bay has analogue channels (its currents, voltage, frequency, powers,
and phasor angles where its IED gives them) and digital channels (each element's pickup, trip,
breaker closed, reclose, lockout). Every sample that reaches the process image for one of the
bay's points adds a row holding the latest value of every channel (samples decoded from one
poll or one report share their receive time and make one row), so the record runs at the rate
the samples arrive; protection decisions add a row at their own time. Rows older than the
pre-fault window are dropped.

A trip starts a record: it takes the buffered pre-fault rows and goes on for `post_fault_s`
after the last trip, reclose, lockout, pickup or dropout, and while any element is picked up (a
disturbance that lasts), `max_record_s` at most, then `poll()` hands it over
(the daemon writes the files). At the first trip the fault is located from the sample the trip
was decided on and the last one before the first pickup (`gateway.fault_location`).

Nothing here reads a clock: every call carries the monotonic and wall time it happens at.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.fault_location import BaySample, FaultEstimate, LineImpedance, locate

ANALOG_CHANNELS: tuple[tuple[str, str, str], ...] = (
    ("ia", "A", "A"),
    ("ib", "A", "B"),
    ("ic", "A", "C"),
    ("in", "A", "N"),
    ("va_kv", "kV", "A"),
    ("vb_kv", "kV", "B"),
    ("vc_kv", "kV", "C"),
    ("voltage_kv", "kV", ""),
    ("ia_deg", "deg", "A"),
    ("ib_deg", "deg", "B"),
    ("ic_deg", "deg", "C"),
    ("va_deg", "deg", "A"),
    ("vb_deg", "deg", "B"),
    ("vc_deg", "deg", "C"),
    ("frequency_hz", "Hz", ""),
    ("active_power_kw", "kW", ""),
    ("reactive_power_kvar", "kvar", ""),
)
"""(name, unit, phase) of the analogue channels a bay may have, in record order."""
MAX_ROWS = 100_000
"""Rows in one record at most (a very fast report rate over `max_record_s`)."""


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    pre_fault_s: float = 2.0
    post_fault_s: float = 3.0
    max_record_s: float = 30.0


@dataclass(frozen=True, slots=True)
class BayChannels:
    """Where a bay's channels come from: channel name → point id, and its digital names."""

    breaker: str
    analog: dict[str, str]
    """Channel name (ANALOG_CHANNELS) → point id."""
    closed_point: str | None
    elements: tuple[str, ...]
    """Configured protection elements (50P, 51P, ...): one pickup channel each."""
    line: LineImpedance | None = None
    sections: tuple[tuple[str, float, float], ...] = ()
    """(section id, from m, to m) along the protected line, to name the fault's section."""

    @property
    def digital_names(self) -> list[str]:
        return [f"{e} pickup" for e in self.elements] + ["trip", "breaker closed", "reclose", "lockout"]


@dataclass
class Row:
    monotonic: float
    wall: float
    analog: list[float | None]
    digital: list[int]
    source: str
    """'sample' (values arrived) or the decision that made the row ('trip 51P/A', ...)."""


@dataclass
class DisturbanceRecord:
    """A finished record, ready to be written (gateway.comtrade) and announced."""

    record_id: str
    breaker: str
    trigger_wall: float
    trigger_monotonic: float
    channels: BayChannels
    rows: list[Row]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    estimate: FaultEstimate | None = None
    truncated: bool = False

    @property
    def analog_names(self) -> list[str]:
        return [name for name, _, _ in ANALOG_CHANNELS if name in self.channels.analog]

    def summary(self) -> dict[str, Any]:
        first_trip = next((d for d in self.decisions if d["kind"] == "trip"), None)
        return {
            "record_id": self.record_id,
            "breaker": self.breaker,
            "trigger_time": self.trigger_wall,
            "start_time": self.rows[0].wall if self.rows else self.trigger_wall,
            "end_time": self.rows[-1].wall if self.rows else self.trigger_wall,
            "samples": len(self.rows),
            "element": first_trip["element"] if first_trip else None,
            "phase": first_trip["phase"] if first_trip else None,
            "trips": sum(1 for d in self.decisions if d["kind"] == "trip"),
            "lockout": any(d["kind"] == "lockout" for d in self.decisions),
            "fault_location": None if self.estimate is None else self.estimate.to_dict(),
            "truncated": self.truncated,
        }


class BayRecorder:
    """The ring buffer and the record in progress of one protected bay."""

    def __init__(self, channels: BayChannels, settings: RecorderSettings, new_id: Callable[[str, float], str]) -> None:
        self.channels = channels
        self.settings = settings
        self._new_id = new_id
        self._names = [name for name, _, _ in ANALOG_CHANNELS if name in channels.analog]
        self._index = {channels.analog[n]: k for k, n in enumerate(self._names)}
        self._latest: list[float | None] = [None] * len(self._names)
        self._digital_names = channels.digital_names
        self._digital = [0] * len(self._digital_names)
        self._pickup_index = {e: k for k, e in enumerate(channels.elements)}
        self._ring: deque[Row] = deque(maxlen=MAX_ROWS)
        self._recent: deque[dict[str, Any]] = deque(maxlen=256)
        """Decisions of the pre-fault window (the pickups before a trip belong in its record)."""
        self._active: DisturbanceRecord | None = None
        self._until = math.inf
        self._pickup_since: float | None = None
        """Monotonic time of the first pickup of the disturbance now under way."""
        self.last_estimate: FaultEstimate | None = None
        self.finished: list[DisturbanceRecord] = []

    @property
    def points(self) -> set[str]:
        out = set(self._index)
        if self.channels.closed_point:
            out.add(self.channels.closed_point)
        return out

    # ------------------------------------------------------------------ inputs

    def on_point(self, point_id: str, value: Any, good: bool, monotonic: float, wall: float) -> None:
        if point_id == self.channels.closed_point:
            self._set_digital("breaker closed", 1 if (good and bool(value)) else 0)
        else:
            k = self._index.get(point_id)
            if k is None:
                return
            number = float(value) if good and isinstance(value, int | float) and not isinstance(value, bool) else None
            self._latest[k] = number if number is None or math.isfinite(number) else None
        self._row(monotonic, wall, "sample")

    def on_decision(
        self, kind: str, element: str, phase: str, current_a: float | None, monotonic: float, wall: float
    ) -> None:
        """A protection event of this bay (pickup, dropout, trip, reclose, lockout, reset)."""
        decision = {
            "kind": kind,
            "element": element,
            "phase": phase,
            "current_a": current_a,
            "monotonic": monotonic,
            "time": wall,
        }
        if kind in ("pickup", "dropout") and element in self._pickup_index:
            name = f"{element} pickup"
            if kind == "pickup":
                if not any(self._digital[: len(self._pickup_index)]) and self._pickup_since is None:
                    self._pickup_since = monotonic
                self._set_digital(name, 1)
            else:
                self._set_digital(name, 0)
        elif kind == "trip":
            self._set_digital("trip", 1)
        elif kind == "reclose":
            self._set_digital("trip", 0)
            self._set_digital("reclose", 1)
        elif kind == "lockout":
            self._set_digital("lockout", 1)
        elif kind == "reset":
            self._set_digital("lockout", 0)
            self._set_digital("reclose", 0)
            self._set_digital("trip", 0)
        self._row(monotonic, wall, f"{kind} {element}{'/' + phase if phase else ''}")
        if kind == "trip":
            self._triggered(monotonic, wall)
        if self._active is None:
            self._recent.append(decision)
        if self._active is not None and kind in ("trip", "reclose", "lockout", "pickup", "dropout"):
            self._active.decisions.append(decision)
            self._until = min(
                monotonic + self.settings.post_fault_s, self._active.trigger_monotonic + self.settings.max_record_s
            )
        elif self._active is not None:
            self._active.decisions.append(decision)
        if kind in ("dropout", "reset") and not any(self._digital[: len(self._pickup_index)]):
            self._pickup_since = None

    def poll(self, monotonic: float) -> list[DisturbanceRecord]:
        """Records whose post-fault window has ended (and any finished before)."""
        if (
            self._active is not None
            and monotonic >= self._until
            and (not self._picked_up() or monotonic >= self._active.trigger_monotonic + self.settings.max_record_s)
        ):
            # decisions reach the recorder just after the sample they were taken on: time order,
            # and one clock (the trigger's wall time plus monotonic differences) for every row
            active = self._active
            rows = sorted((r for r in active.rows if r.monotonic <= self._until), key=lambda r: r.monotonic)
            for r in rows:
                r.wall = active.trigger_wall + (r.monotonic - active.trigger_monotonic)
            active.rows = rows
            self.finished.append(self._active)
            self._active = None
            self._until = math.inf
        done, self.finished = self.finished, []
        return done

    def next_deadline(self) -> float | None:
        if self._active is None:
            return None
        if self._picked_up():  # the disturbance lasts: until the dropout, or the maximum
            return max(self._until, self._active.trigger_monotonic + self.settings.max_record_s)
        return self._until

    def _picked_up(self) -> bool:
        return any(self._digital[: len(self._pickup_index)])

    # ------------------------------------------------------------------ internals

    def _set_digital(self, name: str, value: int) -> None:
        self._digital[self._digital_names.index(name)] = value

    def _row(self, monotonic: float, wall: float, source: str) -> None:
        ring = self._ring
        if ring and ring[-1].monotonic == monotonic and ring[-1].source == source == "sample":
            ring[-1].analog = list(self._latest)
            ring[-1].digital = list(self._digital)
        else:
            ring.append(Row(monotonic, wall, list(self._latest), list(self._digital), source))
            if self._active is not None:
                if len(self._active.rows) < MAX_ROWS:
                    self._active.rows.append(ring[-1])
                else:
                    self._active.truncated = True
        horizon = monotonic - self.settings.pre_fault_s
        while len(ring) > 1 and ring[0].monotonic < horizon:
            ring.popleft()  # a record in progress holds its own rows

    def _triggered(self, monotonic: float, wall: float) -> None:
        if self._active is not None:
            return
        start = monotonic - self.settings.pre_fault_s
        rows = [r for r in self._ring if r.monotonic >= start]
        record = DisturbanceRecord(
            record_id=self._new_id(self.channels.breaker, wall),
            breaker=self.channels.breaker,
            trigger_wall=wall,
            trigger_monotonic=monotonic,
            channels=self.channels,
            rows=rows,
        )
        record.decisions = [d for d in self._recent if d["monotonic"] >= start]
        self._recent.clear()
        record.estimate = self._locate(monotonic)
        self.last_estimate = record.estimate
        self._active = record

    def _locate(self, trip_monotonic: float) -> FaultEstimate | None:
        line = self.channels.line
        if line is None:
            return None
        samples = [r for r in self._ring if r.source == "sample"]
        fault_rows = [r for r in samples if r.monotonic <= trip_monotonic]
        if not fault_rows:
            return None
        onset = self._pickup_since if self._pickup_since is not None else trip_monotonic
        before = [r for r in samples if r.monotonic < onset]
        fault = self._bay_sample(fault_rows[-1])
        prefault = self._bay_sample(before[-1]) if before else None
        estimate = locate(line, fault, prefault)
        if estimate is None:
            return None
        section = next((sid for sid, lo, hi in self.channels.sections if lo <= estimate.distance_m <= hi), None)
        if section is not None:
            from dataclasses import replace

            estimate = replace(estimate, section=section)
        return estimate

    def _bay_sample(self, row: Row) -> BaySample:
        return BaySample.from_values(row.monotonic, dict(zip(self._names, row.analog, strict=True)))


def record_id(breaker: str, wall: float, seq: int) -> str:
    """'CB-045-20261202T074244-3': sortable, unique within a gateway, safe as a file name."""
    import time as _time

    stamp = _time.strftime("%Y%m%dT%H%M%S", _time.gmtime(wall))
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in breaker)
    return f"{safe}-{stamp}-{seq}"


def header_text(record: DisturbanceRecord, settings: dict[str, Any], station: str, sampling: Iterable[str]) -> str:
    """The .hdr: what was recorded, how it was sampled, the protection settings and decisions,
    and the fault location."""
    import json

    lines = [
        f"Stima disturbance record {record.record_id}",
        f"station: {station}",
        f"bay: {record.breaker}",
        f"trigger: first protection trip at {_iso(record.trigger_wall)}",
        "",
        "sampling: as the samples reached the gateway (no fixed rate; every sample time-stamped,",
        "COMTRADE nrates = 0): " + "; ".join(sampling),
        "time stamps: the gateway's clock at reception, UTC; decisions at the time of the sample decided on",
        "",
        "decisions:",
    ]
    for d in record.decisions:
        current = f", {d['current_a']:.1f} A" if isinstance(d.get("current_a"), int | float) else ""
        lines.append(
            f"  {_iso(d['time'])}  {d['kind']} {d['element']}{'/' + d['phase'] if d['phase'] else ''}{current}"
        )
    lines += ["", "fault location:"]
    if record.estimate is None:
        lines.append(
            "  none (the bay's measurements do not allow an estimate: phasors, or balanced currents "
            "with active and reactive power, are needed)"
        )
    else:
        e = record.estimate
        lines.append(
            f"  {e.distance_m:.0f} m from {record.breaker} ({e.distance_m / 1000:.3f} km)"
            + (f", section {e.section}" if e.section else "")
            + f"; method {e.method}, loop {e.loop}, fault type {e.fault_type}, loop impedance "
            f"R {e.loop_impedance_ohm[0]:.4f} ohm, X {e.loop_impedance_ohm[1]:.4f} ohm"
            + ("; BEYOND THE LINE'S END" if e.beyond_line else "")
        )
    lines += ["", "protection settings of the bay (site file):", json.dumps(settings, indent=2, default=str)]
    if record.truncated:
        lines += ["", f"TRUNCATED at {MAX_ROWS} samples"]
    return "\n".join(lines) + "\n"


def _iso(wall: float) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(wall)) + f".{int((wall % 1) * 1000):03d}Z"
