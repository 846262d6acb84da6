"""Engineering formulas the agents use, each a pure function with units in its names.

Sources and test vectors: /work/shared/reference/grid-reference.md sections 4-7
(IEC 60255-149 thermal replica, IEEE C57.91 clause 7 and aging, IEEE 1547-2018 volt-var and
volt-watt, ANSI 90 line-drop compensation).
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Sequence
from dataclasses import dataclass

# --------------------------------------------------------------------------- conductors


def line_losses_kw(current_a: float, r_ohm_per_km: float, length_m: float, phases: int = 3) -> float:
    """I²R losses of a line carrying `current_a` in each of `phases` conductors."""
    return phases * current_a**2 * r_ohm_per_km * length_m / 1000.0 / 1000.0


def thermal_level(theta0: float, current_a: float, trip_current_a: float, dt_s: float, tau_s: float) -> float:
    """IEC 60255-149 thermal replica, exact for constant current over `dt_s` (1.0 = trip level)."""
    ratio = min(current_a / trip_current_a, 8.0)
    theta_inf = ratio * ratio
    return theta_inf + (theta0 - theta_inf) * math.exp(-dt_s / tau_s)


# --------------------------------------------------------------------------- transformer (C57.91)

AGING_B_K = 15000.0
AGING_REFERENCE_K = 383.0  # 110 °C

COOLING_EXPONENTS: dict[str, tuple[float, float]] = {
    # cooling: (m winding, n oil) — C57.91 Table 4
    "ONAN": (0.8, 0.8),
    "oil_filled": (0.8, 0.8),
    "dry_type": (0.8, 0.8),
    "ONAF": (0.8, 0.9),
    "OFAF": (0.8, 0.9),
    "ODAF": (1.0, 1.0),
}
DEFAULT_TOP_OIL_TAU_MIN: dict[str, float] = {
    "ONAN": 210.0,
    "oil_filled": 210.0,
    "dry_type": 210.0,
    "ONAF": 150.0,
    "OFAF": 90.0,
    "ODAF": 90.0,
}


def aging_acceleration_factor(hot_spot_c: float) -> float:
    """F_AA for thermally upgraded paper, 1.0 at 110 °C."""
    return math.exp(AGING_B_K / AGING_REFERENCE_K - AGING_B_K / (hot_spot_c + 273.0))


def ultimate_top_oil_rise_c(k: float, rated_rise_c: float, loss_ratio: float, n: float) -> float:
    return rated_rise_c * float(((k * k * loss_ratio + 1.0) / (loss_ratio + 1.0)) ** n)


def ultimate_hot_spot_rise_c(k: float, rated_rise_c: float, m: float) -> float:
    return rated_rise_c * float(k ** (2.0 * m))


def top_oil_time_constant_s(
    rated_tau_s: float, ultimate_rise_c: float, initial_rise_c: float, rated_rise_c: float, n: float
) -> float:
    """Load-dependent top-oil time constant (equals the rated one when n = 1)."""
    a = ultimate_rise_c / rated_rise_c
    b = initial_rise_c / rated_rise_c
    if n == 1.0 or abs(a - b) < 1e-9 or a <= 0 or b < 0:
        return rated_tau_s
    denom = float(a ** (1.0 / n) - b ** (1.0 / n))
    if denom == 0:
        return rated_tau_s
    return rated_tau_s * (a - b) / denom


@dataclass(frozen=True, slots=True)
class ThermalState:
    top_oil_rise_c: float
    hot_spot_rise_c: float


def thermal_step(
    state: ThermalState,
    k: float,
    dt_s: float,
    *,
    rated_top_oil_rise_c: float,
    rated_hot_spot_rise_c: float,
    loss_ratio: float,
    n: float,
    m: float,
    rated_top_oil_tau_s: float,
    winding_tau_s: float,
) -> ThermalState:
    """Advance the C57.91 clause-7 exponential model by `dt_s` at per-unit load `k`."""
    to_u = ultimate_top_oil_rise_c(k, rated_top_oil_rise_c, loss_ratio, n)
    tau_to = top_oil_time_constant_s(rated_top_oil_tau_s, to_u, state.top_oil_rise_c, rated_top_oil_rise_c, n)
    top = (to_u - state.top_oil_rise_c) * (1.0 - math.exp(-dt_s / tau_to)) + state.top_oil_rise_c
    hs_u = ultimate_hot_spot_rise_c(k, rated_hot_spot_rise_c, m)
    hs = (hs_u - state.hot_spot_rise_c) * (1.0 - math.exp(-dt_s / winding_tau_s)) + state.hot_spot_rise_c
    return ThermalState(top, hs)


def equivalent_aging_factor(factors: Sequence[float], durations_h: Sequence[float]) -> float:
    total = sum(durations_h)
    return sum(f * d for f, d in zip(factors, durations_h, strict=True)) / total if total else 0.0


def loss_of_life_percent(equivalent_aging_h: float, normal_life_h: float = 180_000.0) -> float:
    return equivalent_aging_h * 100.0 / normal_life_h


# --------------------------------------------------------------------------- IEEE 1547-2018


VOLT_VAR_CURVES: dict[str, tuple[tuple[float, float], ...]] = {
    # category: ((V1,Q1), (V2,Q2), (V3,Q3), (V4,Q4)), V in pu with V_ref = 1.0, Q in pu of S_rated
    "A": ((0.90, 0.25), (1.00, 0.0), (1.00, 0.0), (1.10, -0.25)),
    "B": ((0.92, 0.44), (0.98, 0.0), (1.02, 0.0), (1.08, -0.44)),
}
OPEN_LOOP_RESPONSE_S = {"A": 10.0, "B": 5.0}


def _piecewise(points: Sequence[tuple[float, float]], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            if x1 == x0:
                return y1
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def volt_var_q_pu(voltage_pu: float, category: str = "B", v_ref_pu: float = 1.0) -> float:
    """Reactive power (pu of S_rated, + = injection) from the 1547 volt-var curve; held flat outside."""
    shift = v_ref_pu - 1.0
    pts = [(v + shift, q) for v, q in VOLT_VAR_CURVES[category]]
    return _piecewise(pts, voltage_pu)


def volt_watt_p_pu(voltage_pu: float, p_min_pu: float = 0.2, v1_pu: float = 1.06, v2_pu: float = 1.10) -> float:
    """Active-power limit (pu of P_rated) from the 1547 volt-watt curve (P2 = `p_min_pu`)."""
    return _piecewise([(v1_pu, 1.0), (v2_pu, p_min_pu)], voltage_pu)


def first_order_lag(previous: float, target: float, dt_s: float, open_loop_response_s: float) -> float:
    """Reaches 90 % of a step in `open_loop_response_s` (τ = OLRT / ln 10)."""
    if open_loop_response_s <= 0:
        return target
    tau = open_loop_response_s / math.log(10.0)
    return target + (previous - target) * math.exp(-dt_s / tau)


# --------------------------------------------------------------------------- OLTC / LDC


def ldc_control_voltage_v(
    v_out_v: float,
    current_a: float,
    power_factor: float,
    ct_primary_a: float,
    r_v: float,
    x_v: float,
    lagging: bool = True,
) -> float:
    """|V_out − (R + jX)·(I/I_CT)| with the current at `power_factor` (ANSI 90 LDC)."""
    angle = -math.acos(max(-1.0, min(1.0, power_factor)))
    if not lagging:
        angle = -angle
    i_pu = cmath.rect(current_a / ct_primary_a, angle)
    return abs(complex(v_out_v, 0.0) - complex(r_v, x_v) * i_pu)


def taps_needed(v_reg_v: float, v_ctrl_v: float, step_v: float) -> int:
    """Tap steps to bring the control voltage to the set point (OpenDSS rounding)."""
    return int(round((v_reg_v - v_ctrl_v) / step_v))


def inverse_time_delay_s(delay_s: float, deviation_v: float, bandwidth_v: float) -> float:
    return delay_s / min(10.0, 2.0 * abs(deviation_v) / bandwidth_v) if deviation_v else delay_s


# --------------------------------------------------------------------------- forecasting


def linear_trend(times_s: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope (per second) and the fitted value at the last time."""
    n = len(times_s)
    if n < 2:
        return 0.0, (values[-1] if values else 0.0)
    mt = sum(times_s) / n
    mv = sum(values) / n
    sxx = sum((t - mt) ** 2 for t in times_s)
    if sxx == 0:
        return 0.0, mv
    slope = sum((t - mt) * (v - mv) for t, v in zip(times_s, values, strict=True)) / sxx
    return slope, mv + slope * (times_s[-1] - mt)


def time_to_limit_s(current: float, slope_per_s: float, limit: float) -> float | None:
    """Seconds until a linear trend crosses `limit`; 0 if already above; None if never."""
    if current >= limit:
        return 0.0
    if slope_per_s <= 0:
        return None
    return (limit - current) / slope_per_s
