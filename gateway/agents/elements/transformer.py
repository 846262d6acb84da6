"""Transformer agent: load states, IEEE C57.91 thermal model and aging, tap-changer control.

Thermal: the clause-7 exponential model runs on every step; a measured top-oil temperature,
when good, replaces the modelled one. Aging accumulates F_AA·Δt (equivalent aging hours) and
loss of life against a 180 000 h normal life. Above `capacity_notice_percent` the agent tells
its substation (capacity constraint) and its neighbours (load-transfer request) once per
crossing.

Health: `on_health` takes the health inputs the daemon computed from months of history
(gateway/maintenance/health.py), predicts the probability of failure within the site's horizon
(gateway/maintenance/failure.py) and asks for maintenance — once per crossing — when it reaches
the site's threshold or the dissolved gases are at IEEE C57.104 status 3. A top-oil trend found
at comparable load is said once, as a warning, when it is first found.

Tap changer (ANSI 90 logic on the 120 V base): no action inside the band; outside it, wait
`time_delay_s`, then move one tap, re-evaluate, and move again after `inter_tap_delay_s`.
Line-drop compensation uses R/X volts at CT primary current. CVR lowers the regulated voltage
by `cvr_reduction_percent` but never below `cvr_floor_v` plus half the band.
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.agents.actions import Action, Alert, BusMessage, ControlRequest, Severity, Topic
from gateway.agents import spec, visualization
from gateway.agents.base import Agent, Links, Memory
from gateway.agents.fsm import TransitionTable, row
from gateway.agents.physics import (
    COOLING_EXPONENTS,
    DEFAULT_TOP_OIL_TAU_MIN,
    ThermalState,
    aging_acceleration_factor,
    ldc_control_voltage_v,
    loss_of_life_percent,
    thermal_step,
)
from gateway.agents.schema import TransformerAttributes
from gateway.maintenance import failure
from gateway.maintenance.health import HealthInputs


class TransformerState(enum.Enum):
    NORMAL_OPERATION = "Normal_Operation"
    HIGH_LOAD = "High_Load"
    OVERLOADED = "Overloaded"
    OVERHEATING = "Overheating"
    VOLTAGE_REGULATION = "Voltage_Regulation"
    FAULTED = "Faulted"
    OFFLINE = "Offline"


class TransformerEvent(enum.Enum):
    LOAD_NORMAL = enum.auto()
    LOAD_HIGH = enum.auto()
    LOAD_OVER = enum.auto()
    TEMPERATURE_HIGH = enum.auto()
    TEMPERATURE_NORMAL = enum.auto()
    TAP_CHANGE_STARTED = enum.auto()
    VOLTAGE_IN_BAND = enum.auto()
    INTERNAL_FAULT = enum.auto()
    TAKEN_OFFLINE = enum.auto()
    RETURNED_TO_SERVICE = enum.auto()


_S, _E = TransformerState, TransformerEvent
_ALWAYS = dict(TEMPERATURE_HIGH=_S.OVERHEATING, INTERNAL_FAULT=_S.FAULTED, TAKEN_OFFLINE=_S.OFFLINE)

TABLE: TransitionTable[TransformerState, TransformerEvent] = TransitionTable(
    TransformerState,
    TransformerEvent,
    initial=_S.NORMAL_OPERATION,
    rows={
        _S.NORMAL_OPERATION: row(
            _E,
            **_ALWAYS,
            LOAD_HIGH=_S.HIGH_LOAD,
            LOAD_OVER=_S.OVERLOADED,
            TAP_CHANGE_STARTED=_S.VOLTAGE_REGULATION,
            ignore="LOAD_NORMAL TEMPERATURE_NORMAL VOLTAGE_IN_BAND RETURNED_TO_SERVICE",
        ),
        # a tap change under high load or overload is regulation the load state already covers
        _S.HIGH_LOAD: row(
            _E,
            **_ALWAYS,
            LOAD_NORMAL=_S.NORMAL_OPERATION,
            LOAD_OVER=_S.OVERLOADED,
            ignore="LOAD_HIGH TEMPERATURE_NORMAL TAP_CHANGE_STARTED VOLTAGE_IN_BAND RETURNED_TO_SERVICE",
        ),
        _S.OVERLOADED: row(
            _E,
            **_ALWAYS,
            LOAD_NORMAL=_S.NORMAL_OPERATION,
            LOAD_HIGH=_S.HIGH_LOAD,
            ignore="LOAD_OVER TEMPERATURE_NORMAL TAP_CHANGE_STARTED VOLTAGE_IN_BAND RETURNED_TO_SERVICE",
        ),
        # overheating is left only when the temperature is back (or for a fault or outage): load is secondary
        _S.OVERHEATING: row(
            _E,
            INTERNAL_FAULT=_S.FAULTED,
            TAKEN_OFFLINE=_S.OFFLINE,
            TEMPERATURE_NORMAL=_S.NORMAL_OPERATION,
            ignore="LOAD_NORMAL LOAD_HIGH LOAD_OVER TEMPERATURE_HIGH TAP_CHANGE_STARTED "
            "VOLTAGE_IN_BAND RETURNED_TO_SERVICE",
        ),
        _S.VOLTAGE_REGULATION: row(
            _E,
            **_ALWAYS,
            LOAD_HIGH=_S.HIGH_LOAD,
            LOAD_OVER=_S.OVERLOADED,
            VOLTAGE_IN_BAND=_S.NORMAL_OPERATION,
            ignore="LOAD_NORMAL TEMPERATURE_NORMAL TAP_CHANGE_STARTED RETURNED_TO_SERVICE",
        ),
        # out of service: only a return to service (or, offline, a fault found) moves it
        _S.FAULTED: row(
            _E,
            RETURNED_TO_SERVICE=_S.NORMAL_OPERATION,
            ignore="LOAD_NORMAL LOAD_HIGH LOAD_OVER TEMPERATURE_HIGH TEMPERATURE_NORMAL "
            "TAP_CHANGE_STARTED VOLTAGE_IN_BAND INTERNAL_FAULT TAKEN_OFFLINE",
        ),
        _S.OFFLINE: row(
            _E,
            RETURNED_TO_SERVICE=_S.NORMAL_OPERATION,
            INTERNAL_FAULT=_S.FAULTED,
            ignore="LOAD_NORMAL LOAD_HIGH LOAD_OVER TEMPERATURE_HIGH TEMPERATURE_NORMAL "
            "TAP_CHANGE_STARTED VOLTAGE_IN_BAND TAKEN_OFFLINE",
        ),
    },
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformerInputs:
    load_kw: float | None = None
    load_kvar: float | None = None
    top_oil_temp_c: float | None = None
    ambient_temp_c: float | None = None
    secondary_voltage_v: float | None = None
    current_a: float | None = None
    tap_position: float | None = None
    energized: bool | None = None
    """False when the feeding line is dead (from topology); None when unknown."""
    # monitored for health only (the history holds them; the step shows the last reading)
    primary_power_kw: float | None = None
    fans_running: float | None = None
    operating_hours: float | None = None
    h2_ppm: float | None = None
    ch4_ppm: float | None = None
    c2h6_ppm: float | None = None
    c2h4_ppm: float | None = None
    c2h2_ppm: float | None = None
    co_ppm: float | None = None
    co2_ppm: float | None = None


@dataclass
class TransformerMemory(Memory):
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("last_time", "out_of_band_since", "last_tap_time")

    last_time: float | None = None
    load_percent: float = 0.0
    load_kw: float = 0.0
    load_kvar: float = 0.0
    ambient_c: float = 30.0
    top_oil_rise_c: float = 0.0
    hot_spot_rise_c: float = 0.0
    top_oil_c: float = 30.0
    hot_spot_c: float = 30.0
    aging_factor: float = 0.0
    equivalent_aging_h: float = 0.0
    modelled_h: float = 0.0
    loss_of_life_percent: float = 0.0
    tap_position: int = 0
    tap_operations: int = 0
    out_of_band_since: float | None = None
    last_tap_time: float | None = None
    control_voltage_v: float | None = None
    capacity_notice_sent: bool = False
    critical_alerted: bool = False
    tap_limit_alerted: bool = False
    cvr_active: bool = False
    maintenance: bool = False
    fault: bool = False
    window_aging_h: float = 0.0
    window_h: float = 0.0
    last_daily_faa: float | None = None
    health: dict[str, Any] | None = None
    """The last health evaluation (inputs and prediction), as plain data."""
    health_request_sent: bool = False
    trend_alerted: bool = False


MAX_MODEL_LOAD_PU = 10.0


class TransformerAgent(Agent[TransformerState, TransformerEvent]):
    agent_type = "transformer"
    TABLE = TABLE

    def __init__(self, agent_id: str, attrs: TransformerAttributes, links: Links | None = None) -> None:
        super().__init__(agent_id, links)
        self.attrs = attrs
        self.m_exp, self.n_exp = COOLING_EXPONENTS[attrs.cooling_type]
        tau_min = attrs.top_oil_time_constant_min or DEFAULT_TOP_OIL_TAU_MIN[attrs.cooling_type]
        self.top_oil_tau_s = tau_min * 60.0
        self.winding_tau_s = attrs.winding_time_constant_min * 60.0
        self.rated_current_a = attrs.rated_capacity * 1000.0 / (math.sqrt(3.0) * attrs.secondary_voltage)
        self.ct_primary_a = attrs.ct_primary_a or self.rated_current_a
        self.tap_step_v = attrs.tap_step_percent / 100.0 * 120.0

    def initial_memory(self, now: float) -> TransformerMemory:
        return TransformerMemory(
            state=TABLE.initial, since=now, tap_position=self.attrs.tap_position, cvr_active=self.attrs.cvr_enabled
        )

    def memory_from_dict(self, data: dict[str, Any]) -> TransformerMemory:
        return TransformerMemory.from_dict(data, TransformerState)

    # ------------------------------------------------------------------ pieces

    def regulated_voltage_v(self, m: TransformerMemory) -> float:
        a = self.attrs
        if not m.cvr_active:
            return a.voltage_setpoint_v
        return max(a.voltage_setpoint_v * (1.0 - a.cvr_reduction_percent / 100.0), a.cvr_floor_v + a.bandwidth_v / 2.0)

    def _thermal(self, m: TransformerMemory, x: TransformerInputs, dt: float) -> None:
        a = self.attrs
        if x.ambient_temp_c is not None:
            m.ambient_c = x.ambient_temp_c
        # The C57.91 model holds for loads up to a few per unit; beyond that the protection acts long
        # before the oil moves, so a reading far outside is held at the edge of the model.
        k = min(max(m.load_percent / 100.0, 0.0), MAX_MODEL_LOAD_PU)
        if dt > 0:
            st = thermal_step(
                ThermalState(m.top_oil_rise_c, m.hot_spot_rise_c),
                k,
                dt,
                rated_top_oil_rise_c=a.rated_top_oil_rise_c,
                rated_hot_spot_rise_c=a.rated_hot_spot_rise_c,
                loss_ratio=a.loss_ratio,
                n=self.n_exp,
                m=self.m_exp,
                rated_top_oil_tau_s=self.top_oil_tau_s,
                winding_tau_s=self.winding_tau_s,
            )
            m.top_oil_rise_c, m.hot_spot_rise_c = st.top_oil_rise_c, st.hot_spot_rise_c
        if x.top_oil_temp_c is not None:
            m.top_oil_rise_c = x.top_oil_temp_c - m.ambient_c
        m.top_oil_c = m.ambient_c + m.top_oil_rise_c
        m.hot_spot_c = m.top_oil_c + m.hot_spot_rise_c
        m.aging_factor = aging_acceleration_factor(min(max(m.hot_spot_c, -50.0), 250.0))
        if dt > 0:
            m.equivalent_aging_h += m.aging_factor * dt / 3600.0
            m.modelled_h += dt / 3600.0
            m.window_aging_h += m.aging_factor * dt / 3600.0
            m.window_h += dt / 3600.0
        m.loss_of_life_percent = loss_of_life_percent(m.equivalent_aging_h, a.normal_insulation_life_h)

    def _regulate(self, m: TransformerMemory, x: TransformerInputs, now: float, out: list[Action]) -> bool:
        """One pass of the tap-changer control; True while a tap change is under way."""
        a = self.attrs
        if not a.regulation_enabled or x.secondary_voltage_v is None or x.secondary_voltage_v <= 0:
            m.out_of_band_since = None
            return False
        v120 = x.secondary_voltage_v / a.secondary_voltage * 120.0  # line-to-line volts onto the 120 V base
        current = abs(x.current_a) if x.current_a is not None else m.load_percent / 100.0 * self.rated_current_a
        s = math.hypot(m.load_kw, m.load_kvar)
        pf = m.load_kw / s if s > 0 else 1.0
        v_ctrl = ldc_control_voltage_v(
            v120, current, abs(pf), self.ct_primary_a, a.ldc_r_v, a.ldc_x_v, lagging=m.load_kvar >= 0
        )
        m.control_voltage_v = v_ctrl
        deviation = self.regulated_voltage_v(m) - v_ctrl
        if abs(deviation) <= a.bandwidth_v / 2.0:
            m.out_of_band_since = None
            m.tap_limit_alerted = False
            return False
        if m.out_of_band_since is None:
            m.out_of_band_since = now
        if now - m.out_of_band_since < a.time_delay_s:
            return m.state is _S.VOLTAGE_REGULATION
        if m.last_tap_time is not None and now - m.last_tap_time < a.inter_tap_delay_s:
            return True
        direction = 1 if deviation > 0 else -1
        target = max(a.tap_min, min(a.tap_max, m.tap_position + direction))
        if target == m.tap_position:
            if not m.tap_limit_alerted:
                m.tap_limit_alerted = True
                out.append(
                    Alert(
                        agent_id=self.agent_id,
                        severity=Severity.WARNING,
                        time=now,
                        message=f"tap limit {target} reached; control voltage {v_ctrl:.1f} V still out of band",
                    )
                )
                out.append(
                    BusMessage(
                        source=self.agent_id,
                        topic=Topic.VOLTAGE_EVENTS,
                        kind="tap_limit",
                        payload={
                            "transformer": self.agent_id,
                            "tap_position": target,
                            "control_voltage_v": v_ctrl,
                            "regulated_voltage_v": self.regulated_voltage_v(m),
                        },
                    )
                )
            return False
        m.tap_position = target
        m.last_tap_time = now
        m.tap_operations += 1
        out.append(
            ControlRequest(
                agent_id=self.agent_id,
                point_name="tap_setpoint",
                value=float(target),
                reason=f"control voltage {v_ctrl:.2f} V, regulating to {self.regulated_voltage_v(m):.2f} V",
            )
        )
        return True

    # ------------------------------------------------------------------ step

    def step(
        self, memory: TransformerMemory, inputs: TransformerInputs, now: float
    ) -> tuple[TransformerMemory, list[Action]]:
        m = copy.deepcopy(memory)
        x = inputs
        a = self.attrs
        out: list[Action] = []
        dt = 0.0 if m.last_time is None else min(max(0.0, now - m.last_time), 3600.0)
        m.last_time = now
        if x.load_kw is not None:
            m.load_kw = x.load_kw
        if x.load_kvar is not None:
            m.load_kvar = x.load_kvar
        if x.load_kw is not None or x.load_kvar is not None:
            m.load_percent = 100.0 * math.hypot(m.load_kw, m.load_kvar) / a.rated_capacity
        elif x.current_a is not None:
            m.load_percent = (
                100.0 * abs(x.current_a) / self.rated_current_a
            )  # a signed CT reading: magnitude loads the windings
        if x.tap_position is not None:
            m.tap_position = min(max(int(round(x.tap_position)), a.tap_min), a.tap_max)
        self._thermal(m, x, dt)

        dead = x.energized is False
        if m.fault:
            self.fire(m, _E.INTERNAL_FAULT, "internal fault reported", now, out)
        elif m.maintenance or dead:
            if self.fire(m, _E.TAKEN_OFFLINE, "maintenance" if m.maintenance else "de-energized", now, out):
                m.out_of_band_since = None
        elif m.state in (_S.OFFLINE, _S.FAULTED):
            self.fire(m, _E.RETURNED_TO_SERVICE, "back in service", now, out)
        if m.state in (_S.OFFLINE, _S.FAULTED):
            return m, out

        hot = m.hot_spot_c > a.hot_spot_alarm_c or m.top_oil_c > a.top_oil_alarm_c
        cool = m.hot_spot_c < a.hot_spot_alarm_c - 5.0 and m.top_oil_c < a.top_oil_alarm_c - 5.0
        if hot:
            if self.fire(
                m, _E.TEMPERATURE_HIGH, f"hot spot {m.hot_spot_c:.1f} °C, top oil {m.top_oil_c:.1f} °C", now, out
            ):
                out.append(
                    Alert(
                        agent_id=self.agent_id,
                        severity=Severity.MAJOR,
                        time=now,
                        message=f"Transformer overheating: hot spot {m.hot_spot_c:.1f} °C",
                    )
                )
        elif cool and m.state is _S.OVERHEATING:
            self.fire(m, _E.TEMPERATURE_NORMAL, f"hot spot {m.hot_spot_c:.1f} °C", now, out)
        self._critical(m, now, out)
        self._daily_aging(m, now, out)

        regulating = self._regulate(m, x, now, out)
        if m.state is not _S.OVERHEATING:
            pct = m.load_percent
            # thresholds are entered at their value and left only `load_hysteresis_percent` below it
            hyst = a.load_hysteresis_percent
            over = 100.0 - (hyst if m.state is _S.OVERLOADED else 0.0)
            high = a.high_load_percent - (hyst if m.state in (_S.HIGH_LOAD, _S.OVERLOADED) else 0.0)
            if pct > over:
                self.fire(m, _E.LOAD_OVER, f"load {pct:.1f} % of rating", now, out)
            elif pct >= high:
                self.fire(m, _E.LOAD_HIGH, f"load {pct:.1f} % of rating", now, out)
            elif m.state in (_S.HIGH_LOAD, _S.OVERLOADED):
                self.fire(m, _E.LOAD_NORMAL, f"load {pct:.1f} % of rating", now, out)
            if regulating and m.state is _S.NORMAL_OPERATION:
                self.fire(
                    m, _E.TAP_CHANGE_STARTED, f"control voltage {m.control_voltage_v:.1f} V out of band", now, out
                )
            elif not regulating and m.state is _S.VOLTAGE_REGULATION:
                self.fire(m, _E.VOLTAGE_IN_BAND, f"control voltage {m.control_voltage_v or 0:.1f} V in band", now, out)
        self._capacity_notice(m, now, out)
        return m, out

    def _critical(self, m: TransformerMemory, now: float, out: list[Action]) -> None:
        a = self.attrs
        if m.hot_spot_c > a.hot_spot_critical_c and not m.critical_alerted:
            m.critical_alerted = True
            out.append(
                Alert(
                    agent_id=self.agent_id,
                    severity=Severity.CRITICAL,
                    time=now,
                    message=f"hot spot {m.hot_spot_c:.1f} °C above critical {a.hot_spot_critical_c:.0f} °C: "
                    "load reduction needed, maintenance team notified",
                )
            )
            if self.links.substation:
                out.append(
                    BusMessage(
                        source=self.agent_id,
                        target=self.links.substation,
                        kind="emergency_load_reduction",
                        payload={
                            "transformer": self.agent_id,
                            "hot_spot_c": m.hot_spot_c,
                            "hot_spot_critical_c": a.hot_spot_critical_c,
                            "load_percent": m.load_percent,
                            "customers": self.links.customers_downstream,
                        },
                        urgent=True,
                    )
                )
            out.append(self._maintenance_request(m, "hot spot above critical"))
        elif m.hot_spot_c < a.hot_spot_alarm_c:
            m.critical_alerted = False

    def _daily_aging(self, m: TransformerMemory, now: float, out: list[Action]) -> None:
        """Every 24 modelled hours: F_EQA of the day; above `aging_alarm_factor`, ask for maintenance."""
        if m.window_h < 24.0 - 1e-6:
            return
        f_eqa = m.window_aging_h / m.window_h
        m.last_daily_faa = f_eqa
        m.window_aging_h = m.window_h = 0.0
        if f_eqa > self.attrs.aging_alarm_factor:
            lol_day = loss_of_life_percent(f_eqa * 24.0, self.attrs.normal_insulation_life_h)
            out.append(
                Alert(
                    agent_id=self.agent_id,
                    severity=Severity.WARNING,
                    time=now,
                    message=f"insulation aged {f_eqa:.2f}x normal over the last day "
                    f"({lol_day:.4f} % loss of life): maintenance recommended",
                )
            )
            out.append(
                self._maintenance_request(
                    m, "accelerated insulation aging", equivalent_aging_factor=f_eqa, loss_of_life_percent_day=lol_day
                )
            )

    def _maintenance_request(
        self,
        m: TransformerMemory,
        reason: str,
        *,
        prediction: failure.FailurePrediction | None = None,
        health: HealthInputs | None = None,
        **extra: float,
    ) -> BusMessage:
        p = prediction
        dga = health.dga if health is not None else None
        return BusMessage(
            source=self.agent_id,
            topic=Topic.MAINTENANCE_SCHEDULED,
            kind="maintenance_request",
            payload={
                "element": self.agent_id,
                "element_type": self.agent_type,
                "reason": reason,
                "hot_spot_c": m.hot_spot_c,
                "top_oil_c": m.top_oil_c,
                "loss_of_life_percent": (
                    health.loss_of_life_percent
                    if health is not None and health.loss_of_life_percent is not None
                    else m.loss_of_life_percent
                ),
                "equivalent_aging_factor": extra.get("equivalent_aging_factor"),
                "loss_of_life_percent_day": extra.get("loss_of_life_percent_day"),
                "failure_probability": None if p is None else p.probability,
                "horizon_days": None if p is None else p.horizon_days,
                "failure_mode": None if p is None else p.mode,
                "failure_mode_key": None if p is None else p.mode_key,
                "recommended_within_days": None if p is None else p.recommended_within_days,
                "contributions": [] if p is None else [c.to_dict() for c in p.contributions],
                "dga_status": None if dga is None else dga.status,
                "duval_zone": None if dga is None or dga.duval is None else dga.duval.zone.value,
                "health": None if health is None else health.to_dict(),
                "customers": self.links.customers_downstream,
                "critical_customers": self.links.critical_customers_downstream,
            },
        )

    def _capacity_notice(self, m: TransformerMemory, now: float, out: list[Action]) -> None:
        a = self.attrs
        if m.load_percent > a.capacity_notice_percent and not m.capacity_notice_sent:
            m.capacity_notice_sent = True
            available = max(0.0, a.rated_capacity * (1 - m.load_percent / 100.0))
            payload = {
                "transformer": self.agent_id,
                "load_percent": m.load_percent,
                "available_kva": available,
                "customers": self.links.customers_downstream,
            }
            # the substation hears it on load_changes
            out.append(
                BusMessage(source=self.agent_id, topic=Topic.LOAD_CHANGES, kind="capacity_constraint", payload=payload)
            )
            request = {
                "element": self.agent_id,
                "element_type": self.agent_type,
                "load_percent": m.load_percent,
                "available_kva": available,
                "time_to_capacity_s": None,
                "transfer_options": list(self.links.transfer_options),
            }
            out += [
                BusMessage(source=self.agent_id, target=t, kind="load_transfer_request", payload=request)
                for t in self.links.adjacent_transformers
            ]
        elif m.load_percent < a.capacity_notice_percent - 5.0:
            m.capacity_notice_sent = False

    # ------------------------------------------------------------------ health

    def on_health(
        self,
        memory: TransformerMemory,
        health: HealthInputs,
        now: float,
        *,
        horizon_days: float = 60.0,
        threshold: float = 0.2,
        acceptable_risk: float = 0.25,
    ) -> tuple[TransformerMemory, list[Action]]:
        """A health evaluation: predict, keep it, and ask for maintenance once per crossing."""
        m = copy.deepcopy(memory)
        out: list[Action] = []
        prediction = failure.predict(health, horizon_days=horizon_days, acceptable_risk=acceptable_risk)
        m.health = {"inputs": health.to_dict(), "prediction": prediction.to_dict()}
        trend = health.top_oil
        if trend is not None and trend.detected and not m.trend_alerted:
            m.trend_alerted = True
            out.append(
                Alert(
                    agent_id=self.agent_id,
                    severity=Severity.WARNING,
                    time=now,
                    message=f"top-oil temperature trending up {trend.slope_c_per_month:+.1f} °C a month at "
                    f"comparable load ({trend.reference_load_pu:.0%}; 95 % interval "
                    f"{trend.low_c_per_month:+.1f} to {trend.slope_c_per_month + trend.ci95_c_per_month:+.1f}"
                    f", {trend.days} days)",
                )
            )
        elif trend is not None and not trend.detected:
            m.trend_alerted = False
        status = health.dga.status if health.dga is not None else 1
        crossing = prediction.probability >= threshold or status >= 3
        if crossing and not m.health_request_sent:
            m.health_request_sent = True
            reason = (
                f"{prediction.probability:.0%} chance of failure within {horizon_days:g} days "
                f"({prediction.mode}); maintenance recommended within {prediction.recommended_within_days:.0f} days"
            )
            if prediction.probability < threshold:
                reason = f"dissolved gases at IEEE C57.104-2019 status {status}; " + reason
            out.append(Alert(agent_id=self.agent_id, severity=Severity.MAJOR, time=now, message=reason))
            out.append(self._maintenance_request(m, reason, prediction=prediction, health=health))
        elif not crossing and prediction.probability < 0.5 * threshold:
            m.health_request_sent = False  # well back below: a later crossing is a new request
        return m, out

    # ------------------------------------------------------------------ requests

    def request(
        self, memory: TransformerMemory, request: str, args: dict[str, Any], now: float
    ) -> tuple[TransformerMemory, list[Action]]:
        m = copy.deepcopy(memory)
        if request == "maintenance":
            m.maintenance = bool(args.get("on", True))
        elif request == "cvr":
            m.cvr_active = bool(args.get("on", True))

        elif request == "fault":
            m.fault = True
        elif request == "return_to_service":
            m.fault = False
            m.maintenance = False
        else:
            raise ValueError(
                f"transformer {self.agent_id}: unknown request {request!r} "
                "(expected maintenance, cvr, fault, return_to_service)"
            )
        return m, []

    def on_message(
        self, memory: TransformerMemory, message: BusMessage, now: float
    ) -> tuple[TransformerMemory, list[Action]]:
        """Customers below the voltage range: conservation voltage reduction must not go on lowering it."""
        if message.kind != "low_voltage_at_customer" or not memory.cvr_active:
            return memory, []
        m = copy.deepcopy(memory)
        m.cvr_active = False
        p = message.payload
        return m, [
            Alert(
                agent_id=self.agent_id,
                severity=Severity.WARNING,
                time=now,
                message=f"{self.agent_id}: {p.get('meters', 0)} customer(s) of {p.get('group', 'its meters')} "
                "below the voltage range: conservation voltage reduction off",
            )
        ]

    def attributes(self, memory: Memory) -> dict[str, Any]:
        m = memory
        assert isinstance(m, TransformerMemory)
        a = self.attrs
        return {
            "rated_capacity": a.rated_capacity,
            "current_load": m.load_kw,
            "load_percentage": m.load_percent,
            "remaining_capacity_kva": max(0.0, a.rated_capacity * (1.0 - m.load_percent / 100.0)),
            "temperature": m.top_oil_c,
            "top_oil_temp_c": m.top_oil_c,
            "hot_spot_temperature_c": m.hot_spot_c,
            "aging_acceleration_factor": m.aging_factor,
            "equivalent_aging_h": m.equivalent_aging_h,
            "daily_equivalent_aging_factor": m.last_daily_faa,
            "loss_of_life_percent": m.loss_of_life_percent,
            "tap_position": m.tap_position,
            "tap_operations": m.tap_operations,
            "control_voltage_v": m.control_voltage_v,
            "regulated_voltage_v": self.regulated_voltage_v(m),
            "cvr_active": m.cvr_active,
            "failure_probability": None if not m.health else m.health["prediction"]["probability"],
            "failure_horizon_days": None if not m.health else m.health["prediction"]["horizon_days"],
            "failure_mode": None if not m.health else m.health["prediction"]["failure_mode"],
            "health": m.health,
        }


# --------------------------------------------------------------------------- the type, declared once

_GASES = {f"{gas}_ppm": spec.analog("ppm") for gas in ("h2", "ch4", "c2h6", "c2h4", "c2h2", "co", "co2")}

POINTS: dict[str, spec.PointName] = {
    "load_kw": spec.KW,
    "load_kvar": spec.KVAR,
    "primary_power_kw": spec.KW,
    "top_oil_temp_c": spec.TEMP,
    "ambient_temp_c": spec.TEMP,
    "secondary_voltage_v": spec.analog("V"),
    "current_a": spec.AMP,
    "tap_position": spec.COUNTER,
    "fans_running": spec.PointName(spec.COUNT | spec.BINARY),
    "operating_hours": spec.PointName(spec.COUNT, frozenset({"h"})),
    "tap_setpoint": spec.SETPOINT,
    **_GASES,
}


def _links(b: spec.Build) -> Links:
    topo = b.topology
    line = b.first_upstream("power_line")
    siblings = [n for n in b.of_type(topo.children(line) if line else [], "transformer") if n != b.agent_id]
    return Links(
        upstream_breaker=b.protecting_breaker,
        upstream_line=line,
        substation=b.substation,
        adjacent_transformers=tuple(siblings),
        customers_downstream=topo.meters_downstream(b.agent_id),
        critical_customers_downstream=b.critical_downstream(),
        transfer_options=tuple(o.to_dict() for o in topo.alternative_supply_paths(line)) if line else (),
    )


def _derive_inputs(rt: spec.RuntimeView, agent_id: str, wall: float | None) -> dict[str, Any]:
    """De-energised when its protecting breaker is open."""
    upstream = rt.agents[agent_id].links.upstream_breaker
    return {"energized": False} if upstream and rt.breaker_is_open(upstream) else {}


def _cvr(rt: spec.RuntimeView, agent_id: str, message: BusMessage, now: float) -> list[Action]:
    """The substation asks for conservation voltage reduction (on or off)."""
    return rt.request(agent_id, "cvr", now, on=bool(message.payload.get("cvr", True)))


def _reduce_load(rt: spec.RuntimeView, agent_id: str, message: BusMessage, now: float) -> list[Action]:
    return rt.request(agent_id, "cvr", now, on=True)


SPEC = spec.AgentSpec(
    type_name="transformer",
    listing_order=2,
    table=TABLE,
    attributes=TransformerAttributes,
    points=POINTS,
    inputs=TransformerInputs,
    derived=frozenset({"energized"}),
    derive_inputs=_derive_inputs,
    links=_links,
    factory=lambda b, links: TransformerAgent(b.agent_id, b.attrs, links),
    step_order=2,
    requests=("maintenance", "cvr", "fault", "return_to_service"),
    subscriptions=(Topic.VOLTAGE_EVENTS,),
    message_handlers={"optimize_taps": _cvr, "reduce_load": _reduce_load},
    visualization=visualization.transformer_view,
    description="a distribution or station transformer: loading, C57.91 thermal model and ageing, tap changer, "
    "CVR, health",
)
