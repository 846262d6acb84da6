"""Agents at scale: 100 000 smart meters in one runtime.

Prints RSS and timings (goals: ≤ 300 MB RSS with 100k meters, ≤ 100 ms per full evaluation).
Asserts nothing about speed; run with `.venv/bin/python tests/bench/bench_agents.py`.
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.agents.runtime import AgentRuntime, restore_from_store, save_to_store
from gateway.config import load
from gateway.storage import Store

SITE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "sub-003.toml"
METERS = 100_000
GROUPS = 40
RSS_GOAL_MB = 300.0
EVAL_GOAL_MS = 100.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main() -> None:
    base = load(SITE)
    per_group = METERS // GROUPS
    groups = [
        {
            "id": f"MTR-GRP-{i:03d}",
            "prefix": f"MTR-{i:03d}",
            "count": per_group,
            "connected_transformer": "XFMR-101" if i % 2 else "XFMR-102",
        }
        for i in range(GROUPS)
    ]
    site = base.model_copy(update={"meter_groups": [type(base.meter_groups[0]).model_validate(g) for g in groups]})
    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    rt = AgentRuntime(site, now=0.0, meter_period_s=0.0)
    build_ms = (time.perf_counter() - t0) * 1000
    ids = rt.fleet.ids
    n = len(ids)
    rng = np.random.default_rng(1)
    columns = {
        "voltage_v": rng.normal(230, 4, n).astype(np.float32),
        "current_a": rng.uniform(0, 20, n).astype(np.float32),
        "demand_kw": rng.uniform(0.2, 4, n).astype(np.float32),
        "energy_kwh": rng.uniform(0, 1e4, n),
        "power_factor": rng.uniform(0.85, 1, n).astype(np.float32),
        "thd_pct": rng.uniform(0, 10, n).astype(np.float32),
        "tamper": rng.random(n) < 1e-4,
    }
    ingest_ms = timed(lambda: rt.ingest_meter_batch(ids, columns, 1.0), 5)
    gc.collect()
    rss1 = rss_mb()

    steady = timed(lambda: rt.fleet.evaluate(2.0), 20)  # after the first call: nothing changes
    now = [10.0]

    def flip() -> None:  # every meter of a feeder changes state (outage / restoration)
        now[0] += 1.0
        rt.fleet.set_supply([g["id"] for g in groups], lost=int(now[0]) % 2 == 1, now=now[0])
        rt.fleet.evaluate(now[0])

    mass = timed(flip, 6)
    ticks = []
    for i in range(20):
        t = 100.0 + i
        t0 = time.perf_counter()
        rt.tick(t, wall=1_790_000_000.0 + t)
        ticks.append((time.perf_counter() - t0) * 1000.0)
    t0 = time.perf_counter()
    snap = rt.snapshot()
    snap_ms = (time.perf_counter() - t0) * 1000
    rel_ms = timed(lambda: rt.reliability(0.0, 200.0), 5)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "state.db")
        save_ms = timed(lambda: save_to_store(store, rt, 300.0), 5)
        t0 = time.perf_counter()
        fresh = AgentRuntime(site, now=1000.0)
        restore_from_store(store, fresh)
        restore_ms = (time.perf_counter() - t0) * 1000
        store.close()
    gc.collect()
    rss2 = rss_mb()

    print(f"agents bench: {n} smart meters in {GROUPS} groups, {len(rt.agents)} infrastructure agents")
    print(f"  build runtime                  {build_ms:9.1f} ms")
    print(
        f"  RSS before / with meters / end {rss0:7.1f} / {rss1:7.1f} / {rss2:7.1f} MB "
        f"(goal <= {RSS_GOAL_MB:.0f} MB: ratio {rss2 / RSS_GOAL_MB:.2f})"
    )
    print(f"  meter state held               {(rss1 - rss0):7.1f} MB ({(rss1 - rss0) * 1e6 / n:.0f} B/meter incl. ids)")
    print(
        f"  ingest 100k readings (7 cols)  median {statistics.median(ingest_ms):7.2f} ms, max {max(ingest_ms):7.2f} ms"
    )
    print(
        f"  full evaluation, steady        median {statistics.median(steady):7.2f} ms, max {max(steady):7.2f} ms "
        f"(goal <= {EVAL_GOAL_MS:.0f} ms: ratio {statistics.median(steady) / EVAL_GOAL_MS:.3f})"
    )
    print(
        f"  full evaluation, all change    median {statistics.median(mass):7.2f} ms, max {max(mass):7.2f} ms "
        f"(ratio {statistics.median(mass) / EVAL_GOAL_MS:.3f})"
    )
    print(f"  runtime tick (all agents)      median {statistics.median(ticks):7.2f} ms, max {max(ticks):7.2f} ms")
    print(
        f"  snapshot                       {snap_ms:9.1f} ms, {sum(len(v['data']) for k, v in snap['fleet'].items() if isinstance(v, dict) and 'data' in v) / 1e6:.1f} MB of columns"
    )
    print(
        f"  save to SQLite (WAL)           median {statistics.median(save_ms):7.2f} ms; new runtime + restore "
        f"{restore_ms:7.1f} ms"
    )
    print(
        f"  reliability indices            median {statistics.median(rel_ms):7.2f} ms over {len(rt.fleet.ledger)} interruptions"
    )


if __name__ == "__main__":
    main()
