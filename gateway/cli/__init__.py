"""`stima`: the commissioning engineer's command line, one module per command group.

Offline commands read the site file; online commands talk to the running daemon over its
control socket. Tables for people by default, `--json` for scripts. This package's own module
holds what every group shares (common options, where the site file and the daemon are, tables,
output); `gateway.cli.main` builds the parser from the groups and runs a command.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load

DEFAULT_CONFIG = Path("/etc/stima/site.toml")
DEFAULT_RUNTIME_DIR = Path("/run/stima")


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every command understands."""
    parser.add_argument(
        "--config", "-c", type=Path, default=None, help=f"site file (default: $STIMA_CONFIG or {DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "--runtime-dir",
        type=Path,
        default=None,
        help="daemon runtime directory holding control.sock "
        f"(default: $STIMA_RUNTIME_DIR, the site file's runtime_dir, or {DEFAULT_RUNTIME_DIR})",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def config_path(args: argparse.Namespace) -> Path:
    if getattr(args, "config", None):
        return Path(args.config)
    return Path(os.environ.get("STIMA_CONFIG", DEFAULT_CONFIG))


def runtime_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "runtime_dir", None):
        return Path(args.runtime_dir)
    if os.environ.get("STIMA_RUNTIME_DIR"):
        return Path(os.environ["STIMA_RUNTIME_DIR"])
    try:
        return load(config_path(args)).site.runtime_dir
    except ConfigError:
        return DEFAULT_RUNTIME_DIR


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(human(data))


def duration_s(text: str) -> float:
    """'90', '90s', '15m', '2h', '1d' → seconds (for --since)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    raw = text.strip().lower()
    factor = units.get(raw[-1:], None)
    number = raw[:-1] if factor is not None else raw
    try:
        value = float(number) * (factor or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 15m, 2h or 1d, found {text!r}") from None
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a duration >= 0, found {text!r}")
    return value
