"""A transient fault on LINE-045 on the real rig: trip, 0.5 s auto-reclose, restored.

The reclose comes and goes between two of the agents' one-second ticks; the protection events
and the breaker's position changes step the agents at once, so the line and substation agents
show the fault and the recovery, the reliability ledger counts one momentary interruption for
each of the 2,000 customers behind CB-045 (none sustained), and SCADA gets the notices.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hil.rig import Rig, example_document
from tests.support.broker import Subscriber

RECLAIM_S = 5.0


def transient_site() -> dict[str, Any]:
    """The example site with CB-045's relay polled every 20 ms and a short reclaim time (the
    example's 0.5 s first dead time kept)."""
    doc = example_document()
    for ied in doc["ieds"]:
        if ied["id"] == "IED-CB-045":
            ied["poll_period_ms"] = 20
            ied["timeout_ms"] = 200
    for scheme in doc["protection"]:
        if scheme["breaker"] == "CB-045":
            scheme["reclose"]["reclaim_s"] = RECLAIM_S
    return doc


def moves(rig: Rig, agent: str, since_wall: float) -> list[str]:
    shown = rig.daemon_call("agents.show", id=agent)
    offset = shown["wall_offset"]
    return [f"{t['old']}>{t['new']}" for t in shown["last_transitions"] if t["time"] + offset >= since_wall]


def transitions(rig: Rig, agent: str, since_wall: float) -> dict[str, float]:
    """New state → monotonic time of its first transition since `since_wall`."""
    shown = rig.daemon_call("agents.show", id=agent)
    out: dict[str, float] = {}
    for t in shown["last_transitions"]:
        if t["time"] + shown["wall_offset"] >= since_wall:
            out.setdefault(t["new"], t["time"])
    return out


def test_transient_fault_is_seen_by_the_agents_and_counted_as_momentary(tmp_path: Path) -> None:
    with Rig(transient_site(), tmp_path, hil_args=("--meters", "2000", "--ami-interval", "2s")) as rig:
        assert rig.broker is not None
        base = f"stima/{rig.doc['site']['region']}/{rig.doc['site']['substation_id']}"
        sub = Subscriber(rig.broker, f"{base}/#").start()
        try:
            rig.wait(lambda: rig.daemon_call("status")["ami"]["readings"] >= 2000, "a full AMI reading", 30, 0.2)
            rig.wait(
                lambda: (
                    rig.daemon_call("agents.show", id="LINE-045")["state"] == "Operational"
                    and rig.daemon_call("agents.show", id="CB-045")["attributes"]["position"] == "closed"
                ),
                "LINE-045 in service",
                30,
                0.2,
            )
            before = rig.daemon_call("reliability")
            assert before["momentary_interruptions"] == 0 and before["sustained_interruptions"] == 0
            start = time.time()

            rig.hil_call("fault", line="LINE-045", distance_m=2300.0, kind="3ph", transient=True)

            def protection() -> dict[str, Any]:
                return dict(rig.daemon_call("status")["protection"]["breakers"]["CB-045"])

            rig.wait(lambda: any(m.endswith(">Tripped") for m in moves(rig, "CB-045", start)), "the trip", 30)
            # the reclose sequence is over once its reclaim time has run out
            rig.wait(
                lambda: (
                    rig.daemon_call("agents.show", id="CB-045")["state"] == "Closed_Normal"
                    and protection()["reclose_state"] == "ready"
                ),
                "the reclose and its reclaim time",
                30,
                0.1,
            )
            rig.wait(lambda: "Faulted>Operational" in moves(rig, "LINE-045", start), "LINE-045 back in service", 10)

            # (Closed_High_Current comes and goes with the protection pickup and the inrush after the reclose)
            breaker = [m.replace("Closed_High_Current", "Closed_Normal") for m in moves(rig, "CB-045", start)]
            breaker = [m for m in breaker if m != "Closed_Normal>Closed_Normal"]
            assert breaker == ["Closed_Normal>Tripped", "Tripped>Reclosing", "Reclosing>Closed_Normal"], breaker
            assert moves(rig, "LINE-045", start)[:2] == ["Operational>Faulted", "Faulted>Operational"]
            substation = moves(rig, "SUB-003", start)
            assert substation[0].endswith(">Feeder_Fault") and substation[1].startswith("Feeder_Fault>"), substation
            # at the events themselves, not at a tick: the fault at the trip; the recovery once the line's
            # readings after the reclose are in (the next tick at the latest)
            events = {
                e["kind"]: e["monotonic"]
                for e in rig.daemon_call("events", source="CB-045")
                if e["kind"] in ("protection.trip", "protection.reclose") and e["time"] >= start
            }
            line = transitions(rig, "LINE-045", start)
            sub_moves = transitions(rig, "SUB-003", start)
            assert line["Faulted"] == pytest.approx(events["protection.trip"], abs=1e-6)
            assert sub_moves["Feeder_Fault"] == pytest.approx(events["protection.trip"], abs=1e-6)
            assert 0.0 < line["Operational"] - events["protection.reclose"] < 1.5

            indices = rig.daemon_call("reliability")
            assert indices["customers_served"] == 3670  # every meter group of the site
            assert indices["momentary_interruptions"] == 2500 and indices["sustained_interruptions"] == 0
            assert indices["maifi"] == pytest.approx(2500 / 3670) and indices["saifi"] == 0.0

            # SCADA saw it: the trip and its cause, the line fault, who lost supply and got it back
            assert sub.wait_for(
                lambda _m: (
                    {"breaker_trip", "line_fault", "customer_impact", "line_fault_cleared"}
                    <= {p["kind"] for p in sub.on_prefix("notices/")}
                ),
                20,
            )
            trip = next(p for p in sub.on_prefix("notices/") if p["kind"] == "breaker_trip")
            assert trip["breaker"] == "CB-045" and trip["cause"] == "phase_fault" and trip["customers"] == 2500
            impact = [
                (p["event"], p["customers"], p["critical_customers"])
                for p in sub.on_prefix("notices/")
                if p["kind"] == "customer_impact"
            ]
            assert impact[:2] == [("supply_lost", 2500, 3), ("supply_restored", 2500, 3)]
            alarms = [p["message"] for p in sub.on("alarms")]
            assert any(
                a.startswith("LINE-045 fault: phase fault (") and a.endswith("tripped by CB-045") for a in alarms
            ), alarms
            assert not [a for a in alarms if "discrepancy" in a or "uncommanded" in a], alarms
        finally:
            sub.stop()
