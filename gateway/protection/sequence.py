"""Secondary injection with sequences: the states a relay test set plays (pre-fault, fault,
current stepping down, reset), run through the protection core as the daemon runs it.

Sans-IO: states in, a timeline of what the relay did out (pickups, dropouts, trips, recloses,
the 51/49 integration at each state's end). The breaker is simulated as a test set's breaker
simulator does: it opens on a trip command and closes on a reclose, at once, and while it is
open no current flows (the voltage, measured on the bus side, stays), so that a scheme with 79
plays its reclose sequence and 50BF sees its breaker open. Run on both backends (the C core and the Python
reference) the two timelines must be the same.

Text form of a sequence (command line, or a file with one state per line and # comments):
``DURATION [CURRENT] [In=CURRENT] [VOLTAGE] [FREQUENCY]`` with states separated by ``;``,
e.g. ``1s 300A; 2s 2400A; 1s 800A; 2s 0A``. A current without ``In=`` is applied to the three
phases; an absent voltage or frequency is the nominal one. A CSV file has a header with
``duration_s`` and any of ``current_a``, ``neutral_a``, ``voltage_kv``, ``frequency_hz``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.protection.core import ElementKind
from gateway.protection.settings import ProtectionScheme

MAX_STATES = 200
MAX_TOTAL_S = 3600.0
MAX_CURRENT_A = 1e6
MAX_SAMPLES = 5_000_000
"""Bound on the samples of one run (a 1 h sequence at 1 ms is 3.6 million)."""
_NUMBER = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_TOKEN = re.compile(r"^(?:(in|n)=)?" + _NUMBER + r"\s*([A-Za-z]*)$", re.IGNORECASE)
_DURATION = {"": 1.0, "s": 1.0, "ms": 0.001, "min": 60.0}
_CURRENT = {"a": 1.0, "ka": 1000.0}
_VOLTAGE = {"kv": 1.0, "v": 0.001}
CSV_COLUMNS = ("duration_s", "current_a", "neutral_a", "voltage_kv", "frequency_hz")


class SequenceError(ValueError):
    """A sequence that cannot be played; the message names the state (and file line) and why."""


@dataclass(frozen=True, slots=True)
class InjectionState:
    """One state of the sequence: what is injected, for how long."""

    duration_s: float
    current_a: float = 0.0
    """Phase current, the same on A, B and C."""
    neutral_a: float | None = None
    """Residual current (None: none, a balanced injection)."""
    voltage_kv: float | None = None
    """Phase-to-phase voltage (None: the scheme's nominal)."""
    voltage_pu: float | None = None
    """Voltage given in per unit of the nominal (resolved against the scheme when played)."""
    frequency_hz: float | None = None
    """None: the nominal frequency."""

    def as_dict(self) -> dict[str, float | None]:
        return {
            "duration_s": self.duration_s,
            "current_a": self.current_a,
            "neutral_a": self.neutral_a,
            "voltage_kv": self.voltage_kv,
            "voltage_pu": self.voltage_pu,
            "frequency_hz": self.frequency_hz,
        }


def _check_state(state: InjectionState, where: str) -> InjectionState:
    if not (math.isfinite(state.duration_s) and state.duration_s > 0):
        raise SequenceError(f"{where}: duration {state.duration_s!r} must be a number of seconds > 0")
    for name, value, high in (
        ("current", state.current_a, MAX_CURRENT_A),
        ("neutral current", state.neutral_a, MAX_CURRENT_A),
        ("voltage", state.voltage_kv, 1000.0),
        ("voltage", state.voltage_pu, 5.0),
        ("frequency", state.frequency_hz, 100.0),
    ):
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= high):
            raise SequenceError(f"{where}: {name} {value!r} must be between 0 and {high:g}")
    if state.frequency_hz is not None and state.frequency_hz <= 0:
        raise SequenceError(f"{where}: frequency must be above 0 Hz")
    return state


def _check_sequence(states: list[InjectionState], what: str) -> list[InjectionState]:
    if not states:
        raise SequenceError(f"{what}: no state (expected e.g. '1s 300A; 2s 2400A; 1s 0A')")
    if len(states) > MAX_STATES:
        raise SequenceError(f"{what}: {len(states)} states; at most {MAX_STATES}")
    total = sum(s.duration_s for s in states)
    if total > MAX_TOTAL_S:
        raise SequenceError(f"{what}: the states last {total:g} s; at most {MAX_TOTAL_S:g} s")
    return states


def parse_state(text: str, where: str) -> InjectionState:
    """'2s 2400A In=300A 7.7kV 49.5Hz' -> an InjectionState (the duration first)."""
    tokens = text.split()
    if not tokens:
        raise SequenceError(f"{where}: empty state")
    values: dict[str, float] = {}
    for k, token in enumerate(tokens):
        match = _TOKEN.match(token)
        if match is None:
            raise SequenceError(
                f"{where}: {token!r} is not a quantity (examples: 2s, 500ms, 2400A, 2.4kA, "
                "In=300A, 7.7kV, 0.7pu, 49.5Hz)"
            )
        neutral, number, unit = match.group(1), float(match.group(2)), match.group(3).lower()
        if k == 0:
            if neutral or unit not in _DURATION:
                raise SequenceError(f"{where}: a state starts with its duration (e.g. 2s or 500ms), not {token!r}")
            key, value = "duration_s", number * _DURATION[unit]
        elif unit in _CURRENT:
            key, value = ("neutral_a" if neutral else "current_a"), number * _CURRENT[unit]
        elif neutral:
            raise SequenceError(f"{where}: {token!r}: In= takes a current (A or kA)")
        elif unit in _VOLTAGE:
            key, value = "voltage_kv", number * _VOLTAGE[unit]
        elif unit == "pu":
            key, value = "voltage_pu", number
        elif unit == "hz":
            key, value = "frequency_hz", number
        else:
            raise SequenceError(
                f"{where}: {token!r}: unit {match.group(3)!r} is not one of s, ms, A, kA, kV, V, pu, Hz"
            )
        if key in values or (key.startswith("voltage") and ({"voltage_kv", "voltage_pu"} & set(values))):
            raise SequenceError(f"{where}: {token!r}: the {key.split('_')[0]} is given twice")
        values[key] = value
    return _check_state(InjectionState(**values), where)


def parse_sequence(text: str, what: str = "sequence") -> list[InjectionState]:
    """States separated by ';' (or new lines); '#' starts a comment."""
    states = []
    number = 0
    for line_no, line in enumerate(text.splitlines() or [""], start=1):
        line = line.split("#", 1)[0]
        for part in line.split(";"):
            if not part.strip():
                continue
            number += 1
            where = f"{what}, state {number}" + (f" (line {line_no})" if "\n" in text else "")
            states.append(parse_state(part, where))
    return _check_sequence(states, what)


def _csv_states(text: str, path: Path) -> list[InjectionState]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if "duration_s" not in columns or unknown:
        raise SequenceError(
            f"{path}: the header must have duration_s and any of {', '.join(CSV_COLUMNS[1:])}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    states = []
    for row_no, row in enumerate(reader, start=2):
        where = f"{path}, line {row_no}"
        values: dict[str, float] = {}
        for key, raw in row.items():
            if key is None or raw is None:
                raise SequenceError(f"{where}: {len(columns)} columns expected")
            cell = raw.strip()
            if not cell:
                continue
            try:
                values[key.strip()] = float(cell)
            except ValueError:
                raise SequenceError(f"{where}: {key.strip()} {cell!r} is not a number") from None
        if "duration_s" not in values:
            raise SequenceError(f"{where}: duration_s is empty")
        states.append(_check_state(InjectionState(**values), where))
    return _check_sequence(states, str(path))


def load_sequence(path: Path) -> list[InjectionState]:
    """A sequence file: CSV (by its .csv suffix) or the text form, one state per line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SequenceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > 1_000_000:
        raise SequenceError(f"{path}: {len(raw)} bytes; a sequence file is at most 1 MB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SequenceError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if path.suffix.lower() == ".csv":
        return _csv_states(text, path)
    return parse_sequence(text, str(path))


# ------------------------------------------------------------------ playing a sequence


@dataclass(frozen=True, slots=True)
class SequenceEvent:
    time_s: float
    """From the start of the sequence."""
    kind: str
    """pickup, dropout, trip, reclose, lockout, reset, breaker open, breaker closed, retrip,
    backup trip."""
    element: str = ""
    phase: str = ""
    value: float | None = None
    state: int = 0
    """1-based state it happened in."""

    def label(self) -> str:
        what = f"{self.element} {self.kind}" if self.kind in ("pickup", "dropout") else self.kind
        if self.kind == "trip" and self.element:
            what += f" ({self.element})"
        return what + (f" {self.phase}" if self.phase and self.kind in ("pickup", "dropout", "trip") else "")


@dataclass
class SequenceRun:
    """What one backend did on one sequence."""

    backend: str
    sample_s: float
    events: list[SequenceEvent] = field(default_factory=list)
    integrated: list[dict[str, float]] = field(default_factory=list)
    """Per state, at its end: each 51 element's share of its operate time (1 = operate), each
    49 element's thermal level."""

    @property
    def trip_s(self) -> float | None:
        return next((e.time_s for e in self.events if e.kind == "trip"), None)

    def first(self, kind: str, element: str | None = None) -> float | None:
        return next(
            (e.time_s for e in self.events if e.kind == kind and (element is None or e.element == element)), None
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "sample_s": self.sample_s,
            "trip_s": self.trip_s,
            "events": [
                {
                    "time_s": e.time_s,
                    "kind": e.kind,
                    "element": e.element,
                    "phase": e.phase,
                    "value": e.value,
                    "state": e.state,
                }
                for e in self.events
            ],
            "integrated": self.integrated,
        }


def nominal_frequency_hz(scheme: ProtectionScheme) -> float:
    """60 Hz when the scheme's 81 is set around 60 Hz, else 50 Hz."""
    f81 = scheme.elements.uf81 or scheme.elements.of81
    return 60.0 if f81 is not None and f81.pickup_hz > 55.0 else 50.0


def state_inputs(scheme: ProtectionScheme, state: InjectionState, neutral_element: bool) -> dict[str, float]:
    """The relay's analogue inputs during `state` (ia, ib, ic, in, voltage_kv, frequency_hz)."""
    if state.voltage_pu is not None:
        voltage = state.voltage_pu * scheme.nominal_voltage_kv
    elif state.voltage_kv is not None:
        voltage = state.voltage_kv
    else:
        voltage = scheme.nominal_voltage_kv
    phase = 0.0 if neutral_element and state.neutral_a is None else state.current_a
    neutral = state.neutral_a if state.neutral_a is not None else (state.current_a if neutral_element else 0.0)
    return {
        "ia": phase,
        "ib": phase,
        "ic": phase,
        "in": neutral,
        "voltage_kv": voltage,
        "frequency_hz": state.frequency_hz if state.frequency_hz is not None else nominal_frequency_hz(scheme),
    }


def play(
    scheme: ProtectionScheme,
    states: Iterable[InjectionState],
    *,
    backend: str = "auto",
    sample_s: float = 0.001,
    element: str | None = None,
    breaker_fails: bool = False,
) -> SequenceRun:
    """Play `states` into `scheme` (or its one element `element`, as the test command builds it)
    on `backend`, evaluating every `sample_s` and at every state change. `breaker_fails`: the
    simulated breaker does not open (the 50BF test)."""
    from gateway.protection.engine import BreakerCommand, ProtectionEngine, ProtectionEvent

    states = list(states)
    if not (math.isfinite(sample_s) and 1e-5 <= sample_s <= 1.0):
        raise SequenceError(f"sample period {sample_s!r} s must be between 0.00001 and 1")
    total = sum(s.duration_s for s in states)
    if total / sample_s > MAX_SAMPLES:
        raise SequenceError(
            f"{total:g} s at {sample_s * 1000:g} ms is more than {MAX_SAMPLES} samples; use a longer sample period"
        )
    neutral_element = element in ("50N", "51N")
    engine = ProtectionEngine([scheme], backend=backend)
    run = SequenceRun(backend=engine.backend_name, sample_s=sample_s)
    names = scheme.input_names()
    closed_point = scheme.point("closed")
    currents = [n for n in names if n in ("ia", "ib", "ic", "in")]
    state_no = 0
    values: dict[str, float] = {}
    closed = True

    def handle(actions: list[Any], now: float) -> None:
        nonlocal closed
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, ProtectionEvent):
                value = action.measured if action.measured is not None else action.current_a
                run.events.append(SequenceEvent(now, action.kind, action.element, action.phase, value, state_no))
            elif isinstance(action, BreakerCommand):
                if action.reason == "backup_trip":  # the upstream breaker's, not this one's
                    run.events.append(SequenceEvent(now, "backup trip", action.element, "", None, state_no))
                    continue
                if action.reason == "retrip":
                    run.events.append(SequenceEvent(now, "retrip", action.element, "", None, state_no))
                closing = action.reason in ("reclose", "close")
                if closing == closed or (breaker_fails and not closing):
                    continue
                closed = closing
                run.events.append(
                    SequenceEvent(
                        now, "breaker closed" if closing else "breaker open", action.element, "", None, state_no
                    )
                )
                queue += engine.on_sample(closed_point, 1.0 if closing else 0.0, True, now)
                for name in currents:
                    queue += engine.on_sample(scheme.point(name), values[name] if closing else 0.0, True, now)

    handle(engine.on_sample(closed_point, 1.0, True, 0.0), 0.0)
    start = 0.0
    n = 0  # evaluations on the grid n * sample_s, not by repeated addition
    for k, state in enumerate(states, start=1):
        state_no = k  # read by handle()
        values = state_inputs(scheme, state, neutral_element)
        for name in names:
            if name != "closed":
                value = values[name] if closed or name not in currents else 0.0
                handle(engine.on_sample(scheme.point(name), value, True, start), start)
        end = start + state.duration_s
        while (n + 1) * sample_s < end - 1e-12:
            n += 1
            handle(engine.step(n * sample_s), n * sample_s)
        handle(engine.step(end), end)
        run.integrated.append(engine.accumulators(scheme.breaker))
        start = end
    return run


def compare(a: SequenceRun, b: SequenceRun) -> list[str]:
    """Where two runs differ (empty when they agree): the same events in the same order, each
    at the same time within one sample period, and the same integration within 1e-6."""
    tolerance = max(a.sample_s, b.sample_s) + 1e-9
    problems = []
    for k in range(max(len(a.events), len(b.events))):
        ea = a.events[k] if k < len(a.events) else None
        eb = b.events[k] if k < len(b.events) else None
        if ea is None or eb is None or (ea.kind, ea.element, ea.phase) != (eb.kind, eb.element, eb.phase):
            problems.append(
                f"event {k + 1}: {a.backend} {ea.label() if ea else 'nothing'}, "
                f"{b.backend} {eb.label() if eb else 'nothing'}"
            )
            break
        if abs(ea.time_s - eb.time_s) > tolerance:
            problems.append(f"{ea.label()}: {a.backend} at {ea.time_s:.4f} s, {b.backend} at {eb.time_s:.4f} s")
    for k, (ia, ib) in enumerate(zip(a.integrated, b.integrated, strict=True), start=1):
        for name in ia:
            if abs(ia[name] - ib.get(name, math.nan)) > 1e-6 or not math.isfinite(ib.get(name, math.nan)):
                problems.append(f"state {k} {name} integration: {a.backend} {ia[name]:.6f}, {b.backend} {ib.get(name)}")
    return problems


def describe_scheme(scheme: ProtectionScheme) -> str:
    names = [n for n, _, _ in scheme.configured_elements()]
    text = ", ".join(names)
    if scheme.reclose is not None:
        text += f"; 79 {scheme.reclose.shots} shot(s)"
    if scheme.breaker_failure is not None:
        text += "; 50BF"
    return text


def integrating_elements(scheme: ProtectionScheme) -> list[str]:
    return [
        n for n, kind, _ in scheme.configured_elements() if kind in (ElementKind.P51, ElementKind.N51, ElementKind.TH49)
    ]
