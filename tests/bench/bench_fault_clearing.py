"""Fault injected in the simulator → breaker open in the simulator, through the real daemon.

Path 1: CB-045's relay polled over Modbus TCP every 10 ms; the trip is a coil write.
Path 2: the CB-046 bay over IEC 61850: measurements by report, the trip a select-before-
operate on CSWI1.Pos. Both relays' 50P act instantaneously here (no definite delay, no
fuse-saving restriction), so the figure is the path, not the setting. Auto-reclose is off so every fault is a first trip;
each fault is cleared and the breaker closed again by an authorised operator close before
the next. The daemon meanwhile polls the rest of the site and uplinks to a TLS broker.
Also printed: the daemon's own in-process latency, decoded sample → trip request handed to
the breaker's transport. Figures only.

    python tests/bench/bench_fault_clearing.py [--faults 200]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hil.rig import Rig  # noqa: E402
from tests.support.faults import breaker, close_and_settle, fault_site  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def run_path(rig: Rig, line: str, cb: str, faults: int, rng: random.Random) -> list[float]:
    times: list[float] = []
    for n in range(faults):
        before = len(rig.hil_call("clearings", last=10_000))
        rig.hil_call(
            "fault", line=line, distance_m=rng.uniform(100.0, 1500.0), kind=rng.choice(["3ph", "2ph"]), transient=False
        )
        clearing = rig.wait(lambda b=before: rig.hil_call("clearings", last=10_000)[b:], f"fault {n} cleared", 10)
        times.append(float(clearing[0]["clearing_s"]))
        rig.hil_call("clear")
        close_and_settle(rig, cb)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=200, help="faults per path (about 0.15 s each)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with (
        tempfile.TemporaryDirectory(prefix="stima-faults-") as tmp,
        Rig(fault_site(reclose=False, relay_poll_ms=10, instantaneous=True), Path(tmp), hil_args=("--no-ami",)) as rig,
    ):
        started = time.monotonic()
        modbus = run_path(rig, "LINE-045", "CB-045", args.faults, rng)
        wire_modbus = list(rig.daemon_call("protection.latency")["wire"])
        iec = run_path(rig, "LINE-046", "CB-046", args.faults, rng)
        wire_iec = list(rig.daemon_call("protection.latency")["wire"])[len(wire_modbus) :]
        elapsed = time.monotonic() - started
        assert breaker(rig, "CB-045") == "closed"
    print(f"fault injected -> breaker open in the simulator ({args.faults} faults per path, {elapsed:.0f} s in all):")
    for name, values in (("Modbus TCP, 10 ms polling    ", modbus), ("IEC 61850 reports + SBO      ", iec)):
        print(
            f"  {name}: p50 {pct(values, 0.5) * 1000:6.1f} ms   p99 {pct(values, 0.99) * 1000:6.1f} ms   "
            f"max {max(values) * 1000:6.1f} ms   (goal p99 <= 50 ms)"
        )
    print("in the daemon, decoded sample -> trip request handed to the transport:")
    for name, wire in (("Modbus TCP (coil write)      ", wire_modbus), ("IEC 61850 (select+operate)   ", wire_iec)):
        print(
            f"  {name}: p50 {pct(wire, 0.5) * 1e3:6.3f} ms   p99 {pct(wire, 0.99) * 1e3:6.3f} ms   "
            f"max {max(wire, default=float('nan')) * 1e3:6.3f} ms   (n={len(wire)})"
        )


if __name__ == "__main__":
    main()
