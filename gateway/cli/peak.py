"""`stima peak` and `stima transfer`: the substation's peak management and its load-transfer
exchanges with the neighbouring substations, as the daemon holds them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli import add_common, emit, runtime_dir
from gateway.control import call


def _rt(args: argparse.Namespace) -> Path:

    return runtime_dir(args)


def _emit(args: argparse.Namespace, data: Any, human: Any) -> None:

    emit(args, data, human)


def _peak_lines(p: dict[str, Any] | None) -> str:
    if p is None:
        return "peak management is off ([peak] enabled = false)"
    lines = [
        f"phase {p['phase']}  load {p.get('load_percent')} % of {p['capacity_kva'] / 1000:.1f} MVA "
        f"({p['basis']} power), target {p['target_percent']:g} %",
        f"forecast peak {p.get('forecast_peak_kw')} kW"
        + (f", {p['peak_before_percent']} % when acting began" if p.get("peak_before_percent") else "")
        + (f"; now acting: {p['current']}" if p.get("current") else ""),
    ]
    for name, c in p.get("contributions", {}).items():
        why = p.get("skipped", {}).get(name)
        lines.append(
            f"  {name:<16} {c['mw']:>7.3f} MW {c['mvar']:>7.3f} Mvar  pf {c['pf_before']:.3f} → "
            f"{c['pf_after']:.3f}" + (f"  (nothing: {why})" if why else "")
        )
    if p.get("customers_shed"):
        lines.append(f"  customers shed: {p['customers_shed']} ({', '.join(p.get('shed_breakers', []))})")
    for row in p.get("timeline", [])[-10:]:
        lines.append(f"  · {row['text']}")
    dr = p.get("demand_response") or {}
    for ev in dr.get("events", [])[-10:]:
        lines.append(
            f"  DR {ev['event_id']} {ev['program']} → {ev['group']}: {ev['accepted']} accepted, "
            f"{ev['non_responders']} silent, {ev['critical']} critical"
            + (f", {ev['reduced_kwh']} kWh, credits {ev['credits_total']}" if ev.get("ended_at") else "")
            + (f"  ({ev['error']})" if ev.get("error") else "")
        )
    return "\n".join(lines)


def _transfer_lines(t: dict[str, Any] | None) -> str:
    if t is None:
        return "no load transfer with neighbours (no external tie, or no neighbour key in [coordination])"
    lines = [
        f"tie {tie}: to {i['neighbour']}" + (" (operated here)" if i["owned"] else "") for tie, i in t["ties"].items()
    ]
    for ex in t["exchanges"]:
        lines.append(
            f"  {ex['xid']} {ex['role']:<9} {ex['phase']:<12} {ex['tie']} part {ex['part']} "
            f"{ex['load_kw']:.0f} kW" + (f"  {ex['reason']}" if ex.get("reason") else "")
        )
    quotes = t.get("quotes") or {}
    for q in quotes.get("asked", []):
        lines.append(
            f"  quote {q['xid']} asked of {q['neighbour']} through {q['tie']}: {q['kva_asked']:.0f} kVA, waiting"
        )
    for q in quotes.get("answered", []):
        got = f"{q['kva']:.0f} kVA" if q["kva"] is not None else "none"
        lines.append(f"  quote {q['xid']} from {q['by'] or q['neighbour']} through {q['tie']}: {got}  {q['note']}")
    if quotes:
        lines.append(
            f"quotes for neighbours: {quotes['quoted_for_neighbours']} given, {quotes['refused_to_neighbours']} refused"
        )
    lines.append(f"messages dropped: {t['dropped']}")
    return "\n".join(lines)


def cmd_peak(args: argparse.Namespace) -> int:
    _emit(args, call(_rt(args), "peak.status"), _peak_lines)
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    _emit(args, call(_rt(args), "transfer.status"), _transfer_lines)
    return 0


def cmd_transfer_request(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "stima: refusing to start a load transfer without confirmation: no terminal to ask on; "
                "pass --yes to confirm",
                file=sys.stderr,
            )
            return 1
        try:
            answer = input(
                f"ask the neighbour beyond {args.tie} to take the part beyond {args.part}? {args.part} "
                "opens before the tie closes (a short break for its customers) [y/N] "
            )
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("not requested", file=sys.stderr)
            return 1
    result = call(
        _rt(args), "transfer.request", tie=args.tie, part=args.part, load_kw=args.load_kw, window_s=args.window_s
    )
    _emit(
        args,
        result,
        lambda r: (
            f"exchange {r['xid']}: {r['load_kw']} kW through {r['tie']} beyond {r['part']} "
            "requested; follow it with `stima transfer status`"
        ),
    )
    return 0


def register(sub: Any) -> None:

    p = sub.add_parser("peak", help="peak management: phase, forecast, each action's contribution, DR events")
    p_sub = p.add_subparsers(dest="peak_command", required=True, metavar="ACTION")
    s = p_sub.add_parser("status", help="the peak manager now")
    add_common(s)
    s.set_defaults(func=cmd_peak)
    t = sub.add_parser("transfer", help="load-transfer exchanges with neighbouring substations")
    t_sub = t.add_subparsers(dest="transfer_command", required=True, metavar="ACTION")
    s = t_sub.add_parser("status", help="ties to neighbours and every exchange")
    add_common(s)
    s.set_defaults(func=cmd_transfer)
    s = t_sub.add_parser("request", help="ask the neighbour beyond a tie to take the part beyond a switch")
    s.add_argument("tie", metavar="TIE")
    s.add_argument("part", metavar="SWITCH", help="this substation's switch whose far side is transferred")
    s.add_argument("--load-kw", type=float, default=None, help="load to ask for (default: the part's measured load)")
    s.add_argument("--window-s", type=float, default=3600.0, help="how long the neighbour is asked to carry it")
    s.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    add_common(s)
    s.set_defaults(func=cmd_transfer_request)
