"""Protection core throughput: element evaluations per second, C core vs Python reference.

1,000 elements (250 relays x 50P, 51P, 51N, 49; a 3-phase element counts once) evaluated in
one batch call per step, with moving currents so the 51 accumulators and 49 replicas work.
Also: the cost of one `ProtectionEngine.on_sample` for a bound point on the native backend.
Prints figures and the ratio; asserts nothing about speed.

    .venv/bin/python tests/bench/bench_protection.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.protection.core import (
    CHANNELS,
    Channel,
    CoreSettings,
    Curve,
    ElementKind,
    ElementSettings,
    RelaySettings,
)
from gateway.protection.reference import ReferenceCore

RELAYS = 250
ELEMENTS_PER_RELAY = 4


def settings() -> CoreSettings:
    relays = tuple(
        RelaySettings(
            nominal_kv=11.0,
            shots=3,
            dead_time_s=(0.5, 15.0, 30.0, 30.0),
            fast_mask=1,
            reclaim_s=30.0,
            bf_enabled=True,
            bf_current_a=100.0,
            bf_backup_s=0.15,
        )
        for _ in range(RELAYS)
    )
    elements = []
    for r in range(RELAYS):
        elements += [
            ElementSettings(relay=r, kind=ElementKind.P50, pickup=3000.0, fast_only=True),
            ElementSettings(
                relay=r,
                kind=ElementKind.P51,
                pickup=400.0,
                curve=Curve.IEC_SI,
                fast_curve=Curve.IEC_SI,
                tms=0.1,
                fast_tms=0.05,
            ),
            ElementSettings(
                relay=r,
                kind=ElementKind.N51,
                pickup=60.0,
                curve=Curve.IEEE_VI,
                fast_curve=Curve.IEEE_VI,
                tms=1.0,
                fast_tms=1.0,
                reset_mode=2,
            ),
            ElementSettings(
                relay=r, kind=ElementKind.TH49, pickup=420.0, tau_s=600.0, cooling_tau_s=600.0, reset_theta=0.9
            ),
        ]
    return CoreSettings(relays=relays, elements=tuple(elements))


def run(core, steps: int, dt: float = 0.001) -> float:
    """Seconds for `steps` batch steps; currents hover around pickup (no element trips)."""
    rng = np.random.default_rng(7)
    loads = rng.uniform(250.0, 390.0, size=(16, RELAYS))
    core.quality[:] = 1
    idx = np.arange(RELAYS) * CHANNELS
    core.samples[idx + Channel.CLOSED] = 1.0
    core.samples[idx + Channel.VOLTAGE_KV] = 11.0
    core.samples[idx + Channel.FREQUENCY_HZ] = 50.0
    start = time.perf_counter()
    for k in range(steps):
        row = loads[k % 16]
        core.samples[idx + Channel.IA] = row
        core.samples[idx + Channel.IB] = row
        core.samples[idx + Channel.IC] = row
        core.samples[idx + Channel.IN] = row * 0.1
        core.step(k * dt)
    return time.perf_counter() - start


def bench_on_sample(n: int = 200_000) -> float:
    from gateway.config import load
    from gateway.protection.engine import ProtectionEngine

    site = load(Path(__file__).resolve().parents[2] / "deploy" / "examples" / "sub-003.toml")
    engine = ProtectionEngine(site.protection, backend="native")
    for p in engine.bound_points:
        engine.on_sample(p, 1.0 if p.endswith(".closed") else 100.0, True, 0.0)
    on_sample = engine.on_sample
    start = time.perf_counter()
    for k in range(n):
        on_sample("CB-045.ia", 100.0 + (k & 7), True, k * 1e-4)
    return (time.perf_counter() - start) / n


def main() -> None:
    cs = settings()
    n_elements = len(cs.elements)
    ref = ReferenceCore(cs)
    ref_steps = 100
    t_ref = run(ref, ref_steps)
    ref_rate = n_elements * ref_steps / t_ref
    try:
        from gateway.protection._native import NativeCore
    except ImportError as exc:
        print(f"native core not built ({exc}); reference only")
        print(f"reference: {ref_rate:,.0f} element evaluations/s")
        return
    nat = NativeCore(cs)
    nat_steps = 20_000
    run(nat, 1000)  # warm-up
    t_nat = run(nat, nat_steps)
    nat_rate = n_elements * nat_steps / t_nat
    # Same run without the numpy sample updates: the core call alone.
    start = time.perf_counter()
    for k in range(nat_steps):
        nat.step(100.0 + k * 0.001)
    t_call = time.perf_counter() - start
    print(f"elements: {n_elements} ({RELAYS} relays x {ELEMENTS_PER_RELAY}), one batch call per step")
    print(f"python reference: {ref_rate:>14,.0f} element evaluations/s  ({1e3 * t_ref / ref_steps:.3f} ms per step)")
    print(
        f"C core (+ numpy input updates): {nat_rate:>14,.0f} element evaluations/s  "
        f"({1e6 * t_nat / nat_steps:.1f} us per step)"
    )
    print(
        f"C core call alone: {n_elements * nat_steps / t_call:>14,.0f} element evaluations/s  "
        f"({1e6 * t_call / nat_steps:.1f} us per step)"
    )
    print(f"ratio C / reference: {nat_rate / ref_rate:,.0f}x (goal >= 100x)")
    per_sample = bench_on_sample()
    print(f"ProtectionEngine.on_sample (native, example site, 3 breakers): {1e6 * per_sample:.2f} us per sample")


if __name__ == "__main__":
    main()
