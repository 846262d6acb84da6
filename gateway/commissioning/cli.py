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
            results.append(site_fragment(ied, ied_id=args.id, prefix=args.prefix, host=args.host, port=args.port,
                                         poll_period_ms=args.poll_ms))
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
        raise UsageError(f"{site_path} already has IED(s) {', '.join(clash)}: choose another id with --id, or "
                         "remove the entry first")
    merged = current.rstrip("\n") + "\n\n" + text
    try:
        validate(tomllib.loads(merged), str(site_path))
    except ConfigError as exc:
        raise UsageError(f"the site file would not be valid with the imported IED(s), nothing written:\n{exc}") \
            from None
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
        print(json.dumps({"file": str(args.file), "edition": doc.edition.value, "version": doc.version,
                          "tool": doc.tool, "ieds": [{
                              "entry": r.ied, "agent_hint": r.agent_hint, "notes": r.notes,
                              "attributes": r.attributes, "data_sets": r.data_sets,
                              "report_control_blocks": r.report_control_blocks, "controls": r.controls}
                              for r in results]}, indent=2))
    elif not args.into:
        print(text, end="")
    for r in results:
        print(f"{r.ied['id']}: {len(r.ied['points'])} points, {len(r.controls)} controls "
              f"({sum(1 for c in r.controls if c.get('point'))} operable), {len(r.report_control_blocks)} report "
              f"control blocks ({len(r.ied['report_control_blocks'])} used), {len(r.attributes)} MX/ST attributes"
              + (f"; added to {args.into} (previous file kept as {args.into}.bak)" if args.into else ""),
              file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- registration


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    scl = subparsers.add_parser("scl", help="IEC 61850 SCL files: import an IED into the site file")
    scl_sub = scl.add_subparsers(dest="scl_command", required=True, metavar="ACTION")
    imp = scl_sub.add_parser("import", help="make the site file's IEC 61850 entries from an ICD, CID, IID or SCD")
    imp.add_argument("file", type=Path, metavar="FILE", help="SCL file (editions 1, 2 and 2.1)")
    imp.add_argument("--ied", help="the IED to import (default: every IED with a server)")
    imp.add_argument("--into", metavar="SITE.toml", help="append the entries to this site file (checked first; "
                     "the previous file is kept as SITE.toml.bak)")
    imp.add_argument("--id", help="the IED's id in the site file (default IED-<name>)")
    imp.add_argument("--prefix", help="point id prefix (default: the IED's name), e.g. CB-046")
    imp.add_argument("--host", help="address to connect to (default: the Communication section's IP)")
    imp.add_argument("--port", type=int, help="MMS port (default: from the file, else 102)")
    imp.add_argument("--poll-ms", type=int, default=1000, help="poll period of points no report carries")
    imp.add_argument("--lenient", action="store_true",
                     help="schema violations are warnings, not refusals (ambiguous models are refused all the same)")
    imp.add_argument("--json", action="store_true", help="the whole model: entries, attributes, data sets, "
                     "report control blocks, controls")
    imp.set_defaults(func=cmd_scl_import)
