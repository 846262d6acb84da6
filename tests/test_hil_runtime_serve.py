"""`stima-hil serve` as a process, with the real grid model, driven by a real Modbus client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin

from tests.support.modbus_server import free_port

pytest.importorskip("hil.grid.model")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy/examples/sub-003.toml"


def _site_file(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    for ied in data["ieds"]:
        if ied["protocol"] in ("modbus_tcp", "iec61850"):
            ied["port"] = free_port()
        else:
            ied["serial_port"] = str(tmp_path / "tty" / Path(ied["serial_port"]).name)
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(data))
    return path, data


def _cli(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil", *args[:1], "--control", str(sock), *args[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_serve_the_example_site_with_the_grid_model(tmp_path: Path) -> None:
    site, data = _site_file(tmp_path)
    sock = tmp_path / "hil.sock"
    log = (tmp_path / "hil.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil", "serve", "--config", str(site), "--control", str(sock), "--no-ami"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    cb = next(i for i in data["ieds"] if i["id"] == "IED-CB-044")
    try:
        for _ in range(300):  # every server listening, and time running
            answer = _cli(sock, "status", "--json") if sock.exists() else None
            if answer is not None and answer.returncode == 0:
                up = json.loads(answer.stdout)
                if up["ready"] and up["sim_time_s"] > 0:
                    break
            assert proc.poll() is None, (tmp_path / "hil.log").read_text()
            time.sleep(0.05)
        status = json.loads(_cli(sock, "status", "--json").stdout)
        assert status["breakers"]["CB-044"] == "closed" and status["sim_time_s"] > 0

        async def drive() -> None:
            client = AsyncModbusTcpClient("127.0.0.1", port=cb["port"], timeout=2, retries=1)
            assert await client.connect()
            try:
                regs = (await client.read_holding_registers(0, count=12, device_id=1)).registers
                ia, kv, hz = (
                    float(
                        client.convert_from_registers(
                            regs[a : a + 2],  # type: ignore[arg-type]
                            ModbusClientMixin.DATATYPE.FLOAT32,
                        )
                    )
                    for a in (0, 8, 10)
                )
                assert 0 < ia < 60000 and 5 < kv < 40 and 45 < hz < 65
                assert (await client.read_discrete_inputs(0, count=1, device_id=1)).bits[0] is True
                assert not (await client.write_coil(0, True, device_id=1)).isError()  # trip
                for _ in range(200):
                    if not (await client.read_discrete_inputs(0, count=1, device_id=1)).bits[0]:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("CB-044 did not open after the trip command")
                regs = (await client.read_holding_registers(0, count=2, device_id=1)).registers
                assert client.convert_from_registers(regs, ModbusClientMixin.DATATYPE.FLOAT32) == pytest.approx(
                    0, abs=1
                )
            finally:
                client.close()

        asyncio.run(asyncio.wait_for(drive(), 30))
        assert json.loads(_cli(sock, "status", "--json").stdout)["breakers"]["CB-044"] == "open"
        fault = _cli(sock, "inject", "fault", "LINE-045", "--distance", "2.3km", "--type", "3ph")
        assert fault.returncode == 0, fault.stderr
        assert json.loads(fault.stdout)["fault"]["fault_current_a"] > 1000
        bad = _cli(sock, "inject", "fault", "LINE-045", "--distance", "99km")
        assert bad.returncode == 1 and "beyond the end of LINE-045" in bad.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            log.close()
    assert not sock.exists()
    assert not Path(next(i for i in data["ieds"] if i["protocol"] == "modbus_rtu")["serial_port"]).exists()
