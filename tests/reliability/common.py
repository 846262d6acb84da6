"""What every part of `make reliability` shares: its report, and the way it is run.

A part is a module `tests/reliability/part_<name>.py` with TITLE, BUDGET_S (its time bound),
METHOD (how it is measured, for docs/reliability.md) and `run(report, workdir, quick)`. The
runner starts each part in its own process, kills it at its time bound, and reads back the
report it wrote: figures (what, figure, goal, met), notes, and a verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PASS, FAIL, SKIPPED = "pass", "FAIL", "skipped"


@dataclass
class Row:
    what: str
    figure: str
    goal: str = ""
    met: bool | None = None


@dataclass
class Report:
    part: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    headline: str = ""
    """One line for the summary table (the first figures when empty)."""
    error: str | None = None
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    """Raw figures behind the rows, kept in the JSON results."""

    def row(self, what: str, figure: Any, goal: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(what, str(figure), goal, met))

    def check(self, what: str, figure: Any, goal: str, met: bool) -> bool:
        self.row(what, figure, goal, bool(met))
        return bool(met)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def skip(self, reason: str) -> None:
        self.skipped = reason

    @property
    def verdict(self) -> str:
        if self.error is not None or any(r.met is False for r in self.rows):
            return FAIL
        if self.skipped is not None and not self.rows:
            return SKIPPED
        return PASS

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        rows = [Row(**r) for r in data.pop("rows", [])]
        data.pop("verdict", None)
        return cls(rows=rows, **data)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def is_root() -> bool:
    return os.geteuid() == 0


def part_main(name: str, title: str, run: Callable[[Report, Path, bool], None]) -> None:
    """Entry point of a part's process: run it, write its report as JSON, exit 0."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    report = Report(name, title)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def save() -> None:
        report.seconds = round(time.monotonic() - start, 1)
        Path(args.out).write_text(json.dumps(report.to_json(), indent=1, default=str))

    try:
        run(report, workdir, args.quick)
    except Exception as exc:  # the part itself failed: say where, in its report
        report.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)[-3000:]}"
    save()
    sys.exit(0)
