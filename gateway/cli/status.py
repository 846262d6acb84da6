"""`stima status`, `points`, `breaker`, `events`: the running daemon, over its control socket."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from gateway.cli import add_common, duration_s, emit, fmt, runtime_dir, table, when
from gateway.cli.commissioning import register_events_export
from gateway.control import call, stream


def _human_status(s: dict[str, Any]) -> str:
    up = s["uplink"]
    lines = [
        f"Stima gateway {s['version']} — substation {s['substation_id']} ({s['region']}), pid {s['pid']}",
        f"state: {s['state']}, up {s['uptime_s']:.0f} s, config {s['config']}, reloads {s['reloads']}"
        f" (refused {s['reload_failures']})",
        f"uplink: {up.get('state')} to {up.get('endpoint', '?')}, published {up.get('published', 0)}, "
        f"acked {up.get('acked', 0)}, spool depth {up.get('spool_depth', 0)}",
        f"points: {s['points']['total']} total — good {s['points']['good']}, "
        f"invalid {s['points']['invalid']}, questionable {s['points']['questionable']}",
        "",
        table(
            [
                (
                    i["ied"],
                    i["protocol"],
                    i["endpoint"],
                    i["state"],
                    when(i["last_poll_time"]),
                    when(i["last_ok_time"]),
                    i["polls"],
                    i["poll_errors"],
                    i["last_error"][:40],
                )
                for i in s["ieds"]
            ],
            ["IED", "PROTOCOL", "ENDPOINT", "STATE", "LAST POLL", "LAST OK", "POLLS", "ERRORS", "LAST ERROR"],
        ),
    ]
    if s.get("protection"):
        lines += ["", f"protection backend: {s['protection'].get('backend')}"]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    emit(args, call(runtime_dir(args), "status"), _human_status)
    return 0


def _points_table(points: list[dict[str, Any]]) -> str:
    rows = [
        (
            p["id"],
            fmt(p["value"]),
            p["unit"],
            p["quality"] + ("" if p["reason"] == "none" else f"({p['reason']})"),
            when(p["receive_time"]),
            p["source"],
        )
        for p in points
    ]
    return table(rows, ["POINT", "VALUE", "UNIT", "QUALITY", "RECEIVED", "SOURCE"])


def cmd_points_list(args: argparse.Namespace) -> int:
    emit(args, call(runtime_dir(args), "points.list", pattern=args.pattern, source=args.source), _points_table)
    return 0


def cmd_points_read(args: argparse.Namespace) -> int:
    emit(args, call(runtime_dir(args), "points.read", ids=args.ids), _points_table)
    return 0


def cmd_points_watch(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.duration if args.duration else None
    count = 0
    try:
        for point in stream(runtime_dir(args), "points.watch", pattern=args.pattern):
            if args.json:
                print(json.dumps(point, default=str), flush=True)
            else:
                q = point["quality"] + ("" if point["reason"] == "none" else f"({point['reason']})")
                print(
                    f"{when(point['receive_time'])}  {point['id']:<32} {fmt(point['value']):>12} "
                    f"{point['unit']:<6} {q}",
                    flush=True,
                )
            count += 1
            if (args.count and count >= args.count) or (deadline and time.monotonic() > deadline):
                break
    except KeyboardInterrupt:
        pass
    return 0


def _breaker_lines(s: dict[str, Any]) -> list[str]:
    prot = s.get("protection") or {}
    lines = [
        f"{s.get('function', 'device')} {s['device']}: {str(s.get('position', 'unknown')).upper()}"
        + (" (LOCAL control)" if s.get("local") else "")
        + (f", {s['current_a']:.0f} A" if isinstance(s.get("current_a"), int | float) else ""),
        f"  agent state: {s.get('agent_state') or '-'}",
    ]
    if s.get("fpi"):
        lines.append("  fault-passage indicator: LATCHED")
    if prot:
        lines.append(
            f"  protection: reclose {prot.get('reclose_state')}, shot {prot.get('shot')}/{prot.get('shots')}"
            + (", LOCKED OUT" if prot.get("locked_out") else "")
            + (f", picked up {', '.join(prot['pickups'])}" if prot.get("pickups") else "")
        )
    for tag in s.get("tags") or []:
        lines.append(f"  TAGGED by {tag['who']}: {tag['reason']}")
    if s.get("selected_by"):
        lines.append(f"  selected by {s['selected_by']} for another {s.get('select_expires_in_s')} s")
    return lines


def cmd_breaker_status(args: argparse.Namespace) -> int:
    emit(args, call(runtime_dir(args), "breaker.status", breaker=args.breaker), lambda s: "\n".join(_breaker_lines(s)))
    return 0


def cmd_breaker_operate(args: argparse.Namespace) -> int:
    """Select, confirm, operate: the same switching authority SCADA goes through."""
    rt, action = runtime_dir(args), args.breaker_command
    if not args.yes and not sys.stdin.isatty():
        print(
            "stima: refusing to operate a switching device without confirmation: no terminal to ask on; "
            "pass --yes to confirm",
            file=sys.stderr,
        )
        return 1
    if (args.authorised or args.override) and not args.reason:
        print(
            "stima: an authorised close or an override needs --reason (it is recorded with your role)", file=sys.stderr
        )
        return 2
    extra: dict[str, Any] = {"authorised": args.authorised}
    if args.reason:
        extra["reason"] = args.reason
    if args.override:
        extra["override"] = list(args.override)
    selected = call(rt, "breaker.select", breaker=args.breaker, action=action, **extra)
    select_id = selected["select_id"]
    if not args.yes:
        print("\n".join(_breaker_lines(selected["state"])))
        print(f"selected {args.breaker} for {action} (select {select_id}, expires in {selected['expires_in_s']:g} s)")
        try:
            answer = input(f"{action.upper()} {args.breaker}{' (authorised)' if args.authorised else ''}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            call(rt, "breaker.cancel", select_id=select_id)
            print("cancelled; the device was not operated", file=sys.stderr)
            return 1
    done = call(rt, "breaker.operate_selected", breaker=args.breaker, action=action, select_id=select_id, **extra)
    over = ", ".join(o["interlock"] for o in done.get("overridden", []))
    emit(
        args,
        done,
        lambda d: (
            f"{action} of {args.breaker} accepted (select {select_id}, operation {d.get('op_id')})"
            + (f"; overridden: {over}" if over else "")
            + "; now "
            + str(d["state"].get("position"))
        ),
    )
    return 0


def _history_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no history in that period (buckets are written when their interval ends)"
    return table(
        [
            (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["bucket_start"])),
                r["min"],
                r["max"],
                r["mean"],
                r["last"],
                r["n"],
                f"{100.0 * r['good_fraction']:.0f}",
            )
            for r in rows
        ],
        ["TIME", "MIN", "MAX", "MEAN", "LAST", "N", "GOOD%"],
    )


def cmd_points_history(args: argparse.Namespace) -> int:
    """Downsampled history of one point: min/max/mean/last per interval."""
    rows = call(runtime_dir(args), "points.history", id=args.id, since=time.time() - args.since, limit=args.limit)
    emit(args, rows, _history_table)
    return 0


def _event_detail(event: dict[str, Any]) -> str:
    skip = {"seq", "time", "source", "kind", "monotonic"}
    return " ".join(
        f"{k}={fmt(v)}" for k, v in event.items() if k not in skip and v not in (None, "") and v != event.get("source")
    )


def cmd_events(args: argparse.Namespace) -> int:
    """The daemon's event log: protection operations, agent transitions, commands, alarms."""
    since = time.time() - args.since
    events = call(runtime_dir(args), "events", since=since, source=args.source, limit=args.limit)
    if args.kind:
        events = [e for e in events if str(e.get("kind", "")).startswith(args.kind)]
    emit(
        args,
        events,
        lambda ev: (
            table(
                [(when(e.get("time")), e.get("source"), e.get("kind"), _event_detail(e)) for e in ev],
                ["TIME", "SOURCE", "KIND", "DETAIL"],
            )
            if ev
            else "no events in that period"
        ),
    )
    return 0


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="daemon, IED, point-quality and uplink status")
    add_common(status)
    status.set_defaults(func=cmd_status)

    points = sub.add_parser("points", help="read the process image")
    points_sub = points.add_subparsers(dest="points_command", required=True, metavar="ACTION")
    plist = points_sub.add_parser("list", help="every point (optionally matching a glob)")
    plist.add_argument("pattern", nargs="?", default="*", help="glob on point ids, e.g. 'CB-045.*'")
    plist.add_argument("--source", help="only points of this IED")
    add_common(plist)
    plist.set_defaults(func=cmd_points_list)
    pread = points_sub.add_parser("read", help="the current value and quality of given points")
    pread.add_argument("ids", nargs="+", metavar="POINT")
    add_common(pread)
    pread.set_defaults(func=cmd_points_read)
    pwatch = points_sub.add_parser("watch", help="follow point changes live (Ctrl-C to stop)")
    pwatch.add_argument("pattern", nargs="?", default="*")
    pwatch.add_argument("--count", type=int, default=0, help="stop after this many updates")
    pwatch.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    add_common(pwatch)
    pwatch.set_defaults(func=cmd_points_watch)
    phist = points_sub.add_parser("history", help="downsampled history of a point (min/max/mean per interval)")
    phist.add_argument("id", metavar="POINT")
    phist.add_argument("--since", type=duration_s, default=86400.0, help="how far back (90s, 15m, 2h, 1d; 24h)")
    phist.add_argument("--limit", type=int, default=10_000, help="at most this many buckets (the newest)")
    add_common(phist)
    phist.set_defaults(func=cmd_points_history)

    brk = sub.add_parser("breaker", help="operate a breaker or switch (select, confirm, operate) or show its state")
    brk_sub = brk.add_subparsers(dest="breaker_command", required=True, metavar="ACTION")
    for action in ("open", "close"):
        op = brk_sub.add_parser(
            action, help=f"{action} a switching device through the switching authority, select before operate"
        )
        op.add_argument("breaker", metavar="DEVICE", help="breaker, recloser or switch id, e.g. CB-045")
        op.add_argument(
            "--authorised", action="store_true", help="authorised close: re-arms a locked-out breaker (needs --reason)"
        )
        op.add_argument(
            "--override",
            action="append",
            metavar="INTERLOCK",
            help="override this interlock row (repeatable; needs --reason and the row's role)",
        )
        op.add_argument("--reason", help="why the authorised close or override is made (recorded)")
        op.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        add_common(op)
        op.set_defaults(func=cmd_breaker_operate)
    bstat = brk_sub.add_parser("status", help="position, indicator, protection state, tags and selection")
    bstat.add_argument("breaker", metavar="BREAKER")
    add_common(bstat)
    bstat.set_defaults(func=cmd_breaker_status)

    events = sub.add_parser("events", help="the event log: protection, agent transitions, commands")
    events.add_argument(
        "--since",
        type=duration_s,
        default=3600.0,
        metavar="DURATION",
        help="how far back: 90s, 15m, 2h, 1d (default 1h)",
    )
    events.add_argument("--source", help="only events of this element, e.g. CB-045")
    events.add_argument("--kind", help="only kinds starting with this, e.g. protection. or command.")
    events.add_argument("--limit", type=int, default=200, help="at most this many, newest kept (default 200)")
    add_common(events)
    events.set_defaults(func=cmd_events)
    register_events_export(events.add_subparsers(dest="events_command", metavar="ACTION"))
