"""The simulated IEDs answer as real devices do where a master would notice the difference: an
absent unit on an RS-485 line stays silent (no device recognises the address), a Modbus TCP
endpoint answers for an absent unit as a gateway (exception 11), and a set-point out of the
device's range is refused with exception 3, never clamped."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from gateway.contract.settings import ModbusRtuIed, ModbusTcpIed
from hil.modbus_servers import ModbusEndpoint, wait_listening
from tests.support.modbus_server import free_port


def _points() -> list[dict[str, Any]]:
    return [
        {"id": "v", "address": 0, "function": "input", "type": "uint16"},
        {"id": "tap", "address": 10, "type": "int16", "writable": True},
    ]


def _writes() -> tuple[list[tuple[str, Any]], Any]:
    accepted: list[tuple[str, Any]] = []

    def on_write(point_id: str, value: Any) -> None:
        if point_id == "tap" and not -16 <= value <= 16:
            raise ValueError(f"{point_id}: {value} is outside the device's range -16..16")
        accepted.append((point_id, value))

    return accepted, on_write


@pytest.fixture()
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("socat") is None:
        pytest.fail("socat is required (make test installs it)")
    a, b = tmp_path / "ttyGW", tmp_path / "ttyIED"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 5
    while not (a.exists() and b.exists()):
        assert time.monotonic() < end, "socat did not create the pty pair"
        time.sleep(0.02)
    yield str(a), str(b)
    proc.terminate()
    proc.wait(5)


def test_rtu_absent_unit_is_silent_and_out_of_range_write_is_refused(pty_pair: tuple[str, str]) -> None:
    gw_end, ied_end = pty_pair
    ied = ModbusRtuIed.model_validate(
        {
            "id": "IED-1",
            "protocol": "modbus_rtu",
            "serial_port": gw_end,
            "unit_id": 1,
            "parity": "N",
            "points": _points(),
        }
    )
    accepted, on_write = _writes()

    async def main() -> dict[str, Any]:
        endpoint = ModbusEndpoint([ied], on_write, serial_path=ied_end)
        await endpoint.start()
        await endpoint.update({"v": 230, "tap": 0})
        client = AsyncModbusSerialClient(gw_end, baudrate=19200, timeout=0.5, retries=0)
        await client.connect()
        out: dict[str, Any] = {}
        try:
            out["present"] = (await client.read_input_registers(0, count=1, device_id=1)).registers
            try:
                answer = await client.read_input_registers(0, count=1, device_id=7)
                out["absent"] = f"answered: {answer}"
            except ModbusIOException:
                out["absent"] = "no answer"
            out["in_range"] = (await client.write_register(10, 5, device_id=1)).isError()
            refused = await client.write_register(10, 40, device_id=1)
            out["out_of_range"] = refused.exception_code if refused.isError() else "accepted"
            out["status"] = endpoint.status()
        finally:
            client.close()
            await endpoint.stop()
        return out

    out = asyncio.run(main())
    assert out["present"] == [230]
    assert out["absent"] == "no answer"
    assert out["in_range"] is False
    assert out["out_of_range"] == 3
    assert accepted == [("tap", 5)]
    assert out["status"]["absent_unit_requests"] == 1 and out["status"]["refused_writes"] == 1


def test_tcp_absent_unit_answers_as_a_gateway() -> None:
    port = free_port()
    ied = ModbusTcpIed.model_validate(
        {"id": "IED-1", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit_id": 1, "points": _points()}
    )
    accepted, on_write = _writes()

    async def main() -> tuple[Any, Any, Any]:
        endpoint = ModbusEndpoint([ied], on_write)
        await endpoint.start()
        await wait_listening("127.0.0.1", port)
        await endpoint.update({"v": 230, "tap": 0})
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await client.connect()
        try:
            absent = await client.read_input_registers(0, count=1, device_id=9)
            refused = await client.write_register(10, (-17) & 0xFFFF, device_id=1)  # int16 -17
            present = await client.read_input_registers(0, count=1, device_id=1)
        finally:
            client.close()
            await endpoint.stop()
        return absent, refused, present

    absent, refused, present = asyncio.run(main())
    assert absent.isError() and absent.exception_code == 11
    assert refused.isError() and refused.exception_code == 3
    assert present.registers == [230]
    assert accepted == []
