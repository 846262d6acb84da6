"""A battery behind its inverter: the power it can deliver from a set-point, and its state of charge.

Plain functions of the battery's limits, so the model and the tests share one definition:
the inverter follows its set-point (+ discharge, − charge) within its rating and its active-power
limit, and stops discharging at its reserve (`soc_min_pct`) and charging at `soc_max_pct`; the
state of charge integrates the power with a one-way efficiency (losses on the way in and out).
"""

from __future__ import annotations


def battery_power_kw(
    setpoint_kw: float,
    *,
    rated_kw: float,
    max_charge_kw: float,
    limit_pct: float,
    soc_pct: float,
    soc_min_pct: float,
    soc_max_pct: float,
) -> float:
    """Power at the terminals (+ into the grid) for a set-point, within every limit."""
    discharge_max = rated_kw * max(0.0, min(limit_pct, 100.0)) / 100.0
    p = max(-max_charge_kw, min(discharge_max, setpoint_kw))
    if p > 0 and soc_pct <= soc_min_pct:
        return 0.0
    if p < 0 and soc_pct >= soc_max_pct:
        return 0.0
    return p


def soc_after_pct(soc_pct: float, power_kw: float, dt_s: float, *, capacity_kwh: float, efficiency: float) -> float:
    """State of charge after delivering `power_kw` (+ discharge) for `dt_s`, kept within 0..100 %."""
    energy_kwh = power_kw * dt_s / 3600.0
    stored = energy_kwh / efficiency if energy_kwh > 0 else energy_kwh * efficiency
    return max(0.0, min(100.0, soc_pct - 100.0 * stored / capacity_kwh))
