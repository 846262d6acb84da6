"""`stima config`: site-file tools, offline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli import emit
from gateway.config import ConfigError
from gateway.site import load_site


def cmd_config_validate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        site = load_site(path)
    except ConfigError as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "valid": False,
                        "file": str(path),
                        "problems": [{"path": p.path, "message": p.message, "found": p.found} for p in exc.problems],
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            print(f"{path}: INVALID, {len(exc.problems)} problem(s):", file=sys.stderr)
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
        return 1
    summary = {
        "valid": True,
        "file": str(path),
        "substation_id": site.site.substation_id,
        "ieds": len(site.ieds),
        "points": sum(len(i.points) for i in site.ieds),
        "agents": len(site.agents),
        "meters": sum(g.count for g in site.meter_groups),
        "protection_schemes": len(site.protection),
        "uplink": f"{site.uplink.transport}://{site.uplink.broker_host}:{site.uplink.broker_port}",
    }
    emit(
        args,
        summary,
        lambda s: (
            f"{path}: valid — substation {s['substation_id']}, {s['ieds']} IEDs, "
            f"{s['points']} points, {s['agents']} agents, {s['meters']} meters, "
            f"{s['protection_schemes']} protection schemes, uplink {s['uplink']}"
        ),
    )
    if site.uplink.transport == "tcp":
        print("warning: uplink.transport is 'tcp': telemetry and commands travel unencrypted", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    config = sub.add_parser("config", help="site-file tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    validate = config_sub.add_parser("validate", help="check a site file and report every problem")
    validate.add_argument("file", help="site file (TOML)")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(func=cmd_config_validate)
