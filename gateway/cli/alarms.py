"""`stima alarms` (the active alarms, acknowledge one) and `stima iec104 map` (the outstation's
information object addresses)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from gateway.cli import add_common, emit, runtime_dir, table
from gateway.control import call


def _rt(args: argparse.Namespace) -> Path:

    return runtime_dir(args)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:

    rows = call(_rt(args), "alarms.list")
    emit(
        args,
        rows,
        lambda rs: (
            table(
                [
                    (
                        r["id"],
                        r["severity"],
                        r["source"],
                        _when(r["raised"]),
                        "yes" if r["cleared"] else "no",
                        r["acknowledged_by"] or "no",
                        r["message"][:80],
                    )
                    for r in rs
                ],
                ["ID", "SEVERITY", "SOURCE", "RAISED", "CLEARED", "ACKNOWLEDGED", "MESSAGE"],
            )
            if rs
            else "no active alarms"
        ),
    )
    return 0


def cmd_ack(args: argparse.Namespace) -> int:

    alarm = call(_rt(args), "alarms.ack", id=args.id)
    emit(
        args,
        alarm,
        lambda a: (
            f"{a['id']} acknowledged by {a['acknowledged_by']}"
            + ("" if a["active"] else " (cleared: no longer active)")
        ),
    )
    return 0


def cmd_map(args: argparse.Namespace) -> int:

    rows = call(_rt(args), "iec104.map")
    emit(
        args,
        rows,
        lambda rs: table(
            [
                (r["ioa"], r["type"], r.get("point") or r.get("target"), r.get("setpoint") or "", r.get("deadband", ""))
                for r in rs
            ],
            ["IOA", "TYPE", "POINT / DEVICE", "SET-POINT", "DEADBAND"],
        ),
    )
    return 0


def register(sub: Any) -> None:

    alarms = sub.add_parser("alarms", help="active alarms (raised, not yet cleared and acknowledged); acknowledge")
    al = alarms.add_subparsers(dest="alarms_command", required=True, metavar="ACTION")
    p = al.add_parser("list", help="the active alarms")
    add_common(p)
    p.set_defaults(func=cmd_list)
    p = al.add_parser("ack", help="acknowledge an alarm (operator)")
    p.add_argument("id", metavar="ALARM")
    add_common(p)
    p.set_defaults(func=cmd_ack)
    iec = sub.add_parser("iec104", help="the IEC 60870-5-104 outstation")
    ic = iec.add_subparsers(dest="iec104_command", required=True, metavar="ACTION")
    p = ic.add_parser("map", help="every information object address: type, point or device, dead-band")
    add_common(p)
    p.set_defaults(func=cmd_map)
