"""The one module that imports the compiled protection core (`native._stima_native`).

It turns status codes into exceptions and C structs into the dataclasses of `core`. Buffers
(samples, quality flags, events) are allocated here, once, and handed to C with
`ffi.from_buffer`; the C core keeps no pointer to them between calls.
"""

from __future__ import annotations

from typing import Any

from native._stima_native import ffi, lib

from gateway.protection.core import (
    CoreError,
    CoreRefused,
    CoreSettings,
    ElementState,
    EventKind,
    Phase,
    RawEvent,
    RecloseState,
    RelayState,
    new_inputs,
)

_STATUS = {
    lib.PROT_ERR_ARGUMENT: "argument or setting out of range",
    lib.PROT_ERR_NO_MEMORY: "out of memory",
    lib.PROT_ERR_FULL: "capacity exceeded",
    lib.PROT_ERR_STATE: "refused in the present state",
}


def _check(rc: int, what: str) -> None:
    if rc != lib.PROT_OK:
        raise CoreError(f"{what}: {_STATUS.get(rc, 'status ' + str(rc))}")


def curve_operate_time_s(curve: int, tms: float, m: float) -> float:
    return float(lib.ProtCurve_operateTime(curve, tms, m))


class NativeCore:
    """The C core behind the same interface as `reference.ReferenceCore`."""

    name = "native"

    def __init__(self, settings: CoreSettings) -> None:
        relay_count, element_count = len(settings.relays), len(settings.elements)
        out = ffi.new("ProtCore*")
        _check(lib.ProtCore_create(relay_count, element_count, out), "ProtCore_create")
        self._core = ffi.gc(out[0], lib.ProtCore_destroy)
        for i, r in enumerate(settings.relays):
            rs = ffi.new(
                "ProtRelaySettings*",
                {
                    "nominal_kv": r.nominal_kv,
                    "shots": r.shots,
                    "dead_time_s": list(r.dead_time_s),
                    "fast_mask": r.fast_mask,
                    "reclaim_s": r.reclaim_s,
                    "high_current_lockout_a": r.high_current_lockout_a,
                    "close_onto_fault_s": r.close_onto_fault_s,
                    "bf_enabled": int(r.bf_enabled),
                    "bf_current_a": r.bf_current_a,
                    "bf_retrip_s": r.bf_retrip_s,
                    "bf_backup_s": r.bf_backup_s,
                },
            )
            _check(lib.ProtCore_setRelay(self._core, i, rs), f"relay {i} settings {r}")
        index = ffi.new("int32_t*")
        for e in settings.elements:
            es = ffi.new(
                "ProtElementSettings*",
                {
                    "relay": e.relay,
                    "kind": int(e.kind),
                    "reclose": int(e.reclose),
                    "fast_only": int(e.fast_only),
                    "pickup": e.pickup,
                    "dropout_ratio": e.dropout_ratio,
                    "delay_s": e.delay_s,
                    "curve": int(e.curve),
                    "fast_curve": int(e.fast_curve),
                    "tms": e.tms,
                    "fast_tms": e.fast_tms,
                    "start_factor": e.start_factor,
                    "min_time_s": e.min_time_s,
                    "m_max": e.m_max,
                    "reset_mode": int(e.reset_mode),
                    "reset_delay_s": e.reset_delay_s,
                    "tau_s": e.tau_s,
                    "cooling_tau_s": e.cooling_tau_s,
                    "reset_theta": e.reset_theta,
                    "block_below_pu": e.block_below_pu,
                },
            )
            _check(lib.ProtCore_addElement(self._core, es, index), f"element settings {e}")
        self.samples, self.quality = new_inputs(relay_count)
        self._samples_c = ffi.cast("double*", ffi.from_buffer(self.samples))
        self._quality_c = ffi.cast("uint8_t*", ffi.from_buffer(self.quality))
        # Worst case per step: pickup + trip per element slot, five relay events per relay.
        self._capacity = 6 * element_count + 6 * relay_count + 8
        self._events = ffi.new("ProtEvent[]", self._capacity)
        self._count = ffi.new("int32_t*")
        self._step = lib.ProtCore_step

    def step(self, now: float) -> list[RawEvent]:
        rc = self._step(self._core, now, self._samples_c, self._quality_c, self._events, self._capacity, self._count)
        if rc != 0:
            _check(rc, "ProtCore_step")
        n = self._count[0]
        return self._decode(n) if n else []

    def _decode(self, n: int) -> list[RawEvent]:
        ev = self._events
        return [
            RawEvent(ev[i].time, ev[i].relay, ev[i].element, EventKind(ev[i].kind), Phase(ev[i].phase), ev[i].value)
            for i in range(n)
        ]

    def manual_trip(self, relay: int, now: float) -> list[RawEvent]:
        _check(
            lib.ProtCore_manualTrip(self._core, relay, now, self._events, self._capacity, self._count),
            f"manual trip of relay {relay}",
        )
        return self._decode(self._count[0])

    def manual_close(self, relay: int, now: float, authorised: bool) -> list[RawEvent]:
        rc = lib.ProtCore_manualClose(
            self._core, relay, now, int(authorised), self._events, self._capacity, self._count
        )
        if rc == lib.PROT_ERR_STATE:
            raise CoreRefused("locked out: only an authorised close re-arms the breaker")
        _check(rc, f"manual close of relay {relay}")
        return self._decode(self._count[0])

    def relay_state(self, relay: int) -> RelayState:
        st = ffi.new("ProtRelayState*")
        _check(lib.ProtCore_getRelayState(self._core, relay, st), f"relay {relay} state")
        return RelayState(
            RecloseState(st.state),
            st.trips,
            st.deadline,
            st.close_onto_fault_until,
            bool(st.latched),
            bool(st.bf_armed),
            st.bf_start,
            bool(st.bf_retrip_done),
        )

    def set_relay_state(self, relay: int, state: RelayState) -> None:
        st = ffi.new(
            "ProtRelayState*",
            {
                "state": int(state.state),
                "trips": state.trips,
                "deadline": state.deadline,
                "close_onto_fault_until": state.close_onto_fault_until,
                "latched": int(state.latched),
                "bf_armed": int(state.bf_armed),
                "bf_start": state.bf_start,
                "bf_retrip_done": int(state.bf_retrip_done),
            },
        )
        _check(lib.ProtCore_setRelayState(self._core, relay, st), f"relay {relay} state {state}")

    def element_state(self, element: int) -> ElementState:
        st = ffi.new("ProtElementState*")
        _check(lib.ProtCore_getElementState(self._core, element, st), f"element {element} state")
        return ElementState(
            list(st.accumulator), list(st.since), [bool(p) for p in st.picked], [bool(o) for o in st.operated]
        )

    def set_element_state(self, element: int, state: ElementState) -> None:
        fields: dict[str, Any] = {
            "accumulator": list(state.accumulator),
            "since": list(state.since),
            "picked": [int(p) for p in state.picked],
            "operated": [int(o) for o in state.operated],
        }
        st = ffi.new("ProtElementState*", fields)
        _check(lib.ProtCore_setElementState(self._core, element, st), f"element {element} state")
