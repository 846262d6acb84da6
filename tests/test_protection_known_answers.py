"""Known answers from the grid reference sheet (sections 1.2, 1.3, 1.5, 4.1), for the C core
and the Python reference alike. Sampled runs must trip within one sample period of the
closed-form time."""

from __future__ import annotations

import math

import pytest

from gateway.protection.core import (
    Channel,
    CoreSettings,
    Curve,
    ElementKind,
    ElementSettings,
    EventKind,
    RelaySettings,
    ResetMode,
    operate_time_s,
    reset_time_s,
    thermal_trip_time_s,
)
from gateway.protection.reference import ReferenceCore

try:
    from gateway.protection._native import NativeCore, curve_operate_time_s
except ImportError:  # pragma: no cover - the build test reports the missing core
    NativeCore = None  # type: ignore[assignment,misc]
    curve_operate_time_s = None  # type: ignore[assignment]

BACKENDS = [pytest.param(ReferenceCore, id="reference"),
            pytest.param(NativeCore, id="native",
                         marks=pytest.mark.skipif(NativeCore is None, reason="native core not built"))]

M_VALUES = (1.5, 2.0, 5.0, 10.0, 20.0)
# Sheet 1.5: (curve, multiplier) -> operate times at M = 1.5, 2, 5, 10, 20.
VECTORS = {
    (Curve.IEC_SI, 0.1): (1.71942, 1.00290, 0.427972, 0.297060, 0.226736),
    (Curve.IEC_SI, 1.0): (17.1942, 10.0290, 4.27972, 2.97060, 2.26736),
    (Curve.IEC_VI, 0.1): (2.70000, 1.35000, 0.337500, 0.150000, 0.0710526),
    (Curve.IEC_VI, 1.0): (27.0000, 13.5000, 3.37500, 1.50000, 0.710526),
    (Curve.IEC_EI, 0.1): (6.40000, 2.66667, 0.333333, 0.0808081, 0.0200501),
    (Curve.IEC_EI, 1.0): (64.0000, 26.6667, 3.33333, 0.808081, 0.200501),
    (Curve.IEC_LTI, 0.1): (24.0000, 12.0000, 3.00000, 1.33333, 0.631579),
    (Curve.IEC_LTI, 1.0): (240.000, 120.000, 30.0000, 13.3333, 6.31579),
    (Curve.IEEE_MI, 0.5): (3.21951, 1.90162, 0.844163, 0.603378, 0.474032),
    (Curve.IEEE_MI, 1.0): (6.43902, 3.80325, 1.68833, 1.20676, 0.948063),
    (Curve.IEEE_MI, 5.0): (32.1951, 19.0162, 8.44163, 6.03378, 4.74032),
    (Curve.IEEE_VI, 0.5): (8.08950, 3.51383, 0.654042, 0.344540, 0.270074),
    (Curve.IEEE_VI, 1.0): (16.1790, 7.02767, 1.30808, 0.689081, 0.540148),
    (Curve.IEEE_VI, 5.0): (80.8950, 35.1383, 6.54042, 3.44540, 2.70074),
    (Curve.IEEE_EI, 0.5): (11.3408, 4.76085, 0.648350, 0.203274, 0.0961883),
    (Curve.IEEE_EI, 1.0): (22.6817, 9.52170, 1.29670, 0.406548, 0.192377),
    (Curve.IEEE_EI, 5.0): (113.409, 47.6085, 6.48350, 2.03274, 0.961883),
}
CASES = [(c, tms, m, t) for (c, tms), ts in VECTORS.items() for m, t in zip(M_VALUES, ts, strict=True)]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=5e-6, abs_tol=1e-6)


@pytest.mark.parametrize(("curve", "tms", "m", "expected"), CASES)
def test_curve_formula(curve: Curve, tms: float, m: float, expected: float) -> None:
    assert _close(operate_time_s(curve, tms, m), expected)
    if curve_operate_time_s is not None:
        assert curve_operate_time_s(int(curve), tms, m) == operate_time_s(curve, tms, m)


@pytest.mark.parametrize(("curve", "values"), [
    (Curve.IEEE_MI, (4.85, 6.46667, 25.5263)),
    (Curve.IEEE_VI, (21.6, 28.8, 113.684)),
    (Curve.IEEE_EI, (29.1, 38.8, 153.158)),
])
def test_dependent_reset_formula(curve: Curve, values: tuple[float, float, float]) -> None:
    for m, expected in zip((0.0, 0.5, 0.9), values, strict=True):
        assert math.isclose(reset_time_s(curve, 1.0, m), expected, rel_tol=5e-6)


def _relay() -> RelaySettings:
    return RelaySettings(nominal_kv=11.0)


def _run_until_trip(core, currents, dt: float, limit_s: float, channel: int = Channel.IA) -> float | None:
    """Drive the phase-A current from `currents(t)` every dt; return the first trip time."""
    core.quality[:] = 1
    core.samples[Channel.CLOSED] = 1.0
    steps = int(limit_s / dt) + 2
    for k in range(steps):
        t = k * dt
        core.samples[channel] = currents(t)
        for ev in core.step(t):
            if ev.kind == EventKind.TRIP:
                return ev.time
    return None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("curve", "tms", "m", "expected"), CASES)
def test_sampled_operate_time(backend, curve: Curve, tms: float, m: float, expected: float) -> None:
    pickup = 100.0
    dt = min(0.01, expected / 50.0)
    core = backend(CoreSettings(relays=(_relay(),), elements=(
        ElementSettings(relay=0, kind=ElementKind.P51, pickup=pickup, curve=curve, fast_curve=curve,
                        tms=tms, fast_tms=tms),)))
    trip = _run_until_trip(core, lambda t: m * pickup, dt, expected * 1.5)
    assert trip is not None
    assert expected - 1e-9 <= trip <= expected + dt + 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_integration_vector_i1(backend) -> None:
    """Sheet I-1: IEC SI TMS 0.1, M = 2 for 0.5 s then M = 5: trip at 0.714605 s."""
    dt = 0.001
    core = backend(CoreSettings(relays=(_relay(),), elements=(
        ElementSettings(relay=0, kind=ElementKind.P51, pickup=100.0, curve=Curve.IEC_SI, tms=0.1,
                        fast_curve=Curve.IEC_SI, fast_tms=0.1),)))
    # Sample k carries the current of the interval ending at k*dt.
    trip = _run_until_trip(core, lambda t: 200.0 if t <= 0.5 + 1e-12 else 500.0, dt, 1.0)
    assert trip is not None
    assert 0.714605 - dt <= trip <= 0.714605 + dt


@pytest.mark.parametrize("backend", BACKENDS)
def test_dependent_reset_run(backend) -> None:
    """IEEE VI TD 1: half-operated disk at M = 0.5 resets fully in 0.5 * 28.8 s."""
    dt = 0.01
    core = backend(CoreSettings(relays=(_relay(),), elements=(
        ElementSettings(relay=0, kind=ElementKind.P51, pickup=100.0, curve=Curve.IEEE_VI, tms=1.0,
                        fast_curve=Curve.IEEE_VI, fast_tms=1.0, reset_mode=ResetMode.DEPENDENT),)))
    core.quality[:] = 1
    core.samples[Channel.IA] = 200.0
    t_half = operate_time_s(Curve.IEEE_VI, 1.0, 2.0) / 2.0
    k = 0
    while k * dt < t_half - 1e-9:
        core.step(k * dt)
        k += 1
    core.step(k * dt)
    e = core.element_state(0).accumulator[0]
    assert abs(e - 0.5) <= dt / operate_time_s(Curve.IEEE_VI, 1.0, 2.0) + 1e-9
    core.samples[Channel.IA] = 50.0
    start = k * dt
    while core.element_state(0).accumulator[0] > 0.0:
        k += 1
        core.step(k * dt)
    assert abs((k * dt - start) - e * 28.8) <= dt + 1e-9


THERMAL = [  # (I, I_P, t_trip) at tau 600 s, k*I_B = 105 A (sheet 4.1)
    (150.0, 0.0, 404.007),
    (150.0, 100.0, 51.3347),
    (210.0, 0.0, 172.609),
    (210.0, 100.0, 18.3118),
    (120.0, 0.0, 870.500),
]


@pytest.mark.parametrize(("current", "preload", "expected"), THERMAL)
def test_thermal_formula(current: float, preload: float, expected: float) -> None:
    assert math.isclose(thermal_trip_time_s(current, preload, 105.0, 600.0), expected, rel_tol=5e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("current", "preload", "expected"), THERMAL)
def test_thermal_replica_trip_time(backend, current: float, preload: float, expected: float) -> None:
    dt = 0.05
    core = backend(CoreSettings(relays=(_relay(),), elements=(
        ElementSettings(relay=0, kind=ElementKind.TH49, pickup=105.0, dropout_ratio=0.97,
                        tau_s=600.0, cooling_tau_s=600.0, reset_theta=0.9),)))
    core.quality[:] = 1
    core.samples[Channel.CLOSED] = 1.0
    # Pre-load: 40 time constants at I_P (theta within 1e-17 of its final value).
    core.samples[Channel.IA] = preload
    core.step(0.0)
    core.step(24000.0)
    theta0 = core.element_state(0).accumulator[0]
    assert math.isclose(theta0, (preload / 105.0) ** 2, rel_tol=1e-12, abs_tol=1e-15)
    core.samples[Channel.IA] = current
    k = 0
    trip = None
    while trip is None and k < int(2 * expected / dt):
        k += 1
        for ev in core.step(24000.0 + k * dt):
            if ev.kind == EventKind.TRIP:
                trip = ev.time - 24000.0
    assert trip is not None
    assert expected - 1e-6 <= trip <= expected + dt + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_thermal_level_after_60_s_and_cooling(backend) -> None:
    """theta after 60 s at 150 A from cold = 0.194209; cooling 1.0 -> 0.5 at 0 A = tau ln 2."""
    core = backend(CoreSettings(relays=(_relay(),), elements=(
        ElementSettings(relay=0, kind=ElementKind.TH49, pickup=105.0, tau_s=600.0,
                        cooling_tau_s=600.0, reset_theta=0.9),)))
    core.quality[:] = 1
    core.samples[Channel.IA] = 150.0
    core.step(0.0)
    core.step(60.0)
    assert math.isclose(core.element_state(0).accumulator[0], 0.194209, rel_tol=5e-6)
    state = core.element_state(0)
    state.accumulator = [1.0, 0.0, 0.0]
    core.set_element_state(0, state)
    core.samples[Channel.IA] = 0.0
    core.step(60.0)  # first good sample after a state load integrates nothing
    core.step(60.0 + 415.888)
    assert math.isclose(core.element_state(0).accumulator[0], 0.5, rel_tol=1e-5)
