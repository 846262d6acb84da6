"""From a transformer's maintenance request to a work order with its window, backup plans and
customer notices. Sans-IO: the daemon's maintenance service gathers the inputs (the load
forecast from the history, the plant's configuration and loads from the switching service) and
carries out what comes back (publishing, proposing the backup sequence).

For each request:

1. one open work order per asset: a further request for an asset that has one adds to its
   history (the latest probability) and changes nothing else;
2. the lead time: the failure model's `recommended_within_days`, kept within
   [`min_lead_time_days`, `max_lead_time_days`] (a request without a probability, e.g. a hot
   spot above critical, gets the minimum);
3. the window: the lowest-impact slot of the transformer's load forecast inside the lead time,
   after the critical customers' notice (gateway/maintenance/window.py);
4. the plans A/B/C at the window's forecast loads: each section's present load scaled by the
   forecast of the station transformer that feeds it (its peak in the window over its load now);
   the recommended plan is the first of A, B, C that restores everyone, else the one that keeps
   every critical customer supplied with the least shed;
5. the work order (tasks, parts, crew, success criteria from the evidence) and the notification
   lists for the recommended plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.config import MaintenanceConfig, SiteConfig
from gateway.maintenance import customers, workorder
from gateway.maintenance.backup import AskNeighbour, BackupPlan, BackupSettings, plan_backup, supplied_through
from gateway.maintenance.window import LoadForecast, choose_window
from gateway.maintenance.workorder import Evidence, WorkOrder, WorkOrderError, WorkOrderEvent, WorkOrderState
from gateway.switching.faults import FaultBook
from gateway.switching.network import Network
from gateway.switching.sequences import Sequence

HOUR_S = 3600.0
DAY_S = 86400.0
RATIO_LIMITS = (0.05, 3.0)
"""A forecast ratio beyond these is a measurement gap, not a load: it is held at the edge."""


@dataclass(frozen=True, slots=True)
class GridInputs:
    """The plant now, from the switching service."""

    config: Mapping[str, bool | None]
    loads_kva: Mapping[str, complex]
    faults: FaultBook = field(default_factory=FaultBook)
    unusable: Mapping[str, str] = field(default_factory=dict)
    source_voltage_pu: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Forecasts:
    """Each station transformer's load forecast and its load now (kW), from the history."""

    by_transformer: Mapping[str, LoadForecast]
    load_now_kw: Mapping[str, float]


@dataclass
class Planned:
    work_order: WorkOrder
    plans: list[BackupPlan]
    notifications: dict[str, Any]
    sequence: Sequence | None
    new: bool = True


class MaintenanceCoordinator:
    def __init__(
        self, site: SiteConfig, settings: MaintenanceConfig, network: Network, ask_neighbour: AskNeighbour | None = None
    ) -> None:
        self.site = site
        self.settings = settings
        self.network = network
        self.ask_neighbour = ask_neighbour
        self.work_orders: dict[str, WorkOrder] = {}
        self.plans: dict[str, list[BackupPlan]] = {}
        self.notifications: dict[str, dict[str, Any]] = {}
        self.changed: list[WorkOrder] = []

    # ------------------------------------------------------------------ requests

    def open_for(self, asset: str) -> WorkOrder | None:
        return next(
            (w for w in self.work_orders.values() if w.asset == asset and w.status is not WorkOrderState.CLOSED), None
        )

    def on_request(self, request: Mapping[str, Any], *, wall: float, forecasts: Forecasts, grid: GridInputs) -> Planned:
        asset = str(request.get("element"))
        probability = request.get("failure_probability")
        current = self.open_for(asset)
        if current is not None:
            note = str(request.get("reason", ""))
            if probability is not None:
                note += f"; probability of failure within {request.get('horizon_days')} days {float(probability):.0%}"
            updated = workorder.apply(current, WorkOrderEvent.EVIDENCE, str(request.get("source", asset)), wall, note)
            self._put(updated)
            return Planned(
                updated, self.plans.get(updated.id, []), self.notifications.get(updated.id, {}), None, new=False
            )
        s = self.settings
        within = request.get("recommended_within_days")
        lead = s.min_lead_time_days if within is None else float(within)
        lead = min(max(lead, s.min_lead_time_days), s.max_lead_time_days)
        critical = self._critical_customers(asset)
        forecast = self._forecast_for(asset, forecasts, grid, wall)
        chosen = choose_window(
            forecast,
            wall,
            duration_h=s.window_hours,
            notice_h=s.critical_notice_h if critical else s.customer_notice_h,
            lead_days=lead,
        )
        wo_id = workorder.work_order_id(s.work_order_prefix, asset, wall, s.utc_offset_h, tuple(self.work_orders))
        window = {
            **chosen.to_dict(),
            "lead_time_days": round(lead, 1),
            "load_factors": {k: round(v, 4) for k, v in self.load_factors(chosen.start, chosen.end, forecasts).items()},
        }
        plans, recommended = self._plans(asset, chosen.start, chosen.end, forecasts, grid, wall, wo_id)
        health = request.get("health") or {}
        evidence = _evidence(health, request, self._rated_kva(asset))
        tasks, parts, equipment, criteria, skill = workorder.contents(evidence)
        priority = workorder.priority_for(
            None if probability is None else float(probability),
            s.probability_threshold,
            critical,
            str(request.get("reason", "")),
            None if within is None else float(within),
        )
        chosen_plan = next((p for p in plans if p.name == recommended), None)
        notes = customers.notifications(
            self.site.meter_groups,
            self._section_groups(),
            chosen_plan.to_dict() if chosen_plan else {},
            window,
            work_order=wo_id,
            asset=asset,
            settings=customers.NoticeSettings(s.critical_notice_h, s.customer_notice_h),
        )
        order = WorkOrder(
            id=wo_id,
            asset=asset,
            asset_type=str(request.get("element_type", "transformer")),
            substation=self.site.site.substation_id,
            status=WorkOrderState.PROPOSED,
            priority=priority,
            created=wall,
            reason=str(request.get("reason", "")),
            tasks=tasks,
            parts=parts,
            equipment=tuple(equipment),
            crew=s.crew,
            crew_skill=skill,
            window=window,
            duration_h=float(s.window_hours),
            success_criteria=criteria,
            assessment={
                k: request.get(k)
                for k in (
                    "failure_probability",
                    "horizon_days",
                    "failure_mode",
                    "recommended_within_days",
                    "contributions",
                    "dga_status",
                    "duval_zone",
                    "health",
                )
            },
            plans=tuple(p.to_dict() for p in plans),
            recommended_plan=recommended,
            backup_sequence=chosen_plan.sequence.id if chosen_plan and chosen_plan.sequence else None,
            customers={
                "critical": critical,
                "customers_notified": notes["customers_notified"],
                "critical_notified": notes["critical_notified"],
                "interrupted_for_the_window": notes["interrupted_for_the_window"],
            },
            history=(
                {
                    "time": wall,
                    "who": str(request.get("source", asset)),
                    "event": "created",
                    "note": str(request.get("reason", "")),
                },
            ),
        )
        self._put(order)
        self.plans[wo_id] = plans
        self.notifications[wo_id] = notes
        sequence = chosen_plan.sequence if chosen_plan and chosen_plan.validated and chosen_plan.steps else None
        return Planned(order, plans, notes, sequence)

    # ------------------------------------------------------------------ commands

    def get(self, wo_id: str) -> WorkOrder:
        try:
            return self.work_orders[wo_id]
        except KeyError:
            raise WorkOrderError(f"no work order {wo_id!r}") from None

    def accept(self, wo_id: str, who: str, wall: float, external_id: str | None = None) -> WorkOrder:
        order = self.get(wo_id)
        return self._put(
            workorder.apply(
                order,
                WorkOrderEvent.ACCEPT,
                who,
                wall,
                f"accepted{' as ' + external_id if external_id else ''}",
                external_id=external_id or order.external_id,
            )
        )

    def close(self, wo_id: str, who: str, wall: float, note: str = "") -> WorkOrder:
        return self._put(workorder.apply(self.get(wo_id), WorkOrderEvent.CLOSE, who, wall, note or "closed"))

    def reschedule(
        self, wo_id: str, start: float, who: str, wall: float, *, forecasts: Forecasts, grid: GridInputs
    ) -> Planned:
        """Move the window to `start`: the plans and notices are made again for it."""
        order = self.get(wo_id)
        if order.status is WorkOrderState.CLOSED:
            raise WorkOrderError(f"work order {wo_id} is closed: it takes no reschedule")
        if not math.isfinite(start) or start < wall:
            raise WorkOrderError("a new window must start in the future")
        end = start + order.duration_h * HOUR_S
        plans, recommended = self._plans(order.asset, start, end, forecasts, grid, wall, wo_id)
        forecast = self._forecast_for(order.asset, forecasts, grid, wall)
        peak, energy = forecast.over(start, int(order.duration_h))
        from gateway.maintenance.window import local_label

        off = self.settings.utc_offset_h
        window = {
            **dict(order.window),
            "start": start,
            "end": end,
            "label": f"{local_label(start, off)} to {local_label(end, off)[-5:]} "
            f"(UTC{'+' if off >= 0 else '-'}{abs(off):g})",
            "forecast_peak_kw": round(peak, 1),
            "forecast_energy_kwh": round(energy, 1),
            "reasons": [f"rescheduled by {who}"],
            "load_factors": {k: round(v, 4) for k, v in self.load_factors(start, end, forecasts).items()},
        }
        chosen_plan = next((p for p in plans if p.name == recommended), None)
        notes = customers.notifications(
            self.site.meter_groups,
            self._section_groups(),
            chosen_plan.to_dict() if chosen_plan else {},
            window,
            work_order=wo_id,
            asset=order.asset,
            settings=customers.NoticeSettings(self.settings.critical_notice_h, self.settings.customer_notice_h),
        )
        updated = workorder.apply(
            order,
            WorkOrderEvent.RESCHEDULE,
            who,
            wall,
            f"window moved to {window['label']}",
            window=window,
            plans=tuple(p.to_dict() for p in plans),
            recommended_plan=recommended,
            backup_sequence=chosen_plan.sequence.id if chosen_plan and chosen_plan.sequence else None,
        )
        self._put(updated)
        self.plans[wo_id] = plans
        self.notifications[wo_id] = notes
        sequence = chosen_plan.sequence if chosen_plan and chosen_plan.validated and chosen_plan.steps else None
        return Planned(updated, plans, notes, sequence, new=False)

    def replan(self, wo_id: str, why: str, wall: float, *, forecasts: Forecasts, grid: GridInputs) -> Planned:
        """The same window's plans made again (the neighbour's answer came): recorded as evidence."""
        order = self.get(wo_id)
        if order.status is WorkOrderState.CLOSED:
            raise WorkOrderError(f"work order {wo_id} is closed: its plans are not made again")
        start, end = float(order.window["start"]), float(order.window["end"])
        plans, recommended = self._plans(order.asset, start, end, forecasts, grid, wall, wo_id)
        chosen_plan = next((p for p in plans if p.name == recommended), None)
        notes = customers.notifications(
            self.site.meter_groups,
            self._section_groups(),
            chosen_plan.to_dict() if chosen_plan else {},
            dict(order.window),
            work_order=wo_id,
            asset=order.asset,
            settings=customers.NoticeSettings(self.settings.critical_notice_h, self.settings.customer_notice_h),
        )
        updated = workorder.apply(
            order,
            WorkOrderEvent.EVIDENCE,
            "backup plans",
            wall,
            why,
            plans=tuple(p.to_dict() for p in plans),
            recommended_plan=recommended,
            backup_sequence=chosen_plan.sequence.id if chosen_plan and chosen_plan.sequence else None,
        )
        self._put(updated)
        self.plans[wo_id] = plans
        self.notifications[wo_id] = notes
        sequence = chosen_plan.sequence if chosen_plan and chosen_plan.validated and chosen_plan.steps else None
        return Planned(updated, plans, notes, sequence, new=False)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        return {"work_orders": [w.to_dict() for w in self.work_orders.values()], "notifications": self.notifications}

    def restore(self, data: Mapping[str, Any]) -> None:
        for d in data.get("work_orders", []):
            order = WorkOrder.from_dict(d)
            self.work_orders[order.id] = order
        self.notifications.update(data.get("notifications", {}))

    def take_changed(self) -> list[WorkOrder]:
        out, self.changed = self.changed, []
        return out

    # ------------------------------------------------------------------ pieces

    def _put(self, order: WorkOrder) -> WorkOrder:
        self.work_orders[order.id] = order
        self.changed.append(order)
        return order

    def _rated_kva(self, asset: str) -> float:
        try:
            return float(self.site.agent(asset).attributes.get("rated_capacity", 1000.0))
        except KeyError:
            return 1000.0

    def _section_groups(self) -> dict[str, tuple[str, ...]]:
        return {sid: sec.meter_groups for sid, sec in self.network.sections.items()}

    def _critical_customers(self, asset: str) -> int:
        node = self.network.station_nodes.get(asset)
        if node is None:
            return sum(len(g.critical_meters) for g in self.site.meter_groups if g.connected_transformer == asset)
        en = self.network.energise(self.network.normal_configuration())
        fed = [n for n in en.source_of if supplied_through(en, n, node)]
        return self.network.critical_customers(fed)

    def _forecast_for(self, asset: str, forecasts: Forecasts, grid: GridInputs, wall: float) -> LoadForecast:
        f = forecasts.by_transformer.get(asset)
        if f is not None:
            return f
        now_kw = forecasts.load_now_kw.get(asset)
        if now_kw is None:
            node = self.network.station_nodes.get(asset)
            now_kw = sum(abs(v) for k, v in grid.loads_kva.items() if node is not None and k != node)
        return LoadForecast(tuple([float(now_kw)] * 168), self.settings.utc_offset_h, 0.0, 168)

    def _plans(
        self, asset: str, start: float, end: float, forecasts: Forecasts, grid: GridInputs, wall: float, wo_id: str
    ) -> tuple[list[BackupPlan], str | None]:
        loads = self._window_loads(asset, start, end, forecasts, grid)
        s = self.settings
        plans = plan_backup(
            self.network,
            grid.config,
            loads,
            asset,
            faults=grid.faults,
            ask_neighbour=self.ask_neighbour,
            substation=self.site.site.substation_id,
            window=(start, end),
            request_id=f"{wo_id}-B",
            settings=BackupSettings(step_time_s=s.step_time_s),
            unusable=grid.unusable,
            created=wall,
            source_voltage_pu=grid.source_voltage_pu,
        )
        for p in plans:
            if p.sequence is not None:
                p.sequence = replace(
                    p.sequence,
                    name=f"{wo_id} plan {p.name}: take {asset} out"[:120],
                    plan={**p.to_dict(), "work_order": wo_id},
                )
        return plans, _recommend(plans)

    @staticmethod
    def load_factors(start: float, end: float, forecasts: Forecasts) -> dict[str, float]:
        """Each station transformer's forecast peak in the window over its load now."""
        hours = max(1, int(round((end - start) / HOUR_S)))
        ratios: dict[str, float] = {}
        for xfmr, f in forecasts.by_transformer.items():
            now_kw = forecasts.load_now_kw.get(xfmr)
            if now_kw is None or now_kw <= 0:
                continue
            peak, _ = f.over(start, hours)
            ratios[xfmr] = min(max(peak / now_kw, RATIO_LIMITS[0]), RATIO_LIMITS[1])
        return ratios

    def _window_loads(
        self, asset: str, start: float, end: float, forecasts: Forecasts, grid: GridInputs
    ) -> dict[str, complex]:
        """Each section's load now, scaled by the forecast of the station transformer feeding it."""
        ratios = self.load_factors(start, end, forecasts)
        default = ratios.get(asset, 1.0)
        en = self.network.energise(grid.config)
        out: dict[str, complex] = {}
        for sec, kva in grid.loads_kva.items():
            feeder = _station_of(en, sec, self.network)
            out[sec] = kva * ratios.get(feeder, default) if feeder is not None else kva * default
        return out


def _recommend(plans: list[BackupPlan]) -> str | None:
    offered = [p for p in plans if p.validated]
    for p in offered:
        if p.coverage >= 0.999 and not p.shed_kva and not p.left_out:
            return p.name
    keeping = [p for p in offered if p.critical_restored == p.critical_total]
    if keeping:
        return max(keeping, key=lambda p: (p.customers_restored, -len(p.steps))).name
    return max(offered, key=lambda p: (p.critical_restored, p.customers_restored)).name if offered else None


def _station_of(en: Any, node: str, network: Network) -> str | None:
    k, hops = node, 0
    while hops < 10_000:
        if k in network.station_nodes:
            return k
        if k not in en.parent:
            return None
        k = en.parent[k][0]
        hops += 1
    return None


def _evidence(health: Mapping[str, Any], request: Mapping[str, Any], rated_kva: float) -> Evidence:
    trend = health.get("top_oil_trend") or {}
    eff = health.get("efficiency") or {}
    duty = health.get("cooling_duty") or {}
    dga = health.get("dga") or {}
    c2h2: Mapping[str, Any] = next((g for g in dga.get("gases", []) if g.get("gas") == "C2H2"), {})
    hours, interval = health.get("operating_hours"), health.get("maintenance_interval_h")
    top, normal = health.get("top_oil_recent_c"), health.get("normal_top_oil_max_c")
    return Evidence(
        failure_mode_key=str(request.get("failure_mode_key") or "ageing"),
        thermal_trend=bool(trend.get("detected")),
        top_oil_excess=top is not None and normal is not None and top > normal,
        cooling=bool(duty) and duty.get("recent", 0) - duty.get("baseline", 0) > 0.2,
        acetylene=bool(c2h2) and int(c2h2.get("status", 1)) >= 2,
        dga_status=int(dga.get("status", 1)) if dga else 1,
        efficiency_drop=bool(eff) and float(eff.get("drop_pct_points", 0)) > 0.2,
        hours_due=hours is not None and interval is not None and hours >= 0.9 * interval,
        ageing=float(health.get("loss_of_life_percent") or 0) > 50 or "aging" in str(request.get("reason", "")),
        normal_top_oil_max_c=normal,
        baseline_efficiency_pct=eff.get("baseline_pct"),
        rated_kva=rated_kva,
    )
