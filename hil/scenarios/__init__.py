"""Scenario runs: the real daemon(s) against the simulated substation, over the real protocols
and broker, with checks and figures.

    stima-hil scenario run NAME [--json] [--seed N]
    stima-hil scenario list

Every scenario prints a timeline and a result table; with `--json`, one object with
`scenario`, `passed`, `checks` (name, passed, detail), `timeline` and `figures`. The exit status
is 0 only when every check passes.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

SCENARIOS: dict[str, tuple[str, str]] = {
    "fault-isolation": (
        "hil.scenarios.fault_isolation",
        "use case scenario 1: a transient fault, then a permanent fault in each section of LINE-045 "
        "located, isolated and restored by FLISR",
    ),
    "peak-demand": (
        "hil.scenarios.peak_demand",
        "use case scenario 2: SUB-007's evening peak met by CVR, capacitors, demand response, DER and a "
        "load transfer to SUB-006 over the regional broker; refusal, offline and broker-outage variants",
    ),
    "predictive-maintenance": (
        "hil.scenarios.predictive_maintenance",
        "use case scenario 3: an ageing station transformer's health, failure probability, "
        "work order, backup plans A/B/C run in simulation, customer notices; its healthy "
        "twin raises nothing; a bypassed meter found",
    ),
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Moment:
    t_s: float
    """Seconds since the scenario started (wall clock)."""
    source: str
    what: str


@dataclass
class Recorder:
    """What a scenario saw and decided, in the shape every scenario reports."""

    scenario: str
    seed: int
    progress: Callable[[str], None] = lambda _m: None
    started: float = field(default_factory=time.time)
    checks: list[Check] = field(default_factory=list)
    timeline: list[Moment] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def note(self, source: str, what: str, at_wall: float | None = None) -> None:
        moment = Moment(round((at_wall if at_wall is not None else time.time()) - self.started, 3), source, what)
        self.timeline.append(moment)
        self.progress(f"{moment.t_s:8.2f} s  {source:<14} {what}")

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        self.progress(f"{'PASS' if passed else 'FAIL'}  {name}" + (f": {detail}" if detail else ""))
        return bool(passed)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def result(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "timeline": [asdict(m) for m in sorted(self.timeline, key=lambda m: m.t_s)],
            "figures": self.figures,
        }


def render(result: dict[str, Any]) -> str:
    lines = [f"scenario {result['scenario']} (seed {result['seed']})", "", "timeline:"]
    for m in result["timeline"]:
        lines.append(f"  {m['t_s']:9.2f} s  {m['source']:<16} {m['what']}")
    lines += ["", "figures:"]
    for key, value in result["figures"].items():
        lines.append(f"  {key:<36} {json.dumps(value, default=str)}")
    width = max((len(c["name"]) for c in result["checks"]), default=10)
    lines += ["", f"  {'check':<{width}}  result  detail"]
    for c in result["checks"]:
        lines.append(f"  {c['name']:<{width}}  {'pass' if c['passed'] else 'FAIL':<6}  {c['detail']}")
    lines += ["", "PASSED" if result["passed"] else "FAILED"]
    return "\n".join(lines)


def run(name: str, *, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    if name not in SCENARIOS:
        raise KeyError(f"no scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
    module = importlib.import_module(SCENARIOS[name][0])
    recorder = Recorder(name, seed, progress or (lambda _m: None))
    try:
        module.run(recorder)
    except Exception as exc:  # a scenario that cannot finish fails, with the reason as a check
        recorder.check("scenario ran to its end", False, f"{type(exc).__name__}: {exc}")
    return recorder.result()


def main(args: Any) -> int:
    if args.scenario_command == "list":
        for name, (_, text) in sorted(SCENARIOS.items()):
            print(f"{name:<20} {text}")
        return 0
    try:
        progress = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
        result = run(args.name, seed=args.seed, progress=progress)
    except KeyError as exc:
        print(f"stima-hil: {exc.args[0]}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str) if args.json else render(result))
    return 0 if result["passed"] else 1
