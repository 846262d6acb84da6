"""A tiny stand-in for `hil.grid.model.GridModel`, with the same API, for the runtime's tests.

Deterministic values per point, breakers that open on `<breaker>.trip_cmd` and close on
`<breaker>.close_cmd`, and meter readings for every meter group of the site. Not a power flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.config import SiteConfig
from gateway.contract.settings import Iec61850Point


@dataclass
class StubReadings:
    ids: list[str]
    voltage_v: np.ndarray
    current_a: np.ndarray
    demand_kw: np.ndarray
    energy_kwh: np.ndarray
    power_factor: np.ndarray
    thd_pct: np.ndarray
    powered: np.ndarray
    tamper: np.ndarray


@dataclass
class StubModel:
    site: SiteConfig
    meters: int | None = None
    now_s: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)
    commands: list[tuple[str, Any, float]] = field(default_factory=list)
    active_faults: list[dict[str, Any]] = field(default_factory=list)
    load_steps: list[tuple[str, float]] = field(default_factory=list)
    ramps: list[tuple[str, float, float]] = field(default_factory=list)
    closed: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_site(cls, site: SiteConfig, seed: int = 0, meters: int | None = None) -> StubModel:
        model = cls(site, meters)
        for ied in site.ieds:
            points: list[Any] = list(ied.points)
            for n, point in enumerate(points):
                if isinstance(point, Iec61850Point):
                    model.values[point.id] = 10.0 + n
                    continue
                if point.function.value in ("coil", "discrete"):
                    model.values[point.id] = point.function.value == "discrete"
                elif point.valid_range is not None:
                    low, high = point.valid_range
                    model.values[point.id] = low + (high - low) * (0.25 + 0.01 * n)
                else:  # a raw value every register type can carry
                    model.values[point.id] = (1000 + 10 * n) * point.scale + point.offset
        for agent in site.agents:
            if agent.type == "circuit_breaker":
                model.closed[agent.id] = True
        return model

    def advance(self, now_s: float) -> None:
        self.now_s = now_s

    def point_values(self) -> dict[str, Any]:
        return dict(self.values)

    def apply_command(self, point_id: str, value: Any, now_s: float) -> None:
        if point_id not in self.values:
            raise KeyError(f"unknown point {point_id}")
        self.commands.append((point_id, value, now_s))
        breaker, _, name = point_id.partition(".")
        if name in ("trip_cmd", "close_cmd") and value:
            self.closed[breaker] = name == "close_cmd"
            self.values[f"{breaker}.closed"] = self.closed[breaker]
        elif name not in ("trip_cmd", "close_cmd"):
            self.values[point_id] = value

    def breaker_closed(self, breaker_id: str) -> bool:
        return self.closed[breaker_id]

    def inject_fault(
        self,
        line_id: str,
        distance_m: float,
        kind: str,
        impedance_ohm: float = 0.0,
        transient: bool = False,
        now_s: float = 0.0,
    ) -> dict[str, Any]:
        fault = {"line": line_id, "distance_m": distance_m, "kind": kind, "transient": transient}
        self.active_faults.append(fault)
        return fault

    def clear_faults(self, now_s: float) -> None:
        self.active_faults.clear()

    def load_step(self, target_id: str, factor: float, now_s: float) -> None:
        self.load_steps.append((target_id, factor))

    def temperature_ramp(self, xfmr_id: str, delta_c: float, duration_s: float, now_s: float) -> None:
        self.ramps.append((xfmr_id, delta_c, duration_s))

    def meter_readings(self, now_s: float) -> StubReadings:
        ids = [f"{g.prefix}-{n:05d}" for g in self.site.meter_groups for n in range(g.first, g.first + g.count)]
        if self.meters is not None:
            ids = ids[: self.meters]
        n = len(ids)
        idx = np.arange(n, dtype=np.float64)
        return StubReadings(
            ids=ids,
            voltage_v=(230.0 + (idx % 7)).astype(np.float32),
            current_a=(idx % 13).astype(np.float32),
            demand_kw=(0.1 * (idx % 50)).astype(np.float32),
            energy_kwh=1000.0 + idx + now_s / 3600.0,
            power_factor=np.full(n, 0.95, dtype=np.float32),
            thd_pct=np.full(n, 3.0, dtype=np.float32),
            powered=np.ones(n, dtype=bool),
            tamper=(idx % 1000 == 999),
        )
