"""stima-gatewayd: the substation gateway daemon's entry point.

The daemon is four modules: gateway/server.py (process lifetime: signals, readiness and watchdog,
reload, shutdown), gateway/wiring.py (`Gateway`: one configuration, what feeds what),
gateway/scheduling.py (the loops and their periods) and gateway/operations.py (the control
socket's operations). This module reads the command line and the site file and runs the server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__, logs
from gateway.config import ConfigError
from gateway.scheduling import HISTORY_WRITE_CHUNK
from gateway.server import Server, state_dir_problem
from gateway.site import load_site
from gateway.wiring import Gateway

__all__ = ["HISTORY_WRITE_CHUNK", "Gateway", "Server", "main", "state_dir_problem"]

log = logging.getLogger("stima.daemon")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stima-gatewayd", description="Stima substation gateway daemon")
    parser.add_argument("--config", "-c", type=Path, default=Path("/etc/stima/site.toml"), help="site file (TOML)")
    parser.add_argument(
        "--log-level", default=os.environ.get("STIMA_LOG_LEVEL", "INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--version", action="version", version=f"stima-gatewayd {__version__}")
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        site = load_site(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("invalid site file", extra={"file": exc.source, "problem": str(problem)})
        print(str(exc), file=sys.stderr)
        return 2
    server = Server(args.config)
    try:
        return asyncio.run(server.serve(site))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
