"""Meter tampering for revenue-protection scenarios: a bypassed meter registers a share of what
its customer draws.

From the next reading after the bypass the meter's energy register grows at `registered` times
the customer's consumption (0: a full bypass), and its demand and current read that share; the
transformer still supplies all of it. Clearing the bypass (registered 1) lets the register grow
normally again from where it stands: the energy that went unregistered stays missing, as on a
real meter.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np


class MeterBypass:
    def __init__(self, n: int) -> None:
        self.registered = np.ones(n)
        self.missing_kwh = np.zeros(n)
        """Energy that went unregistered in bypasses that ended."""
        self._since_kwh = np.full(n, np.nan)
        """True energy when the current bypass began (NaN: not bypassed)."""
        self._pending: dict[int, float] = {}
        """Meter index → share to register, from the next reading on."""

    def set(self, index: int, registered: float) -> None:
        """Meter `index` registers `registered` (0..1) of its consumption from its next reading."""
        if not 0.0 <= registered <= 1.0:
            raise ValueError(f"registered must be a share in 0..1, found {registered!r}")
        if not 0 <= index < len(self.registered):
            raise ValueError(f"no meter at index {index}")
        self._pending[index] = registered

    def apply(self, readings: Any) -> Any:
        """Readings (with the customers' true energy) as the meters register them."""
        true = readings.energy_kwh
        for k, share in self._pending.items():
            if not np.isnan(self._since_kwh[k]):
                self.missing_kwh[k] += (1.0 - self.registered[k]) * (true[k] - self._since_kwh[k])
            self.registered[k] = share
            self._since_kwh[k] = true[k] if share < 1.0 else np.nan
        self._pending.clear()
        active = ~np.isnan(self._since_kwh)
        if not active.any() and not self.missing_kwh.any():
            return readings
        current = np.where(active, (1.0 - self.registered) * (true - np.nan_to_num(self._since_kwh)), 0.0)
        return replace(
            readings,
            energy_kwh=true - self.missing_kwh - current,
            demand_kw=readings.demand_kw * self.registered,
            current_a=readings.current_a * self.registered,
        )
