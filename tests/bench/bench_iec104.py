"""IEC 60870-5-104 outstation: spontaneous-change latency on the HIL rig, GI time for 10,000
points, and a command's round trip through 104 and the switching authority.

- spontaneous latency: a load step in the simulated substation (the HIL's registers change at
  once) → the relay's next Modbus poll (every 20 ms) → the process image → an M_ME_TF_1 with
  cause 3 at the master; measured from the control request's return to the ASDU's arrival, in
  this process (both ends on one clock);
- GI: 10,000 short floats with time tags in one station, the outstation in this process
  (lib60870's own threads) and the raw-socket master of the tests, from C_IC_NA_1 sent to its
  ACT_TERM received, acknowledging every w = 8 I-frames as a master does;
- command round trip: select → ACT_CON, execute → ACT_CON, execute → the breaker's double point
  with cause 11 (the position read back from the simulated relay).

Asserts nothing about speed; run with `.venv/bin/python tests/bench/bench_iec104.py`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.contract.clock import SystemClock
from gateway.contract.settings import Iec104Config
from gateway.iec104 import CommandHandler, MonitorPoint, PointMap, Reporter, TypeId
from gateway.contract.points import GOOD, PointKind, PointUpdate, ProcessImage
from gateway.switching.model import Role
from hil.broker import free_port
from hil.rig import Rig
from protocols.iec104 import Iec104Outstation
from tests.support import iec104_master as m104
from tests.support.faults import fault_site

LATENCY_SAMPLES = 200
GI_POINTS = 10_000
GI_RUNS = 5
COMMAND_CYCLES = 10


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(name: str, samples_s: Sequence[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return f"{name:<52} n={len(ms):>4}  p50 {pct(ms, 0.50):8.2f} ms  p99 {pct(ms, 0.99):8.2f} ms  max {max(ms):8.2f} ms"


def gi_bench() -> None:
    image = ProcessImage()
    monitored = []
    for n in range(GI_POINTS):
        pid = f"P{n}.value"
        image.define(pid, PointKind.ANALOG, unit="A", source="X")
        image.apply(
            PointUpdate(
                point_id=pid, value=float(n), quality=GOOD, receive_monotonic=time.monotonic(), receive_time=time.time()
            )
        )
        monitored.append(MonitorPoint(pid, 1001 + n, TypeId.M_ME_TF_1, 0.0, PointKind.ANALOG))
    pmap = PointMap(1, tuple(monitored), (), {m.point_id: m for m in monitored}, {})
    port = free_port()
    cfg = Iec104Config(enabled=True, bind="127.0.0.1", port=port)
    plant: Any = SimpleNamespace()
    outstation = Iec104Outstation(
        cfg,
        pmap,
        image,
        CommandHandler(pmap, plant, Role.OPERATOR),
        Reporter(pmap),
        SystemClock(),
        logging.getLogger("bench.iec104"),
    )
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(outstation.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    times, objects = [], 0
    try:
        with m104.Master("127.0.0.1", port, common_address=1, timeout_s=60.0).connect() as master:
            for _ in range(GI_RUNS):
                start = time.monotonic()
                got = master.interrogate(timeout_s=60.0)
                times.append(time.monotonic() - start)
                objects = sum(len(a.objects) for a in got)
                assert objects == GI_POINTS, objects
                asdus = len(got)
    finally:
        asyncio.run_coroutine_threadsafe(outstation.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    print(line(f"GI of {GI_POINTS} M_ME_TF_1 ({asdus} ASDUs, k=12 w=8)", times))
    print(f"{'':<52} {GI_POINTS / pct(times, 0.5):,.0f} information objects/s at p50")


def rig_bench() -> None:
    doc = fault_site(reclose=True, relay_poll_ms=20)
    doc["iec104"] = {"enabled": True, "bind": "127.0.0.1", "port": free_port(), "common_address": 47}
    with tempfile.TemporaryDirectory(prefix="bench-iec104-") as tmp, Rig(doc, Path(tmp), hil_args=("--no-ami",)) as rig:
        rows = rig.daemon_call("iec104.map")
        ia = next(r["ioa"] for r in rows if r.get("point") == "CB-045.ia")
        pos = next(r["ioa"] for r in rows if r.get("point") == "CB-044.closed")
        cmd = next(r["ioa"] for r in rows if r.get("target") == "CB-044")
        port = rig.doc["iec104"]["port"]
        with m104.Master("127.0.0.1", port, common_address=47).connect() as master:
            master.interrogate()
            latencies = []
            factor = 1.25
            for n in range(LATENCY_SAMPLES):
                mark = master.mark()
                rig.hil_call("loadstep", target="XFMR-101", factor=factor if n % 2 == 0 else 1 / factor)
                sent = time.monotonic()
                got = master.wait_for(
                    lambda a: a.cot == m104.COT_SPONTANEOUS and any(o.ioa == ia for o in a.objects),
                    "CB-045.ia",
                    10,
                    start=mark,
                )
                latencies.append(got.received_monotonic - sent)
                time.sleep(0.05)
            print(line("spontaneous: HIL load step -> M_ME_TF_1 at the master (20 ms poll)", latencies))
            select, execute, moved = [], [], []
            for n in range(2 * COMMAND_CYCLES):
                state = m104.DP_OFF if n % 2 == 0 else m104.DP_ON
                t0 = time.monotonic()
                con = master.double_command(cmd, state, select=True)
                t1 = time.monotonic()
                assert not con.negative, con
                mark = master.mark()
                t2 = time.monotonic()
                con = master.double_command(cmd, state, select=False)
                t3 = time.monotonic()
                assert not con.negative, con
                back = master.wait_for(
                    lambda a, s=state: (
                        a.cot == m104.COT_RETURN_REMOTE and any(o.ioa == pos and o.value == s for o in a.objects)
                    ),
                    "position",
                    20,
                    start=mark,
                )
                select.append(t1 - t0)
                execute.append(t3 - t2)
                moved.append(back.received_monotonic - t2)
                rig.wait(
                    lambda s=state: (
                        rig.daemon_call("breaker.status", breaker="CB-044")["position"]
                        == ("open" if s == m104.DP_OFF else "closed")
                    ),
                    "the position settled",
                    20,
                )
                time.sleep(0.3)
            print(line("command: select -> ACT_CON (through the authority)", select))
            print(line("command: execute -> ACT_CON", execute))
            print(line("command: execute -> position (DP, cause 11) at the master", moved))


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    gi_bench()
    rig_bench()
    return 0


if __name__ == "__main__":
    sys.exit(main())
