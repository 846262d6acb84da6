"""Predictive maintenance: the health model's false alarms over a year of healthy operation, and
what one health evaluation costs.

False alarms: healthy transformers (the simulator's `healthy` profile, carrying the scenario's
XFMR-235 loads: daily cycles, lighter weekends, seasons and hot spells of three to six days,
several seeds) run for eighteen months; over the last twelve their health is evaluated once a day
from the six months before, exactly as the daemon does (gateway/maintenance/health.py), and each
evaluation goes to a transformer agent, which decides. Goal: no maintenance request (no work
order) at all; the use case's success criterion is below 2 % false positives.

Cost: one evaluation of one transformer with six months of hourly history for its 14 points,
from the state database (the hourly aggregation SQLite does) and from rows already read.

Asserts nothing about speed; run with `.venv/bin/python tests/bench/bench_maintenance.py`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.agents.base import Links
from gateway.agents.schema import TransformerAttributes
from gateway.agents.elements.transformer import TransformerAgent
from gateway.config import validate
from gateway.history import HistoryRow
from gateway.maintenance import failure, health
from gateway.maintenance.health import HealthSettings, TransformerData
from gateway.storage import Store
from hil.grid.ageing import PROFILES, Climate, Condition, monitor_log
from hil.grid.model import GridModel
from hil.scenarios.predictive_maintenance import AGED, TWIN, site

UNITS = 5
"""Transformers in the false-alarm run (`--units 10` for the longer one; about 5 s each)."""
LEAD_IN_MONTHS = 6.0
YEAR_MONTHS = 12.0
END_WALL = 1_790_000_000.0
DAY_S = 86400.0
DATA = TransformerData(
    rated_kva=6000.0,
    cooling_type="ONAF",
    rated_top_oil_rise_c=50.0,
    rated_hot_spot_rise_c=20.0,
    loss_ratio=5.0,
    prior_loss_of_life_percent=25.0,
    maintenance_interval_h=90_000.0,
    normal_top_oil_max_c=62.0,
    age_years=19.0,
)
FALSE_POSITIVE_GOAL = 0.02


def series_of(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    by: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        t, v = by.setdefault(r["point_id"].split(".", 1)[1], ([], []))
        t.append(r["bucket_start"])
        v.append(r["mean"])
    return {k: (np.asarray(t), np.asarray(v)) for k, (t, v) in by.items()}


def window(
    full: dict[str, tuple[np.ndarray, np.ndarray]], start: float, end: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for k, (t, v) in full.items():
        lo, hi = np.searchsorted(t, start), np.searchsorted(t, end, side="right")
        out[k] = (t[lo:hi], v[lo:hi])
    return out


def bench_false_alarms(units: int = UNITS) -> None:
    model = GridModel.from_site(validate(site()), seed=0)
    loads = model.loads_behind(TWIN)
    settings = HealthSettings()
    attrs = TransformerAttributes(rated_capacity=6000.0, secondary_voltage=11000.0)
    evaluations = requests = trend_alerts = 0
    probabilities: list[float] = []
    started = time.perf_counter()
    for seed in range(units):
        cond = Condition(f"T{seed}", PROFILES["healthy"], operating_hours=80_000.0, seed=seed)
        rows = monitor_log(
            cond,
            loads,
            rated_kva=6000.0,
            rated_rise_c=50.0,
            loss_ratio=5.0,
            cooling_type="ONAF",
            tau_min=None,
            months=LEAD_IN_MONTHS + YEAR_MONTHS,
            end_wall=END_WALL,
            utc_offset_h=3.0,
            climate=Climate(mean_c=27.0, swing_c=5.0, hot_spell_chance=0.3),
            seed=100 + seed,
        )
        full = series_of(rows)
        agent = TransformerAgent(f"T{seed}", attrs, Links(customers_downstream=1000, critical_customers_downstream=1))
        memory = agent.initial_memory(0.0)
        first = END_WALL - YEAR_MONTHS * 30.44 * DAY_S
        for day in range(int(YEAR_MONTHS * 30.44)):
            now = first + day * DAY_S
            h = health.evaluate_series(f"T{seed}", window(full, now - 545 * DAY_S, now), DATA, now, settings)
            memory, actions = agent.on_health(memory, h, now, horizon_days=60, threshold=0.2)
            evaluations += 1
            probabilities.append(failure.predict(h).probability)
            requests += sum(1 for a in actions if getattr(a, "kind", "") == "maintenance_request")
            trend_alerts += sum(1 for a in actions if "trending up" in getattr(a, "message", ""))
    took = time.perf_counter() - started
    rate = requests / evaluations
    p = sorted(probabilities)
    print(
        f"healthy operation: {units} transformers × {YEAR_MONTHS:g} months, one evaluation a day "
        f"({evaluations} evaluations, {took:.0f} s)"
    )
    print(f"  work orders (maintenance requests):  {requests}   (goal 0)")
    print(
        f"  false-positive rate:                 {100 * rate:.2f} % of evaluations "
        f"(use case: below {100 * FALSE_POSITIVE_GOAL:g} %)"
    )
    print(f"  top-oil trend warnings:              {trend_alerts}")
    print(
        f"  probability of failure in 60 days:   median {100 * statistics.median(p):.2f} %, "
        f"99th percentile {100 * p[int(0.99 * (len(p) - 1))]:.2f} %, highest {100 * p[-1]:.2f} % "
        f"(threshold 20 %)"
    )


def bench_cost() -> None:
    model = GridModel.from_site(validate(site()), seed=0)
    cond = copy.deepcopy(model.conditions[AGED])
    rows = monitor_log(
        cond,
        model.loads_behind(AGED),
        rated_kva=6000.0,
        rated_rise_c=50.0,
        loss_ratio=5.0,
        cooling_type="ONAF",
        tau_min=None,
        months=6.0,
        end_wall=END_WALL,
        utc_offset_h=3.0,
    )
    started = time.perf_counter()
    rows2 = monitor_log(
        copy.deepcopy(model.conditions[AGED]),
        model.loads_behind(AGED),
        rated_kva=6000.0,
        rated_rise_c=50.0,
        loss_ratio=5.0,
        cooling_type="ONAF",
        tau_min=None,
        months=6.0,
        end_wall=END_WALL,
        utc_offset_h=3.0,
    )
    ageing_s = time.perf_counter() - started
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["point_id"].split(".", 1)[1], []).append(r)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "s.db")
        store.append_history(
            [
                HistoryRow(
                    r["point_id"], r["bucket_start"], 3600.0, r["mean"], r["mean"], r["mean"], r["mean"], 60, 1.0
                )
                for r in rows
            ]
        )
        names = sorted(by)
        read_s, eval_s, total_s = [], [], []
        for _ in range(15):
            t0 = time.perf_counter()
            got = {n: store.history_aggregated(f"{AGED}.{n}", END_WALL - 545 * DAY_S, END_WALL + 1) for n in names}
            t1 = time.perf_counter()
            h = health.evaluate(AGED, got, DATA, END_WALL)
            failure.predict(h)
            t2 = time.perf_counter()
            read_s.append(t1 - t0)
            eval_s.append(t2 - t1)
            total_s.append(t2 - t0)
        store.close()
    print(f"one health evaluation (6 months × 24 h × {len(names)} points = {len(rows)} rows):")
    print(f"  history read (SQLite, hourly):  median {1e3 * statistics.median(read_s):.0f} ms")
    print(f"  health inputs + prediction:     median {1e3 * statistics.median(eval_s):.0f} ms")
    print(
        f"  together:                       median {1e3 * statistics.median(total_s):.0f} ms, "
        f"max {1e3 * max(total_s):.0f} ms"
    )
    print(f"ageing 6 months of one transformer in the simulator: {ageing_s:.2f} s ({len(rows2)} rows)")


def bench_minute_buckets(days: int = 30) -> None:
    """The daemon's own history is kept per minute: the hourly aggregation reads 60 rows an hour."""
    names = [
        "load_kw",
        "load_kvar",
        "primary_power_kw",
        "top_oil_temp_c",
        "ambient_temp_c",
        "fans_running",
        "operating_hours",
        "h2_ppm",
        "ch4_ppm",
        "c2h6_ppm",
        "c2h4_ppm",
        "c2h2_ppm",
        "co_ppm",
        "co2_ppm",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "s.db")
        start = END_WALL - days * DAY_S
        for n in names:
            rows = [
                HistoryRow(f"X.{n}", start + 60.0 * k, 60.0, 1.0, 1.0, 1.0, 1.0, 6, 1.0) for k in range(days * 1440)
            ]
            for i in range(0, len(rows), 50_000):
                store.append_history(rows[i : i + 50_000])
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for n in names:
                store.history_aggregated(f"X.{n}", END_WALL - 545 * DAY_S, END_WALL + 1)
            times.append(time.perf_counter() - t0)
        store.close()
    per_month = statistics.median(times) * 30 / days
    print(
        f"history read from minute buckets: {statistics.median(times):.2f} s for {days} days of {len(names)} points "
        f"({len(names) * days * 1440} rows); about {6 * per_month:.1f} s for the 6-month trend window"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=UNITS, help="healthy transformers in the false-alarm run")
    args = parser.parse_args()
    bench_cost()
    bench_minute_buckets()
    bench_false_alarms(args.units)
