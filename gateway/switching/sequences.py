"""Switching sequences: ordered steps with preconditions and expected post-states.

A sequence is validated before it runs by playing it on the network model from the plant's
present configuration: each step's preconditions must hold when it comes, no close may energise
an active fault's zone or parallel two sources, no element may end above its limit by the
power-flow estimate, and every expected post-state must follow from the steps. It then runs
one step at a time through the switching authority (select-before-operate for operator
origins), waiting for each device's position to check back; a refused, failed or timed-out
step stops the sequence where it is (nothing further is operated) and raises an alarm.

Operators write sequences as TOML or JSON:

    name = "Back-feed LINE-045/3 from LINE-046"
    [[steps]]
    device = "SW-045B"
    action = "open"
    [[steps]]
    device = "TIE-045-046"
    action = "close"
    require = { "SW-045B" = "open" }     # positions before the step (optional)
    expect = { "TIE-045-046" = "closed" } # positions after it (default: the device as commanded)
    timeout_s = 10
"""

from __future__ import annotations

import enum
import json
import math
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.switching.faults import FaultBook
from gateway.switching.network import Network

MAX_STEPS = 100
DEFAULT_STEP_TIMEOUT_S = 10.0
_NAME_RE = re.compile(r"^[\w .,:;()/+#'\-]{1,120}$")
POSITIONS = {"open": False, "closed": True, "close": True}


class SequenceError(ValueError):
    """A sequence file or document that cannot be read (names where and what was expected)."""


class Status(enum.Enum):
    PROPOSED = "proposed"
    """Planned (by FLISR in advisory mode, or written by an operator): waits for approval."""
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Step:
    device: str
    action: str
    require: Mapping[str, bool] = field(default_factory=dict)
    expect: Mapping[str, bool] = field(default_factory=dict)
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    purpose: str = ""
    override_reason: str | None = None
    """The reason recorded when the step overrides interlock rows (FLISR: the lockout rows)."""
    override: tuple[str, ...] = ()
    """Interlock rows an operator's step overrides (with `override_reason`, in the runner's role)."""

    def expected(self) -> dict[str, bool]:
        return {self.device: self.action == "close", **self.expect}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.device,
            "action": self.action,
            "require": {d: _pos(v) for d, v in self.require.items()},
            "expect": {d: _pos(v) for d, v in self.expected().items()},
            "timeout_s": self.timeout_s,
            "purpose": self.purpose,
        }
        if self.override:
            out["override"] = list(self.override)
            out["reason"] = self.override_reason
        return out


@dataclass(frozen=True, slots=True)
class StepResult:
    step: int
    ok: bool
    message: str
    op_id: str | None = None
    time: float | None = None
    elapsed_s: float | None = None


@dataclass(frozen=True, slots=True)
class Sequence:
    id: str
    name: str
    steps: tuple[Step, ...]
    created_by: str
    created: float
    """Wall time."""
    status: Status = Status.PROPOSED
    source: str = "operator"
    """operator, flisr, maintenance (a backup plan for a planned outage)."""
    fault: str | None = None
    plan: Mapping[str, Any] = field(default_factory=dict)
    results: tuple[StepResult, ...] = ()
    validation: tuple[str, ...] = ()
    approved_by: str | None = None
    finished: float | None = None

    @property
    def next_step(self) -> int:
        return len(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "source": self.source,
            "created_by": self.created_by,
            "created": self.created,
            "fault": self.fault,
            "approved_by": self.approved_by,
            "finished": self.finished,
            "steps": [s.to_dict() for s in self.steps],
            "results": [
                {
                    "step": r.step,
                    "ok": r.ok,
                    "message": r.message,
                    "op_id": r.op_id,
                    "time": r.time,
                    "elapsed_s": r.elapsed_s,
                }
                for r in self.results
            ],
            "validation": list(self.validation),
            "plan": dict(self.plan),
        }


def _pos(closed: bool) -> str:
    return "closed" if closed else "open"


def new_id(prefix: str = "SEQ") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- reading


def parse(text: str, source: str, *, created_by: str, now_wall: float) -> Sequence:
    """A sequence from TOML or JSON text (JSON when it starts with `{`)."""
    try:
        doc = json.loads(text) if text.lstrip().startswith("{") else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SequenceError(f"{source}: not valid TOML or JSON: {exc}") from None
    return from_document(doc, source, created_by=created_by, now_wall=now_wall)


def from_document(doc: Any, source: str, *, created_by: str, now_wall: float) -> Sequence:
    if not isinstance(doc, dict):
        raise SequenceError(f"{source}: expected a table with 'name' and 'steps'")
    unknown = sorted(set(doc) - {"name", "steps"})
    if unknown:
        raise SequenceError(f"{source}: unknown key(s) {', '.join(unknown)}; expected name, steps")
    name = doc.get("name", "operator sequence")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SequenceError(f"{source}: name: expected 1-120 plain characters, found {name!r:.60}")
    raw = doc.get("steps")
    if not isinstance(raw, list) or not raw:
        raise SequenceError(f"{source}: steps: expected a non-empty list of steps")
    if len(raw) > MAX_STEPS:
        raise SequenceError(f"{source}: steps: {len(raw)} steps; at most {MAX_STEPS}")
    steps = tuple(_step(item, f"{source}: steps[{n}]") for n, item in enumerate(raw))
    return Sequence(id=new_id(), name=name, steps=steps, created_by=created_by, created=now_wall)


def _step(item: Any, where: str) -> Step:
    if not isinstance(item, dict):
        raise SequenceError(f"{where}: expected a table with device and action")
    unknown = sorted(
        set(item) - {"device", "action", "require", "expect", "timeout_s", "purpose", "override", "reason"}
    )
    if unknown:
        raise SequenceError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected device, action, require, "
            "expect, timeout_s, purpose, override, reason"
        )
    device = item.get("device")
    if not isinstance(device, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", device):
        raise SequenceError(f"{where}.device: expected a device id, found {device!r:.60}")
    action = item.get("action")
    if action not in ("open", "close"):
        raise SequenceError(f"{where}.action: expected 'open' or 'close', found {action!r:.60}")
    timeout = item.get("timeout_s", DEFAULT_STEP_TIMEOUT_S)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (math.isfinite(timeout) and 0.1 <= timeout <= 600)
    ):
        raise SequenceError(f"{where}.timeout_s: expected seconds in 0.1..600, found {timeout!r:.60}")
    purpose = item.get("purpose", "")
    if not isinstance(purpose, str) or len(purpose) > 200:
        raise SequenceError(f"{where}.purpose: expected text of 200 characters at most")
    override = item.get("override", [])
    if not isinstance(override, list) or not all(
        isinstance(o, str) and re.match(r"^[a-z_]{1,40}$", o) for o in override
    ):
        raise SequenceError(f"{where}.override: expected a list of interlock codes, found {override!r:.60}")
    reason = item.get("reason")
    if override and (not isinstance(reason, str) or not reason.strip() or len(reason) > 500):
        raise SequenceError(f"{where}.reason: a step that overrides interlocks needs the reason (1-500 characters)")
    return Step(
        device=device,
        action=action,
        require=_positions(item.get("require", {}), f"{where}.require"),
        expect=_positions(item.get("expect", {}), f"{where}.expect"),
        timeout_s=float(timeout),
        purpose=purpose,
        override=tuple(override),
        override_reason=reason if override else None,
    )


def _positions(raw: Any, where: str) -> dict[str, bool]:
    if not isinstance(raw, dict):
        raise SequenceError(f'{where}: expected a table of device = "open" | "closed"')
    out = {}
    for device, pos in raw.items():
        if pos not in ("open", "closed"):
            raise SequenceError(f'{where}.{device}: expected "open" or "closed", found {pos!r:.60}')
        out[str(device)] = POSITIONS[pos]
    return out


# --------------------------------------------------------------------------- validation


def validate(
    seq: Sequence,
    network: Network,
    config: Mapping[str, bool | None],
    faults: FaultBook,
    loads_kva: Mapping[str, complex],
    *,
    min_voltage_pu: float = 0.95,
    start: int = 0,
    source_voltage_pu: Mapping[str, float] | None = None,
) -> list[str]:
    """Problems found by playing the sequence (from step `start`) on the model; empty when valid."""
    problems: list[str] = []
    trial = dict(config)
    faulted = faults.faulted_nodes()
    for n, step in enumerate(seq.steps[start:], start=start):
        where = f"step {n + 1} ({step.action} {step.device})"
        dev = network.devices.get(step.device)
        if dev is None:
            problems.append(f"{where}: {step.device} is not a switching device of this site")
            continue
        for d, want in step.require.items():
            if d not in network.devices:
                problems.append(f"{where}: requires {d}, which is not a switching device")
            elif trial.get(d) is None:
                problems.append(f"{where}: requires {d} {_pos(want)}, but its position is unknown")
            elif trial[d] != want:
                problems.append(f"{where}: requires {d} {_pos(want)}, but it will be {_pos(bool(trial[d]))}")
        if trial.get(step.device) is None:
            problems.append(f"{where}: the position of {step.device} is unknown")
        before = network.energise(trial)
        trial[step.device] = step.action == "close"
        after = network.energise(trial)
        if step.action == "close":
            newly = [n2 for n2 in after.source_of if n2 not in before.source_of]
            hit = sorted(n2 for n2 in newly if n2 in faulted)
            if hit:
                problems.append(
                    f"{where}: would energise {', '.join(hit)}, inside the zone of fault {faulted[hit[0]].id}"
                )
            if step.device in after.loops and not dev.allow_parallel:
                problems.append(f"{where}: would parallel two sources or close a loop")
            undo = dict(trial)
            undo[step.device] = False
            v = source_voltage_pu
            est = network.estimate(trial, loads_kva, min_voltage_pu=min_voltage_pu, source_voltage_pu=v)
            worse = est.worse_than(
                network.estimate(undo, loads_kva, min_voltage_pu=min_voltage_pu, source_voltage_pu=v)
            )
            if worse:
                problems.append(
                    f"{where}: beyond limits by the power-flow estimate: " + "; ".join(str(v) for v in worse[:4])
                )
        for d, want in step.expect.items():
            if d not in network.devices:
                problems.append(f"{where}: expects {d}, which is not a switching device")
            elif trial.get(d) != want:
                problems.append(
                    f"{where}: expects {d} {_pos(want)} afterwards, but nothing in the sequence puts it there"
                )
    return problems


def with_validation(seq: Sequence, problems: list[str]) -> Sequence:
    return replace(seq, validation=tuple(problems), status=Status.INVALID if problems else seq.status)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class DueStep:
    sequence: Sequence
    index: int
    step: Step


class SequenceRunner:
    """Which step of which sequence goes next; what came of it. One step in flight per sequence."""

    def __init__(self, keep: int = 100) -> None:
        self.sequences: dict[str, Sequence] = {}
        self._in_flight: dict[str, tuple[str, int, float]] = {}
        """op id → (sequence id, step index, wall time issued)."""
        self._busy: set[str] = set()
        self._keep = keep
        self.changed: list[Sequence] = []

    def add(self, seq: Sequence) -> Sequence:
        self.sequences[seq.id] = seq
        self.changed.append(seq)
        done = [s.id for s in self.sequences.values() if s.status not in (Status.RUNNING, Status.PROPOSED)]
        for sid in done[: max(0, len(self.sequences) - self._keep)]:
            del self.sequences[sid]
        return seq

    def get(self, seq_id: str) -> Sequence:
        try:
            return self.sequences[seq_id]
        except KeyError:
            raise KeyError(f"no switching sequence {seq_id!r}") from None

    def start(self, seq_id: str, who: str) -> Sequence:
        seq = self.get(seq_id)
        if seq.status is not Status.PROPOSED:
            raise ValueError(f"sequence {seq_id} is {seq.status.value}; only a proposed sequence can run")
        return self._set(replace(seq, status=Status.RUNNING, approved_by=who))

    def due(self) -> list[DueStep]:
        out = []
        for seq in self.sequences.values():
            if seq.status is Status.RUNNING and seq.id not in self._busy and seq.next_step < len(seq.steps):
                out.append(DueStep(seq, seq.next_step, seq.steps[seq.next_step]))
        return out

    def issued(self, seq_id: str, index: int, op_id: str, wall: float) -> None:
        self._busy.add(seq_id)
        self._in_flight[op_id] = (seq_id, index, wall)

    def refused(self, seq_id: str, index: int, message: str, wall: float) -> Sequence:
        return self._result(seq_id, StepResult(index, False, f"refused: {message}", None, wall), wall)

    def outcome(self, op_id: str, ok: bool, message: str, elapsed_s: float, wall: float) -> Sequence | None:
        entry = self._in_flight.pop(op_id, None)
        if entry is None:
            return None
        seq_id, index, _ = entry
        self._busy.discard(seq_id)
        return self._result(seq_id, StepResult(index, ok, message, op_id, wall, round(elapsed_s, 3)), wall)

    def abort(self, seq_id: str, who: str, wall: float) -> Sequence:
        seq = self.get(seq_id)
        if seq.status not in (Status.RUNNING, Status.PROPOSED):
            raise ValueError(f"sequence {seq_id} is {seq.status.value}: nothing to abort")
        self._busy.discard(seq_id)
        return self._set(
            replace(
                seq,
                status=Status.ABORTED,
                finished=wall,
                results=seq.results + (StepResult(seq.next_step, False, f"aborted by {who}", None, wall),),
            )
        )

    def take_changed(self) -> list[Sequence]:
        out, self.changed = self.changed, []
        return out

    def _result(self, seq_id: str, result: StepResult, wall: float) -> Sequence:
        seq = self.get(seq_id)
        results = seq.results + (result,)
        status = seq.status
        finished = seq.finished
        if not result.ok:
            status, finished = Status.FAILED, wall
        elif len(results) >= len(seq.steps):
            status, finished = Status.DONE, wall
        return self._set(replace(seq, results=results, status=status, finished=finished))

    def _set(self, seq: Sequence) -> Sequence:
        self.sequences[seq.id] = seq
        self.changed.append(seq)
        return seq
