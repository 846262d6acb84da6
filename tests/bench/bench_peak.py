"""Peak demand on the two-substation rig: time from the forecast crossing to SUB-007's load below
90 % of capacity (simulated minutes), and the coordination round trip between the two gateways
over the TLS broker (wall milliseconds, p50/p99).

The first figure is the peak-demand scenario's main run (hil/scenarios/peak_demand.py: the
simulator at 30× real time, the gateways' time settings divided by 30): from the moment SUB-007's
peak manager starts acting on its forecast to the simulator's measured load under the target,
through CVR, capacitors, demand response, DER and the transfer, each with its settling time.

The round trip is an operator's transfer request at SUB-007 that SUB-006 must refuse (more than
its headroom): request signed, published, through the broker, verified, answered from SUB-006's
forecast, signed, back, verified — nothing is switched. Repeated `--exchanges` times.

    .venv/bin/python tests/bench/bench_peak.py [--exchanges 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hil.scenarios import Recorder  # noqa: E402
from hil.scenarios import peak_demand as scenario  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def round_trips(rig: scenario.TwoRig, n: int) -> list[float]:
    out = []
    for _ in range(n):
        asked = rig.daemon_call(
            scenario.REQUESTER, "transfer.request", tie=scenario.TIE, part=scenario.PART, load_kw=25_000.0
        )
        ex = scenario._wait_final(rig, scenario.REQUESTER, asked["xid"], 10.0)
        if ex["phase"] != "refused":
            raise RuntimeError(f"expected a refusal, got {ex['phase']}: {ex['reason']}")
        (t0, _), (t1, _) = ex["history"][0], ex["history"][-1]
        out.append(1000.0 * (t1 - t0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exchanges", type=int, default=60)
    args = parser.parse_args()
    rec = Recorder("peak-demand", 0)
    with tempfile.TemporaryDirectory(prefix="bench-peak-") as tmp:
        rig = scenario.TwoRig(
            scenario.documents(), Path(tmp), hil_args=("--speed", f"{scenario.SPEED:g}", "--step", scenario.STEP)
        )
        with rig:
            scenario._main_run(rig, rec)
            failed = [c for c in rec.checks if not c.passed]
            rig.hil_call("ramp", substation=scenario.REQUESTER, rate_kw_per_h=0.0, start_kw=20_000.0)
            scenario._give_back(rig)
            time.sleep(1.0)
            trips = round_trips(rig, args.exchanges)
    f = rec.figures
    print(
        f"forecast crossing → SUB-007 below {scenario.TARGET_PERCENT:g} %: "
        f"{f['crossing_to_below_target_sim_min']} simulated min ({f['crossing_to_below_target_wall_s']} s at "
        f"{scenario.SPEED:g}×); peak {f['peak_load_pct_before']} % → {f['final_load_pct']} %, "
        f"customers shed {f['customers_shed']}"
    )
    print("  per action (MW): " + ", ".join(f"{a} {mw:.2f}" for a, mw in f["reduction_mw"].items()))
    print(f"  transfer exchange, request → both confirmed (switching included): {f.get('transfer_round_trip_ms')} ms")
    print(
        f"coordination round trip over the TLS broker (request → signed answer verified), {len(trips)} exchanges: "
        f"p50 {statistics.median(trips):.1f} ms  p99 {_percentile(trips, 0.99):.1f} ms  max {max(trips):.1f} ms"
    )
    if failed:
        print("checks that did not pass: " + "; ".join(f"{c.name} ({c.detail})" for c in failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
