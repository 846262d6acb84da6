"""FLISR planner decision time: lockout → a validated plan (location, isolation, restoration
search with the power-flow estimate), on the example site and on a generated 30-feeder
substation (three sections a feeder, ties between neighbouring feeders). Aim: under 50 ms.

Prints p50/p99/max of the decision time over faults in every section; asserts nothing about
speed. The lockout → downstream restored time on the HIL rig is measured by
tests/bench/bench_flisr_rig.py.

    .venv/bin/python tests/bench/bench_flisr.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.switching.flisr import FlisrController, FlisrSettings, feeder_tree  # noqa: E402
from gateway.switching.sequences import validate  # noqa: E402
from hil.rig import example_document  # noqa: E402
from tests.support.feeder_sites import feeder_site  # noqa: E402
from tests.support.switching import Bench, bench  # noqa: E402


def _decide(b: Bench, breaker: str, fault: str) -> float:
    config = b.state.configuration()
    _, parent = feeder_tree(b.network, breaker, config)
    node = fault
    while node in parent:  # indicators latched between the breaker and the fault
        up, dev = parent[node]
        if dev is not None and dev != breaker and "fpi" in b.network.devices[dev].points:
            b.set(b.network.devices[dev].points["fpi"], True)
        node = up
    b.set_positions({breaker: False})
    feeder = b.network.downstream(breaker, {**config, breaker: True})
    record = b.faults.on_trip(breaker, "51P", 3000.0, None, feeder, b.now - 1.0, 1e9, recloses=False)
    assert record is not None
    flisr = FlisrController(
        b.network, b.state, b.faults, FlisrSettings(mode="automatic", settle_s=0.0), unusable=lambda _d: None
    )
    flisr.on_lockout(breaker, b.now)
    start = time.perf_counter()
    [seq] = flisr.tick(b.now, 1e9)
    problems = validate(seq, b.network, b.state.configuration({breaker: False}), b.faults, b.authority.loads_kva(b.now))
    elapsed = time.perf_counter() - start
    assert not problems, problems
    # back to normal for the next fault
    b.faults.clear(record.id, "bench", "bench", 1e9)
    b.normal()
    return elapsed


def measure(name: str, b: Bench, faults: list[tuple[str, str]], rounds: int) -> None:
    b.normal()
    b.remember_loads()
    times = [_decide(b, breaker, fault) for _ in range(rounds) for breaker, fault in faults]
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    print(
        f"{name:<34} {len(times):>5} decisions  p50 {1e3 * statistics.median(times):7.2f} ms  "
        f"p99 {1e3 * p99:7.2f} ms  max {1e3 * times[-1]:7.2f} ms   (aim: < 50 ms)"
    )


def main() -> None:
    example = bench(example_document())
    faults = [
        (dev.id, sec)
        for dev in example.network.devices.values()
        if dev.protected
        for sec in example.network.line_sections.get(dev.b.rsplit("/", 1)[0], [])
    ]
    measure("example site (SUB-003)", example, faults, rounds=20)
    big = bench(feeder_site(30, 3, ties="ring"))
    faults = [(f"CB-{k}", f"LINE-{k}/{s}") for k in range(1, 31) for s in range(1, 4)]
    measure("generated 30-feeder substation", big, faults, rounds=2)


if __name__ == "__main__":
    main()
