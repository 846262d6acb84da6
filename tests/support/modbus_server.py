"""A real pymodbus TCP server in a background thread, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from hil.ports import reserve_port

_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


def free_port() -> int:
    """A loopback port reserved for this process (hil.ports): no other server of the run gets it."""
    return reserve_port()


class ModbusTestServer:
    """One Modbus TCP server on 127.0.0.1 with 1,000 of each table, for one or more unit ids."""

    def __init__(self, port: int | None = None, unit_ids: Sequence[int] = (1,), size: int = 1000) -> None:
        self.port = port or free_port()
        self.unit_ids = tuple(unit_ids)
        self._size = size
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"modbus-{self.port}")
        self.server: ModbusTcpServer | None = None

    def _context(self) -> ModbusServerContext:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            devices = {
                uid: ModbusDeviceContext(
                    di=ModbusSequentialDataBlock(1, [0] * self._size),
                    co=ModbusSequentialDataBlock(1, [0] * self._size),
                    hr=ModbusSequentialDataBlock(1, [0] * self._size),
                    ir=ModbusSequentialDataBlock(1, [0] * self._size),
                )
                for uid in self.unit_ids
            }
            return ModbusServerContext(devices=devices, single=False)

    def start(self) -> ModbusTestServer:
        if not self._thread.is_alive():
            self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self.server = ModbusTcpServer(self._context(), address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    def stop(self) -> None:
        """Stop answering and close the listener (the IED disappears)."""
        if self.server is not None:
            self._call(self.server.shutdown())
            self.server = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def set(self, table: str, address: int, values: Sequence[int | bool], unit: int = 1) -> None:
        assert self.server is not None
        server = self.server
        self._call(server.context.async_setValues(unit, _FC[table], address, list(values)))

    def get(self, table: str, address: int, count: int = 1, unit: int = 1) -> list[Any]:
        assert self.server is not None
        server = self.server
        return list(self._call(server.context.async_getValues(unit, _FC[table], address, count)))


@contextlib.contextmanager
def modbus_server(port: int | None = None, unit_ids: Sequence[int] = (1,)) -> Iterator[ModbusTestServer]:
    server = ModbusTestServer(port, unit_ids).start()
    try:
        yield server
    finally:
        server.close()
