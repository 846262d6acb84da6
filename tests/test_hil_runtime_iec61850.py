"""IEC 61850 IEDs of the site served through `hil.iec61850_server`, read and operated by the gateway's client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway.contract.clock import SystemClock
from gateway.config import validate
from gateway.contract.settings import Iec61850Ied
from hil.runtime import HilRuntime, RuntimeOptions
from tests.support.modbus_server import free_port
from tests.support.stub_grid import StubModel

pytest.importorskip("hil.iec61850_server")
iec = pytest.importorskip("protocols.iec61850")

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy/examples/sub-003.toml"


def test_iec61850_values_flow_and_controls_reach_the_model(tmp_path: Path) -> None:
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    for ied in data["ieds"]:
        if ied["protocol"] in ("modbus_tcp", "iec61850"):
            ied["port"] = free_port()
        else:
            ied["serial_port"] = str(tmp_path / "tty" / Path(ied["serial_port"]).name)
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(data))
    site = validate(data, str(path))
    bay = next(i for i in site.ieds if isinstance(i, Iec61850Ied))
    control = next(p for p in bay.points if p.control)
    analog = next(p for p in bay.points if p.kind.value == "analog")
    model = StubModel.from_site(site)

    async def scenario() -> None:
        runtime = HilRuntime(site, model, RuntimeOptions(speed=1.0, ami=False), site_path=path)
        await runtime.start()
        steps = asyncio.create_task(runtime.run_steps())
        got: dict[str, Any] = {}
        arrived = asyncio.Event()

        def sink(updates: Any) -> None:
            for u in updates:
                got[u.point_id] = u.value
            if got.get(analog.id) is not None:
                arrived.set()

        client = iec.Iec61850Client(bay, sink, SystemClock(), logging.getLogger("test"))
        task = asyncio.create_task(client.run())
        try:
            assert len(runtime.iec_children) == sum(isinstance(i, Iec61850Ied) for i in site.ieds) == 4
            await asyncio.wait_for(arrived.wait(), 20)
            assert got[analog.id] == pytest.approx(model.values[analog.id], rel=1e-6)
            for _ in range(200):
                if client.status.state.value == "online":
                    break
                await asyncio.sleep(0.05)
            await asyncio.wait_for(client.submit_write(control.id, False), 20)
            for _ in range(200):
                if any(c[0] == control.id for c in model.commands):
                    break
                await asyncio.sleep(0.02)
            assert (control.id, False) in [(c[0], c[1]) for c in model.commands]
            assert runtime.status()["iec61850"][0]["commands"] >= 1
        finally:
            await client.close()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            runtime.request_stop()
            await steps
            await runtime.stop()

    asyncio.run(asyncio.wait_for(scenario(), 90))
