"""Fault location error over many faults injected into the simulator (figures for the docs).

1,000 faults (every kind, 0, 1 or 5 ohm of fault resistance, three feeders of the example site,
loads at their time of day), each located from the values the feeder's relay serves (through
the float32 encoding of its Modbus registers): Takagi with the pre-fault sample, reactance
without it, and the positive-sequence reactance from |V|, P and Q alone. Prints the
distribution of |error| in metres per method, fault kind and resistance.

    .venv/bin/python tests/bench/bench_fault_location.py [N]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.fault_location_runs import percentile, run_faults  # noqa: E402


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    runs = run_faults(n, seed=11)
    print(f"{n} faults; |error| in metres (feeders 5 km long)")
    print(f"{'method':<22} {'faults':<18} {'n':>4} {'mean':>7} {'p50':>6} {'p95':>6} {'max':>6}")
    for method in ("takagi", "reactance", "positive_sequence"):
        groups: dict[str, list[float]] = {}
        for r in runs:
            err = r.error(method)
            if err is None:
                continue
            for key in ("all", f"{r.kind}", f"Rf {r.resistance_ohm:g} ohm"):
                groups.setdefault(key, []).append(err)
        for key in sorted(groups, key=lambda k: (k != "all", k)):
            errors = groups[key]
            absolute = [abs(e) for e in errors]
            print(
                f"{method:<22} {key:<18} {len(errors):>4} {statistics.mean(errors):>7.0f} "
                f"{percentile(absolute, 50):>6.0f} {percentile(absolute, 95):>6.0f} {max(absolute):>6.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
