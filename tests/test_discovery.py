"""`stima discover modbus|iec61850` against the simulator's own servers and against servers that
answer exceptions; the scans write nothing and stay within their rate and time bounds."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from gateway.cli.commissioning import UsageError, host_port
from gateway.config import load, validate
from gateway.contract.settings import Iec61850Ied, ModbusTcpIed, RegisterFunction
from hil.iec61850_server import BayServerProcess
from hil.modbus_servers import ModbusEndpoint
from hil.ports import reserve_port
from hil.rig import localise_ieds
from protocols.modbus_discovery import DiscoveryError, parse_units

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"


def stima(*argv: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


class LoopThread:
    """An asyncio loop in a thread, for servers the test process hosts."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


# --------------------------------------------------------------------------- Modbus: the simulator


def test_modbus_scan_of_the_simulated_relay_finds_its_map_and_writes_nothing(loop: LoopThread) -> None:
    (doc,) = localise_ieds([tomllib.loads(SITE.read_text())], Path("/tmp"))
    ied = validate(doc).ied("IED-CB-045")
    assert isinstance(ied, ModbusTcpIed)
    writes: list[Any] = []
    endpoint = ModbusEndpoint([ied], lambda p, v: writes.append((p, v)))
    loop.call(endpoint.start())
    try:
        loop.call(endpoint.update({"CB-045.ia": 412.5, "CB-045.voltage_kv": 11.02, "CB-045.closed": True}))
        r = stima(
            "discover",
            "modbus",
            f"127.0.0.1:{ied.port}",
            "--units",
            "1-3",
            "--map",
            "--timeout",
            "0.3",
            "--max-address",
            "200",
            "--json",
        )
        assert r.returncode == 0, r.stderr
        scan = json.loads(r.stdout)
        assert scan["live_units"] == [1] and scan["stopped"] is None
        unit = scan["units"][0]
        tables = {t["table"]: t for t in unit["tables"]}
        for point in ied.points:  # every configured register lies in a readable range
            width = 1 if point.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE) else point.type.registers
            ranges = tables[point.function.value]["ranges"]
            assert any(a <= point.address and point.address + width - 1 <= b for a, b in ranges), point.id
        assert tables["input"]["ranges"] == []  # the relay has no input registers
        holding = {int(k): v for k, v in tables["holding"]["values"].items()}
        assert struct.unpack(">f", struct.pack(">HH", holding[0], holding[1]))[0] == pytest.approx(412.5)
        assert tables["discrete"]["values"]["0"] is True  # CB-045.closed
        assert {u["unit_id"]: u["alive"] for u in scan["units"]} == {1: True, 2: False, 3: False}
        assert writes == [] and endpoint.writes == 0 and endpoint.refused_writes == 0
        assert scan["requests"] / scan["duration_s"] <= 50.0 * 1.1  # never faster than the rate limit
        last = max(p.address + p.type.registers - 1 for p in ied.points if p.function == RegisterFunction.HOLDING)
        human = stima("discover", "modbus", f"127.0.0.1:{ied.port}", "--timeout", "0.3", "--max-address", "100")
        assert human.returncode == 0 and "holding registers (FC 3)" in human.stdout
        assert f"readable 0-{last}" in human.stdout
    finally:
        loop.call(endpoint.stop())


# --------------------------------------------------------------------------- Modbus: exceptions


class ExceptionServer:
    """Unit 1 reads holding 0-9 and 100-109 (illegal data address elsewhere, device failure at 52),
    16 coils, refuses input registers (illegal function) and is busy for discrete inputs; every
    other unit id is answered as a gateway with no device behind it (exception 11)."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.port = reserve_port()
        self.requests: list[tuple[int, int, int, int]] = []
        self.writes = 0

    def _unit1(self) -> Any:
        async def action(fc: int, _start: int, address: int, count: int, _current: Any, written: Any) -> Any:
            if written is not None:
                self.writes += 1
                return ExcCodes.ILLEGAL_FUNCTION
            self.requests.append((1, fc, address, count))
            last = address + count - 1
            if fc == 4:
                return ExcCodes.ILLEGAL_FUNCTION
            if fc == 2:
                return ExcCodes.DEVICE_BUSY
            if address <= 52 <= last:
                return ExcCodes.DEVICE_FAILURE
            ok = (0 <= address and last <= 9) or (100 <= address and last <= 109)
            return None if ok else ExcCodes.ILLEGAL_ADDRESS

        return action

    def _gateway(self) -> Any:
        async def action(fc: int, _start: int, _address: int, _count: int, _current: Any, written: Any) -> Any:
            if written is not None:
                self.writes += 1
            self.requests.append((0, fc, 0, 0))
            return ExcCodes.GATEWAY_NO_RESPONSE

        return action

    def start(self) -> None:
        def device(unit: int, action: Any) -> SimDevice:
            bits = [SimData(0, count=16, values=False, datatype=SimType.BITS)]
            regs = [SimData(0, count=200, values=7, datatype=SimType.REGISTERS)]
            return SimDevice(unit, simdata=(bits, bits, regs, regs), action=action)

        async def run() -> None:
            self.server = ModbusTcpServer(
                [device(1, self._unit1()), device(0, self._gateway())], address=("127.0.0.1", self.port)
            )
            await self.server.serve_forever(background=True)

        self.loop.call(run())

    def stop(self) -> None:
        self.loop.call(self.server.shutdown())


def test_modbus_scan_of_a_device_that_answers_exceptions(loop: LoopThread) -> None:
    server = ExceptionServer(loop)
    server.start()
    try:
        r = stima(
            "discover",
            "modbus",
            f"127.0.0.1:{server.port}",
            "--units",
            "1-4",
            "--stride",
            "4",
            "--max-address",
            "200",
            "--rate",
            "200",
            "--timeout",
            "0.3",
            "--json",
        )
        assert r.returncode == 0, r.stderr
        scan = json.loads(r.stdout)
        units = {u["unit_id"]: u for u in scan["units"]}
        assert scan["live_units"] == [1]
        for n in (2, 3, 4):
            assert not units[n]["alive"] and "exception 11" in units[n]["answer"]
        tables = {t["table"]: t for t in units[1]["tables"]}
        assert tables["holding"]["ranges"] == [[0, 9], [100, 109]]
        assert any(k.startswith("4 ") for k in tables["holding"]["exceptions"])  # device failure seen at 52
        assert tables["input"]["supported"] is False
        assert tables["discrete"]["supported"] is True and tables["discrete"]["ranges"] == []
        assert "6 (device busy)" in tables["discrete"]["exceptions"]
        assert tables["coil"]["ranges"] == [[0, 15]]  # the 16 coils of the table
        assert server.writes == 0
        assert {fc for _, fc, _, _ in server.requests} <= {1, 2, 3, 4, 43}
        assert scan["requests"] / scan["duration_s"] <= 200.0 * 1.1
    finally:
        server.stop()


def test_modbus_scan_stops_at_its_deadline(loop: LoopThread) -> None:
    server = ExceptionServer(loop)
    server.start()
    try:
        r = stima(
            "discover",
            "modbus",
            f"127.0.0.1:{server.port}",
            "--units",
            "1-247",
            "--deadline",
            "1",
            "--rate",
            "20",
            "--json",
        )
        scan = json.loads(r.stdout)
        assert scan["stopped"] and "deadline" in scan["stopped"]
        assert scan["requests"] <= 1 * 20 + 2  # at most the rate times the deadline (and the one in flight)
    finally:
        server.stop()


def test_modbus_scan_of_nothing_listening_says_so() -> None:
    r = stima("discover", "modbus", f"127.0.0.1:{reserve_port()}", "--timeout", "0.3")
    assert r.returncode == 2 and "cannot connect" in r.stderr


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 20)), min_size=1, max_size=6))
def test_unit_ranges_parse_to_the_ids_they_name(parts: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}-{min(a + n, 255)}" if n else str(a) for a, n in parts)
    expected = sorted({u for a, n in parts for u in range(a, min(a + n, 255) + 1)})
    assert parse_units(text) == expected


@given(st.text(max_size=12))
def test_unit_text_parses_or_is_refused(text: str) -> None:
    try:
        units = parse_units(text)
    except DiscoveryError:
        return
    assert units and all(0 <= u <= 255 for u in units)


@given(st.text(max_size=20))
def test_host_port_parses_or_is_refused(text: str) -> None:
    try:
        host, port = host_port(text, 502)
    except UsageError:
        return
    assert host and 1 <= port <= 65535


# --------------------------------------------------------------------------- IEC 61850


def _signature(ied: Iec61850Ied) -> set[tuple[str, str, bool]]:
    return {(p.reference, "CO" if p.control else p.fc.value, p.control) for p in ied.points}


def _wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def test_iec61850_browse_of_the_simulated_bay_gives_its_site_entry(tmp_path: Path) -> None:
    original = load(SITE).ied("IED-BAY-046")
    assert isinstance(original, Iec61850Ied)
    port = reserve_port()
    server = BayServerProcess(str(SITE), "IED-BAY-046", port, log_path=str(tmp_path / "bay.log"))
    try:
        server.wait_listening()
        out = tmp_path / "bay046.toml"
        r = stima(
            "discover",
            "iec61850",
            f"127.0.0.1:{port}",
            "--write",
            str(out),
            "--id",
            "IED-BAY-046",
            "--prefix",
            "CB-046",
            "--json",
        )
        assert r.returncode == 0, r.stderr + r.stdout
        data = json.loads(r.stdout)
        lns = {ln["name"]: ln for ld in data["logical_devices"] for ln in ld["logical_nodes"]}
        assert {"LLN0", "MMXU1", "XCBR1", "CSWI1"} <= set(lns)
        (rcb,) = lns["LLN0"]["report_control_blocks"]
        assert rcb["buffered"] and rcb["data_set"] == "dsPoints" and "dchg" in rcb["trigger_options"]
        assert {do["name"]: do["ctl_model"] for do in lns["CSWI1"]["data_objects"]}[
            "Pos"
        ] == "sbo-with-enhanced-security"
        (entry,) = tomllib.loads(out.read_text())["ieds"]
        browsed = Iec61850Ied.model_validate(entry)
        assert _signature(browsed) == _signature(original)
        assert browsed.report_control_blocks == original.report_control_blocks
        human = stima("discover", "iec61850", f"127.0.0.1:{port}")
        assert human.returncode == 0 and "buffered report block brcbMeas01 on dsPoints" in human.stdout
    finally:
        server.close()


def test_iec61850_browse_of_a_server_that_refuses_reads(tmp_path: Path) -> None:
    port = reserve_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.refusing_iec61850",
            "--config",
            str(SITE),
            "--ied",
            "IED-BAY-046",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        r = stima("discover", "iec61850", f"127.0.0.1:{port}", "--json", "--fragment")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert any("CSWI1.Pos.ctlModel" in x and "error 3" in x for x in data["refusals"])
        # the browse went on: the measurements are there, the control without a known model is not proposed
        refs = {p["reference"] for p in data["site_fragment"]["points"]}
        assert "BAY046LD0/MMXU1.A.phsA.cVal.mag.f" in refs and "BAY046LD0/CSWI1.Pos" not in refs
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=20)


def test_iec61850_browse_of_nothing_listening_says_so() -> None:
    r = stima("discover", "iec61850", f"127.0.0.1:{reserve_port()}", "--timeout", "0.5")
    assert r.returncode == 2 and "cannot associate" in r.stderr
