"""From a site file to the model: buses, branches, switching devices, loads and meters.

Topology comes from the agents' connection rules (see `hil.grid.model` for the whole picture);
the result is the state `hil.grid.physics` advances.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from gateway.agents.schema import (
    AgentType,
    CapacitorBankAttributes,
    CircuitBreakerAttributes,
    PowerLineAttributes,
    RenewableEnergyAttributes,
    SubstationAttributes,
    TransformerAttributes,
)
from gateway.config import AgentConfig, CanonicalType, SiteConfig
from hil.grid.ageing import Condition, conditions
from hil.grid.layout import site_layout
from hil.grid.meters import MeterBypass
from hil.grid.network import BranchKind
from hil.grid.demand_response import DemandResponse
from hil.grid.profiles import DAILY_SHAPES, SmoothNoise, shape_matrix
from hil.grid.sections import line_sections
from hil.grid.settings import ExternalSourceSettings, LoadProfileName, LoadSettings
from hil.grid.switching import DeviceRole, SwitchingDevice
from hil.grid.state import SQRT3, GridState, _Line, _Transformer, _Capacitor, _Der, _Load, _MeterGroup, log

_TYPICAL_PEAK_PER_METER_KW = {"residential": 1.2, "commercial": 6.0, "industrial": 40.0}


class GridBuilder(GridState):
    """Builds the elements of a site into the state (`GridModel.from_site` runs it once)."""

    def _build(self, site: SiteConfig, meters: int | None) -> None:
        s = self.settings
        agents = {a.id: a for a in site.agents}
        self._agents = agents
        self._agent_types = {a.id: a.type for a in site.agents}
        subs = [a for a in site.agents if a.type == AgentType.SUBSTATION]
        if not subs:
            raise ValueError("the simulator needs a substation agent, found none")
        self.substation_id = subs[0].id
        self.substation_ids = [sub.id for sub in subs]
        self._layout = layout = site_layout(site)
        self._device_attrs = {
            a.id: CircuitBreakerAttributes.model_validate(a.attributes)
            for a in site.agents
            if a.type == AgentType.CIRCUIT_BREAKER
        }
        net = self.net
        first_pu = 1.0
        for n, sub in enumerate(subs):
            # each substation: its grid's EMF behind its fault level; the first is the reference,
            # the others hang from it by an ideal ratio (as external sources do), so one tree holds all
            src = s.source(sub.id)
            kv = src.nominal_kv or SubstationAttributes.model_validate(sub.attributes).secondary_voltage
            if n == 0:
                self.source_bus = emf = net.add_bus("source", kv)
                first_pu = src.source_voltage_pu
                name = "source"
            else:
                emf = net.add_bus(f"{sub.id}/source", kv)
                net.add_branch(
                    f"{sub.id}/emf",
                    self.source_bus,
                    emf,
                    0j,
                    ratio=src.source_voltage_pu / first_pu,
                    kind=BranchKind.IDEAL,
                )
                name = f"{sub.id}/grid"
            station = net.add_bus(sub.id, kv)
            z_abs = kv**2 / src.source_sc_mva
            r = z_abs / math.sqrt(1.0 + src.source_x_r**2)
            z_src = complex(r, r * src.source_x_r)
            net.add_branch(name, emf, station, z_src, kind=BranchKind.SOURCE, z0_ohm=z_src * src.source_z0_z1)
            self._station_bus_of[sub.id] = station
            self._source_names[station if n == 0 else emf] = sub.id
        self.station_bus = self._station_bus_of[subs[0].id]
        self._reference_pu = first_pu

        children: dict[str, list[str]] = {a.id: [] for a in site.agents}
        ties: list[tuple[str, str]] = []
        for a in site.agents:
            for rule in a.connection_rules:
                if rule.target_id not in agents:
                    continue
                if rule.canonical_type is CanonicalType.SUPPLY:
                    children[a.id].append(rule.target_id)
                elif rule.canonical_type is CanonicalType.DEPENDS_ON:
                    children[rule.target_id].append(a.id)
                elif rule.canonical_type is CanonicalType.ROUTE:
                    if a.id in layout.ties or rule.target_id in layout.ties:
                        continue  # a tie switch: built with its own branch below
                    pair = tuple(sorted((a.id, rule.target_id)))
                    if (pair[0], pair[1]) not in ties:
                        ties.append((pair[0], pair[1]))
        normally_open = {
            tuple(sorted((a.id, r.target_id)))
            for a in site.agents
            for r in a.connection_rules
            if r.canonical_type is CanonicalType.ROUTE and r.normally_open
        }

        attach: dict[str, int] = dict(self._station_bus_of)
        upstream_switch: dict[str, str | None] = {sid: None for sid in self.substation_ids}
        visited = set(self.substation_ids)
        queue = deque(self.substation_ids)
        order: list[str] = []
        while queue:
            parent_id = queue.popleft()
            kids = [k for k in dict.fromkeys(children[parent_id]) if k not in visited]
            for k in kids:
                visited.add(k)
            parent = agents[parent_id]
            if parent.type == AgentType.POWER_LINE:
                self._build_line(parent, attach, upstream_switch.get(parent_id))
                line = self.lines[parent_id]
                positions = self._child_positions(parent, kids, line)
                for k in kids:
                    attach[k] = line.at_bus[positions[k]]
            else:
                bus = self._element_bus(parent_id, attach)
                for k in kids:
                    attach[k] = bus
            for k in kids:
                upstream_switch[k] = (
                    parent_id if agents[parent_id].type == AgentType.CIRCUIT_BREAKER else upstream_switch.get(parent_id)
                )
                order.append(k)
                queue.append(k)
        for agent_id in order:
            agent = agents[agent_id]
            # breakers, lines and transformers were built when their children were attached
            if agent.type == AgentType.CAPACITOR_BANK:
                attrs = CapacitorBankAttributes.model_validate(agent.attributes)
                steps = s.capacitor_steps.get(agent_id, 0)
                if not 0 <= steps <= attrs.num_steps:
                    raise ValueError(f"simulation.capacitor_steps.{agent_id}: {steps} outside 0..{attrs.num_steps}")
                self.capacitors[agent_id] = _Capacitor(agent_id, attrs, attach[agent_id], steps, steps)
            elif agent.type == AgentType.RENEWABLE_ENERGY:
                attrs_r = RenewableEnergyAttributes.model_validate(agent.attributes)
                der = _Der(agent_id, attrs_r, attach[agent_id])
                if attrs_r.resource_type == "battery_storage":
                    start = s.storage.get(agent_id)
                    der.soc_pct = start.soc_pct if start is not None else 50.0
                    der.efficiency = (start.efficiency_pct if start is not None else 95.0) / 100.0
                self.ders[agent_id] = der
        unreached = [
            a.id
            for a in site.agents
            if a.id not in visited and a.id not in layout.ties and a.type != AgentType.SMART_METER
        ]
        if unreached:
            log.warning(
                "agents not reachable from %s by supply edges, left out of the model: %s",
                ", ".join(self.substation_ids),
                ", ".join(unreached),
            )
        for line_a, line_b in ties:
            if line_a in self.lines and line_b in self.lines:
                tie_id = f"TIE-{line_a}-{line_b}"
                closed = (line_a, line_b) not in normally_open
                self.ties[tie_id] = net.add_branch(
                    tie_id,
                    self.lines[line_a].end_bus,
                    self.lines[line_b].end_bus,
                    0j,
                    closed=closed,
                    kind=BranchKind.SWITCH,
                )
        for key in s.loads:
            if key not in agents and key not in {g.id for g in site.meter_groups}:
                raise ValueError(f"simulation.loads.{key}: not an agent or meter group id")
        for key in s.positions_m:
            if key not in agents:
                raise ValueError(f"simulation.positions_m.{key}: not an agent id")
        for key in s.capacitor_steps:
            if key not in self.capacitors:
                raise ValueError(f"simulation.capacitor_steps.{key}: not a capacitor bank id")
        external = sorted(t.device for t in layout.ties.values() if t.external_source is not None)
        for key in s.external_sources:
            if key not in external:
                raise ValueError(
                    f"simulation.external_sources.{key}: not an external tie (a circuit_breaker with "
                    f"attributes.external_source); external ties: {', '.join(external) or 'none'}"
                )
        self._build_ties()
        self._sections = [
            section
            for line in self.lines.values()
            for section in line_sections(
                line.id, line.start_bus, line.attrs.length, line.segments, line.breaks, line.taps
            )
        ]
        self._build_loads(site, meters)
        self.conditions: dict[str, Condition] = conditions(s.ageing, self.transformers, self.seed)
        n_bus = len(net.buses)
        self._v = np.zeros(n_bus, dtype=np.complex128)
        self._v2 = np.zeros(n_bus, dtype=np.complex128)
        self._v0 = np.zeros(n_bus, dtype=np.complex128)
        self._i_abc = np.zeros((n_bus, 3), dtype=np.complex128)
        self._i1 = np.zeros(n_bus, dtype=np.complex128)
        self._energised = np.zeros(n_bus, dtype=bool)
        self._bus_load_kw = np.zeros(n_bus)
        self._bus_load_kvar = np.zeros(n_bus)

    def _device(
        self,
        device_id: str,
        from_bus: int,
        role: DeviceRole,
        *,
        to_bus: int | None = None,
        line: str | None = None,
        position_m: float | None = None,
    ) -> SwitchingDevice:
        """Build a switching device's branch (and its load-side bus unless given)."""
        attrs = self._device_attrs[device_id]
        if to_bus is None:
            to_bus = self.net.add_bus(device_id, self.net.buses[from_bus].base_kv)
        closed = not attrs.normally_open if role in (DeviceRole.TIE, DeviceRole.EXTERNAL_TIE) else True
        branch = self.net.add_branch(device_id, from_bus, to_bus, 0j, closed=closed, kind=BranchKind.SWITCH)
        device = SwitchingDevice(
            device_id,
            branch,
            from_bus,
            to_bus,
            role=role,
            function=attrs.function,
            line=line,
            position_m=position_m,
            closed=closed,
            normally_open=attrs.normally_open,
            position_cmd=closed,
            fpi_pickup_a=attrs.fpi_pickup_a,
        )
        self.breakers[device_id] = device
        return device

    def _element_bus(self, agent_id: str, attach: dict[str, int]) -> int:
        """The bus an element's children hang from (building the element if it has one)."""
        agent = self._agents[agent_id]
        if agent.type == AgentType.CIRCUIT_BREAKER:
            if agent_id not in self.breakers:
                self._device(agent_id, attach[agent_id], DeviceRole.FEEDER)
            return self.breakers[agent_id].bus
        if agent.type == AgentType.TRANSFORMER:
            if agent_id not in self.transformers:
                self._build_transformer(agent, attach[agent_id])
            return self.transformers[agent_id].bus
        return attach[agent_id]

    def _build_line(self, agent: AgentConfig, attach: dict[str, int], breaker_id: str | None) -> None:
        attrs = PowerLineAttributes.model_validate(agent.attributes)
        imp = attrs.impedance
        self.lines[agent.id] = _Line(
            agent.id,
            attrs,
            attach[agent.id],
            [],
            complex(imp.r_ohm_per_km, imp.x_ohm_per_km) / 1000.0,
            complex(imp.r0_ohm_per_km, imp.x0_ohm_per_km) / 1000.0,
            breaker_id,
        )

    def _child_positions(self, agent: AgentConfig, kids: list[str], line: _Line) -> dict[str, float]:
        """Where each child is tapped; builds the line's conductor segments between the taps and
        its in-series devices (elements at a device's position are on its source side)."""
        length = line.attrs.length
        tapped = [
            k
            for k in kids
            if self._agent_types[k] in (AgentType.TRANSFORMER, AgentType.CAPACITOR_BANK, AgentType.RENEWABLE_ENERGY)
        ]
        positions: dict[str, float] = {}
        for n, k in enumerate(tapped):
            positions[k] = length * (n + 1) / len(tapped)
        for k in kids:
            if k not in positions:
                positions[k] = length
        for k in kids:
            if k in self.settings.positions_m:
                p = self.settings.positions_m[k]
                if not 0 <= p <= length:
                    raise ValueError(f"simulation.positions_m.{k}: {p} m is not on {agent.id} (0..{length} m)")
                positions[k] = p
        given = self._layout.positions.get(agent.id, {})
        for k in kids:
            if k in given:
                positions[k] = given[k]
        series = [(p, d) for p, d in self._layout.in_series.get(agent.id, []) if d in kids]
        ties = [p for p in self._layout.tie_positions(agent.id) if 0 < p <= length]
        base_kv = self.net.buses[line.start_bus].base_kv
        previous_m, previous_bus = 0.0, line.start_bus
        line.at_bus[0.0] = line.start_bus
        for p in sorted({p for p in positions.values() if p > 0} | {length} | set(ties) | {p for p, _ in series}):
            if p > previous_m:
                bus = self.net.add_bus(f"{agent.id}@{p:g}m", base_kv)
                seg = p - previous_m
                branch = self.net.add_branch(
                    f"{agent.id}:{previous_m:g}-{p:g}",
                    previous_bus,
                    bus,
                    line.z1_ohm_per_m * seg,
                    kind=BranchKind.LINE,
                    z0_ohm=line.z0_ohm_per_m * seg,
                )
                line.segments.append((previous_m, p, previous_bus, bus, branch))
                previous_m, previous_bus = p, bus
            line.at_bus.setdefault(p, previous_bus)
            for at, device_id in series:
                if at == p:
                    previous_bus = self._device(
                        device_id, previous_bus, DeviceRole.SERIES, line=agent.id, position_m=p
                    ).bus
                    line.breaks.append((p, device_id))
        line.taps.update(positions)
        return positions

    def _build_ties(self) -> None:
        """Tie switches between two lines, and external ties to a neighbour's feeder (a source
        behind its fault level, tied to the reference by an ideal ratio so one tree holds both)."""
        s = self.settings
        for tie in self._layout.ties.values():
            missing = [e.line for e in tie.ends if e.line not in self.lines]
            if missing or not tie.ends:
                log.warning("tie %s: line(s) %s not in the model, tie left out", tie.device, ", ".join(missing))
                continue
            first = self.lines[tie.ends[0].line]
            bus1 = first.at_bus[tie.ends[0].position_m]
            if tie.external_source is None:
                second = tie.ends[1]
                self._device(
                    tie.device,
                    bus1,
                    DeviceRole.TIE,
                    to_bus=self.lines[second.line].at_bus[second.position_m],
                    line=first.id,
                    position_m=tie.ends[0].position_m,
                )
                continue
            ext = s.external_sources.get(tie.device, ExternalSourceSettings())
            kv = self.net.buses[bus1].base_kv
            emf = self.net.add_bus(f"{tie.device}/source", kv)
            emf_branch = self.net.add_branch(
                f"{tie.device}/emf",
                self.source_bus,
                emf,
                0j,
                ratio=ext.voltage_pu / self._reference_pu,
                kind=BranchKind.IDEAL,
            )
            far = self.net.add_bus(f"{tie.device}/{tie.external_source}", kv)
            z_abs = kv**2 / ext.sc_mva
            r = z_abs / math.sqrt(1.0 + ext.x_r**2)
            z = complex(r, r * ext.x_r)
            self.net.add_branch(f"{tie.device}/grid", emf, far, z, kind=BranchKind.SOURCE, z0_ohm=z * ext.z0_z1)
            self._device(
                tie.device, bus1, DeviceRole.EXTERNAL_TIE, to_bus=far, line=first.id, position_m=tie.ends[0].position_m
            )
            self._external[tie.device] = (emf, far, emf_branch)
            self._source_names[emf] = tie.external_source
        for tie in self._layout.ties.values():
            if tie.device in self.breakers:
                for end in tie.ends:
                    self.lines[end.line].taps[tie.device] = end.position_m

    def _build_transformer(self, agent: AgentConfig, primary_bus: int) -> None:
        attrs = TransformerAttributes.model_validate(agent.attributes)
        z_abs = attrs.impedance_percent / 100.0 * attrs.primary_voltage**2 / (attrs.rated_capacity / 1000.0)
        xr = self.settings.transformer_x_r
        r = z_abs / math.sqrt(1 + xr**2)
        z = complex(r, r * xr)
        bus = self.net.add_bus(agent.id, attrs.secondary_voltage / 1000.0)
        # off-nominal when the rated primary differs from the bus it sits on (an 11 kV unit on 11.5 kV)
        nominal = self.net.buses[primary_bus].base_kv / attrs.primary_voltage
        t = _Transformer(
            agent.id,
            attrs,
            -1,
            primary_bus,
            bus,
            attrs.rated_capacity,
            attrs.tap_position,
            attrs.tap_position,
            nominal_ratio=nominal,
        )
        t.branch = self.net.add_branch(
            agent.id, primary_bus, bus, z, ratio=self._tap_ratio(t), kind=BranchKind.TRANSFORMER, z0_ohm=z
        )
        self.transformers[agent.id] = t

    def _build_loads(self, site: SiteConfig, meters: int | None) -> None:
        s = self.settings
        shapes: list[tuple[float, ...]] = []
        shape_index: dict[Any, int] = {}

        def shape_for(cfg: LoadSettings, default: LoadProfileName) -> int:
            if cfg.hourly is not None:
                shapes.append(tuple(cfg.hourly))
                return len(shapes) - 1
            name = cfg.profile or default
            if name not in shape_index:
                shapes.append(DAILY_SHAPES[name])
                shape_index[name] = len(shapes) - 1
            return shape_index[name]

        owners_of_xfmr = {t.id: self._owners(t.primary_bus) | {t.id} for t in self.transformers.values()}

        groups_by_xfmr: dict[str, list[Any]] = {}
        for g in site.meter_groups:
            if g.connected_transformer not in self.transformers:
                log.warning(
                    "meter group %s: transformer %s is not in the model; its meters are left out",
                    g.id,
                    g.connected_transformer,
                )
                continue
            groups_by_xfmr.setdefault(g.connected_transformer, []).append(g)
        counts = {g.id: g.count for gs in groups_by_xfmr.values() for g in gs}
        if meters is not None and counts:
            total = sum(counts.values())
            ids = list(counts)
            scaled = [meters * counts[i] // total for i in ids]
            scaled[-1] += meters - sum(scaled)
            counts = dict(zip(ids, scaled, strict=True))

        feeding = {
            t.id
            for t in self.transformers.values()
            if any(t.bus in (br.from_bus, br.to_bus) and br.name != t.id for br in self.net.branches)
        }
        for t in self.transformers.values():
            groups = groups_by_xfmr.get(t.id, [])
            own = s.loads.get(t.id, LoadSettings())
            default_peak = 0.6 * t.rated_kva * own.power_factor
            if not groups and t.id in feeding and t.id not in s.loads:
                continue  # a station transformer: the loads of what it feeds stand for it
            if not groups:
                self._loads.append(
                    _Load(
                        t.id,
                        t.bus,
                        own.peak_kw if own.peak_kw is not None else default_peak,
                        own.power_factor,
                        shape_for(own, LoadProfileName.RESIDENTIAL),
                        frozenset(owners_of_xfmr[t.id]),
                        (own.profile or LoadProfileName.RESIDENTIAL).value,
                    )
                )
                continue
            total_count = sum(g.count for g in groups)
            xfmr_peak = own.peak_kw if own.peak_kw is not None else default_peak
            for g in groups:
                cfg = s.loads.get(g.id, LoadSettings(power_factor=own.power_factor, profile=own.profile))
                peak = cfg.peak_kw if cfg.peak_kw is not None else xfmr_peak * g.count / total_count
                self._loads.append(
                    _Load(
                        g.id,
                        t.bus,
                        peak,
                        cfg.power_factor,
                        shape_for(cfg, LoadProfileName(g.meter_type)),
                        frozenset(owners_of_xfmr[t.id] | {g.id}),
                        g.meter_type,
                    )
                )
                n = counts[g.id]
                start = self._groups[-1].stop if self._groups else 0
                self._groups.append(
                    _MeterGroup(
                        g.id,
                        len(self._loads) - 1,
                        t.id,
                        g.nominal_voltage_v,
                        start,
                        start + n,
                        g.prefix,
                        g.first,
                        g.meter_type,
                        critical=g.critical,
                        programs=frozenset(g.dr_programs),
                        critical_meters=tuple(g.critical_meters),
                    )
                )

        fed: set[str] = set()
        for t in self.transformers.values():
            fed |= self._owners(t.primary_bus)
        for line in self.lines.values():
            line_cfg = s.loads.get(line.id)
            if line_cfg is None and any(line.id in self._owners(l2.start_bus) for l2 in self.lines.values()):
                continue  # feeds further lines: their loads stand for it
            if line_cfg is None and line.id in fed:
                continue
            line_cfg = line_cfg or LoadSettings(profile=LoadProfileName.COMMERCIAL)
            default_peak = (
                s.line_load_percent
                / 100.0
                * line.attrs.ampacity
                * SQRT3
                * self.net.buses[line.end_bus].base_kv
                * line_cfg.power_factor
            )
            self._loads.append(
                _Load(
                    line.id,
                    line.end_bus,
                    line_cfg.peak_kw if line_cfg.peak_kw is not None else default_peak,
                    line_cfg.power_factor,
                    shape_for(line_cfg, LoadProfileName.COMMERCIAL),
                    frozenset(self._owners(line.end_bus) | {line.id}),
                    (line_cfg.profile or LoadProfileName.COMMERCIAL).value,
                )
            )
        self._shapes = shape_matrix(shapes) if shapes else np.zeros((0, 25))
        self._load_shape = np.array([ld.shape for ld in self._loads], dtype=np.int64)
        self._load_peak_kw = np.array([ld.peak_kw for ld in self._loads])
        self._load_tan_phi = np.array([math.tan(math.acos(ld.power_factor)) for ld in self._loads])
        self._load_bus = np.array([ld.bus for ld in self._loads], dtype=np.int64)
        terms = [(k, *term) for k, ld in enumerate(self._loads) for term in s.load_model(ld.load_class).components()]
        self._term_load = np.array([t[0] for t in terms], dtype=np.int64)
        self._term_share = np.array([(t[1], t[3]) for t in terms], dtype=np.float64).reshape(-1, 2)
        self._term_exp = np.array([(t[2], t[4]) for t in terms], dtype=np.float64).reshape(-1, 2)
        self._load_group = np.full(len(self._loads), -1, dtype=np.int64)
        self._dr_programs = {p.id: p for p in site.demand_response.programs}
        self._load_noise = SmoothNoise(self.seed, 1, len(self._loads), s.noise_period_s)
        self._weather_noise = SmoothNoise(self.seed, 2, 2, s.noise_period_s)
        self._build_meters()

    def _build_meters(self) -> None:
        n = self._groups[-1].stop if self._groups else 0
        rng = np.random.default_rng([self.seed, 3])
        self._meter_ids: list[str] = []
        self._meter_group_ids: list[str] = []
        self._meter_weight = np.zeros(n)
        self._meter_pf = np.zeros(n)
        self._meter_thd = np.zeros(n)
        self._meter_drop = np.zeros(n)
        self._meter_energy0 = np.zeros(n)
        self._meter_nominal_v = np.zeros(n)
        self._meter_tamper = np.zeros(n, dtype=bool)
        self.bypass = MeterBypass(n)
        for g in self._groups:
            sl = slice(g.start, g.stop)
            count, meter_type = g.stop - g.start, g.meter_type
            self._meter_ids.extend(f"{g.prefix}-{k:05d}" for k in range(g.first, g.first + count))
            self._meter_group_ids.extend([g.id] * count)
            w = rng.lognormal(0.0, 0.5, count)
            self._meter_weight[sl] = w / w.sum() if count else w
            self._meter_pf[sl] = rng.uniform(0.86, 0.99, count)
            self._meter_thd[sl] = rng.uniform(1.0, 4.5, count)
            self._meter_drop[sl] = rng.uniform(0.0, 0.03, count)
            typical = _TYPICAL_PEAK_PER_METER_KW.get(meter_type, 1.2)
            self._meter_energy0[sl] = rng.uniform(0.0, 2000.0, count) * typical
            self._meter_nominal_v[sl] = g.nominal_v
        self._meter_noise = SmoothNoise(self.seed, 4, n, self.settings.noise_period_s)
        group_of_meter = np.zeros(n, dtype=np.int64)
        critical = np.zeros(n, dtype=bool)
        index = {mid: k for k, mid in enumerate(self._meter_ids)}
        for gi, g in enumerate(self._groups):
            group_of_meter[g.start : g.stop] = gi
            self._load_group[g.load] = gi
            critical[g.start : g.stop] = g.critical
            for meter in g.critical_meters:
                if meter in index:
                    critical[index[meter]] = True
        self._meter_index = index
        self.dr = DemandResponse.build(
            group_of_meter,
            [g.programs for g in self._groups],
            critical,
            self.settings.demand_response.responders_pct,
            self.seed,
        )
        self._meter_dr = np.ones(n)
        """Each meter's demand-response multiplier at the last solve."""
        owner_sub = self._substation_of_load()
        self._ramp_mask = {sid: np.array([o == sid for o in owner_sub], dtype=bool) for sid in self.substation_ids}
