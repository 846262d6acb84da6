"""`stima scl import` and `stima discover modbus|iec61850`: what a commissioning engineer runs
before the site file exists, and to check it against the IEDs on the network."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from gateway.cli import add_common, duration_s, emit, runtime_dir, table
from gateway.commissioning.scl_import import ImportResult, fragment_text, site_fragment


class UsageError(Exception):
    """A value on the command line the command cannot use (exit status 2)."""


# --------------------------------------------------------------------------- scl import


def _import_results(args: argparse.Namespace) -> tuple[list[ImportResult], Any]:
    from protocols.scl import SclError, read_scl

    try:
        doc = read_scl(Path(args.file), lenient=args.lenient)
    except SclError as exc:
        raise UsageError(str(exc)) from None
    ieds = [doc.ied(args.ied)] if args.ied else list(doc.ieds)
    if not ieds:
        raise UsageError(f"{args.file}: no IED with a server access point (nothing to read over MMS)")
    if len(ieds) > 1 and (args.id or args.prefix is not None):
        raise UsageError("--id and --prefix name one IED: give --ied too")
    results = []
    for ied in ieds:
        try:
            results.append(
                site_fragment(
                    ied, ied_id=args.id, prefix=args.prefix, host=args.host, port=args.port, poll_period_ms=args.poll_ms
                )
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return results, doc


def merge_into(site_path: Path, text: str, new_ids: list[str]) -> None:
    """Append the IED entries to the site file, keeping the file as it is otherwise; the result
    must still be a valid site file, or nothing is written."""
    from gateway.config import ConfigError, validate

    try:
        current = site_path.read_text(encoding="utf-8")
        data = tomllib.loads(current)
    except OSError as exc:
        raise UsageError(f"cannot read {site_path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{site_path} is not valid TOML: {exc}") from None
    have = {i.get("id") for i in data.get("ieds", []) if isinstance(i, dict)}
    clash = [i for i in new_ids if i in have]
    if clash:
        raise UsageError(
            f"{site_path} already has IED(s) {', '.join(clash)}: choose another id with --id, or remove the entry first"
        )
    merged = current.rstrip("\n") + "\n\n" + text
    try:
        validate(tomllib.loads(merged), str(site_path))
    except ConfigError as exc:
        raise UsageError(
            f"the site file would not be valid with the imported IED(s), nothing written:\n{exc}"
        ) from None
    fd, tmp = tempfile.mkstemp(prefix=site_path.name, dir=site_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(merged)
        os.chmod(tmp, site_path.stat().st_mode & 0o7777)
        backup = site_path.with_name(site_path.name + ".bak")
        backup.write_text(current, encoding="utf-8")
        os.replace(tmp, site_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_scl_import(args: argparse.Namespace) -> int:
    try:
        results, doc = _import_results(args)
        text = fragment_text(results, str(args.file))
        if args.into:
            merge_into(Path(args.into), text, [r.ied["id"] for r in results])
    except UsageError as exc:
        print(f"stima scl import: {exc}", file=sys.stderr)
        return 2
    for warning in doc.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(args.file),
                    "edition": doc.edition.value,
                    "version": doc.version,
                    "tool": doc.tool,
                    "ieds": [
                        {
                            "entry": r.ied,
                            "agent_hint": r.agent_hint,
                            "notes": r.notes,
                            "attributes": r.attributes,
                            "data_sets": r.data_sets,
                            "report_control_blocks": r.report_control_blocks,
                            "controls": r.controls,
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    elif not args.into:
        print(text, end="")
    for r in results:
        print(
            f"{r.ied['id']}: {len(r.ied['points'])} points, {len(r.controls)} controls "
            f"({sum(1 for c in r.controls if c.get('point'))} operable), {len(r.report_control_blocks)} report "
            f"control blocks ({len(r.ied['report_control_blocks'])} used), {len(r.attributes)} MX/ST attributes"
            + (f"; added to {args.into} (previous file kept as {args.into}.bak)" if args.into else ""),
            file=sys.stderr,
        )
    return 0


# --------------------------------------------------------------------------- discover


def host_port(text: str, default_port: int) -> tuple[str, int]:
    """'HOST', 'HOST:PORT' or '[v6]:PORT' → (host, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host = inner
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, raw = text.partition(":")
        port = _port(raw, text)
    if not host:
        raise UsageError(f"expected HOST or HOST:PORT, found {text!r}")
    return host, port


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise UsageError(f"{text!r}: the port must be 1..65535")
    return int(raw)


def _ranges(ranges: list[list[int]]) -> str:
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in ranges)


def _modbus_human(scan: dict[str, Any], show_map: bool) -> str:
    lines = [
        f"Modbus TCP {scan['host']}:{scan['port']}: {len(scan['units_probed'])} unit id(s) probed in "
        f"{scan['duration_s']:.1f} s, {scan['requests']} requests ({scan['rate_per_s']:g}/s at most, "
        f"sampled every {scan['stride']} addresses up to {scan['max_address']}), nothing written"
    ]
    if scan["stopped"]:
        lines.append(f"STOPPED EARLY: {scan['stopped']}")
    names = {
        "coil": "coils (FC 1)",
        "discrete": "discrete inputs (FC 2)",
        "holding": "holding registers (FC 3)",
        "input": "input registers (FC 4)",
    }
    for unit in scan["units"]:
        if not unit["alive"]:
            lines.append(f"unit {unit['unit_id']}: absent ({unit['answer']})")
            continue
        ident = unit.get("identification")
        lines.append(
            f"unit {unit['unit_id']}: present (answers {unit['answer']})"
            + (f"; identification: {', '.join(f'{k}={v}' for k, v in ident.items())}" if ident else "")
        )
        for regs in unit["tables"]:
            if regs["supported"] is False:
                state = "not supported (illegal function)"
            elif regs["supported"] is None:
                state = "no answer"
            elif regs["ranges"]:
                state = f"readable {_ranges(regs['ranges'])}"
            else:
                state = "nothing readable"
            refused = "; ".join(f"{code} ×{n}" for code, n in regs["exceptions"].items())
            lines.append(f"  {names[regs['table']]:<26} {state}" + (f"  [exceptions: {refused}]" if refused else ""))
            if show_map and regs.get("values"):
                lines += _register_map(regs)
    return "\n".join(lines)


def _register_map(table: dict[str, Any]) -> list[str]:
    import struct

    values = {int(k): v for k, v in table["values"].items()}
    out = []
    if table["table"] in ("coil", "discrete"):
        for start in range(min(values), max(values) + 1, 16):
            bits = "".join("1" if values.get(a) else "0" if a in values else "." for a in range(start, start + 16))
            out.append(f"    {start:5d}: {bits}")
        return out
    out.append("    ADDRESS   HEX      UINT16   INT16   FLOAT32(this+next, big-endian)")
    for address in sorted(values):
        word = int(values[address]) & 0xFFFF
        signed = word - 0x10000 if word >= 0x8000 else word
        nxt = values.get(address + 1)
        f32 = ""
        if nxt is not None:
            f32 = f"{struct.unpack('>f', struct.pack('>HH', word, int(nxt) & 0xFFFF))[0]:.6g}"
        out.append(f"    {address:7d}   0x{word:04X}   {word:6d}  {signed:6d}   {f32}")
    return out


def cmd_discover_modbus(args: argparse.Namespace) -> int:
    import logging

    from protocols.modbus_discovery import DiscoveryError, ModbusScanSettings, parse_units, scan

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # a scan provokes refusals by design
    try:
        host, port = host_port(args.target, 502)
        settings = ModbusScanSettings(
            units=parse_units(args.units),
            timeout_s=args.timeout,
            rate_per_s=args.rate,
            max_address=args.max_address,
            stride=args.stride,
            deadline_s=args.deadline,
            max_requests=args.max_requests,
            read_map=args.map,
        )
        result = scan(
            host,
            port,
            settings,
            progress=None if args.json else (lambda m: print(f"scanning {m} ...", file=sys.stderr)),
        )
    except (UsageError, DiscoveryError) as exc:
        print(f"stima discover modbus: {exc}", file=sys.stderr)
        return 2
    data = result.to_dict()
    print(json.dumps(data, indent=2) if args.json else _modbus_human(data, args.map))
    return 0 if data["live_units"] else 1


def _browse_human(data: dict[str, Any]) -> str:
    lines = [
        f"IEC 61850 {data['host']}:{data['port']}: {len(data['logical_devices'])} logical device(s), "
        f"{data['requests']} requests in {data['duration_s']:.2f} s (read services only)"
    ]
    if data["stopped"]:
        lines.append(f"STOPPED EARLY: {data['stopped']}")
    for ld in data["logical_devices"]:
        lines.append(f"{ld['name']}")
        for ln in ld["logical_nodes"]:
            lines.append(f"  {ln['name']}")
            for do in ln["data_objects"]:
                ctl = f"  (control: {do['ctl_model']})" if do["ctl_model"] else ""
                shown = [
                    a
                    for a in do["attributes"]
                    if a.split("[")[0].split(".")[0] not in ("SBOw", "Oper", "Cancel", "origin", "ctlNum")
                ]
                lines.append(f"    {do['name']}{ctl}: {', '.join(shown)}")
            for ds in ln["data_sets"]:
                lines.append(f"    data set {ds['name']}: {', '.join(ds['members'])}")
            for rcb in ln["report_control_blocks"]:
                lines.append(
                    f"    {'buffered' if rcb['buffered'] else 'unbuffered'} report block {rcb['name']} "
                    f"on {rcb['data_set'] or '-'}, IntgPd {rcb['intg_pd_ms']} ms, trigger "
                    f"{'+'.join(rcb['trigger_options']) or '-'}"
                )
    for refusal in data["refusals"]:
        lines.append(f"refused: {refusal}")
    return "\n".join(lines)


def cmd_discover_iec61850(args: argparse.Namespace) -> int:
    from protocols.iec61850_discovery import BrowseError, browse

    try:
        host, port = host_port(args.target, 102)
        result = browse(host, port, timeout_s=args.timeout, deadline_s=args.deadline, max_requests=args.max_requests)
    except (UsageError, BrowseError) as exc:
        print(f"stima discover iec61850: {exc}", file=sys.stderr)
        return 2
    data = result.to_dict()
    fragment = None
    if (args.write or args.fragment) and result.ied is not None:
        try:
            made = site_fragment(result.ied, ied_id=args.id, prefix=args.prefix, host=host, port=port)
        except ValueError as exc:
            print(f"stima discover iec61850: {exc}", file=sys.stderr)
            return 1
        fragment = fragment_text([made], f"{host}:{port} (browsed)")
        data["site_fragment"] = made.ied
        if args.write:
            Path(args.write).write_text(fragment, encoding="utf-8")
            print(f"site-file fragment written to {args.write} ({len(made.ied['points'])} points)", file=sys.stderr)
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.fragment and fragment is not None:
        print(fragment, end="")
    else:
        print(_browse_human(data))
    return 0 if data["logical_devices"] else 1


# --------------------------------------------------------------------------- disturbance records


def _records_table(rows: list[dict[str, Any]]) -> str:
    from gateway.commissioning.soe import iso_ms

    if not rows:
        return "no disturbance records"
    out = []
    for r in rows:
        loc = r.get("fault_location") or {}
        where = (
            "-"
            if not loc
            else f"{loc['distance_m'] / 1000:.2f} km" + (f" ({loc['section']})" if loc.get("section") else "")
        )
        out.append(
            (
                r["record_id"],
                iso_ms(float(r["trigger_time"])),
                r["breaker"],
                f"{r.get('element') or '-'}/{r.get('phase') or '-'}",
                r.get("trips"),
                "yes" if r.get("lockout") else "no",
                r.get("samples"),
                where,
                r.get("format"),
            )
        )
    return table(
        out, ["RECORD", "TRIGGER (UTC)", "BAY", "ELEMENT", "TRIPS", "LOCKOUT", "SAMPLES", "FAULT AT", "FORMAT"]
    )


def cmd_records_list(args: argparse.Namespace) -> int:
    import time

    from gateway.control import call

    since = None if args.since is None else time.time() - args.since
    rows = call(runtime_dir(args), "records.list", breaker=args.breaker, since=since)
    emit(args, rows, _records_table)
    return 0


def cmd_records_get(args: argparse.Namespace) -> int:
    import base64

    from gateway.control import call

    data = call(runtime_dir(args), "records.get", id=args.id, timeout=60)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in data["files"].items():
        if "/" in name or name.startswith("."):
            raise UsageError(f"the daemon sent an unsafe file name {name!r}")
        (out / name).write_bytes(base64.b64decode(content))
        written.append(str(out / name))
    if args.json:
        print(json.dumps({"summary": data["summary"], "files": written}, indent=2))
    else:
        print("\n".join(written))
    return 0


# --------------------------------------------------------------------------- sequence of events

EXPORT_PAGE = 5000
EXPORT_MAX_PAGES = 2000
EXPORT_MARGIN_S = 300.0
"""Events are fetched by the time they were logged; an IED's own time stamp precedes it by the
poll or report delay: the window is widened by this, then filtered on the best time."""


def cmd_events_export(args: argparse.Namespace) -> int:
    import time

    from gateway.commissioning.soe import Filter, parse_time, select, to_csv, to_json
    from gateway.control import call

    now = time.time()
    try:
        since = parse_time(args.since, now)
        until = parse_time(args.until, now) if args.until else now
    except ValueError as exc:
        print(f"stima events export: {exc}", file=sys.stderr)
        return 2
    if until < since:
        print("stima events export: --until is before --since", file=sys.stderr)
        return 2
    events: list[dict[str, Any]] = []
    after = 0
    rt = runtime_dir(args)
    for _ in range(EXPORT_MAX_PAGES):
        page = call(
            rt,
            "events.page",
            since=since - EXPORT_MARGIN_S,
            until=until + EXPORT_MARGIN_S,
            after_seq=after,
            limit=EXPORT_PAGE,
        )
        events += page
        if len(page) < EXPORT_PAGE:
            break
        after = int(page[-1]["seq"])
    else:
        print(
            f"stima events export: stopped after {EXPORT_MAX_PAGES * EXPORT_PAGE} events; narrow the period",
            file=sys.stderr,
        )
    rows = select(events, Filter(since=since, until=until, source=args.source or "*", kind=args.kind or ""))
    text = to_csv(rows) if args.format == "csv" else to_json(rows) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8", newline="")
        print(f"{len(rows)} events written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def register_events_export(events_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`stima events export` (under the existing `stima events`)."""

    exp = events_sub.add_parser("export", help="sequence of events as CSV or JSON, with millisecond source times")
    exp.add_argument(
        "--since",
        default="1h",
        help="start: 90s, 15m, 2h, 1d ago, an ISO date-time (UTC) or POSIX seconds (default 1h)",
    )
    exp.add_argument("--until", default=None, help="end, same forms (default now)")
    exp.add_argument("--format", choices=["csv", "json"], default="csv")
    exp.add_argument("--source", help="only sources matching this glob, e.g. CB-04*")
    exp.add_argument("--kind", help="only kinds starting with this, e.g. protection. or status.")
    exp.add_argument("--out", help="write to this file instead of standard output")
    add_common(exp)
    exp.set_defaults(func=cmd_events_export)


# --------------------------------------------------------------------------- registration


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    scl = subparsers.add_parser("scl", help="IEC 61850 SCL files: import an IED into the site file")
    scl_sub = scl.add_subparsers(dest="scl_command", required=True, metavar="ACTION")
    imp = scl_sub.add_parser("import", help="make the site file's IEC 61850 entries from an ICD, CID, IID or SCD")
    imp.add_argument("file", type=Path, metavar="FILE", help="SCL file (editions 1, 2 and 2.1)")
    imp.add_argument("--ied", help="the IED to import (default: every IED with a server)")
    imp.add_argument(
        "--into",
        metavar="SITE.toml",
        help="append the entries to this site file (checked first; the previous file is kept as SITE.toml.bak)",
    )
    imp.add_argument("--id", help="the IED's id in the site file (default IED-<name>)")
    imp.add_argument("--prefix", help="point id prefix (default: the IED's name), e.g. CB-046")
    imp.add_argument("--host", help="address to connect to (default: the Communication section's IP)")
    imp.add_argument("--port", type=int, help="MMS port (default: from the file, else 102)")
    imp.add_argument("--poll-ms", type=int, default=1000, help="poll period of points no report carries")
    imp.add_argument(
        "--lenient",
        action="store_true",
        help="schema violations are warnings, not refusals (ambiguous models are refused all the same)",
    )
    imp.add_argument(
        "--json",
        action="store_true",
        help="the whole model: entries, attributes, data sets, report control blocks, controls",
    )
    imp.set_defaults(func=cmd_scl_import)

    disc = subparsers.add_parser(
        "discover",
        help="find what is on the network: Modbus unit ids and registers, "
        "IEC 61850 models (read-only, bounded in time)",
    )
    disc_sub = disc.add_subparsers(dest="discover_command", required=True, metavar="PROTOCOL")
    mb = disc_sub.add_parser("modbus", help="live unit ids, function codes and readable ranges (reads only)")
    mb.add_argument("target", metavar="HOST[:PORT]", help="Modbus TCP device or gateway (port 502 by default)")
    mb.add_argument("--units", default="1", help="unit ids to probe, e.g. 1-247 or 1,3,10-12 (default 1)")
    mb.add_argument("--map", action="store_true", help="read and print the values of every readable range")
    mb.add_argument("--rate", type=float, default=50.0, help="requests per second at most (default 50)")
    mb.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for each answer (default 0.5)")
    mb.add_argument("--max-address", type=int, default=999, help="highest address looked at (default 999)")
    mb.add_argument("--stride", type=int, default=8, help="sample every N addresses; 1 is exhaustive (default 8)")
    mb.add_argument("--deadline", type=float, default=120.0, help="stop after this many seconds (default 120)")
    mb.add_argument("--max-requests", type=int, default=20_000, help="stop after this many requests")
    mb.add_argument("--json", action="store_true", help="machine-readable output")
    mb.set_defaults(func=cmd_discover_modbus)
    iec = disc_sub.add_parser(
        "iec61850",
        help="browse logical devices, nodes, data objects, data sets and report control blocks (read services only)",
    )
    iec.add_argument("target", metavar="HOST[:PORT]", help="the IED (port 102 by default)")
    iec.add_argument("--timeout", type=float, default=2.0, help="seconds per request (default 2)")
    iec.add_argument("--deadline", type=float, default=120.0, help="stop after this many seconds (default 120)")
    iec.add_argument("--max-requests", type=int, default=20_000, help="stop after this many requests")
    iec.add_argument("--fragment", action="store_true", help="print the site-file entry instead of the tree")
    iec.add_argument("--write", metavar="FILE", help="write the site-file entry (TOML) to FILE")
    iec.add_argument("--id", help="the IED's id in the entry (default IED-<name>)")
    iec.add_argument("--prefix", help="point id prefix (default: the IED's name)")
    iec.add_argument("--json", action="store_true", help="machine-readable output")
    iec.set_defaults(func=cmd_discover_iec61850)

    rec = subparsers.add_parser("records", help="disturbance records (COMTRADE) written at protection trips")
    rec_sub = rec.add_subparsers(dest="records_command", required=True, metavar="ACTION")
    rl = rec_sub.add_parser("list", help="the records kept, oldest first")
    rl.add_argument("--breaker", help="only this bay's records")
    rl.add_argument("--since", type=_duration, default=None, metavar="DURATION", help="only the last 90s, 15m, 2h, 1d")
    _common(rl)
    rl.set_defaults(func=cmd_records_list)
    rg = rec_sub.add_parser("get", help="copy a record's files (.cfg, .dat, .hdr, .json) here or to --out")
    rg.add_argument("id", metavar="RECORD", help="record id from `stima records list`")
    rg.add_argument("--out", default=".", help="directory to write to (default: the current one)")
    _common(rg)
    rg.set_defaults(func=cmd_records_get)


def _common(parser: argparse.ArgumentParser) -> None:

    add_common(parser)


def _duration(text: str) -> float:

    return duration_s(text)
