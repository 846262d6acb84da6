"""A switching authority on a generated site, with the plant's state set by hand (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.switching.authority import PlantHooks, SwitchingAuthority
from gateway.switching.faults import FaultBook
from gateway.switching.network import SQRT3, Network
from gateway.switching.state import GridState
from tests.support.feeder_sites import feeder_site, site_config


@dataclass
class Bench:
    """Network, state, faults and authority of one generated site; `agent_states` and
    `lockouts` stand in for the agents and the protection core."""

    network: Network
    state: GridState
    faults: FaultBook
    authority: SwitchingAuthority
    agent_states: dict[str, str] = field(default_factory=dict)
    lockouts: set[str] = field(default_factory=set)
    now: float = 100.0

    def set_positions(self, positions: Mapping[str, bool | None]) -> None:
        for dev, closed in positions.items():
            self.state.on_point(f"{dev}.closed", closed, closed is not None, self.now)

    def set(self, point: str, value: Any, good: bool = True) -> None:
        self.state.on_point(point, value, good, self.now)

    def normal(self, *, loads_kw: Mapping[str, float] | None = None, pf: float = 0.95) -> None:
        """Every device in its normal position, every remote switch remote, indicators reset, and
        each transformer carrying `loads_kw` (default 900 kW), with matching device currents."""
        for dev in self.network.devices.values():
            self.set(f"{dev.id}.closed", not dev.normally_open)
            if "local" in dev.points:
                self.set(dev.points["local"], False)
            if "fpi" in dev.points:
                self.set(dev.points["fpi"], False)
        self.set_loads(loads_kw or {}, pf=pf)

    def set_loads(self, loads_kw: Mapping[str, float], *, pf: float = 0.95, default_kw: float = 900.0) -> None:
        q_ratio = (1 - pf * pf) ** 0.5 / pf
        for element, kind in self.network.element_types.items():
            if kind == "transformer":
                kw = loads_kw.get(element, default_kw)
                self.set(f"{element}.load_kw", kw)
                self.set(f"{element}.load_kvar", kw * q_ratio)
        self.refresh_currents()

    def refresh_currents(self) -> None:
        """Device currents from the estimate of the present configuration."""
        config = self.state.configuration()
        for dev in self.network.devices.values():
            for ph in ("ia", "ib", "ic"):
                if ph in dev.points:
                    self.set(dev.points[ph], None, good=False)
        loads = {
            s: (self.state.section_load(s).kva if self.state.section_load(s) else 0j) for s in self.network.sections
        }
        est = self.network.estimate(config, loads)
        for dev in self.network.devices.values():
            amps = est.device_current_a.get(dev.id, 0.0)
            for ph in ("ia", "ib", "ic"):
                if ph in dev.points:
                    self.set(dev.points[ph], amps)

    def remember_loads(self) -> None:
        energised = self.network.energise(self.state.configuration()).source_of
        self.state.sample_loads(self.now, energised)


def bench(doc: dict[str, Any] | None = None, **site_args: Any) -> Bench:
    site = site_config(doc if doc is not None else feeder_site(**site_args))
    network = Network.from_site(site)
    state = GridState(network)
    faults = FaultBook()
    b: Bench

    def hooks_agent_state(agent: str) -> str | None:
        return b.agent_states.get(agent)

    def hooks_locked(breaker: str) -> bool:
        return breaker in b.lockouts

    authority = SwitchingAuthority(
        network,
        state,
        faults,
        PlantHooks(agent_state=hooks_agent_state, locked_out=hooks_locked, wall=lambda: 1_700_000_000.0 + b.now),
        new_id=_counter("op"),
    )
    b = Bench(network, state, faults, authority)
    return b


def _counter(prefix: str):  # type: ignore[no-untyped-def]
    n = [0]

    def next_id() -> str:
        n[0] += 1
        return f"{prefix}-{n[0]}"

    return next_id


def amps(kw: float, kv: float = 11.0, pf: float = 0.95) -> float:
    return kw / pf / (SQRT3 * kv)
