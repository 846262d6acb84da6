"""The model in time: switching events, taps, the power flow, faults, thermal ageing, per step.

Every change of state ends in a solve; a fault is superposed on the pre-fault solution (see
`hil.grid.model` for the electrical picture).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

from hil.grid.ageing import top_oil_rise_step
from hil.grid.faults import A_OP, FaultInfo, SequenceCurrents, sequence_currents
from hil.grid.flows import walked_forward
from hil.grid.network import BranchKind, Loop, closed_loops
from hil.grid.powerflow import PowerFlowDiverged, VoltageDependentLoads, solve, solve_impedance
from hil.grid.profiles import ambient_temperature_c, clear_sky_irradiance_w_m2, hour_of_day, shape_at
from hil.grid.storage import battery_power_kw, soc_after_pct
from hil.grid.state import GridState, _Transformer, _Fault, log

_MAX_SOLVE_GAP_S = 300.0


class GridPhysics(GridState):
    """Advances the state to `now_s`: events due, tap changers, the solve and what follows it."""

    def _ramped(self, kw: npt.NDArray[np.float64], now_s: float) -> npt.NDArray[np.float64]:
        """Loads behind a substation under a ramp, scaled so that their underlying demand (at 1 pu,
        before demand response) follows the ramp's line whatever the daily profile does."""
        if not self._ramps:
            return kw
        out = kw.copy()
        for sub_id, (t0, start_kw, rate_kw_h) in self._ramps.items():
            mask = self._ramp_mask[sub_id]
            total = float(kw[mask].sum())
            if total > 0:
                out[mask] *= (start_kw + rate_kw_h * max(0.0, now_s - t0) / 3600.0) / total
        return out

    def _dr_factors(self, now_s: float) -> npt.NDArray[np.float64]:
        """Each load's demand-response multiplier: its meters' multipliers, weighted by their share."""
        out = np.ones(len(self._loads))
        if not len(self._meter_ids):
            return out
        self._meter_dr = self.dr.factors(now_s)
        for g in self._groups:
            sl = slice(g.start, g.stop)
            out[g.load] = float(np.dot(self._meter_weight[sl], self._meter_dr[sl])) if g.stop > g.start else 1.0
        return out

    def advance(self, now_s: float) -> None:
        """Move simulated time to `now_s` (seconds since start); re-solve when anything changed."""
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be finite, found {now_s!r}")
        if now_s < self._now - 1e-9:
            raise ValueError(f"simulated time cannot go backwards ({now_s} < {self._now})")
        # a long jump is walked in steps, so oil temperatures and meter energy follow the daily
        # profiles instead of holding the load of the jump's start
        while self._last_solve_s is not None and now_s - self._last_solve_s > _MAX_SOLVE_GAP_S:
            t = self._last_solve_s + _MAX_SOLVE_GAP_S
            self._run_events(t)
            self._now = max(self._now, t)
            self._move_taps(self._now)
            self._solve(self._now)
        self._run_events(now_s)
        self._now = max(self._now, now_s)
        self._move_taps(self._now)
        for device in self.breakers.values():
            if device.fpi and device.reset_if_due(self._now, self.settings.fpi_reset_delay_s):
                log.info(
                    "%s: fault-passage indicator reset (voltage present %.0f s)",
                    device.id,
                    self.settings.fpi_reset_delay_s,
                )
                self._point_cache = None
        if self._dirty or self._last_solve_s is None or self._now - self._last_solve_s >= self.settings.solve_period_s:
            self._solve(self._now)

    def _catch_up(self, now_s: float) -> float:
        """Advance to `now_s` for a command or injection; one stamped a little before the model's
        time (the caller's clock read before the last step) acts now rather than failing."""
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be finite, found {now_s!r}")
        self.advance(max(now_s, self._now))
        return self._now

    def _run_events(self, until_s: float) -> None:
        self._pending.sort()
        while self._pending and self._pending[0][0] <= until_s + 1e-12:
            due, _, breaker_id, close = self._pending.pop(0)
            if due > self._now:
                # settle loads and temperatures up to the switching instant first
                self._now = due
                self._solve(due)
            self._switch(breaker_id, close, due)

    def _switch(self, breaker_id: str, close: bool, now_s: float) -> None:
        cb = self.breakers[breaker_id]
        if cb.closed == close:
            return
        cb.closed = close
        cb.operations += 1
        self.net.branches[cb.branch].closed = close
        if close:
            self._closed_seq += 1
            self._closed_order[cb.branch] = self._closed_seq
        self._topology_dirty = True
        self._dirty = True
        log.info("%s %s at %.3f s", breaker_id, "closed" if close else "opened", now_s)
        if not close:
            self._solve(now_s)  # find what lost supply, so transient faults there clear

    def _schedule(self, breaker_id: str, close: bool, now_s: float) -> None:
        s = self.settings
        device = self.breakers[breaker_id]
        delay_s = device.operating_delay_s(close, s.breaker_opening_time_ms, s.breaker_closing_time_ms)
        if delay_s is None:
            log.warning("%s is stuck: the command to %s is not carried out", breaker_id, "close" if close else "open")
            return
        self._event_seq += 1
        self._pending.append((now_s + delay_s, self._event_seq, breaker_id, close))
        self._run_events(max(now_s, self._now))

    def _move_taps(self, now_s: float) -> None:
        step_s = self.settings.tap_change_time_s
        for t in self.transformers.values():
            while t.tap_position != t.tap_setpoint and now_s >= t.next_tap_s:
                if step_s == 0:
                    t.tap_position = t.tap_setpoint
                else:
                    t.tap_position += 1 if t.tap_setpoint > t.tap_position else -1
                    t.next_tap_s += step_s
                self.net.branches[t.branch].ratio = self._tap_ratio(t)
                self._topology_dirty = True
                self._dirty = True

    def _solve(self, now_s: float) -> None:
        s = self.settings
        dt = 0.0 if self._last_solve_s is None else max(0.0, now_s - self._last_solve_s)
        if self._topology_dirty or self._tree is None:
            loops = closed_loops(self.net, self._closed_order)
            self._tree = self.net.radial_tree(self.source_bus, {loop.closing_branch for loop in loops})
            self._topology_dirty = False
            if [lp.closing_branch for lp in loops] != [lp.closing_branch for lp in self._loops]:
                self._log_loops(loops)
            self._loops = loops
        tree = self._tree
        energised = tree.energised
        hour = hour_of_day(now_s, s.start_hour)
        base_kw = self.net.base_mva * 1000.0

        # loads
        shape = shape_at(self._shapes, hour)[self._load_shape] if len(self._loads) else np.zeros(0)
        noise = 1.0 + s.load_noise_pct / 100.0 * self._load_noise.at(now_s)
        factors = np.array([ld.factor for ld in self._loads])
        kw = self._load_peak_kw * shape * np.clip(noise, 0.0, None) * factors
        kw = self._ramped(kw, now_s)
        kw = kw * self._dr_factors(now_s)
        kvar = kw * self._load_tan_phi
        served = energised[self._load_bus] if len(self._loads) else np.zeros(0, dtype=bool)
        for ld in self._loads:
            ld.energy_kwh += ld.kw * dt / 3600.0  # rectangle rule over the last interval
        s_pu = np.zeros(len(self.net.buses), dtype=np.complex128)
        # voltage-dependent loads: their demand at 1 pu, split in the terms of their class's model
        term_kw = np.where(served[self._term_load], kw[self._term_load], 0.0) if len(self._loads) else np.zeros(0)
        term_kvar = np.where(served[self._term_load], kvar[self._term_load], 0.0) if len(self._loads) else np.zeros(0)
        dependent = VoltageDependentLoads(
            bus=self._load_bus[self._term_load],
            p_pu=term_kw * self._term_share[:, 0] / base_kw,
            q_pu=term_kvar * self._term_share[:, 1] / base_kw,
            np_=self._term_exp[:, 0],
            nq=self._term_exp[:, 1],
        )

        # weather and DER
        weather = self._weather_noise.at(now_s)
        self._irradiance_w_m2 = self.irradiance_at(now_s)
        self._frequency_hz = s.frequency_hz + s.frequency_noise_hz * float(weather[1])
        for der in self.ders.values():
            der.irradiance_w_m2 = self._irradiance_w_m2
            if not energised[der.bus]:
                if der.connected:
                    log.info("%s lost the grid and disconnected (anti-islanding)", der.id)
                der.connected = False
                der.ready_s = math.inf
            else:
                if der.ready_s == math.inf:  # grid back: IEEE 1547 enter-service delay
                    der.ready_s = now_s + (der.attrs.enter_service_delay_s if s.der_enter_service_delay else 0.0)
                der.connected = der.connect_cmd and now_s >= der.ready_s
            rated = der.attrs.rated_capacity
            der.energy_kwh += max(der.p_kw, 0.0) * dt / 3600.0
            if der.soc_pct is not None:
                assert der.attrs.energy_capacity_kwh is not None
                der.soc_pct = soc_after_pct(
                    der.soc_pct, der.p_kw, dt, capacity_kwh=der.attrs.energy_capacity_kwh, efficiency=der.efficiency
                )
            if der.connected and der.soc_pct is not None:
                der.p_kw = battery_power_kw(
                    der.p_setpoint_kw,
                    rated_kw=rated,
                    max_charge_kw=der.attrs.max_charge_kw or rated,
                    limit_pct=der.p_limit_pct,
                    soc_pct=der.soc_pct,
                    soc_min_pct=der.attrs.soc_min_pct,
                    soc_max_pct=der.attrs.soc_max_pct,
                )
                s_max = der.attrs.rated_apparent_power_kva or rated * 1.1
                q_max = math.sqrt(max(s_max**2 - der.p_kw**2, 0.0))
                der.q_kvar = max(-q_max, min(q_max, der.q_setpoint_kvar))
            elif der.connected:
                available = rated * self._irradiance_w_m2 / 1000.0
                der.p_kw = min(available, rated * der.p_limit_pct / 100.0)
                s_max = der.attrs.rated_apparent_power_kva or rated * 1.1
                q_max = math.sqrt(max(s_max**2 - der.p_kw**2, 0.0))
                der.q_kvar = max(-q_max, min(q_max, der.q_setpoint_kvar))
            else:
                der.p_kw = der.q_kvar = 0.0
            s_pu[der.bus] -= complex(der.p_kw, der.q_kvar) / base_kw

        # capacitor banks: constant admittance at their rating
        y_pu = np.zeros(len(self.net.buses), dtype=np.complex128)
        for cap in self.capacitors.values():
            cap.steps_active = cap.steps_cmd
            q_mvar = cap.attrs.rated_capacity * cap.steps_active / cap.attrs.num_steps
            v_ratio = self.net.buses[cap.bus].base_kv / cap.attrs.voltage_level
            y_pu[cap.bus] += 1j * q_mvar * v_ratio**2 / self.net.base_mva

        v0 = complex(self._reference_pu)
        start = self._result.voltage_pu if self._result is not None else None
        try:
            result = solve(tree, s_pu, y_pu, v0, tolerance_pu=s.tolerance_pu, v_start_pu=start, dependent=dependent)
        except PowerFlowDiverged:
            # past the nose of the P-V curve: loads stop drawing constant power when the voltage
            # collapses, so solve them as the impedances they become
            if not self._collapsed:
                log.warning(
                    "voltage collapse at %.1f s: constant-power loads beyond what the network "
                    "can carry; loads solved as constant impedance",
                    now_s,
                )
            self._collapsed = True
            nominal = dependent.at_nominal_pu(len(self.net.buses))
            result = solve_impedance(tree, y_pu + np.conj(s_pu + nominal), v0)
            vm = np.abs(result.voltage_pu[dependent.bus])
            result = dataclasses.replace(result, dependent_s_pu=(dependent.p_pu + 1j * dependent.q_pu) * vm**2)
        else:
            self._collapsed = False
        self._result = result
        self._energised = energised.copy()
        drawn = np.zeros(len(self._loads), dtype=np.complex128)
        if result.dependent_s_pu is not None and len(self._loads):
            np.add.at(drawn, self._term_load, result.dependent_s_pu * base_kw)
        for ld, d in zip(self._loads, drawn, strict=True):
            ld.kw, ld.kvar = float(d.real), float(d.imag)
        bus_load = s_pu * base_kw
        if len(self._loads):
            np.add.at(bus_load, self._load_bus, drawn)
        self._bus_load_kw = bus_load.real
        self._bus_load_kvar = bus_load.imag

        # balanced phase currents with the configured unbalance, then faults on top
        u = s.unbalance_pct / 100.0
        j = result.current_pu
        self._i1 = j.copy()
        self._i_abc = np.stack([j * (1 + u), j * (A_OP**2), j * A_OP * (1 - u)], axis=1)
        self._v = result.voltage_pu.copy()
        self._v2 = np.zeros_like(self._v)
        self._v0 = np.zeros_like(self._v)
        self._thermal(dt, now_s)
        self._apply_faults(now_s)
        self._update_indicators(now_s)
        self._last_solve_s = now_s
        self._dirty = False
        self._point_cache = None

    def _log_loops(self, loops: list[Loop]) -> None:
        known = {lp.closing_branch for lp in self._loops}
        for loop in loops:
            if loop.closing_branch in known:
                continue
            names = [self.net.branches[b].name for b in loop.branches]
            closing = names[0]
            devices = [n for n in names if n in self.breakers]
            log.warning(
                "closed loop: %s closes a loop through %s (closed-loop operation: %s); parallel operation "
                "is not modelled, %s carries no current",
                closing,
                ", ".join(devices[1:]) or "the network",
                " → ".join(names),
                closing,
            )
        if not loops and self._loops:
            log.info("no closed loop any more: radial operation")

    def _update_indicators(self, now_s: float) -> None:
        """Fault-passage indicators see the current through their device after each solve."""
        for device in self.breakers.values():
            if device.fpi_pickup_a is None:
                continue
            i_abc, _, _ = self._flow(device.branch)
            current_a = float(np.max(np.abs(i_abc))) * self.net.i_base_a(device.from_bus)
            v_bus = self._device_voltage_bus(device)
            present = bool(abs(self._v[v_bus]) > 0.5)
            if device.update_indicator(current_a, present, now_s, self.settings.fpi_reset_delay_s):
                log.info(
                    "%s: fault-passage indicator %s (%.0f A)",
                    device.id,
                    "latched" if device.fpi else "reset",
                    current_a,
                )

    def _thermal(self, dt: float, now_s: float) -> None:
        """IEEE C57.91 top-oil rise of each transformer at the power it passes (hil/grid/ageing.py)."""
        base_kva = self.net.base_mva * 1000.0
        for t in self.transformers.values():
            s_kva = abs(complex(self._v[t.bus] * np.conj(self._i1[t.bus]))) * base_kva
            k = s_kva / t.rated_kva if self._energised[t.bus] else 0.0
            a = t.attrs
            t.top_oil_rise_c = top_oil_rise_step(
                t.top_oil_rise_c,
                k,
                dt,
                rated_rise_c=a.rated_top_oil_rise_c,
                loss_ratio=a.loss_ratio,
                cooling_type=a.cooling_type,
                tau_min=a.top_oil_time_constant_min,
            )

    def _ambient_c(self, t: _Transformer | None, now_s: float, substation_id: str | None = None) -> float:
        s = self.settings
        base = ambient_temperature_c(s.ambient_temp_c, s.ambient_swing_c, hour_of_day(now_s, s.start_hour))
        sub = substation_id
        if t is not None and self._ambient_override_c:
            sub = self._substation_of_bus(t.primary_bus)
        if sub is not None and sub in self._ambient_override_c:
            base = self._ambient_override_c[sub]
        if t is None:
            return base
        for start, duration, delta in t.ramps:
            if now_s <= start:
                continue
            base += delta if duration <= 0 else delta * min(1.0, (now_s - start) / duration)
        return base

    def _fault_location(self, f: _Fault) -> tuple[int, int, float] | None:
        """(upstream bus, downstream bus, ohms of line between the upstream bus and the fault),
        in the direction power reaches the fault; None when the faulted section is dead."""
        tree = self._tree
        assert tree is not None
        line = self.lines[f.line_id]
        previous_m, p, previous_bus, seg_bus, _ = next(
            (seg for seg in line.segments if seg[1] >= f.distance_m), line.segments[-1]
        )
        if not (tree.energised[previous_bus] and tree.energised[seg_bus]):
            return None
        pos_prev, pos_seg = tree.position.get(previous_bus), tree.position.get(seg_bus)
        if pos_seg is not None and (pos_prev is None or tree.parent_pos[pos_seg] == pos_prev):
            return previous_bus, seg_bus, f.distance_m - previous_m
        return seg_bus, previous_bus, p - f.distance_m

    def _apply_faults(self, now_s: float) -> None:
        tree = self._tree
        assert tree is not None
        keep: list[_Fault] = []
        self._fault_directions = {}
        for f in self._faults:
            where = self._fault_location(f)
            if where is None and f.transient:
                log.info("transient fault %d on %s cleared (section de-energised)", f.fault_id, f.line_id)
                continue
            keep.append(f)
            if where is None:
                f.info = self._fault_info(f, None, None, (0j, 0j))
                continue
            up_bus, down_bus, ohms_in = where
            line = self.lines[f.line_id]
            z_base = self.net.z_base_ohm(up_bus)
            z1_th, z0_th = self._thevenin_pu(up_bus)
            z1 = z1_th + line.z1_ohm_per_m * ohms_in / z_base
            z0 = z0_th + line.z0_ohm_per_m * ohms_in / z_base
            pos_down = tree.position[down_bus]
            # the Thevenin EMF is the pre-fault voltage at the fault itself: the up bus's, less the
            # drop of the segment's load current over the part of the segment before the fault
            e = self._v[up_bus] if self._v[up_bus] != 0 else complex(self.settings.source_voltage_pu)
            e -= line.z1_ohm_per_m * ohms_in / z_base * self._i1[down_bus]
            seq = sequence_currents(f.kind, e, z1, z1, z0, f.impedance_ohm / z_base)
            ia, ib, ic = seq.phases()
            on_path = tree.ancestors(pos_down)
            nodes = tree.nodes
            self._i_abc[nodes[on_path]] += np.array([ia, ib, ic])
            self._i1[nodes[on_path]] += seq.i1
            for device in self.breakers.values():
                forward = walked_forward(tree, on_path, device.branch, device.bus)
                if forward is not None:
                    self._fault_directions[device.id] = "forward" if forward else "reverse"
            # positive-sequence sag: each bus loses Z_common · I1
            z1_cum = self._z1_cumulative()
            path_mask = np.zeros(len(nodes), dtype=bool)
            path_mask[on_path] = True
            anc = (tree.path != 0.0) & path_mask[:, None]
            depth = np.where(anc, np.abs(z1_cum)[:, None], -1.0)
            deepest = np.argmax(depth, axis=0)
            z_common = np.where(anc.any(axis=0), z1_cum[deepest], 0.0)
            beyond = tree.subtree(pos_down)
            z_common[beyond] = z1
            self._v[nodes] -= z_common * seq.i1
            # negative and zero sequence: the same shared-path rule (Z2 = Z1; Z0 restarts at a
            # transformer), so the phase voltages a relay measures satisfy the fault loop's equation
            self._v2[nodes] -= z_common * seq.i2
            z0_common = np.where(anc.any(axis=0), self._z0_cumulative()[deepest], 0.0)
            z0_common[beyond] = z0
            self._v0[nodes] -= z0_common * seq.i0
            f.info = self._fault_info(f, seq, self._breaker_for(f), (z1 * z_base, z0 * z_base))
        self._faults = keep

    def _z1_cumulative(self) -> npt.NDArray[np.complex128]:
        """Positive-sequence impedance from the source to each tree node, per unit."""
        tree = self._tree
        assert tree is not None
        return tree.sum_ancestors(tree.z_pu, weighted=False)

    def _z0_cumulative(self) -> npt.NDArray[np.complex128]:
        """Zero-sequence impedance from the source (or the nearest transformer above: its delta
        winding blocks zero sequence) to each tree node, per unit."""
        tree = self._tree
        assert tree is not None
        out = np.zeros(len(tree.nodes), dtype=np.complex128)
        for k in range(len(tree.nodes)):
            br = self.net.branches[int(tree.feeder_branch[k])]
            z0 = br.z0_ohm / self.net.z_base_ohm(br.from_bus)
            parent = int(tree.parent_pos[k])
            out[k] = z0 if br.kind is BranchKind.TRANSFORMER or parent < 0 else out[parent] + z0
        return out

    def _phase_voltages_pu(self, bus: int) -> tuple[complex, complex, complex]:
        """Phase-to-neutral voltages at `bus` from its sequence voltages (per unit, angles against
        the substation's source EMF of phase A)."""
        v0, v1, v2 = complex(self._v0[bus]), complex(self._v[bus]), complex(self._v2[bus])
        a, a2 = A_OP, A_OP * A_OP
        return v0 + v1 + v2, v0 + a2 * v1 + a * v2, v0 + a * v1 + a2 * v2

    def _thevenin_pu(self, bus: int) -> tuple[complex, complex]:
        tree = self._tree
        assert tree is not None
        pos = tree.position.get(bus)
        if pos is None:
            return 0j, 0j
        # from the source down, so that a transformer restarts the zero-sequence sum
        chain = sorted(tree.ancestors(pos).tolist(), key=lambda k: int(np.count_nonzero(tree.path[:, k])))
        z1 = z0 = 0j
        for k in chain:
            br = self.net.branches[int(tree.feeder_branch[k])]
            zb = self.net.z_base_ohm(br.from_bus)
            z1 += tree.z_pu[k]
            if br.kind is BranchKind.TRANSFORMER:
                z0 = br.z0_ohm / zb  # delta primary: the zero-sequence path starts at the unit
            else:
                z0 += br.z0_ohm / zb
        return z1, z0

    def _breaker_for(self, f: _Fault) -> str | None:
        """The nearest closed device between the source and the fault that can interrupt fault
        current (a breaker or recloser, not a load-break switch)."""
        tree = self._tree
        assert tree is not None
        where = self._fault_location(f)
        if where is None:
            return self.lines[f.line_id].breaker_id
        path = tree.ancestors(tree.position[where[1]])
        depth_of = {int(tree.feeder_branch[k]): int(np.count_nonzero(tree.path[:, k])) for k in path}
        best: tuple[int, str] | None = None
        for cb in self.breakers.values():
            depth = depth_of.get(cb.branch)
            if depth is not None and cb.interrupts_fault_current and (best is None or depth > best[0]):
                best = (depth, cb.id)
        return best[1] if best else None

    def _fault_info(
        self, f: _Fault, seq: SequenceCurrents | None, breaker_id: str | None, z: tuple[complex, complex]
    ) -> FaultInfo:
        line = self.lines[f.line_id]
        i_base = self.net.i_base_a(line.start_bus)
        if seq is None:
            ia = ib = ic = i_n = 0.0
        else:
            pa, pb, pc = seq.phases()
            ia, ib, ic, i_n = (
                float(abs(pa) * i_base),
                float(abs(pb) * i_base),
                float(abs(pc) * i_base),
                float(abs(seq.residual) * i_base),
            )
        return FaultInfo(
            fault_id=f.fault_id,
            line_id=f.line_id,
            distance_m=f.distance_m,
            kind=f.kind.value,
            impedance_ohm=f.impedance_ohm,
            transient=f.transient,
            start_s=f.start_s,
            breaker_id=breaker_id if seq is not None else line.breaker_id,
            energised=seq is not None,
            fault_current_a=max(ia, ib, ic),
            ia_a=ia,
            ib_a=ib,
            ic_a=ic,
            in_a=i_n,
            z1_ohm=(float(z[0].real), float(z[0].imag)),
            z0_ohm=(float(z[1].real), float(z[1].imag)),
        )

    def irradiance_at(self, now_s: float) -> float:
        """The sun on the PV plants at `now_s` (clear sky dimmed by the seeded cloud noise): what the
        model will use then, so a forecast built from it is what the plants will see."""
        s = self.settings
        weather = self._weather_noise.at(now_s)
        clear = clear_sky_irradiance_w_m2(s.irradiance, hour_of_day(now_s, s.start_hour))
        return max(0.0, clear * (1.0 - abs(float(weather[0])) * s.irradiance.cloud_noise_pct / 100.0))
