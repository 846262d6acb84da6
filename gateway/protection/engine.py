"""The protection engine the daemon calls: samples in, breaker commands and events out.

Sans-IO. It holds the core (the C core, or the Python reference when the C core is not built),
maps point ids onto the core's input arrays, and translates the core's raw events into
`BreakerCommand`s (what to write, where, why) and `ProtectionEvent`s (what happened).

Every evaluation is one call into the core covering every element of the substation; an
`on_sample` for a bound point costs a dictionary lookup, two array stores and that call.
Not thread-safe: call it from one thread (the daemon's event loop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.protection.core import (
    CHANNELS,
    PHASE_NAMES,
    Channel,
    Core,
    CoreRefused,
    CoreSettings,
    ElementKind,
    EventKind,
    RawEvent,
    RecloseState,
)
from gateway.protection.reference import ReferenceCore, slot_count, slot_phase
from gateway.protection.settings import CommandTarget, ProtectionScheme

log = logging.getLogger("stima.protection.engine")

SNAPSHOT_VERSION = 1

STALE_HOLD_S = 0.5
"""After a close or reclose command, the bay's measurements predate the switching and are held
as not good until fresh samples arrive, or for this long at most (an IED that reports by
exception may not re-send an unchanged value)."""
_MEASURED = (Channel.IA, Channel.IB, Channel.IC, Channel.IN, Channel.VOLTAGE_KV, Channel.FREQUENCY_HZ)

CommandReason = Literal["trip", "reclose", "retrip", "backup_trip", "close"]
EventName = Literal["pickup", "dropout", "trip", "reclose", "lockout", "reset"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerCommand:
    """Write `value` to `point_id` to operate `breaker`, at top priority."""

    breaker: str
    point_id: str
    value: bool | int | float
    reason: CommandReason
    element: str
    phase: str
    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtectionEvent:
    """Something protection saw or did. `current_a`: the measured current (largest phase
    current for breaker-level events); `measured` carries kV or Hz for 27/59/81."""

    kind: EventName
    breaker: str
    element: str
    phase: str
    time: float
    current_a: float | None
    measured: float | None = None


ProtectionAction = BreakerCommand | ProtectionEvent


class BreakerLockedOut(PermissionError):
    """A close of a locked-out breaker without authorisation."""


_CHANNEL_OF_INPUT = {
    "ia": Channel.IA,
    "ib": Channel.IB,
    "ic": Channel.IC,
    "in": Channel.IN,
    "voltage_kv": Channel.VOLTAGE_KV,
    "frequency_hz": Channel.FREQUENCY_HZ,
    "closed": Channel.CLOSED,
}
_CURRENT_ELEMENTS = (ElementKind.P50, ElementKind.N50, ElementKind.P51, ElementKind.N51, ElementKind.TH49)
_SIMPLE_EVENTS: dict[EventKind, EventName] = {
    EventKind.PICKUP: "pickup",
    EventKind.DROPOUT: "dropout",
    EventKind.LOCKOUT: "lockout",
    EventKind.RESET: "reset",
}


def load_backend(backend: str, settings: CoreSettings) -> Core:
    """ "native", "reference" or "auto" (native if built, else the reference, loudly)."""
    if backend not in ("native", "reference", "auto"):
        raise ValueError(f"protection backend must be 'native', 'reference' or 'auto', not {backend!r}")
    if backend == "reference":
        return ReferenceCore(settings)
    try:
        from gateway.protection._native import NativeCore
    except ImportError as exc:
        if backend == "native":
            raise RuntimeError(
                f"the native protection core is not built ({exc}); reinstall the package (pip install .) to compile it"
            ) from exc
        log.warning("NATIVE PROTECTION CORE NOT AVAILABLE (%s): running the Python reference", exc)
        return ReferenceCore(settings)
    return NativeCore(settings)


class ProtectionEngine:
    def __init__(self, schemes: Sequence[ProtectionScheme], backend: str = "auto") -> None:
        breakers = [s.breaker for s in schemes]
        duplicates = sorted({b for b in breakers if breakers.count(b) > 1})
        if duplicates:
            raise ValueError(f"more than one protection scheme for breaker(s) {duplicates}")
        self.schemes = {s.breaker: s for s in schemes}
        self._breakers = breakers
        self._relay_of = {b: i for i, b in enumerate(breakers)}
        relays = []
        elements = []
        self._element_names: list[str] = []
        self._element_kinds: list[ElementKind] = []
        for i, scheme in enumerate(schemes):
            relays.append(scheme.relay_settings())
            for name, es in scheme.element_settings(i):
                elements.append(es)
                self._element_names.append(name)
                self._element_kinds.append(es.kind)
        self.settings = CoreSettings(relays=tuple(relays), elements=tuple(elements))
        self._core: Core = load_backend(backend, self.settings)
        self.backend_name: str = self._core.name
        self._samples = self._core.samples
        self._quality = self._core.quality
        index: dict[str, list[int]] = {}
        for i, scheme in enumerate(schemes):
            for name in scheme.input_names():
                index.setdefault(scheme.point(name), []).append(i * CHANNELS + _CHANNEL_OF_INPUT[name])
        self._index = {p: tuple(v) for p, v in index.items()}
        self.bound_points: frozenset[str] = frozenset(self._index)
        self._trip = {s.breaker: s.trip_target() for s in schemes}
        self._close = {s.breaker: s.close_target() for s in schemes}
        self._backup = {s.breaker: s.backup_targets() for s in schemes}
        self._last_now: float | None = None
        self._rebase: dict[int, float] = {}
        """Relays restored mid-timer: remaining seconds, re-based at the next evaluation."""
        self._stale: dict[int, tuple[int, float]] = {}
        """Input slots held not good since a close: slot -> (quality to give back, until)."""
        self.longest_gap_s = 0.0
        """Longest time between two evaluations since `watch_gaps()` (a reload is measured so)."""
        self._watching = False

    # ------------------------------------------------------------------ fast path

    def on_sample(self, point_id: str, value: float | bool | None, good: bool, now: float) -> list[ProtectionAction]:
        """Store a sample of a bound point and evaluate every element at once."""
        slots = self._index.get(point_id)
        if slots is None:
            return []
        if value is None:
            x, q = math.nan, 0
        else:
            x, q = float(value), 1 if good else 0
        for i in slots:
            self._samples[i] = x
            self._quality[i] = q
        if self._stale:
            for i in slots:
                self._stale.pop(i, None)
        return self._evaluate(now)

    def step(self, now: float) -> list[ProtectionAction]:
        """Advance timers (51 integration, dead times, 50BF, reclaim) without a new sample."""
        return self._evaluate(now)

    def _evaluate(self, now: float) -> list[ProtectionAction]:
        if self._watching and self._last_now is not None and now - self._last_now > self.longest_gap_s:
            self.longest_gap_s = now - self._last_now
        if self._rebase:
            self._apply_rebase(now)
        if self._stale:
            self._release_stale(now)
        self._last_now = now
        raw = self._core.step(now)
        return self._translate(raw) if raw else []

    # ------------------------------------------------------------------ operator

    def manual_trip(self, breaker: str, now: float) -> list[ProtectionAction]:
        """Operator open: the breaker trips and reclosing is blocked until a close."""
        relay = self._relay(breaker)
        if self._rebase:
            self._apply_rebase(now)
        return self._translate(self._core.manual_trip(relay, now))

    def manual_close(self, breaker: str, now: float, authorised: bool) -> list[ProtectionAction]:
        """Operator close; re-arms after lockout only when `authorised`, else BreakerLockedOut."""
        relay = self._relay(breaker)
        if self._rebase:
            self._apply_rebase(now)
        try:
            raw = self._core.manual_close(relay, now, authorised)
        except CoreRefused as exc:
            raise BreakerLockedOut(f"{breaker} is locked out: only an authorised close re-arms it") from exc
        return self._translate(raw)

    # ------------------------------------------------------------------ state

    def status(self, breaker: str) -> dict[str, Any]:
        relay = self._relay(breaker)
        st = self._core.relay_state(relay)
        pickups: list[str] = []
        operated: list[str] = []
        thermal: dict[str, float] = {}
        for idx, es in enumerate(self.settings.elements):
            if es.relay != relay:
                continue
            est = self._core.element_state(idx)
            name = self._element_names[idx]
            for slot in range(slot_count(es.kind)):
                label = name + (f"/{PHASE_NAMES[slot_phase(es.kind, slot)]}" if slot_phase(es.kind, slot) <= 3 else "")
                if est.picked[slot]:
                    pickups.append(label)
                if est.operated[slot]:
                    operated.append(label)
            if es.kind == ElementKind.TH49:
                thermal = {PHASE_NAMES[slot_phase(es.kind, s)]: est.accumulator[s] for s in range(3)}
        remaining = None
        if st.state in (RecloseState.DEAD_TIME, RecloseState.RECLAIM):
            remaining = self._rebase.get(relay)
            if remaining is None and self._last_now is not None:
                remaining = max(st.deadline - self._last_now, 0.0)
        scheme = self.schemes[breaker]
        return {
            "breaker": breaker,
            "backend": self.backend_name,
            "reclose_state": st.state.name.lower(),
            "shot": st.trips,
            "shots": scheme.reclose.shots if scheme.reclose else 0,
            "locked_out": st.state == RecloseState.LOCKOUT,
            "timer_remaining_s": remaining,
            "trip_latched": st.latched,
            "breaker_failure_armed": st.bf_armed,
            "pickups": pickups,
            "operated": operated,
            "thermal_theta": thermal,
        }

    def accumulators(self, breaker: str) -> dict[str, float]:
        """Per 51/49 element of `breaker`, its largest slot accumulator: the share of the
        operate time integrated so far (51, 1 = operate) or the thermal level theta (49)."""
        relay = self._relay(breaker)
        out: dict[str, float] = {}
        for idx, es in enumerate(self.settings.elements):
            if es.relay == relay and es.kind in (ElementKind.P51, ElementKind.N51, ElementKind.TH49):
                acc = self._core.element_state(idx).accumulator
                out[self._element_names[idx]] = max(acc[: slot_count(es.kind)])
        return out

    def snapshot(self) -> dict[str, Any]:
        """Reclose / lockout state and thermal levels per breaker (msgpack-able, clock-free)."""
        breakers: dict[str, Any] = {}
        for breaker, relay in self._relay_of.items():
            st = self._core.relay_state(relay)
            remaining = self._rebase.get(relay)
            if (
                remaining is None
                and st.state in (RecloseState.DEAD_TIME, RecloseState.RECLAIM)
                and self._last_now is not None
            ):
                remaining = max(st.deadline - self._last_now, 0.0)
            thermal: dict[str, list[float]] = {}
            for idx, es in enumerate(self.settings.elements):
                if es.relay == relay and es.kind == ElementKind.TH49:
                    thermal[self._element_names[idx]] = list(self._core.element_state(idx).accumulator)
            breakers[breaker] = {
                "state": st.state.name.lower(),
                "trips": st.trips,
                "timer_remaining_s": remaining,
                "thermal": thermal,
            }
        return {"version": SNAPSHOT_VERSION, "breakers": breakers}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Take back a snapshot. A lockout stays a lockout; a sequence interrupted in its dead
        time locks out (no reclose long after the fault); a reclaim continues."""
        if not isinstance(snapshot, dict) or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"protection snapshot: expected a dict with version {SNAPSHOT_VERSION}, found {snapshot!r:.200}"
            )
        saved = snapshot.get("breakers")
        if not isinstance(saved, dict):
            raise ValueError(f"protection snapshot: 'breakers' must be a dict, found {saved!r:.200}")  # noqa: TRY004
        states = {s.name.lower(): s for s in RecloseState}
        for breaker, entry in saved.items():
            if breaker not in self._relay_of:
                log.warning("protection snapshot names %r, which has no scheme now; ignored", breaker)
                continue
            where = f"protection snapshot breakers.{breaker}"
            if not isinstance(entry, dict) or entry.get("state") not in states:
                raise ValueError(
                    f"{where}.state: expected one of {sorted(states)}, found "
                    f"{entry.get('state') if isinstance(entry, dict) else entry!r}"
                )
            trips = entry.get("trips", 0)
            if not isinstance(trips, int) or trips < 0:
                raise ValueError(f"{where}.trips: expected an integer >= 0, found {trips!r}")
            relay = self._relay_of[breaker]
            st = self._core.relay_state(relay)
            state = states[entry["state"]]
            remaining = entry.get("timer_remaining_s")
            if state == RecloseState.DEAD_TIME:
                log.warning("%s: reclose sequence interrupted by a restart: locked out", breaker)
                state = RecloseState.LOCKOUT
            if state == RecloseState.RECLAIM:
                if not isinstance(remaining, int | float) or not remaining >= 0:
                    state, trips = RecloseState.READY, 0
                else:
                    self._rebase[relay] = float(remaining)
            st.state, st.trips = state, trips
            st.deadline = math.inf
            st.latched = False
            st.bf_armed = False
            self._core.set_relay_state(relay, st)
            for name, theta in (entry.get("thermal") or {}).items():
                for idx, es in enumerate(self.settings.elements):
                    if es.relay == relay and self._element_names[idx] == name:
                        if not (
                            isinstance(theta, list)
                            and len(theta) == 3
                            and all(isinstance(t, int | float) and 0 <= t < 1e6 for t in theta)
                        ):
                            raise ValueError(f"{where}.thermal.{name}: expected three levels >= 0, found {theta!r}")
                        est = self._core.element_state(idx)
                        est.accumulator = [float(t) for t in theta]
                        self._core.set_element_state(idx, est)

    def watch_gaps(self, on: bool = True) -> None:
        """From now on (until called with False), keep the longest interval between two
        evaluations in `longest_gap_s`."""
        if on:
            self.longest_gap_s = 0.0
        self._watching = on

    def take_over(self, old: ProtectionEngine) -> list[str]:
        """Continue the live state of `old` (same monotonic clock) for every breaker whose scheme
        is unchanged: reclose sequence and its deadline (a dead time in progress recloses on
        time), lockout, latches, 50BF, every element's accumulators and timers (51 integration,
        49 thermal levels), and the latest samples. Breakers with a new or changed scheme keep
        what `restore()` gave them. Returns the breakers taken over. Sans-IO: call it between
        the old engine's last evaluation and this one's first."""
        taken: list[str] = []
        for breaker, scheme in self.schemes.items():
            if old.schemes.get(breaker) != scheme:
                continue
            mine, theirs = self._relay_of[breaker], old._relay_of[breaker]
            self._core.set_relay_state(mine, old._core.relay_state(theirs))
            old_elements = {
                old._element_names[i]: i for i, es in enumerate(old.settings.elements) if es.relay == theirs
            }
            for idx, es in enumerate(self.settings.elements):
                if es.relay == mine and self._element_names[idx] in old_elements:
                    self._core.set_element_state(idx, old._core.element_state(old_elements[self._element_names[idx]]))
            for channel in range(CHANNELS):
                self._samples[mine * CHANNELS + channel] = old._samples[theirs * CHANNELS + channel]
                self._quality[mine * CHANNELS + channel] = old._quality[theirs * CHANNELS + channel]
            self._rebase.pop(mine, None)
            if theirs in old._rebase:
                self._rebase[mine] = old._rebase[theirs]
            for slot in [s for s in self._stale if s // CHANNELS == mine]:
                del self._stale[slot]
            for slot, held in old._stale.items():
                if slot // CHANNELS == theirs:
                    self._stale[mine * CHANNELS + slot % CHANNELS] = held
            taken.append(breaker)
        if old._last_now is not None:
            self._last_now = old._last_now  # the first evaluation here measures the hand-over's gap
        if old._watching:
            self.longest_gap_s, self._watching = old.longest_gap_s, True
        return taken

    # ------------------------------------------------------------------ internals

    def _relay(self, breaker: str) -> int:
        try:
            return self._relay_of[breaker]
        except KeyError:
            raise KeyError(f"{breaker!r} has no protection scheme (have: {', '.join(self._breakers)})") from None

    def _hold_stale(self, relay: int, now: float) -> None:
        """Measurements taken before a close say nothing about the closed breaker."""
        for ch in _MEASURED:
            i = relay * CHANNELS + ch
            saved = self._stale.get(i, (int(self._quality[i]), 0.0))[0]
            self._stale[i] = (saved, now + STALE_HOLD_S)
            self._quality[i] = 0

    def _release_stale(self, now: float) -> None:
        for i, (quality, until) in list(self._stale.items()):
            if now >= until:
                self._quality[i] = quality
                del self._stale[i]

    def _apply_rebase(self, now: float) -> None:
        for relay, remaining in self._rebase.items():
            st = self._core.relay_state(relay)
            st.deadline = now + remaining
            self._core.set_relay_state(relay, st)
        self._rebase.clear()

    def _command(
        self, breaker: str, target: CommandTarget, reason: CommandReason, element: str, phase: str, time: float
    ) -> BreakerCommand:
        return BreakerCommand(
            breaker=breaker,
            point_id=target.point,
            value=target.value,
            reason=reason,
            element=element,
            phase=phase,
            time=time,
        )

    def _translate(self, raw: list[RawEvent]) -> list[ProtectionAction]:
        out: list[ProtectionAction] = []
        tripped: set[int] = set()
        for ev in raw:
            breaker = self._breakers[ev.relay]
            phase = PHASE_NAMES[ev.phase]
            if ev.element >= 0:
                element = self._element_names[ev.element]
                is_current = self._element_kinds[ev.element] in _CURRENT_ELEMENTS
                current, measured = (ev.value, None) if is_current else (None, ev.value)
            else:
                element, current, measured = "79", ev.value, None
            kind = ev.kind
            if kind in _SIMPLE_EVENTS:
                out.append(
                    ProtectionEvent(
                        kind=_SIMPLE_EVENTS[kind],
                        breaker=breaker,
                        element=element,
                        phase=phase,
                        time=ev.time,
                        current_a=current,
                        measured=measured,
                    )
                )
            elif kind == EventKind.TRIP:
                if ev.relay not in tripped:
                    tripped.add(ev.relay)
                    out.append(self._command(breaker, self._trip[breaker], "trip", element, phase, ev.time))
                out.append(
                    ProtectionEvent(
                        kind="trip",
                        breaker=breaker,
                        element=element,
                        phase=phase,
                        time=ev.time,
                        current_a=current,
                        measured=measured,
                    )
                )
            elif kind == EventKind.RECLOSE:
                self._hold_stale(ev.relay, ev.time)
                out.append(self._command(breaker, self._close[breaker], "reclose", "79", "", ev.time))
                out.append(
                    ProtectionEvent(
                        kind="reclose", breaker=breaker, element="79", phase="", time=ev.time, current_a=current
                    )
                )
            elif kind == EventKind.RETRIP:
                out.append(self._command(breaker, self._trip[breaker], "retrip", "50BF", "", ev.time))
            elif kind == EventKind.BACKUP_TRIP:
                for target in self._backup[breaker]:
                    out.append(self._command(breaker, target, "backup_trip", "50BF", "", ev.time))
                out.append(
                    ProtectionEvent(
                        kind="trip", breaker=breaker, element="50BF", phase="", time=ev.time, current_a=current
                    )
                )
            elif kind == EventKind.OPEN:
                out.append(self._command(breaker, self._trip[breaker], "trip", "manual", "", ev.time))
            elif kind == EventKind.CLOSE:
                self._hold_stale(ev.relay, ev.time)
                out.append(self._command(breaker, self._close[breaker], "close", "manual", "", ev.time))
        return out
