"""`make reliability`: every part in its own process, bounded in time; one table on the
terminal and docs/reliability.md written from the same run.

    python -m tests.reliability                 # every part, then docs/reliability.md
    python -m tests.reliability fuzz sandbox    # some parts (the document is written only
                                                # for a whole run, unless --doc is given)
    python -m tests.reliability --quick         # smaller counts, for trying the harness
    python -m tests.reliability --into .run/reliability ied_faults
                                                # run a part again and put its report in place
                                                # of the old one in a finished run; the document
                                                # says which parts were run again, when, at what commit
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.reliability.common import PASS, SKIPPED, Report

ROOT = Path(__file__).resolve().parents[2]
PARTS = ["kill9", "broker", "ied_faults", "fuzz", "cfuzz", "limits", "soak", "sandbox"]
DOC = ROOT / "docs" / "reliability.md"
NOT_MEASURED: list[str] = []
"""Promises this run does not measure (listed in the document when there are any)."""


def _run_part(name: str, workdir: Path, quick: bool) -> Report:
    module = importlib.import_module(f"tests.reliability.part_{name}")
    out = workdir / f"{name}.json"
    out.unlink(missing_ok=True)
    bound_s = float(module.BUDGET_S) * (0.5 if quick else 1.0) + 60.0
    argv = [
        sys.executable,
        "-m",
        f"tests.reliability.part_{name}",
        "--out",
        str(out),
        "--workdir",
        str(workdir / name),
    ] + (["--quick"] if quick else [])
    log_path = workdir / f"{name}.log"
    start = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            proc.wait(bound_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            _end_left_behind(workdir / name)
    took = round(time.monotonic() - start, 1)
    if out.exists():
        report = Report.from_json(json.loads(out.read_text()))
    else:
        report = Report(name, module.TITLE)
        tail = log_path.read_text(errors="replace")[-2000:]
        report.error = (
            f"did not finish within its bound of {bound_s:.0f} s"
            if proc.returncode in (None, -9)
            else f"exited with {proc.returncode} and no report"
        ) + f"; log {log_path}:\n{tail}"
    report.seconds = took
    return report


def _end_left_behind(part_dir: Path) -> None:
    """End what a part killed at its bound left running: its rig's servers and daemon run in
    sessions of their own, and each names the part's directory on its command line."""
    mark = str(part_dir.resolve()).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _headline(report: Report) -> str:
    if report.error:
        return report.error.splitlines()[0][:110]
    if report.headline and report.verdict != SKIPPED:
        return report.headline
    if report.verdict == SKIPPED:
        return f"skipped: {report.skipped}"[:110]
    first = [r for r in report.rows if r.met is not None][:2] or report.rows[:2]
    text = "; ".join(f"{r.what}: {r.figure}" for r in first)
    return text if len(text) <= 170 else text[:169] + "…"


def print_table(reports: list[Report]) -> None:
    width = max(len(r.title) for r in reports)
    print()
    print(f"{'part'.ljust(width)}  verdict  seconds  figures")
    print(f"{'-' * width}  -------  -------  -------")
    for r in reports:
        print(f"{r.title.ljust(width)}  {r.verdict.ljust(7)}  {r.seconds:7.0f}  {_headline(r)}")
    for r in reports:
        failed = [row for row in r.rows if row.met is False]
        for row in failed:
            print(f"  FAIL {r.title}: {row.what}: {row.figure} (goal {row.goal})")
        if r.error:
            print(f"  ERROR {r.title}: {r.error[:1500]}")
    print()


def _commit() -> tuple[str, bool]:
    """The checked-out commit and whether tracked files differ from it."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return commit, bool(dirty)


def write_doc(
    reports: list[Report], started: datetime.datetime, total_s: float, quick: bool, meta: dict[str, Any] | None = None
) -> None:
    """`meta` (run.json) names the run's commit and any parts run again since."""
    meta = meta or {}
    commit, dirty = (meta["commit"], meta["dirty"]) if "commit" in meta else _commit()
    load = os.getloadavg()
    lines = [
        "# Reliability: what Stima survives, measured",
        "",
        "Written by `make reliability` (`python -m tests.reliability`) from one run"
        + (" and the parts run again after it (listed below, with why)" if meta.get("reruns") else "")
        + ": every figure below comes from that run, and the table it printed on the terminal is the summary "
        "here. Rerun it to check any of them; each part is bounded in time and says when it skipped something "
        "and why.",
        "",
        f"- run: {started:%Y-%m-%d %H:%M} UTC, {total_s / 60:.1f} minutes, commit {commit}"
        f"{' with local changes' if dirty else ''}{', QUICK (reduced counts)' if quick else ''}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores shared with other work (load average "
        f"{load[0]:.1f} at the end), Python {platform.python_version()}, {platform.platform(terse=True)},"
        f" running as {'root' if os.geteuid() == 0 else 'a normal user'}",
        "- medians are given where a figure varies from one repetition to the next",
    ]
    for rerun in meta.get("reruns", []):
        lines.append(
            f"- run again afterwards: {', '.join(rerun['parts'])} at {rerun['at'][:16].replace('T', ' ')} UTC"
            f" ({rerun['seconds'] / 60:.1f} minutes), commit {rerun['commit']}"
            f"{' with local changes' if rerun['dirty'] else ''}; {rerun['why']}"
        )
    lines += [
        "",
        "## Summary",
        "",
        "| part | verdict | time (s) | headline figures |",
        "| --- | --- | --- | --- |",
    ]
    for r in reports:
        lines.append(f"| [{r.title}](#{r.part}) | {r.verdict} | {r.seconds:.0f} | {_cell(_headline(r))} |")
    if NOT_MEASURED:
        lines += ["", "Not measured by this run:", ""] + [f"- {text}" for text in NOT_MEASURED]
    for r in reports:
        module = importlib.import_module(f"tests.reliability.part_{r.part}")
        lines += ["", f'<a id="{r.part}"></a>', f"## {r.title}", "", module.METHOD.strip(), ""]
        if r.skipped:
            lines += [f"**Skipped:** {r.skipped}", ""]
        if r.error:
            lines += ["**The part failed to run:**", "", "```", r.error.strip()[:3000], "```", ""]
        if r.rows:
            lines += ["| what | figure | goal | met |", "| --- | --- | --- | --- |"]
            for row in r.rows:
                met = "" if row.met is None else ("yes" if row.met else "**NO**")
                lines.append(f"| {_cell(row.what)} | {_cell(row.figure)} | {_cell(row.goal)} | {met} |")
            lines.append("")
        for note in r.notes:
            lines += [f"- {note}"]
        lines.append(
            f"\n_Time: {r.seconds:.0f} s (bound {importlib.import_module(f'tests.reliability.part_{r.part}').BUDGET_S} s)._"
        )
    DOC.write_text("\n".join(lines).rstrip() + "\n")


def _rerun_into(workdir: Path, parts: list[str], why: str) -> int:
    """Run `parts` again (same counts as the run) and put their reports in the finished run."""
    results = workdir / "results.json"
    meta = json.loads((workdir / "run.json").read_text())
    by_part = {r.part: r for r in (Report.from_json(j) for j in json.loads(results.read_text()))}
    at = datetime.datetime.now(datetime.timezone.utc)
    commit, dirty = _commit()
    t0 = time.monotonic()
    for name in parts:
        print(f"=== {name} (again) ...", flush=True)
        by_part[name] = report = _run_part(name, workdir, meta["quick"])
        print(f"=== {name}: {report.verdict} in {report.seconds:.0f} s — {_headline(report)}", flush=True)
    reports = [by_part[p] for p in PARTS if p in by_part]
    results.write_text(json.dumps([r.to_json() for r in reports], indent=1, default=str))
    meta.setdefault("reruns", []).append(
        {
            "parts": parts,
            "at": at.isoformat(),
            "seconds": time.monotonic() - t0,
            "commit": commit,
            "dirty": dirty,
            "why": why,
        }
    )
    (workdir / "run.json").write_text(json.dumps(meta))
    print_table(reports)
    write_doc(reports, datetime.datetime.fromisoformat(meta["started"]), meta["seconds"], meta["quick"], meta)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if all(r.verdict in (PASS, SKIPPED) for r in reports) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="make reliability")
    parser.add_argument("parts", nargs="*", help=f"parts to run (default: all of {', '.join(PARTS)})")
    parser.add_argument("--quick", action="store_true", help="reduced counts (for trying the harness)")
    parser.add_argument("--doc", action="store_true", help="write docs/reliability.md even for some parts")
    parser.add_argument("--workdir", default=str(ROOT / ".run" / "reliability"))
    parser.add_argument(
        "--doc-from",
        metavar="RESULTS",
        help="only write docs/reliability.md again from a finished run's results.json (its figures, unchanged)",
    )
    parser.add_argument(
        "--into",
        metavar="WORKDIR",
        help="run the given parts again and replace their reports "
        "in the finished run in WORKDIR (results.json, run.json), then write the document",
    )
    parser.add_argument("--why", default="", help="with --into: the reason, printed in the document")
    args = parser.parse_args()
    if args.doc_from:
        results = Path(args.doc_from)
        reports = [Report.from_json(r) for r in json.loads(results.read_text())]
        meta = json.loads((results.parent / "run.json").read_text())
        write_doc(reports, datetime.datetime.fromisoformat(meta["started"]), meta["seconds"], meta["quick"], meta)
        print_table(reports)
        return 0
    if args.into and not (args.parts and args.why):
        parser.error("--into needs the parts to run again and --why")
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    parts = args.parts or PARTS
    workdir = Path(args.into or args.workdir).resolve()  # the parts run tools in other directories
    workdir.mkdir(parents=True, exist_ok=True)
    if args.into:
        return _rerun_into(workdir, parts, args.why)
    started = datetime.datetime.now(datetime.timezone.utc)
    commit, dirty = _commit()
    t0 = time.monotonic()
    reports: list[Report] = []
    for name in parts:
        print(f"=== {name} ...", flush=True)
        report = _run_part(name, workdir, args.quick)
        reports.append(report)
        print(f"=== {name}: {report.verdict} in {report.seconds:.0f} s — {_headline(report)}", flush=True)
        (workdir / "results.json").write_text(json.dumps([r.to_json() for r in reports], indent=1, default=str))
    total = time.monotonic() - t0
    meta = {"started": started.isoformat(), "seconds": total, "quick": args.quick, "commit": commit, "dirty": dirty}
    (workdir / "run.json").write_text(json.dumps(meta))
    print_table(reports)
    if not args.parts or args.doc:
        write_doc(reports, started, total, args.quick, meta)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if all(r.verdict in (PASS, SKIPPED) for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
