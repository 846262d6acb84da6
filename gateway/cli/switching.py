"""`stima switching`, `stima faults` and `stima tag`: sequences, fault records and tags, as the
daemon's switching authority holds them."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from gateway.cli import add_common, emit, runtime_dir
from gateway.control import call


def _rt(args: argparse.Namespace) -> Path:

    return runtime_dir(args)


def _emit(args: argparse.Namespace, data: Any, human: Any) -> None:

    emit(args, data, human)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _sequence_lines(seq: dict[str, Any]) -> list[str]:
    lines = [
        f"{seq['id']}  {seq['status'].upper()}  {seq['name']}",
        f"  source {seq['source']}, created {_when(seq.get('created'))} by {seq.get('created_by')}"
        + (f", approved by {seq['approved_by']}" if seq.get("approved_by") else ""),
    ]
    results = {r["step"]: r for r in seq.get("results", [])}
    for n, step in enumerate(seq["steps"]):
        r = results.get(n)
        mark = "-" if r is None else ("ok" if r["ok"] else "FAILED")
        detail = "" if r is None else f"  {r['message']}" + (f" ({r['elapsed_s']} s)" if r.get("elapsed_s") else "")
        lines.append(
            f"  {n + 1:>2}. {step['action']:<5} {step['device']:<14} {mark:<6} {step.get('purpose', '')}{detail}"
        )
    for problem in seq.get("validation", []):
        lines.append(f"  invalid: {problem}")
    plan = seq.get("plan") or {}
    if plan:
        lines.append(
            f"  customers: {plan.get('customers_interrupted')} interrupted, "
            f"{plan.get('customers_restored')} restored, {plan.get('customers_left_out')} left out"
            + (
                f"; fault located in {', '.join(plan.get('located_zone', []))} by {plan.get('located_by')}"
                if plan.get("located_zone")
                else ""
            )
        )
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    _emit(
        args,
        call(_rt(args), "switching.list"),
        lambda rows: (
            "\n".join(
                f"{s['id']:<16} {s['status']:<9} {s['source']:<8} {len(s['steps']):>3} steps  {s['name']}" for s in rows
            )
            or "no switching sequences"
        ),
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _emit(args, call(_rt(args), "switching.show", id=args.id), lambda s: "\n".join(_sequence_lines(s)))
    return 0


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"stima: cannot read {path}: {exc}") from None


def cmd_validate(args: argparse.Namespace) -> int:
    result = call(_rt(args), "switching.validate", text=_read(args.file), name=args.file)
    _emit(
        args,
        result,
        lambda r: (
            f"{r['name']}: "
            + ("valid against the plant as it is now" if r["valid"] else "NOT valid:\n  " + "\n  ".join(r["problems"]))
        ),
    )
    return 0 if result["valid"] else 1


def cmd_submit(args: argparse.Namespace) -> int:
    run = args.switching_command == "run"
    if run and not args.yes and not sys.stdin.isatty():
        print(
            "stima: refusing to run a switching sequence without confirmation: no terminal to ask on; "
            "pass --yes to confirm",
            file=sys.stderr,
        )
        return 1
    text = _read(args.file)
    seq = call(_rt(args), "switching.submit", text=text, name=args.file, run=False)
    if seq["status"] == "invalid":
        _emit(args, seq, lambda s: "\n".join(_sequence_lines(s)))
        return 1
    if run:
        if not args.yes:
            print("\n".join(_sequence_lines(seq)))
            try:
                answer = input(f"run {seq['id']} ({len(seq['steps'])} steps)? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                call(_rt(args), "switching.abort", id=seq["id"])
                print("not run; the sequence is aborted", file=sys.stderr)
                return 1
        seq = call(_rt(args), "switching.approve", id=seq["id"])
    _emit(args, seq, lambda s: "\n".join(_sequence_lines(s)))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    _emit(args, call(_rt(args), "switching.approve", id=args.id), lambda s: "\n".join(_sequence_lines(s)))
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    _emit(args, call(_rt(args), "switching.abort", id=args.id), lambda s: "\n".join(_sequence_lines(s)))
    return 0


def cmd_network(args: argparse.Namespace) -> int:
    def human(net: dict[str, Any]) -> str:
        lines = ["sections:"]
        for s in net["sections"]:
            lines.append(
                f"  {s['id']:<12} {s['from_m']:>7.0f}-{s['to_m']:<7.0f} m  {s['customers']:>6} customers  "
                f"{', '.join(s['elements'])}"
            )
        lines.append("devices:")
        for d in net["devices"]:
            lines.append(
                f"  {d['id']:<14} {d['function']:<18} {d['between'][0]} - {d['between'][1]}"
                + ("  (tie, normally open)" if d["tie"] and d["normally_open"] else "")
            )
        return "\n".join(lines)

    _emit(args, call(_rt(args), "switching.network"), human)
    return 0


def cmd_faults_list(args: argparse.Namespace) -> int:
    def human(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no fault records"
        return "\n".join(
            f"{r['id']:<22} {r['status']:<9} {r['breaker']:<8} {r['element']:<5} {r['current_a']:>7.0f} A  "
            f"{_when(r['started_wall'])}  zone {', '.join(r['zone'])}"
            for r in rows
        )

    _emit(args, call(_rt(args), "faults.list"), human)
    return 0


def cmd_faults_clear(args: argparse.Namespace) -> int:
    _emit(
        args,
        call(_rt(args), "faults.clear", id=args.id, reason=args.reason),
        lambda r: f"fault {r['id']} cleared by {r['cleared_by']}: {r['cleared_reason']}",
    )
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    op = "tags.add" if args.tag_command == "add" else "tags.remove"
    _emit(
        args,
        call(_rt(args), op, target=args.target, reason=args.reason),
        lambda r: (
            f"{r['target']} tagged by {r['who']}: {r['reason']}"
            if "who" in r
            else f"{r['removed']} tag(s) removed from {r['target']}"
        ),
    )
    return 0


def register(sub: Any) -> None:

    sw = sub.add_parser("switching", help="switching sequences: list, show, validate, run, approve, abort")
    sw_sub = sw.add_subparsers(dest="switching_command", required=True, metavar="ACTION")
    p = sw_sub.add_parser("list", help="sequences the daemon holds (FLISR plans and operators' sequences)")
    add_common(p)
    p.set_defaults(func=cmd_list)
    p = sw_sub.add_parser("show", help="one sequence: steps, results, validation, plan")
    p.add_argument("id", metavar="SEQUENCE")
    add_common(p)
    p.set_defaults(func=cmd_show)
    p = sw_sub.add_parser("validate", help="check a sequence file (TOML or JSON) against the plant as it is now")
    p.add_argument("file", metavar="FILE", help="sequence file, or - for standard input")
    add_common(p)
    p.set_defaults(func=cmd_validate)
    for name, text in (
        ("submit", "validate a sequence file and keep it as proposed (run it later with approve)"),
        ("run", "validate a sequence file and run it, select-before-operate on each step"),
    ):
        p = sw_sub.add_parser(name, help=text)
        p.add_argument("file", metavar="FILE")
        p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        add_common(p)
        p.set_defaults(func=cmd_submit)
    p = sw_sub.add_parser("approve", help="run a proposed sequence (a FLISR plan in advisory mode)")
    p.add_argument("id", metavar="SEQUENCE")
    add_common(p)
    p.set_defaults(func=cmd_approve)
    p = sw_sub.add_parser("abort", help="stop a running sequence (nothing further is operated) or drop a proposal")
    p.add_argument("id", metavar="SEQUENCE")
    add_common(p)
    p.set_defaults(func=cmd_abort)
    p = sw_sub.add_parser("network", help="the feeder sections and switching devices the daemon works with")
    add_common(p)
    p.set_defaults(func=cmd_network)

    faults = sub.add_parser("faults", help="fault records: list, clear (the crew repaired it)")
    f_sub = faults.add_subparsers(dest="faults_command", required=True, metavar="ACTION")
    p = f_sub.add_parser("list", help="every fault record, active and ended")
    add_common(p)
    p.set_defaults(func=cmd_faults_list)
    p = f_sub.add_parser("clear", help="declare a fault repaired, so closes onto its zone are allowed again")
    p.add_argument("id", metavar="FAULT")
    p.add_argument("--reason", required=True, help="what the crew found and did")
    add_common(p)
    p.set_defaults(func=cmd_faults_clear)

    tag = sub.add_parser("tag", help="do-not-operate tags on devices and agents")
    t_sub = tag.add_subparsers(dest="tag_command", required=True, metavar="ACTION")
    for name in ("add", "remove"):
        p = t_sub.add_parser(name, help=f"{name} a tag")
        p.add_argument("target", metavar="DEVICE")
        p.add_argument("--reason", required=True, help="who is working on what" if name == "add" else "why")
        add_common(p)
        p.set_defaults(func=cmd_tag)
