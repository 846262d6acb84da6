"""From a maintenance request to a work order: window, plans, contents, notices, and its life
through accept, reschedule and close."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from gateway.agents.fsm import IGNORE
from gateway.config import validate
from gateway.maintenance import workorder
from gateway.maintenance.backup import TransferOffer, TransferRequest
from gateway.maintenance.coordinator import Forecasts, GridInputs, MaintenanceCoordinator
from gateway.maintenance.window import LoadForecast, hour_of_week
from gateway.maintenance.workorder import WorkOrderError, WorkOrderEvent, WorkOrderState
from gateway.switching.network import Network
from hil.scenarios.predictive_maintenance import site
from tests.test_maintenance_backup import NIGHT

# Wednesday 2025-10-22 12:00 in Nairobi (UTC+3)
NOW = dt.datetime(2025, 10, 22, 9, 0, tzinfo=dt.UTC).timestamp()
NOON = {k: v * 2.0 for k, v in NIGHT.items()}


def profile(now_kw: float) -> LoadForecast:
    """Half the noon load at night (00:00-06:00), lighter still on Sunday night."""
    values = []
    for h in range(168):
        day, hour = divmod(h, 24)
        v = now_kw * (0.5 if hour < 6 else 1.0)
        if day == 6 and hour < 6:
            v *= 0.9
        values.append(v)
    return LoadForecast(tuple(values), 3.0, 4.0)


def request(**extra: Any) -> dict[str, Any]:
    health = {
        "top_oil_trend": {"detected": True, "slope_c_per_month": 2.0},
        "top_oil_recent_c": 78.0,
        "normal_top_oil_max_c": 75.0,
        "efficiency": {"baseline_pct": 98.2, "recent_pct": 97.5, "drop_pct_points": 0.7},
        "cooling_duty": {"baseline": 0.4, "recent": 1.0},
        "operating_hours": 87_500,
        "maintenance_interval_h": 90_000,
        "loss_of_life_percent": 25.0,
        "dga": {"status": 3, "gases": [{"gas": "C2H2", "ppm": 12.0, "status": 3}]},
    }
    return {
        "element": "XFMR-234",
        "element_type": "transformer",
        "source": "XFMR-234",
        "reason": "45 % chance of failure within 60 days (winding insulation breakdown)",
        "failure_probability": 0.45,
        "horizon_days": 60,
        "failure_mode": "winding insulation breakdown",
        "failure_mode_key": "winding",
        "recommended_within_days": 28.9,
        "contributions": [],
        "dga_status": 3,
        "duval_zone": "D2",
        "health": health,
        **extra,
    }


@pytest.fixture
def coordinator() -> MaintenanceCoordinator:
    s = validate(site())
    net = Network.from_site(s)

    def ask(req: TransferRequest) -> TransferOffer | None:
        return TransferOffer(req.request_id, req.tie, 1500.0, req.window_end, "SUB-006 (test double)")

    return MaintenanceCoordinator(s, s.maintenance, net, ask)


def inputs(coordinator: MaintenanceCoordinator) -> tuple[Forecasts, GridInputs]:
    net = coordinator.network
    now_234 = sum(abs(v) for k, v in NOON.items() if k.startswith("LINE-045"))
    now_235 = sum(abs(v) for k, v in NOON.items() if not k.startswith("LINE-045"))
    forecasts = Forecasts(
        {"XFMR-234": profile(now_234), "XFMR-235": profile(now_235)}, {"XFMR-234": now_234, "XFMR-235": now_235}
    )
    return forecasts, GridInputs(net.normal_configuration(), NOON)


def test_a_request_becomes_a_work_order_with_window_plans_and_notices(coordinator: MaintenanceCoordinator) -> None:
    forecasts, grid = inputs(coordinator)
    planned = coordinator.on_request(request(), wall=NOW, forecasts=forecasts, grid=grid)
    wo = planned.work_order
    assert wo.id == "PM-2025-1022-234"
    assert wo.status is WorkOrderState.PROPOSED and wo.priority is workorder.Priority.HIGH
    # the window: Sunday night, after the 72 h the hospital needs, within the recommended 28.9 days
    assert hour_of_week(wo.window["start"], 3.0) == 6 * 24
    assert wo.window["label"].startswith("Sunday 2025-10-26 00:00 to 06:00")
    assert NOW + 72 * 3600 <= wo.window["start"] and wo.window["end"] <= NOW + 28.9 * 86400
    assert wo.duration_h == 6
    tasks = " ".join(wo.tasks)
    for word in ("oil sampling", "thermal imaging", "tap changer", "turns-ratio"):
        assert word in tasks
    assert wo.parts[0].item.startswith("transformer oil") and wo.parts[0].quantity == 500
    assert any("below 70 °C" in c for c in wo.success_criteria)
    assert wo.crew == "Team Bravo (transformer specialists)"
    assert [p["plan"] for p in wo.plans] == ["A", "B", "C"]
    assert all(p["validated"] for p in wo.plans)
    assert wo.recommended_plan in ("B", "C")
    assert planned.sequence is not None and planned.sequence.id == wo.backup_sequence
    assert planned.sequence.name.startswith(wo.id)
    # the window's loads are the noon loads scaled to the forecast: half at night, 0.9 of that on Sunday
    a = next(p for p in wo.plans if p["plan"] == "A")
    assert a["required_mva"] == pytest.approx(
        sum(abs(v) for k, v in NIGHT.items() if k.startswith("LINE-045")) * 0.9 / 1000, abs=1e-3
    )  # rounded to the kVA
    notes = planned.notifications
    assert notes["critical_notified"] == 3
    assert all(c["lead_h"] == 72 and c["notify_at"] == wo.window["start"] - 72 * 3600 for c in notes["critical"])
    assert all(g["lead_h"] == 48 for g in notes["customers"])
    chosen = next(p for p in wo.plans if p["plan"] == wo.recommended_plan)
    moved = sum(coordinator.network.sections[n].customers for n in chosen["brief_interruption_sections"])
    assert notes["customers_notified"] == 2500 + moved  # LINE-045's, and those moved onto another source
    shed = sum(g["count"] for g in notes["customers"] if g["impact"] == "interruption")
    assert shed == chosen["customers_shed"]
    assert wo.customers["critical_notified"] == 3


def test_a_second_request_adds_evidence_to_the_open_order(coordinator: MaintenanceCoordinator) -> None:
    forecasts, grid = inputs(coordinator)
    first = coordinator.on_request(request(), wall=NOW, forecasts=forecasts, grid=grid)
    again = coordinator.on_request(request(failure_probability=0.5), wall=NOW + 3600, forecasts=forecasts, grid=grid)
    assert not again.new and again.work_order.id == first.work_order.id
    assert len(coordinator.work_orders) == 1
    assert "50%" in again.work_order.history[-1]["note"]


def test_accept_reschedule_close_and_nothing_after_close(coordinator: MaintenanceCoordinator) -> None:
    forecasts, grid = inputs(coordinator)
    wo = coordinator.on_request(request(), wall=NOW, forecasts=forecasts, grid=grid).work_order
    accepted = coordinator.accept(wo.id, "scada:maximo", NOW + 60, external_id="WO-88231")
    assert accepted.status is WorkOrderState.ACCEPTED and accepted.external_id == "WO-88231"
    new_start = wo.window["start"] + 7 * 86400
    moved = coordinator.reschedule(wo.id, new_start, "scada:maximo", NOW + 120, forecasts=forecasts, grid=grid)
    assert moved.work_order.status is WorkOrderState.ACCEPTED
    assert moved.work_order.window["start"] == new_start and "rescheduled" in moved.work_order.window["reasons"][0]
    assert moved.notifications["window"]["start"] == new_start
    closed = coordinator.close(wo.id, "local:alice", NOW + 200, "done, all tests passed")
    assert closed.status is WorkOrderState.CLOSED
    for action in (
        lambda: coordinator.accept(wo.id, "x", NOW),
        lambda: coordinator.close(wo.id, "x", NOW),
        lambda: coordinator.reschedule(wo.id, new_start, "x", NOW, forecasts=forecasts, grid=grid),
    ):
        with pytest.raises(WorkOrderError, match="closed"):
            action()
    with pytest.raises(WorkOrderError, match="no work order"):
        coordinator.accept("PM-nope", "x", NOW)
    with pytest.raises(WorkOrderError, match="future"):
        fresh = coordinator.on_request(request(), wall=NOW, forecasts=forecasts, grid=grid).work_order
        coordinator.reschedule(fresh.id, NOW - 10, "x", NOW, forecasts=forecasts, grid=grid)
    assert [h["event"] for h in closed.history] == ["created", "accept", "reschedule", "close"]


def test_the_work_order_table_and_ids() -> None:
    t = workorder.TABLE
    assert t.reachable() == set(WorkOrderState)
    assert t.rows[WorkOrderState.PROPOSED][WorkOrderEvent.RESCHEDULE] is IGNORE
    assert workorder.work_order_id("PM", "XFMR-234", NOW, 3.0) == "PM-2025-1022-234"
    assert workorder.work_order_id("PM", "XFMR-234", NOW, 3.0, ["PM-2025-1022-234"]) == "PM-2025-1022-234-2"


def test_snapshot_and_restore_keep_the_orders(coordinator: MaintenanceCoordinator) -> None:
    forecasts, grid = inputs(coordinator)
    wo = coordinator.on_request(request(), wall=NOW, forecasts=forecasts, grid=grid).work_order
    other = MaintenanceCoordinator(coordinator.site, coordinator.settings, coordinator.network)
    other.restore(coordinator.snapshot())
    assert other.get(wo.id) == wo
    assert other.open_for("XFMR-234") == wo


def test_the_work_order_shows_its_plan_and_the_validated_way_back(coordinator: MaintenanceCoordinator) -> None:
    from gateway.cli.maintenance import _order_lines

    forecasts, grid = inputs(coordinator)
    wo = coordinator.on_request(request(), wall=NOW + 1, forecasts=forecasts, grid=grid).work_order.to_dict()
    chosen = next(p for p in wo["plans"] if p["plan"] == wo["recommended_plan"])
    assert chosen["return_validated"] and chosen["return_steps"][0]["device"] == "CB-234P"
    text = "\n".join(_order_lines(wo))
    assert f"plan {chosen['plan']} steps: open CB-045" in text
    assert "way back after the window (validated): close CB-234P" in text
