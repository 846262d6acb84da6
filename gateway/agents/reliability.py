"""IEEE 1366 reliability indices from smart-meter outage and restoration records.

Each customer interruption is one record (meter, start, end). An interruption restored within
`momentary_threshold_s` (IEEE 1366: 5 minutes; EN 50160 uses 3) is momentary and counts only
towards MAIFI; longer ones are sustained and count towards SAIFI, SAIDI, CAIDI and ASAI.
Interruptions are attributed to the period in which they began; one still open at `until`
counts with its duration so far.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MOMENTARY_THRESHOLD_S = 300.0


@dataclass(frozen=True, slots=True)
class ReliabilityIndices:
    since: float
    until: float
    customers_served: int
    sustained_interruptions: int
    momentary_interruptions: int
    customer_minutes_interrupted: float
    saifi: float
    """Sustained interruptions per customer served."""
    saidi_min: float
    """Minutes of sustained interruption per customer served."""
    caidi_min: float
    """Minutes per sustained customer interruption (SAIDI / SAIFI)."""
    maifi: float
    asai: float
    """Fraction of customer-hours the supply was available."""
    momentary_threshold_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def indices(
    starts_s: np.ndarray,
    ends_s: np.ndarray,
    customers_served: int,
    since: float,
    until: float,
    momentary_threshold_s: float = MOMENTARY_THRESHOLD_S,
) -> ReliabilityIndices:
    """Indices over [since, until) from per-customer interruption starts and ends (NaN end = ongoing)."""
    if until <= since:
        raise ValueError(f"reliability period must have until > since (found since={since}, until={until})")
    if customers_served <= 0:
        raise ValueError(f"customers_served must be positive (found {customers_served})")
    starts = np.asarray(starts_s, dtype=np.float64)
    ends = np.asarray(ends_s, dtype=np.float64)
    in_period = (starts >= since) & (starts < until)
    starts, ends = starts[in_period], ends[in_period]
    ends = np.where(np.isnan(ends), until, ends)
    durations = np.maximum(ends - starts, 0.0)
    sustained = durations > momentary_threshold_s
    n_sustained = int(sustained.sum())
    n_momentary = int((~sustained).sum())
    cmi = float(durations[sustained].sum() / 60.0)
    n_t = customers_served
    saifi = n_sustained / n_t
    saidi = cmi / n_t
    period_min = (until - since) / 60.0
    return ReliabilityIndices(
        since=since,
        until=until,
        customers_served=n_t,
        sustained_interruptions=n_sustained,
        momentary_interruptions=n_momentary,
        customer_minutes_interrupted=cmi,
        saifi=saifi,
        saidi_min=saidi,
        caidi_min=saidi / saifi if saifi else 0.0,
        maifi=n_momentary / n_t,
        asai=(n_t * period_min - cmi) / (n_t * period_min),
        momentary_threshold_s=momentary_threshold_s,
    )


class OutageLedger:
    """Append-only record of customer interruptions, column-wise (meter index, start, end)."""

    def __init__(self, customers: int) -> None:
        self.customers = customers
        self._meter: list[np.ndarray] = []
        self._start: list[np.ndarray] = []
        self._end: list[np.ndarray] = []
        self._last_start = np.full(customers, np.nan)

    def record(self, meters: np.ndarray, starts: np.ndarray, end: float | np.ndarray) -> None:
        """One interruption per meter, from its start to `end` (one time for all, or one each)."""
        meters = np.asarray(meters, dtype=np.int32)
        starts = np.asarray(starts, dtype=np.float64)
        self._meter.append(meters.copy())
        self._start.append(starts.copy())
        self._end.append(np.broadcast_to(np.asarray(end, dtype=np.float64), meters.shape).copy())
        self._last_start[meters] = starts

    def last_starts(self, meters: np.ndarray) -> np.ndarray:
        starts: np.ndarray = self._last_start[meters]
        return starts

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._meter:
            return np.empty(0, np.int32), np.empty(0), np.empty(0)
        if len(self._meter) > 1:
            self._meter = [np.concatenate(self._meter)]
            self._start = [np.concatenate(self._start)]
            self._end = [np.concatenate(self._end)]
        return self._meter[0], self._start[0], self._end[0]

    def __len__(self) -> int:
        return sum(m.size for m in self._meter)

    def indices(
        self,
        since: float,
        until: float,
        ongoing_starts: np.ndarray | None = None,
        momentary_threshold_s: float = MOMENTARY_THRESHOLD_S,
        ongoing_ends: np.ndarray | None = None,
    ) -> ReliabilityIndices:
        """Indices over the records, plus the interruptions not yet recorded: `ongoing_starts` per
        meter (NaN: none), each still open or, where `ongoing_ends` has a time, ended then."""
        _, starts, ends = self.columns()
        if ongoing_starts is not None:
            has = ~np.isnan(ongoing_starts)
            open_starts = ongoing_starts[has]
            open_ends = ongoing_ends[has] if ongoing_ends is not None else np.full(open_starts.size, np.nan)
            starts = np.concatenate([starts, open_starts])
            ends = np.concatenate([ends, open_ends])
        return indices(starts, ends, self.customers, since, until, momentary_threshold_s)

    def shift_times(self, delta_s: float) -> None:
        _, starts, ends = self.columns()
        starts += delta_s
        ends += delta_s
        self._last_start += delta_s

    def snapshot(self) -> dict[str, Any]:
        meters, starts, ends = self.columns()
        return {"meter": meters.tobytes(), "start": starts.tobytes(), "end": ends.tobytes()}

    def restore(self, data: dict[str, Any]) -> None:
        meters = np.frombuffer(data["meter"], dtype=np.int32).copy()
        self._meter = [meters]
        self._start = [np.frombuffer(data["start"], dtype=np.float64).copy()]
        self._end = [np.frombuffer(data["end"], dtype=np.float64).copy()]
        valid = meters < self.customers
        self._last_start[meters[valid]] = self._start[0][valid]
