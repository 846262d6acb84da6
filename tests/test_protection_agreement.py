"""The C core and the Python reference agree event for event, and both keep the protection
properties: more current never trips later, below pickup never trips, no trip on a sample
whose quality is not good, a permanent fault locks out after shots + 1 trips."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.protection.core import (
    CHANNELS,
    Channel,
    CoreError,
    CoreSettings,
    Curve,
    ElementKind,
    ElementSettings,
    EventKind,
    RawEvent,
    RecloseState,
    RelaySettings,
    ResetMode,
    operate_time_s,
)
from gateway.protection.reference import ReferenceCore, slot_channel, slot_count

try:
    from gateway.protection._native import NativeCore
except ImportError:  # pragma: no cover
    NativeCore = None  # type: ignore[assignment,misc]

pytestmark = pytest.mark.skipif(NativeCore is None, reason="native core not built")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

IEEE = (Curve.IEEE_MI, Curve.IEEE_VI, Curve.IEEE_EI)
finite = {"allow_nan": False, "allow_infinity": False}


@st.composite
def relay_settings(draw) -> RelaySettings:
    shots = draw(st.integers(0, 4))
    dead = [draw(st.floats(0.05, 5.0, **finite)) for _ in range(4)]
    return RelaySettings(
        nominal_kv=11.0,
        shots=shots,
        dead_time_s=(dead[0], dead[1], dead[2], dead[3]),
        fast_mask=draw(st.integers(0, 31)),
        reclaim_s=draw(st.floats(0.1, 10.0, **finite)),
        high_current_lockout_a=draw(st.sampled_from([0.0, 3000.0, 8000.0])),
        close_onto_fault_s=draw(st.floats(0.0, 3.0, **finite)),
        bf_enabled=draw(st.booleans()),
        bf_current_a=draw(st.floats(10.0, 300.0, **finite)),
        bf_retrip_s=draw(st.floats(0.0, 0.1, **finite)),
        bf_backup_s=draw(st.floats(0.1, 0.5, **finite)),
    )


@st.composite
def element_settings(draw, relay: int, kinds: tuple[ElementKind, ...] = tuple(ElementKind)) -> ElementSettings:
    kind = draw(st.sampled_from(kinds))
    common = {"relay": relay, "kind": kind, "reclose": draw(st.booleans())}
    if kind in (ElementKind.P50, ElementKind.N50):
        return ElementSettings(
            **common,
            pickup=draw(st.floats(50.0, 5000.0, **finite)),
            dropout_ratio=draw(st.floats(0.9, 0.99, **finite)),
            delay_s=draw(st.sampled_from([0.0, 0.05, 0.3])),
            fast_only=draw(st.booleans()),
        )
    if kind in (ElementKind.P51, ElementKind.N51):
        reset = draw(st.sampled_from(list(ResetMode)))
        pool = IEEE if reset == ResetMode.DEPENDENT else tuple(Curve)
        start = draw(st.sampled_from([1.0, 1.05, 1.1]))
        return ElementSettings(
            **common,
            pickup=draw(st.floats(20.0, 800.0, **finite)),
            dropout_ratio=draw(st.floats(0.9, 0.99, **finite)),
            delay_s=draw(st.sampled_from([0.0, 0.1])),
            curve=draw(st.sampled_from(pool)),
            fast_curve=draw(st.sampled_from(pool)),
            tms=draw(st.floats(0.02, 1.0, **finite)),
            fast_tms=draw(st.floats(0.02, 1.0, **finite)),
            start_factor=start,
            min_time_s=draw(st.sampled_from([0.0, 0.05])),
            m_max=draw(st.sampled_from([20.0, 30.0])),
            reset_mode=reset,
            reset_delay_s=draw(st.sampled_from([0.0, 0.2, 1.0])),
        )
    if kind == ElementKind.UV27:
        return ElementSettings(
            **common,
            pickup=draw(st.floats(0.5, 0.95, **finite)),
            dropout_ratio=1.03,
            delay_s=draw(st.sampled_from([0.0, 0.2, 1.0])),
        )
    if kind == ElementKind.OV59:
        return ElementSettings(
            **common,
            pickup=draw(st.floats(1.05, 1.3, **finite)),
            dropout_ratio=0.97,
            delay_s=draw(st.sampled_from([0.0, 0.2, 1.0])),
        )
    if kind in (ElementKind.UF81, ElementKind.OF81):
        pickup = (
            draw(st.floats(47.0, 49.5, **finite)) if kind == ElementKind.UF81 else draw(st.floats(50.5, 53.0, **finite))
        )
        return ElementSettings(
            **common,
            pickup=pickup,
            dropout_ratio=0.05,
            delay_s=draw(st.sampled_from([0.0, 0.2, 1.0])),
            block_below_pu=draw(st.sampled_from([0.0, 0.5])),
        )
    return ElementSettings(
        **common,
        pickup=draw(st.floats(50.0, 500.0, **finite)),
        dropout_ratio=0.97,
        tau_s=draw(st.floats(0.5, 30.0, **finite)),
        cooling_tau_s=draw(st.floats(0.5, 60.0, **finite)),
        reset_theta=draw(st.floats(0.5, 0.95, **finite)),
    )


@st.composite
def core_settings(draw) -> CoreSettings:
    relays = draw(st.lists(relay_settings(), min_size=1, max_size=3))
    elements = []
    for i in range(len(relays)):
        elements += draw(st.lists(element_settings(i), min_size=1, max_size=5))
    return CoreSettings(relays=tuple(relays), elements=tuple(draw(st.permutations(elements))))


@dataclass
class Step:
    dt: float
    values: list[float]
    quality: list[int]
    action: str | None  # "trip:<relay>", "close:<relay>:<auth>", "load:<element>:<picked bits>"


@st.composite
def trajectory(draw, relay_count: int, max_steps: int = 60, element_count: int = 0) -> list[Step]:
    steps = []
    channel_values = {
        Channel.IA: st.floats(0.0, 12000.0, **finite),
        Channel.IB: st.floats(0.0, 12000.0, **finite),
        Channel.IC: st.floats(0.0, 12000.0, **finite),
        Channel.IN: st.floats(0.0, 3000.0, **finite),
        Channel.VOLTAGE_KV: st.floats(0.0, 15.0, **finite),
        Channel.FREQUENCY_HZ: st.floats(45.0, 55.0, **finite),
        Channel.CLOSED: st.sampled_from([0.0, 1.0]),
        Channel.SPARE: st.just(0.0),
    }
    values = [0.0] * (relay_count * CHANNELS)
    quality = [1] * (relay_count * CHANNELS)
    for _ in range(draw(st.integers(1, max_steps))):
        # Change a few channels per step, hold the others (sample-and-hold like the daemon).
        for _ in range(draw(st.integers(0, 4))):
            i = draw(st.integers(0, relay_count * CHANNELS - 1))
            values[i] = draw(channel_values[Channel(i % CHANNELS)])
            quality[i] = draw(st.sampled_from([1, 1, 1, 0]))
        action = draw(
            st.sampled_from(
                [None] * 12
                + [f"trip:{r}" for r in range(relay_count)]
                + [f"close:{r}:{a}" for r in range(relay_count) for a in (0, 1)]
                + [f"load:{e}:{b}" for e in range(element_count) for b in (0, 1, 7)]
            )
        )
        dt = draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 2.0, 10.0]))
        steps.append(Step(dt, list(values), list(quality), action))
    return steps


def _drive(core, steps: list[Step]) -> list[tuple]:
    out: list[tuple] = []
    t = 100.0
    for k, s in enumerate(steps):
        t += s.dt
        core.samples[:] = s.values
        core.quality[:] = s.quality
        out += [(k, *ev) for ev in core.step(t)]
        if s.action:
            parts = s.action.split(":")
            index = int(parts[1])  # a relay, or an element for "load"
            if parts[0] == "trip":
                out += [(k, *ev) for ev in core.manual_trip(index, t)]
            elif parts[0] == "load":  # a snapshot's element state: pickups set or cleared
                state = core.element_state(index)
                state.picked = [bool(int(parts[2]) >> i & 1) for i in range(3)]
                core.set_element_state(index, state)
            else:
                try:
                    out += [(k, *ev) for ev in core.manual_close(index, t, parts[2] == "1")]
                except CoreError as exc:  # both must refuse alike
                    out.append((k, "refused", type(exc).__name__))
    return out


@settings(SETTINGS, max_examples=300)
@given(data=st.data())
def test_native_and_reference_agree(data) -> None:
    cs = data.draw(core_settings())
    steps = data.draw(trajectory(len(cs.relays), element_count=len(cs.elements)))
    native, reference = NativeCore(cs), ReferenceCore(cs)
    assert _drive(native, steps) == _drive(reference, steps)
    for r in range(len(cs.relays)):
        assert native.relay_state(r) == reference.relay_state(r)
    for e in range(len(cs.elements)):
        assert native.element_state(e) == reference.element_state(e)


def _faulted_feeder(core, fault_a: float, relay_steps: int, dt: float) -> list[RawEvent]:
    """A breaker that opens on every trip command and closes on every reclose."""
    core.quality[:] = 1
    closed = True
    events: list[RawEvent] = []
    for k in range(relay_steps):
        i = fault_a if closed else 0.0
        core.samples[Channel.IA] = core.samples[Channel.IB] = core.samples[Channel.IC] = i
        core.samples[Channel.VOLTAGE_KV] = 11.0
        core.samples[Channel.FREQUENCY_HZ] = 50.0
        core.samples[Channel.CLOSED] = 1.0 if closed else 0.0
        evs = core.step(k * dt)
        events += evs
        for ev in evs:
            if ev.kind == EventKind.TRIP:
                closed = False
            elif ev.kind == EventKind.RECLOSE:
                closed = True
    return events


@settings(SETTINGS, max_examples=60)
@given(
    relay=relay_settings(),
    curve=st.sampled_from(list(Curve)),
    fast_curve=st.sampled_from(list(Curve)),
    tms=st.floats(0.05, 0.5, **finite),
    fast_tms=st.floats(0.02, 0.2, **finite),
    fault_a=st.floats(500.0, 12000.0, **finite),
    dt=st.sampled_from([0.005, 0.02, 0.1]),
)
# A reclaim time (0.1 s) shorter than the delayed trip time (0.14 s): the reclaim used to run out
# while the fault was still there, so every trip started a new sequence.
@example(
    relay=RelaySettings(
        nominal_kv=11.0,
        shots=1,
        dead_time_s=(1.59, 3.8, 4.17, 2.26),
        fast_mask=10,
        reclaim_s=0.1,
        high_current_lockout_a=8000.0,
        close_onto_fault_s=1.07,
        bf_enabled=True,
        bf_current_a=45.3,
        bf_retrip_s=0.021,
        bf_backup_s=0.45,
    ),
    curve=Curve.IEEE_VI,
    fast_curve=Curve.IEC_SI,
    tms=0.178,
    fast_tms=0.0395,
    fault_a=3212.0,
    dt=0.1,
)
def test_agree_on_reclose_sequences(
    relay: RelaySettings, curve: Curve, fast_curve: Curve, tms: float, fast_tms: float, fault_a: float, dt: float
) -> None:
    """With a breaker model, sequences run through every shot to lockout on both cores, and a
    permanent fault never trips more than shots + 1 times."""
    element = ElementSettings(
        relay=0, kind=ElementKind.P51, pickup=400.0, curve=curve, fast_curve=fast_curve, tms=tms, fast_tms=fast_tms
    )
    cs = CoreSettings(relays=(relay,), elements=(element,))
    a = _faulted_feeder(NativeCore(cs), fault_a, 2000, dt)
    b = _faulted_feeder(ReferenceCore(cs), fault_a, 2000, dt)
    assert a == b
    trips = len({ev.time for ev in a if ev.kind == EventKind.TRIP})
    lockouts = [ev.time for ev in a if ev.kind == EventKind.LOCKOUT]
    assert len(lockouts) <= 1
    assert trips <= relay.shots + 1
    assert not any(ev.kind == EventKind.RESET for ev in a)
    if lockouts:
        assert not any(ev.time > lockouts[0] and ev.kind in (EventKind.TRIP, EventKind.RECLOSE) for ev in a)


@st.composite
def permanent_fault_case(draw) -> tuple[CoreSettings, float, float, int]:
    """A reclosing relay with a 51P (and maybe a 50P), a fault current above both curves'
    start, a sample period, and enough steps for every trip, dead time and a margin."""
    shots = draw(st.integers(0, 4))
    dead = [draw(st.floats(0.05, 5.0, **finite)) for _ in range(4)]
    relay = RelaySettings(
        nominal_kv=11.0,
        shots=shots,
        dead_time_s=(dead[0], dead[1], dead[2], dead[3]),
        fast_mask=draw(st.integers(0, 31)),
        reclaim_s=draw(st.one_of(st.just(0.0), st.floats(0.0, 10.0, **finite))),
        close_onto_fault_s=draw(st.floats(0.0, 3.0, **finite)),
        bf_enabled=draw(st.booleans()),
        bf_current_a=draw(st.floats(10.0, 300.0, **finite)),
        bf_retrip_s=draw(st.floats(0.0, 0.1, **finite)),
        bf_backup_s=draw(st.floats(0.1, 0.5, **finite)),
    )
    e51 = draw(element_settings(0, kinds=(ElementKind.P51,)))
    e51 = ElementSettings(**{**{f: getattr(e51, f) for f in e51.__slots__}, "reclose": True})
    elements = [e51]
    if draw(st.booleans()):
        e50 = draw(element_settings(0, kinds=(ElementKind.P50,)))
        elements.append(ElementSettings(**{**{f: getattr(e50, f) for f in e50.__slots__}, "reclose": True}))
    m = draw(st.floats(1.5, 30.0, **finite))
    fault_a = m * e51.pickup * e51.start_factor
    # The slowest trip: the slower of the two curves at this multiple, plus the added delay.
    mc = min(m * e51.start_factor, e51.m_max)
    slowest = (
        max(operate_time_s(e51.curve, e51.tms, mc), operate_time_s(e51.fast_curve, e51.fast_tms, mc), e51.min_time_s)
        + e51.delay_s
    )
    span_s = (shots + 1) * slowest + sum(dead[:shots])
    dt = max(draw(st.sampled_from([0.005, 0.02, 0.1])), span_s / 3000.0)
    steps = int(span_s / dt) + 4 * (shots + 1) + 20
    return CoreSettings(relays=(relay,), elements=tuple(draw(st.permutations(elements)))), fault_a, dt, steps


@pytest.mark.parametrize("core_cls", [ReferenceCore, NativeCore], ids=["reference", "native"])
@settings(SETTINGS, max_examples=100)
@given(case=permanent_fault_case())
def test_permanent_fault_locks_out_after_shots_plus_one_trips(core_cls, case) -> None:
    """Whatever the reclaim time (shorter or longer than the trip time), dead times and curves,
    a fault that comes back on every reclosure trips exactly shots + 1 times, then locks out
    and stays out."""
    cs, fault_a, dt, steps = case
    relay = cs.relays[0]
    core = core_cls(cs)
    events = _faulted_feeder(core, fault_a, steps, dt)
    trip_times = sorted({ev.time for ev in events if ev.kind == EventKind.TRIP})
    lockouts = [ev.time for ev in events if ev.kind == EventKind.LOCKOUT]
    assert len(trip_times) == relay.shots + 1
    assert lockouts == [trip_times[-1]]
    assert sum(1 for ev in events if ev.kind == EventKind.RECLOSE) == relay.shots
    assert not any(ev.kind == EventKind.RESET for ev in events)
    state = core.relay_state(0)
    assert state.state == RecloseState.LOCKOUT and state.trips == relay.shots + 1


# ---------------------------------------------------------------- properties

OC_KINDS = (ElementKind.P50, ElementKind.P51, ElementKind.TH49)


@st.composite
def overcurrent_element(draw) -> ElementSettings:
    e = draw(element_settings(0).filter(lambda e: e.kind in OC_KINDS))
    return ElementSettings(**{**{f: getattr(e, f) for f in e.__slots__}, "fast_only": False})


def _threshold(e: ElementSettings) -> float:
    """Largest current that must never trip."""
    if e.kind == ElementKind.P51:
        return e.pickup * e.start_factor
    return e.pickup


def _trip_time(core_cls, e: ElementSettings, current: float, dt: float, steps: int) -> float:
    core = core_cls(CoreSettings(relays=(RelaySettings(nominal_kv=11.0),), elements=(e,)))
    core.quality[:] = 1
    core.samples[Channel.CLOSED] = 1.0
    core.samples[Channel.IA] = current
    for k in range(steps):
        for ev in core.step(k * dt):
            if ev.kind == EventKind.TRIP:
                return ev.time
    return math.inf


@pytest.mark.parametrize("core_cls", [ReferenceCore, NativeCore], ids=["reference", "native"])
@SETTINGS
@given(
    e=overcurrent_element(),
    m1=st.floats(0.5, 25.0, **finite),
    m2=st.floats(0.5, 25.0, **finite),
    dt=st.sampled_from([0.01, 0.05, 0.2]),
)
def test_more_current_never_trips_later(core_cls, e: ElementSettings, m1: float, m2: float, dt: float) -> None:
    low, high = sorted((m1, m2))
    t_low = _trip_time(core_cls, e, low * e.pickup, dt, 400)
    t_high = _trip_time(core_cls, e, high * e.pickup, dt, 400)
    assert t_high <= t_low


@pytest.mark.parametrize("core_cls", [ReferenceCore, NativeCore], ids=["reference", "native"])
@SETTINGS
@given(e=overcurrent_element(), data=st.data())
def test_below_pickup_never_trips(core_cls, e: ElementSettings, data) -> None:
    limit = _threshold(e)
    currents = data.draw(st.lists(st.floats(0.0, limit, **finite), min_size=1, max_size=80))
    dts = data.draw(st.lists(st.sampled_from([0.01, 0.5, 5.0, 60.0]), min_size=len(currents), max_size=len(currents)))
    core = core_cls(CoreSettings(relays=(RelaySettings(nominal_kv=11.0),), elements=(e,)))
    core.quality[:] = 1
    t = 0.0
    for i, dt in zip(currents, dts, strict=True):
        t += dt
        core.samples[Channel.IA] = i
        assert all(ev.kind != EventKind.TRIP for ev in core.step(t))


@pytest.mark.parametrize("core_cls", [ReferenceCore, NativeCore], ids=["reference", "native"])
@settings(SETTINGS, max_examples=80)
@given(data=st.data())
def test_no_trip_on_a_sample_that_is_not_good(core_cls, data) -> None:
    cs = data.draw(core_settings())
    steps = data.draw(trajectory(len(cs.relays), max_steps=40))
    core = core_cls(cs)
    t = 0.0
    for s in steps:
        t += s.dt
        core.samples[:] = s.values
        core.quality[:] = s.quality
        for ev in core.step(t):
            if ev.kind != EventKind.TRIP:
                continue
            e = cs.elements[ev.element]
            slots = [sl for sl in range(slot_count(e.kind)) if sl == ev.phase or slot_count(e.kind) == 1]
            for sl in slots:
                ch = ev.relay * CHANNELS + slot_channel(e.kind, sl)
                assert s.quality[ch] == 1
                if e.kind in (ElementKind.UF81, ElementKind.OF81) and e.block_below_pu > 0:
                    assert s.quality[ev.relay * CHANNELS + Channel.VOLTAGE_KV] == 1
