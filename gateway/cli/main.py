"""`stima`: the parser built from every command group, and the entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.agents import cli as agents
from gateway.cli import (
    alarms,
    commissioning,
    config,
    hmi,
    keys,
    maintenance,
    peak,
    protection,
    status,
    switching,
)
from gateway.config import ConfigError
from gateway.control import ControlError, DaemonNotRunning

GROUPS = (config, status, protection, agents, switching, peak, commissioning, keys, alarms, maintenance, hmi)
"""Each registers its commands, in the order `stima --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stima", description="Stima substation gateway: commissioning CLI")
    parser.add_argument("--version", action="version", version=f"stima {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DaemonNotRunning as exc:
        print(f"stima: {exc}", file=sys.stderr)
        return 3
    except ControlError as exc:
        print(f"stima: the daemon refused: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"stima: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
