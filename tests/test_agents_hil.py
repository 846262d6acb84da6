"""The agents against the hardware-in-the-loop grid model (in process, simulated time).

The model (hil.grid) is the same electrical simulation the HIL rig serves over Modbus and
IEC 61850; here its values feed the runtime directly and the runtime's control requests go back
into it, so tap changes, capacitor steps and DER set points act on a solved network.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest

from gateway.agents.actions import Alert, BusMessage, ControlRequest, StateChange
from gateway.agents.runtime import AgentRuntime
from gateway.agents.elements.smart_meter import BulkStateChange
from gateway.config import load

grid_model = pytest.importorskip("hil.grid.model")

SITE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml"
T0 = 10 * 3600.0  # model time of day at the start


class CoSim:
    def __init__(self) -> None:
        self.site = load(SITE)
        self.model = grid_model.GridModel.from_site(self.site)
        self.rt = AgentRuntime(self.site, now=0.0)
        self.feeds: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for agent in self.site.agents:
            for name, pid in agent.points.items():
                self.feeds[pid].append((agent.id, name))
        self.points = {a.id: a.points for a in self.site.agents}
        self.log: list[Any] = []
        self.t = 0.0

    def step(self, dt: float = 1.0) -> None:
        t = self.t
        self.model.advance(T0 + t)
        for pid, value in self.model.point_values().items():
            for agent_id, name in self.feeds.get(pid, ()):
                self.carry_out(self.rt.on_point(agent_id, name, value, True, t))
        if int(t) % 60 == 0:
            r = self.model.meter_readings(T0 + t)
            self.rt.ingest_meter_batch(
                r.ids, {"voltage_v": r.voltage_v, "demand_kw": r.demand_kw, "thd_pct": r.thd_pct, "tamper": r.tamper}, t
            )
        self.carry_out(self.rt.tick(t, wall=1.79e9 + t))
        self.t += dt

    def carry_out(self, actions: list[Any]) -> None:
        for action in actions:
            self.log.append(action)
            if isinstance(action, ControlRequest):
                self.model.apply_command(self.points[action.agent_id][action.point_name], action.value, T0 + self.t)

    def protection(self, kind: str, breaker: str, element: str, phase: str, current_a: float) -> None:
        self.carry_out(self.rt.on_protection_event(kind, breaker, element, phase, current_a, self.t))

    def run(self, seconds: float) -> None:
        end = self.t + seconds
        while self.t < end:
            self.step()

    def changes(self, agent_id: str) -> list[tuple[str, str]]:
        out = [(a.old, a.new) for a in self.log if isinstance(a, StateChange) and a.agent_id == agent_id]
        out += [(a.old, a.new) for a in self.log if isinstance(a, BulkStateChange) and a.group_id == agent_id]
        return out


def test_quiet_grid_then_fault_isolation_and_restoration() -> None:
    sim = CoSim()
    sim.run(600)
    # a healthy, lightly loaded grid: no alerts, no meter trouble, few control operations
    assert not [a for a in sim.log if isinstance(a, Alert)]
    assert not [a for a in sim.log if isinstance(a, BulkStateChange)]
    controls = collections.Counter((a.agent_id, a.point_name) for a in sim.log if isinstance(a, ControlRequest))
    assert controls[("XFMR-101", "tap_setpoint")] <= 6 and controls[("CAP-301", "steps_cmd")] <= 4
    sim.log.clear()

    # scenario 1: short circuit on LINE-045 2.3 km out, the breaker trips, recloses 30 s later
    sim.model.inject_fault("LINE-045", 2300.0, "3ph", transient=True, now_s=T0 + sim.t)
    sim.step(0.05)
    current = float(sim.model.agent_values("CB-045")["ia"])
    assert current > 1000
    sim.protection("trip", "CB-045", "51P", "A", current)
    sim.model.apply_command("CB-045.trip_cmd", True, T0 + sim.t)
    sim.run(30)
    states = {r["id"]: r["state"] for r in sim.rt.list_agents()}
    assert states["LINE-045"] == "Faulted" and states["CB-045"] == "Tripped"
    assert states["SUB-003"] == "Feeder_Fault" and states["XFMR-101"] == "Offline"
    assert sim.rt.show("MTR-GRP-101")["states"] == {"Outage": 1250}
    plan = next(a for a in sim.log if isinstance(a, BusMessage) and a.kind == "reroute_plan")
    assert plan.payload["customers_affected"] == 2500  # MTR-GRP-101, -102 and -103 behind LINE-045
    assert not any(
        isinstance(a, StateChange) and a.agent_id == "SUB-003" and a.new == "Emergency_Mode" for a in sim.log
    )  # fault current is not load

    sim.model.clear_faults(T0 + sim.t)
    sim.protection("reclose", "CB-045", "79", "", 0.0)
    sim.model.apply_command("CB-045.close_cmd", True, T0 + sim.t)
    sim.run(120)
    states = {r["id"]: r["state"] for r in sim.rt.list_agents()}
    assert states["LINE-045"] == "Operational" and states["CB-045"] == "Closed_Normal"
    assert states["SUB-003"] in ("Normal_Operation", "Voltage_Regulation_Active")
    assert sim.rt.show("MTR-GRP-102")["states"] == {"Active": 750}
    assert sim.changes("CB-045") == [
        ("Closed_Normal", "Closed_High_Current"),
        ("Closed_High_Current", "Tripped"),
        ("Tripped", "Reclosing"),
        ("Reclosing", "Closed_Normal"),
    ]
    r = sim.rt.reliability(0.0, sim.t)
    assert r["momentary_interruptions"] == 2500 and r["sustained_interruptions"] == 0
