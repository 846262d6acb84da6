"""Report-by-exception telemetry for the SCADA uplink (sans-IO).

SCADA should hear about every change that matters and nothing else: an analog point is reported
when it has moved by at least its deadband (engineering units, from the site file) since the
value last reported; a binary or counter point on any change; any point whose quality changes,
always. Reported changes are gathered and leave as one `telemetry` message per flush (at most
`max_batch` samples each). Every `integrity_period_s` an `integrity` report carries the latest
value of every point, so a host that missed something converges without asking.

The caller feeds `on_change(point, now)` from the process image and calls `flush(now, wall)` on
its batch timer; `flush` returns `(topic_suffix, payload)` pairs for the uplink. No I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import SiteConfig
from gateway.contract.points import NOT_YET_RECEIVED, Point, PointKind, Quality, QualityReason

TELEMETRY = "telemetry"
INTEGRITY = "integrity"
COLUMNS = "columns"
"""`format` of a columnar telemetry message (docs/mqtt.md)."""

Value = float | int | bool | None


@dataclass(frozen=True, slots=True)
class PointSpec:
    """What report-by-exception needs to know about one point."""

    point_id: str
    kind: PointKind = PointKind.ANALOG
    deadband: float = 0.0
    """Smallest change reported, in the point's engineering unit (analog points only)."""
    unit: str = ""

    def __post_init__(self) -> None:
        if not (self.deadband >= 0.0 and math.isfinite(self.deadband)):
            raise ValueError(f"point {self.point_id!r}: deadband must be a finite number >= 0, found {self.deadband!r}")


def exceeds(kind: PointKind, deadband: float, last: Value, value: Value) -> bool:
    """True when `value` differs enough from the value last reported to be reported again.

    Analog: a move of at least `deadband` (any move when the deadband is 0). Binary, counter, and
    any appearance or disappearance of a value (None) or a NaN: any change.
    """
    if value is None or last is None:
        return value is not last
    if kind is not PointKind.ANALOG or isinstance(value, bool) or isinstance(last, bool):
        return bool(value != last)
    new, old = float(value), float(last)
    if math.isnan(new) or math.isnan(old):
        return math.isnan(new) != math.isnan(old)
    if new == old:
        return False
    return abs(new - old) >= deadband


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000.0)


def sample(point_id: str, value: Value, quality: Quality, time_s: float | None) -> dict[str, Any]:
    """One metric sample as it travels: id, value, validity, reason (when not good), time in ms."""
    out: dict[str, Any] = {"id": point_id, "v": value, "q": quality.validity.value, "t": _ms(time_s)}
    if quality.reason is not QualityReason.NONE:
        out["r"] = quality.reason.value
    return out


class _State:
    __slots__ = ("spec", "analog", "deadband", "reported", "last_value", "last_quality", "q", "r", "point")

    def __init__(self, spec: PointSpec) -> None:
        self.spec = spec
        self.analog = spec.kind is PointKind.ANALOG
        self.deadband = spec.deadband
        self.reported = False
        self.last_value: Value = None
        self.last_quality: Quality = NOT_YET_RECEIVED
        self.q = ""
        """Wire form of `last_quality`: validity, and reason unless none (kept to spare the enums)."""
        self.r: str | None = None
        self.point: Point | None = None


class Telemetry:
    """Report-by-exception with deadbands, batching, and a periodic integrity report."""

    def __init__(
        self,
        specs: Iterable[PointSpec],
        *,
        max_batch: int = 500,
        integrity_period_s: float = 60.0,
        columns: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, found {max_batch}")
        if not integrity_period_s > 0:
            raise ValueError(f"integrity_period_s must be > 0, found {integrity_period_s}")
        self.max_batch = max_batch
        self.integrity_period_s = integrity_period_s
        self._states: dict[str, _State] = {}
        for spec in specs:
            if spec.point_id in self._states:
                raise ValueError(f"point {spec.point_id!r} is listed twice")
            self._states[spec.point_id] = _State(spec)
        self._pending: list[dict[str, Any]] = []
        self.columns = columns
        """Telemetry messages in the columnar form: point indices of the birth, values, times."""
        self._index: dict[str, int] = {}
        self._col_i: list[int] = []
        self._col_v: list[Value] = []
        self._col_t: list[int | None] = []
        self._col_bad: list[tuple[int, str, str | None]] = []
        """(position in the columns, validity, reason) of each pending sample that is not good."""
        self._first_pending_at: float | None = None
        self._next_integrity: float | None = None
        self._integrity_requested = False
        self.changes_seen = 0
        self.changes_reported = 0
        self.integrity_reports = 0

    @classmethod
    def from_site(cls, site: SiteConfig) -> Telemetry:
        """Every IED point of the site with its kind and deadband; batching from `[uplink]`."""
        specs = []
        for ied in site.ieds:
            for p in ied.points:
                specs.append(PointSpec(p.id, PointKind(p.point_kind.value), p.deadband, p.unit))
        return cls(
            specs,
            max_batch=site.uplink.max_batch,
            integrity_period_s=site.uplink.integrity_period_s,
            columns=site.uplink.telemetry_format == "columns",
        )

    def set_index(self, index: dict[str, int]) -> None:
        """Each point's index in the birth's metric table (columnar messages name points by it;
        a point without one travels in sample form)."""
        self._index = dict(index)

    # ------------------------------------------------------------------ input

    @property
    def pending(self) -> int:
        """Samples waiting for the next flush."""
        return len(self._pending) + len(self._col_i)

    @property
    def point_ids(self) -> list[str]:
        return list(self._states)

    def on_change(self, point: Point, now: float) -> bool:
        """Take the point's new state; returns True when a full batch is waiting to be flushed.

        Points not in the site file (derived or AMI points) are reported with no deadband.
        """
        return self.on_points((point,), now)

    def on_points(self, points: Sequence[Point], now: float) -> bool:
        """`on_change` for several points at once (a block read): the same decisions, made in
        one loop, since this runs for every value the gateway receives."""
        states = self._states
        pending = self._pending
        was_empty = not pending and not self._col_i
        reported = 0
        index = self._index if self.columns else None
        col_i, col_v, col_t, col_bad = self._col_i, self._col_v, self._col_t, self._col_bad
        last_t: float | None = None
        last_ms: int | None = None
        for point in points:
            state = states.get(point.point_id)
            if state is None:
                state = states[point.point_id] = _State(PointSpec(point.point_id, point.kind, 0.0, point.unit))
            state.point = point
            value = point.value
            quality = point.quality
            if state.reported and (quality is state.last_quality or quality == state.last_quality):
                last = state.last_value
                kind = type(value)
                if state.analog and (kind is float or kind is int) and type(last) is kind:
                    delta = value - last  # type: ignore[operator]
                    if delta != delta:  # a NaN on either side
                        if not exceeds(PointKind.ANALOG, state.deadband, last, value):
                            continue
                    elif delta == 0 or (delta if delta >= 0 else -delta) < state.deadband:
                        continue
                elif not exceeds(state.spec.kind, state.deadband, last, value):
                    continue
            elif quality is not state.last_quality or not state.q:
                state.q = quality.validity.value
                state.r = None if quality.reason is QualityReason.NONE else quality.reason.value
            state.reported = True
            state.last_value = value
            state.last_quality = quality
            reported += 1
            t = point.source_time if point.source_time is not None else point.receive_time
            if t is not last_t:  # a block shares one receive time: one conversion
                last_t, last_ms = t, None if t is None else round(t * 1000.0)
            n = None if index is None else index.get(point.point_id)
            if n is not None:
                if state.q != "good" or state.r is not None:
                    col_bad.append((len(col_i), state.q, state.r))
                col_i.append(n)
                col_v.append(value)
                col_t.append(last_ms)
                continue
            out = {"id": point.point_id, "v": value, "q": state.q, "t": last_ms}
            if state.r is not None:
                out["r"] = state.r
            pending.append(out)
        self.changes_seen += len(points)
        self.changes_reported += reported
        waiting = len(pending) + len(col_i)
        if was_empty and waiting:
            self._first_pending_at = now
        return waiting >= self.max_batch

    def request_integrity(self) -> None:
        """Send an integrity report at the next flush (after a birth, or a host's request)."""
        self._integrity_requested = True

    def next_flush_at(self, window_s: float) -> float | None:
        """When `flush` next has work: the first pending change + the batch window, or the next
        integrity report (None before the first flush). Lets a caller sleep instead of polling."""
        if self._integrity_requested or self.pending >= self.max_batch:
            return float("-inf")
        candidates = [] if self._next_integrity is None else [self._next_integrity]
        if self.pending and self._first_pending_at is not None:
            candidates.append(self._first_pending_at + window_s)
        return min(candidates) if candidates else None

    def integrity_due(self, now: float) -> bool:
        return self._integrity_requested or (self._next_integrity is not None and now >= self._next_integrity)

    # ------------------------------------------------------------------ output

    def flush(self, now: float, wall: float) -> list[tuple[str, dict[str, Any]]]:
        """Messages to publish now: pending changes in batches, then an integrity report if due."""
        out: list[tuple[str, dict[str, Any]]] = []
        timestamp = _ms(wall)
        if self._col_i:
            out.extend(self._columnar(timestamp))
            self._first_pending_at = None
        if self._pending:
            pending, self._pending = self._pending, []
            self._first_pending_at = None
            step = self.max_batch
            for start in range(0, len(pending), step):
                out.append((TELEMETRY, {"timestamp": timestamp, "metrics": pending[start : start + step]}))
        if self._next_integrity is None:
            self._next_integrity = now + self.integrity_period_s
        if self.integrity_due(now):
            out.extend(self._integrity(timestamp))
            self._integrity_requested = False
            self._next_integrity = now + self.integrity_period_s
        return out

    def _columnar(self, timestamp: int | None) -> list[tuple[str, dict[str, Any]]]:
        """Pending columns as messages of at most `max_batch` samples: `i` point indices of the
        birth, `v` values, times as `t0` plus `dt` offsets in ms, `bad` for samples not good."""
        col_i, col_v, col_t, col_bad = self._col_i, self._col_v, self._col_t, self._col_bad
        self._col_i, self._col_v, self._col_t, self._col_bad = [], [], [], []
        out = []
        step = self.max_batch
        bad_at = 0
        for start in range(0, len(col_i), step):
            end = min(start + step, len(col_i))
            times = col_t[start:end]
            t0 = next((t for t in times if t is not None), None)
            message: dict[str, Any] = {
                "timestamp": timestamp,
                "format": COLUMNS,
                "i": col_i[start:end],
                "v": col_v[start:end],
                "t0": t0,
                "dt": [None if t is None or t0 is None else t - t0 for t in times],
            }
            bad = []
            while bad_at < len(col_bad) and col_bad[bad_at][0] < end:
                pos, q, r = col_bad[bad_at]
                bad.append([pos - start, q, r])
                bad_at += 1
            if bad:
                message["bad"] = bad
            out.append((TELEMETRY, message))
        return out

    def integrity(self, wall: float) -> list[tuple[str, dict[str, Any]]]:
        """An integrity report now, regardless of the period."""
        return self._integrity(_ms(wall))

    def _integrity(self, timestamp: int | None) -> list[tuple[str, dict[str, Any]]]:
        metrics: list[dict[str, Any]] = []
        for point_id, state in self._states.items():
            point = state.point
            if point is None:
                metrics.append(sample(point_id, None, NOT_YET_RECEIVED, None))
                continue
            metrics.append(
                sample(
                    point_id,
                    point.value,
                    point.quality,
                    point.source_time if point.source_time is not None else point.receive_time,
                )
            )
            # the host now knows the latest value: later deadbands count from it
            state.reported = True
            state.last_value = point.value
            if point.quality is not state.last_quality:
                state.last_quality = point.quality
                state.q = point.quality.validity.value
                state.r = None if point.quality.reason is QualityReason.NONE else point.quality.reason.value
        self.integrity_reports += 1
        step = self.max_batch
        parts = max(1, math.ceil(len(metrics) / step))
        return [
            (
                INTEGRITY,
                {"timestamp": timestamp, "part": n + 1, "parts": parts, "metrics": metrics[n * step : (n + 1) * step]},
            )
            for n in range(parts)
        ]
