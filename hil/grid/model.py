"""The simulated substation's electrical model, built from the site file.

Sans-IO: the runtime calls `advance(now_s)` with simulated seconds and reads `point_values()`;
commands and injections arrive with their own `now_s`. Nothing here reads a clock, sleeps or
touches a socket, so a day runs in seconds and a seed replays a scenario exactly.

`GridModel` is four parts: the state and its element records (`hil.grid.state`), the builder
from the site file (`hil.grid.builder`), the physics of each step (`hil.grid.physics`: events,
taps, the power flow, faults, ageing) and the point map (`hil.grid.point_map`: model state ↔
the IEDs' points, `_NAMES`/`_COMMANDS`). This module adds the scenario operations (faults, load
steps and ramps, demand response, switching) and the read-outs of switching state and meters.

Electrical picture (one positive-sequence network, complex per unit, `hil.grid.network`):

    ideal source ─ Z_source ─ station bus ─ breaker ─ line sections ─ tap buses ─ transformers
                                                                   └ capacitor banks, DER, ties

Topology comes from the agents' `connection_rules` (supply edges, and depends_on edges read
backwards); a line's children are tapped along it (positions from the rules' `position_m`,
else `[simulation].positions_m`, else spread evenly with the last at the far end). Switching
devices tapped at a position split their line there (in series); tie switches join two lines,
or a line and an external source (a neighbouring substation's feeder, `hil.grid.layout`);
device-less normally-open `route` rules are ties between the far ends of two lines. Device
behaviour (operating times, failures, local control, fault-passage indicators) is
`hil.grid.switching`. Loads follow daily profiles with seeded smooth noise; a line with
nothing modelled downstream carries a lumped load at its end.

Any radial configuration the switches make is solved: the tree is walked from the sources, so
a section fed backwards through a tie has its currents, voltages, powers and fault currents
from that side, and each device reports the direction of the flow through it (power in its
from → to direction, negative when fed from its load side).

Faults use the Thevenin sequence impedances at the fault (source + series branches on the
energised path) and are superposed on the pre-fault solution: the fault's phase currents are
added to every branch between the source and the fault, and positive-sequence voltages sag by
Z_common·I1 (Z_common: the impedance shared by the bus's path and the fault's path). Loads keep
their pre-fault power during the fault (it lasts until protection acts); inverter-based DER add
no fault current (current-limited near their rating, small beside the grid's kiloamps); voltage
points report the positive-sequence magnitude. Meshed operation (a tie closed between two live
feeders, or an external tie closed with the local side live) is not modelled: the switch
closed last in each loop carries no current, a warning is logged and `parallel_loops` names
the loop's branches.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gateway.config import SiteConfig
from hil.grid.ageing import LoadComponent
from hil.grid.faults import FaultInfo, parse_kind
from hil.grid.flows import nearest_upstream, top_node
from hil.grid.demand_response import ProgramTerms
from hil.grid.profiles import hour_of_day, shape_at
from hil.grid.settings import load_settings
from hil.grid.switching import DeviceRole, SwitchingDevice
from hil.grid.state import SQRT3, MeterReadings, _Fault, log
from hil.grid.builder import GridBuilder
from hil.grid.point_map import GridPointMap


class GridModel(GridBuilder, GridPointMap):
    """Electrical state of one substation, advanced by simulated time."""

    @classmethod
    def from_site(cls, site: SiteConfig, *, seed: int = 0, meters: int | None = None) -> GridModel:
        """Build the model of `site`. `meters` overrides the total smart-meter count (split
        across the meter groups in proportion to their counts)."""
        settings = load_settings(site.simulation)
        model = cls(settings, seed)
        model._build(site, meters)
        model._build_points(site)
        model.advance(0.0)
        return model

    def inject_fault(
        self,
        line_id: str,
        distance_m: float,
        kind: str,
        *,
        impedance_ohm: float = 0.0,
        transient: bool = False,
        now_s: float,
    ) -> FaultInfo:
        """A short circuit on `line_id`, `distance_m` from its sending end. Transient faults clear
        as soon as their section loses supply (the first dead time); permanent ones stay until
        `clear_faults`."""
        if line_id not in self.lines:
            raise KeyError(f"{line_id!r} is not a modelled power line; known: {', '.join(sorted(self.lines))}")
        length = self.lines[line_id].attrs.length
        if not (math.isfinite(distance_m) and 0 <= distance_m <= length):
            raise ValueError(f"distance_m must be within 0..{length:g} m of {line_id}, found {distance_m!r}")
        if not (math.isfinite(impedance_ohm) and impedance_ohm >= 0):
            raise ValueError(f"impedance_ohm must be >= 0, found {impedance_ohm!r}")
        fault_kind = parse_kind(kind)
        at = self._catch_up(now_s)
        fault = _Fault(
            self._next_fault_id, line_id, float(distance_m), fault_kind, float(impedance_ohm), bool(transient), at
        )
        self._next_fault_id += 1
        self._faults.append(fault)
        self._dirty = True
        self._solve(self._now)
        if fault.info is None:  # a transient fault on a dead section is gone at once
            return self._fault_info(fault, None, self.lines[line_id].breaker_id, (0j, 0j))
        log.info(
            "fault %d: %s on %s at %.0f m, %.0f A",
            fault.fault_id,
            fault_kind.value,
            line_id,
            distance_m,
            fault.info.fault_current_a,
        )
        return fault.info

    def clear_faults(self, now_s: float) -> None:
        self._catch_up(now_s)
        self._faults.clear()
        self._dirty = True
        self._solve(self._now)

    @property
    def active_faults(self) -> list[FaultInfo]:
        return [f.info for f in self._faults if f.info is not None]

    def load_step(self, target_id: str, factor: float, now_s: float) -> None:
        """Scale every load behind `target_id` (transformer, meter group, line, breaker or the
        substation) to `factor` × its profile value; 1.0 restores it."""
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"factor must be a finite number >= 0, found {factor!r}")
        hit = [ld for ld in self._loads if target_id in ld.owners]
        if not hit:
            raise KeyError(
                f"{target_id!r} has no load behind it; targets: "
                f"{', '.join(sorted({o for ld in self._loads for o in ld.owners}))}"
            )
        self._catch_up(now_s)
        for ld in hit:
            ld.factor = factor
        self._dirty = True
        self._solve(self._now)

    def underlying_demand_kw(self, substation_id: str) -> float:
        """What a substation's loads would draw now at 1 pu and without demand response."""
        if substation_id not in self._ramp_mask:
            raise KeyError(f"{substation_id!r} is not a modelled substation; known: {', '.join(self.substation_ids)}")
        hour = hour_of_day(self._now, self.settings.start_hour)
        shape = shape_at(self._shapes, hour)[self._load_shape] if len(self._loads) else np.zeros(0)
        noise = 1.0 + self.settings.load_noise_pct / 100.0 * self._load_noise.at(self._now)
        factors = np.array([ld.factor for ld in self._loads])
        kw = self._ramped(self._load_peak_kw * shape * np.clip(noise, 0.0, None) * factors, self._now)
        return float(kw[self._ramp_mask[substation_id]].sum())

    def load_ramp(
        self,
        substation_id: str,
        rate_kw_per_h: float,
        now_s: float,
        *,
        start_kw: float | None = None,
        ambient_c: float | None = None,
    ) -> dict[str, float]:
        """From now on, the demand behind `substation_id` rises (or falls) by `rate_kw_per_h`, from
        `start_kw` (its measured total load now, default as it is), whatever the daily profiles do;
        `ambient_c` holds its transformers' ambient temperature there (a hot evening). A rate of 0
        with no start holds the demand where it is; `clear_ramp` hands it back to the profiles."""
        if substation_id not in self._station_bus_of:
            raise KeyError(f"{substation_id!r} is not a modelled substation; known: {', '.join(self.substation_ids)}")
        if not math.isfinite(rate_kw_per_h) or abs(rate_kw_per_h) > 1e6:
            raise ValueError(f"rate must be a finite kW/h within ±1e6, found {rate_kw_per_h!r}")
        if ambient_c is not None and not (math.isfinite(ambient_c) and -50 <= ambient_c <= 60):
            raise ValueError(f"ambient must be within -50..60 degC, found {ambient_c!r}")
        at = self._catch_up(now_s)
        underlying = self.underlying_demand_kw(substation_id)
        measured = self.agent_values(substation_id)["total_load_kw"]
        if start_kw is not None:
            if not (math.isfinite(start_kw) and start_kw > 0):
                raise ValueError(f"start must be a positive load in kW, found {start_kw!r}")
            # the underlying demand that makes the measured load `start_kw` (voltage effects, losses
            # and DER scale about in proportion)
            underlying *= start_kw / measured if measured > 0 else 1.0
        self._ramps[substation_id] = (at, underlying, float(rate_kw_per_h))
        if ambient_c is not None:
            self._ambient_override_c[substation_id] = float(ambient_c)
        self._dirty = True
        self._solve(self._now)
        return {
            "start_s": at,
            "underlying_kw": underlying,
            "rate_kw_per_h": float(rate_kw_per_h),
            "total_load_kw": self.agent_values(substation_id)["total_load_kw"],
        }

    def clear_ramp(self, substation_id: str, now_s: float) -> None:
        self._catch_up(now_s)
        self._ramps.pop(substation_id, None)
        self._ambient_override_c.pop(substation_id, None)
        self._dirty = True
        self._solve(self._now)

    def dr_event(
        self,
        event_id: str,
        program_id: str,
        now_s: float,
        *,
        group_id: str | None = None,
        meter_ids: list[str] | None = None,
        start_s: float,
        duration_s: float,
        reduction_pct: float | None = None,
    ) -> dict[str, Any]:
        """A demand-response event reaching the meters of a group (or a list): each meter's answer
        (`hil.grid.demand_response`) and the demand it had when it answered."""
        program = self._dr_programs.get(program_id)
        if program is None:
            raise KeyError(
                f"unknown demand-response program {program_id!r}; known: "
                f"{', '.join(sorted(self._dr_programs)) or 'none'}"
            )
        if not (math.isfinite(start_s) and math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"start and duration must be finite, duration > 0 (found {start_s!r}, {duration_s!r})")
        if duration_s > program.max_duration_s:
            raise ValueError(f"duration {duration_s:g} s exceeds program {program_id}'s {program.max_duration_s:g} s")
        reduction = program.reduction_pct if reduction_pct is None else float(reduction_pct)
        if not 0 < reduction <= 100:
            raise ValueError(f"reduction_pct must be in (0, 100], found {reduction_pct!r}")
        if group_id is not None:
            group = next((g for g in self._groups if g.id == group_id), None)
            if group is None:
                raise KeyError(f"unknown meter group {group_id!r}")
            index = np.arange(group.start, group.stop, dtype=np.int64)
            if meter_ids is not None:
                wanted = {self._meter_index[m] for m in meter_ids if m in self._meter_index}
                unknown = [m for m in meter_ids if m not in self._meter_index]
                if unknown:
                    raise KeyError(f"unknown meters {', '.join(unknown[:5])}")
                index = np.array([k for k in index if k in wanted], dtype=np.int64)
        elif meter_ids is not None:
            unknown = [m for m in meter_ids if m not in self._meter_index]
            if unknown:
                raise KeyError(f"unknown meters {', '.join(unknown[:5])}")
            index = np.array([self._meter_index[m] for m in meter_ids], dtype=np.int64)
        else:
            raise ValueError("a demand-response event names a meter group or meters")
        self._catch_up(now_s)
        demand = self.meter_readings(self._now).demand_kw[index]
        answers = self.dr.dispatch(
            event_id,
            ProgramTerms(program.id, program.kind, program.shift_h * 3600.0),
            index,
            float(start_s),
            float(duration_s),
            reduction,
        )
        self._dirty = True
        self._solve(self._now)
        return {
            "meters": [self._meter_ids[k] for k in index],
            "answers": answers,
            "demand_kw": [float(d) for d in demand],
            "reduction_pct": reduction,
        }

    def weather_forecast(
        self, now_s: float, horizon_s: float, step_s: float, substation_id: str | None = None
    ) -> list[tuple[float, float, float]]:
        """(seconds from now, irradiance W/m², ambient °C) from now over `horizon_s`, every `step_s`."""
        n = int(horizon_s // step_s) + 1
        return [
            (
                k * step_s,
                self.irradiance_at(now_s + k * step_s),
                self._ambient_c(None, now_s + k * step_s, substation_id),
            )
            for k in range(n)
        ]

    def temperature_ramp(self, transformer_id: str, delta_c: float, duration_s: float, now_s: float) -> None:
        """Ambient around one transformer changes by `delta_c` over `duration_s` (its oil follows)."""
        t = self.transformers.get(transformer_id)
        if t is None:
            raise KeyError(
                f"{transformer_id!r} is not a modelled transformer; known: {', '.join(sorted(self.transformers))}"
            )
        if not (math.isfinite(delta_c) and math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"delta_c must be finite and duration_s >= 0, found {delta_c!r}, {duration_s!r}")
        at = self._catch_up(now_s)
        t.ramps.append((at, duration_s, delta_c))

    def operate_breaker(self, breaker_id: str, close: bool, now_s: float) -> None:
        """Open or close a breaker directly (a breaker without IED points, or a scenario step);
        it moves after the configured opening/closing time like a commanded one."""
        if breaker_id not in self.breakers:
            raise KeyError(f"{breaker_id!r} is not a modelled breaker; known: {', '.join(sorted(self.breakers))}")
        at = self._catch_up(now_s)
        self._schedule(breaker_id, bool(close), at)
        self._dirty = True
        self._solve(self._now)

    def set_tie(self, tie_id: str, closed: bool, now_s: float) -> None:
        """Open or close a tie at once: a device-less tie (`TIE-<line>-<line>`, see `ties`) or a
        tie switch device (use `operate_breaker` for one that moves after its operating time)."""
        device = self.breakers.get(tie_id)
        if device is not None and device.role in (DeviceRole.TIE, DeviceRole.EXTERNAL_TIE):
            self._catch_up(now_s)
            self._switch(tie_id, bool(closed), self._now)
            device.position_cmd = bool(closed)
            self._dirty = True
            self._solve(self._now)
            return
        branch = self.ties.get(tie_id)
        if branch is None:
            known = sorted(self.ties) + sorted(
                d.id for d in self.breakers.values() if d.role in (DeviceRole.TIE, DeviceRole.EXTERNAL_TIE)
            )
            raise KeyError(f"{tie_id!r} is not a tie switch; known: {', '.join(known) or 'none'}")
        self._catch_up(now_s)
        if closed and not self.net.branches[branch].closed:
            self._closed_seq += 1
            self._closed_order[branch] = self._closed_seq
        self.net.branches[branch].closed = bool(closed)
        self._topology_dirty = True
        self._dirty = True
        self._solve(self._now)

    def set_external_source(self, tie_id: str, live: bool, now_s: float) -> None:
        """The neighbouring substation's feeder behind an external tie goes dead (or comes back)."""
        if tie_id not in self._external:
            raise KeyError(f"{tie_id!r} is not an external tie; known: {', '.join(sorted(self._external)) or 'none'}")
        self._catch_up(now_s)
        self.net.branches[self._external[tie_id][2]].closed = bool(live)
        self._topology_dirty = True
        self._dirty = True
        self._solve(self._now)

    def set_device_failure(self, device_id: str, mode: str | None, delay_s: float = 0.0) -> None:
        """Make a device fail to operate: 'stuck' (never moves), 'slow' (moves `delay_s` after a
        command instead of its operating time), or 'none' (healthy again). Moves already under
        way keep their time."""
        device = self._switching_device(device_id)
        device.set_failure(mode, delay_s)
        self._point_cache = None
        log.warning(
            "%s: %s",
            device_id,
            "healthy"
            if device.failure is None
            else f"{device.failure.value}" + (f" ({delay_s:g} s)" if device.slow_delay_s else ""),
        )

    def set_local(self, device_id: str, on: bool) -> None:
        """Put a device in local control (it refuses remote commands) or back in remote."""
        device = self._switching_device(device_id)
        device.local = bool(on)
        self._point_cache = None
        log.warning("%s: %s control", device_id, "local" if on else "remote")

    def breaker_closed(self, breaker_id: str) -> bool:
        try:
            return self.breakers[breaker_id].closed
        except KeyError:
            raise KeyError(
                f"{breaker_id!r} is not a modelled breaker; known: {', '.join(sorted(self.breakers))}"
            ) from None

    @property
    def devices(self) -> dict[str, SwitchingDevice]:
        """Every switching device by id (the same objects as `breakers`)."""
        return self.breakers

    @property
    def parallel_loops(self) -> list[dict[str, Any]]:
        """Closed loops of the present configuration: the switch that closes each (it carries no
        current here), every branch around it, the switching devices among them, and whether
        the loop is energised (two sources, or one source twice, in parallel)."""
        if self._dirty:
            self._solve(self._now)
        out = []
        for loop in self._loops:
            names = [self.net.branches[b].name for b in loop.branches]
            out.append(
                {
                    "closing": names[0],
                    "branches": names,
                    "devices": [n for n in names if n in self.breakers],
                    "energised": bool(self._energised[self.net.branches[loop.closing_branch].from_bus]),
                }
            )
        return out

    @property
    def parallel(self) -> bool:
        """True while an energised closed loop exists (not modelled: see `parallel_loops`)."""
        return any(loop["energised"] for loop in self.parallel_loops)

    def device_state(self, device_id: str) -> dict[str, Any]:
        """A switching device's position, indicator, mode and failure, and what flows through it."""
        device = self._switching_device(device_id)
        if self._dirty:
            self._solve(self._now)
        i_abc, s, direction = self._flow(device.branch)
        i_base = self.net.i_base_a(device.from_bus)
        phases = [float(abs(x)) * i_base for x in i_abc]
        pending = [(due, close) for due, _, d, close in sorted(self._pending) if d == device_id]
        return {
            **device.state(),
            "current_a": max(phases),
            "ia_a": phases[0],
            "ib_a": phases[1],
            "ic_a": phases[2],
            "in_a": float(abs(i_abc.sum())) * i_base,
            "active_power_kw": s.real,
            "reactive_power_kvar": s.imag,
            "direction": {1: "forward", -1: "reverse"}.get(direction),
            "fault_direction": self._fault_directions.get(device_id),
            "voltage_kv": self._kv(self._device_voltage_bus(device)),
            "side_voltage_kv": [self._kv(device.from_bus), self._kv(device.bus)],
            "side_energised": [bool(self._energised[device.from_bus]), bool(self._energised[device.bus])],
            "moving_to": None if not pending else ("closed" if pending[0][1] else "open"),
            "moves_at_s": None if not pending else pending[0][0],
        }

    def device_states(self) -> dict[str, dict[str, Any]]:
        return {device_id: self.device_state(device_id) for device_id in self.breakers}

    def section_states(self) -> dict[str, dict[str, Any]]:
        """Each line section (`<LINE>/<n>`): energised or not, from which source, through which
        device, and what is tapped on it."""
        if self._dirty:
            self._solve(self._now)
        tree = self._tree
        assert tree is not None
        device_of = {d.branch: d.id for d in self.breakers.values()}
        out = {}
        for sec in self._sections:
            live = [b for b in sec.buses if self._energised[b]]
            top = top_node(tree, live[0]) if live else None
            out[sec.id] = {
                "line": sec.line,
                "from_m": sec.from_m,
                "to_m": sec.to_m,
                "energised": bool(live),
                "source": None if top is None else self._source_names.get(top),
                "fed_through": nearest_upstream(tree, live[0], device_of) if live else None,
                "elements": list(sec.elements),
                "upstream_device": sec.upstream_device,
                "downstream_device": sec.downstream_device,
            }
        return out

    def energised_elements(self) -> dict[str, bool]:
        """Every modelled element → whether it has supply (a line or device: any part of it)."""
        if self._dirty:
            self._solve(self._now)
        e = self._energised
        out = {sid: bool(e[bus]) for sid, bus in self._station_bus_of.items()}
        for line in self.lines.values():
            out[line.id] = bool(e[line.start_bus] or any(e[seg[3]] for seg in line.segments))
        for device in self.breakers.values():
            out[device.id] = bool(e[device.from_bus] or e[device.bus])
        for t in self.transformers.values():
            out[t.id] = bool(e[t.bus])
        for cap in self.capacitors.values():
            out[cap.id] = bool(e[cap.bus])
        for der in self.ders.values():
            out[der.id] = bool(e[der.bus])
        return out

    def meter_readings(self, now_s: float) -> MeterReadings:
        """Every smart meter's reading at `now_s`, vectorised over the meters."""
        self._catch_up(now_s)
        n = len(self._meter_ids)
        demand = np.zeros(n)
        energy = np.zeros(n)
        voltage = np.zeros(n)
        noise = 1.0 + 0.05 * self._meter_noise.at(self._now) if n else np.zeros(0)
        since = self._now - (self._last_solve_s or 0.0)
        for g in self._groups:
            sl = slice(g.start, g.stop)
            load = self._loads[g.load]
            w = self._meter_weight[sl]
            t = self.transformers[g.transformer]
            v_ln = abs(self._v[t.bus]) * self.net.buses[t.bus].base_kv * 1000.0 / SQRT3
            typical = w * load.peak_kw
            # the group's load already carries its meters' demand response, weighted by their share
            group_dr = float(np.dot(w, self._meter_dr[sl])) if g.stop > g.start else 1.0
            d = w * self._meter_dr[sl] * (load.kw / group_dr if group_dr > 0 else 0.0) * np.clip(noise[sl], 0.0, None)
            demand[sl] = d
            energy[sl] = self._meter_energy0[sl] + w * (load.energy_kwh + load.kw * since / 3600.0)
            voltage[sl] = v_ln * (
                1.0 - self._meter_drop[sl] * np.divide(d, typical, out=np.zeros_like(d), where=typical > 0)
            )
        powered = voltage > 0.5 * self._meter_nominal_v
        demand = np.where(powered, demand, 0.0)
        voltage = np.where(powered, voltage, np.where(voltage > 0, voltage, 0.0))
        current = np.divide(demand * 1000.0, voltage * self._meter_pf, out=np.zeros(n), where=powered)
        thd = np.where(powered, self._meter_thd, 0.0)
        return self.bypass.apply(
            MeterReadings(
                time_s=self._now,
                ids=self._meter_ids,
                group_ids=self._meter_group_ids,
                voltage_v=voltage,
                current_a=current,
                demand_kw=demand,
                energy_kwh=energy,
                power_factor=self._meter_pf.copy(),
                thd_pct=thd,
                powered=powered,
                tamper=self._meter_tamper.copy(),
            )
        )

    def set_tamper(self, meter_id: str, tampered: bool = True) -> None:
        """Flag a meter's tamper switch (a scenario injection)."""
        try:
            k = self._meter_ids.index(meter_id)
        except ValueError:
            raise KeyError(f"{meter_id!r} is not a simulated meter") from None
        self._meter_tamper[k] = tampered

    def loads_behind(self, target: str) -> list[LoadComponent]:
        """The load components `target` supplies in the normal configuration (peaks and daily shapes)."""
        return [
            LoadComponent(ld.peak_kw * ld.factor, ld.power_factor, tuple(float(x) for x in self._shapes[ld.shape][:24]))
            for ld in self._loads
            if target in ld.owners
        ]

    @property
    def now_s(self) -> float:
        return self._now
