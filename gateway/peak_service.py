"""The daemon's side of peak demand: the peak manager (gateway/switching/peak.py) wired to the
substation's forecast, the agents, the switching authority, the AMI feed and the neighbours.

Each action the manager starts is carried out where it belongs:

- `cvr`: the substation transformers' agents are asked for CVR (`cvr` request); their tap
  changers lower the regulated voltage within the band, every tap move through the authority.
- `capacitors`: the capacitor banks' agents are asked for maximum var support.
- `demand_response`: events to the enrolled meter groups through the AMI feed
  (gateway/demand_response.py); in force once a concentrator confirms.
- `der`: solar curtailment lifted (maximum available) and batteries discharged within their
  rating and what their charge above the minimum can hold for the window (`dispatch` request,
  a DER set-point through the authority). The solar plan counts on the weather forecast.
- `transfer`: the part of a feeder beyond a tie to a neighbouring substation is offered to the
  neighbour (gateway/switching/exchange.py); in force once both sides confirmed.
- `shed`: feeders opened through the authority, fewest customers per kW first, never one that
  exports or that carries a critical customer unless nothing else is left; `advisory` (the
  default) publishes the plan instead.

The forecast the manager works on is the gateway's load forecast (history, daily shape, trend)
corrected for the sun: the load measured now is net of the PV output now, so the forecast adds
back the output the weather forecast says will be lost (sunset) before the peak.

State, timeline and contributions are published retained on `<base>/peak`; every step is in the
event log (`peak`), every demand-response credit ledger as `dr.credit`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.agents.forecast import Forecast
from gateway.demand_response import DrCoordinator, Event
from gateway.demand_response import from_site as dr_from_site
from gateway.switching.authority import Refused
from gateway.switching.model import Kind, Operation, Origin, Via
from gateway.switching.peak import Load, PeakManager, PeakSettings, Release, Start, shedding_order
from gateway.contract.demand_response import DrConfirmation

log = logging.getLogger("stima.peak")

WEATHER_MAX_POINTS = 200
AVERAGE_SAMPLES = 5
MAX_IRRADIANCE_W_M2 = 1500.0


@dataclass(frozen=True, slots=True)
class WeatherPoint:
    time: float
    irradiance_w_m2: float
    temperature_c: float | None


def parse_weather(payload: bytes, substation: str) -> list[WeatherPoint]:
    """The weather service's forecast (docs/ami.md#weather); ValueError naming the field."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise ValueError("expected a JSON object with v = 1")
    if data.get("substation_id") != substation:
        raise ValueError(f"substation_id {data.get('substation_id')!r} is not this substation ({substation})")
    points = data.get("forecast")
    if not isinstance(points, list) or not 1 <= len(points) <= WEATHER_MAX_POINTS:
        raise ValueError(f"forecast: expected 1-{WEATHER_MAX_POINTS} points")
    out = []
    for k, p in enumerate(points):
        if not isinstance(p, dict):
            raise ValueError(f"forecast[{k}]: expected an object")
        t, g, temp = p.get("time"), p.get("irradiance_w_m2"), p.get("temperature_c")
        if (
            not isinstance(t, int | float)
            or not isinstance(g, int | float)
            or not _num(t)
            or not _num(g)
            or not 0.0 <= g <= MAX_IRRADIANCE_W_M2
        ):
            raise ValueError(f"forecast[{k}]: time and irradiance_w_m2 (0-{MAX_IRRADIANCE_W_M2:g}) expected")
        if temp is not None and (not isinstance(temp, int | float) or not _num(temp) or not -60.0 <= temp <= 70.0):
            raise ValueError(f"forecast[{k}].temperature_c: expected -60..70, found {temp!r}")
        out.append(WeatherPoint(float(t), float(g), None if temp is None else float(temp)))
    out.sort(key=lambda w: w.time)
    return out


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def irradiance_at(weather: Sequence[WeatherPoint], t: float) -> float | None:
    """Linear between forecast points; None outside the forecast."""
    if not weather or t < weather[0].time or t > weather[-1].time:
        return None
    for a, b in zip(weather, weather[1:], strict=False):
        if a.time <= t <= b.time:
            f = 0.0 if b.time == a.time else (t - a.time) / (b.time - a.time)
            return a.irradiance_w_m2 + f * (b.irradiance_w_m2 - a.irradiance_w_m2)
    return weather[-1].irradiance_w_m2


class PeakService:
    def __init__(
        self,
        site: Any,
        *,
        switching: Any,
        agents: Any,
        image: Any,
        store: Any,
        publish: Callable[..., None],
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        exchange: Any = None,
        ami: Any = None,
    ) -> None:
        cfg = site.peak
        self.site = site
        self.cfg = cfg
        self.switching = switching
        self.agents = agents
        self.image = image
        self.store = store
        self._publish = publish
        self._monotonic = monotonic
        self._wall = wall
        self.exchange = exchange
        self.ami = ami
        subs = [a for a in site.agents if a.type == "substation"]
        if not subs:
            raise ValueError("[peak] needs a substation agent (its load and rated capacity)")
        self.sub = subs[0]
        self.substation = site.site.substation_id
        self.capacity_kva = float(self.sub.attributes.get("rated_capacity", 20.0)) * 1000.0
        self.manager = PeakManager(
            self.capacity_kva,
            PeakSettings(
                target_percent=cfg.target_percent,
                settle_s=cfg.settle_s,
                actions=tuple(cfg.actions),
                release_margin_percent=cfg.release_margin_percent,
                basis=cfg.basis,
            ),
        )
        self.origin = Origin(via=Via.AGENT, who=f"peak:{self.substation}")
        self.dr: DrCoordinator | None = dr_from_site(site)
        self.weather: list[WeatherPoint] = []
        self.forecast: Forecast | None = None
        self.forecast_peak_kw: float | None = None
        """The forecast peak corrected for the sun (kW)."""
        self.transfer_xid: str | None = None
        self.shed_breakers: list[str] = []
        self.customers_shed = 0
        self.dr_waiting: set[str] = set()
        self.bad_inputs = 0
        self._acting_trend = 0.0
        self._samples: list[Load] = []
        self._by_type: dict[str, list[Any]] = {}
        for a in site.agents:
            self._by_type.setdefault(a.type, []).append(a)
        if exchange is not None:
            exchange.listeners.append(self._on_exchange)
        if ami is not None and self.dr is not None:
            ami.on_dr_confirmation(self.on_confirmation, self.on_bad_confirmation)
        if ami is not None and site.ami.weather_topic:
            ami.on_topic(site.ami.weather_topic, self.on_weather)

    # ------------------------------------------------------------------ measurements

    def _value(self, agent: Any, name: str) -> float | None:
        pid = agent.points.get(name)
        if not pid or pid not in self.image:
            return None
        p = self.image[pid]
        if not p.quality.good or isinstance(p.value, bool) or not isinstance(p.value, int | float):
            return None
        return float(p.value)

    def load(self) -> Load | None:
        """The substation's load: the mean of the last `AVERAGE_SAMPLES` once-a-second samples
        (a single poll carries the load's own noise into every measured contribution)."""
        return self._mean_load()

    def sample(self) -> None:
        kw = self._value(self.sub, "total_load_kw")
        if kw is None:
            self._samples.clear()  # stale or bad: no average across a gap
            return
        self._samples.append(Load(kw, self._value(self.sub, "total_load_kvar") or 0.0))
        del self._samples[:-AVERAGE_SAMPLES]

    def _mean_load(self) -> Load | None:
        if not self._samples:
            kw = self._value(self.sub, "total_load_kw")
            return None if kw is None else Load(kw, self._value(self.sub, "total_load_kvar") or 0.0)
        n = len(self._samples)
        return Load(sum(x.kw for x in self._samples) / n, sum(x.kvar for x in self._samples) / n)

    def _solar(self) -> list[Any]:
        return [
            a
            for a in self._by_type.get("renewable_energy", [])
            if a.attributes.get("resource_type") in ("solar_pv", "solar")
        ]

    def _batteries(self) -> list[Any]:
        return [
            a
            for a in self._by_type.get("renewable_energy", [])
            if a.attributes.get("resource_type") == "battery_storage"
        ]

    def pv_loss_kw(self, at: float) -> float:
        """PV output now less what the weather forecast gives at `at` (positive at sunset)."""
        g = irradiance_at(self.weather, at)
        if g is None:
            return 0.0
        lost = 0.0
        for a in self._solar():
            now_kw = self._value(a, "active_power_kw")
            rating = float(a.attributes.get("rated_capacity", 0.0))
            if now_kw is not None:
                lost += now_kw - min(rating, rating * g / 1000.0)
        return lost

    def corrected_peak_kw(self, fc: Forecast) -> float:
        """The forecast's peak with the PV output the weather forecast says will be lost."""
        if not fc.times:
            return fc.peak_kw
        return max(v + self.pv_loss_kw(t) for t, v in zip(fc.times, fc.values_kw, strict=True))

    def _basis(self, kw: float, load: Load) -> float:
        if self.cfg.basis == "active":
            return kw
        return kw / load.power_factor if load.power_factor > 0 else kw

    def headroom(self, _tie: str, _kw: float) -> tuple[float, str]:
        """What this substation can take from a neighbour by its own corrected forecast (kW)."""
        load = self.load()
        if self.forecast_peak_kw is None or load is None:
            return 0.0, "no load forecast yet"
        if self.manager.phase.value != "idle":
            return 0.0, f"this substation is managing its own peak ({self.manager.phase.value})"
        target = self.cfg.target_percent / 100.0 * self.capacity_kva
        peak = self._basis(self.forecast_peak_kw, load)
        room = (target - peak) * (load.power_factor if self.cfg.basis == "apparent" else 1.0)
        return max(0.0, room), (
            f"forecast peak {100.0 * peak / self.capacity_kva:.1f} % of capacity, target {self.cfg.target_percent:g} %"
        )

    def window_headroom(self, tie: str, kva: float, start: float, end: float) -> tuple[float, str]:
        """What this substation could take from a neighbour in a future window (kW, quoted as kVA):
        its target less the forecast's daily shape at the window's times of day plus today's level
        (without a daily shape: the present forecast peak). A quote: nothing is reserved."""
        load = self.load()
        fc = self.forecast
        peak_kw = fc.peak_over(start, end) if fc is not None else None
        if peak_kw is None or load is None:
            room, why = self.headroom(tie, kva)
            return room, f"{why} (no daily shape yet: by the present forecast peak)"
        target = self.cfg.target_percent / 100.0 * self.capacity_kva
        peak = self._basis(peak_kw, load)
        room = (target - peak) * (load.power_factor if self.cfg.basis == "apparent" else 1.0)
        return max(0.0, room), (
            f"forecast peak in the window {100.0 * peak / self.capacity_kva:.1f} % of capacity "
            f"(daily shape), target {self.cfg.target_percent:g} %"
        )

    # ------------------------------------------------------------------ inputs

    def on_forecast(self, fc: Forecast) -> None:
        self.forecast = fc
        self.forecast_peak_kw = self.corrected_peak_kw(fc)
        self._step()

    def on_weather(self, topic: str, payload: bytes, _retained: bool) -> None:
        try:
            self.weather = parse_weather(payload, self.substation)
        except ValueError as exc:
            self.bad_inputs += 1
            log.warning("weather forecast dropped", extra={"topic": topic, "error": str(exc)})

    def on_bad_confirmation(self, topic: str, why: str) -> None:
        self.bad_inputs += 1
        log.warning("demand-response confirmation dropped", extra={"topic": topic, "error": why})

    def on_confirmation(self, conf: DrConfirmation) -> None:
        if self.dr is None:
            return
        ev = self.dr.on_confirmation(conf, self._wall())
        if ev is None:
            log.warning("demand-response confirmation for no event of ours", extra={"event_id": conf.event_id})
            return
        self._record("dr.confirmation", ev.group.id, ev.summary())
        if ev.counts.get("accepted", 0) and self.dr_waiting:
            self.dr_waiting.clear()
            self.manager.in_force("demand_response", self._monotonic())
            self._changed()

    def on_readings(self, meter_ids: Sequence[str], columns: Any, reading_time: float) -> None:
        if self.dr is not None and "demand_kw" in columns:
            self.dr.on_readings(meter_ids, columns["demand_kw"], reading_time)

    def _on_exchange(self, ex: Any) -> None:
        if ex.xid != self.transfer_xid or not ex.phase.final:
            return
        self.transfer_xid = None
        now, load = self._monotonic(), self.load()
        if ex.phase.value == "done":
            self.manager.in_force("transfer", now)
        elif load is not None:
            self._carry(
                self.manager.on_result(
                    "transfer", f"{ex.phase.value}: {ex.reason or 'no reason given'}", now, load, self._trend()
                )
            )
        self._changed()

    def tick(self) -> None:
        self.sample()
        if self.dr is not None:
            for ev in self.dr.tick(self._wall()):
                self._dr_ended(ev)
            if self.dr_waiting and not any(e.event.event_id in self.dr_waiting for e in self.dr.active()):
                self.dr_waiting.clear()  # every event ended unanswered or refused
                load = self.load()
                if load is not None:
                    self._carry(
                        self.manager.on_result(
                            "demand_response", "no meter group confirmed", self._monotonic(), load, self._trend()
                        )
                    )
        self._step()

    # ------------------------------------------------------------------ the manager

    def _trend(self) -> float:
        """The load's trend for measuring contributions: the forecast's while idle or holding,
        the one it had when acting began while actions are settling (the steps the actions make
        in the load history are not a trend)."""
        live = self.forecast.slope_kw_per_h if self.forecast is not None else 0.0
        if self.manager.phase.value in ("idle", "holding"):
            self._acting_trend = live
            return live
        return self._acting_trend

    def _step(self) -> None:
        load = self.load()
        if load is None or self.forecast_peak_kw is None:
            return
        before = (self.manager.phase, self.manager.current, len(self.manager.timeline))
        self._carry(self.manager.step(self._monotonic(), load, self._basis(self.forecast_peak_kw, load), self._trend()))
        if (self.manager.phase, self.manager.current, len(self.manager.timeline)) != before:
            self._changed()

    def _carry(self, actions: list[Start | Release]) -> None:
        for action in actions:
            if isinstance(action, Release):
                self._release(action.actions)
                continue
            try:
                why = getattr(self, f"_start_{action.action}")(action)
            except (Refused, ValueError, KeyError) as exc:
                why = f"refused: {getattr(exc, 'message', None) or exc}"
            except Exception as exc:  # never leave the manager waiting on an action that did not start
                log.exception("peak action failed to start", extra={"action": action.action})
                why = f"failed: {type(exc).__name__}: {exc}"
            now = self._monotonic()
            if why is None:
                self.manager.in_force(action.action, now)
            elif why != "waiting":
                load = self.load() or self.manager.baseline
                self._carry(self.manager.on_result(action.action, why, now, load, self._trend()))
            self._changed()

    def _request(self, agent_id: str, request: str, **args: Any) -> None:
        self.agents.request(agent_id, request, self.origin, **args)

    def _start_cvr(self, _start: Start) -> str | None:
        done, why = [], []
        for t in self._by_type.get("transformer", []):
            if "tap_setpoint" not in t.points:
                continue
            if getattr(self.agents.runtime.memory.get(t.id), "cvr_active", False):
                why.append(f"{t.id}: CVR already in force")
                continue
            tap = self._value(t, "tap_position")
            if tap is not None and tap <= float(t.attributes.get("tap_min", -16)):
                why.append(f"{t.id} at its lowest tap")
                continue
            self._request(t.id, "cvr", on=True)
            done.append(t.id)
        return None if done else ("; ".join(why) or "no transformer with a tap changer")

    def _start_capacitors(self, _start: Start) -> str | None:
        done, why = [], []
        for c in self._by_type.get("capacitor_bank", []):
            steps = self._value(c, "steps_active")
            if steps is not None and steps >= int(c.attributes.get("num_steps", 4)):
                why.append(f"{c.id}: every step in")
                continue
            self._request(c.id, "var_support", on=True)
            done.append(c.id)
        return None if done else ("; ".join(why) or "no capacitor bank")

    def _start_demand_response(self, start: Start) -> str | None:
        if self.dr is None or self.ami is None:
            return "no demand-response program or AMI feed"
        fleet = self.agents.runtime.fleet
        demand = {}
        for g in self.site.meter_groups:
            try:
                values = fleet.demand_kw[fleet.group_slice(g.id)]
            except (KeyError, AttributeError):
                continue
            demand[g.id] = float(sum(v for v in values.tolist() if math.isfinite(v)))
        events = self.dr.plan(start.need_kw, demand, self._wall(), self.cfg.window_s)
        sent = []
        for ev in events:
            if self.ami.send_dr_event(ev):
                sent.append(ev.event_id)
                self._record(
                    "dr.event",
                    ev.concentrator_id,
                    {"event_id": ev.event_id, "program": ev.program, "start": ev.start, "duration_s": ev.duration_s},
                )
            else:
                self.dr.events[ev.event_id].error = "the AMI broker is not connected"
                self.dr.events[ev.event_id].ended_at = self._wall()
        if not sent:
            return "no enrolled meter group with demand" if not events else "the AMI broker is not connected"
        self.dr_waiting = set(sent)
        return "waiting"

    def _start_der(self, start: Start) -> str | None:
        done = []
        for s in self._solar():
            if getattr(self.agents.runtime.memory.get(s.id), "curtail_pct", None) is not None:
                self._request(s.id, "curtail", pct=100.0)
                done.append(s.id)
        need = start.need_kw
        window_h = self.cfg.window_s / 3600.0
        for b in self._batteries():
            a = b.attributes
            rating = float(a.get("rated_capacity", 0.0))
            soc = self._value(b, "soc_pct")
            capacity = float(a.get("energy_capacity_kwh", 0.0))
            if soc is None:
                continue
            usable_kwh = max(0.0, (soc - float(a.get("soc_min_pct", 10.0))) / 100.0 * capacity)
            kw = min(rating, usable_kwh / window_h, max(need, 0.0))
            if kw < 1.0:
                continue
            self._request(
                b.id,
                "dispatch",
                kw=round(kw, 1),
                reason=f"peak: {usable_kwh:.0f} kWh above the minimum charge over {window_h:g} h",
            )
            need -= kw
            done.append(b.id)
        return None if done else "no DER to dispatch (no curtailed solar, no battery with charge)"

    def _start_transfer(self, start: Start) -> str | None:
        if self.exchange is None:
            return "no neighbouring substation to coordinate with"
        choice = self.transfer_part(start.need_kw)
        if choice is None:
            return "no part of a feeder that a tie to a neighbour can take"
        tie, part, load_kw = choice
        self.transfer_xid = self.exchange.request(tie, part, load_kw, window_s=self.cfg.window_s)
        return "waiting"

    def transfer_part(self, need_kw: float) -> tuple[str, str, float] | None:
        """(tie, boundary switch, its part's load kW): the smallest part beyond a switch on the way
        from a neighbour's tie back to this substation that covers `need_kw`, else the largest."""
        net = self.switching.network
        state = self.switching.state
        closed = state.configuration()
        en = net.energise(closed)
        best: tuple[str, str, float] | None = None
        for tie_id in self.exchange.coordinator.ties:
            if closed.get(tie_id) is not False:
                continue
            dev = net.devices[tie_id]
            node = dev.a if dev.a in net.sections else dev.b
            while node in en.parent:
                parent, device = en.parent[node]
                node = parent
                if device is None or device == tie_id:
                    continue
                kw = 0.0
                for n in net.downstream(device, closed):
                    sample = state.section_load(n)
                    kw += sample.kva.real if sample is not None else 0.0
                if kw <= 0:
                    continue
                if (
                    best is None
                    or (best[2] < need_kw <= kw)
                    or (kw >= need_kw and kw < best[2])
                    or (best[2] < need_kw and kw > best[2])
                ):
                    best = (tie_id, device, kw)
        return best

    def _start_shed(self, start: Start) -> str | None:
        feeders = []
        sub_agent = self.agents.runtime.agents.get(self.sub.id)
        for line, info in getattr(sub_agent, "feeders", {}).items():
            if not info.breaker:
                continue
            cb = next((a for a in self._by_type.get("circuit_breaker", []) if a.id == info.breaker), None)
            kw = self._value(cb, "active_power_kw") if cb is not None else None
            if kw is None or self.switching.state.position(info.breaker) is not True:
                continue
            feeders.append(
                {
                    "feeder": line,
                    "breaker": info.breaker,
                    "load_kw": kw,
                    "customers": info.customers,
                    "critical_customers": info.critical_customers,
                }
            )
        plan = shedding_order(feeders, start.need_kw)
        if not plan:
            return "no feeder to shed"
        if self.cfg.shed == "advisory":
            self._publish(
                "notices/load_shedding_plan",
                {
                    "time": self._wall(),
                    "source": self.substation,
                    "kind": "load_shedding_plan",
                    "plan": [dict(f) for f in plan],
                    "need_kw": round(start.need_kw, 1),
                    "mode": "advisory",
                },
            )
            return "advisory: shedding plan published for the operator"
        for f in plan:
            self.switching.operate(
                Operation(
                    kind=Kind.OPEN,
                    target=str(f["breaker"]),
                    origin=self.origin,
                    reason=f"peak: shed {f['feeder']} ({f['customers']} customers)",
                )
            )
            self.shed_breakers.append(str(f["breaker"]))
            self.customers_shed += int(f["customers"])
        return None

    def _release(self, actions: Sequence[str]) -> None:
        for name in actions:
            try:
                if name == "cvr":
                    for t in self._by_type.get("transformer", []):
                        if "tap_setpoint" in t.points:
                            self._request(t.id, "cvr", on=False)
                elif name == "capacitors":
                    for c in self._by_type.get("capacitor_bank", []):
                        self._request(c.id, "var_support", on=False)
                elif name == "demand_response" and self.dr is not None:
                    for ev in self.dr.end_all(self._wall()):
                        self._dr_ended(ev)
                elif name == "der":
                    for b in self._batteries():
                        self._request(b.id, "dispatch", kw=0.0)
                elif name == "shed":
                    for cb in self.shed_breakers:
                        self.switching.operate(
                            Operation(
                                kind=Kind.CLOSE, target=cb, origin=self.origin, reason="peak passed: feeder restored"
                            )
                        )
                    self.shed_breakers, self.customers_shed = [], 0
            except (Refused, ValueError, KeyError) as exc:
                log.warning("peak release step refused", extra={"action": name, "error": str(exc)})
        self._changed()

    def _dr_ended(self, ev: Event) -> None:
        summary = ev.summary()
        self._record("dr.credit", ev.group.id, {**summary, "credits": ev.credits})
        self._publish("dr", {"time": self._wall(), "substation": self.substation, **summary})

    # ------------------------------------------------------------------ output

    def _record(self, kind: str, source: str, data: dict[str, Any]) -> None:
        self.store.append_event(self._wall(), source, kind, data)

    def _changed(self) -> None:
        status = self.status()
        self._publish("peak", {"time": self._wall(), "substation": self.substation, **status}, retain=True)
        last = self.manager.timeline[-1][1] if self.manager.timeline else ""
        self._record("peak", self.substation, {"phase": status["phase"], "current": status["current"], "text": last})

    def status(self) -> dict[str, Any]:
        load = self.load()
        out = self.manager.status()
        out.update(
            {
                "load_kw": None if load is None else round(load.kw, 1),
                "load_kvar": None if load is None else round(load.kvar, 1),
                "load_percent": None
                if load is None
                else round(100.0 * self.manager.measure(load) / self.capacity_kva, 2),
                "forecast_peak_kw": None if self.forecast_peak_kw is None else round(self.forecast_peak_kw, 1),
                "weather_points": len(self.weather),
                "transfer_xid": self.transfer_xid,
                "shed_breakers": list(self.shed_breakers),
                "customers_shed": self.customers_shed,
                "demand_response": None if self.dr is None else self.dr.status(),
                "bad_inputs": self.bad_inputs,
            }
        )
        return out
