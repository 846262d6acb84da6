"""Distance to a fault from what the relay measured (single-ended impedance methods). Sans-IO.

The relay at the feeder's breaker sees, during the fault, a loop impedance proportional to the
distance: for a phase-to-ground loop Z = Vx / (Ix + k0·3I0), k0 = (Z0L − Z1L) / 3Z1L; for a
phase-to-phase loop Z = (Vx − Vy) / (Ix − Iy); a three-phase fault shows in every loop. Two
estimates of the distance from the loop's V and I:

- **reactance**: d = Im(V / I) / Im(z1L) — fault resistance adds only to the real part, but
  load current flowing beside the fault current tilts it (a few per cent on a loaded feeder);
- **Takagi**: d = Im(V · ΔI*) / Im(z1L · I · ΔI*), ΔI = I − I_prefault the superposition
  current (for a ground loop its residual current 3I0, in phase with the fault current on a
  feeder earthed only at the source) — the load's share and the fault resistance's drop cancel;
  it needs the pre-fault current phasor on the same angle reference as the fault's (a relay's
  phasors, or the simulator's).

Which one is possible depends on what the bay's IED delivers:

- phase voltage and current phasors (magnitudes and angles): the faulted loop is chosen from the
  currents, Takagi when a pre-fault sample exists, reactance otherwise;
- only magnitudes with active and reactive power: the positive-sequence impedance
  Z1 = V² / S*, a three-phase loop — used only when the three phase currents show a balanced
  fault (an unbalanced fault's positive-sequence impedance is not its loop's);
- only |V| and |I|: no estimate here (the FLISR planner keeps its own, magnitude-based, range).

Distances are along the line from the breaker, in metres; the caller maps them to sections.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import asdict, dataclass
from typing import Any

SQRT3 = math.sqrt(3.0)
PHASES = ("a", "b", "c")
FAULTED_SHARE = 0.3
"""A phase is faulted when its fault current is at least this share of the largest one."""
GROUND_SHARE = 0.15
"""The fault involves ground when the residual current is at least this share of the largest phase."""
BALANCED_SPREAD = 0.2
"""Without phasors, a fault is taken as three-phase when the phase currents differ by less than this."""
MIN_FAULT_CURRENT_A = 1.0


@dataclass(frozen=True, slots=True)
class LineImpedance:
    """Series impedance of the line per kilometre, positive and zero sequence."""

    z1_ohm_per_km: complex
    z0_ohm_per_km: complex
    length_m: float

    @property
    def k0(self) -> complex:
        return (self.z0_ohm_per_km - self.z1_ohm_per_km) / (3.0 * self.z1_ohm_per_km)


@dataclass(frozen=True, slots=True)
class BaySample:
    """What the bay's IED reported at one instant (None where it does not report it).

    Magnitudes in A and kV (voltage_kv line-to-line), powers in kW/kvar; `v_phasors_kv`:
    phase-to-neutral voltages, `i_phasors_a`: phase currents, both complex (one angle reference).
    """

    time: float
    ia: float | None = None
    ib: float | None = None
    ic: float | None = None
    voltage_kv: float | None = None
    active_power_kw: float | None = None
    reactive_power_kvar: float | None = None
    v_phasors_kv: tuple[complex, complex, complex] | None = None
    i_phasors_a: tuple[complex, complex, complex] | None = None

    @classmethod
    def from_values(cls, time: float, values: dict[str, float | None]) -> BaySample:
        """From the bay's channels by the gateway's names (ia, va_kv, ia_deg, active_power_kw ...)."""

        def get(name: str) -> float | None:
            value = values.get(name)
            return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

        v_ph = i_ph = None
        mags_v = [get(f"v{p}_kv") for p in PHASES]
        angs_v = [get(f"v{p}_deg") for p in PHASES]
        mags_i = [get(f"i{p}") for p in PHASES]
        angs_i = [get(f"i{p}_deg") for p in PHASES]
        if all(x is not None for x in (*mags_v, *angs_v, *mags_i, *angs_i)):
            v_ph = tuple(cmath.rect(m, math.radians(a)) for m, a in zip(mags_v, angs_v, strict=True))  # type: ignore[arg-type]
            i_ph = tuple(cmath.rect(m, math.radians(a)) for m, a in zip(mags_i, angs_i, strict=True))  # type: ignore[arg-type]
        return cls(
            time=time,
            ia=get("ia"),
            ib=get("ib"),
            ic=get("ic"),
            voltage_kv=get("voltage_kv"),
            active_power_kw=get("active_power_kw"),
            reactive_power_kvar=get("reactive_power_kvar"),
            v_phasors_kv=v_ph,  # type: ignore[arg-type]
            i_phasors_a=i_ph,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class FaultEstimate:
    distance_m: float
    method: str
    """'takagi', 'reactance' or 'positive-sequence reactance'."""
    loop: str
    """The loop measured: 'AG', 'BC', 'ABC', ..."""
    fault_type: str
    """'3ph', 'll', 'llg' or 'slg' (from the currents)."""
    loop_impedance_ohm: tuple[float, float]
    """(R, X) the relay saw in the loop."""
    beyond_line: bool = False
    """The estimate lies past the line's far end (a fault further on, or measurement error)."""
    section: str | None = None
    """The section (`<LINE>/<n>`) the distance falls in, when the caller knows the sections."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["distance_km"] = round(self.distance_m / 1000.0, 4)
        out["loop_impedance_ohm"] = list(self.loop_impedance_ohm)
        return out


def _faulted(
    fault: tuple[complex, complex, complex], pre: tuple[complex, complex, complex] | None
) -> tuple[list[int], bool]:
    delta = [f - p for f, p in zip(fault, pre, strict=True)] if pre is not None else list(fault)
    biggest = max(abs(d) for d in delta)
    if biggest < MIN_FAULT_CURRENT_A:
        return [], False
    phases = [k for k, d in enumerate(delta) if abs(d) >= FAULTED_SHARE * biggest]
    residual = abs(sum(fault))
    ground = residual >= GROUND_SHARE * max(abs(x) for x in fault)
    return phases, ground


def _fault_type(phases: list[int], ground: bool) -> str:
    if len(phases) == 3:
        return "3ph"
    if len(phases) == 2:
        return "llg" if ground else "ll"
    return "slg" if ground else "ll"


def _loop(
    phases: list[int], ground: bool, v: tuple[complex, ...], i: tuple[complex, ...], k0: complex
) -> tuple[str, complex, complex, Any]:
    """(loop name, V, I, how to form the same loop's current from other phasors)."""
    names = "ABC"
    if len(phases) == 1 and ground:
        x = phases[0]

        def ground_loop(cur: tuple[complex, ...]) -> complex:
            return cur[x] + k0 * sum(cur)

        return f"{names[x]}G", v[x], ground_loop(i), ground_loop
    x, y = (phases[0], phases[1]) if len(phases) >= 2 else (phases[0], (phases[0] + 1) % 3)

    def phase_loop(cur: tuple[complex, ...]) -> complex:
        return cur[x] - cur[y]

    label = "ABC" if len(phases) == 3 else names[x] + names[y]
    return label, v[x] - v[y], phase_loop(i), phase_loop


def locate(line: LineImpedance, fault: BaySample, prefault: BaySample | None = None) -> FaultEstimate | None:
    """The distance estimate from one during-fault sample (and a pre-fault one for Takagi)."""
    if fault.v_phasors_kv is not None and fault.i_phasors_a is not None:
        return _from_phasors(line, fault, prefault)
    return _from_powers(line, fault)


def _from_phasors(line: LineImpedance, fault: BaySample, prefault: BaySample | None) -> FaultEstimate | None:
    assert fault.v_phasors_kv is not None and fault.i_phasors_a is not None
    pre_i = prefault.i_phasors_a if prefault is not None else None
    phases, ground = _faulted(fault.i_phasors_a, pre_i)
    if not phases:
        return None
    v = tuple(x * 1000.0 for x in fault.v_phasors_kv)
    loop, v_loop, i_loop, loop_of = _loop(phases, ground, v, fault.i_phasors_a, line.k0)
    if abs(i_loop) < MIN_FAULT_CURRENT_A:
        return None
    z = v_loop / i_loop
    z1_per_m = line.z1_ohm_per_km / 1000.0
    method = "reactance"
    distance = z.imag / z1_per_m.imag if z1_per_m.imag > 0 else abs(z) / abs(z1_per_m)
    if pre_i is not None:
        # the superposition current, in phase with the current through the fault resistance: for
        # a ground loop the residual current (a radial feeder with its only earthing at the
        # source: 3I0 at the relay is the fault's), for a phase loop the loop's own change
        delta = (sum(fault.i_phasors_a) - sum(pre_i)) if loop.endswith("G") else i_loop - loop_of(pre_i)
        denominator = (z1_per_m * i_loop * delta.conjugate()).imag
        if abs(delta) >= MIN_FAULT_CURRENT_A and abs(denominator) > 1e-12:
            distance = (v_loop * delta.conjugate()).imag / denominator
            method = "takagi"
    return _estimate(line, distance, method, loop, _fault_type(phases, ground), z)


def _from_powers(line: LineImpedance, fault: BaySample) -> FaultEstimate | None:
    currents = [x for x in (fault.ia, fault.ib, fault.ic) if x is not None]
    if (
        len(currents) < 3
        or fault.voltage_kv is None
        or fault.active_power_kw is None
        or fault.reactive_power_kvar is None
        or fault.voltage_kv <= 0
    ):
        return None
    if max(currents) < MIN_FAULT_CURRENT_A or (max(currents) - min(currents)) > BALANCED_SPREAD * max(currents):
        return None  # an unbalanced fault: its positive-sequence impedance is not its loop's
    s = complex(fault.active_power_kw, fault.reactive_power_kvar)
    if abs(s) < 1e-9:
        return None
    z = fault.voltage_kv**2 * 1000.0 / s.conjugate()
    z1_per_m = line.z1_ohm_per_km / 1000.0
    distance = z.imag / z1_per_m.imag if z1_per_m.imag > 0 else abs(z) / abs(z1_per_m)
    return _estimate(line, distance, "positive-sequence reactance", "ABC", "3ph", z)


def _estimate(
    line: LineImpedance, distance: float, method: str, loop: str, kind: str, z: complex
) -> FaultEstimate | None:
    if not math.isfinite(distance):
        return None
    beyond = distance > line.length_m * 1.05
    clamped = min(max(distance, 0.0), line.length_m)
    return FaultEstimate(
        distance_m=clamped,
        method=method,
        loop=loop,
        fault_type=kind,
        loop_impedance_ohm=(round(z.real, 4), round(z.imag, 4)),
        beyond_line=beyond,
    )
