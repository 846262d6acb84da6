"""The AgentRuntime on the example site: the use case's fault scenario, requests, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.agents.actions import Alert, BusMessage, ControlRequest
from gateway.agents.runtime import AgentRuntime, UnknownAgent, restore_from_store, save_to_store
from gateway.agents.elements.smart_meter import BulkStateChange
from gateway.config import load
from gateway.storage import Store

SITE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml"


@pytest.fixture(scope="module")
def site():  # type: ignore[no-untyped-def]
    return load(SITE)


def feed_normal(rt: AgentRuntime, now: float) -> None:
    for cb in ("CB-044", "CB-045", "CB-046"):
        rt.on_point(cb, "closed", True, True, now)
        rt.on_point(cb, "ia", 180.0, True, now)
        rt.on_point(cb, "voltage_kv", 11.0, True, now)
    rt.on_point("LINE-045", "current_a", 180.0, True, now)
    rt.on_point("LINE-045", "voltage_kv", 11.0, True, now)
    rt.on_point("SUB-003", "total_load_kw", 6000.0, True, now)
    ids = rt.fleet.ids
    rt.ingest_meter_batch(ids, {"voltage_v": np.full(len(ids), 230.0), "demand_kw": np.full(len(ids), 1.2)}, now)


def states(rt: AgentRuntime) -> dict[str, str]:
    return {r["id"]: r["state"] for r in rt.list_agents()}


def test_fault_scenario_trip_outage_reclose_restoration(site) -> None:  # type: ignore[no-untyped-def]
    rt = AgentRuntime(site, now=0.0, meter_period_s=1.0)
    feed_normal(rt, 0.0)
    rt.tick(0.0)
    assert states(rt)["LINE-045"] == "Operational"
    rt.tick(99.9)  # the agents have stepped just before the fault, as they do every second

    rt.on_point("LINE-045", "current_a", 8500.0, True, 100.0)
    rt.on_protection_event("pickup", "CB-045", "51P", "A", 8500.0, 100.0)
    # the trip steps the breaker, its line, transformers and the substation at once
    actions = rt.on_protection_event("trip", "CB-045", "51P", "A", 8500.0, 100.05)
    s = states(rt)
    assert s["CB-045"] == "Tripped" and s["LINE-045"] == "Faulted" and s["SUB-003"] == "Feeder_Fault"
    assert s["XFMR-101"] == "Offline"
    rt.on_point("CB-045", "closed", False, True, 100.1)
    rt.on_point("LINE-045", "current_a", 0.0, True, 100.1)
    actions += rt.tick(101.0)
    assert rt.show("MTR-GRP-101")["states"] == {"Outage": 1250}
    # fault traffic first, and the substation's coordinated response names the customers and ties
    first = actions[0]
    assert isinstance(first, BusMessage) and first.urgent
    alerts = [a.message for a in actions if isinstance(a, Alert)]
    assert "LINE-045 fault: phase fault (51P phase A, 8500 A), tripped by CB-045" in alerts
    assert (
        "Feeder LINE-045 fault (phase fault (51P phase A, 8500 A), tripped by CB-045): 2500 customers "
        "(3 critical) affected; 2 reroute option(s)"
    ) in alerts
    impact = next(a for a in actions if isinstance(a, BusMessage) and a.kind == "customer_impact")
    assert impact.payload["event"] == "supply_lost" and impact.payload["customers"] == 2500
    assert impact.payload["critical_customers"] == 3
    assert impact.payload["breakers"] == [{"breaker": "CB-045", "state": "Tripped", "cause": "phase_fault"}]
    assert {t["transformer"]: t["critical_customers"] for t in impact.payload["by_transformer"]} == {
        "XFMR-101": 1,
        "XFMR-102": 2,
        "XFMR-103": 0,
    }
    assert impact.payload["by_line"] == [
        {"line": "LINE-045", "breaker": "CB-045", "customers": 2500, "critical_customers": 3}
    ]
    plan = next(a for a in actions if isinstance(a, BusMessage) and a.kind == "reroute_plan")
    assert plan.payload["customers_affected"] == 2500
    assert {o["via"] for o in plan.payload["reroute_options"]} == {"LINE-044", "LINE-046"}
    assert any(isinstance(a, BulkStateChange) and a.new == "Outage" for a in actions)
    assert rt.messages_received["CB-045"] >= 1

    # the reclose 30 s later succeeds
    actions = rt.on_protection_event("reclose", "CB-045", "79", "", 0.0, 130.0)
    rt.on_point("CB-045", "closed", True, True, 130.1)
    rt.on_point("LINE-045", "current_a", 170.0, True, 130.1)
    rt.tick(131.0)
    actions = rt.tick(132.0)
    s = states(rt)
    assert s["CB-045"] == "Closed_Normal" and s["LINE-045"] == "Operational"
    assert rt.show("MTR-GRP-101")["states"] == {"Active": 1250}
    restored = [a for a in actions + rt.tick(133.0) if isinstance(a, BusMessage) and a.kind == "service_restored"]
    r = rt.reliability(0.0, 3600.0)
    assert r["momentary_interruptions"] == 2500 and r["sustained_interruptions"] == 0
    assert r["maifi"] == pytest.approx(2500 / sum(g.count for g in site.meter_groups))
    transitions = rt.show("CB-045")["last_transitions"]
    assert [t["new"] for t in transitions] == ["Closed_High_Current", "Tripped", "Reclosing", "Closed_Normal"]
    assert all("cause" in t and "time" in t for t in transitions)
    del restored


def test_requests_and_views(site) -> None:  # type: ignore[no-untyped-def]
    rt = AgentRuntime(site, now=0.0)
    actions = rt.request("CB-046", "open", 1.0)
    assert actions[0] == ControlRequest(
        agent_id="CB-046", point_name="position_cmd", value=False, reason="operator open"
    )
    rt.request("SOLAR-201", "curtail", 2.0, pct=50)
    with pytest.raises(UnknownAgent, match="NOPE"):
        rt.show("NOPE")
    with pytest.raises(ValueError, match="unknown request"):
        rt.request("LINE-045", "curtail", 3.0)
    meter = rt.show("MTR-101-00007")
    assert meter["attributes"]["group"] == "MTR-GRP-101" and meter["state"] == "Active"
    rows = rt.list_agents()
    assert {r["type"] for r in rows} == {
        "substation",
        "circuit_breaker",
        "power_line",
        "transformer",
        "capacitor_bank",
        "renewable_energy",
        "smart_meter",
    }


def test_control_requests_name_command_points_the_agent_has(site) -> None:  # type: ignore[no-untyped-def]
    rt = AgentRuntime(site, now=0.0)
    points = {a.id: set(a.points) for a in site.agents}
    for agent_id in ("CB-044", "CB-046"):
        for req in ("open", "close"):
            for a in rt.request(agent_id, req, 1.0):
                if isinstance(a, ControlRequest):
                    assert a.point_name in points[agent_id]


def test_state_survives_restart_through_sqlite(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "state.db"
    rt = AgentRuntime(site, now=0.0, meter_period_s=1.0)
    feed_normal(rt, 0.0)
    rt.tick(0.0)
    for i in range(4):  # persistent fault: three recloses, then the agent locks it out
        rt.on_protection_event("trip", "CB-044", "51", "B", 4000.0, 10.0 + i)
        rt.on_point("CB-044", "closed", False, True, 10.1 + i)
        if i < 3:
            rt.on_protection_event("reclose", "CB-044", "79", "", 0.0, 10.5 + i)
            rt.on_point("CB-044", "closed", True, True, 10.6 + i)
        rt.tick(10.7 + i)
    rt.on_point("XFMR-101", "load_kw", 900.0, True, 20.0)
    rt.on_point("XFMR-101", "top_oil_temp_c", 85.0, True, 20.0)
    for t in range(21, 200, 5):
        rt.tick(float(t))
    rt.fleet.set_supply(["MTR-GRP-102"], True)
    rt.tick(300.0)
    store = Store(db)
    save_to_store(store, rt, 300.0)
    store.close()
    before = {a: rt.show(a) for a in ("CB-044", "XFMR-101", "CAP-301", "SOLAR-201")}
    before_counts = rt.fleet.counts()

    store2 = Store(db)
    rt2 = AgentRuntime(site, now=1000.0)
    assert restore_from_store(store2, rt2)
    store2.close()
    for agent_id, shown in before.items():
        after = rt2.show(agent_id)
        assert (after["state"], after["since"]) == (shown["state"], shown["since"])
        assert after["attributes"] == shown["attributes"]
        assert after["last_transitions"] == shown["last_transitions"]
    assert rt2.show("CB-044")["state"] == "Locked_Out"
    assert rt2.show("CB-044")["attributes"]["trip_count"] == 4
    assert rt2.show("XFMR-101")["attributes"]["equivalent_aging_h"] > 0
    assert rt2.fleet.counts() == before_counts
    with pytest.raises(ValueError, match="Locked_Out"):
        rt2.request("CB-044", "close", 1001.0)


def test_restore_refuses_other_versions(site) -> None:  # type: ignore[no-untyped-def]
    rt = AgentRuntime(site, now=0.0)
    with pytest.raises(ValueError, match="version"):
        rt.restore({"version": 99})


def test_restored_times_follow_a_new_monotonic_origin(site) -> None:  # type: ignore[no-untyped-def]
    # first boot: monotonic 1000 = wall 1_700_000_000
    rt = AgentRuntime(site, now=1000.0, meter_period_s=1.0)
    rt.tick(1000.0, wall=1_700_000_000.0)
    rt.on_protection_event("trip", "CB-045", "51", "A", 5000.0, 1010.0)
    rt.tick(1011.0, wall=1_700_000_011.0)
    shown = rt.show("CB-045")
    assert shown["since_wall"] == pytest.approx(1_700_000_010.0)
    outage_wall = rt.fleet.outage_start[0] + rt.wall_offset
    snap = rt.snapshot()
    # after a reboot the monotonic clock restarts near 0; wall time went on
    rt2 = AgentRuntime(site, now=5.0)
    rt2.restore(snap)
    rt2.tick(5.0, wall=1_700_000_100.0)
    assert rt2.show("CB-045")["since_wall"] == pytest.approx(1_700_000_010.0)
    assert rt2.show("CB-045")["last_transitions"][-1]["time"] + rt2.wall_offset == pytest.approx(1_700_000_010.0)
    assert rt2.fleet.outage_start[0] + rt2.wall_offset == pytest.approx(outage_wall)


def test_peak_demand_scenario_cvr_and_load_shedding(site) -> None:  # type: ignore[no-untyped-def]
    rt = AgentRuntime(site, now=0.0)
    with pytest.raises(ValueError, match="no load-shedding plan"):
        rt.request("SUB-003", "shed", 1.0)
    rt.on_point("SUB-003", "total_load_kw", 19_000.0, True, 0.0)  # 95 % of 20 MVA
    for line, kw in (("LINE-044", 5000.0), ("LINE-045", 9000.0), ("LINE-046", 5000.0)):
        rt.on_point(line, "active_power_kw", kw, True, 0.0)
    rt.tick(0.0)
    actions = rt.tick(60.0)  # high load has lasted the substation's load persistence
    assert rt.show("SUB-003")["state"] == "High_Load"
    assert any(isinstance(a, BusMessage) and a.kind == "load_transfer_request" for a in actions)
    # the substation asked its transformers to optimise taps: conservation voltage reduction is on
    assert rt.show("XFMR-101")["attributes"]["cvr_active"] is True
    assert rt.show("XFMR-101")["attributes"]["regulated_voltage_v"] == pytest.approx(117.0)
    assert rt.show("CAP-301")["attributes"]["var_support"] is True  # capacitors maximise reactive support
    plan = rt.show("SUB-003")["attributes"]["load_shedding_plan"]
    assert [p["feeder"] for p in plan] == ["LINE-046"]  # least critical first, until under 90 %
    actions = rt.request("SUB-003", "shed", 62.0)
    assert (
        ControlRequest(
            agent_id="CB-046",
            point_name="position_cmd",
            value=False,
            reason="load shedding by SUB-003: LINE-046 (5000 kW)",
        )
        in actions
    )
    assert rt.show("CB-046")["state"] == "Open_Manual"


def test_one_failing_agent_does_not_stop_the_others(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rt = AgentRuntime(site, now=0.0)

    def broken(*_args, **_kw):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("bad reading")

    monkeypatch.setattr(rt.agents["XFMR-101"], "step", broken)
    rt.on_point("CB-044", "closed", False, True, 0.0)
    actions = rt.tick(0.0)
    assert rt.show("CB-044")["state"] == "Open_Manual"
    alerts = [a for a in actions if isinstance(a, Alert) and a.agent_id == "XFMR-101"]
    assert len(alerts) == 1 and "bad reading" in alerts[0].message
    assert not [a for a in rt.tick(5.0) if isinstance(a, Alert) and a.agent_id == "XFMR-101"]


def test_momentary_threshold_comes_from_the_substation(site) -> None:  # type: ignore[no-untyped-def]
    assert AgentRuntime(site, now=0.0).momentary_threshold_s == 300.0
    sub = site.agent("SUB-003")
    other = site.model_copy(
        update={
            "agents": [
                a
                if a.id != "SUB-003"
                else a.model_copy(
                    update={"attributes": {**sub.attributes, "momentary_interruption_threshold_s": 180.0}}
                )
                for a in site.agents
            ]
        }
    )
    assert AgentRuntime(other, now=0.0).momentary_threshold_s == 180.0
