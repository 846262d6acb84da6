"""Fast events reach the agents: a 0.5 s reclose between two one-second ticks is seen by the
breaker, the line, the substation and the reliability ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.agents.actions import BusMessage, StateChange
from gateway.agents.runtime import AgentRuntime
from gateway.config import load

SITE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml"
RECLAIM_S = 30.0  # CB-045's reclose reclaim time in the example site


@pytest.fixture(scope="module")
def site():  # type: ignore[no-untyped-def]
    return load(SITE)


def healthy(rt: AgentRuntime, now: float) -> None:
    for cb in ("CB-044", "CB-045", "CB-046"):
        rt.on_point(cb, "closed", True, True, now)
        rt.on_point(cb, "ia", 180.0, True, now)
    rt.on_point("LINE-045", "current_a", 180.0, True, now)
    rt.on_point("LINE-045", "voltage_kv", 11.0, True, now)
    rt.on_point("SUB-003", "total_load_kw", 6000.0, True, now)
    ids = rt.fleet.ids
    rt.ingest_meter_batch(ids, {"voltage_v": np.full(len(ids), 230.0), "demand_kw": np.full(len(ids), 1.2)}, now)


def moves(rt: AgentRuntime, agent: str, since: float) -> list[str]:
    return [f"{h['old']}>{h['new']}" for h in rt.show(agent)["last_transitions"] if h["time"] >= since]


def run_ticks(rt: AgentRuntime, start: float, stop: float) -> list[object]:
    out: list[object] = []
    t = start
    while t <= stop:
        out += rt.tick(t)
        t += 1.0
    return out


def test_a_half_second_reclose_between_two_ticks(site) -> None:  # type: ignore[no-untyped-def]
    rt = AgentRuntime(site, now=0.0)
    healthy(rt, 0.0)
    run_ticks(rt, 0.0, 100.0)
    # between the ticks at 100 s and 101 s: fault, trip at 100.2, reclose at 100.7, closed at 100.75
    rt.on_point("CB-045", "ia", 4200.0, True, 100.15)
    rt.on_point("LINE-045", "current_a", 4200.0, True, 100.15)
    actions = rt.on_protection_event("trip", "CB-045", "50P", "A", 4200.0, 100.2)
    actions += rt.on_point("CB-045", "closed", False, True, 100.25)
    rt.on_point("CB-045", "ia", 0.0, True, 100.25)
    rt.on_point("LINE-045", "current_a", 0.0, True, 100.25)
    actions += rt.on_protection_event("reclose", "CB-045", "79", "", 0.0, 100.7)
    rt.on_point("CB-045", "ia", 175.0, True, 100.75)
    rt.on_point("LINE-045", "current_a", 175.0, True, 100.75)
    actions += rt.on_point("CB-045", "closed", True, True, 100.75)
    actions += run_ticks(rt, 101.0, 105.0)

    assert moves(rt, "CB-045", 100.0) == ["Closed_Normal>Tripped", "Tripped>Reclosing", "Reclosing>Closed_Normal"]
    assert moves(rt, "LINE-045", 100.0) == ["Operational>Faulted", "Faulted>Operational"]
    assert moves(rt, "SUB-003", 100.0)[:2] == ["Normal_Operation>Feeder_Fault", "Feeder_Fault>Normal_Operation"]
    line = [a for a in actions if isinstance(a, StateChange) and a.agent_id == "LINE-045"]
    assert [(c.new, c.time) for c in line] == [("Faulted", 100.2), ("Operational", 100.75)]
    impacts = [a.payload for a in actions if isinstance(a, BusMessage) and a.kind == "customer_impact"]
    assert [(p["event"], p["customers"], p["critical_customers"]) for p in impacts] == [
        ("supply_lost", 2500, 3),
        ("supply_restored", 2500, 3),
    ]
    assert impacts[1]["interruption_s"] == pytest.approx(0.55) and impacts[1]["reclose_pending"] is True

    # counted at once as one momentary interruption per customer behind CB-045 ...
    r = rt.reliability(0.0, 200.0)
    assert (r["momentary_interruptions"], r["sustained_interruptions"]) == (2500, 0)
    # ... and recorded when the reclose sequence is over (protection resets after its reclaim time)
    assert len(rt.fleet.ledger) == 0
    rt.on_protection_event("reset", "CB-045", "79", "", 0.0, 100.7 + RECLAIM_S)
    meters, starts, ends = rt.fleet.ledger.columns()
    assert len(meters) == 2500 and set(starts) == {100.2} and set(ends) == {100.75}
    r = rt.reliability(0.0, 200.0)
    assert r["momentary_interruptions"] == 2500 and r["maifi"] == pytest.approx(2500 / r["customers_served"])
    assert r["saifi"] == 0.0


def run_sequence(rt: AgentRuntime, close_at: float) -> None:
    """A permanent fault: trip, reclose onto it, trip, reclose, trip, lockout; an operator closes later."""
    t = 100.2
    for shot in range(3):
        rt.on_protection_event("trip", "CB-045", "51P", "A", 3000.0, t)
        rt.on_point("CB-045", "closed", False, True, t + 0.05)
        if shot < 2:
            rt.on_protection_event("reclose", "CB-045", "79", "", 0.0, t + 0.5 + 15 * shot)
            rt.on_point("CB-045", "closed", True, True, t + 0.55 + 15 * shot)
            t += 0.6 + 15 * shot
    rt.on_protection_event("lockout", "CB-045", "79", "", 3000.0, t)
    run_ticks(rt, 101.0, close_at - 1)
    # the crew clears the fault; an authorised close (protection resets its lockout, then closes)
    rt.on_protection_event("reset", "CB-045", "79", "", 0.0, close_at)
    rt.on_switching("CB-045", "close", "local:alice", close_at)
    rt.on_point("CB-045", "closed", True, True, close_at + 0.1)
    run_ticks(rt, close_at + 1, close_at + 10)


@pytest.mark.parametrize(("close_at", "momentary", "sustained"), [(200.0, 2500, 0), (500.0, 0, 2500)])
def test_a_reclose_sequence_is_one_interruption(
    site,
    close_at: float,
    momentary: int,  # type: ignore[no-untyped-def]
    sustained: int,
) -> None:
    rt = AgentRuntime(site, now=0.0)
    healthy(rt, 0.0)
    run_ticks(rt, 0.0, 100.0)
    run_sequence(rt, close_at)
    assert rt.show("CB-045")["state"] == "Closed_Normal"
    r = rt.reliability(0.0, 1000.0)
    assert (r["momentary_interruptions"], r["sustained_interruptions"]) == (momentary, sustained)
    meters, starts, ends = rt.fleet.ledger.columns()
    assert set(starts) == {100.2} and set(ends) == {close_at + 0.1}  # from the first trip to the operator's close
    if sustained:
        assert r["customer_minutes_interrupted"] == pytest.approx(2500 * (close_at + 0.1 - 100.2) / 60)


@pytest.mark.parametrize(
    ("element", "current_a", "words"),
    [
        ("51P", 620.0, "CB-045 tripped on overload (51P phase A, 620 A) on load current, below the fault level 1800 A"),
        ("49", 560.0, "CB-045 tripped on thermal overload (49 phase A, 560 A)"),
        ("81U", 180.0, "CB-045 tripped on underfrequency (81U phase A, 180 A)"),
    ],
)
def test_a_trip_that_is_not_a_fault_is_not_called_one(
    site,
    element: str,
    current_a: float,  # type: ignore[no-untyped-def]
    words: str,
) -> None:
    rt = AgentRuntime(site, now=0.0)
    healthy(rt, 0.0)
    run_ticks(rt, 0.0, 10.0)
    actions = rt.on_protection_event("trip", "CB-045", element, "A", current_a, 10.2)
    actions += rt.on_point("CB-045", "closed", False, True, 10.25)
    actions += run_ticks(rt, 11.0, 13.0)
    alerts = [a.message for a in actions if hasattr(a, "message")]
    assert alerts == [words]  # no "fault" from the line or the substation
    assert rt.show("LINE-045")["state"] == "De-energized" and rt.show("SUB-003")["state"] != "Feeder_Fault"
    cause = rt.show("LINE-045")["last_transitions"][-1]["cause"]
    assert cause == f"CB-045 tripped on {words.split('tripped on ')[1].split(' on load')[0]}"
    trip = next(a for a in actions if isinstance(a, BusMessage) and a.kind == "breaker_trip")
    assert trip.payload["cause"] in ("overload", "thermal_overload", "underfrequency")
