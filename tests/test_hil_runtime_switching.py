"""Switching devices of the example site served over the real protocols by the simulator.

The electrical model behind real servers: a pole-top switch over Modbus TCP and a ring main
unit over IEC 61850, driven by a pymodbus client and the gateway's own IEC 61850 client, and
the control socket that puts them in local control or makes them fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ExceptionResponse

from gateway.contract.clock import SystemClock
from gateway.config import validate
from gateway.contract.settings import Iec61850Ied, ModbusTcpIed
from hil.control import ControlServer, request
from hil.runtime import HilRuntime, RuntimeOptions, build_model
from gateway.contract.ports import CommandError
from tests.support.modbus_server import free_port

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy/examples/sub-003.toml"
SERVED = ("IED-SW-045-1", "IED-SW-046-1")


def _site(tmp_path: Path) -> tuple[Any, Path]:
    """The example with only SW-045-1 (Modbus TCP) and SW-046-1 (IEC 61850) served, on free ports."""
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    for ied in data["ieds"]:
        ied["enabled"] = ied["id"] in SERVED
        if ied["protocol"] in ("modbus_tcp", "iec61850"):
            ied["port"] = free_port()
        else:
            ied["serial_port"] = str(tmp_path / "tty" / Path(ied["serial_port"]).name)
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(data))
    return validate(data, str(path)), path


async def _until(predicate: Any, what: str, timeout_s: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_local_control_and_failures_over_modbus_and_iec61850(tmp_path: Path) -> None:
    iec = pytest.importorskip("protocols.iec61850")
    pytest.importorskip("hil.iec61850_server")
    site, path = _site(tmp_path)
    sw = site.ied("IED-SW-045-1")
    rmu = site.ied("IED-SW-046-1")
    assert isinstance(sw, ModbusTcpIed) and isinstance(rmu, Iec61850Ied)
    address = {p.id: p.address for p in sw.points}
    socket_path = tmp_path / "hil.sock"

    async def ctl(op: str, **args: Any) -> dict[str, Any]:
        return await asyncio.to_thread(request, socket_path, {"op": op, **args})

    async def scenario() -> None:
        model = build_model(site)
        runtime = HilRuntime(site, model, RuntimeOptions(speed=1.0, ami=False), site_path=path)
        control = ControlServer(runtime, socket_path)
        await control.start()
        await runtime.start()
        steps = asyncio.create_task(runtime.run_steps())
        client = AsyncModbusTcpClient("127.0.0.1", port=sw.port, timeout=2, retries=0)
        got: dict[str, Any] = {}

        def sink(updates: Any) -> None:
            for u in updates:
                got[u.point_id] = u.value

        bay = iec.Iec61850Client(rmu, sink, SystemClock(), logging.getLogger("test"))
        bay_task = asyncio.create_task(bay.run())
        try:
            assert await client.connect()

            async def discrete(name: str) -> bool:
                response = await client.read_discrete_inputs(address[f"SW-045-1.{name}"], count=1, device_id=sw.unit_id)
                assert not response.isError()
                return bool(response.bits[0])

            # ---- Modbus: local control refuses the trip with exception 01, nothing moves
            status = await ctl("status")
            assert status["devices"]["SW-045-1"]["local"] is False and status["parallel"] is False
            assert status["sections"]["LINE-045/2"]["fed_through"] == "SW-045-1"
            await ctl("local", device="SW-045-1", on=True)
            await _until(lambda: discrete("local"), "SW-045-1.local over Modbus")
            response = await client.write_coil(address["SW-045-1.trip_cmd"], True, device_id=sw.unit_id)
            assert isinstance(response, ExceptionResponse) and response.exception_code == 1
            status = await ctl("status")
            device = status["devices"]["SW-045-1"]
            assert device["closed"] is True and device["local"] is True and device["refused_commands"] == 1
            assert status["last_refusals"][-1]["point"] == "SW-045-1.trip_cmd"
            assert status["last_refusals"][-1]["reason"] == "local"
            assert await discrete("closed") is True
            # back in remote: the same write opens it, and LINE-045/2 loses supply
            await ctl("local", device="SW-045-1", on=False)
            response = await client.write_coil(address["SW-045-1.trip_cmd"], True, device_id=sw.unit_id)
            assert not response.isError()
            await _until(lambda: _not(discrete("closed")), "SW-045-1 open over Modbus")
            status = await ctl("status")
            assert status["sections"]["LINE-045/2"]["energised"] is False
            assert status["energised"]["XFMR-103"] is False and status["energised"]["XFMR-102"] is True

            # ---- a stuck switch accepts the close and never moves
            await ctl("failure", device="SW-045-1", mode="stuck")
            response = await client.write_coil(address["SW-045-1.close_cmd"], True, device_id=sw.unit_id)
            assert not response.isError()
            await asyncio.sleep(0.5)
            status = await ctl("status")
            assert status["devices"]["SW-045-1"]["closed"] is False
            assert status["devices"]["SW-045-1"]["failure"]["mode"] == "stuck"
            assert status["devices"]["SW-045-1"]["ignored_commands"] == 1
            await ctl("failure", device="SW-045-1", mode="none")
            await ctl("operate", device="SW-045-1", action="close")  # by hand at the pole
            await _until(lambda: discrete("closed"), "SW-045-1 closed by hand")

            # ---- IEC 61850: the ring main unit in local refuses select with the switching hierarchy
            await _until(lambda: bay.status.state.value == "online", "the IEC 61850 client online", 30)
            await _until(lambda: got.get("SW-046-1.local") is False, "SW-046-1.local over IEC 61850", 30)
            await ctl("local", device="SW-046-1", on=True)
            await _until(lambda: got.get("SW-046-1.local") is True, "SW-046-1 in local over IEC 61850", 30)
            with pytest.raises(CommandError, match="blocked-by-switching-hierarchy"):
                await asyncio.wait_for(bay.submit_write("SW-046-1.position_cmd", False), 20)
            assert (await ctl("status"))["devices"]["SW-046-1"]["closed"] is True
            await ctl("local", device="SW-046-1", on=False)
            await _until(lambda: got.get("SW-046-1.local") is False, "SW-046-1 back in remote", 30)
            await asyncio.wait_for(bay.submit_write("SW-046-1.position_cmd", False), 20)
            await _until(lambda: got.get("SW-046-1.closed") is False, "SW-046-1 open over IEC 61850", 30)
            assert (await ctl("status"))["sections"]["LINE-046/2"]["energised"] is False
        finally:
            client.close()
            await bay.close()
            bay_task.cancel()
            with contextlib.suppress(BaseException):
                await bay_task
            runtime.request_stop()
            await steps
            await runtime.stop()
            await control.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))


async def _not(value: Any) -> bool:
    return not await value


def test_control_ops_refuse_bad_input(tmp_path: Path) -> None:
    site, path = _site(tmp_path)
    runtime = HilRuntime(site, build_model(site), RuntimeOptions(speed=0, ami=False, iec61850=False))
    from hil.control import dispatch

    cases = [
        ({"op": "failure", "device": "XFMR-101", "mode": "stuck"}, "unknown circuit_breaker 'XFMR-101'"),
        ({"op": "failure", "device": "SW-045-1", "mode": "jammed"}, "'stuck', 'slow' or 'none'"),
        ({"op": "failure", "device": "SW-045-1", "mode": "slow"}, "delay_s > 0"),
        ({"op": "local", "device": "SW-045-1", "on": "yes"}, "true or false"),
        ({"op": "operate", "device": "SW-045-1", "action": "toggle"}, "'open' or 'close'"),
        ({"op": "external", "tie": "TIE-044-045", "live": False}, "not an external tie"),
        ({"op": "local", "device": "SW-045-1"}, 'needs "on"'),
    ]
    for req, words in cases:
        answer = dispatch(runtime, req)
        assert answer["ok"] is False and words in answer["error"], (req, answer)
    answer = dispatch(runtime, {"op": "failure", "device": "SW-045-1", "mode": "slow", "delay_s": 3})
    assert answer["ok"] and answer["result"]["failure"] == {"mode": "slow", "delay_s": 3.0}
    answer = dispatch(runtime, {"op": "external", "tie": "TIE-046-061", "live": False})
    assert answer["ok"] and runtime.status()["devices"]["TIE-046-061"]["side_energised"] == [True, False]
