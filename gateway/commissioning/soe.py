"""Sequence-of-events export: the event log as a time-ordered list with the best time each event
has, in CSV or JSON. Pure functions over the events the daemon returns; `stima events export`
pages them out of the daemon.

Which time: a status change an IED time-stamped (IEC 61850 `t`) carries its source time; a
protection decision carries the time of the sample it was decided on; every other event (and
a status change from a protocol without time stamps, Modbus) has the time the gateway received
or logged it, and says so in `time_source`. Times are UTC, to the millisecond.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

COLUMNS = ("time", "time_utc", "time_source", "source", "kind", "value", "detail", "seq")
TIME_SOURCES = ("ied", "decision", "receive")


@dataclass(frozen=True, slots=True)
class SoeRow:
    time: float
    """POSIX seconds, the best time the event has."""
    time_source: str
    """'ied' (the device's time stamp), 'decision' (protection, the sample decided on) or 'receive'."""
    source: str
    kind: str
    value: str
    detail: str
    seq: int

    @property
    def time_utc(self) -> str:
        return iso_ms(self.time)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "time_utc": self.time_utc}


def iso_ms(t: float) -> str:
    """2026-12-02T07:42:44.123Z"""
    ms = round(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


_SKIP = {
    "seq",
    "time",
    "source",
    "kind",
    "monotonic",
    "source_time",
    "receive_time",
    "decision_time",
    "value",
    "previous",
    "point",
}


def _number(value: Any) -> float | None:
    return (
        float(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def row_of(event: dict[str, Any]) -> SoeRow:
    """One event of the log → its SOE row (the time chosen as the module says)."""
    kind = str(event.get("kind", ""))
    logged = _number(event.get("time")) or 0.0
    when, where = logged, "receive"
    value = ""
    if kind == "status.change":
        source_time = _number(event.get("source_time"))
        if source_time is not None:
            when, where = source_time, "ied"
        elif _number(event.get("receive_time")) is not None:
            when = float(event["receive_time"])
        point = str(event.get("point", ""))
        value = f"{point}={'1' if event.get('value') else '0'}"
    elif kind.startswith("protection."):
        decided = _number(event.get("decision_time"))
        if decided is not None:
            when, where = decided, "decision"
        value = "/".join(x for x in (str(event.get("element") or ""), str(event.get("phase") or "")) if x)
    detail = "; ".join(
        f"{k}={_text(v)}" for k, v in sorted(event.items()) if k not in _SKIP and v not in (None, "", [], {})
    )
    seq = event.get("seq")
    return SoeRow(
        time=when,
        time_source=where,
        source=str(event.get("source", "")),
        kind=kind,
        value=value,
        detail=detail,
        seq=int(seq) if isinstance(seq, int) else 0,
    )


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


@dataclass(frozen=True, slots=True)
class Filter:
    since: float = -math.inf
    until: float = math.inf
    source: str = "*"
    """Glob on the source (CB-045, CB-*)."""
    kind: str = ""
    """Prefix of the kind (protection., status.)."""

    def accepts(self, row: SoeRow) -> bool:
        return (
            self.since <= row.time <= self.until
            and fnmatch.fnmatchcase(row.source, self.source)
            and row.kind.startswith(self.kind)
        )


def select(events: Iterable[dict[str, Any]], flt: Filter) -> list[SoeRow]:
    """The events' rows that pass the filter, in time order (ties in log order)."""
    rows = [row_of(e) for e in events]
    return sorted((r for r in rows if flt.accepts(r)), key=lambda r: (r.time, r.seq))


def to_csv(rows: Iterable[SoeRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([f"{r.time:.3f}", r.time_utc, r.time_source, r.source, r.kind, r.value, r.detail, r.seq])
    return out.getvalue()


def to_json(rows: Iterable[SoeRow]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)


def parse_time(text: str, now: float) -> float:
    """'15m', '2h', '1d' (ago), an ISO date-time ('2026-12-02T07:40:00', UTC unless it says),
    or POSIX seconds ('1764660000.5')."""
    from datetime import UTC, datetime

    raw = text.strip()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    if raw and raw[-1].lower() in units:
        try:
            ago = float(raw[:-1]) * units[raw[-1].lower()]
        except ValueError:
            ago = math.nan
        if math.isfinite(ago) and ago >= 0:
            return now - ago
    try:
        value = float(raw)
        if math.isfinite(value) and value >= 0:
            return value
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"expected a duration ago (90s, 15m, 2h, 1d), an ISO date-time or POSIX seconds, found {text!r}"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()
