"""Secondary injection, live: the trip time measured at the simulated breaker against the core's.

CB-045's relay polled over Modbus TCP every 20 ms, auto-reclose off (every trip a first trip).
Each run plays `1s 200A; 3s I; 1s 0A` with I drawn between 1.1 and 5 times the 51P pickup
(below the 50P pickup, so the 51P delayed curve), through `stima protection test --seq ... --live`; the breaker is closed
again by an authorised operator close before the next. Prints the distribution of measured
minus core trip time. Figures only.

    python tests/bench/bench_injection.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hil.rig import Rig  # noqa: E402
from tests.support.faults import breaker, close_and_settle, fault_site  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8, help="about 7 s each")
    args = parser.parse_args()
    rng = random.Random(5)
    differences: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        Rig(fault_site(reclose=False, relay_poll_ms=20, instantaneous=True), Path(tmp), hil_args=("--no-ami",)) as rig,
    ):
        scheme = next(s for s in rig.doc["protection"] if s["breaker"] == "CB-045")
        pickup = scheme["elements"]["51P"]["pickup_a"]
        for _ in range(args.runs):
            if breaker(rig, "CB-045") != "closed":
                close_and_settle(rig, "CB-045")
            current = round(pickup * rng.uniform(1.1, 5.0))
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "protection",
                    "test",
                    "CB-045",
                    "--seq",
                    f"1s 200A; 3s {current}A; 1s 0A",
                    "--live",
                    "--json",
                    "--live-tolerance",
                    "10",
                    "--hil-socket",
                    str(rig.hil_socket),
                    "--config",
                    str(rig.site_path),
                    "--runtime-dir",
                    str(rig.runtime_dir),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=ROOT,
            )
            live = json.loads(r.stdout)["live"]
            if live["difference_s"] is None:
                print(f"{current} A: measured {live['measured_trip_s']}, core {live['expected_trip_s']}")
                continue
            differences.append(live["difference_s"])
            print(
                f"{current:>5} A: core {live['expected_trip_s']:.4f} s, measured {live['measured_trip_s']:.4f} s, "
                f"{1000 * live['difference_s']:+.1f} ms"
            )
    if differences:
        ms = [1000 * d for d in differences]
        print(
            f"{len(ms)} runs, measured - core (ms): min {min(ms):+.1f}  p50 {pct(ms, 50):+.1f}  "
            f"p95 {pct(ms, 95):+.1f}  max {max(ms):+.1f}  (relay poll 20 ms, simulator step 10 ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
