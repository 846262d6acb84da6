"""Pure-Python reference of the protection core: the specification the C core must agree with.

Operation for operation alike native/stima_protection.c (same order of floating-point
operations, same libm functions), so both produce the same events on the same steps.

Step semantics, per element slot (phase):
- A slot whose sample is not good (quality flag != 1, or not finite) holds its state; the next
  good sample integrates over dt = 0 (no time is credited across a gap).
- 50/27/59/81: pickup when the operate condition holds, dropout below the dropout ratio,
  operated once picked up for `delay_s`. 27 is blocked while the breaker is known open; 81 is
  blocked below its undervoltage threshold.
- 51: M = I / pickup; above the start factor the accumulator E grows by dt / t(M) with
  t = max(t_min, t_op(min(M, m_max))) + delay; between 1 and the start factor it holds; below
  M = 1 it resets (instant, definite after `reset_delay_s`, or IEEE dependent). E is clamped
  at 1 and the slot operates at E >= 1 while picked up.
- 49: theta moves toward (I / k I_B)^2 exactly for the step (exponential); operates at
  theta >= 1, clears below `reset_theta`.
Per relay, after every element: a relay trips when an element slot is operated on a good sample,
no trip is latched and the breaker is not known open; then 50BF and the 79 timers run.
The reclaim time after a reclosure runs only while no element slot of the relay is picked up (a
slot whose sample is not good keeps its pickup): every step on which a slot is picked up, or
drops out, restarts it in full, so the sequence resets only `reclaim_s` after the last dropout,
and a fault that outlasts the reclaim time trips as the next shot. Restarting rather than
pausing, as numerical relays do: a fault that comes and goes (arcing, intermittent) must be
absent for the whole reclaim time before the shot counter is cleared. The close-onto-fault
window is a fixed time from the manual close.
"""

from __future__ import annotations

import math

from gateway.protection.core import (
    CHANNELS,
    CURVE_CONSTANTS,
    Channel,
    CoreError,
    CoreRefused,
    CoreSettings,
    Curve,
    ElementKind,
    ElementSettings,
    ElementState,
    EventKind,
    Phase,
    RawEvent,
    RecloseState,
    RelaySettings,
    RelayState,
    ResetMode,
    new_inputs,
    operate_time_s,
)

_THREE = (ElementKind.P50, ElementKind.P51, ElementKind.TH49)
_NEUTRAL = (ElementKind.N50, ElementKind.N51)
_VOLTAGE = (ElementKind.UV27, ElementKind.OV59)
_FREQUENCY = (ElementKind.UF81, ElementKind.OF81)


def slot_count(kind: ElementKind) -> int:
    return 3 if kind in _THREE else 1


def slot_channel(kind: ElementKind, slot: int) -> int:
    if kind in _THREE:
        return slot
    if kind in _NEUTRAL:
        return Channel.IN
    if kind in _VOLTAGE:
        return Channel.VOLTAGE_KV
    return Channel.FREQUENCY_HZ


def slot_phase(kind: ElementKind, slot: int) -> Phase:
    if kind in _THREE:
        return Phase(slot)
    if kind in _NEUTRAL:
        return Phase.N
    return Phase.NONE


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0.0


def _non_negative(x: float) -> bool:
    return math.isfinite(x) and x >= 0.0


def check_relay(s: RelaySettings) -> None:
    """The C core's validation of ProtCore_setRelay."""
    ok = (
        _positive(s.nominal_kv)
        and 0 <= s.shots <= 4
        and _non_negative(s.reclaim_s)
        and _non_negative(s.high_current_lockout_a)
        and _non_negative(s.close_onto_fault_s)
        and _non_negative(s.bf_current_a)
        and _non_negative(s.bf_retrip_s)
        and _non_negative(s.bf_backup_s)
        and len(s.dead_time_s) == 4
        and all(_positive(s.dead_time_s[i]) for i in range(s.shots))
    )
    if not ok:
        raise CoreError(f"relay settings out of range: {s}")


def check_element(s: ElementSettings, relay_count: int) -> None:
    """The C core's validation of ProtCore_addElement."""
    ok = 0 <= s.relay < relay_count and _positive(s.pickup) and _positive(s.dropout_ratio) and _non_negative(s.delay_s)
    if ok and s.kind in (ElementKind.P51, ElementKind.N51):
        ok = (
            _positive(s.tms)
            and _positive(s.fast_tms)
            and 1.0 <= s.start_factor <= 1.2
            and _non_negative(s.min_time_s)
            and math.isfinite(s.m_max)
            and s.m_max > s.start_factor
            and _non_negative(s.reset_delay_s)
        )
        if ok and s.reset_mode == ResetMode.DEPENDENT:
            ok = CURVE_CONSTANTS[s.curve].reset_tr > 0.0 and CURVE_CONSTANTS[s.fast_curve].reset_tr > 0.0
    if ok and s.kind == ElementKind.TH49:
        ok = _positive(s.tau_s) and _positive(s.cooling_tau_s) and _positive(s.reset_theta) and s.reset_theta < 1.0
    if ok and s.kind in _FREQUENCY:
        ok = _non_negative(s.block_below_pu)
    if not ok:
        raise CoreError(f"element settings out of range: {s}")


class _Element:
    __slots__ = ("good_now", "s", "st", "was_good")

    def __init__(self, s: ElementSettings) -> None:
        self.s = s
        self.st = ElementState()
        self.was_good = [False, False, False]
        self.good_now = [False, False, False]


class _Relay:
    __slots__ = ("dropped", "operated_count", "operating_good", "picked_slots", "s", "st")

    def __init__(self, s: RelaySettings) -> None:
        self.s = s
        self.st = RelayState()
        self.operated_count = 0
        self.operating_good = 0
        # Slots of the relay picked up now, kept up to date on every pickup and dropout (the 79
        # reclaim time runs only while there is none, and not on the step one drops out).
        self.picked_slots = 0
        self.dropped = False


class ReferenceCore:
    """Same interface and semantics as `_native.NativeCore`, in Python."""

    name = "reference"

    def __init__(self, settings: CoreSettings) -> None:
        for r in settings.relays:
            check_relay(r)
        for e in settings.elements:
            check_element(e, len(settings.relays))
        self.relays = [_Relay(r) for r in settings.relays]
        self.elements = [_Element(e) for e in settings.elements]
        self.samples, self.quality = new_inputs(len(self.relays))
        self._started = False
        self._last_now = 0.0

    # ----------------------------------------------------------------- public

    def step(self, now: float) -> list[RawEvent]:
        if not math.isfinite(now):
            raise CoreError(f"time must be finite, not {now!r}")
        if not self._started:
            self._started = True
            self._last_now = now
        now = max(now, self._last_now)
        dt = now - self._last_now
        self._last_now = now
        x: list[float] = self.samples.tolist()
        q: list[int] = self.quality.tolist()
        good = [q[i] == 1 and math.isfinite(x[i]) for i in range(len(x))]
        out: list[RawEvent] = []
        for r in self.relays:
            r.operated_count = 0
            r.operating_good = 0
            r.dropped = False
        for idx, e in enumerate(self.elements):
            self._update_element(out, idx, e, now, dt, x, good)
        for i, r in enumerate(self.relays):
            self._update_relay(out, i, r, now, x, good)
        return out

    def manual_trip(self, relay: int, now: float) -> list[RawEvent]:
        r = self._relay(relay, now)
        if r.st.state != RecloseState.LOCKOUT:
            r.st.state = RecloseState.OPEN
        r.st.trips = 0
        return [RawEvent(now, relay, -1, EventKind.OPEN, Phase.NONE, 0.0)]

    def manual_close(self, relay: int, now: float, authorised: bool) -> list[RawEvent]:
        r = self._relay(relay, now)
        if r.st.state == RecloseState.LOCKOUT and not authorised:
            raise CoreRefused("locked out: only an authorised close re-arms the breaker")
        out: list[RawEvent] = []
        if r.st.state == RecloseState.LOCKOUT:
            out.append(RawEvent(now, relay, -1, EventKind.RESET, Phase.NONE, 0.0))
        r.st.state = RecloseState.READY
        r.st.trips = 0
        r.st.latched = False
        r.st.bf_armed = False
        r.st.close_onto_fault_until = now + r.s.close_onto_fault_s
        out.append(RawEvent(now, relay, -1, EventKind.CLOSE, Phase.NONE, 0.0))
        return out

    def relay_state(self, relay: int) -> RelayState:
        st = self.relays[relay].st
        return RelayState(
            st.state,
            st.trips,
            st.deadline,
            st.close_onto_fault_until,
            st.latched,
            st.bf_armed,
            st.bf_start,
            st.bf_retrip_done,
        )

    def set_relay_state(self, relay: int, state: RelayState) -> None:
        if state.trips < 0:
            raise CoreError(f"trips must be >= 0, not {state.trips}")
        self.relays[relay].st = RelayState(
            RecloseState(state.state),
            state.trips,
            state.deadline,
            state.close_onto_fault_until,
            bool(state.latched),
            bool(state.bf_armed),
            state.bf_start,
            bool(state.bf_retrip_done),
        )

    def element_state(self, element: int) -> ElementState:
        st = self.elements[element].st
        return ElementState(list(st.accumulator), list(st.since), list(st.picked), list(st.operated))

    def set_element_state(self, element: int, state: ElementState) -> None:
        if not all(_non_negative(a) for a in state.accumulator):
            raise CoreError(f"accumulators must be finite and >= 0: {state.accumulator}")
        e = self.elements[element]
        r = self.relays[e.s.relay]
        for slot in range(slot_count(e.s.kind)):
            r.picked_slots += int(bool(state.picked[slot])) - int(e.st.picked[slot])
        e.st = ElementState(
            list(state.accumulator),
            list(state.since),
            [bool(p) for p in state.picked],
            [bool(o) for o in state.operated],
        )
        e.was_good = [False, False, False]

    # ----------------------------------------------------------------- internals

    def _relay(self, relay: int, now: float) -> _Relay:
        if not 0 <= relay < len(self.relays) or not math.isfinite(now):
            raise CoreError(f"no relay {relay} (or time {now!r} not finite)")
        return self.relays[relay]

    def _fast(self, r: _Relay) -> bool:
        if r.s.shots <= 0 or r.st.state in (RecloseState.LOCKOUT, RecloseState.OPEN) or r.st.trips >= 32:
            return False
        return bool((r.s.fast_mask >> r.st.trips) & 1)

    def _update_element(
        self, out: list[RawEvent], idx: int, e: _Element, now: float, dt: float, x: list[float], good: list[bool]
    ) -> None:
        s = e.s
        r = self.relays[s.relay]
        base = s.relay * CHANNELS
        fast = self._fast(r)
        for slot in range(slot_count(s.kind)):
            ch = slot_channel(s.kind, slot)
            phase = slot_phase(s.kind, slot)
            ok = good[base + ch]
            if ok and s.kind in _FREQUENCY and s.block_below_pu > 0.0:
                ok = good[base + Channel.VOLTAGE_KV]
            e.good_now[slot] = ok
            if not ok:
                e.was_good[slot] = False
                if e.st.operated[slot]:
                    r.operated_count += 1
                continue
            dt_slot = dt if e.was_good[slot] else 0.0
            e.was_good[slot] = True
            v = x[base + ch]
            kind = s.kind
            if kind in (ElementKind.P50, ElementKind.N50):
                active = (not s.fast_only) or fast
                self._definite(
                    out,
                    r,
                    e,
                    idx,
                    slot,
                    phase,
                    now,
                    v,
                    active and v > s.pickup,
                    (not active) or v < s.pickup * s.dropout_ratio,
                )
            elif kind in (ElementKind.P51, ElementKind.N51):
                self._inverse(out, r, e, idx, slot, phase, now, dt_slot, v, fast)
            elif kind == ElementKind.UV27:
                # Supervised by the breaker position: a dead line behind an open breaker is no
                # undervoltage (and must not trip the breaker the moment it closes).
                pu = v / r.s.nominal_kv
                is_open = good[base + Channel.CLOSED] and x[base + Channel.CLOSED] < 0.5
                self._definite(
                    out,
                    r,
                    e,
                    idx,
                    slot,
                    phase,
                    now,
                    v,
                    (not is_open) and pu < s.pickup,
                    is_open or pu > s.pickup * s.dropout_ratio,
                )
            elif kind == ElementKind.OV59:
                pu = v / r.s.nominal_kv
                self._definite(out, r, e, idx, slot, phase, now, v, pu > s.pickup, pu < s.pickup * s.dropout_ratio)
            elif kind in _FREQUENCY:
                blocked = s.block_below_pu > 0.0 and x[base + Channel.VOLTAGE_KV] / r.s.nominal_kv < s.block_below_pu
                if kind == ElementKind.UF81:
                    operate = (not blocked) and v < s.pickup
                    release = blocked or v > s.pickup + s.dropout_ratio
                else:
                    operate = (not blocked) and v > s.pickup
                    release = blocked or v < s.pickup - s.dropout_ratio
                self._definite(out, r, e, idx, slot, phase, now, v, operate, release)
            else:
                self._thermal(out, r, e, idx, slot, phase, now, dt_slot, v)
            if e.st.operated[slot]:
                r.operated_count += 1
                r.operating_good += 1

    @staticmethod
    def _picks_up(r: _Relay, st: ElementState, slot: int) -> None:
        st.picked[slot] = True
        r.picked_slots += 1

    @staticmethod
    def _drops_out(r: _Relay, st: ElementState, slot: int) -> None:
        st.picked[slot] = False
        r.picked_slots -= 1
        r.dropped = True

    @classmethod
    def _definite(
        cls,
        out: list[RawEvent],
        r: _Relay,
        e: _Element,
        idx: int,
        slot: int,
        phase: Phase,
        now: float,
        v: float,
        operate: bool,
        release: bool,
    ) -> None:
        st = e.st
        if not st.picked[slot] and operate:
            cls._picks_up(r, st, slot)
            st.since[slot] = now
            out.append(RawEvent(now, e.s.relay, idx, EventKind.PICKUP, phase, v))
        elif st.picked[slot] and release:
            cls._drops_out(r, st, slot)
            st.operated[slot] = False
            out.append(RawEvent(now, e.s.relay, idx, EventKind.DROPOUT, phase, v))
        if st.picked[slot] and not st.operated[slot] and now - st.since[slot] >= e.s.delay_s:
            st.operated[slot] = True

    @classmethod
    def _inverse(
        cls,
        out: list[RawEvent],
        r: _Relay,
        e: _Element,
        idx: int,
        slot: int,
        phase: Phase,
        now: float,
        dt: float,
        v: float,
        fast: bool,
    ) -> None:
        s, st = e.s, e.st
        curve = s.fast_curve if fast else s.curve
        tms = s.fast_tms if fast else s.tms
        m = v / s.pickup
        if not st.picked[slot] and m > s.start_factor:
            cls._picks_up(r, st, slot)
            out.append(RawEvent(now, s.relay, idx, EventKind.PICKUP, phase, v))
        elif st.picked[slot] and m < s.dropout_ratio * s.start_factor:
            cls._drops_out(r, st, slot)
            st.operated[slot] = False
            out.append(RawEvent(now, s.relay, idx, EventKind.DROPOUT, phase, v))
        acc = st.accumulator
        if m > s.start_factor:
            mc = min(s.m_max, m)
            t = operate_time_s(curve, tms, mc)
            t = max(t, s.min_time_s)
            t = t + s.delay_s
            acc[slot] = acc[slot] + dt / t
            st.since[slot] = now
        elif m >= 1.0:
            st.since[slot] = now
        elif s.reset_mode == ResetMode.INSTANT:
            acc[slot] = 0.0
        elif s.reset_mode == ResetMode.DEFINITE:
            if now - st.since[slot] >= s.reset_delay_s:
                acc[slot] = 0.0
        else:
            t_reset = tms * CURVE_CONSTANTS[Curve(curve)].reset_tr / (1.0 - m * m)
            acc[slot] = acc[slot] - dt / t_reset
            acc[slot] = max(acc[slot], 0.0)
        if acc[slot] >= 1.0:
            acc[slot] = 1.0
            if st.picked[slot]:
                st.operated[slot] = True

    @classmethod
    def _thermal(
        cls,
        out: list[RawEvent],
        r: _Relay,
        e: _Element,
        idx: int,
        slot: int,
        phase: Phase,
        now: float,
        dt: float,
        v: float,
    ) -> None:
        s, st = e.s, e.st
        ratio = v / s.pickup
        theta_inf = ratio * ratio
        theta = st.accumulator[slot]
        tau = s.tau_s if theta_inf >= theta else s.cooling_tau_s
        if not st.picked[slot] and v > s.pickup:
            cls._picks_up(r, st, slot)
            out.append(RawEvent(now, s.relay, idx, EventKind.PICKUP, phase, v))
        elif st.picked[slot] and v < s.dropout_ratio * s.pickup:
            cls._drops_out(r, st, slot)
            out.append(RawEvent(now, s.relay, idx, EventKind.DROPOUT, phase, v))
        theta = theta_inf + (theta - theta_inf) * math.exp(-dt / tau)
        st.accumulator[slot] = theta
        if theta >= 1.0:
            st.operated[slot] = True
        elif st.operated[slot] and theta < s.reset_theta:
            st.operated[slot] = False

    def _update_relay(
        self, out: list[RawEvent], i: int, r: _Relay, now: float, x: list[float], good: list[bool]
    ) -> None:
        base = i * CHANNELS
        any_good = False
        i_max = 0.0
        for ch in (Channel.IA, Channel.IB, Channel.IC):
            if good[base + ch]:
                v = x[base + ch]
                if not any_good or v > i_max:
                    i_max = v
                any_good = True
        known_open = good[base + Channel.CLOSED] and x[base + Channel.CLOSED] < 0.5
        st = r.st
        if st.latched and r.operated_count == 0:
            st.latched = False
        if r.operating_good > 0 and not st.latched and not known_open:
            self._trip(out, i, r, now, x, i_max)
        if st.bf_armed and any_good:
            if not i_max > r.s.bf_current_a:
                st.bf_armed = False
            else:
                if not st.bf_retrip_done and now - st.bf_start >= r.s.bf_retrip_s:
                    st.bf_retrip_done = True
                    out.append(RawEvent(now, i, -1, EventKind.RETRIP, Phase.NONE, i_max))
                if now - st.bf_start >= r.s.bf_backup_s:
                    st.bf_armed = False
                    out.append(RawEvent(now, i, -1, EventKind.BACKUP_TRIP, Phase.NONE, i_max))
                    self._lock_out(out, i, r, now, i_max)
        if st.state == RecloseState.DEAD_TIME and now >= st.deadline and not st.bf_armed:
            st.state = RecloseState.RECLAIM
            st.deadline = now + r.s.reclaim_s
            st.latched = False
            out.append(RawEvent(now, i, -1, EventKind.RECLOSE, Phase.NONE, i_max))
        elif st.state == RecloseState.RECLAIM and (r.picked_slots > 0 or r.dropped):
            # A fault is present: the reclaim time restarts in full and runs only from the step
            # on which the last element of the relay dropped out, so a trip on a fault that
            # persists through the reclaim time counts as the next shot of the same sequence.
            st.deadline = now + r.s.reclaim_s
        elif st.state == RecloseState.RECLAIM and now >= st.deadline:
            st.state = RecloseState.READY
            st.trips = 0
            out.append(RawEvent(now, i, -1, EventKind.RESET, Phase.NONE, i_max))

    @staticmethod
    def _lock_out(out: list[RawEvent], i: int, r: _Relay, now: float, value: float) -> None:
        if r.st.state != RecloseState.LOCKOUT:
            r.st.state = RecloseState.LOCKOUT
            out.append(RawEvent(now, i, -1, EventKind.LOCKOUT, Phase.NONE, value))

    def _trip(self, out: list[RawEvent], i: int, r: _Relay, now: float, x: list[float], i_max: float) -> None:
        st = r.st
        st.latched = True
        reclose_allowed = True
        base = i * CHANNELS
        for idx, e in enumerate(self.elements):
            if e.s.relay != i:
                continue
            for slot in range(slot_count(e.s.kind)):
                if e.st.operated[slot] and e.good_now[slot]:
                    out.append(
                        RawEvent(
                            now,
                            i,
                            idx,
                            EventKind.TRIP,
                            slot_phase(e.s.kind, slot),
                            x[base + slot_channel(e.s.kind, slot)],
                        )
                    )
                    if not e.s.reclose:
                        reclose_allowed = False
        if r.s.bf_enabled:
            st.bf_armed = True
            st.bf_start = now
            st.bf_retrip_done = False
        if st.trips < 1000:
            st.trips += 1
        lock = (
            r.s.shots == 0
            or not reclose_allowed
            or st.trips > r.s.shots
            or (r.s.high_current_lockout_a > 0.0 and i_max >= r.s.high_current_lockout_a)
            or now < st.close_onto_fault_until
            or st.state in (RecloseState.LOCKOUT, RecloseState.OPEN)
        )
        if lock:
            self._lock_out(out, i, r, now, i_max)
        else:
            st.state = RecloseState.DEAD_TIME
            st.deadline = now + r.s.dead_time_s[st.trips - 1]
