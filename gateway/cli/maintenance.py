"""`stima maintenance` (work orders, health evaluations) and `stima history import`."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from gateway.cli import add_common, emit, runtime_dir
from gateway.control import call


def _rt(args: argparse.Namespace) -> Path:

    return runtime_dir(args)


def _emit(args: argparse.Namespace, data: Any, human: Any) -> None:

    emit(args, data, human)


def _order_lines(wo: dict[str, Any]) -> list[str]:
    a = wo.get("assessment") or {}
    p = a.get("failure_probability")
    lines = [
        f"{wo['id']}  {wo['status'].upper()}  {wo['priority']}  {wo['asset']}: {wo['reason']}",
        f"  window {wo['window'].get('label')} ({wo['duration_h']:g} h)"
        + (
            f"; {p:.0%} chance of failure within {a.get('horizon_days')} days, {a.get('failure_mode')}"
            if p is not None
            else ""
        ),
    ]
    lines += [f"  why this window: {r}" for r in wo["window"].get("reasons", [])]
    lines.append("  tasks: " + "; ".join(wo["tasks"]))
    lines.append("  parts: " + "; ".join(f"{x['item']} {x['quantity']:g} {x['unit']}" for x in wo["parts"]))
    lines.append(f"  crew: {wo['crew']} ({wo['crew_skill']})")
    lines.append("  success: " + "; ".join(wo["success_criteria"]))
    for plan in wo.get("plans", []):
        mark = "*" if plan["plan"] == wo.get("recommended_plan") else " "
        lines.append(
            f" {mark}plan {plan['plan']}: {plan['mva_covered']:.2f} of {plan['required_mva']:.2f} MVA, "
            f"{plan['customers_restored']}/{plan['customers_total']} customers "
            f"({plan['critical_restored']}/{plan['critical_total']} critical), {plan['customers_shed']} shed, "
            f"{len(plan['steps'])} steps ~{plan['switching_time_min']:g} min, "
            f"{'validated' if plan['validated'] else 'NOT valid'}"
        )
    chosen = next((pl for pl in wo.get("plans", []) if pl["plan"] == wo.get("recommended_plan")), None)
    if chosen and chosen.get("steps"):
        lines.append(
            f"  plan {chosen['plan']} steps: " + ", ".join(f"{st['action']} {st['device']}" for st in chosen["steps"])
        )
    if chosen and chosen.get("return_steps"):
        lines.append(
            "  way back after the window"
            + (
                " (validated): "
                if chosen.get("return_validated")
                else f" (NOT valid: {'; '.join(chosen.get('return_validation', [])[:2])}): "
            )
            + ", ".join(f"{st['action']} {st['device']}" for st in chosen["return_steps"])
        )
    if wo.get("backup_sequence"):
        lines.append(f"  switching sequence proposed: {wo['backup_sequence']} (stima switching approve ...)")
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    _emit(
        args,
        call(_rt(args), "maintenance.list"),
        lambda rows: (
            "\n".join(
                f"{w['id']:<22} {w['status']:<9} {w['priority']:<8} {w['asset']:<10} {w['window'].get('label', '')}"
                for w in rows
            )
            or "no work orders"
        ),
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _emit(args, call(_rt(args), "maintenance.show", id=args.id), lambda w: "\n".join(_order_lines(w)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = call(_rt(args), "maintenance.evaluate", timeout=120, transformer=args.transformer)

    def human(rows: list[dict[str, Any]]) -> str:
        out = []
        for r in rows:
            p = r.get("prediction") or {}
            out.append(
                f"{r['transformer']}: {p.get('probability', 0):.1%} within {p.get('horizon_days')} days "
                f"({p.get('failure_mode')}), evaluated in {r['seconds']} s"
            )
        return "\n".join(out) or "no monitored transformer"

    _emit(args, result, human)
    return 0


def cmd_accept(args: argparse.Namespace) -> int:
    _emit(
        args,
        call(_rt(args), "maintenance.accept", id=args.id, external_id=args.external_id),
        lambda w: f"{w['id']} {w['status']}",
    )
    return 0


def cmd_reschedule(args: argparse.Namespace) -> int:
    try:
        start = dt.datetime.fromisoformat(args.start)
    except ValueError:
        raise SystemExit(
            f"stima: --start: expected an ISO date and time (2025-10-26T02:00+03:00), found {args.start!r}"
        ) from None
    if start.tzinfo is None:
        raise SystemExit("stima: --start: give the time zone (2025-10-26T02:00+03:00)")
    _emit(
        args,
        call(_rt(args), "maintenance.reschedule", id=args.id, start=start.timestamp()),
        lambda w: f"{w['id']} {w['status']}: {w['window'].get('label')}",
    )
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    _emit(args, call(_rt(args), "maintenance.close", id=args.id, note=args.note), lambda w: f"{w['id']} {w['status']}")
    return 0


def cmd_history_import(args: argparse.Namespace) -> int:
    path = Path(args.file).resolve()
    _emit(
        args,
        call(_rt(args), "history.import", timeout=300, path=str(path)),
        lambda r: f"{r['rows']} rows of {len(r['points'])} point(s) imported",
    )
    return 0


def register(sub: Any) -> None:

    m = sub.add_parser(
        "maintenance", help="work orders from the transformers' health: list, show, evaluate, accept, reschedule, close"
    )
    m_sub = m.add_subparsers(dest="maintenance_command", required=True, metavar="ACTION")
    p = m_sub.add_parser("list", help="every work order")
    add_common(p)
    p.set_defaults(func=cmd_list)
    p = m_sub.add_parser("show", help="one work order: window and why, tasks, parts, plans A/B/C, notices")
    p.add_argument("id", metavar="WORK_ORDER")
    add_common(p)
    p.set_defaults(func=cmd_show)
    p = m_sub.add_parser("evaluate", help="compute the monitored transformers' health now (operator)")
    p.add_argument("transformer", nargs="?", default=None)
    add_common(p)
    p.set_defaults(func=cmd_evaluate)
    p = m_sub.add_parser("accept", help="accept a work order (as the asset system would)")
    p.add_argument("id", metavar="WORK_ORDER")
    p.add_argument("--external-id", default=None, help="the asset system's own work order number")
    add_common(p)
    p.set_defaults(func=cmd_accept)
    p = m_sub.add_parser("reschedule", help="move a work order's window (plans and notices are made again)")
    p.add_argument("id", metavar="WORK_ORDER")
    p.add_argument("--start", required=True, help="new start, ISO with its time zone: 2025-11-02T02:00+03:00")
    add_common(p)
    p.set_defaults(func=cmd_reschedule)
    p = m_sub.add_parser("close", help="close a work order (the work is done, or it is cancelled)")
    p.add_argument("id", metavar="WORK_ORDER")
    p.add_argument("--note", default="", help="what was done")
    add_common(p)
    p.set_defaults(func=cmd_close)

    h = sub.add_parser("history", help="the point history: import another historian's export")
    h_sub = h.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    p = h_sub.add_parser(
        "import",
        help="a CSV file (point_id, bucket_start, interval_s, mean[, min, max, last, n]) into the history (engineer)",
    )
    p.add_argument("file", metavar="FILE")
    add_common(p)
    p.set_defaults(func=cmd_history_import)
