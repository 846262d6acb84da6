"""Short-circuit currents from symmetrical components (grid reference sheet §9).

Pure functions of the pre-fault voltage, the Thevenin sequence impedances at the fault and the
fault impedance. Phase conventions: a single line-to-ground fault is on phase a; line-to-line
and double line-to-ground faults are between phases b and c.
"""

from __future__ import annotations

import cmath
import enum
from dataclasses import dataclass

A_OP = cmath.exp(2j * cmath.pi / 3)
"""The operator a = 1∠120°."""


class FaultKind(enum.Enum):
    THREE_PHASE = "3ph"
    LINE_LINE = "ll"
    LINE_LINE_GROUND = "llg"
    LINE_GROUND = "slg"


_ALIASES = {
    "3ph": FaultKind.THREE_PHASE,
    "3p": FaultKind.THREE_PHASE,
    "abc": FaultKind.THREE_PHASE,
    "three_phase": FaultKind.THREE_PHASE,
    "ll": FaultKind.LINE_LINE,
    "2ph": FaultKind.LINE_LINE,
    "ph-ph": FaultKind.LINE_LINE,
    "line_line": FaultKind.LINE_LINE,
    "phase_phase": FaultKind.LINE_LINE,
    "llg": FaultKind.LINE_LINE_GROUND,
    "2ph-g": FaultKind.LINE_LINE_GROUND,
    "2phg": FaultKind.LINE_LINE_GROUND,
    "slg": FaultKind.LINE_GROUND,
    "1ph": FaultKind.LINE_GROUND,
    "lg": FaultKind.LINE_GROUND,
    "ph-g": FaultKind.LINE_GROUND,
    "phase_ground": FaultKind.LINE_GROUND,
}


def parse_kind(kind: str | FaultKind) -> FaultKind:
    if isinstance(kind, FaultKind):
        return kind
    found = _ALIASES.get(str(kind).strip().lower())
    if found is None:
        raise ValueError(f"unknown fault kind {kind!r}; expected '3ph', 'll', 'llg' or 'slg' (aliases 2ph, 2ph-g, 1ph)")
    return found


@dataclass(frozen=True, slots=True)
class SequenceCurrents:
    """Currents flowing into the fault, per sequence (any consistent unit)."""

    i0: complex
    i1: complex
    i2: complex

    def phases(self) -> tuple[complex, complex, complex]:
        a, a2 = A_OP, A_OP * A_OP
        return (self.i0 + self.i1 + self.i2, self.i0 + a2 * self.i1 + a * self.i2, self.i0 + a * self.i1 + a2 * self.i2)

    @property
    def residual(self) -> complex:
        """Ground (neutral) current, 3·I0."""
        return 3 * self.i0


def sequence_currents(
    kind: FaultKind, e: complex, z1: complex, z2: complex, z0: complex, zf: complex = 0j
) -> SequenceCurrents:
    """Fault currents for pre-fault phase-to-neutral voltage `e` (same units throughout)."""
    if kind is FaultKind.THREE_PHASE:
        return SequenceCurrents(0j, e / (z1 + zf), 0j)
    if kind is FaultKind.LINE_GROUND:
        i = e / (z1 + z2 + z0 + 3 * zf)
        return SequenceCurrents(i, i, i)
    if kind is FaultKind.LINE_LINE:
        i1 = e / (z1 + z2 + zf)
        return SequenceCurrents(0j, i1, -i1)
    z0f = z0 + 3 * zf
    i1 = e / (z1 + z2 * z0f / (z2 + z0f))
    return SequenceCurrents(-i1 * z2 / (z2 + z0f), i1, -i1 * z0f / (z2 + z0f))


def positive_sequence_voltage(e: complex, z1: complex, currents: SequenceCurrents) -> complex:
    return e - z1 * currents.i1


@dataclass(frozen=True, slots=True)
class FaultInfo:
    """A fault on a line and the currents it draws at the moment of the last solve."""

    fault_id: int
    line_id: str
    distance_m: float
    kind: str
    impedance_ohm: float
    transient: bool
    start_s: float
    breaker_id: str | None
    """The switching device nearest upstream, which clears it."""
    energised: bool
    fault_current_a: float
    """Largest phase current into the fault."""
    ia_a: float
    ib_a: float
    ic_a: float
    in_a: float
    """Fault contributions per phase and to ground (load current not included)."""
    z1_ohm: tuple[float, float]
    """Thevenin positive-sequence impedance at the fault (R, X), ohms."""
    z0_ohm: tuple[float, float]
