"""`stima agents list|show|request` and `stima reliability`: the agents as the daemon sees them;
`stima agents types|diagram`: the agent types as the registry declares them (offline)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.agents.spec import AgentSpec


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, now: float | None = None) -> float:
    """POSIX seconds, an ISO 8601 date/time (UTC unless it says otherwise), or an age like '24h', '7d'."""
    now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use POSIX seconds, ISO 8601 (2026-11-24T08:00) or an age such as 24h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _since(row: dict[str, Any]) -> str:
    if row.get("since_wall") is not None:
        return _when(row["since_wall"])
    return "-" if row.get("since") is None else f"t={row['since']:.1f}"


def _human_list(rows: list[dict[str, Any]]) -> str:
    from gateway.cli import table

    out = []
    for r in rows:
        state = r["state"]
        if r.get("states"):
            state = ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items(), key=lambda kv: -kv[1]))
        out.append((r["id"], r["type"], state, _since(r)))
    return table(out, ["AGENT", "TYPE", "STATE", "SINCE"])


_TIME_KEYS = ("last_trip_date", "last_switched", "overload_since", "last_reading_date")


def _value(v: Any, key: str = "") -> str:
    if key in _TIME_KEYS and isinstance(v, int | float) and v > 1e9:
        return _when(float(v))
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | dict):
        return json.dumps(v, default=str)
    return "-" if v is None else str(v)


def _human_show(d: dict[str, Any]) -> str:
    from gateway.cli import table

    lines = [f"{d['id']} ({d['type']})"]
    if "state" in d:
        lines.append(f"state: {d['state']} since {_since(d)}")
    if "states" in d:
        lines.append("meters: " + ", ".join(f"{k} {v}" for k, v in d["states"].items()))
    attrs = d.get("attributes") or {k: v for k, v in d.items() if k not in ("id", "type", "state", "since")}
    if attrs:
        lines += ["", table([(k, _value(v, k)) for k, v in attrs.items()], ["ATTRIBUTE", "VALUE"])]
    if d.get("links"):
        lines += ["", table([(k, _value(v)) for k, v in d["links"].items()], ["LINK", "ELEMENTS"])]
    transitions = d.get("last_transitions") or []
    if transitions:
        offset = d.get("wall_offset")
        rows = [
            (_when(t["time"] + offset) if offset is not None else f"t={t['time']:.1f}", t["old"], t["new"], t["cause"])
            for t in transitions
        ]
        lines += ["", "last transitions:", table(rows, ["TIME", "FROM", "TO", "CAUSE"])]
    return "\n".join(lines)


def _human_reliability(r: dict[str, Any]) -> str:
    from gateway.cli import table

    rows = [
        ("period", f"{_when(r.get('since_wall', r['since']))} .. {_when(r.get('until_wall', r['until']))}"),
        ("customers served", r["customers_served"]),
        ("sustained interruptions", r["sustained_interruptions"]),
        (
            "momentary interruptions",
            f"{r['momentary_interruptions']} (restored within {r['momentary_threshold_s']:.0f} s)",
        ),
        ("SAIFI", f"{r['saifi']:.4f} interruptions/customer"),
        ("SAIDI", f"{r['saidi_min']:.2f} min/customer"),
        ("CAIDI", f"{r['caidi_min']:.2f} min/interruption"),
        ("MAIFI", f"{r['maifi']:.4f} momentary/customer"),
        ("ASAI", f"{r['asai']:.6f}"),
    ]
    return table(rows, ["INDEX (IEEE 1366)", "VALUE"])


def cmd_agents_list(args: argparse.Namespace) -> int:
    from gateway.cli import emit, runtime_dir
    from gateway.control import call

    rows = call(runtime_dir(args), "agents.list")
    if args.type:
        rows = [r for r in rows if r["type"] == args.type]
    emit(args, rows, _human_list)
    return 0


def cmd_agents_show(args: argparse.Namespace) -> int:
    from gateway.cli import emit, runtime_dir
    from gateway.control import call

    emit(args, call(runtime_dir(args), "agents.show", id=args.id), _human_show)
    return 0


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: arguments are key=value (e.g. pct=50, on=true)")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def cmd_agents_request(args: argparse.Namespace) -> int:
    from gateway.cli import emit, runtime_dir
    from gateway.control import call

    result = call(runtime_dir(args), "agents.request", id=args.id, request=args.request, **dict(args.args))
    emit(
        args,
        result,
        lambda r: (
            "\n".join(
                f"{a.get('action')}: {a.get('point_name', '')}={a.get('value', '')} ({a.get('reason', a.get('message', ''))})"
                for a in r
            )
            or "accepted (no immediate action)"
        ),
    )
    return 0


def cmd_reliability(args: argparse.Namespace) -> int:
    from gateway.cli import emit, runtime_dir
    from gateway.control import call

    result = call(runtime_dir(args), "reliability", since=args.since, until=args.until)
    if args.since is not None:
        result.setdefault("since_wall", args.since)
    if args.until is not None:
        result.setdefault("until_wall", args.until)
    emit(args, result, _human_reliability)
    return 0


def cmd_agents_diagram(args: argparse.Namespace) -> int:
    """Offline: the transition table of one agent type, as Graphviz dot or as a table."""
    table_ = args.registry[args.agent_type].table
    if args.format == "dot":
        print(table_.to_dot())
    else:
        from gateway.cli import table

        rows = [(s.value, e.name.lower(), t.value) for s, e, t in table_.transitions() if s is not t]
        print(f"{args.agent_type}: initial state {table_.initial.value}")
        print(table(rows, ["STATE", "EVENT", "NEXT STATE"]))
    return 0


def describe_type(spec: AgentSpec) -> dict[str, Any]:
    """What the registry says of one agent type, as plain data (for `stima agents types`)."""
    table_ = spec.table
    return {
        "type": spec.type_name,
        "description": spec.description,
        "initial_state": table_.initial.value,
        "states": [s.value for s in table_.states],
        "events": [e.name.lower() for e in table_.events],
        "points": {
            n: {"kinds": sorted(p.kinds), "units": sorted(p.units), "command": p.command}
            for n, p in spec.points.items()
        },
        "requests": list(spec.requests),
        "subscriptions": [t.value for t in spec.subscriptions],
        "handles": sorted(spec.message_handlers),
        "attributes": list(spec.attributes.model_fields),
    }


def _point_cell(p: dict[str, Any]) -> str:
    return "/".join(p["kinds"]) + (f" [{', '.join(p['units'])}]" if p["units"] else "")


def _human_types(rows: list[dict[str, Any]]) -> str:
    from gateway.cli import table

    return table(
        [
            (
                r["type"],
                len(r["states"]),
                len([p for p in r["points"].values() if not p["command"]]),
                ", ".join(n for n, p in r["points"].items() if p["command"]) or "-",
                ", ".join(r["requests"]) or "-",
                ", ".join(r["subscriptions"]) or "-",
            )
            for r in rows
        ],
        ["TYPE", "STATES", "MEASUREMENTS", "COMMAND POINTS", "REQUESTS", "BUS TOPICS"],
    )


def _human_type(d: dict[str, Any]) -> str:
    from gateway.cli import table

    lines = [
        f"{d['type']}: {d['description']}",
        f"states: {', '.join(d['states'])} (initial {d['initial_state']})",
        f"requests: {', '.join(d['requests']) or '-'}",
        f"bus topics: {', '.join(d['subscriptions']) or '-'}",
    ]
    if d["points"]:
        lines += [
            "",
            table(
                [(n, "command" if p["command"] else "measurement", _point_cell(p)) for n, p in d["points"].items()],
                ["POINT", "DIRECTION", "KIND [UNITS]"],
            ),
        ]
    return "\n".join(lines)


def types_markdown(registry: Mapping[str, AgentSpec]) -> str:
    """docs/agents.md: every agent type as the registry declares it (kept equal by a test)."""
    out = [
        "# Agent types",
        "",
        "Generated from the agent registry (`gateway/agents/registry.py`) by "
        "`stima agents types --format markdown`; do not edit by hand.",
        "",
        "Each type is declared once, by the `SPEC` at the end of its module in `gateway/agents/`: its states "
        "and transition table, its site-file attributes, the point names its `points` table may map (a name "
        "outside them is refused), the requests it accepts and the bus topics it hears.",
        "",
    ]
    for spec in registry.values():
        d = describe_type(spec)
        out += [
            f"## {d['type']}",
            "",
            d["description"][:1].upper() + d["description"][1:] + ".",
            "",
            f"- States: {', '.join(f'`{s}`' for s in d['states'])} (initial `{d['initial_state']}`)",
            f"- Requests: {', '.join(f'`{r}`' for r in d['requests']) or 'none'}",
            f"- Bus topics heard: {', '.join(f'`{t}`' for t in d['subscriptions']) or 'none'}",
            "",
        ]
        if d["points"]:
            out += ["| Point | Direction | Kind | Units |", "|---|---|---|---|"]
            out += [
                f"| `{n}` | {'command' if p['command'] else 'measurement'} | {' or '.join(p['kinds'])} | "
                f"{', '.join(p['units']) or 'any'} |"
                for n, p in d["points"].items()
            ]
        else:
            out.append("No points of its own.")
        out.append("")
    return "\n".join(out)


def cmd_agents_types(args: argparse.Namespace) -> int:
    """Offline: the agent types the gateway knows, from the registry."""
    registry: Mapping[str, AgentSpec] = args.registry
    if args.format == "markdown":
        print(types_markdown(registry), end="")
        return 0
    from gateway.cli import emit

    if args.agent_type:
        emit(args, describe_type(registry[args.agent_type]), _human_type)
    else:
        emit(args, [describe_type(s) for s in registry.values()], _human_types)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    from gateway.cli import add_common

    add_common(parser)


def register(subparsers: Any, registry: Mapping[str, AgentSpec] | None = None) -> None:
    """The `agents` and `reliability` commands; agent types come from `registry` (default: the gateway's)."""
    if registry is None:
        from gateway.agents.registry import SPECS

        registry = SPECS
    types = list(registry)
    agents = subparsers.add_parser("agents", help="the grid agents: states, attributes, transitions")
    sub = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    alist = sub.add_parser("list", help="every agent with its state (meter groups summarised)")
    alist.add_argument("--type", choices=types, help="only agents of this type")
    _common(alist)
    alist.set_defaults(func=cmd_agents_list)
    show = sub.add_parser(
        "show", help="one agent (or meter group, or meter): state, since when, attributes, last transitions"
    )
    show.add_argument("id", metavar="ID")
    _common(show)
    show.set_defaults(func=cmd_agents_show)
    accepted = "; ".join(f"{t}: {', '.join(s.requests)}" for t, s in registry.items() if s.requests)
    req = sub.add_parser("request", help=f"ask an agent to do something ({accepted})")
    req.add_argument("id", metavar="ID")
    req.add_argument("request", metavar="REQUEST")
    req.add_argument("args", nargs="*", type=_kv, metavar="KEY=VALUE")
    _common(req)
    req.set_defaults(func=cmd_agents_request)

    diagram = sub.add_parser("diagram", help="an agent type's transition table (offline; dot for Graphviz)")
    diagram.add_argument("agent_type", choices=types, metavar="TYPE", help=", ".join(types))
    diagram.add_argument("--format", choices=["table", "dot"], default="table")
    diagram.set_defaults(func=cmd_agents_diagram, registry=registry)

    kinds = sub.add_parser("types", help="the agent types: states, points, commands, requests, bus topics (offline)")
    kinds.add_argument("agent_type", nargs="?", choices=types, metavar="TYPE", help=", ".join(types))
    kinds.add_argument(
        "--format", choices=["table", "markdown"], default="table", help="markdown: the page docs/agents.md is"
    )
    kinds.add_argument("--json", action="store_true", help="machine-readable output")
    kinds.set_defaults(func=cmd_agents_types, registry=registry)

    rel = subparsers.add_parser(
        "reliability", help="IEEE 1366 indices (SAIFI, SAIDI, CAIDI, MAIFI, ASAI) from smart-meter outages"
    )
    rel.add_argument(
        "--since",
        type=parse_time,
        default=None,
        help="start: POSIX seconds, ISO 8601, or an age like 24h / 7d (default: daemon start)",
    )
    rel.add_argument("--until", type=parse_time, default=None, help="end (default: now)")
    _common(rel)
    rel.set_defaults(func=cmd_reliability)
