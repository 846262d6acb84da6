"""The simulated substation's electrical model, built from the site file.

Sans-IO: the runtime calls `advance(now_s)` with simulated seconds and reads `point_values()`;
commands and injections arrive with their own `now_s`. Nothing here reads a clock, sleeps or
touches a socket, so a day runs in seconds and a seed replays a scenario exactly.

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

import cmath
import dataclasses
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.agents.registry import SPECS as AGENT_SPECS
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
from hil.grid.ageing import Condition, LoadComponent, conditions, top_oil_rise_step
from hil.grid.faults import A_OP, FaultInfo, FaultKind, SequenceCurrents, parse_kind, sequence_currents
from hil.grid.flows import branch_flow, nearest_upstream, top_node, walked_forward
from hil.grid.layout import SiteLayout, site_layout
from hil.grid.meters import MeterBypass
from hil.grid.network import BranchKind, Loop, Network, RadialTree, closed_loops
from hil.grid.demand_response import DemandResponse, ProgramTerms
from hil.grid.powerflow import PowerFlowDiverged, PowerFlowResult, VoltageDependentLoads, solve, solve_impedance
from hil.grid.profiles import (
    DAILY_SHAPES,
    SmoothNoise,
    ambient_temperature_c,
    clear_sky_irradiance_w_m2,
    hour_of_day,
    shape_at,
    shape_matrix,
)
from hil.grid.sections import Section, line_sections
from hil.grid.storage import battery_power_kw, soc_after_pct
from hil.grid.settings import (
    ExternalSourceSettings,
    LoadProfileName,
    LoadSettings,
    SimulationSettings,
    load_settings,
)
from hil.grid.switching import DeviceRole, SwitchingDevice

log = logging.getLogger(__name__)

SQRT3 = math.sqrt(3.0)
_MAX_SOLVE_GAP_S = 300.0
_TYPICAL_PEAK_PER_METER_KW = {"residential": 1.2, "commercial": 6.0, "industrial": 40.0}


# --------------------------------------------------------------------------- public records


@dataclass(frozen=True, slots=True)
class MeterReadings:
    """One reading of every smart meter, column-wise (index i is meter `ids[i]`)."""

    time_s: float
    ids: list[str]
    group_ids: list[str]
    """Meter group of each meter."""
    voltage_v: npt.NDArray[np.float64]
    current_a: npt.NDArray[np.float64]
    demand_kw: npt.NDArray[np.float64]
    energy_kwh: npt.NDArray[np.float64]
    power_factor: npt.NDArray[np.float64]
    thd_pct: npt.NDArray[np.float64]
    powered: npt.NDArray[np.bool_]
    tamper: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------- elements


@dataclass(slots=True)
class _Line:
    id: str
    attrs: PowerLineAttributes
    start_bus: int
    segments: list[tuple[float, float, int, int, int]]
    """(from m, to m, from bus, to bus, branch) of each stretch of conductor, from the sending
    end; an in-series device sits between two of them."""
    z1_ohm_per_m: complex
    z0_ohm_per_m: complex
    breaker_id: str | None
    at_bus: dict[float, int] = field(default_factory=dict)
    """Position (m) → the bus there, on the source side of a device at that position."""
    breaks: list[tuple[float, str]] = field(default_factory=list)
    """In-series devices on it, (position, id), from the sending end: the section boundaries."""
    taps: dict[str, float] = field(default_factory=dict)
    """Element id → where it is tapped (m); ties included."""

    @property
    def end_bus(self) -> int:
        return self.segments[-1][3]

    @property
    def first_bus(self) -> int:
        return self.segments[0][3]


@dataclass(slots=True)
class _Transformer:
    id: str
    attrs: TransformerAttributes
    branch: int
    primary_bus: int
    bus: int
    rated_kva: float
    tap_position: int
    tap_setpoint: int
    next_tap_s: float = 0.0
    top_oil_rise_c: float | None = None
    nominal_ratio: float = 1.0
    ramps: list[tuple[float, float, float]] = field(default_factory=list)
    """(start_s, duration_s, delta_c) ambient offsets."""


@dataclass(slots=True)
class _Capacitor:
    id: str
    attrs: CapacitorBankAttributes
    bus: int
    steps_active: int = 0
    steps_cmd: int = 0


@dataclass(slots=True)
class _Der:
    id: str
    attrs: RenewableEnergyAttributes
    bus: int
    p_limit_pct: float = 100.0
    q_setpoint_kvar: float = 0.0
    connect_cmd: bool = True
    connected: bool = True
    ready_s: float = 0.0
    """Grid present since long enough to enter service from this time on."""
    p_kw: float = 0.0
    q_kvar: float = 0.0
    irradiance_w_m2: float = 0.0
    energy_kwh: float = 0.0
    """Delivered to the grid since start (inverters count it; SunSpec TotWhInj)."""
    soc_pct: float | None = None
    """State of charge of a battery (None for other DER)."""
    p_setpoint_kw: float = 0.0
    """A battery's active-power set-point: + discharge into the grid, − charge."""
    efficiency: float = 0.95


@dataclass(slots=True)
class _Load:
    """One load component: a transformer's own load, a meter group's, or a line's lumped load."""

    id: str
    bus: int
    peak_kw: float
    power_factor: float
    shape: int
    owners: frozenset[str]
    """Ids a load step may name to scale this component (itself, its transformer, its line...)."""
    load_class: str = "residential"
    """Voltage dependence (`[simulation] load_models`): residential, commercial, industrial or flat."""
    factor: float = 1.0
    kw: float = 0.0
    kvar: float = 0.0
    energy_kwh: float = 0.0


@dataclass(slots=True)
class _MeterGroup:
    id: str
    load: int
    """Index of the load component in `GridModel._loads`."""
    transformer: str
    nominal_v: float
    start: int
    stop: int
    prefix: str
    first: int
    meter_type: str
    critical: bool = False
    programs: frozenset[str] = frozenset()
    critical_meters: tuple[str, ...] = ()


@dataclass(slots=True)
class _Fault:
    fault_id: int
    line_id: str
    distance_m: float
    kind: FaultKind
    impedance_ohm: float
    transient: bool
    start_s: float
    info: FaultInfo | None = None


# --------------------------------------------------------------------------- the model


class GridModel:
    """Electrical state of one substation, advanced by simulated time."""

    def __init__(self, settings: SimulationSettings, seed: int) -> None:
        self.settings = settings
        self.seed = settings.seed if settings.seed is not None else seed
        self.net = Network(base_mva=settings.base_mva)
        self._now = 0.0
        self._last_solve_s: float | None = None
        self._dirty = True
        self._topology_dirty = True
        self._tree: RadialTree | None = None
        self._result: PowerFlowResult | None = None
        self._pending: list[tuple[float, int, str, bool]] = []
        self._event_seq = 0
        self.substation_id = ""
        """The first substation (the one a single-site model has)."""
        self.substation_ids: list[str] = []
        self._station_bus_of: dict[str, int] = {}
        self.station_bus = 0
        self._reference_pu = settings.source_voltage_pu
        """EMF of the first substation's grid: the root of the one tree holding every source."""
        self.source_bus = 0
        self._agent_types: dict[str, AgentType] = {}
        self._agents: dict[str, AgentConfig] = {}
        self.breakers: dict[str, SwitchingDevice] = {}
        """Every switching device by id: feeder breakers, in-series devices, ties."""
        self._device_attrs: dict[str, CircuitBreakerAttributes] = {}
        self._layout = SiteLayout()
        self._external: dict[str, tuple[int, int, int]] = {}
        """External tie id → (its source's EMF bus, the bus behind its impedance, the EMF branch)."""
        self._source_names: dict[int, str] = {}
        """Top-level bus under the reference → the name of the source it is (for `sections`)."""
        self._closed_order: dict[int, int] = {}
        self._closed_seq = 0
        self._loops: list[Loop] = []
        self._fault_directions: dict[str, str] = {}
        self._sections: list[Section] = []
        self.lines: dict[str, _Line] = {}
        self.transformers: dict[str, _Transformer] = {}
        self.capacitors: dict[str, _Capacitor] = {}
        self.ders: dict[str, _Der] = {}
        self.ties: dict[str, int] = {}
        """Tie switch id (`TIE-<line>-<line>`) → branch index."""
        self._loads: list[_Load] = []
        self._groups: list[_MeterGroup] = []
        self._faults: list[_Fault] = []
        self._next_fault_id = 1
        self._point_sources: list[tuple[str, str, str]] = []
        self._command_targets: dict[str, tuple[str, str]] = {}
        self._ied_point_ids: list[str] = []
        # electrical results of the last solve, per bus
        self._v: npt.NDArray[np.complex128] = np.zeros(0, dtype=np.complex128)
        self._i_abc: npt.NDArray[np.complex128] = np.zeros((0, 3), dtype=np.complex128)
        self._i1: npt.NDArray[np.complex128] = np.zeros(0, dtype=np.complex128)
        self._energised: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._frequency_hz = settings.frequency_hz
        self._irradiance_w_m2 = 0.0
        self._collapsed = False
        self._point_cache: dict[str, float | int | bool] | None = None
        """Point values of the last solve; every state change goes through a solve."""
        self._ramps: dict[str, tuple[float, float, float]] = {}
        """Substation id → (start s, underlying demand at start kW, kW per hour): a load ramp."""
        self._ambient_override_c: dict[str, float] = {}
        """Substation id → the ambient temperature its transformers see (a heat-wave injection)."""
        self._sub_of_bus: dict[int, str] = {}

    # ------------------------------------------------------------------ building

    @classmethod
    def from_site(cls, site: SiteConfig, *, seed: int = 0, meters: int | None = None) -> GridModel:
        """Build the model of `site`. `meters` overrides the total smart-meter count (split
        across the meter groups in proportion to their counts)."""
        settings = load_settings(site.simulation)
        model = cls(settings, seed)
        model._build(site, meters)
        model.advance(0.0)
        return model

    def _build(self, site: SiteConfig, meters: int | None) -> None:
        s = self.settings
        agents = {a.id: a for a in site.agents}
        self._agents = agents
        self._agent_types = {a.id: a.type for a in site.agents}
        subs = [a for a in site.agents if a.type is AgentType.SUBSTATION]
        if not subs:
            raise ValueError("the simulator needs a substation agent, found none")
        self.substation_id = subs[0].id
        self.substation_ids = [sub.id for sub in subs]
        self._layout = layout = site_layout(site)
        self._device_attrs = {a.id: CircuitBreakerAttributes.model_validate(a.attributes)
                              for a in site.agents if a.type is AgentType.CIRCUIT_BREAKER}
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
                net.add_branch(f"{sub.id}/emf", self.source_bus, emf, 0j, ratio=src.source_voltage_pu / first_pu,
                               kind=BranchKind.IDEAL)
                name = f"{sub.id}/grid"
            station = net.add_bus(sub.id, kv)
            z_abs = kv ** 2 / src.source_sc_mva
            r = z_abs / math.sqrt(1.0 + src.source_x_r ** 2)
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
        normally_open = {tuple(sorted((a.id, r.target_id))) for a in site.agents
                         for r in a.connection_rules
                         if r.canonical_type is CanonicalType.ROUTE and r.normally_open}

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
            if parent.type is AgentType.POWER_LINE:
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
                upstream_switch[k] = (parent_id if agents[parent_id].type is AgentType.CIRCUIT_BREAKER
                                      else upstream_switch.get(parent_id))
                order.append(k)
                queue.append(k)
        for agent_id in order:
            agent = agents[agent_id]
            # breakers, lines and transformers were built when their children were attached
            if agent.type is AgentType.CAPACITOR_BANK:
                attrs = CapacitorBankAttributes.model_validate(agent.attributes)
                steps = s.capacitor_steps.get(agent_id, 0)
                if not 0 <= steps <= attrs.num_steps:
                    raise ValueError(f"simulation.capacitor_steps.{agent_id}: {steps} outside 0..{attrs.num_steps}")
                self.capacitors[agent_id] = _Capacitor(agent_id, attrs, attach[agent_id], steps, steps)
            elif agent.type is AgentType.RENEWABLE_ENERGY:
                attrs_r = RenewableEnergyAttributes.model_validate(agent.attributes)
                der = _Der(agent_id, attrs_r, attach[agent_id])
                if attrs_r.resource_type == "battery_storage":
                    start = s.storage.get(agent_id)
                    der.soc_pct = start.soc_pct if start is not None else 50.0
                    der.efficiency = (start.efficiency_pct if start is not None else 95.0) / 100.0
                self.ders[agent_id] = der
        unreached = [a.id for a in site.agents if a.id not in visited and a.id not in layout.ties
                     and a.type is not AgentType.SMART_METER]
        if unreached:
            log.warning("agents not reachable from %s by supply edges, left out of the model: %s",
                        ", ".join(self.substation_ids), ", ".join(unreached))
        for line_a, line_b in ties:
            if line_a in self.lines and line_b in self.lines:
                tie_id = f"TIE-{line_a}-{line_b}"
                closed = (line_a, line_b) not in normally_open
                self.ties[tie_id] = net.add_branch(tie_id, self.lines[line_a].end_bus, self.lines[line_b].end_bus, 0j,
                                                   closed=closed, kind=BranchKind.SWITCH)
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
                raise ValueError(f"simulation.external_sources.{key}: not an external tie (a circuit_breaker with "
                                 f"attributes.external_source); external ties: {', '.join(external) or 'none'}")
        self._build_ties()
        self._sections = [section for line in self.lines.values()
                          for section in line_sections(line.id, line.start_bus, line.attrs.length, line.segments,
                                                       line.breaks, line.taps)]
        self._build_loads(site, meters)
        self.conditions: dict[str, Condition] = conditions(s.ageing, self.transformers, self.seed)
        self._build_points(site)
        n_bus = len(net.buses)
        self._v = np.zeros(n_bus, dtype=np.complex128)
        self._v2 = np.zeros(n_bus, dtype=np.complex128)
        self._v0 = np.zeros(n_bus, dtype=np.complex128)
        self._i_abc = np.zeros((n_bus, 3), dtype=np.complex128)
        self._i1 = np.zeros(n_bus, dtype=np.complex128)
        self._energised = np.zeros(n_bus, dtype=bool)
        self._bus_load_kw = np.zeros(n_bus)
        self._bus_load_kvar = np.zeros(n_bus)

    def _device(self, device_id: str, from_bus: int, role: DeviceRole, *, to_bus: int | None = None,
                line: str | None = None, position_m: float | None = None) -> SwitchingDevice:
        """Build a switching device's branch (and its load-side bus unless given)."""
        attrs = self._device_attrs[device_id]
        if to_bus is None:
            to_bus = self.net.add_bus(device_id, self.net.buses[from_bus].base_kv)
        closed = not attrs.normally_open if role in (DeviceRole.TIE, DeviceRole.EXTERNAL_TIE) else True
        branch = self.net.add_branch(device_id, from_bus, to_bus, 0j, closed=closed, kind=BranchKind.SWITCH)
        device = SwitchingDevice(device_id, branch, from_bus, to_bus, role=role, function=attrs.function,
                                 line=line, position_m=position_m, closed=closed,
                                 normally_open=attrs.normally_open, position_cmd=closed,
                                 fpi_pickup_a=attrs.fpi_pickup_a)
        self.breakers[device_id] = device
        return device

    def _element_bus(self, agent_id: str, attach: dict[str, int]) -> int:
        """The bus an element's children hang from (building the element if it has one)."""
        agent = self._agents[agent_id]
        if agent.type is AgentType.CIRCUIT_BREAKER:
            if agent_id not in self.breakers:
                self._device(agent_id, attach[agent_id], DeviceRole.FEEDER)
            return self.breakers[agent_id].bus
        if agent.type is AgentType.TRANSFORMER:
            if agent_id not in self.transformers:
                self._build_transformer(agent, attach[agent_id])
            return self.transformers[agent_id].bus
        return attach[agent_id]

    def _build_line(self, agent: AgentConfig, attach: dict[str, int], breaker_id: str | None) -> None:
        attrs = PowerLineAttributes.model_validate(agent.attributes)
        imp = attrs.impedance
        self.lines[agent.id] = _Line(
            agent.id, attrs, attach[agent.id], [],
            complex(imp.r_ohm_per_km, imp.x_ohm_per_km) / 1000.0,
            complex(imp.r0_ohm_per_km, imp.x0_ohm_per_km) / 1000.0, breaker_id)

    def _child_positions(self, agent: AgentConfig, kids: list[str], line: _Line) -> dict[str, float]:
        """Where each child is tapped; builds the line's conductor segments between the taps and
        its in-series devices (elements at a device's position are on its source side)."""
        length = line.attrs.length
        tapped = [k for k in kids if self._agent_types[k] in
                  (AgentType.TRANSFORMER, AgentType.CAPACITOR_BANK, AgentType.RENEWABLE_ENERGY)]
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
                branch = self.net.add_branch(f"{agent.id}:{previous_m:g}-{p:g}", previous_bus, bus,
                                             line.z1_ohm_per_m * seg, kind=BranchKind.LINE,
                                             z0_ohm=line.z0_ohm_per_m * seg)
                line.segments.append((previous_m, p, previous_bus, bus, branch))
                previous_m, previous_bus = p, bus
            line.at_bus.setdefault(p, previous_bus)
            for at, device_id in series:
                if at == p:
                    previous_bus = self._device(device_id, previous_bus, DeviceRole.SERIES, line=agent.id,
                                                position_m=p).bus
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
                self._device(tie.device, bus1, DeviceRole.TIE, to_bus=self.lines[second.line].at_bus[second.position_m],
                             line=first.id, position_m=tie.ends[0].position_m)
                continue
            ext = s.external_sources.get(tie.device, ExternalSourceSettings())
            kv = self.net.buses[bus1].base_kv
            emf = self.net.add_bus(f"{tie.device}/source", kv)
            emf_branch = self.net.add_branch(f"{tie.device}/emf", self.source_bus, emf, 0j,
                                             ratio=ext.voltage_pu / self._reference_pu, kind=BranchKind.IDEAL)
            far = self.net.add_bus(f"{tie.device}/{tie.external_source}", kv)
            z_abs = kv ** 2 / ext.sc_mva
            r = z_abs / math.sqrt(1.0 + ext.x_r ** 2)
            z = complex(r, r * ext.x_r)
            self.net.add_branch(f"{tie.device}/grid", emf, far, z, kind=BranchKind.SOURCE, z0_ohm=z * ext.z0_z1)
            self._device(tie.device, bus1, DeviceRole.EXTERNAL_TIE, to_bus=far, line=first.id,
                         position_m=tie.ends[0].position_m)
            self._external[tie.device] = (emf, far, emf_branch)
            self._source_names[emf] = tie.external_source
        for tie in self._layout.ties.values():
            if tie.device in self.breakers:
                for end in tie.ends:
                    self.lines[end.line].taps[tie.device] = end.position_m

    def _build_transformer(self, agent: AgentConfig, primary_bus: int) -> None:
        attrs = TransformerAttributes.model_validate(agent.attributes)
        z_abs = attrs.impedance_percent / 100.0 * attrs.primary_voltage ** 2 / (attrs.rated_capacity / 1000.0)
        xr = self.settings.transformer_x_r
        r = z_abs / math.sqrt(1 + xr ** 2)
        z = complex(r, r * xr)
        bus = self.net.add_bus(agent.id, attrs.secondary_voltage / 1000.0)
        # off-nominal when the rated primary differs from the bus it sits on (an 11 kV unit on 11.5 kV)
        nominal = self.net.buses[primary_bus].base_kv / attrs.primary_voltage
        t = _Transformer(agent.id, attrs, -1, primary_bus, bus, attrs.rated_capacity,
                         attrs.tap_position, attrs.tap_position, nominal_ratio=nominal)
        t.branch = self.net.add_branch(agent.id, primary_bus, bus, z, ratio=self._tap_ratio(t),
                                       kind=BranchKind.TRANSFORMER, z0_ohm=z)
        self.transformers[agent.id] = t

    @staticmethod
    def _tap_ratio(t: _Transformer) -> float:
        return t.nominal_ratio * (1.0 + t.tap_position * t.attrs.tap_step_percent / 100.0)

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
                log.warning("meter group %s: transformer %s is not in the model; its meters are left out",
                            g.id, g.connected_transformer)
                continue
            groups_by_xfmr.setdefault(g.connected_transformer, []).append(g)
        counts = {g.id: g.count for gs in groups_by_xfmr.values() for g in gs}
        if meters is not None and counts:
            total = sum(counts.values())
            ids = list(counts)
            scaled = [meters * counts[i] // total for i in ids]
            scaled[-1] += meters - sum(scaled)
            counts = dict(zip(ids, scaled, strict=True))

        feeding = {t.id for t in self.transformers.values()
                   if any(t.bus in (br.from_bus, br.to_bus) and br.name != t.id for br in self.net.branches)}
        for t in self.transformers.values():
            groups = groups_by_xfmr.get(t.id, [])
            own = s.loads.get(t.id, LoadSettings())
            default_peak = 0.6 * t.rated_kva * own.power_factor
            if not groups and t.id in feeding and t.id not in s.loads:
                continue  # a station transformer: the loads of what it feeds stand for it
            if not groups:
                self._loads.append(_Load(t.id, t.bus, own.peak_kw if own.peak_kw is not None else default_peak,
                                         own.power_factor, shape_for(own, LoadProfileName.RESIDENTIAL),
                                         frozenset(owners_of_xfmr[t.id]),
                                         (own.profile or LoadProfileName.RESIDENTIAL).value))
                continue
            total_count = sum(g.count for g in groups)
            xfmr_peak = own.peak_kw if own.peak_kw is not None else default_peak
            for g in groups:
                cfg = s.loads.get(g.id, LoadSettings(power_factor=own.power_factor, profile=own.profile))
                peak = cfg.peak_kw if cfg.peak_kw is not None else xfmr_peak * g.count / total_count
                self._loads.append(_Load(g.id, t.bus, peak, cfg.power_factor,
                                         shape_for(cfg, LoadProfileName(g.meter_type)),
                                         frozenset(owners_of_xfmr[t.id] | {g.id}), g.meter_type))
                n = counts[g.id]
                start = self._groups[-1].stop if self._groups else 0
                self._groups.append(_MeterGroup(g.id, len(self._loads) - 1, t.id, g.nominal_voltage_v,
                                                start, start + n, g.prefix, g.first, g.meter_type,
                                                critical=g.critical, programs=frozenset(g.dr_programs),
                                                critical_meters=tuple(g.critical_meters)))

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
            default_peak = (s.line_load_percent / 100.0 * line.attrs.ampacity * SQRT3
                            * self.net.buses[line.end_bus].base_kv * line_cfg.power_factor)
            self._loads.append(_Load(line.id, line.end_bus,
                                     line_cfg.peak_kw if line_cfg.peak_kw is not None else default_peak,
                                     line_cfg.power_factor, shape_for(line_cfg, LoadProfileName.COMMERCIAL),
                                     frozenset(self._owners(line.end_bus) | {line.id}),
                                     (line_cfg.profile or LoadProfileName.COMMERCIAL).value))
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

    def _owners(self, bus: int) -> set[str]:
        """Lines, breakers and the substation upstream of `bus` in the as-built (normal) topology."""
        owners: set[str] = set()
        station_of = {b: sid for sid, b in self._station_bus_of.items()}
        parents: dict[int, tuple[int, str, BranchKind]] = {}
        ties = (DeviceRole.TIE, DeviceRole.EXTERNAL_TIE)
        for br in self.net.branches:
            if br.kind in (BranchKind.IDEAL, BranchKind.SOURCE) and br.name != "source":
                continue
            if br.kind is not BranchKind.SWITCH or (br.name in self.breakers and self.breakers[br.name].role not in ties):
                parents[br.to_bus] = (br.from_bus, br.name, br.kind)
        line_of_branch_prefix = set(self.lines)
        while True:
            if bus in station_of:
                owners.add(station_of[bus])
            if bus not in parents:
                break
            parent, name, kind = parents[bus]
            base = name.split(":", 1)[0]
            if base in line_of_branch_prefix or name in self.breakers or kind is BranchKind.TRANSFORMER:
                owners.add(base)
            bus = parent
        if not owners & set(self.substation_ids):
            owners.add(self.substation_id)
        return owners

    def _substation_of_load(self) -> list[str]:
        subs = set(self.substation_ids)
        return [next(iter(sorted(ld.owners & subs)), self.substation_id) for ld in self._loads]

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
            group_of_meter[g.start:g.stop] = gi
            self._load_group[g.load] = gi
            critical[g.start:g.stop] = g.critical
            for meter in g.critical_meters:
                if meter in index:
                    critical[index[meter]] = True
        self._meter_index = index
        self.dr = DemandResponse.build(group_of_meter, [g.programs for g in self._groups], critical,
                                       self.settings.demand_response.responders_pct, self.seed)
        self._meter_dr = np.ones(n)
        """Each meter's demand-response multiplier at the last solve."""
        owner_sub = self._substation_of_load()
        self._ramp_mask = {sid: np.array([o == sid for o in owner_sub], dtype=bool) for sid in self.substation_ids}

    def _build_points(self, site: SiteConfig) -> None:
        # A point may feed several agents (a capacitor's controller reading the feeder's kvar);
        # the model produces it as the agent that can produce it, preferring the agent its id
        # names, then breakers (whose IEDs carry the feeder measurements).
        breakers_last = sorted(site.agents, key=lambda a: a.type is AgentType.CIRCUIT_BREAKER)
        produced: dict[str, tuple[str, str]] = {}
        rank: dict[str, tuple[bool, bool]] = {}
        for agent in breakers_last:
            if agent.id not in self._modelled():
                continue
            for name, pid in agent.points.items():
                mine = (name in _NAMES[agent.type], pid.split(".", 1)[0] == agent.id)
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
                if agent_id in self._modelled() and name in _NAMES[self._agent_types[agent_id]]:
                    produced[point.id] = (agent_id, name)
                    if name in _COMMANDS.get(self._agent_types[agent_id], ()):
                        self._command_targets[point.id] = (agent_id, name)
        self._point_sources = [(pid, a, n) for pid, (a, n) in produced.items()]

    def _modelled(self) -> set[str]:
        return (set(self.substation_ids) | set(self.breakers) | set(self.lines) | set(self.transformers)
                | set(self.capacitors) | set(self.ders))

    # ------------------------------------------------------------------ time

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
                log.info("%s: fault-passage indicator reset (voltage present %.0f s)", device.id,
                         self.settings.fpi_reset_delay_s)
                self._point_cache = None
        if (self._dirty or self._last_solve_s is None
                or self._now - self._last_solve_s >= self.settings.solve_period_s):
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

    # ------------------------------------------------------------------ solving

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
            bus=self._load_bus[self._term_load], p_pu=term_kw * self._term_share[:, 0] / base_kw,
            q_pu=term_kvar * self._term_share[:, 1] / base_kw, np_=self._term_exp[:, 0], nq=self._term_exp[:, 1])

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
                der.soc_pct = soc_after_pct(der.soc_pct, der.p_kw, dt, capacity_kwh=der.attrs.energy_capacity_kwh,
                                            efficiency=der.efficiency)
            if der.connected and der.soc_pct is not None:
                der.p_kw = battery_power_kw(der.p_setpoint_kw, rated_kw=rated,
                                            max_charge_kw=der.attrs.max_charge_kw or rated,
                                            limit_pct=der.p_limit_pct, soc_pct=der.soc_pct,
                                            soc_min_pct=der.attrs.soc_min_pct, soc_max_pct=der.attrs.soc_max_pct)
                s_max = der.attrs.rated_apparent_power_kva or rated * 1.1
                q_max = math.sqrt(max(s_max ** 2 - der.p_kw ** 2, 0.0))
                der.q_kvar = max(-q_max, min(q_max, der.q_setpoint_kvar))
            elif der.connected:
                available = rated * self._irradiance_w_m2 / 1000.0
                der.p_kw = min(available, rated * der.p_limit_pct / 100.0)
                s_max = der.attrs.rated_apparent_power_kva or rated * 1.1
                q_max = math.sqrt(max(s_max ** 2 - der.p_kw ** 2, 0.0))
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
            y_pu[cap.bus] += 1j * q_mvar * v_ratio ** 2 / self.net.base_mva

        v0 = complex(self._reference_pu)
        start = self._result.voltage_pu if self._result is not None else None
        try:
            result = solve(tree, s_pu, y_pu, v0, tolerance_pu=s.tolerance_pu, v_start_pu=start, dependent=dependent)
        except PowerFlowDiverged:
            # past the nose of the P-V curve: loads stop drawing constant power when the voltage
            # collapses, so solve them as the impedances they become
            if not self._collapsed:
                log.warning("voltage collapse at %.1f s: constant-power loads beyond what the network "
                            "can carry; loads solved as constant impedance", now_s)
            self._collapsed = True
            nominal = dependent.at_nominal_pu(len(self.net.buses))
            result = solve_impedance(tree, y_pu + np.conj(s_pu + nominal), v0)
            vm = np.abs(result.voltage_pu[dependent.bus])
            result = dataclasses.replace(result, dependent_s_pu=(dependent.p_pu + 1j * dependent.q_pu) * vm ** 2)
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
        self._i_abc = np.stack([j * (1 + u), j * (A_OP ** 2), j * A_OP * (1 - u)], axis=1)
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
            log.warning("closed loop: %s closes a loop through %s (closed-loop operation: %s); parallel operation "
                        "is not modelled, %s carries no current", closing, ", ".join(devices[1:]) or "the network",
                        " → ".join(names), closing)
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
                log.info("%s: fault-passage indicator %s (%.0f A)", device.id,
                         "latched" if device.fpi else "reset", current_a)

    def _thermal(self, dt: float, now_s: float) -> None:
        """IEEE C57.91 top-oil rise of each transformer at the power it passes (hil/grid/ageing.py)."""
        base_kva = self.net.base_mva * 1000.0
        for t in self.transformers.values():
            s_kva = abs(complex(self._v[t.bus] * np.conj(self._i1[t.bus]))) * base_kva
            k = s_kva / t.rated_kva if self._energised[t.bus] else 0.0
            a = t.attrs
            t.top_oil_rise_c = top_oil_rise_step(t.top_oil_rise_c, k, dt, rated_rise_c=a.rated_top_oil_rise_c,
                                                 loss_ratio=a.loss_ratio, cooling_type=a.cooling_type,
                                                 tau_min=a.top_oil_time_constant_min)

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

    # ------------------------------------------------------------------ faults

    def _fault_location(self, f: _Fault) -> tuple[int, int, float] | None:
        """(upstream bus, downstream bus, ohms of line between the upstream bus and the fault),
        in the direction power reaches the fault; None when the faulted section is dead."""
        tree = self._tree
        assert tree is not None
        line = self.lines[f.line_id]
        previous_m, p, previous_bus, seg_bus, _ = next(
            (seg for seg in line.segments if seg[1] >= f.distance_m), line.segments[-1])
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

    def _fault_info(self, f: _Fault, seq: SequenceCurrents | None, breaker_id: str | None,
                    z: tuple[complex, complex]) -> FaultInfo:
        line = self.lines[f.line_id]
        i_base = self.net.i_base_a(line.start_bus)
        if seq is None:
            ia = ib = ic = i_n = 0.0
        else:
            pa, pb, pc = seq.phases()
            ia, ib, ic, i_n = (float(abs(pa) * i_base), float(abs(pb) * i_base), float(abs(pc) * i_base),
                               float(abs(seq.residual) * i_base))
        return FaultInfo(
            fault_id=f.fault_id, line_id=f.line_id, distance_m=f.distance_m, kind=f.kind.value,
            impedance_ohm=f.impedance_ohm, transient=f.transient, start_s=f.start_s,
            breaker_id=breaker_id if seq is not None else line.breaker_id, energised=seq is not None,
            fault_current_a=max(ia, ib, ic), ia_a=ia, ib_a=ib, ic_a=ic, in_a=i_n,
            z1_ohm=(float(z[0].real), float(z[0].imag)), z0_ohm=(float(z[1].real), float(z[1].imag)))

    def inject_fault(self, line_id: str, distance_m: float, kind: str, *, impedance_ohm: float = 0.0,
                     transient: bool = False, now_s: float) -> FaultInfo:
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
        fault = _Fault(self._next_fault_id, line_id, float(distance_m), fault_kind, float(impedance_ohm),
                       bool(transient), at)
        self._next_fault_id += 1
        self._faults.append(fault)
        self._dirty = True
        self._solve(self._now)
        if fault.info is None:  # a transient fault on a dead section is gone at once
            return self._fault_info(fault, None, self.lines[line_id].breaker_id, (0j, 0j))
        log.info("fault %d: %s on %s at %.0f m, %.0f A", fault.fault_id, fault_kind.value, line_id,
                 distance_m, fault.info.fault_current_a)
        return fault.info

    def clear_faults(self, now_s: float) -> None:
        self._catch_up(now_s)
        self._faults.clear()
        self._dirty = True
        self._solve(self._now)

    @property
    def active_faults(self) -> list[FaultInfo]:
        return [f.info for f in self._faults if f.info is not None]

    # ------------------------------------------------------------------ injections and commands

    def load_step(self, target_id: str, factor: float, now_s: float) -> None:
        """Scale every load behind `target_id` (transformer, meter group, line, breaker or the
        substation) to `factor` × its profile value; 1.0 restores it."""
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"factor must be a finite number >= 0, found {factor!r}")
        hit = [ld for ld in self._loads if target_id in ld.owners]
        if not hit:
            raise KeyError(f"{target_id!r} has no load behind it; targets: "
                           f"{', '.join(sorted({o for ld in self._loads for o in ld.owners}))}")
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

    def load_ramp(self, substation_id: str, rate_kw_per_h: float, now_s: float, *, start_kw: float | None = None,
                  ambient_c: float | None = None) -> dict[str, float]:
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
        return {"start_s": at, "underlying_kw": underlying, "rate_kw_per_h": float(rate_kw_per_h),
                "total_load_kw": self.agent_values(substation_id)["total_load_kw"]}

    def clear_ramp(self, substation_id: str, now_s: float) -> None:
        self._catch_up(now_s)
        self._ramps.pop(substation_id, None)
        self._ambient_override_c.pop(substation_id, None)
        self._dirty = True
        self._solve(self._now)

    def dr_event(self, event_id: str, program_id: str, now_s: float, *, group_id: str | None = None,
                 meter_ids: list[str] | None = None, start_s: float, duration_s: float,
                 reduction_pct: float | None = None) -> dict[str, Any]:
        """A demand-response event reaching the meters of a group (or a list): each meter's answer
        (`hil.grid.demand_response`) and the demand it had when it answered."""
        program = self._dr_programs.get(program_id)
        if program is None:
            raise KeyError(f"unknown demand-response program {program_id!r}; known: "
                           f"{', '.join(sorted(self._dr_programs)) or 'none'}")
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
        answers = self.dr.dispatch(event_id, ProgramTerms(program.id, program.kind, program.shift_h * 3600.0),
                                   index, float(start_s), float(duration_s), reduction)
        self._dirty = True
        self._solve(self._now)
        return {"meters": [self._meter_ids[k] for k in index], "answers": answers,
                "demand_kw": [float(d) for d in demand], "reduction_pct": reduction}

    def irradiance_at(self, now_s: float) -> float:
        """The sun on the PV plants at `now_s` (clear sky dimmed by the seeded cloud noise): what the
        model will use then, so a forecast built from it is what the plants will see."""
        s = self.settings
        weather = self._weather_noise.at(now_s)
        clear = clear_sky_irradiance_w_m2(s.irradiance, hour_of_day(now_s, s.start_hour))
        return max(0.0, clear * (1.0 - abs(float(weather[0])) * s.irradiance.cloud_noise_pct / 100.0))

    def weather_forecast(self, now_s: float, horizon_s: float, step_s: float,
                         substation_id: str | None = None) -> list[tuple[float, float, float]]:
        """(seconds from now, irradiance W/m², ambient °C) from now over `horizon_s`, every `step_s`."""
        n = int(horizon_s // step_s) + 1
        return [(k * step_s, self.irradiance_at(now_s + k * step_s),
                 self._ambient_c(None, now_s + k * step_s, substation_id)) for k in range(n)]

    def temperature_ramp(self, transformer_id: str, delta_c: float, duration_s: float, now_s: float) -> None:
        """Ambient around one transformer changes by `delta_c` over `duration_s` (its oil follows)."""
        t = self.transformers.get(transformer_id)
        if t is None:
            raise KeyError(f"{transformer_id!r} is not a modelled transformer; "
                           f"known: {', '.join(sorted(self.transformers))}")
        if not (math.isfinite(delta_c) and math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"delta_c must be finite and duration_s >= 0, found {delta_c!r}, {duration_s!r}")
        at = self._catch_up(now_s)
        t.ramps.append((at, duration_s, delta_c))

    def apply_command(self, point_id: str, value: float | int | bool, now_s: float) -> None:
        """A write from the gateway to an IED point of the simulated grid."""
        target = self._command_targets.get(point_id)
        if target is None and "." in point_id:
            # a DER set-point written through a device's own register map (a SunSpec inverter)
            der_id, name = point_id.split(".", 1)
            if der_id in self.ders and name in _COMMANDS[AgentType.RENEWABLE_ENERGY]:
                target = (der_id, name)
        if target is None:
            raise KeyError(f"{point_id!r} is not a command point of the simulated grid; "
                           f"command points: {', '.join(sorted(self._command_targets))}")
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
            known = sorted(self.ties) + sorted(d.id for d in self.breakers.values()
                                               if d.role in (DeviceRole.TIE, DeviceRole.EXTERNAL_TIE))
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

    def _switching_device(self, device_id: str) -> SwitchingDevice:
        try:
            return self.breakers[device_id]
        except KeyError:
            raise KeyError(f"{device_id!r} is not a modelled switching device; "
                           f"known: {', '.join(sorted(self.breakers)) or 'none'}") from None

    def set_device_failure(self, device_id: str, mode: str | None, delay_s: float = 0.0) -> None:
        """Make a device fail to operate: 'stuck' (never moves), 'slow' (moves `delay_s` after a
        command instead of its operating time), or 'none' (healthy again). Moves already under
        way keep their time."""
        device = self._switching_device(device_id)
        device.set_failure(mode, delay_s)
        self._point_cache = None
        log.warning("%s: %s", device_id, "healthy" if device.failure is None else
                    f"{device.failure.value}" + (f" ({delay_s:g} s)" if device.slow_delay_s else ""))

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
            raise KeyError(f"{breaker_id!r} is not a modelled breaker; known: {', '.join(sorted(self.breakers))}") from None

    # ------------------------------------------------------------------ switching state

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
            out.append({"closing": names[0], "branches": names,
                        "devices": [n for n in names if n in self.breakers],
                        "energised": bool(self._energised[self.net.branches[loop.closing_branch].from_bus])})
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
        return {**device.state(),
                "current_a": max(phases), "ia_a": phases[0], "ib_a": phases[1], "ic_a": phases[2],
                "in_a": float(abs(i_abc.sum())) * i_base, "active_power_kw": s.real, "reactive_power_kvar": s.imag,
                "direction": {1: "forward", -1: "reverse"}.get(direction),
                "fault_direction": self._fault_directions.get(device_id),
                "voltage_kv": self._kv(self._device_voltage_bus(device)),
                "side_voltage_kv": [self._kv(device.from_bus), self._kv(device.bus)],
                "side_energised": [bool(self._energised[device.from_bus]), bool(self._energised[device.bus])],
                "moving_to": None if not pending else ("closed" if pending[0][1] else "open"),
                "moves_at_s": None if not pending else pending[0][0]}

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
            out[sec.id] = {"line": sec.line, "from_m": sec.from_m, "to_m": sec.to_m, "energised": bool(live),
                           "source": None if top is None else self._source_names.get(top),
                           "fed_through": nearest_upstream(tree, live[0], device_of) if live else None,
                           "elements": list(sec.elements), "upstream_device": sec.upstream_device,
                           "downstream_device": sec.downstream_device}
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

    def local_command_points(self) -> dict[str, bool]:
        """Every command point of a switching device → whether its device is in local control
        (an IEC 61850 server refuses those controls itself)."""
        return {pid: self.breakers[agent_id].local for pid, (agent_id, _) in self._command_targets.items()
                if agent_id in self.breakers}

    # ------------------------------------------------------------------ outputs

    def _kv(self, bus: int) -> float:
        return float(abs(self._v[bus]) * self.net.buses[bus].base_kv)

    def _flow(self, branch: int) -> tuple[npt.NDArray[np.complex128], complex, int]:
        """Phase currents through a branch (pu), the power (kW + j kvar) it carries in its from → to
        direction, and the direction (+1, −1 when fed from its `to` side, 0 when carrying nothing)."""
        assert self._tree is not None
        flow = branch_flow(self._tree, branch, self.net.branches[branch], self._v, self._i1, self._i_abc)
        return flow.currents_pu, flow.power_pu * self.net.base_mva * 1000.0, flow.direction

    def _device_voltage_bus(self, device: SwitchingDevice) -> int:
        """Where a device measures its voltage: closed, on the side its supply comes from; open,
        on its load side (a feeder breaker's line side, an in-series device's downstream side,
        a tie's second line or external source)."""
        if device.closed:
            _, _, direction = self._flow(device.branch)
            if direction < 0 or (direction == 0 and not self._energised[device.from_bus]):
                return device.bus
            return device.from_bus
        return device.bus

    def _agent_values(self, agent_id: str) -> dict[str, float | int | bool]:
        kind = self._agent_types[agent_id]
        if kind is AgentType.SUBSTATION:
            # the incomer meter sits on the station bus, after the grid's source impedance
            bus = self._station_bus_of[agent_id]
            s = complex(self._v[bus] * np.conj(self._i1[bus])) * self.net.base_mva * 1000.0
            return {"bus_voltage_kv": self._kv(bus), "total_load_kw": s.real,
                    "total_load_kvar": s.imag, "frequency_hz": self._frequency_hz}
        if kind is AgentType.CIRCUIT_BREAKER:
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
                "va_kv": abs(va) * phase_kv, "vb_kv": abs(vb) * phase_kv, "vc_kv": abs(vc) * phase_kv,
                "va_deg": _degrees(va), "vb_deg": _degrees(vb), "vc_deg": _degrees(vc),
                "ia_deg": _degrees(sign * i_abc[0]), "ib_deg": _degrees(sign * i_abc[1]),
                "ic_deg": _degrees(sign * i_abc[2]),
            }
            return {**phasors, "ia": ia, "ib": ib, "ic": ic, "in": i_n, "closed": cb.closed, "operations": cb.operations,
                    "voltage_kv": self._kv(self._device_voltage_bus(cb)), "frequency_hz": self._frequency_hz,
                    "active_power_kw": s.real, "reactive_power_kvar": s.imag,
                    "trip_cmd": cb.trip_cmd, "close_cmd": cb.close_cmd, "position_cmd": cb.position_cmd,
                    "fpi": cb.fpi, "fpi_reset": cb.fpi_reset, "local": cb.local}
        if kind is AgentType.POWER_LINE:
            line = self.lines[agent_id]
            first = line.first_bus
            i_abc, s, _ = self._flow(line.segments[0][4])
            return {"current_a": float(abs(i_abc[0])) * self.net.i_base_a(first),
                    "voltage_kv": self._kv(line.start_bus), "active_power_kw": s.real,
                    "reactive_power_kvar": s.imag, "end_voltage_kv": self._kv(line.end_bus)}
        if kind is AgentType.TRANSFORMER:
            t = self.transformers[agent_id]
            s_sec = self._v[t.bus] * np.conj(self._i1[t.bus]) * self.net.base_mva * 1000.0
            ambient = self._ambient_c(t, self._now)
            values: dict[str, float | int | bool] = {
                "load_kw": float(s_sec.real), "load_kvar": float(s_sec.imag),
                "top_oil_temp_c": ambient + (t.top_oil_rise_c or 0.0), "ambient_temp_c": ambient,
                "secondary_voltage_v": self._kv(t.bus) * 1000.0,
                "current_a": float(abs(self._i1[t.bus]) * self.net.i_base_a(t.bus)),
                "tap_position": t.tap_position, "tap_setpoint": t.tap_setpoint}
            condition = self.conditions.get(agent_id)
            return condition.live(values, self._now) if condition is not None else values
        if kind is AgentType.CAPACITOR_BANK:
            cap = self.capacitors[agent_id]
            v_pu_rated = abs(self._v[cap.bus]) * self.net.buses[cap.bus].base_kv / cap.attrs.voltage_level
            q = cap.attrs.rated_capacity * 1000.0 * cap.steps_active / cap.attrs.num_steps * v_pu_rated ** 2
            return {"bus_voltage_kv": self._kv(cap.bus), "reactive_power_kvar": q,
                    "steps_active": cap.steps_active, "steps_cmd": cap.steps_cmd}
        der = self.ders[agent_id]
        out: dict[str, float | int | bool] = {
            "active_power_kw": der.p_kw, "reactive_power_kvar": der.q_kvar,
            "voltage_pu": float(abs(self._v[der.bus])), "irradiance_w_m2": der.irradiance_w_m2,
            "p_limit_pct": der.p_limit_pct, "q_setpoint_kvar": der.q_setpoint_kvar,
            "connected": der.connected, "connect_cmd": der.connect_cmd, "energy_kwh": der.energy_kwh,
            "ambient_temp_c": self._ambient_c(None, self._now, self._substation_of_bus(der.bus))}
        if der.soc_pct is not None:
            assert der.attrs.energy_capacity_kwh is not None
            out.update(soc_pct=der.soc_pct, p_setpoint_kw=der.p_setpoint_kw,
                       energy_available_kwh=der.attrs.energy_capacity_kwh * der.soc_pct / 100.0)
        return out

    def _substation_of_bus(self, bus: int) -> str:
        found = self._sub_of_bus.get(bus)
        if found is None:
            found = self._sub_of_bus[bus] = next(iter(sorted(self._owners(bus) & set(self.substation_ids))),
                                                 self.substation_id)
        return found

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
            voltage[sl] = v_ln * (1.0 - self._meter_drop[sl] * np.divide(d, typical, out=np.zeros_like(d),
                                                                         where=typical > 0))
        powered = voltage > 0.5 * self._meter_nominal_v
        demand = np.where(powered, demand, 0.0)
        voltage = np.where(powered, voltage, np.where(voltage > 0, voltage, 0.0))
        current = np.divide(demand * 1000.0, voltage * self._meter_pf, out=np.zeros(n), where=powered)
        thd = np.where(powered, self._meter_thd, 0.0)
        return self.bypass.apply(MeterReadings(time_s=self._now, ids=self._meter_ids, group_ids=self._meter_group_ids,
                                               voltage_v=voltage, current_a=current, demand_kw=demand,
                                               energy_kwh=energy, power_factor=self._meter_pf.copy(), thd_pct=thd,
                                               powered=powered, tamper=self._meter_tamper.copy()))

    def set_tamper(self, meter_id: str, tampered: bool = True) -> None:
        """Flag a meter's tamper switch (a scenario injection)."""
        try:
            k = self._meter_ids.index(meter_id)
        except ValueError:
            raise KeyError(f"{meter_id!r} is not a simulated meter") from None
        self._meter_tamper[k] = tampered

    def loads_behind(self, target: str) -> list[LoadComponent]:
        """The load components `target` supplies in the normal configuration (peaks and daily shapes)."""
        return [LoadComponent(ld.peak_kw * ld.factor, ld.power_factor, tuple(float(x) for x in self._shapes[ld.shape][:24]))
                for ld in self._loads if target in ld.owners]

    @property
    def now_s(self) -> float:
        return self._now


PHASOR_NAMES = ("va_kv", "vb_kv", "vc_kv", "va_deg", "vb_deg", "vc_deg", "ia_deg", "ib_deg", "ic_deg")
"""What a switching device's relay measures as phasors: phase-to-neutral voltage magnitudes (kV) and
the angles of the phase voltages and currents (degrees, against the source EMF of phase A, as a
synchrophasor would be: the model has one reference and no frequency drift)."""


def _degrees(z: complex) -> float:
    """Angle in degrees, 0 for a phasor too small to have one."""
    return 0.0 if abs(z) < 1e-9 else math.degrees(cmath.phase(z))


_NOT_MODELLED: dict[AgentType, frozenset[str]] = {
    AgentType.CAPACITOR_BANK: frozenset({"source_reactive_power_kvar", "ambient_temp_c"}),
}
"""Point names of an agent type's vocabulary the model computes no value for (another agent's
point, mapped by id, supplies them)."""
_NAMES: dict[AgentType, frozenset[str]] = {
    t: frozenset(AGENT_SPECS[t.value].points) - _NOT_MODELLED.get(t, frozenset()) for t in AgentType}
"""What the model produces for each agent type: its vocabulary in the agent registry, less the above."""
_COMMANDS: dict[AgentType, frozenset[str]] = {
    t: AGENT_SPECS[t.value].commands for t in AgentType if AGENT_SPECS[t.value].commands}
"""The command points the model obeys: every command point of the registry's vocabulary."""
