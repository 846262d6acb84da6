"""Benchmark of the simulator runtime: write-to-model latency, step cost, serving rates, AMI feed.

    .venv/bin/python tests/bench/bench_hil.py [--writes 500] [--meters 100000]

The simulator runs in its own thread and event loop (as in its own process in the field); the
clients run in the main thread. Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient  # noqa: E402

from gateway.contract.clock import SimClock  # noqa: E402
from gateway.config import SiteConfig, validate  # noqa: E402
from gateway.contract.settings import ModbusTcpIed  # noqa: E402
from hil.ami import AmiPublisher  # noqa: E402
from hil.runtime import HilRuntime, RuntimeOptions  # noqa: E402
from protocols.ami import AmiSubscriber  # noqa: E402
from tests.support.broker import run_mosquitto  # noqa: E402
from tests.support.modbus_server import free_port  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy/examples/sub-003.toml"


def site_for(tmp: Path, ami_port: int | None = None) -> SiteConfig:
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    for ied in data["ieds"]:
        if ied["protocol"] in ("modbus_tcp", "iec61850"):
            ied["port"] = free_port()
        else:
            ied["serial_port"] = str(tmp / "tty" / Path(ied["serial_port"]).name)
    if ami_port is not None:
        data["ami"]["broker_port"] = ami_port
    return validate(data, "bench-site")


def make_model(site: SiteConfig, meters: int | None = None) -> tuple[Any, str]:
    try:
        from hil.runtime import build_model

        return build_model(site, seed=0, meters=meters), "hil.grid.model.GridModel"
    except ImportError:
        from tests.support.stub_grid import StubModel

        return StubModel.from_site(site, meters=meters), "stand-in model (hil.grid.model not available)"


class Recorder:
    """Wraps the model so that each command's arrival time is recorded (perf_counter)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.arrivals: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def apply_command(self, point_id: str, value: Any, now_s: float) -> None:
        self.arrivals.append(time.perf_counter())
        self.model.apply_command(point_id, value, now_s)


class SimThread:
    def __init__(self, runtime: HilRuntime) -> None:
        self.runtime = runtime
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.task: Any = None

    def __enter__(self) -> SimThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.runtime.start(), self.loop).result(30)
        self.task = asyncio.run_coroutine_threadsafe(self.runtime.run_steps(), self.loop)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self.runtime.request_stop)
        self.task.result(30)
        asyncio.run_coroutine_threadsafe(self.runtime.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def bench_modbus(tmp: Path, writes: int) -> None:
    site = site_for(tmp)
    model, kind = make_model(site)
    recorder = Recorder(model)
    runtime = HilRuntime(site, recorder, RuntimeOptions(speed=1.0, ami=False, iec61850=False))
    print(f"model: {kind}")
    cb = site.ied("IED-CB-045")
    assert isinstance(cb, ModbusTcpIed)
    trip = next(p for p in cb.points if p.id == "CB-045.trip_cmd")
    close = next(p for p in cb.points if p.id == "CB-045.close_cmd")
    with SimThread(runtime):
        client = AsyncModbusTcpClient("127.0.0.1", port=cb.port, timeout=2, retries=0)  # type: ignore[union-attr]
        await client.connect()
        to_model: list[float] = []
        round_trip: list[float] = []
        for i in range(writes):
            address = trip.address if i % 2 == 0 else close.address
            before = len(recorder.arrivals)
            t0 = time.perf_counter()
            await client.write_coil(address, True, device_id=cb.unit_id)  # type: ignore[union-attr]
            t1 = time.perf_counter()
            round_trip.append((t1 - t0) * 1e3)
            if len(recorder.arrivals) > before:
                to_model.append((recorder.arrivals[before] - t0) * 1e3)
        print(
            f"trip/close coil write → model.apply_command: p50 {pct(to_model, 50):.3f} ms, "
            f"p99 {pct(to_model, 99):.3f} ms, max {max(to_model):.3f} ms ({len(to_model)} writes)"
        )
        print(
            f"coil write round trip (response back at the client): p50 {pct(round_trip, 50):.3f} ms, "
            f"p99 {pct(round_trip, 99):.3f} ms"
        )

        # trip → breaker open in the model, in simulated time
        await client.write_coil(close.address, True, device_id=cb.unit_id)  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        sim0 = runtime.clock.monotonic()
        await client.write_coil(trip.address, True, device_id=cb.unit_id)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        opened_sim = None
        while time.perf_counter() - t0 < 3:
            if not model.breaker_closed("CB-045"):
                opened_sim = runtime.clock.monotonic() - sim0
                break
            await asyncio.sleep(0.001)
        print(
            f"trip write → CB-045 open in the model: {'not seen' if opened_sim is None else f'{opened_sim * 1e3:.1f} ms simulated'}"
            f" (includes the model's breaker_opening_time_ms setting), seen after {1e3 * (time.perf_counter() - t0):.1f} ms real"
        )

        # read rate of one IED's full register block
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            await client.read_holding_registers(0, count=22, device_id=cb.unit_id)  # type: ignore[union-attr]
            n += 1
        rate = n / (time.perf_counter() - t0)
        print(f"reads of 22 holding registers while the model steps at 100 Hz: {rate:,.0f} requests/s")
        client.close()  # type: ignore[union-attr]

        cap = next(i for i in site.ieds if i.protocol == "modbus_rtu")
        serial = AsyncModbusSerialClient(
            port=cap.serial_port,
            baudrate=cap.baudrate,
            parity=cap.parity,  # type: ignore[union-attr]
            stopbits=cap.stopbits,
            timeout=1,
            retries=0,
        )  # type: ignore[union-attr]
        await serial.connect()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            await serial.read_input_registers(0, count=3, device_id=cap.unit_id)
            n += 1
        print(f"RTU reads through the socat pty pair: {n / (time.perf_counter() - t0):,.0f} requests/s")
        serial.close()
        steps = runtime.steps
        print(
            f"model step + server refresh at speed 1: mean {1e3 * runtime.step_time_s / max(steps, 1):.3f} ms "
            f"per 10 ms step ({100 * runtime.step_time_s / max(steps, 1) / 0.01:.1f} % of real time), "
            f"lag resets {runtime.lag_resets}"
        )


async def bench_fast(tmp: Path) -> None:
    site = site_for(tmp)
    model, _ = make_model(site)
    runtime = HilRuntime(site, model, RuntimeOptions(speed=0, ami=False, iec61850=False))
    await runtime.start()
    try:
        t0 = time.perf_counter()
        await runtime.run_steps(60.0)
        wall = time.perf_counter() - t0
    finally:
        await runtime.stop()
    print(
        f"speed 0 (as fast as possible): 60 s simulated in {wall:.2f} s real = x{60 / wall:,.0f} real time, "
        f"{runtime.steps / wall:,.0f} steps/s"
    )


async def bench_ami(tmp: Path, meters: int) -> None:
    with run_mosquitto(tmp) as broker:
        site = site_for(tmp, ami_port=broker.port)
        data = site.model_dump()
        count = max(1, meters // 2)
        data["meter_groups"][0]["count"] = min(count, 100_000)
        data["meter_groups"][1]["count"] = min(meters - count, 100_000) or 1
        site = SiteConfig.model_validate(data)
        model, kind = make_model(site, meters=meters)
        model.advance(1.0)
        t0 = time.perf_counter()
        readings = model.meter_readings(1.0)
        n = len(readings.ids)
        print(f"AMI: {kind}.meter_readings for {n:,} meters: {1e3 * (time.perf_counter() - t0):.1f} ms")
        received = {"n": 0, "t": 0.0}
        done = asyncio.Event()

        def sink(ids: list[str], columns: dict[str, np.ndarray], reading_time: float) -> None:
            received["n"] += len(ids)
            if received["n"] >= n:
                received["t"] = time.perf_counter()
                done.set()

        assert site.ami is not None
        sub = AmiSubscriber(site.ami, site.site.substation_id, sink, SimClock(), client_id="bench-ami")
        task = asyncio.create_task(sub.run())
        while not sub.connected:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        publisher = AmiPublisher(site, batch_size=1000)
        await publisher.start()
        for _ in range(2):  # the second one is the measured one
            received["n"] = 0
            done.clear()
            t0 = time.perf_counter()
            messages = publisher.publish(readings, 1_767_225_600.0)
            t1 = time.perf_counter()
            await asyncio.wait_for(done.wait(), 120)
        size = publisher.bytes / max(publisher.messages, 1)
        print(
            f"AMI: {n:,} meters in {messages} messages of ~{size / 1024:.0f} KiB: encode+queue {1e3 * (t1 - t0):.0f} ms, "
            f"all decoded at the subscriber after {1e3 * (received['t'] - t0):.0f} ms "
            f"({n / (received['t'] - t0):,.0f} readings/s); bad {sub.bad_messages}, gaps {sub.seq_gaps}"
        )
        await publisher.close()

        # the same fleet published by the running simulator, spread over steps
        received["n"] = 0
        done.clear()
        runtime = HilRuntime(
            site,
            model,
            RuntimeOptions(speed=0, iec61850=False, ami_interval_s=900.0),
            clock=SimClock(start_monotonic=2.0),
        )
        await runtime.start()
        try:
            t0 = time.perf_counter()
            while not done.is_set() and time.perf_counter() - t0 < 60:
                await runtime.step()
                await asyncio.sleep(0)
            print(
                f"AMI from the runtime: {received['n']:,} readings delivered over {runtime.steps} steps "
                f"in {time.perf_counter() - t0:.2f} s "
                f"({runtime.options.ami_messages_per_step} messages per step); longest step "
                f"{1e3 * runtime.max_step_s:.1f} ms, mean {1e3 * runtime.step_time_s / runtime.steps:.2f} ms"
            )
        finally:
            await runtime.stop()
        await sub.close()
        await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--meters", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bench-hil-") as tmp:
        asyncio.run(bench_modbus(Path(tmp), args.writes))
        asyncio.run(bench_fast(Path(tmp)))
        asyncio.run(bench_ami(Path(tmp), args.meters))


if __name__ == "__main__":
    main()
