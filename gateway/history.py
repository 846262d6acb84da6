"""Downsampled point history: one bucket per point and interval, for trends and forecasts.

Sans-IO: the caller passes the wall time of every sample and of every `take_closed`. Buckets are
aligned to wall-clock multiples of the interval (a 60 s bucket starts on the minute), so rows of
different points and of different daemon runs line up.

The mean is the plain mean of the good samples, not time-weighted: a poll-driven source samples
at a steady period, and a plain mean costs one addition per update. Samples whose quality is not
good count in `n` and against `good_fraction` but do not enter min, max, mean or last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.points import Point, PointBlock, PointUpdate, Validity

DEFAULT_INTERVAL_S = 60.0

_GOOD = Validity.GOOD


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One closed bucket; min/max/mean/last are None when no sample in it was good."""

    point_id: str
    bucket_start: float
    interval_s: float
    min: float | None
    max: float | None
    mean: float | None
    last: float | None
    n: int
    good_fraction: float


class _Bucket:
    """The open bucket of one point, updated in place (no allocation per sample)."""

    __slots__ = ("start", "end", "lo", "hi", "total", "last", "n", "n_good")

    def __init__(self, start: float, interval_s: float) -> None:
        self.start = start
        self.end = start + interval_s
        self.lo = math.inf
        self.hi = -math.inf
        self.total = 0.0
        self.last = 0.0
        self.n = 0
        self.n_good = 0

    def reset(self, start: float, interval_s: float) -> None:
        self.start = start
        self.end = start + interval_s
        self.lo = math.inf
        self.hi = -math.inf
        self.total = 0.0
        self.n = 0
        self.n_good = 0

    def row(self, point_id: str, interval_s: float) -> HistoryRow:
        good = self.n_good
        return HistoryRow(
            point_id=point_id,
            bucket_start=self.start,
            interval_s=interval_s,
            min=self.lo if good else None,
            max=self.hi if good else None,
            mean=self.total / good if good else None,
            last=self.last if good else None,
            n=self.n,
            good_fraction=good / self.n if self.n else 0.0,
        )


class HistoryAggregator:
    """Keeps one open bucket per point; `take_closed` hands over the buckets that have ended."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self._open: dict[str, _Bucket] = {}
        self._closed: list[HistoryRow] = []
        self.samples = 0

    def bucket_start(self, wall_time: float) -> float:
        return wall_time - wall_time % self.interval_s

    def add(self, point_id: str, value: float | int | bool | None, good: bool, wall_time: float) -> None:
        """One sample; binary values count as 0/1, a None value as a sample that is not good."""
        self.samples += 1
        bucket = self._open.get(point_id)
        if bucket is None:
            bucket = self._open[point_id] = _Bucket(self.bucket_start(wall_time), self.interval_s)
        elif wall_time >= bucket.end or wall_time < bucket.start:
            if bucket.n:
                self._closed.append(bucket.row(point_id, self.interval_s))
            bucket.reset(self.bucket_start(wall_time), self.interval_s)
        bucket.n += 1
        if good and value is not None:
            v = float(value)
            if v != v:  # NaN: not a usable value
                return
            bucket.n_good += 1
            bucket.total += v
            bucket.last = v
            if v < bucket.lo:
                bucket.lo = v
            if v > bucket.hi:
                bucket.hi = v

    def on_point(self, point: Point, update: PointUpdate) -> None:
        """Process-image listener: every applied update is one sample at its receive time."""
        self.add(update.point_id, update.value, update.quality.validity is _GOOD, update.receive_time)

    def on_block(self, points: Sequence[Point], block: PointBlock) -> None:
        """Block listener: every value of the block is one sample at the block's receive time."""
        add, wall = self.add, block.receive_time
        for point_id, value, quality in zip(block.point_ids, block.values, block.qualities, strict=True):
            add(point_id, value, quality.validity is _GOOD, wall)

    def take_closed(self, now: float) -> list[HistoryRow]:
        """Buckets that ended by `now` (wall s), oldest first; each is handed over once."""
        rows = self._closed
        self._closed = []
        interval = self.interval_s
        for point_id, bucket in self._open.items():
            if bucket.n and bucket.end <= now:
                rows.append(bucket.row(point_id, interval))
                bucket.reset(bucket.start, interval)
        rows.sort(key=lambda r: r.bucket_start)
        return rows

    def take_all(self) -> list[HistoryRow]:
        """Every bucket with samples, the open ones too (partial); for a clean stop."""
        rows = self._closed
        self._closed = []
        for point_id, bucket in self._open.items():
            if bucket.n:
                rows.append(bucket.row(point_id, self.interval_s))
                bucket.reset(bucket.start, self.interval_s)
        rows.sort(key=lambda r: r.bucket_start)
        return rows

    def next_close_at(self) -> float:
        """Wall time at which the bucket open now ends (when to call `take_closed` next)."""
        return math.inf if not self._open else min(b.end for b in self._open.values())

    def open_count(self) -> int:
        return len(self._open)
