"""Renewable Energy agent: a DER behind a smart inverter (IEEE 1547-2018 behaviour).

While connected it runs volt-var (category A or B curve, first-order response with the
category's open-loop response time) and volt-watt, and honours curtailment requests; the
active-power limit sent to the inverter is the lower of the two. When the grid behind it is
lost (upstream breaker tripped, line dead, or voltage collapse) it is Islanded for at most one
step: it commands disconnection at once (anti-islanding). It reconnects only after the grid has
been continuously within the enter-service window for `enter_service_delay_s` (default 300 s).
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
from gateway.agents.fsm import IGNORE, TransitionTable, row
from gateway.agents.physics import OPEN_LOOP_RESPONSE_S, first_order_lag, volt_var_q_pu, volt_watt_p_pu
from gateway.agents.schema import RenewableEnergyAttributes


class DerState(enum.Enum):
    GENERATING = "Generating"
    STANDBY = "Standby"
    CURTAILED = "Curtailed"
    ISLANDED = "Islanded"
    FAULTED = "Faulted"
    OFFLINE = "Offline"
    MAINTENANCE = "Maintenance"


class DerEvent(enum.Enum):
    PRODUCING = enum.auto()
    IDLE = enum.auto()
    CURTAILMENT_ACTIVE = enum.auto()
    GRID_LOST = enum.auto()
    DISCONNECTED = enum.auto()
    RECONNECTED = enum.auto()
    INVERTER_FAULT = enum.auto()
    FAULT_CLEARED = enum.auto()
    MAINTENANCE_START = enum.auto()
    MAINTENANCE_END = enum.auto()


_S, _E = DerState, DerEvent
_ONLINE = dict(
    PRODUCING=_S.GENERATING,
    IDLE=_S.STANDBY,
    CURTAILMENT_ACTIVE=_S.CURTAILED,
    GRID_LOST=_S.ISLANDED,
    DISCONNECTED=_S.OFFLINE,
    INVERTER_FAULT=_S.FAULTED,
    MAINTENANCE_START=_S.MAINTENANCE,
)


def _online(own: str) -> dict[DerEvent, Any]:
    # online: already connected, no fault to clear, not in maintenance
    return row(_E, **{**_ONLINE, own: IGNORE}, ignore="RECONNECTED FAULT_CLEARED MAINTENANCE_END")


TABLE: TransitionTable[DerState, DerEvent] = TransitionTable(
    DerState,
    DerEvent,
    initial=_S.OFFLINE,
    rows={
        _S.GENERATING: _online("PRODUCING"),
        _S.STANDBY: _online("IDLE"),
        _S.CURTAILED: _online("CURTAILMENT_ACTIVE"),
        # islanded: anti-islanding must disconnect it; production readings do not bring it back
        _S.ISLANDED: row(
            _E,
            DISCONNECTED=_S.OFFLINE,
            INVERTER_FAULT=_S.FAULTED,
            MAINTENANCE_START=_S.MAINTENANCE,
            ignore="PRODUCING IDLE CURTAILMENT_ACTIVE GRID_LOST RECONNECTED FAULT_CLEARED MAINTENANCE_END",
        ),
        _S.FAULTED: row(
            _E,
            FAULT_CLEARED=_S.OFFLINE,
            MAINTENANCE_START=_S.MAINTENANCE,
            ignore="PRODUCING IDLE CURTAILMENT_ACTIVE GRID_LOST DISCONNECTED RECONNECTED INVERTER_FAULT "
            "MAINTENANCE_END",
        ),
        # offline: it comes back through a reconnection, never straight from a reading
        _S.OFFLINE: row(
            _E,
            RECONNECTED=_S.STANDBY,
            INVERTER_FAULT=_S.FAULTED,
            MAINTENANCE_START=_S.MAINTENANCE,
            ignore="PRODUCING IDLE CURTAILMENT_ACTIVE GRID_LOST DISCONNECTED FAULT_CLEARED MAINTENANCE_END",
        ),
        _S.MAINTENANCE: row(
            _E,
            MAINTENANCE_END=_S.OFFLINE,
            ignore="PRODUCING IDLE CURTAILMENT_ACTIVE GRID_LOST DISCONNECTED RECONNECTED "
            "INVERTER_FAULT FAULT_CLEARED MAINTENANCE_START",
        ),
    },
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DerInputs:
    active_power_kw: float | None = None
    reactive_power_kvar: float | None = None
    voltage_pu: float | None = None
    irradiance_w_m2: float | None = None
    connected: bool | None = None
    grid_available: bool | None = None
    """False when the feeder behind the DER is dead (from topology and breaker states)."""


@dataclass
class DerMemory(Memory):
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("last_time", "grid_ok_since")

    last_time: float | None = None
    connected: bool = False
    generation_kw: float = 0.0
    energy_exported_kwh: float = 0.0
    energy_imported_kwh: float = 0.0
    voltage_pu: float | None = None
    q_target_kvar: float = 0.0
    q_command_kvar: float | None = None
    p_limit_command_pct: float | None = None
    curtail_pct: float | None = None
    grid_ok_since: float | None = None
    disconnect_commanded: bool = False
    reconnect_commanded: bool = False
    maintenance: bool = False
    fault: bool = False
    voltage_support_notified: bool = False
    dispatch_kw: float | None = None
    """A battery's commanded active power (+ discharge, − charge); None: not dispatched."""


class RenewableEnergyAgent(Agent[DerState, DerEvent]):
    agent_type = "renewable_energy"
    TABLE = TABLE

    def __init__(
        self,
        agent_id: str,
        attrs: RenewableEnergyAttributes,
        links: Links | None = None,
        has_connection_feedback: bool = False,
    ) -> None:
        super().__init__(agent_id, links)
        self.has_connection_feedback = has_connection_feedback
        self.attrs = attrs
        self.s_rated_kva = attrs.rated_apparent_power_kva or attrs.rated_capacity
        self.min_generation_kw = (
            attrs.min_generation_kw if attrs.min_generation_kw is not None else 0.01 * attrs.rated_capacity
        )
        self.q_deadband_kvar = (
            attrs.q_update_deadband_kvar if attrs.q_update_deadband_kvar is not None else 0.01 * self.s_rated_kva
        )
        self.p_min_pu = 0.0 if attrs.resource_type == "battery_storage" else 0.2

    def initial_memory(self, now: float) -> DerMemory:
        return DerMemory(state=TABLE.initial, since=now)

    def memory_from_dict(self, data: dict[str, Any]) -> DerMemory:
        return DerMemory.from_dict(data, DerState)

    def q_curve_kvar(self, voltage_pu: float, active_power_kw: float = 0.0) -> float:
        a = self.attrs
        if "volt-var" in a.reactive_power_mode:
            return volt_var_q_pu(voltage_pu, a.ieee1547_category, a.v_ref_pu) * self.s_rated_kva
        if a.reactive_power_mode == "fixed" and a.fixed_power_factor < 1.0:
            return -abs(active_power_kw) * math.tan(math.acos(a.fixed_power_factor))
        return 0.0

    def p_limit_pct(self, m: DerMemory) -> float:
        a = self.attrs
        limit = 100.0
        if "volt-watt" in a.reactive_power_mode and m.voltage_pu is not None:
            limit = 100.0 * volt_watt_p_pu(m.voltage_pu, self.p_min_pu)
        if m.curtail_pct is not None:
            limit = min(limit, m.curtail_pct)
        return limit

    def step(self, memory: DerMemory, inputs: DerInputs, now: float) -> tuple[DerMemory, list[Action]]:
        m = copy.deepcopy(memory)
        x = inputs
        a = self.attrs
        out: list[Action] = []
        me = self.agent_id
        dt = 0.0 if m.last_time is None else max(0.0, now - m.last_time)
        m.last_time = now
        if x.active_power_kw is not None:
            m.generation_kw = x.active_power_kw
        if m.generation_kw > 0:
            m.energy_exported_kwh += m.generation_kw * dt / 3600.0
        else:
            m.energy_imported_kwh -= m.generation_kw * dt / 3600.0
        if x.voltage_pu is not None:
            m.voltage_pu = x.voltage_pu
        if x.connected is not None:
            m.connected = x.connected
        elif (
            not self.has_connection_feedback
            and m.state is _S.OFFLINE
            and not m.disconnect_commanded
            and x.grid_available is not False
        ):
            m.connected = True  # no feedback point: assume the inverter follows the grid
        grid_lost = x.grid_available is False or (m.voltage_pu is not None and m.voltage_pu < 0.5)
        in_window = (
            not grid_lost
            and m.voltage_pu is not None
            and a.enter_service_v_min_pu <= m.voltage_pu <= a.enter_service_v_max_pu
        )
        if not m.connected:
            m.reconnect_commanded = m.reconnect_commanded and not grid_lost

        if m.maintenance:
            if self.fire(m, _E.MAINTENANCE_START, "maintenance requested", now, out):
                out.append(self._connect(False, "maintenance", m))
            return m, out
        if m.state is _S.MAINTENANCE:
            self.fire(m, _E.MAINTENANCE_END, "maintenance finished", now, out)
        if m.fault:
            if self.fire(m, _E.INVERTER_FAULT, "inverter fault reported", now, out):
                out.append(Alert(agent_id=me, severity=Severity.MAJOR, time=now, message="inverter fault"))
            return m, out
        if m.state is _S.FAULTED:
            self.fire(m, _E.FAULT_CLEARED, "inverter fault cleared", now, out)

        if m.connected and grid_lost:
            if self.fire(m, _E.GRID_LOST, "grid lost behind the point of connection", now, out):
                out.append(self._connect(False, "anti-islanding: grid fault", m))
                out.append(
                    Alert(
                        agent_id=me,
                        severity=Severity.MAJOR,
                        time=now,
                        message="grid lost: disconnecting (anti-islanding), waiting for grid restoration",
                    )
                )
                out.append(
                    BusMessage(
                        source=me,
                        topic=Topic.FAULT_ALERTS,
                        kind="der_disconnected",
                        payload={"der": me, "reason": "anti_islanding", "generation_kw": m.generation_kw},
                        urgent=True,
                    )
                )
            m.grid_ok_since = None
            return m, out
        if not m.connected:
            if self.fire(m, _E.DISCONNECTED, "inverter disconnected", now, out):
                m.grid_ok_since = None
            if m.state is _S.OFFLINE:
                m.grid_ok_since = (m.grid_ok_since if m.grid_ok_since is not None else now) if in_window else None
                if (
                    m.grid_ok_since is not None
                    and now - m.grid_ok_since >= a.enter_service_delay_s
                    and not m.reconnect_commanded
                ):
                    m.reconnect_commanded = True
                    m.disconnect_commanded = False
                    out.append(
                        self._connect(True, f"grid within enter-service window for {now - m.grid_ok_since:.0f} s", m)
                    )
            return m, out
        if m.state is _S.OFFLINE:
            self.fire(m, _E.RECONNECTED, "inverter connected", now, out)
            m.reconnect_commanded = False
            m.disconnect_commanded = False

        out += self._grid_support(m, dt)
        limit = self.p_limit_pct(m)
        if m.curtail_pct is not None and m.curtail_pct < 100.0 and m.generation_kw > self.min_generation_kw:
            self.fire(m, _E.CURTAILMENT_ACTIVE, f"curtailed to {m.curtail_pct:.0f} % on request", now, out)
        elif m.generation_kw > self.min_generation_kw:
            self.fire(m, _E.PRODUCING, f"generating {m.generation_kw:.0f} kW", now, out)
        else:
            self.fire(m, _E.IDLE, f"output {m.generation_kw:.1f} kW", now, out)
        supporting = limit < 100.0 and m.voltage_pu is not None and m.voltage_pu > 1.06 and m.state is not _S.CURTAILED
        if supporting and not m.voltage_support_notified:  # once per episode, not once a step
            out.append(
                BusMessage(
                    source=me,
                    topic=Topic.VOLTAGE_EVENTS,
                    kind="voltage_support",
                    payload={"der": me, "voltage_pu": m.voltage_pu, "p_limit_pct": limit, "q_kvar": m.q_target_kvar},
                )
            )
        m.voltage_support_notified = supporting
        return m, out

    def _grid_support(self, m: DerMemory, dt: float) -> list[Action]:
        a = self.attrs
        out: list[Action] = []
        if m.voltage_pu is None:
            return out
        target = self.q_curve_kvar(m.voltage_pu, m.generation_kw)
        olrt = OPEN_LOOP_RESPONSE_S[a.ieee1547_category]
        m.q_target_kvar = target if m.q_command_kvar is None else first_order_lag(m.q_target_kvar, target, dt, olrt)
        if m.q_command_kvar is None or abs(m.q_target_kvar - m.q_command_kvar) >= self.q_deadband_kvar:
            m.q_command_kvar = m.q_target_kvar
            out.append(
                ControlRequest(
                    agent_id=self.agent_id,
                    point_name="q_setpoint_kvar",
                    value=round(m.q_target_kvar, 3),
                    reason=f"{a.reactive_power_mode} at {m.voltage_pu:.3f} pu",
                )
            )
        limit = self.p_limit_pct(m)
        if m.p_limit_command_pct is None or abs(limit - m.p_limit_command_pct) >= 1.0:
            m.p_limit_command_pct = limit
            why = (
                "curtailment"
                if m.curtail_pct is not None and m.curtail_pct <= limit
                else f"volt-watt at {m.voltage_pu:.3f} pu"
            )
            out.append(
                ControlRequest(agent_id=self.agent_id, point_name="p_limit_pct", value=round(limit, 2), reason=why)
            )
        return out

    def _connect(self, on: bool, reason: str, m: DerMemory) -> ControlRequest:
        m.disconnect_commanded = not on
        return ControlRequest(agent_id=self.agent_id, point_name="connect_cmd", value=on, reason=reason)

    def request(
        self, memory: DerMemory, request: str, args: dict[str, Any], now: float
    ) -> tuple[DerMemory, list[Action]]:
        m = copy.deepcopy(memory)
        if request == "curtail":
            pct = args.get("pct", args.get("limit_pct"))
            if pct is not None and not 0.0 <= float(pct) <= 100.0:
                raise ValueError(f"DER {self.agent_id}: curtail pct must be within 0-100 (found {pct!r})")
            m.curtail_pct = None if pct is None or float(pct) >= 100.0 else float(pct)
        elif request == "dispatch":
            return m, self._dispatch(m, args)
        elif request == "maintenance":
            m.maintenance = bool(args.get("on", True))
        elif request == "fault":
            m.fault = bool(args.get("on", True))
        else:
            raise ValueError(
                f"DER {self.agent_id}: unknown request {request!r} (expected curtail, dispatch, maintenance, fault)"
            )
        return m, []

    def _dispatch(self, m: DerMemory, args: dict[str, Any]) -> list[Action]:
        """A battery's set-point: `kw` > 0 discharges, < 0 charges, 0 (or none) ends the dispatch.
        Within the inverter's rating and the battery's charge rate; the inverter itself stops at
        the state-of-charge limits."""
        a = self.attrs
        if a.resource_type != "battery_storage":
            raise ValueError(f"DER {self.agent_id} is {a.resource_type}: only a battery takes a dispatch set-point")
        kw = args.get("kw", 0.0)
        if isinstance(kw, bool) or not isinstance(kw, int | float) or not math.isfinite(kw):
            raise ValueError(f"DER {self.agent_id}: dispatch kw must be a number, found {kw!r}")
        low = -(a.max_charge_kw if a.max_charge_kw is not None else a.rated_capacity)
        if not low <= kw <= a.rated_capacity:
            raise ValueError(
                f"DER {self.agent_id}: dispatch kw must be within {low:g}..{a.rated_capacity:g}, found {kw!r}"
            )
        if m.state in (_S.FAULTED, _S.MAINTENANCE, _S.ISLANDED):
            raise ValueError(f"DER {self.agent_id} is {m.state.value}: it cannot be dispatched")
        m.dispatch_kw = float(kw) or None
        why = (
            (
                f"dispatch: {'discharge' if kw > 0 else 'charge'} {abs(kw):.0f} kW"
                + (f" ({args['reason']})" if args.get("reason") else "")
            )
            if kw
            else "dispatch ended"
        )
        return [
            ControlRequest(agent_id=self.agent_id, point_name="p_setpoint_kw", value=round(float(kw), 1), reason=why)
        ]

    def attributes(self, memory: Memory) -> dict[str, Any]:
        m = memory
        assert isinstance(m, DerMemory)
        a = self.attrs
        status = {"Generating": "online", "Standby": "online", "Curtailed": "curtailed", "Faulted": "fault"}
        return {
            "resource_type": a.resource_type,
            "rated_capacity": a.rated_capacity,
            "current_generation": m.generation_kw,
            "capacity_factor": 100.0 * m.generation_kw / a.rated_capacity,
            "inverter_status": status.get(m.state.value, "offline"),
            "grid_connection_status": "connected"
            if m.connected
            else ("islanded" if m.state is _S.ISLANDED else "disconnected"),
            "energy_exported": m.energy_exported_kwh,
            "energy_imported": m.energy_imported_kwh,
            "reactive_power_mode": a.reactive_power_mode,
            "voltage_pu": m.voltage_pu,
            "q_setpoint_kvar": m.q_command_kvar,
            "p_limit_pct": m.p_limit_command_pct,
            "curtail_pct": m.curtail_pct,
            "dispatch_kw": m.dispatch_kw,
        }


# --------------------------------------------------------------------------- the type, declared once

POINTS: dict[str, spec.PointName] = {
    "active_power_kw": spec.KW,
    "reactive_power_kvar": spec.KVAR,
    "voltage_pu": spec.analog("pu"),
    "irradiance_w_m2": spec.analog("W/m2", "W/m²"),
    "connected": spec.BIT,
    "soc_pct": spec.analog("%"),
    "energy_available_kwh": spec.analog("kWh"),
    "energy_kwh": spec.PointName(spec.COUNT, frozenset({"kWh"})),
    "ambient_temp_c": spec.TEMP,
    "p_limit_pct": spec.PointName(spec.ANALOG, frozenset({"%"}), command=True),
    "p_setpoint_kw": spec.PointName(spec.ANALOG, frozenset({"kW"}), command=True),
    "q_setpoint_kvar": spec.PointName(spec.ANALOG, frozenset({"kvar", "kVAr", "kVAR"}), command=True),
    "connect_cmd": spec.BIT_COMMAND,
}


def _links(b: spec.Build) -> Links:
    return Links(upstream_breaker=b.protecting_breaker, substation=b.substation)


def _derive_inputs(rt: spec.RuntimeView, agent_id: str, wall: float | None) -> dict[str, Any]:
    """No grid to follow while the protecting breaker is open."""
    upstream = rt.agents[agent_id].links.upstream_breaker
    return {"grid_available": False} if upstream and rt.breaker_is_open(upstream) else {}


SPEC = spec.AgentSpec(
    type_name="renewable_energy",
    listing_order=7,
    table=TABLE,
    attributes=RenewableEnergyAttributes,
    points=POINTS,
    inputs=DerInputs,
    derived=frozenset({"grid_available"}),
    derive_inputs=_derive_inputs,
    links=_links,
    factory=lambda b, links: RenewableEnergyAgent(
        b.agent_id, b.attrs, links, has_connection_feedback="connected" in b.points
    ),
    step_order=4,
    requests=("curtail", "dispatch", "maintenance", "fault"),
    subscriptions=(Topic.VOLTAGE_EVENTS,),
    visualization=visualization.der_view,
    description="a PV plant, wind turbine or battery: IEEE 1547 volt-var and volt-watt, curtailment, dispatch",
)
