"""Benchmark of the simulator's electrical model (hil.grid): figures and ratios, no asserts.

    .venv/bin/python tests/bench/bench_hil_grid.py

Prints: one backward/forward sweep of the IEEE 33-bus feeder against pandapower's
Newton-Raphson on the same data; GridModel steps on the example site and on a synthetic
12-feeder station (re-solve, plain step, point_values); how far simulated time outruns real
time at 10 ms steps; a smart-meter reading of 100,000 meters; a fault injection.
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.config import SiteConfig, load  # noqa: E402
from hil.grid.model import GridModel  # noqa: E402
from hil.grid.network import Network  # noqa: E402
from hil.grid.powerflow import solve  # noqa: E402


def timed(fn: Any, repeat: int) -> tuple[float, float]:
    """Median and p99 of `repeat` calls, seconds."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def ieee33() -> None:
    rows = []
    with (ROOT / "tests" / "data" / "ieee33bw.csv").open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    net = Network(base_mva=10.0)
    for n in range(33):
        net.add_bus(f"B{n + 1}", 12.66)
    s = np.zeros(33, dtype=np.complex128)
    for r in rows:
        f_, t_ = int(r["from_bus"]) - 1, int(r["to_bus"]) - 1
        net.add_branch(f"{f_}-{t_}", f_, t_, complex(float(r["r_ohm"]), float(r["x_ohm"])), closed=r["status"] == "1")
        if r["status"] == "1":
            s[t_] = complex(float(r["load_kw"]), float(r["load_kvar"])) / 1e4
    y = np.zeros(33, dtype=np.complex128)
    t_build, _ = timed(lambda: net.radial_tree(0), 50)
    tree = net.radial_tree(0)
    result = solve(tree, s, y, tolerance_pu=1e-8)
    t_solve, p99 = timed(lambda: solve(tree, s, y, tolerance_pu=1e-8), 2000)
    print(
        f"IEEE 33-bus sweep: {t_solve * 1e6:.0f} us median ({p99 * 1e6:.0f} us p99), "
        f"{result.iterations} iterations, losses {result.losses_pu.real * 1e4:.2f} kW; "
        f"tree build {t_build * 1e6:.0f} us"
    )
    try:
        import pandapower as pp
    except ImportError:
        print("pandapower not installed: no comparison")
        return
    ppnet = pp.create_empty_network(sn_mva=10.0)
    buses = [pp.create_bus(ppnet, vn_kv=12.66) for _ in range(33)]
    pp.create_ext_grid(ppnet, buses[0], vm_pu=1.0)
    for r in rows:
        if r["status"] != "1":
            continue
        f_, t_ = int(r["from_bus"]) - 1, int(r["to_bus"]) - 1
        pp.create_line_from_parameters(
            ppnet, buses[f_], buses[t_], 1.0, float(r["r_ohm"]), float(r["x_ohm"]), 0.0, 10.0
        )
        pp.create_load(ppnet, buses[t_], float(r["load_kw"]) / 1e3, float(r["load_kvar"]) / 1e3)
    t_pp, _ = timed(lambda: pp.runpp(ppnet, tolerance_mva=1e-8, numba=False), 20)
    worst = np.max(np.abs(np.abs(result.voltage_pu) - ppnet.res_bus.vm_pu.to_numpy()))
    print(
        f"pandapower runpp (NR) same feeder: {t_pp * 1e3:.1f} ms median -> sweep is {t_pp / t_solve:.0f}x faster; "
        f"largest |V| difference {worst:.1e} pu"
    )


def synthetic_site(base: SiteConfig, feeders: int) -> SiteConfig:
    """`feeders` copies of a breaker → 4 km line → two transformers and a capacitor bank."""
    agents: list[dict[str, Any]] = [
        {"id": "SUB-X", "type": "substation", "attributes": {"rated_capacity": 60.0}, "connection_rules": []}
    ]
    groups = []
    for n in range(feeders):
        cb, line = f"CB-{n:03d}", f"LINE-{n:03d}"
        agents[0]["connection_rules"].append({"target_id": cb, "canonical_type": "supply"})
        agents.append(
            {"id": cb, "type": "circuit_breaker", "connection_rules": [{"target_id": line, "canonical_type": "supply"}]}
        )
        kids = [f"XFMR-{n:03d}{k}" for k in "ab"] + [f"CAP-{n:03d}"]
        agents.append(
            {
                "id": line,
                "type": "power_line",
                "attributes": {"length": 4000.0},
                "connection_rules": [{"target_id": k, "canonical_type": "supply"} for k in kids],
            }
        )
        for k in kids[:2]:
            agents.append({"id": k, "type": "transformer", "attributes": {"rated_capacity": 630.0}})
            groups.append({"id": f"GRP-{k}", "prefix": f"M{k[5:]}", "count": 400, "connected_transformer": k})
        agents.append({"id": kids[2], "type": "capacitor_bank"})
    data = base.model_dump(mode="json", exclude={"agents", "meter_groups", "ieds", "protection", "simulation"})
    data.update(agents=agents, meter_groups=groups)
    return SiteConfig.model_validate(data)


def model_steps(name: str, site: SiteConfig) -> None:
    model = GridModel.from_site(site, seed=1)
    clock = [model.now_s]

    def resolve() -> None:
        clock[0] += 0.01
        model._dirty = True  # force the solve every call, as after any command
        model.advance(clock[0])

    def step() -> None:
        clock[0] += 0.01
        model.advance(clock[0])

    t_solve, p99 = timed(resolve, 1000)
    t_step, _ = timed(step, 3000)
    elements = sorted(model._modelled())

    def every_value() -> None:
        for element in elements:
            model.agent_values(element)

    t_points, _ = timed(model.point_values, 1000)
    t_values, _ = timed(every_value, 300)
    buses = len(model.net.buses)
    print(
        f"{name}: {buses} buses, {len(elements)} elements, {len(model.point_values())} IED points; "
        f"re-solve {t_solve * 1e6:.0f} us median ({p99 * 1e6:.0f} us p99, the tail is the shared machine's "
        f"scheduler); step without re-solve {t_step * 1e6:.1f} us; point_values {t_points * 1e6:.1f} us (cached between solves); "
        f"every element's values {t_values * 1e6:.0f} us"
    )
    # one simulated minute at 10 ms steps, re-solving every solve_period_s, point values each step
    start = time.perf_counter()
    steps = 6000
    for _ in range(steps):
        clock[0] += 0.01
        model.advance(clock[0])
        model.point_values()
    real = time.perf_counter() - start
    print(f"{name}: 60 simulated s at 10 ms steps in {real:.2f} s real -> {60.0 / real:.0f}x real time")
    t0 = time.perf_counter()
    info = model.inject_fault(next(iter(model.lines)), 1000.0, "slg", now_s=clock[0])
    print(
        f"{name}: fault injection and re-solve {(time.perf_counter() - t0) * 1e6:.0f} us "
        f"({info.fault_current_a:.0f} A SLG at 1 km)"
    )


def meters(site: SiteConfig) -> None:
    model = GridModel.from_site(site, seed=1, meters=100_000)
    now = [0.0]

    def read() -> None:
        now[0] += 900.0
        model.meter_readings(now[0])

    t_read, _ = timed(read, 20)
    t0 = time.perf_counter()
    GridModel.from_site(site, seed=1, meters=100_000)
    t_build = time.perf_counter() - t0
    print(
        f"meter_readings, 100,000 meters: {t_read * 1e3:.1f} ms median ({t_read / 1e5 * 1e9:.0f} ns per meter); "
        f"model build with them {t_build * 1e3:.0f} ms"
    )


def main() -> None:
    site = load(ROOT / "deploy" / "examples" / "sub-003.toml")
    ieee33()
    model_steps("SUB-003 (3 feeders)", site)
    model_steps("synthetic (12 feeders)", synthetic_site(site, 12))
    meters(site)


if __name__ == "__main__":
    main()
