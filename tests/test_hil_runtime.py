"""The simulator runtime against real pymodbus clients: TCP, RTU over a socat pty pair, commloss."""

from __future__ import annotations

import asyncio
import shutil
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.pdu import ExceptionResponse

from gateway.config import SiteConfig, validate
from gateway.contract.settings import (
    DataType,
    ModbusPoint,
    ModbusRtuIed,
    ModbusTcpIed,
    RegisterFunction,
)
from hil.control import ControlServer, request
from hil.runtime import HilRuntime, InjectionError, RuntimeOptions
from tests.support.modbus_server import free_port
from tests.support.stub_grid import StubModel

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy/examples/sub-003.toml"
_DT = ModbusClientMixin.DATATYPE
_TYPES = {
    DataType.INT16: _DT.INT16,
    DataType.UINT16: _DT.UINT16,
    DataType.INT32: _DT.INT32,
    DataType.UINT32: _DT.UINT32,
    DataType.FLOAT32: _DT.FLOAT32,
}


def make_site(tmp_path: Path) -> SiteConfig:
    """The example site with free loopback ports and the serial line under tmp_path."""
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    for ied in data["ieds"]:
        if ied["protocol"] in ("modbus_tcp", "iec61850"):
            ied["port"] = free_port()
        else:
            ied["serial_port"] = str(tmp_path / "tty" / Path(ied["serial_port"]).name)
    return validate(data, "test-site")


def tcp_ied(site: SiteConfig, ied_id: str) -> ModbusTcpIed:
    ied = site.ied(ied_id)
    assert isinstance(ied, ModbusTcpIed)
    return ied


def modbus_point(ied: ModbusTcpIed | ModbusRtuIed, point_id: str) -> ModbusPoint:
    return next(p for p in ied.points if p.id == point_id)


def run(coro_fn: Callable[[], Awaitable[Any]], timeout_s: float = 60.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout_s)

    return asyncio.run(bounded())


def decode(words: list[int] | list[bool], point: ModbusPoint) -> float | int | bool:
    if point.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE):
        return bool(words[0])
    raw = ModbusClientMixin.convert_from_registers(list(words), _TYPES[point.type], word_order=point.word_order.value)
    assert isinstance(raw, int | float)
    return raw * point.scale + point.offset


async def read_point(client: Any, point: ModbusPoint, unit: int) -> Any:
    width = 1 if point.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE) else point.type.registers
    reader = {
        RegisterFunction.COIL: client.read_coils,
        RegisterFunction.DISCRETE: client.read_discrete_inputs,
        RegisterFunction.HOLDING: client.read_holding_registers,
        RegisterFunction.INPUT: client.read_input_registers,
    }[point.function]
    response = await reader(point.address, count=width, device_id=unit)
    assert not response.isError(), f"{point.id}: {response}"
    words = (
        response.bits[:1]
        if point.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE)
        else response.registers
    )
    return decode(words, point)


def expected(value: Any, point: ModbusPoint) -> Any:
    if point.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE):
        return bool(value)
    raw = (float(value) - point.offset) / point.scale
    if point.type is DataType.FLOAT32:
        return pytest.approx(raw * point.scale + point.offset, rel=1e-6)
    return round(raw) * point.scale + point.offset


OPTIONS = RuntimeOptions(speed=0, ami=False, iec61850=False)


def test_tcp_values_match_model_and_writes_reach_it(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    model = StubModel.from_site(site)

    async def scenario() -> None:
        runtime = HilRuntime(site, model, OPTIONS)
        await runtime.start()
        try:
            for ied in (i for i in site.ieds if isinstance(i, ModbusTcpIed)):
                client = AsyncModbusTcpClient("127.0.0.1", port=ied.port, timeout=2, retries=0)
                assert await client.connect()
                try:
                    for point in ied.points:
                        got = await read_point(client, point, ied.unit_id)
                        assert got == expected(model.values[point.id], point), point.id
                finally:
                    client.close()

            cb = tcp_ied(site, "IED-CB-044")
            client = AsyncModbusTcpClient("127.0.0.1", port=cb.port, timeout=2, retries=0)
            assert await client.connect()
            try:
                trip = modbus_point(cb, "CB-044.trip_cmd")
                response = await client.write_coil(trip.address, True, device_id=cb.unit_id)
                assert not response.isError()
                # the command is in the model before the response came back
                assert model.commands[-1][:2] == ("CB-044.trip_cmd", True)
                assert model.breaker_closed("CB-044") is False
                await runtime.step()
                closed = modbus_point(cb, "CB-044.closed")
                assert await read_point(client, closed, cb.unit_id) is False
                assert runtime.breakers()["CB-044"] == "open"
                # a read-only register refuses a write, and the model never sees it
                n = len(model.commands)
                response = await client.write_register(0, 5, device_id=cb.unit_id)
                assert isinstance(response, ExceptionResponse) and response.exception_code == 2
                assert len(model.commands) == n
            finally:
                client.close()

            xfmr = tcp_ied(site, "IED-XFMR-101")
            client = AsyncModbusTcpClient("127.0.0.1", port=xfmr.port, timeout=2, retries=0)
            assert await client.connect()
            try:
                setpoint = modbus_point(xfmr, "XFMR-101.tap_setpoint")
                words = ModbusClientMixin.convert_to_registers(-3, _DT.INT16)
                response = await client.write_registers(setpoint.address, words, device_id=xfmr.unit_id)
                assert not response.isError()
                assert model.commands[-1][:2] == ("XFMR-101.tap_setpoint", -3)
            finally:
                client.close()
        finally:
            await runtime.stop()

    run(scenario)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_rtu_read_through_socat_pty_pair(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    model = StubModel.from_site(site)
    cap = next(i for i in site.ieds if isinstance(i, ModbusRtuIed))

    async def scenario() -> None:
        runtime = HilRuntime(site, model, OPTIONS)
        await runtime.start()
        try:
            assert Path(cap.serial_port).exists()
            client = AsyncModbusSerialClient(
                port=cap.serial_port,
                baudrate=cap.baudrate,
                parity=cap.parity,
                stopbits=cap.stopbits,
                bytesize=cap.bytesize,
                timeout=1,
                retries=1,
            )
            assert await client.connect()
            try:
                for point in cap.points:
                    got = await read_point(client, point, cap.unit_id)
                    assert got == expected(model.values[point.id], point), point.id
                steps = next(p for p in cap.points if p.writable)
                response = await client.write_register(steps.address, 3, device_id=cap.unit_id)
                assert not response.isError()
                assert model.commands[-1][:2] == (steps.id, 3)

                runtime.inject_commloss(cap.id, 0.05)
                await asyncio.sleep(0)
                with pytest.raises(Exception):  # noqa: B017 - pymodbus raises ModbusIOException on no answer
                    response = await client.read_input_registers(0, count=1, device_id=cap.unit_id)
                    assert response.isError()
                for _ in range(10):
                    await runtime.step()
                assert not runtime.status()["commloss"]
                got = await read_point(client, cap.points[0], cap.unit_id)
                assert got == expected(model.values[cap.points[0].id], cap.points[0])
            finally:
                client.close()
        finally:
            await runtime.stop()
        assert not Path(cap.serial_port).exists()

    run(scenario)


def test_commloss_closes_tcp_listener_then_recovers(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    model = StubModel.from_site(site)
    cb = site.ied("IED-CB-045")
    assert isinstance(cb, ModbusTcpIed)
    ia = cb.points[0]

    async def scenario() -> None:
        runtime = HilRuntime(site, model, OPTIONS)
        await runtime.start()
        try:
            client = AsyncModbusTcpClient("127.0.0.1", port=cb.port, timeout=0.5, retries=0, reconnect_delay=0)
            assert await client.connect()
            assert await read_point(client, ia, cb.unit_id) == expected(model.values[ia.id], ia)
            result = runtime.inject_commloss(cb.id, 1.0)
            assert result["until_sim_time_s"] == pytest.approx(1.0)
            for _ in range(3):
                await runtime.step()
            assert runtime.status()["commloss"][cb.id] > 0
            with pytest.raises(Exception):  # noqa: B017 - connection closed by the device
                response = await client.read_holding_registers(0, count=2, device_id=cb.unit_id)
                assert response.isError()
            client.close()
            fresh = AsyncModbusTcpClient("127.0.0.1", port=cb.port, timeout=0.5, retries=0, reconnect_delay=0)
            assert not await fresh.connect()
            fresh.close()
            for _ in range(100):
                await runtime.step()
            assert cb.id not in runtime.status()["commloss"]
            for _ in range(50):  # the listener reopens asynchronously
                again = AsyncModbusTcpClient("127.0.0.1", port=cb.port, timeout=0.5, retries=0)
                if await again.connect():
                    break
                again.close()
                await asyncio.sleep(0.02)
            try:
                assert await read_point(again, ia, cb.unit_id) == expected(model.values[ia.id], ia)
            finally:
                again.close()
        finally:
            await runtime.stop()

    run(scenario)


def test_injections_validate_their_input(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    model = StubModel.from_site(site)
    runtime = HilRuntime(site, model, OPTIONS)

    async def scenario() -> None:
        result = runtime.inject_fault("LINE-045", 2300, "3ph", transient=True)
        assert result["kind"] == "3ph" and model.active_faults[-1]["distance_m"] == 2300
        assert runtime.inject_fault("LINE-044", 10, "1ph")["kind"] == "slg"
        bad = [
            (lambda: runtime.inject_fault("LINE-999", 100), "unknown power_line 'LINE-999'"),
            (lambda: runtime.inject_fault("XFMR-101", 100), "unknown power_line"),
            (lambda: runtime.inject_fault("LINE-045", -1), "distance_m must be >= 0"),
            (lambda: runtime.inject_fault("LINE-045", 1e9), "beyond the end of LINE-045"),
            (lambda: runtime.inject_fault("LINE-045", float("nan")), "finite"),
            (lambda: runtime.inject_fault("LINE-045", 10, "4ph"), "unknown fault type '4ph'"),
            (lambda: runtime.inject_fault("LINE-045", 10, impedance_ohm=-1), "impedance_ohm"),
            (lambda: runtime.inject_commloss("IED-NOPE", 10), "unknown IED 'IED-NOPE'"),
            (lambda: runtime.inject_commloss("IED-CB-045", 0), "duration_s must be > 0"),
            (lambda: runtime.load_step("XFMR-999", 1.3), "unknown load step target"),
            (lambda: runtime.load_step("XFMR-101", 0), "factor must be > 0"),
            (lambda: runtime.temperature_ramp("LINE-045", 25, 600), "unknown transformer"),
            (lambda: runtime.temperature_ramp("XFMR-101", "hot", 600), "delta_c must be a number"),  # type: ignore[arg-type]
        ]
        for call, message in bad:
            with pytest.raises(InjectionError, match=message.replace("(", r"\(")):
                call()
        runtime.load_step("XFMR-101", 1.3)
        runtime.temperature_ramp("XFMR-101", 25, 600)
        assert model.load_steps == [("XFMR-101", 1.3)] and model.ramps == [("XFMR-101", 25.0, 600.0)]
        runtime.clear_faults()
        assert model.active_faults == []

    run(scenario)


def test_control_socket_round_trip(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    model = StubModel.from_site(site)
    sock = tmp_path / "run" / "hil.sock"

    async def scenario() -> None:
        runtime = HilRuntime(site, model, OPTIONS)
        control = ControlServer(runtime, sock)
        await control.start()
        try:
            await runtime.step()
            status = await asyncio.to_thread(request, sock, {"op": "status"})
            assert status["steps"] == 1 and status["breakers"]["CB-045"] == "closed"
            fault = {"op": "fault", "line": "LINE-045", "distance_m": 2300.0, "kind": "3ph", "transient": True}
            await asyncio.to_thread(request, sock, fault)
            assert model.active_faults[0]["line"] == "LINE-045"
            status = await asyncio.to_thread(request, sock, {"op": "status"})
            assert status["faults"][0]["distance_m"] == 2300.0
            from hil.control import ControlError

            with pytest.raises(ControlError, match="unknown power_line 'LINE-9'"):
                await asyncio.to_thread(request, sock, {**fault, "line": "LINE-9"})
            with pytest.raises(ControlError, match='needs "ied"'):
                await asyncio.to_thread(request, sock, {"op": "commloss"})
            with pytest.raises(ControlError, match="unknown op"):
                await asyncio.to_thread(request, sock, {"op": "explode"})
        finally:
            await control.close()
            await runtime.stop()
        assert not sock.exists()

    run(scenario)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_two_rtu_ieds_on_one_line_and_commloss_of_one(tmp_path: Path) -> None:
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    data["ieds"] = [i for i in data["ieds"] if i["protocol"] == "modbus_rtu"]
    first = data["ieds"][0]
    first["serial_port"] = str(tmp_path / "tty" / "rs485-1")
    second = {
        **first,
        "id": "IED-CAP-302",
        "unit_id": first["unit_id"] + 1,
        "points": [{**p, "id": p["id"].replace("CAP-301", "CAP-302")} for p in first["points"]],
    }
    data["ieds"].append(second)
    data["agents"], data["meter_groups"], data["protection"] = [], [], []
    site = validate(data, "two-on-a-line")
    model = StubModel.from_site(site)
    a, b = (i for i in site.ieds if isinstance(i, ModbusRtuIed))
    model.values[b.points[0].id] = model.values[a.points[0].id] * 2  # tell them apart

    async def scenario() -> None:
        runtime = HilRuntime(site, model, OPTIONS)
        await runtime.start()
        try:
            assert len(runtime.endpoints) == 1 and len(runtime.serial_lines) == 1
            client = AsyncModbusSerialClient(
                port=a.serial_port, baudrate=a.baudrate, parity=a.parity, stopbits=a.stopbits, timeout=0.5, retries=0
            )
            assert await client.connect()
            try:
                for ied in (a, b):
                    got = await read_point(client, ied.points[0], ied.unit_id)
                    assert got == expected(model.values[ied.points[0].id], ied.points[0])
                runtime.inject_commloss(b.id, 0.05)
                await asyncio.sleep(0)
                with pytest.raises(Exception):  # noqa: B017 - no answer from the silent unit
                    response = await client.read_input_registers(0, count=1, device_id=b.unit_id)
                    assert response.isError()
                await asyncio.sleep(0.1)  # let the framer resynchronise after the timeout
                got = await read_point(client, a.points[0], a.unit_id)  # the other one still answers
                assert got == expected(model.values[a.points[0].id], a.points[0])
                for _ in range(10):
                    await runtime.step()
                got = await read_point(client, b.points[0], b.unit_id)
                assert got == expected(model.values[b.points[0].id], b.points[0])
            finally:
                client.close()
        finally:
            await runtime.stop()

    run(scenario)


def test_a_port_in_use_is_reported_and_nothing_is_left_open(tmp_path: Path) -> None:
    import socket

    site = make_site(tmp_path)
    model = StubModel.from_site(site)
    cb = site.ied("IED-CB-045")
    assert isinstance(cb, ModbusTcpIed)

    async def scenario() -> None:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", cb.port))
            squatter.listen()
            runtime = HilRuntime(site, model, OPTIONS)
            with pytest.raises(RuntimeError, match=f"cannot serve IED-CB-045 on 127.0.0.1:{cb.port}"):
                await runtime.run(0.1)
            assert runtime.endpoints == [] and runtime.serial_lines == []
        again = HilRuntime(site, model, OPTIONS)  # the ports opened before the failure were released
        await again.start()
        await again.stop()

    run(scenario)


def test_a_commloss_shorter_than_a_step_still_recovers(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    model = StubModel.from_site(site)
    cb = site.ied("IED-CB-044")
    assert isinstance(cb, ModbusTcpIed)

    async def scenario() -> None:
        runtime = HilRuntime(site, model, OPTIONS)
        await runtime.start()
        try:
            runtime.inject_commloss(cb.id, 0.001)
            await runtime.step()  # expires in the same turn the loss would start
            await runtime.step()
            endpoint = runtime._endpoint_of[cb.id]
            assert endpoint.server is not None and not endpoint.silent
            client = AsyncModbusTcpClient("127.0.0.1", port=cb.port, timeout=1, retries=0)
            assert await client.connect()
            try:
                assert await read_point(client, cb.points[0], cb.unit_id) == expected(
                    model.values[cb.points[0].id], cb.points[0]
                )
            finally:
                client.close()
        finally:
            await runtime.stop()

    run(scenario)
