"""The whole gateway, built from an example site, run for an hour of gateway time in process.

The IEDs and the broker are in memory (tests/support/harness.py); protection, agents,
switching, telemetry, history and alarms are the real ones, on a virtual-time event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.scheduling import Periods
from gateway.contract.ports import Priority
from tests.support.harness import HOUR_IN_A_SECOND, GatewayHarness, example_site

FEEDER = {
    "CB-044.ia": 120.0,
    "CB-044.ib": 118.0,
    "CB-044.ic": 121.0,
    "CB-044.in": 2.0,
    "CB-044.voltage_kv": 11.0,
    "CB-044.frequency_hz": 50.0,
    "CB-044.closed": True,
}
DEAD = {"CB-044.ia": 0.0, "CB-044.ib": 0.0, "CB-044.ic": 0.0, "CB-044.in": 0.0, "CB-044.closed": False}
FAULT = {"CB-044.ia": 5200.0, "CB-044.ib": 5100.0, "CB-044.ic": 5300.0}
"""A three-phase fault above CB-044's 50P pickup (3000 A): a first, instantaneous trip."""


def _queues(h: GatewayHarness) -> dict[str, int]:
    gw = h.gw
    return {
        "tasks": len(asyncio.all_tasks(h.loop)),
        "timers": h.pending_timers(),
        "telemetry_pending": gw.telemetry.pending,
        "threads_running": h.loop.threads_running,
    }


def _load_a(minute: int) -> float:
    """CB-044's phase current in a given minute: a load that moves by more than the deadband."""
    return 120.0 + 10.0 * (minute % 6)


def _run_minutes(h: GatewayHarness, first: int, last: int) -> None:
    """Minutes first..last-1 of gateway time, the feeder's load set half-way through each."""
    for minute in range(first, last):
        h.run_for(60.0 * minute + 30.0 - h.loop.time())
        if h.gw.image["CB-044.closed"].value is True:
            h.set(
                {"CB-044.ia": _load_a(minute), "CB-044.ib": _load_a(minute) - 2.0, "CB-044.ic": _load_a(minute) + 1.0}
            )
        h.run_for(60.0 * (minute + 1) - h.loop.time())


def test_an_hour_of_gateway_time_trips_recloses_reports_and_holds_its_queues(tmp_path: Path) -> None:
    site = example_site("sub-003.toml", tmp_path)
    with GatewayHarness(site, tmp_path, periods=HOUR_IN_A_SECOND) as h:
        # the plant: a trip opens CB-044 and its current stops; a close restores the feeder
        h.transport.reactions[("CB-044.trip_cmd", True)] = DEAD
        h.transport.reactions[("CB-044.close_cmd", True)] = FEEDER
        h.set(FEEDER)
        _run_minutes(h, 0, 10)
        settled = _queues(h)
        assert h.transport.writes == []  # a healthy feeder: nothing to do
        assert h.gw.protection is not None
        assert h.gw.protection.engine.status("CB-044")["reclose_state"] == "ready"

        h.set(FAULT)
        h.run_for(5.0)
        writes = [(w.point_id, w.value, w.priority) for w in h.transport.writes]
        # the trip on the fault's first sample, the reclose after the 0.5 s dead time
        assert writes == [
            ("CB-044.trip_cmd", True, Priority.PROTECTION),
            ("CB-044.close_cmd", True, Priority.PROTECTION),
        ]
        assert h.transport.writes[0].time_s == pytest.approx(600.0, abs=1e-6)
        assert h.transport.writes[1].time_s - h.transport.writes[0].time_s >= 0.5
        switched = ("protection.trip", "protection.reclose", "protection.lockout")
        events = [m.payload["kind"] for m in h.uplink.on("events") if m.payload.get("source") == "CB-044"]
        assert [k for k in events if k in switched] == ["protection.trip", "protection.reclose"], events
        logged = [e["kind"] for e in h.store.events(source="CB-044")]
        assert [k for k in logged if k in switched] == ["protection.trip", "protection.reclose"], logged

        _run_minutes(h, 10, 60)
        assert h.loop.time() == pytest.approx(3600.0)
        # after its reclaim the breaker is ready again and closed; nothing more was written
        assert h.gw.protection.engine.status("CB-044")["reclose_state"] == "ready"
        assert h.gw.image["CB-044.closed"].value is True
        assert len(h.transport.writes) == 2

        # an integrity report early in every minute of the hour, carrying the load of the minute before
        integrity = [m for m in h.uplink.on("integrity") if m.payload["part"] == 1]
        assert set(range(60)) <= {int(m.time_s // 60.0) for m in integrity} <= set(range(61))
        for m in integrity:
            minute = int(m.time_s // 60.0)
            assert m.time_s - 60.0 * minute < 30.0
            ia = next(x["v"] for x in m.payload["metrics"] if x["id"] == "CB-044.ia")
            if minute >= 2 and minute != 10:  # minute 10's report and the fault share an instant
                assert ia == _load_a(minute - 1), (minute, ia)
        # the load's changes reported by exception, each minute's
        reported = [
            x["v"] for m in h.uplink.on("telemetry") for x in m.payload.get("metrics", []) if x.get("id") == "CB-044.ia"
        ]
        assert {_load_a(n) for n in range(60)} <= set(reported)
        # a history bucket for every minute of the hour in the state database
        rows = h.store.history("CB-044.ia", since=h.clock.wall() - 3600.0, until=h.clock.wall())
        assert len(rows) >= 59
        # nothing grew: the same tasks, timers and empty queues as after the first ten minutes
        assert _queues(h) == settled


def test_full_rate_periods_trip_and_reclose_on_the_protection_clock(tmp_path: Path) -> None:
    """With the daemon's own periods (5 ms protection clock): the 0.5 s dead time ends in the
    reclose within one protection step."""
    site = example_site("sub-003.toml", tmp_path)
    with GatewayHarness(site, tmp_path, periods=Periods()) as h:
        h.transport.reactions[("CB-044.trip_cmd", True)] = DEAD
        h.transport.reactions[("CB-044.close_cmd", True)] = FEEDER
        h.set(FEEDER)
        h.run_for(2.0)
        h.set(FAULT)
        h.run_for(2.0)
        trip, close = h.transport.writes[:2]
        assert (trip.point_id, close.point_id) == ("CB-044.trip_cmd", "CB-044.close_cmd")
        assert 0.5 <= close.time_s - trip.time_s <= 0.5 + Periods().protection_step_s + 1e-9


def test_an_operator_opens_a_breaker_through_the_control_socket(tmp_path: Path) -> None:
    """The control socket's operations on the in-process gateway: the operator's open reaches
    the IED's trip coil, and the plant's answer shows in the breaker's status."""
    site = example_site("sub-003.toml", tmp_path)
    with GatewayHarness(site, tmp_path, periods=HOUR_IN_A_SECOND) as h:
        h.transport.reactions[("CB-044.trip_cmd", True)] = DEAD
        h.set(FEEDER)
        h.run_for(10.0)
        h.serve_control()
        assert h.call("breaker.status", breaker="CB-044")["position"] == "closed"
        result = h.call("breaker.operate", breaker="CB-044", action="open", authorised=True, reason="feeder work")
        assert result["ok"] and result["origin"].startswith("local:")
        h.run_for(5.0)
        assert [(w.point_id, w.value) for w in h.transport.writes] == [("CB-044.trip_cmd", True)]
        status = h.call("breaker.status", breaker="CB-044")
        assert (status["position"], status["agent_state"], status["current_a"]) == ("open", "Open_Manual", 0.0)
        kinds = {e["kind"] for e in h.call("events", source="CB-044")}
        assert {"switching.selected", "switching.accepted", "switching.done"} <= kinds  # audited
        with pytest.raises(Exception, match="no such point"):
            h.call("points.read", ids=["CB-999.ia"])
