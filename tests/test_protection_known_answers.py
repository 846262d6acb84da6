"""Known answers from the grid reference sheet (sections 1.2, 1.3, 1.5, 3.3, 4.1), for the C core
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
    RecloseState,
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

BACKENDS = [
    pytest.param(ReferenceCore, id="reference"),
    pytest.param(NativeCore, id="native", marks=pytest.mark.skipif(NativeCore is None, reason="native core not built")),
]

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


@pytest.mark.parametrize(
    ("curve", "values"),
    [
        (Curve.IEEE_MI, (4.85, 6.46667, 25.5263)),
        (Curve.IEEE_VI, (21.6, 28.8, 113.684)),
        (Curve.IEEE_EI, (29.1, 38.8, 153.158)),
    ],
)
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
    core = backend(
        CoreSettings(
            relays=(_relay(),),
            elements=(
                ElementSettings(
                    relay=0, kind=ElementKind.P51, pickup=pickup, curve=curve, fast_curve=curve, tms=tms, fast_tms=tms
                ),
            ),
        )
    )
    trip = _run_until_trip(core, lambda t: m * pickup, dt, expected * 1.5)
    assert trip is not None
    assert expected - 1e-9 <= trip <= expected + dt + 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_integration_vector_i1(backend) -> None:
    """Sheet I-1: IEC SI TMS 0.1, M = 2 for 0.5 s then M = 5: trip at 0.714605 s."""
    dt = 0.001
    core = backend(
        CoreSettings(
            relays=(_relay(),),
            elements=(
                ElementSettings(
                    relay=0,
                    kind=ElementKind.P51,
                    pickup=100.0,
                    curve=Curve.IEC_SI,
                    tms=0.1,
                    fast_curve=Curve.IEC_SI,
                    fast_tms=0.1,
                ),
            ),
        )
    )
    # Sample k carries the current of the interval ending at k*dt.
    trip = _run_until_trip(core, lambda t: 200.0 if t <= 0.5 + 1e-12 else 500.0, dt, 1.0)
    assert trip is not None
    assert 0.714605 - dt <= trip <= 0.714605 + dt


@pytest.mark.parametrize("backend", BACKENDS)
def test_dependent_reset_run(backend) -> None:
    """IEEE VI TD 1: half-operated disk at M = 0.5 resets fully in 0.5 * 28.8 s."""
    dt = 0.01
    core = backend(
        CoreSettings(
            relays=(_relay(),),
            elements=(
                ElementSettings(
                    relay=0,
                    kind=ElementKind.P51,
                    pickup=100.0,
                    curve=Curve.IEEE_VI,
                    tms=1.0,
                    fast_curve=Curve.IEEE_VI,
                    fast_tms=1.0,
                    reset_mode=ResetMode.DEPENDENT,
                ),
            ),
        )
    )
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
    core = backend(
        CoreSettings(
            relays=(_relay(),),
            elements=(
                ElementSettings(
                    relay=0,
                    kind=ElementKind.TH49,
                    pickup=105.0,
                    dropout_ratio=0.97,
                    tau_s=600.0,
                    cooling_tau_s=600.0,
                    reset_theta=0.9,
                ),
            ),
        )
    )
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
    core = backend(
        CoreSettings(
            relays=(_relay(),),
            elements=(
                ElementSettings(
                    relay=0, kind=ElementKind.TH49, pickup=105.0, tau_s=600.0, cooling_tau_s=600.0, reset_theta=0.9
                ),
            ),
        )
    )
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


# ---------------------------------------------------------------- 79: reclaim and close-onto-fault


def _feeder(core, fault_a, dt: float, duration_s: float, close_at: float | None = None) -> list:
    """A breaker that opens on every trip and closes on every reclose (and, at `close_at`, on an
    operator close); while closed it carries `fault_a(t)` on all three phases. Returns the
    relay-level events (trip once per relay trip, reclose, lockout, reset) as (kind, time)."""
    core.quality[:] = 1
    core.samples[Channel.VOLTAGE_KV] = 11.0
    core.samples[Channel.FREQUENCY_HZ] = 50.0
    closed = close_at is None
    out: list[tuple[EventKind, float]] = []
    for k in range(int(round(duration_s / dt)) + 1):
        t = k * dt
        i = fault_a(t) if closed else 0.0
        core.samples[Channel.IA] = core.samples[Channel.IB] = core.samples[Channel.IC] = i
        core.samples[Channel.CLOSED] = 1.0 if closed else 0.0
        for ev in core.step(t):
            if ev.kind == EventKind.TRIP and ev.phase == 0:
                out.append((EventKind.TRIP, ev.time))
                closed = False
            elif ev.kind in (EventKind.RECLOSE, EventKind.LOCKOUT, EventKind.RESET):
                out.append((ev.kind, ev.time))
                closed = closed or ev.kind == EventKind.RECLOSE
        if close_at is not None and t >= close_at - 1e-9:
            core.manual_close(0, t, False)  # like a reclose: the next sample is the closed breaker's
            closed, close_at = True, None
    return out


def _oc_element(curve: Curve, tms: float, fast_curve: Curve, fast_tms: float) -> ElementSettings:
    return ElementSettings(
        relay=0, kind=ElementKind.P51, pickup=400.0, curve=curve, tms=tms, fast_curve=fast_curve, fast_tms=fast_tms
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_permanent_fault_with_reclaim_shorter_than_trip_time_locks_out(backend) -> None:
    """One shot, reclaim 0.1 s, 3212 A (M = 8.03): fast IEC SI trip, reclose after 0.5 s, then a
    delayed IEEE VI trip 0.40 s later, i.e. after the reclaim time would have run out. The
    reclaim does not run while the 51 is picked up, so the second trip is the last shot and
    locks out; the sequence never resets and never recloses again."""
    dt, dead, reclaim, fault, m = 0.1, 0.5, 0.1, 3212.0, 3212.0 / 400.0
    t_fast = operate_time_s(Curve.IEC_SI, 0.05, m)  # 0.165 s
    t_delayed = operate_time_s(Curve.IEEE_VI, 0.5, m)  # 0.400 s
    assert t_delayed > reclaim  # the case: the fault outlasts the reclaim time
    relay = RelaySettings(
        nominal_kv=11.0,
        shots=1,
        dead_time_s=(dead, dead, dead, dead),
        fast_mask=1,
        reclaim_s=reclaim,
        close_onto_fault_s=reclaim,
    )
    core = backend(CoreSettings(relays=(relay,), elements=(_oc_element(Curve.IEEE_VI, 0.5, Curve.IEC_SI, 0.05),)))
    seq = _feeder(core, lambda t: fault, dt, 60.0)
    assert [k for k, _ in seq] == [EventKind.TRIP, EventKind.RECLOSE, EventKind.TRIP, EventKind.LOCKOUT]
    (_, trip1), (_, reclose), (_, trip2), (_, lockout) = seq
    assert t_fast - 1e-9 <= trip1 <= t_fast + dt + 1e-9
    assert trip1 + dead - 1e-9 <= reclose <= trip1 + dead + dt + 1e-9
    assert t_delayed - 1e-9 <= trip2 - reclose <= t_delayed + dt + 1e-9
    assert lockout == trip2
    state = core.relay_state(0)
    assert state.state == RecloseState.LOCKOUT and state.trips == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shots", [1, 2, 3, 4])
def test_permanent_fault_locks_out_after_shots_plus_one_trips(backend, shots: int) -> None:
    """Every shot with reclaim 0.05 s against IEC SI TMS 0.1 at M = 5 (0.428 s): shots + 1 trips,
    one per dead time, then lockout."""
    dt, dead = 0.01, (0.3, 1.0, 2.0, 3.0)
    relay = RelaySettings(nominal_kv=11.0, shots=shots, dead_time_s=dead, reclaim_s=0.05)
    core = backend(CoreSettings(relays=(relay,), elements=(_oc_element(Curve.IEC_SI, 0.1, Curve.IEC_SI, 0.1),)))
    seq = _feeder(core, lambda t: 2000.0, dt, 30.0)
    assert [k for k, _ in seq] == [EventKind.TRIP, EventKind.RECLOSE] * shots + [EventKind.TRIP, EventKind.LOCKOUT]
    t_op = operate_time_s(Curve.IEC_SI, 0.1, 5.0)
    times = [t for _, t in seq]
    for n in range(shots):
        assert dead[n] - 1e-9 <= times[2 * n + 1] - times[2 * n] <= dead[n] + dt + 1e-9
        assert t_op - 1e-9 <= times[2 * n + 2] - times[2 * n + 1] <= t_op + dt + 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flicker", [None, (1.5, 1.8)])
def test_reclaim_restarts_in_full_when_a_pickup_drops_out(backend, flicker) -> None:
    """A transient fault (2000 A, gone before the reclosure) resets the sequence one reclaim time
    (1 s) after the reclose. An overcurrent after the reclose that drops out before tripping
    (0.3 s < 0.428 s) restarts the reclaim time in full from its dropout: the reset comes 1 s
    after the dropout (a paused timer would have reset 0.3 s after the undisturbed time)."""
    dt, reclaim = 0.01, 1.0
    relay = RelaySettings(nominal_kv=11.0, shots=2, dead_time_s=(0.5, 5.0, 5.0, 5.0), reclaim_s=reclaim)
    core = backend(CoreSettings(relays=(relay,), elements=(_oc_element(Curve.IEC_SI, 0.1, Curve.IEC_SI, 0.1),)))

    def current(t: float) -> float:
        if t < 0.6 or (flicker is not None and flicker[0] <= t < flicker[1] - 1e-9):
            return 2000.0
        return 100.0

    seq = _feeder(core, current, dt, 10.0)
    assert [k for k, _ in seq] == [EventKind.TRIP, EventKind.RECLOSE, EventKind.RESET]
    reclose, reset = seq[1][1], seq[2][1]
    start = reclose if flicker is None else flicker[1]
    assert start + reclaim - 1e-9 <= reset <= start + reclaim + dt + 1e-9
    assert core.relay_state(0).state == RecloseState.READY and core.relay_state(0).trips == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_onto_fault_window_is_fixed_from_the_close(backend) -> None:
    """Close-onto-fault window 1 s (default: the reclaim time), IEC SI TMS 0.1 at M = 5 trips in
    0.428 s. Closing onto the fault: one trip, lockout. A fault that starts after the window: a
    reclose sequence (shots + 1 trips to lockout). A fault present at the close whose trip comes
    after the window (IEC SI TMS 0.5: 2.14 s): the window does not stretch with the pickup, the
    trip starts a sequence, and that sequence still locks out after shots + 1 trips."""
    dt, window = 0.01, 1.0
    relay = RelaySettings(
        nominal_kv=11.0, shots=2, dead_time_s=(0.5, 1.0, 1.0, 1.0), reclaim_s=window, close_onto_fault_s=window
    )
    fast = CoreSettings(relays=(relay,), elements=(_oc_element(Curve.IEC_SI, 0.1, Curve.IEC_SI, 0.1),))
    slow = CoreSettings(relays=(relay,), elements=(_oc_element(Curve.IEC_SI, 0.5, Curve.IEC_SI, 0.5),))

    onto_fault = _feeder(backend(fast), lambda t: 2000.0, dt, 20.0, close_at=1.0)
    assert [k for k, _ in onto_fault] == [EventKind.TRIP, EventKind.LOCKOUT]
    t_op = operate_time_s(Curve.IEC_SI, 0.1, 5.0)
    assert 1.0 + t_op - 1e-9 <= onto_fault[0][1] <= 1.0 + t_op + dt + 1e-9

    later = _feeder(backend(fast), lambda t: 2000.0 if t >= 2.5 else 100.0, dt, 20.0, close_at=1.0)
    assert [k for k, _ in later] == [EventKind.TRIP, EventKind.RECLOSE] * 2 + [EventKind.TRIP, EventKind.LOCKOUT]
    assert later[0][1] > 1.0 + window

    outlasting = _feeder(backend(slow), lambda t: 2000.0, dt, 40.0, close_at=1.0)
    assert [k for k, _ in outlasting] == [EventKind.TRIP, EventKind.RECLOSE] * 2 + [EventKind.TRIP, EventKind.LOCKOUT]
    assert outlasting[0][1] > 1.0 + window


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loads", [1, 2])
def test_reclaim_after_an_element_state_load(backend, loads: int) -> None:
    """A pickup loaded with an element state (a snapshot) counts like one the element made itself,
    however often it is loaded: its dropout starts the reclaim time (the sequence resets one
    reclaim time later), and a later fault that outlasts the reclaim time still trips the next
    shot and locks out."""
    dt = 0.01
    relay = RelaySettings(nominal_kv=11.0, shots=2, dead_time_s=(0.5, 0.5, 0.5, 0.5), reclaim_s=0.2)
    core = backend(CoreSettings(relays=(relay,), elements=(_oc_element(Curve.IEC_SI, 0.1, Curve.IEC_SI, 0.1),)))
    core.quality[:] = 1
    core.samples[Channel.CLOSED] = 1.0
    line_a = 100.0  # what the line draws while the breaker is closed
    core.samples[Channel.IA] = line_a
    k = 0

    def run(until: float) -> list[tuple[EventKind, float]]:
        nonlocal k
        seq = []
        while k * dt < until - 1e-9:
            k += 1
            for ev in core.step(k * dt):
                if ev.kind in (EventKind.TRIP, EventKind.RECLOSE, EventKind.LOCKOUT, EventKind.RESET):
                    seq.append((ev.kind, ev.time))
                    if ev.kind == EventKind.TRIP:
                        core.samples[Channel.CLOSED], core.samples[Channel.IA] = 0.0, 0.0
                    elif ev.kind == EventKind.RECLOSE:
                        core.samples[Channel.CLOSED], core.samples[Channel.IA] = 1.0, line_a
        return seq

    core.samples[Channel.IA] = 2000.0  # cleared by the dead time: the reclose finds 100 A
    assert [kind for kind, _ in run(1.0)] == [EventKind.TRIP, EventKind.RECLOSE]
    assert core.relay_state(0).state == RecloseState.RECLAIM
    state = core.element_state(0)
    state.picked = [True, False, False]
    for _ in range(loads):
        core.set_element_state(0, state)
    load_t = k * dt
    seq = run(3.0)  # 100 A: the loaded pickup drops out on the next step
    assert [kind for kind, _ in seq] == [EventKind.RESET]
    assert load_t + dt + 0.2 - 1e-9 <= seq[0][1] <= load_t + dt + 0.2 + dt + 1e-9
    line_a = core.samples[Channel.IA] = 2000.0  # a permanent fault: a new sequence to lockout
    seq = run(10.0)
    assert [kind for kind, _ in seq] == [EventKind.TRIP, EventKind.RECLOSE] * 2 + [EventKind.TRIP, EventKind.LOCKOUT]
