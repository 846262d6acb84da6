"""A farm of Modbus TCP servers whose registers all change at a fixed period (benchmark load).

Run as a separate process: `python tests/bench/modbus_farm.py --devices 20 --registers 100
--period-ms 100`. Prints one JSON line with the ports, then one line per update cycle:
`{"k": cycle, "t": wall time of the write}`. Register i of every device holds (k + i) mod 65536,
so a reader can tell which cycle a value belongs to and how old it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
import warnings

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer


class Farm:
    """This farm run as a child process; records when each cycle's values were written."""

    def __init__(self, devices: int, registers: int, period_ms: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--devices",
                str(devices),
                "--registers",
                str(registers),
                "--period-ms",
                str(period_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.ports: list[int] = json.loads(self.proc.stdout.readline())["ports"]
        self.cycle_time: dict[int, float] = {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            entry = json.loads(line)
            self.cycle_time[entry["k"] % 65536] = entry["t"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def main(devices: int, registers: int, period_s: float, duration_s: float) -> None:
    # a client closing mid-response is normal when a benchmark ends; pymodbus logs it as an
    # error with a dump of its last frames, which would bury the figures
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    servers = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(devices):
            ctx = ModbusServerContext(
                devices=ModbusDeviceContext(
                    hr=ModbusSequentialDataBlock(1, [0] * registers), co=ModbusSequentialDataBlock(1, [0] * 16)
                )
            )
            server = ModbusTcpServer(ctx, address=("127.0.0.1", 0))
            await server.serve_forever(background=True)
            servers.append(server)
    ports = [s.transport.sockets[0].getsockname()[1] for s in servers]  # type: ignore[union-attr]
    print(json.dumps({"ports": ports}), flush=True)
    loop = asyncio.get_running_loop()
    start = loop.time()
    k = 0
    while loop.time() - start < duration_s:
        values = [(k + i) % 65536 for i in range(registers)]
        t = time.time()
        for server in servers:
            await server.context.async_setValues(0, 3, 0, values)
        print(json.dumps({"k": k, "t": t}), flush=True)
        k += 1
        next_at = start + k * period_s
        await asyncio.sleep(max(next_at - loop.time(), 0))
    for server in servers:
        await server.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--period-ms", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=3600.0)
    a = parser.parse_args()
    try:
        asyncio.run(main(a.devices, a.registers, a.period_ms / 1000.0, a.duration))
    except KeyboardInterrupt:
        sys.exit(0)
