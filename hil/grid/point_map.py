"""The model's state as the IEDs' points, and the IEDs' commands as changes of that state.

`_NAMES` lists what the model produces for each agent type, `_COMMANDS` what it accepts.
"""

from __future__ import annotations

import cmath
import math

import numpy as np

from gateway.agents.registry import SPECS as AGENT_SPECS
from gateway.agents.schema import AgentType
from gateway.config import SiteConfig
from hil.grid.physics import GridPhysics
from hil.grid.state import SQRT3, log

PHASOR_NAMES = ("va_kv", "vb_kv", "vc_kv", "va_deg", "vb_deg", "vc_deg", "ia_deg", "ib_deg", "ic_deg")
"""What a switching device's relay measures as phasors: phase-to-neutral voltage magnitudes (kV) and
the angles of the phase voltages and currents (degrees, against the source EMF of phase A, as a
synchrophasor would be: the model has one reference and no frequency drift)."""


def _degrees(z: complex) -> float:
    """Angle in degrees, 0 for a phasor too small to have one."""
    return 0.0 if abs(z) < 1e-9 else math.degrees(cmath.phase(z))


_NOT_MODELLED: dict[str, frozenset[str]] = {
    AgentType.CAPACITOR_BANK: frozenset({"source_reactive_power_kvar", "ambient_temp_c"}),
}
"""Point names of an agent type's vocabulary the model computes no value for (another agent's
point, mapped by id, supplies them)."""
_NAMES: dict[str, frozenset[str]] = {
    t: frozenset(AGENT_SPECS[t].points) - _NOT_MODELLED.get(t, frozenset()) for t in AgentType
}
"""What the model produces for each agent type it has physics for: the type's vocabulary in the
agent registry, less the above. A type the model has no physics for gets no values."""
_COMMANDS: dict[str, frozenset[str]] = {t: AGENT_SPECS[t].commands for t in AgentType if AGENT_SPECS[t].commands}
"""The command points the model obeys: every command point of the registry's vocabulary."""


class GridPointMap(GridPhysics):
    """Point ids ↔ (agent, name) of the model, values read from the last solve, commands applied."""

    def _build_points(self, site: SiteConfig) -> None:
        # A point may feed several agents (a capacitor's controller reading the feeder's kvar);
        # the model produces it as the agent that can produce it, preferring the agent its id
        # names, then breakers (whose IEDs carry the feeder measurements).
        breakers_last = sorted(site.agents, key=lambda a: a.type == AgentType.CIRCUIT_BREAKER)
        produced: dict[str, tuple[str, str]] = {}
        rank: dict[str, tuple[bool, bool]] = {}
        for agent in breakers_last:
            if agent.id not in self._modelled():
                continue
            for name, pid in agent.points.items():
                mine = (name in _NAMES.get(agent.type, ()), pid.split(".", 1)[0] == agent.id)
                if pid in rank and mine < rank[pid]:
                    continue
                rank[pid] = mine
                produced[pid] = (agent.id, name)
                self._command_targets.pop(pid, None)
                if name in _COMMANDS.get(agent.type, ()):
                    self._command_targets[pid] = (agent.id, name)
        for ied in site.ieds:
            for point in ied.points:
                if point.id in produced or "." not in point.id:
                    continue
                agent_id, name = point.id.split(".", 1)
                if agent_id in self._modelled() and name in _NAMES.get(self._agent_types[agent_id], ()):
                    produced[point.id] = (agent_id, name)
                    if name in _COMMANDS.get(self._agent_types[agent_id], ()):
                        self._command_targets[point.id] = (agent_id, name)
        self._point_sources = [(pid, a, n) for pid, (a, n) in produced.items()]

    def apply_command(self, point_id: str, value: float | int | bool, now_s: float) -> None:
        """A write from the gateway to an IED point of the simulated grid."""
        target = self._command_targets.get(point_id)
        if target is None and "." in point_id:
            # a DER set-point written through a device's own register map (a SunSpec inverter)
            der_id, name = point_id.split(".", 1)
            if der_id in self.ders and name in _COMMANDS[AgentType.RENEWABLE_ENERGY]:
                target = (der_id, name)
        if target is None:
            raise KeyError(
                f"{point_id!r} is not a command point of the simulated grid; "
                f"command points: {', '.join(sorted(self._command_targets))}"
            )
        agent_id, name = target
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{point_id}: value must be finite, found {value!r}")
        if agent_id in self.breakers:
            self.breakers[agent_id].check_remote(point_id)  # local control: refused, nothing changes
        self._check_range(point_id, agent_id, name, value)
        at = self._catch_up(now_s)
        if agent_id in self.breakers:
            cb = self.breakers[agent_id]
            flag = bool(value)
            if name == "fpi_reset":
                cb.fpi_reset = flag
                if flag and cb.fpi:
                    cb.reset_indicator()
                    log.info("%s: fault-passage indicator reset by command", agent_id)
            elif name == "trip_cmd":
                cb.trip_cmd = flag
                if flag:
                    self._schedule(agent_id, False, at)
            elif name == "close_cmd":
                cb.close_cmd = flag
                if flag:
                    self._schedule(agent_id, True, at)
            elif name == "position_cmd":
                cb.position_cmd = flag
                self._schedule(agent_id, flag, at)
        elif agent_id in self.transformers:
            t = self.transformers[agent_id]
            t.tap_setpoint = int(round(float(value)))
            t.next_tap_s = at + self.settings.tap_change_time_s
            self._move_taps(at)
        elif agent_id in self.capacitors:
            cap = self.capacitors[agent_id]
            cap.steps_cmd = int(round(float(value)))
        elif agent_id in self.ders:
            der = self.ders[agent_id]
            if name == "p_limit_pct":
                der.p_limit_pct = float(value)
            elif name == "q_setpoint_kvar":
                der.q_setpoint_kvar = float(value)
            elif name == "connect_cmd":
                der.connect_cmd = bool(value)
            elif name == "p_setpoint_kw":
                if der.soc_pct is None:
                    raise ValueError(f"{agent_id} is not a battery: it has no charge/discharge set-point")
                der.p_setpoint_kw = float(value)
        self._dirty = True
        self._solve(self._now)

    def _check_range(self, point_id: str, agent_id: str, name: str, value: float | int | bool) -> None:
        """Refuse a set-point the device cannot take, as a real controller does (Modbus exception 3,
        illegal data value) rather than clamping it: the master must learn its write did not happen."""
        low: float | None = None
        high: float | None = None
        if agent_id in self.transformers:
            low, high = self.transformers[agent_id].attrs.tap_min, self.transformers[agent_id].attrs.tap_max
        elif agent_id in self.capacitors:
            low, high = 0, self.capacitors[agent_id].attrs.num_steps
        elif agent_id in self.ders and name == "p_limit_pct":
            low, high = 0.0, 100.0
        if low is None or high is None:
            return
        number = float(value)
        rounded = round(number) if agent_id not in self.ders else number
        if not low <= rounded <= high:
            raise ValueError(f"{point_id}: {value!r} is outside the device's range {low}..{high}")

    def _agent_values(self, agent_id: str) -> dict[str, float | int | bool]:
        kind = self._agent_types[agent_id]
        if kind == AgentType.SUBSTATION:
            # the incomer meter sits on the station bus, after the grid's source impedance
            bus = self._station_bus_of[agent_id]
            s = complex(self._v[bus] * np.conj(self._i1[bus])) * self.net.base_mva * 1000.0
            return {
                "bus_voltage_kv": self._kv(bus),
                "total_load_kw": s.real,
                "total_load_kvar": s.imag,
                "frequency_hz": self._frequency_hz,
            }
        if kind == AgentType.CIRCUIT_BREAKER:
            cb = self.breakers[agent_id]
            i_base = self.net.i_base_a(cb.bus)
            i_abc, s, direction = self._flow(cb.branch)
            ia, ib, ic = (float(abs(x)) * i_base for x in i_abc)
            i_n = float(abs(i_abc.sum())) * i_base
            v_bus = self._device_voltage_bus(cb)
            phase_kv = self.net.buses[v_bus].base_kv / SQRT3
            va, vb, vc = self._phase_voltages_pu(v_bus)
            sign = -1.0 if direction < 0 else 1.0
            phasors = {
                "va_kv": abs(va) * phase_kv,
                "vb_kv": abs(vb) * phase_kv,
                "vc_kv": abs(vc) * phase_kv,
                "va_deg": _degrees(va),
                "vb_deg": _degrees(vb),
                "vc_deg": _degrees(vc),
                "ia_deg": _degrees(sign * i_abc[0]),
                "ib_deg": _degrees(sign * i_abc[1]),
                "ic_deg": _degrees(sign * i_abc[2]),
            }
            return {
                **phasors,
                "ia": ia,
                "ib": ib,
                "ic": ic,
                "in": i_n,
                "closed": cb.closed,
                "operations": cb.operations,
                "voltage_kv": self._kv(self._device_voltage_bus(cb)),
                "frequency_hz": self._frequency_hz,
                "active_power_kw": s.real,
                "reactive_power_kvar": s.imag,
                "trip_cmd": cb.trip_cmd,
                "close_cmd": cb.close_cmd,
                "position_cmd": cb.position_cmd,
                "fpi": cb.fpi,
                "fpi_reset": cb.fpi_reset,
                "local": cb.local,
            }
        if kind == AgentType.POWER_LINE:
            line = self.lines[agent_id]
            first = line.first_bus
            i_abc, s, _ = self._flow(line.segments[0][4])
            return {
                "current_a": float(abs(i_abc[0])) * self.net.i_base_a(first),
                "voltage_kv": self._kv(line.start_bus),
                "active_power_kw": s.real,
                "reactive_power_kvar": s.imag,
                "end_voltage_kv": self._kv(line.end_bus),
            }
        if kind == AgentType.TRANSFORMER:
            t = self.transformers[agent_id]
            s_sec = self._v[t.bus] * np.conj(self._i1[t.bus]) * self.net.base_mva * 1000.0
            ambient = self._ambient_c(t, self._now)
            values: dict[str, float | int | bool] = {
                "load_kw": float(s_sec.real),
                "load_kvar": float(s_sec.imag),
                "top_oil_temp_c": ambient + (t.top_oil_rise_c or 0.0),
                "ambient_temp_c": ambient,
                "secondary_voltage_v": self._kv(t.bus) * 1000.0,
                "current_a": float(abs(self._i1[t.bus]) * self.net.i_base_a(t.bus)),
                "tap_position": t.tap_position,
                "tap_setpoint": t.tap_setpoint,
            }
            condition = self.conditions.get(agent_id)
            return condition.live(values, self._now) if condition is not None else values
        if kind == AgentType.CAPACITOR_BANK:
            cap = self.capacitors[agent_id]
            v_pu_rated = abs(self._v[cap.bus]) * self.net.buses[cap.bus].base_kv / cap.attrs.voltage_level
            q = cap.attrs.rated_capacity * 1000.0 * cap.steps_active / cap.attrs.num_steps * v_pu_rated**2
            return {
                "bus_voltage_kv": self._kv(cap.bus),
                "reactive_power_kvar": q,
                "steps_active": cap.steps_active,
                "steps_cmd": cap.steps_cmd,
            }
        der = self.ders[agent_id]
        out: dict[str, float | int | bool] = {
            "active_power_kw": der.p_kw,
            "reactive_power_kvar": der.q_kvar,
            "voltage_pu": float(abs(self._v[der.bus])),
            "irradiance_w_m2": der.irradiance_w_m2,
            "p_limit_pct": der.p_limit_pct,
            "q_setpoint_kvar": der.q_setpoint_kvar,
            "connected": der.connected,
            "connect_cmd": der.connect_cmd,
            "energy_kwh": der.energy_kwh,
            "ambient_temp_c": self._ambient_c(None, self._now, self._substation_of_bus(der.bus)),
        }
        if der.soc_pct is not None:
            assert der.attrs.energy_capacity_kwh is not None
            out.update(
                soc_pct=der.soc_pct,
                p_setpoint_kw=der.p_setpoint_kw,
                energy_available_kwh=der.attrs.energy_capacity_kwh * der.soc_pct / 100.0,
            )
        return out

    def point_values(self) -> dict[str, float | int | bool]:
        """Every IED point id the model produces → engineering value (commands: last commanded)."""
        if self._dirty:
            self._solve(self._now)
        if self._point_cache is None:
            cache: dict[str, dict[str, float | int | bool]] = {}
            out: dict[str, float | int | bool] = {}
            for pid, agent_id, name in self._point_sources:
                values = cache.get(agent_id)
                if values is None:
                    values = cache[agent_id] = self._agent_values(agent_id)
                if name in values:
                    out[pid] = values[name]
            self._point_cache = out
        return dict(self._point_cache)

    def agent_values(self, agent_id: str) -> dict[str, float | int | bool]:
        """All measurements of one modelled element by name (for tests and the control socket)."""
        if agent_id not in self._modelled():
            raise KeyError(f"{agent_id!r} is not a modelled element")
        if self._dirty:
            self._solve(self._now)
        return self._agent_values(agent_id)

    def local_command_points(self) -> dict[str, bool]:
        """Every command point of a switching device → whether its device is in local control
        (an IEC 61850 server refuses those controls itself)."""
        return {
            pid: self.breakers[agent_id].local
            for pid, (agent_id, _) in self._command_targets.items()
            if agent_id in self.breakers
        }
