"""The daemon's side of predictive maintenance: reads the history, hands health evaluations to
the transformer agents, turns their maintenance requests into work orders, publishes them and
takes the commands that move them.

* Every `evaluation_period_s` (and on `maintenance.evaluate`), each *monitored* transformer (one
  with a top-oil or a dissolved-gas point) has its history read, aggregated per hour, over the
  trend window; the health inputs (gateway/maintenance/health.py) are computed off the event loop
  and handed to its agent (`AgentRuntime.on_health`), which decides.
* A `maintenance_request` from any transformer agent goes to the coordinator
  (gateway/maintenance/coordinator.py) with the load forecast of the station transformers (their
  `load_kw` history, hourly) and the plant as the switching service sees it; the work order is
  published, retained, on `maintenance/work_orders/<id>`, the customer notices on
  `maintenance/notifications/<id>`, and the recommended backup plan's switching sequence is
  proposed to the sequence runner, to be approved at the window (`switching/approve`).
* Each evaluation's result is published, retained, on `maintenance/health/<transformer>`.

Nothing here decides: it reads, computes what the sans-IO parts need, and carries out.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import SiteConfig
from gateway.maintenance import health as health_mod
from gateway.maintenance.backup import AskNeighbour, declared_capacity
from gateway.maintenance.coordinator import Forecasts, GridInputs, MaintenanceCoordinator, Planned
from gateway.maintenance.dga import GASES
from gateway.maintenance.health import HealthInputs, HealthSettings, TransformerData
from gateway.maintenance.window import ForecastError, weekly_forecast
from gateway.maintenance.workorder import WorkOrder, WorkOrderError

log = logging.getLogger("stima.maintenance")

SNAPSHOT_KEY = "maintenance"
DAY_S = 86400.0
HEALTH_NAMES = (
    "load_kw",
    "load_kvar",
    "primary_power_kw",
    "top_oil_temp_c",
    "ambient_temp_c",
    "fans_running",
    "operating_hours",
    *(g.point_name for g in GASES),
)


@dataclass
class Evaluation:
    transformer: str
    health: HealthInputs
    seconds: float


@dataclass
class _Stats:
    evaluations: int = 0
    last_evaluation_wall: float | None = None
    evaluation_seconds: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0


class MaintenanceService:
    def __init__(
        self,
        site: SiteConfig,
        *,
        store: Any,
        agents: Any,
        switching: Any,
        publish: Callable[..., None],
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        ask_neighbour: AskNeighbour | None = None,
    ) -> None:
        self.site = site
        self.settings = site.maintenance
        self._store = store
        self._agents = agents
        self._switching = switching
        self._publish = publish
        self._wall = wall
        self._monotonic = monotonic
        network = switching.network
        self.coordinator = MaintenanceCoordinator(
            site, self.settings, network, ask_neighbour or declared_capacity(network)
        )
        self.monitored: dict[str, dict[str, str]] = {}
        for agent in site.agents:
            if agent.type != "transformer":
                continue
            names = {n: p for n, p in agent.points.items() if n in HEALTH_NAMES}
            if "top_oil_temp_c" in names or any(g.point_name in names for g in GASES):
                self.monitored[agent.id] = names
        self.station = {
            x: agent.points["load_kw"]
            for x in network.station_nodes
            for agent in [site.agent(x)]
            if "load_kw" in agent.points
        }
        """Station transformers with a load point: their forecasts drive the window and the plans."""
        self.pending: list[dict[str, Any]] = []
        self.replans: list[tuple[str, str]] = []
        """(work order, why): plans to make again (the neighbour answered plan B's question)."""
        self.stats = _Stats()
        self._health_settings = HealthSettings(
            trend_window_days=self.settings.trend_window_days,
            baseline_days=self.settings.baseline_days,
            recent_days=self.settings.recent_days,
            load_band_pu=self.settings.load_band_pu,
            trend_threshold_c_per_month=self.settings.trend_threshold_c_per_month,
        )
        agents.message_listeners.append(self._on_message)
        self._restore()
        if self.monitored and site.history.retention_days < self.settings.trend_window_days:
            log.warning(
                "the history is kept %g days, shorter than the %g-day trend window: trends use what is kept",
                site.history.retention_days,
                self.settings.trend_window_days,
            )

    # ------------------------------------------------------------------ health (blocking parts: run in a thread)

    def transformer_data(self, xfmr: str, now_wall: float) -> TransformerData:
        a = self.site.agent(xfmr).attributes
        age = None
        installed = str(a.get("installation_date", ""))
        try:
            when = dt.datetime.fromisoformat(installed).replace(tzinfo=dt.UTC)
            age = max(0.0, (now_wall - when.timestamp()) / (365.25 * DAY_S))
        except ValueError:
            pass
        from gateway.agents.schema import TransformerAttributes

        attrs = TransformerAttributes.model_validate(a)
        return TransformerData(
            rated_kva=attrs.rated_capacity,
            cooling_type=attrs.cooling_type,
            rated_top_oil_rise_c=attrs.rated_top_oil_rise_c,
            rated_hot_spot_rise_c=attrs.rated_hot_spot_rise_c,
            loss_ratio=attrs.loss_ratio,
            normal_insulation_life_h=attrs.normal_insulation_life_h,
            prior_loss_of_life_percent=attrs.prior_loss_of_life_percent,
            maintenance_interval_h=attrs.maintenance_interval_h,
            operating_hours_at_commissioning=attrs.operating_hours_at_commissioning,
            normal_top_oil_max_c=attrs.normal_top_oil_max_c,
            age_years=age,
            sealed=attrs.oil_preservation == "sealed",
        )

    def evaluate(self, xfmr: str, now_wall: float) -> Evaluation:
        """Read the history of one transformer and compute its health inputs (blocking)."""
        started = time.perf_counter()
        since = now_wall - (self.settings.trend_window_days + 365.0) * DAY_S
        rows = {
            name: self._store.history_aggregated(pid, since, now_wall + 1.0)
            for name, pid in self.monitored[xfmr].items()
        }
        h = health_mod.evaluate(xfmr, rows, self.transformer_data(xfmr, now_wall), now_wall, self._health_settings)
        return Evaluation(xfmr, h, time.perf_counter() - started)

    def forecasts(self, now_wall: float) -> Forecasts:
        """Each station transformer's weekly load forecast and its load now (blocking)."""
        s = self.settings
        by, now_kw = {}, {}
        for xfmr, pid in self.station.items():
            rows = self._store.history_aggregated(pid, now_wall - (s.forecast_weeks * 7 + 1) * DAY_S, now_wall + 1)
            times = [r["bucket_start"] for r in rows]
            values = [abs(float(r["mean"])) for r in rows]
            try:
                by[xfmr] = weekly_forecast(times, values, now_wall, utc_offset_h=s.utc_offset_h, weeks=s.forecast_weeks)
            except ForecastError:
                continue
        for xfmr in self.station:
            value = self._agents.runtime.readings.get(xfmr, {}).get("load_kw")
            if isinstance(value, int | float):
                now_kw[xfmr] = abs(float(value))
        return Forecasts(by, now_kw)

    # ------------------------------------------------------------------ in the event loop

    def apply(self, evaluation: Evaluation) -> None:
        """Hand one evaluation to its agent and carry out what it says."""
        s = self.settings
        now = self._monotonic()
        actions = self._agents.runtime.on_health(
            evaluation.transformer,
            evaluation.health,
            now,
            horizon_days=s.horizon_days,
            threshold=s.probability_threshold,
            acceptable_risk=s.acceptable_risk,
        )
        self._agents.carry_out(actions)
        self.stats.evaluations += 1
        self.stats.last_evaluation_wall = evaluation.health.time
        self.stats.evaluation_seconds = (self.stats.evaluation_seconds + [evaluation.seconds])[-100:]
        memory = self._agents.runtime.memory[evaluation.transformer]
        self._publish(
            f"maintenance/health/{evaluation.transformer}",
            {
                "time": evaluation.health.time,
                "transformer": evaluation.transformer,
                **(getattr(memory, "health", None) or {}),
            },
            retain=True,
        )

    def _on_message(self, message: Any) -> None:
        if message.kind == "maintenance_request":
            self.pending.append({**message.payload, "source": message.source})

    def grid_inputs(self) -> GridInputs:
        sw = self._switching
        unusable = {d: why for d in sw.network.devices if (why := sw._unusable(d))}
        return GridInputs(
            config=sw.state.configuration(),
            loads_kva=sw.authority.loads_kva(self._monotonic()),
            faults=sw.faults,
            unusable=unusable,
            source_voltage_pu=sw.state.source_voltages(),
        )

    def process(self, request: dict[str, Any], forecasts: Forecasts) -> Planned:
        """One maintenance request to a work order (in the event loop: it reads the plant's state)."""
        wall = self._wall()
        planned = self.coordinator.on_request(request, wall=wall, forecasts=forecasts, grid=self.grid_inputs())
        self.stats.requests += 1
        if planned.new and planned.sequence is not None:
            self._switching.runner.add(planned.sequence)
            self._switching._flush()
        self._flush(planned)
        return planned

    def on_quote(self, answer: Any) -> bool:
        """The neighbour's answer to plan B's question (gateway/switching/quote.py): the open work
        orders for that window are queued to be planned again. True when any was."""
        q = answer.question
        why = (
            f"{answer.by} quoted {answer.kva:.0f} kVA through {q.tie} for the window"
            if answer.kva is not None
            else f"no quote through {q.tie} ({answer.note}): plan B keeps the declared capacity"
        )
        hits = [
            wo.id
            for wo in self.coordinator.work_orders.values()
            if wo.status.value != "closed"
            and wo.window.get("start") == q.window_start
            and wo.window.get("end") == q.window_end
        ]
        self.replans += [(wo, why) for wo in hits]
        return bool(hits)

    def replan(self, wo_id: str, why: str, forecasts: Forecasts) -> Planned:
        """Plan a work order's window again (in the event loop: it reads the plant's state)."""
        planned = self.coordinator.replan(wo_id, why, self._wall(), forecasts=forecasts, grid=self.grid_inputs())
        if planned.sequence is not None and planned.sequence.id not in self._switching.runner.sequences:
            self._switching.runner.add(planned.sequence)
            self._switching._flush()
        self._flush(planned)
        return planned

    def command(self, action: str, args: dict[str, Any], who: str, forecasts: Forecasts | None = None) -> WorkOrder:
        """accept, reschedule or close (SCADA's signed command or the local CLI)."""
        wall = self._wall()
        wo = str(args.get("work_order", ""))
        if action == "accept":
            order = self.coordinator.accept(wo, who, wall, external_id=args.get("external_id"))
            self._flush(None)
        elif action == "close":
            order = self.coordinator.close(wo, who, wall, str(args.get("note", "")))
            seq_id = order.backup_sequence
            if seq_id and seq_id in self._switching.runner.sequences:
                seq = self._switching.runner.sequences[seq_id]
                if seq.status.value == "proposed":
                    self._switching.runner.abort(seq_id, who, wall)
                    self._switching._flush()
            self._flush(None)
        elif action == "reschedule":
            planned = self.coordinator.reschedule(
                wo,
                float(args["start"]),
                who,
                wall,
                forecasts=forecasts or self.forecasts(wall),
                grid=self.grid_inputs(),
            )
            if planned.sequence is not None:
                self._switching.runner.add(planned.sequence)
                self._switching._flush()
            order = planned.work_order
            self._flush(planned)
        else:
            raise WorkOrderError(f"unknown work order action {action!r} (expected accept, reschedule, close)")
        return order

    def _flush(self, planned: Planned | None) -> None:
        wall = self._wall()
        for order in self.coordinator.take_changed():
            payload = {"time": wall, **order.to_dict()}
            self._publish(f"maintenance/work_orders/{order.id}", payload, retain=True)
            self._store.append_event(
                wall,
                order.asset,
                "maintenance.work_order",
                {
                    "id": order.id,
                    "status": order.status.value,
                    "priority": order.priority.value,
                    "window": order.window.get("label"),
                    "event": order.history[-1]["event"] if order.history else "created",
                },
            )
            self._publish(
                "events",
                {
                    "time": wall,
                    "source": order.asset,
                    "kind": "maintenance.work_order",
                    "id": order.id,
                    "status": order.status.value,
                    "priority": order.priority.value,
                },
            )
        if planned is not None and planned.notifications:
            self._publish(
                f"maintenance/notifications/{planned.work_order.id}",
                {"time": wall, **planned.notifications},
                retain=True,
            )
        self._save()

    # ------------------------------------------------------------------ views and persistence

    def work_orders(self) -> list[dict[str, Any]]:
        return [w.to_dict() for w in sorted(self.coordinator.work_orders.values(), key=lambda w: w.created)]

    def show(self, wo_id: str) -> dict[str, Any]:
        order = self.coordinator.get(wo_id).to_dict()
        order["notifications"] = self.coordinator.notifications.get(wo_id)
        return order

    def status(self) -> dict[str, Any]:
        times = self.stats.evaluation_seconds
        return {
            "monitored": sorted(self.monitored),
            "evaluations": self.stats.evaluations,
            "last_evaluation": self.stats.last_evaluation_wall,
            "requests": self.stats.requests,
            "work_orders": {
                s: sum(1 for w in self.coordinator.work_orders.values() if w.status.value == s)
                for s in ("proposed", "accepted", "closed")
            },
            "evaluation_s_max": max(times) if times else None,
            "errors": self.stats.errors,
        }

    def import_history(self, path: str, known_points: set[str]) -> dict[str, Any]:
        """Rows of a CSV file into the history (blocking): another historian's export, a monitor's log."""
        from gateway.history import parse_import

        text = Path(path).read_text(encoding="utf-8")
        rows = parse_import(text, path, known_points)
        for i in range(0, len(rows), 2000):
            self._store.append_history(rows[i : i + 2000])
        points = sorted({r.point_id for r in rows})
        span = (min(r.bucket_start for r in rows), max(r.bucket_start for r in rows)) if rows else (None, None)
        return {"rows": len(rows), "points": points, "from": span[0], "to": span[1]}

    def _save(self) -> None:
        try:
            self._store.save_snapshot(SNAPSHOT_KEY, self.coordinator.snapshot(), self._wall())
        except Exception:
            log.exception("maintenance state could not be saved")

    def _restore(self) -> None:
        try:
            data = self._store.load_snapshot(SNAPSHOT_KEY)
            if data:
                self.coordinator.restore(data)
                self.coordinator.take_changed()
        except Exception:
            log.exception("maintenance state could not be restored; starting without work orders")
