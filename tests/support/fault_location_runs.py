"""Many faults injected into the simulator's model, located from what the relays serve.

Each fault: the model runs to a random time of day (loads follow their profiles), the bay's
values are taken as its IED serves them (through the Modbus float32 encoding), a fault of a
random kind, resistance and position is injected, the bay's values are taken again, and the
fault locator is given both. Shared by tests/test_fault_location.py and the benchmark that
prints the distribution (tests/bench/bench_fault_location.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.agents.schema import PowerLineAttributes
from gateway.config import load
from gateway.contract.settings import DataType, ModbusPoint
from gateway.fault_location import BaySample, LineImpedance, locate
from hil.modbus_servers import from_registers, to_registers
from hil.runtime import build_model

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"
FEEDERS = {"LINE-044": "CB-044", "LINE-045": "CB-045", "LINE-046": "CB-046"}
KINDS = ("3ph", "ll", "llg", "slg")
RESISTANCES_OHM = (0.0, 0.0, 1.0, 5.0)
_FLOAT = ModbusPoint(id="x", address=0, type=DataType.FLOAT32)


@dataclass(frozen=True)
class Run:
    line: str
    kind: str
    resistance_ohm: float
    distance_m: float
    takagi_m: float | None
    reactance_m: float | None
    positive_sequence_m: float | None
    method: str | None

    def error(self, which: str) -> float | None:
        value = getattr(self, f"{which}_m")
        return None if value is None else value - self.distance_m


def _served(values: dict[str, Any]) -> dict[str, Any]:
    """The values as the gateway decodes them from float32 registers."""
    return {
        k: from_registers(to_registers(v, _FLOAT), _FLOAT) if isinstance(v, float) else v for k, v in values.items()
    }


def lines() -> dict[str, LineImpedance]:
    site = load(SITE)
    out = {}
    for agent in site.agents:
        if agent.id in FEEDERS:
            attrs = PowerLineAttributes.model_validate(agent.attributes)
            z = attrs.impedance
            out[agent.id] = LineImpedance(
                complex(z.r_ohm_per_km, z.x_ohm_per_km), complex(z.r0_ohm_per_km, z.x0_ohm_per_km), attrs.length
            )
    return out


def run_faults(n: int, seed: int = 7) -> list[Run]:
    site = load(SITE)
    model = build_model(site, seed=seed)
    impedances = lines()
    rng = random.Random(seed)
    t = 0.0
    runs = []
    for _ in range(n):
        line = rng.choice(sorted(FEEDERS))
        cb, li = FEEDERS[line], impedances[line]
        kind = rng.choice(KINDS)
        rf = rng.choice(RESISTANCES_OHM)
        distance = rng.uniform(0.02, 0.98) * li.length_m
        t += rng.uniform(60.0, 1800.0)
        model.advance(t)
        pre_values = _served(model.agent_values(cb))
        model.inject_fault(line, distance, kind, impedance_ohm=rf, now_s=t + 0.1)
        fault_values = _served(model.agent_values(cb))
        model.clear_faults(t + 0.2)
        pre = BaySample.from_values(t, pre_values)
        fault = BaySample.from_values(t + 0.1, fault_values)
        takagi = locate(li, fault, pre)
        reactance = locate(li, fault)
        magnitudes = BaySample(
            time=fault.time,
            ia=fault.ia,
            ib=fault.ib,
            ic=fault.ic,
            voltage_kv=fault.voltage_kv,
            active_power_kw=fault.active_power_kw,
            reactive_power_kvar=fault.reactive_power_kvar,
        )
        positive = locate(li, magnitudes)
        runs.append(
            Run(
                line=line,
                kind=kind,
                resistance_ohm=rf,
                distance_m=distance,
                takagi_m=None if takagi is None else takagi.distance_m,
                reactance_m=None if reactance is None else reactance.distance_m,
                positive_sequence_m=None if positive is None else positive.distance_m,
                method=None if takagi is None else takagi.method,
            )
        )
    return runs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[k]
