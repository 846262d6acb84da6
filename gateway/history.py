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

from gateway.contract.points import Point, PointBlock, PointUpdate, Validity

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


# --------------------------------------------------------------------------- import

IMPORT_COLUMNS = ("point_id", "bucket_start", "interval_s", "mean", "min", "max", "last", "n")
"""CSV columns of a history import; `point_id`, `bucket_start`, `interval_s` and `mean` are required."""
MAX_IMPORT_ROWS = 2_000_000


class HistoryImportError(ValueError):
    """A history file that cannot be imported: names the line, the column and what was expected."""


def parse_import(text: str, source: str, known_points: set[str] | frozenset[str]) -> list[HistoryRow]:
    """Rows of a history CSV (another historian's export, a monitor's log) to write into the store.

    The first line names the columns (any order, `IMPORT_COLUMNS`); every row must name a point
    of the site, a bucket start in wall seconds, an interval of 1 s to 1 day and finite numbers.
    Nothing is imported when any line is wrong: the first problems are reported together.
    """
    import csv
    import io

    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise HistoryImportError(
            f"{source}: empty file; expected a header line with {', '.join(IMPORT_COLUMNS)}"
        ) from None
    unknown = [h for h in header if h not in IMPORT_COLUMNS]
    missing = [h for h in IMPORT_COLUMNS[:4] if h not in header]
    if unknown or missing:
        raise HistoryImportError(
            f"{source}: line 1: "
            + "; ".join(
                ([f"unknown column(s) {', '.join(unknown)}"] if unknown else [])
                + ([f"missing column(s) {', '.join(missing)}"] if missing else [])
            )
            + f" (expected {', '.join(IMPORT_COLUMNS)})"
        )
    col = {h: k for k, h in enumerate(header)}
    rows: list[HistoryRow] = []
    problems: list[str] = []
    for line_no, cells in enumerate(reader, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(rows) >= MAX_IMPORT_ROWS:
            problems.append(f"line {line_no}: more than {MAX_IMPORT_ROWS} rows; split the file")
            break
        if len(cells) != len(header):
            problems.append(f"line {line_no}: {len(cells)} values for {len(header)} columns")
            continue

        def num(
            name: str, default: float | None = None, *, line: int = line_no, row: list[str] = cells
        ) -> float | None:
            if name not in col:
                return default
            raw = row[col[name]].strip()
            if raw == "" and default is not None:
                return default
            try:
                value = float(raw)
            except ValueError:
                problems.append(f"line {line}: {name}: expected a number, found {raw[:40]!r}")
                return None
            if not math.isfinite(value):
                problems.append(f"line {line}: {name}: expected a finite number, found {raw[:40]!r}")
                return None
            return value

        point = cells[col["point_id"]].strip()
        if point not in known_points:
            problems.append(f"line {line_no}: point_id: {point[:60]!r} is not a point of this site")
            continue
        start, interval, mean = num("bucket_start"), num("interval_s"), num("mean")
        if start is None or interval is None or mean is None:
            continue
        if not 1.0 <= interval <= 86400.0:
            problems.append(f"line {line_no}: interval_s: expected 1..86400 s, found {interval:g}")
            continue
        if start < 0:
            problems.append(f"line {line_no}: bucket_start: expected wall seconds ≥ 0, found {start:g}")
            continue
        lo, hi, last, n = num("min", mean), num("max", mean), num("last", mean), num("n", 1.0)
        if lo is None or hi is None or last is None or n is None:
            continue
        if n < 1 or n != int(n):
            problems.append(f"line {line_no}: n: expected a whole number ≥ 1, found {n:g}")
            continue
        rows.append(HistoryRow(point, start, interval, lo, hi, mean, last, int(n), 1.0))
        if len(problems) >= 10:
            break
    if problems:
        raise HistoryImportError(f"{source}: nothing imported; " + "; ".join(problems[:10]))
    return rows
