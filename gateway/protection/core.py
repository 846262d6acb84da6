"""Shared vocabulary of the protection core: enums mirroring native/stima_protection.h, the
flat settings both backends consume, and the curve formulas.

Both backends (the C core through `_native`, and `reference`) take the same `CoreSettings`
and the same sample arrays, and return the same raw events; `engine` turns those into
breaker commands and protection events.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np


class Channel(enum.IntEnum):
    IA = 0
    IB = 1
    IC = 2
    IN = 3
    VOLTAGE_KV = 4
    FREQUENCY_HZ = 5
    CLOSED = 6
    SPARE = 7


CHANNELS = 8


class ElementKind(enum.IntEnum):
    P50 = 0
    N50 = 1
    P51 = 2
    N51 = 3
    UV27 = 4
    OV59 = 5
    UF81 = 6
    OF81 = 7
    TH49 = 8


ELEMENT_NAMES: dict[ElementKind, str] = {
    ElementKind.P50: "50P",
    ElementKind.N50: "50N",
    ElementKind.P51: "51P",
    ElementKind.N51: "51N",
    ElementKind.UV27: "27",
    ElementKind.OV59: "59",
    ElementKind.UF81: "81U",
    ElementKind.OF81: "81O",
    ElementKind.TH49: "49",
}


class Curve(enum.IntEnum):
    IEC_SI = 0
    IEC_VI = 1
    IEC_EI = 2
    IEC_LTI = 3
    IEEE_MI = 4
    IEEE_VI = 5
    IEEE_EI = 6


class CurveConstants(NamedTuple):
    k: float
    alpha: float
    c: float
    reset_tr: float
    """IEEE dependent-reset constant t_r (s); 0 where the curve has none."""


CURVE_CONSTANTS: dict[Curve, CurveConstants] = {
    Curve.IEC_SI: CurveConstants(0.14, 0.02, 0.0, 0.0),
    Curve.IEC_VI: CurveConstants(13.5, 1.0, 0.0, 0.0),
    Curve.IEC_EI: CurveConstants(80.0, 2.0, 0.0, 0.0),
    Curve.IEC_LTI: CurveConstants(120.0, 1.0, 0.0, 0.0),
    Curve.IEEE_MI: CurveConstants(0.0515, 0.02, 0.114, 4.85),
    Curve.IEEE_VI: CurveConstants(19.61, 2.0, 0.491, 21.6),
    Curve.IEEE_EI: CurveConstants(28.2, 2.0, 0.1217, 29.1),
}


class ResetMode(enum.IntEnum):
    INSTANT = 0
    DEFINITE = 1
    DEPENDENT = 2


class Phase(enum.IntEnum):
    A = 0
    B = 1
    C = 2
    N = 3
    NONE = 4


PHASE_NAMES = {Phase.A: "A", Phase.B: "B", Phase.C: "C", Phase.N: "N", Phase.NONE: ""}


class EventKind(enum.IntEnum):
    PICKUP = 1
    DROPOUT = 2
    TRIP = 3
    RECLOSE = 4
    LOCKOUT = 5
    RESET = 6
    RETRIP = 7
    BACKUP_TRIP = 8
    CLOSE = 9
    OPEN = 10


class RecloseState(enum.IntEnum):
    READY = 0
    DEAD_TIME = 1
    RECLAIM = 2
    LOCKOUT = 3
    OPEN = 4


def operate_time_s(curve: Curve | int, tms: float, m: float) -> float:
    """t = TMS * (k / (M^alpha - 1) + c); -1 where undefined (M <= 1), as the C core."""
    if not m > 1.0:
        return -1.0
    k = CURVE_CONSTANTS[Curve(curve)]
    return tms * (k.k / (float(m**k.alpha) - 1.0) + k.c)


def reset_time_s(curve: Curve | int, tms: float, m: float) -> float:
    """IEEE dependent reset time TD * t_r / (1 - M^2) for M < 1."""
    return tms * CURVE_CONSTANTS[Curve(curve)].reset_tr / (1.0 - m * m)


def thermal_trip_time_s(current_a: float, preload_a: float, k_ib_a: float, tau_s: float) -> float:
    """IEC 60255-149 operate time from a steady pre-load; inf when the current never trips."""
    if current_a <= k_ib_a:
        return math.inf
    return tau_s * math.log((current_a**2 - preload_a**2) / (current_a**2 - k_ib_a**2))


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Per-breaker settings of the core (ProtRelaySettings)."""

    nominal_kv: float
    shots: int = 0
    dead_time_s: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    fast_mask: int = 0
    reclaim_s: float = 0.0
    high_current_lockout_a: float = 0.0
    close_onto_fault_s: float = 0.0
    bf_enabled: bool = False
    bf_current_a: float = 0.0
    bf_retrip_s: float = 0.0
    bf_backup_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ElementSettings:
    """Per-element settings of the core (ProtElementSettings)."""

    relay: int
    kind: ElementKind
    pickup: float
    dropout_ratio: float = 0.95
    delay_s: float = 0.0
    reclose: bool = True
    fast_only: bool = False
    curve: Curve = Curve.IEC_SI
    fast_curve: Curve = Curve.IEC_SI
    tms: float = 0.1
    fast_tms: float = 0.1
    start_factor: float = 1.0
    min_time_s: float = 0.0
    m_max: float = 20.0
    reset_mode: ResetMode = ResetMode.INSTANT
    reset_delay_s: float = 0.0
    tau_s: float = 600.0
    cooling_tau_s: float = 600.0
    reset_theta: float = 0.95
    block_below_pu: float = 0.0


@dataclass(frozen=True, slots=True)
class CoreSettings:
    relays: tuple[RelaySettings, ...]
    elements: tuple[ElementSettings, ...] = field(default_factory=tuple)


@dataclass(slots=True)
class RelayState:
    """Reclose / latch / 50BF state of one relay (ProtRelayState)."""

    state: RecloseState = RecloseState.READY
    trips: int = 0
    deadline: float = 0.0
    close_onto_fault_until: float = 0.0
    latched: bool = False
    bf_armed: bool = False
    bf_start: float = 0.0
    bf_retrip_done: bool = False


@dataclass(slots=True)
class ElementState:
    """Accumulators and timers of one element (ProtElementState), per phase slot."""

    accumulator: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    since: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    picked: list[bool] = field(default_factory=lambda: [False, False, False])
    operated: list[bool] = field(default_factory=lambda: [False, False, False])


class RawEvent(NamedTuple):
    time: float
    relay: int
    element: int
    kind: EventKind
    phase: Phase
    value: float


class CoreError(Exception):
    """The core refused an argument or setting (a bug on our side, or invalid settings)."""


class CoreRefused(CoreError):
    """The core refused an operation in its present state (close onto lockout)."""


class Core(Protocol):
    """What both backends provide. `samples`/`quality` are the caller-owned input arrays."""

    name: str
    samples: np.ndarray
    quality: np.ndarray

    def step(self, now: float) -> list[RawEvent]: ...

    def manual_trip(self, relay: int, now: float) -> list[RawEvent]: ...

    def manual_close(self, relay: int, now: float, authorised: bool) -> list[RawEvent]: ...

    def relay_state(self, relay: int) -> RelayState: ...

    def set_relay_state(self, relay: int, state: RelayState) -> None: ...

    def element_state(self, element: int) -> ElementState: ...

    def set_element_state(self, element: int, state: ElementState) -> None: ...


def new_inputs(relay_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Zeroed sample and quality arrays (quality 0 = no good sample yet)."""
    return (np.zeros(relay_count * CHANNELS, dtype=np.float64), np.zeros(relay_count * CHANNELS, dtype=np.uint8))
