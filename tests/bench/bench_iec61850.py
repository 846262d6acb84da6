"""IEC 61850 over loopback: report latency, report throughput, polled reads, operate round trip.

The simulated bay server runs in its own process (`hil.iec61850_server`); the gateway's client
(`protocols.iec61850.Iec61850Client`) runs here. Report latency is measured from writing the
value line to the server's stdin to the update reaching the client's sink, so it includes the
pipe and the server's JSON parsing. Operate round trip is select-with-value + operate + the
CommandTermination, alone and with reports streaming at the same time.

Asserts nothing about speed; run with `.venv/bin/python tests/bench/bench_iec61850.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.contract.clock import SystemClock
from gateway.config import load
from gateway.contract.settings import Iec61850Ied
from gateway.contract.points import PointUpdate
from hil.iec61850_server import BayServerProcess
from hil.ports import reserve_port as free_port
from protocols._iec61850_ffi import FC, ffi, lib
from protocols.iec61850 import Iec61850Client

SITE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "sub-003.toml"
IED = "IED-BAY-046"
CMD = "CB-046.position_cmd"
LATENCY_SAMPLES = 1000
BURST_LINES = 5000
OPERATES = 500
POLL_READS = 2000


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(name: str, samples_s: Sequence[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return f"{name:<44} n={len(ms):>5}  p50 {pct(ms, 0.50):7.3f} ms  p99 {pct(ms, 0.99):7.3f} ms  max {max(ms):7.3f} ms"


class Arrivals:
    """Sink that timestamps each arrival of the watched point by value."""

    def __init__(self, watched: str) -> None:
        self.watched = watched
        self.arrived: dict[float, float] = {}
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self, updates: Sequence[PointUpdate]) -> None:
        now = time.monotonic()
        for u in updates:
            if u.point_id == self.watched and isinstance(u.value, float):
                self.arrived.setdefault(u.value, now)
                self.count += 1
        self.event.set()

    async def wait_for(self, value: float, timeout_s: float = 10.0) -> float | None:
        deadline = time.monotonic() + timeout_s
        while value not in self.arrived:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), remaining)
            except TimeoutError:
                return None
        return self.arrived[value]


async def bench(cfg: Iec61850Ied, bay: BayServerProcess) -> None:
    sink = Arrivals("CB-046.ia")
    client = Iec61850Client(cfg, sink, SystemClock(), logging.getLogger("bench.iec61850"))
    task = asyncio.create_task(client.run())
    try:
        bay.set_values({"CB-046.ia": 0.5, CMD: True, "CB-046.closed": True})
        if await sink.wait_for(0.5, 15.0) is None:
            raise SystemExit("no report from the server: is the port free?")
        while client.status.state.value != "online":
            await asyncio.sleep(0.01)

        # 1. Report latency, one value at a time.
        latencies = []
        lost = 0
        for n in range(1, LATENCY_SAMPLES + 1):
            value = 1000.0 + n
            t0 = time.monotonic()
            bay.set_values({"CB-046.ia": value})
            arrived = await sink.wait_for(value, 5.0)
            if arrived is None:
                lost += 1
            else:
                latencies.append(arrived - t0)
        print(line("report latency (stdin → sink), one at a time", latencies), f" lost {lost}")

        # 2. Report throughput: a burst of distinct values, written as fast as the pipe takes them.
        before = sink.count
        t0 = time.monotonic()
        last = 0.0
        for n in range(1, BURST_LINES + 1):
            last = 100_000.0 + n
            bay.set_values({"CB-046.ia": last})
        sent_s = time.monotonic() - t0
        await sink.wait_for(last, 30.0)
        elapsed = time.monotonic() - t0
        received = sink.count - before
        print(
            f"{'report burst':<44} {BURST_LINES} lines in {sent_s:.3f} s; {received} ia updates "
            f"received in {elapsed:.3f} s = {received / elapsed:,.0f} reports/s "
            f"({received / BURST_LINES:.0%} of lines; the server may merge changes into one report)"
        )

        # 3. Operate round trip, quiet link.
        quiet = []
        value = False
        for _ in range(OPERATES):
            t0 = time.monotonic()
            await client.submit_write(CMD, value)
            quiet.append(time.monotonic() - t0)
            value = not value
        print(line("operate SBO-enhanced round trip, quiet", quiet))

        # 4. Operate round trip with reports streaming (~500 values/s).
        stop = threading.Event()

        def feed() -> None:
            n = 0
            while not stop.is_set() and n < 100_000:
                n += 1
                bay.set_values({"CB-046.ia": 500_000.0 + n})
                time.sleep(0.002)

        feeder = threading.Thread(target=feed, daemon=True)
        reports_before = client.status.extra["reports"]
        feeder.start()
        busy = []
        t_start = time.monotonic()
        for _ in range(OPERATES):
            t0 = time.monotonic()
            await client.submit_write(CMD, value)
            busy.append(time.monotonic() - t0)
            value = not value
        busy_s = time.monotonic() - t_start
        stop.set()
        await asyncio.to_thread(feeder.join, 10)
        reports = client.status.extra["reports"] - reports_before
        print(
            line("operate round trip, reports streaming", busy),
            f" ({reports} reports in {busy_s:.2f} s = {reports / busy_s:,.0f}/s)",
        )
        print(f"{'ratio busy/quiet operate p50':<44} {pct(busy, 0.5) / pct(quiet, 0.5):.2f}x")
        for _ in range(bay.commands.qsize()):
            bay.commands.get_nowait()

        # 5. Polled reads (one MMS read of a whole LN with FC=MX), through the worker thread.
        session = client._session
        assert session is not None

        def read_ln() -> None:
            error = ffi.new("int*")
            value = lib.IedConnection_readObject(session.con, error, b"BAY046LD0/MMXU1", FC["MX"])
            if value != ffi.NULL:
                lib.MmsValue_delete(value)

        t0 = time.monotonic()
        for _ in range(POLL_READS):
            await client._call(read_ln)
        elapsed = time.monotonic() - t0
        print(
            f"{'LN read (MMXU1, FC=MX, 7 points) via worker':<44} {POLL_READS / elapsed:,.0f} reads/s "
            f"({elapsed / POLL_READS * 1e6:.0f} µs each)"
        )
        print(f"status: {client.status.as_dict()}")
    finally:
        await client.close()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    ied = load(SITE).ied(IED)
    assert isinstance(ied, Iec61850Ied)
    port = free_port()
    cfg = ied.model_copy(update={"port": port, "poll_period_ms": 60_000, "timeout_ms": 2000})
    bay = BayServerProcess(str(SITE), IED, port)
    try:
        bay.wait_listening()
        print(f"IEC 61850 bench: server pid {bay.proc.pid} on 127.0.0.1:{port}, client pid {os.getpid()}")
        asyncio.run(bench(cfg, bay))
    finally:
        bay.close()


if __name__ == "__main__":
    main()
