"""A reload gives the configuration it replaced back to the collector.

The daemon freezes what a configuration builds (`gc.freeze`) so that collections stay short on
the protection path; frozen objects are never collected. The server must therefore freeze only
after the old configuration is dropped, and unfreeze first, or every SIGHUP would keep a whole
gateway (agents, process image, meter columns) for the rest of the process's life."""

from __future__ import annotations

import asyncio
import gc
import tomllib
import weakref
from pathlib import Path

import tomli_w

from gateway.config import load
from gateway.server import Server
from hil.broker import free_port, make_tls_files
from hil.rig import localise

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml"


def test_a_reload_frees_the_configuration_it_replaced(tmp_path: Path) -> None:
    # no IED, broker or key answers: the configuration is built and replaced all the same
    doc = localise(tomllib.loads(EXAMPLE.read_text()), tmp_path, make_tls_files(tmp_path), free_port(), free_port())
    (tmp_path / "state").mkdir()
    (tmp_path / "run").mkdir()
    site_path = tmp_path / "site.toml"
    site_path.write_text(tomli_w.dumps(doc))
    site = load(site_path)

    async def main() -> None:
        server = Server(site_path, environ={})
        serving = asyncio.create_task(server.serve(site))
        for _ in range(600):
            if server.gateway is not None and server.gateway._tasks:
                break
            await asyncio.sleep(0.05)
        first = server.gateway
        assert first is not None
        gone = weakref.ref(first)
        del first
        server._reload.set()
        for _ in range(600):
            if server.last_reload is not None and server.last_reload.ok:
                break
            await asyncio.sleep(0.05)
        assert server.last_reload is not None and server.last_reload.ok, "the reload did not take place"
        for _ in range(100):  # the server freezes the new configuration once the old one has wound down
            gc.collect()
            if gone() is None:
                break
            await asyncio.sleep(0.1)
        assert gone() is None, "the configuration a reload replaced is still alive"
        server._stop.set()
        assert await asyncio.wait_for(serving, 60) == 0

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
