"""IEEE C37.111-2013 (IEC 60255-24:2013) COMTRADE files: configuration (.cfg), data (.dat, ASCII,
BINARY or FLOAT32) and header (.hdr). Pure functions from a record to bytes; the caller writes.

Why written here: the maintained Python COMTRADE packages read the format but do not write it
(`comtrade` on PyPI, 0.2, reads only); the few that write are small unmaintained projects.

A gateway's samples arrive at the rate of its polls and reports, not at a fixed sampling rate:
the records are written with `nrates = 0` and a time stamp on every sample (the 2013 revision's
way for irregular sampling, the time stamp then being "critical"), in microseconds from the
first sample (`timemult` 1). Analogue values are engineering values (primary, PS = P):
BINARY scales each channel into 16-bit integers over its own range (value = a·x + b); ASCII
and FLOAT32 keep them as they are. Missing values (a channel not heard from yet) are written
as the standard's markers: 99999 in ASCII, 0x8000 in BINARY, and NaN in FLOAT32.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

DatFormat = Literal["ASCII", "BINARY", "FLOAT32"]
FORMATS: tuple[DatFormat, ...] = ("ASCII", "BINARY", "FLOAT32")
ASCII_MISSING = "99999"
BINARY_MISSING = -32768
FLOAT32_MISSING = math.nan
INT16_SPAN = 32767
_FORBIDDEN = ",\r\n"


class ComtradeError(ValueError):
    """A record that cannot be written (names what and why)."""


@dataclass(frozen=True, slots=True)
class AnalogChannel:
    name: str
    unit: str
    phase: str = ""
    circuit: str = ""
    """The circuit component being monitored (ccbm), e.g. the breaker id."""


@dataclass(frozen=True, slots=True)
class DigitalChannel:
    name: str
    phase: str = ""
    circuit: str = ""
    normal: int = 0


@dataclass
class Record:
    """One disturbance record: channels, and per sample its time and values."""

    station: str
    device: str
    analog: list[AnalogChannel]
    digital: list[DigitalChannel]
    times: list[float]
    """POSIX seconds (UTC) of every sample, not decreasing."""
    analog_values: list[list[float | None]]
    """Per sample, one value per analogue channel (None: missing)."""
    digital_values: list[list[int]]
    """Per sample, 0 or 1 per digital channel."""
    trigger_time: float
    line_frequency_hz: float = 50.0
    header: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _text(value: str, what: str) -> str:
    if any(c in value for c in _FORBIDDEN) or not value.isascii():
        raise ComtradeError(f"{what} {value!r}: COMTRADE fields are ASCII without commas or line breaks")
    if value != value.strip():
        raise ComtradeError(f"{what} {value!r}: leading or trailing spaces are lost by COMTRADE readers")
    return value


def _check(record: Record) -> None:
    n = len(record.times)
    if n == 0:
        raise ComtradeError("a record needs one sample at least")
    if len(record.analog_values) != n or len(record.digital_values) != n:
        raise ComtradeError("one row of values per sample time is needed")
    for k, row in enumerate(record.analog_values):
        if len(row) != len(record.analog):
            raise ComtradeError(f"sample {k + 1}: {len(row)} analogue values for {len(record.analog)} channels")
        for value in row:
            if value is not None and not math.isfinite(value):
                raise ComtradeError(f"sample {k + 1}: analogue value {value!r} is not finite")
    for k, bits in enumerate(record.digital_values):
        if len(bits) != len(record.digital) or any(v not in (0, 1) for v in bits):
            raise ComtradeError(f"sample {k + 1}: digital values must be 0 or 1, one per channel")
    if any(b < a for a, b in zip(record.times, record.times[1:])):
        raise ComtradeError("sample times must not decrease")
    if not all(math.isfinite(t) for t in (*record.times, record.trigger_time)):
        raise ComtradeError("sample and trigger times must be finite")
    span_us = (record.times[-1] - record.times[0]) * 1e6
    if span_us >= 2**32:
        raise ComtradeError(
            f"the record spans {span_us / 1e6:.0f} s; 32-bit microsecond time stamps hold "
            f"{(2**32 - 1) / 1e6:.0f} s at most"
        )
    for ch in record.analog:
        _text(ch.name, "channel name")
        _text(ch.unit, "unit")
        _text(ch.phase, "phase")
        _text(ch.circuit, "circuit")
    for dch in record.digital:
        _text(dch.name, "channel name")
        _text(dch.phase, "phase")
        _text(dch.circuit, "circuit")
    _text(record.station, "station name")
    _text(record.device, "recording device")


def _stamp(t: float) -> str:
    """dd/mm/yyyy,hh:mm:ss.ssssss in UTC."""
    micro = round(t * 1e6)
    dt = datetime.fromtimestamp(micro // 1_000_000, UTC)
    return f"{dt:%d/%m/%Y,%H:%M:%S}.{micro % 1_000_000:06d}"


def _scaling(values: Sequence[float | None]) -> tuple[float, float, float, float]:
    """(a, b, min, max) of a channel: value = a·x + b over the channel's own range."""
    present = [v for v in values if v is not None]
    if not present:
        return 1.0, 0.0, -INT16_SPAN, INT16_SPAN
    low, high = min(present), max(present)
    if high == low:
        return (abs(high) / INT16_SPAN if high else 1.0), 0.0, -INT16_SPAN, INT16_SPAN
    b = (high + low) / 2.0
    a = (high - low) / (2.0 * INT16_SPAN)
    return a, b, -INT16_SPAN, INT16_SPAN


ASCII_LIMIT = 99998.0
"""The largest ASCII sample written: 99999 is the missing-value marker."""


def _ascii_scaling(values: Sequence[float | None]) -> tuple[float, float, float, float]:
    """(a, b, min, max) of an ASCII channel: values as they are (a = 1) unless one would reach the
    missing-value marker, then scaled (value = a·x) so every sample stays within ±99998."""
    peak = max((abs(v) for v in values if v is not None), default=0.0)
    a = 1.0 if peak <= ASCII_LIMIT else peak / ASCII_LIMIT
    return a, 0.0, -3.4e38, 3.4e38


def _offsets(record: Record) -> list[int]:
    t0 = record.times[0]
    out = []
    for t in record.times:
        out.append(max(0, round((t - t0) * 1e6)))
    return out


def write(record: Record, fmt: DatFormat = "BINARY") -> tuple[bytes, bytes, bytes]:
    """(.cfg, .dat, .hdr) contents of `record`."""
    if fmt not in FORMATS:
        raise ComtradeError(f"data format {fmt!r}: expected one of {', '.join(FORMATS)}")
    _check(record)
    n_a, n_d = len(record.analog), len(record.digital)
    columns = [[row[i] for row in record.analog_values] for i in range(n_a)]
    scales = [
        _scaling(col) if fmt == "BINARY" else _ascii_scaling(col) if fmt == "ASCII" else (1.0, 0.0, -3.4e38, 3.4e38)
        for col in columns
    ]
    lines = [f"{record.station},{record.device},2013", f"{n_a + n_d},{n_a}A,{n_d}D"]
    for i, (ch, (a, b, low, high)) in enumerate(zip(record.analog, scales, strict=True), start=1):
        lines.append(f"{i},{ch.name},{ch.phase},{ch.circuit},{ch.unit},{a:.9g},{b:.9g},0,{low:.9g},{high:.9g},1,1,P")
    for i, dch in enumerate(record.digital, start=1):
        lines.append(f"{i},{dch.name},{dch.phase},{dch.circuit},{dch.normal}")
    lines += [
        f"{record.line_frequency_hz:g}",
        "0",
        f"0,{len(record.times)}",
        _stamp(record.times[0]),
        _stamp(record.trigger_time),
        fmt,
        "1",
        "0,0",
        "0,0",
    ]
    cfg = ("\r\n".join(lines) + "\r\n").encode("ascii")
    stamps = _offsets(record)
    if fmt == "ASCII":
        rows = []
        for k, (ts, avals, dvals) in enumerate(
            zip(stamps, record.analog_values, record.digital_values, strict=True), start=1
        ):
            fields = [str(k), str(ts)]
            fields += [ASCII_MISSING if v is None else f"{v / scales[i][0]:.9g}" for i, v in enumerate(avals)]
            fields += [str(v) for v in dvals]
            rows.append(",".join(fields))
        dat = ("\r\n".join(rows) + "\r\n").encode("ascii")
    else:
        words = math.ceil(n_d / 16)
        analog_fmt = "h" if fmt == "BINARY" else "f"
        packer = struct.Struct(f"<II{n_a}{analog_fmt}{words}H")
        chunks = []
        for k, (ts, avals, dvals) in enumerate(
            zip(stamps, record.analog_values, record.digital_values, strict=True), start=1
        ):
            raw: list[float] | list[int]
            if fmt == "BINARY":
                raw = [
                    BINARY_MISSING if v is None else max(-INT16_SPAN, min(INT16_SPAN, round((v - b) / a)))
                    for v, (a, b, _, _) in zip(avals, scales, strict=True)
                ]
            else:
                raw = [FLOAT32_MISSING if v is None else v for v in avals]
            bits = [0] * words
            for i, v in enumerate(dvals):
                if v:
                    bits[i // 16] |= 1 << (i % 16)
            chunks.append(packer.pack(k, ts, *raw, *bits))
        dat = b"".join(chunks)
    header = record.header.encode("utf-8", errors="replace")
    return cfg, dat, header
