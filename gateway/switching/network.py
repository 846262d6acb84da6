"""The feeder network as switching sees it: sources, sections and switching devices.

Built once from the site file (sans-IO). Nodes are sources (the substation's bus; the far side
of a tie to another substation, limited to the capacity that substation declared for it,
`external_capacity_kva`) and *sections*: maximal stretches of line between switching
devices, with the elements tapped on them. A station transformer (a transformer the substation
or a breaker feeds, which feeds breakers or lines itself, not tapped on a line) is a node of its
own, named after it: its impedance is in series and its rated current is its limit, so taking
it out and carrying its feeders elsewhere is a question the estimate answers. One that
regulates its voltage (a tap changer it commands) holds its bus at its set point. Edges are the switching devices (breakers,
reclosers, load-break switches, ties) and fixed connections (a line fed straight from another
line's end). A line carrying no in-series device is one section, `<LINE>/1`.

Positions along a line come from the connection rules' `position_m`: a device tapped on line L
at p cuts L there; elements tapped at a position > p lie beyond it, elements at p before it.

Questions answered for a configuration (which devices are closed): what each source
energises, whether a close would parallel two sources or energise a given section, and a
power-flow estimate (backward/forward sweep at the sections' nominal voltage, loads lumped at
each section) with every element's loading against its limit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.agents.schema import (
    CircuitBreakerAttributes,
    PowerLineAttributes,
    SubstationAttributes,
    TransformerAttributes,
)
from gateway.config import AgentConfig, CanonicalType, SiteConfig

SQRT3 = math.sqrt(3.0)
BREAKER, LINE, SUBSTATION = "circuit_breaker", "power_line", "substation"
TAPPED = frozenset({"transformer", "capacitor_bank", "renewable_energy"})
INJECTING = frozenset({"capacitor_bank", "renewable_energy"})
DEFAULT_POWER_FACTOR = 0.95
VOLTAGE_WORSE_PU = 0.002
LOADING_WORSE = 0.01
PROTECTED_LOADING_LIMIT = 0.9
"""A protected breaker may carry at most this share of its lowest phase-overcurrent pickup."""
STATION_TRANSFORMER_X_R = 8.0
"""X/R of a station transformer's impedance (typical of 5-20 MVA units); only the voltage drop uses it."""


class NetworkError(ValueError):
    """The site's topology cannot be turned into a switching network (names what and where)."""


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    external: bool
    capacity_kva: float | None
    nominal_kv: float


@dataclass(frozen=True, slots=True)
class Section:
    id: str
    line: str
    index: int
    from_m: float
    to_m: float
    z_ohm: complex
    """Series impedance of the stretch (positive sequence)."""
    ampacity_a: float
    nominal_kv: float
    elements: tuple[str, ...]
    """Agents tapped on this stretch (transformers, capacitor banks, DER)."""
    meter_groups: tuple[str, ...]
    customers: int
    critical_customers: int


@dataclass(frozen=True, slots=True)
class Device:
    """A switching device between two nodes. `a` is its source side in the normal
    configuration (for a tie: the side of its first rule), `b` its load side."""

    id: str
    function: str
    a: str
    b: str
    tie: bool
    normally_open: bool
    allow_parallel: bool
    external_source: str | None
    rated_current_a: float
    interrupting_a: float
    protected: bool
    pickup_a: float | None
    """Lowest phase-overcurrent pickup of its protection scheme (None: unprotected)."""
    points: Mapping[str, str]

    def other(self, node: str) -> str:
        return self.b if node == self.a else self.a


@dataclass(frozen=True, slots=True)
class Violation:
    element: str
    quantity: str
    value: float
    limit: float

    def __str__(self) -> str:
        unit = {"current_a": "A", "voltage_pu": "pu", "load_kva": "kVA"}.get(self.quantity, "")
        return f"{self.element} {self.quantity.split('_')[0]} {self.value:.3g} {unit} beyond its limit {self.limit:.3g} {unit}"


@dataclass(frozen=True, slots=True)
class FlowEstimate:
    """One configuration's estimated flows. Dead nodes have no entry."""

    voltage_pu: Mapping[str, float]
    node_current_a: Mapping[str, float]
    """Current entering each energised section through the edge that feeds it."""
    device_current_a: Mapping[str, float]
    source_load_kva: Mapping[str, float]
    violations: tuple[Violation, ...]
    parallel: tuple[str, ...]
    """Devices that close a loop or join two sources (the estimate does not model meshes)."""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.parallel

    def worse_than(self, base: FlowEstimate) -> list[Violation]:
        """Violations that `base` does not have, or has less (a limit already exceeded before an
        operation is the operation's concern only where it makes it worse)."""
        before = {(v.element, v.quantity): v.value for v in base.violations}
        out = []
        for v in self.violations:
            old = before.get((v.element, v.quantity))
            if old is None:
                out.append(v)
            elif v.quantity == "voltage_pu" and v.value < old - VOLTAGE_WORSE_PU:
                out.append(v)
            elif v.quantity != "voltage_pu" and v.value > old * (1.0 + LOADING_WORSE):
                out.append(v)
        return out


@dataclass
class Energisation:
    """What each node is fed from in one configuration."""

    source_of: dict[str, str]
    """Energised node → the source feeding it."""
    parent: dict[str, tuple[str, str | None]]
    """Energised non-source node → (node it is fed from, device id or None for a fixed link)."""
    loops: list[str] = field(default_factory=list)
    """Closed devices that join two energised nodes already fed (a loop or two sources)."""
    uncertain: set[str] = field(default_factory=set)
    """Nodes that a device of unknown position might feed."""

    def energised(self, node: str) -> bool:
        return node in self.source_of


class Network:
    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}
        self.sections: dict[str, Section] = {}
        self.devices: dict[str, Device] = {}
        self.fixed: list[tuple[str, str]] = []
        self.line_sections: dict[str, list[str]] = {}
        self.element_section: dict[str, str] = {}
        self.element_points: dict[str, Mapping[str, str]] = {}
        self.element_types: dict[str, str] = {}
        self.station_nodes: dict[str, str] = {}
        """Station transformer → its node (the same id)."""
        self.regulated_pu: dict[str, float] = {}
        """Station nodes whose tap changer holds the bus voltage → the voltage it holds (pu)."""
        self._adjacent: dict[str, list[tuple[str, str | None]]] = {}

    # ------------------------------------------------------------------ building

    @classmethod
    def from_site(cls, site: SiteConfig) -> Network:
        net = cls()
        _Builder(site, net).build()
        net._index()
        return net

    def _index(self) -> None:
        adj: dict[str, list[tuple[str, str | None]]] = {n: [] for n in (*self.sources, *self.sections)}
        for dev in self.devices.values():
            adj.setdefault(dev.a, []).append((dev.b, dev.id))
            adj.setdefault(dev.b, []).append((dev.a, dev.id))
        for a, b in self.fixed:
            adj.setdefault(a, []).append((b, None))
            adj.setdefault(b, []).append((a, None))
        self._adjacent = adj

    # ------------------------------------------------------------------ questions

    def nodes(self) -> list[str]:
        return [*self.sources, *self.sections]

    def adjacent(self, node: str) -> list[tuple[str, str | None]]:
        return self._adjacent.get(node, [])

    def devices_of(self, node: str) -> list[str]:
        return [d for _, d in self._adjacent.get(node, []) if d is not None]

    def customers(self, nodes: Iterable[str]) -> int:
        return sum(self.sections[n].customers for n in nodes if n in self.sections)

    def critical_customers(self, nodes: Iterable[str]) -> int:
        return sum(self.sections[n].critical_customers for n in nodes if n in self.sections)

    def normal_configuration(self) -> dict[str, bool]:
        return {d.id: not d.normally_open for d in self.devices.values()}

    def energise(self, closed: Mapping[str, bool | None]) -> Energisation:
        """Walk from every source over closed devices and fixed links (breadth-first, stations
        before external sources). A device whose position is unknown (None) feeds nothing, but
        what it might feed is reported as uncertain. An external source mapped to False in
        `closed` is dead (its tie measures no voltage on that side): it feeds nothing and can be
        fed."""
        live = [s for s in self.sources.values() if closed.get(s.id) is not False]
        result = Energisation(source_of={s.id: s.id for s in live}, parent={})
        for src in sorted(live, key=lambda s: s.external):
            queue = deque([src.id])
            while queue:
                node = queue.popleft()
                for other, dev in self._adjacent.get(node, []):
                    state = True if dev is None else closed.get(dev)
                    if state is None:
                        if other not in result.source_of:
                            result.uncertain.add(other)
                        continue
                    if not state:
                        continue
                    if other in result.source_of:
                        if result.parent.get(node) == (other, dev) or result.parent.get(other) == (node, dev):
                            continue  # the edge this walk came through
                        if dev is not None and dev not in result.loops:
                            result.loops.append(dev)
                        continue
                    result.source_of[other] = src.id
                    result.parent[other] = (node, dev)
                    queue.append(other)
        return result

    def downstream(self, device: str, closed: Mapping[str, bool | None]) -> list[str]:
        """Nodes fed through `device` in configuration `closed` (empty when it feeds nothing)."""
        en = self.energise(closed)
        dev = self.devices[device]
        root = next((n for n in (dev.a, dev.b) if en.parent.get(n, (None, None))[1] == device), None)
        if root is None:
            return []
        children: dict[str, list[str]] = {}
        for node, (parent, _) in en.parent.items():
            children.setdefault(parent, []).append(node)
        out, queue = [], deque([root])
        while queue:
            node = queue.popleft()
            out.append(node)
            queue.extend(children.get(node, []))
        return out

    def zone(self, start: str, bounded_by: Iterable[str]) -> set[str]:
        """Nodes reachable from `start` without crossing the devices `bounded_by` (or any source)."""
        stop = set(bounded_by)
        seen, queue = {start}, deque([start])
        while queue:
            node = queue.popleft()
            for other, dev in self._adjacent.get(node, []):
                if dev in stop or other in seen or other in self.sources:
                    continue
                seen.add(other)
                queue.append(other)
        return seen

    def estimate(
        self,
        closed: Mapping[str, bool | None],
        loads_kva: Mapping[str, complex],
        *,
        source_voltage_pu: float | Mapping[str, float] | None = None,
        min_voltage_pu: float = 0.95,
        max_voltage_pu: float = 1.05,
        iterations: int = 8,
    ) -> FlowEstimate:
        """Backward/forward sweep over the radial configuration `closed`. `loads_kva` maps a
        section to its load (P + jQ, kW and kvar), lumped at the section; `source_voltage_pu`
        the sources' voltages as measured (1.0 pu where not given)."""
        en = self.energise(closed)
        children: dict[str, list[str]] = {}
        for node, (parent, _) in en.parent.items():
            children.setdefault(parent, []).append(node)
        order: list[str] = []
        for src in self.sources:
            if src in en.source_of:
                queue = deque([src])
                while queue:
                    node = queue.popleft()
                    order.append(node)
                    queue.extend(children.get(node, []))
        if isinstance(source_voltage_pu, Mapping):
            v_src = {s: float(source_voltage_pu.get(s, 1.0)) for s in self.sources}
        else:
            v_src = {s: 1.0 if source_voltage_pu is None else float(source_voltage_pu) for s in self.sources}
        v: dict[str, complex] = {n: complex(v_src.get(en.source_of.get(n, n), 1.0)) for n in order}
        current: dict[str, complex] = {}
        fed = [n for n in order if n in en.parent]  # every node but the live sources themselves
        for _ in range(iterations):
            current = {}
            for node in reversed(fed):
                # a dead external source fed through its tie is a node with no load and no impedance
                nominal = self.sections[node].nominal_kv if node in self.sections else self.sources[node].nominal_kv
                s = loads_kva.get(node, 0j)
                v_kv = v[node] * nominal
                i_load = (s / (SQRT3 * v_kv)).conjugate() if abs(v_kv) > 1e-9 else 0j
                current[node] = i_load + sum((current[c] for c in children.get(node, [])), 0j)
            for node in fed:
                parent = en.parent[node][0]
                sec = self.sections.get(node)
                if sec is None:
                    v[node] = v[parent]
                    continue
                drop_kv = SQRT3 * sec.z_ohm * current[node] / 1000.0
                v[node] = v[parent] - drop_kv / sec.nominal_kv
                if node in self.regulated_pu:  # the tap changer brings the bus back to its set point
                    v[node] = v[node] / abs(v[node]) * self.regulated_pu[node] if abs(v[node]) > 0 else v[node]
        violations: list[Violation] = []
        node_current = {n: abs(i) for n, i in current.items()}
        device_current: dict[str, float] = {}
        for node, (_, via) in en.parent.items():
            if via is not None:
                device_current[via] = node_current.get(node, 0.0)
        source_load: dict[str, float] = {}
        for src_id, source in self.sources.items():
            if src_id not in en.source_of or src_id in en.parent:
                continue
            total = sum((current[c] for c in children.get(src_id, [])), 0j) * SQRT3 * source.nominal_kv
            source_load[src_id] = abs(total)
            if source.capacity_kva is not None and abs(total) > source.capacity_kva:
                violations.append(Violation(src_id, "load_kva", abs(total), source.capacity_kva))
        for node, amps in node_current.items():
            sec = self.sections.get(node)
            if sec is None:
                continue
            if amps > sec.ampacity_a:
                violations.append(Violation(node, "current_a", amps, sec.ampacity_a))
            vpu = abs(v[node])
            if vpu < min_voltage_pu:
                violations.append(Violation(node, "voltage_pu", vpu, min_voltage_pu))
            elif vpu > max_voltage_pu:
                violations.append(Violation(node, "voltage_pu", vpu, max_voltage_pu))
        for dev_id, amps in device_current.items():
            device = self.devices[dev_id]
            limit = device.rated_current_a
            if device.pickup_a is not None:
                limit = min(limit, PROTECTED_LOADING_LIMIT * device.pickup_a)
            if amps > limit:
                violations.append(Violation(dev_id, "current_a", amps, limit))
        return FlowEstimate(
            voltage_pu={n: abs(v[n]) for n in order if n in self.sections},
            node_current_a=node_current,
            device_current_a=device_current,
            source_load_kva=source_load,
            violations=tuple(violations),
            parallel=tuple(en.loops),
        )

    def describe(self) -> dict[str, Any]:
        """The network as plain data (for `stima switching network` and the docs)."""
        return {
            "sources": [
                {"id": s.id, "external": s.external, "capacity_kva": s.capacity_kva} for s in self.sources.values()
            ],
            "sections": [
                {
                    "id": s.id,
                    "line": s.line,
                    "from_m": s.from_m,
                    "to_m": s.to_m,
                    "elements": list(s.elements),
                    "customers": s.customers,
                    "critical_customers": s.critical_customers,
                    "ampacity_a": s.ampacity_a,
                }
                for s in self.sections.values()
            ],
            "devices": [
                {
                    "id": d.id,
                    "function": d.function,
                    "between": [d.a, d.b],
                    "tie": d.tie,
                    "normally_open": d.normally_open,
                    "protected": d.protected,
                    "rated_current_a": d.rated_current_a,
                }
                for d in self.devices.values()
            ],
        }


# --------------------------------------------------------------------------- building from the site


def _position(rule: Any) -> float | None:
    value = getattr(rule, "position_m", None)
    return None if value is None else float(value)


class _Builder:
    """Turns the agents' connection rules into sources, sections and devices."""

    def __init__(self, site: SiteConfig, net: Network) -> None:
        self.site = site
        self.net = net
        self.agents: dict[str, AgentConfig] = {a.id: a for a in site.agents}
        self.types = {a.id: a.type for a in site.agents}
        self.line_attrs = {
            a.id: PowerLineAttributes.model_validate(a.attributes) for a in site.agents if a.type == LINE
        }
        self.schemes = {s.breaker: s for s in site.protection}

    def build(self) -> None:
        self._sources()
        self._edges()
        in_series = self._in_series()
        self._sections(in_series)
        self._station_transformers()
        self._series_devices(in_series)
        self._ties()
        self._fed_from_above()

    def _sources(self) -> None:
        for a in self.site.agents:
            if a.type == SUBSTATION:
                sub = SubstationAttributes.model_validate(a.attributes)
                self.net.sources[a.id] = Source(a.id, False, sub.rated_capacity * 1000.0, sub.secondary_voltage)

    def _edges(self) -> None:
        """What hangs on each line and where (`taps`; a tap named by both ends keeps the position
        either gives), the supply edges between elements (`feeds`: parent → children, depends_on
        read backwards), and the ties' routes (`routes`: device → (line, position, normally_open))."""
        tap_at: dict[str, dict[str, float | None]] = {line: {} for line in self.line_attrs}
        feeds: dict[str, list[str]] = {}
        routes: dict[str, list[tuple[str, float | None, bool]]] = {}
        for a in self.site.agents:
            for rule in a.connection_rules:
                target = rule.target_id
                if target not in self.agents:
                    continue
                kind = rule.canonical_type
                if kind is CanonicalType.ROUTE:
                    self._route(a.id, target, rule, routes)
                    continue
                edge = self._supply_edge(a.id, target, kind)
                if edge is None:
                    continue
                parent, child = edge
                if self.types[parent] == LINE and self.types[child] != LINE:
                    if tap_at[parent].get(child) is None:
                        tap_at[parent][child] = _position(rule)
                elif child not in feeds.get(parent, []):
                    feeds.setdefault(parent, []).append(child)
        self.taps = {line: list(children.items()) for line, children in tap_at.items()}
        self.feeds, self.routes = feeds, routes

    def _route(
        self, agent_id: str, target: str, rule: Any, routes: dict[str, list[tuple[str, float | None, bool]]]
    ) -> None:
        if self.types[agent_id] == BREAKER and self.types[target] == LINE:
            routes.setdefault(agent_id, []).append((target, _position(rule), rule.normally_open))
        elif self.types[target] == BREAKER and self.types[agent_id] == LINE:
            routes.setdefault(target, []).append((agent_id, _position(rule), rule.normally_open))

    def _supply_edge(self, agent_id: str, target: str, kind: CanonicalType) -> tuple[str, str] | None:
        """(parent, child) of a supply or depends-on rule; None for the other kinds."""
        if kind is CanonicalType.SUPPLY and self.types[target] == LINE and self.types[agent_id] in INJECTING:
            return target, agent_id  # a DER or capacitor bank feeding into the line is tapped on it
        if kind is CanonicalType.SUPPLY:
            return agent_id, target
        if kind is CanonicalType.DEPENDS_ON:
            return target, agent_id
        return None

    def _in_series(self) -> dict[str, list[tuple[str, float]]]:
        """Breakers tapped on each line (ties excepted), at their position (the far end if none)."""
        in_series: dict[str, list[tuple[str, float]]] = {line: [] for line in self.taps}
        for line, items in self.taps.items():
            for child, given in items:
                if self.types[child] == BREAKER and child not in self.routes:
                    in_series[line].append((child, self.line_attrs[line].length if given is None else given))
        return in_series

    def _bounds(self, line: str, in_series: dict[str, list[tuple[str, float]]]) -> list[float]:
        length = self.line_attrs[line].length
        cuts = sorted({p for _, p in in_series[line] if 0.0 < p < length})
        return [0.0, *cuts, length]

    def _sections(self, in_series: dict[str, list[tuple[str, float]]]) -> None:
        """Every line cut into sections by its series devices, with the elements and meter groups
        placed on each."""
        net = self.net
        for line in self.line_attrs:
            bounds = self._bounds(line, in_series)
            net.line_sections[line] = [f"{line}/{k + 1}" for k in range(len(bounds) - 1)]
        self._place_elements()
        for line, attrs in self.line_attrs.items():
            bounds = self._bounds(line, in_series)
            for k, sid in enumerate(net.line_sections[line]):
                lo, hi = bounds[k], bounds[k + 1]
                elements = tuple(e for e, s in net.element_section.items() if s == sid)
                groups = tuple(g.id for g in self.site.meter_groups if g.connected_transformer in elements)
                imp = attrs.impedance
                length_km = (hi - lo) / 1000.0
                net.sections[sid] = Section(
                    id=sid,
                    line=line,
                    index=k + 1,
                    from_m=lo,
                    to_m=hi,
                    z_ohm=complex(imp.r_ohm_per_km, imp.x_ohm_per_km) * length_km,
                    ampacity_a=attrs.ampacity,
                    nominal_kv=attrs.voltage_rating,
                    elements=elements,
                    meter_groups=groups,
                    customers=sum(g.count for g in self.site.meter_groups if g.id in groups),
                    critical_customers=sum(g.critical_count for g in self.site.meter_groups if g.id in groups),
                )

    def _series_devices(self, in_series: dict[str, list[tuple[str, float]]]) -> None:
        for line, placed in in_series.items():
            length = self.line_attrs[line].length
            for dev_id, pos in placed:
                upstream = self.section_at(line, pos)
                if pos < length:
                    self._device(dev_id, upstream, self.section_at(line, pos, beyond=True))
                else:
                    self._device_feeding(dev_id, upstream)

    def _ties(self) -> None:
        for dev_id, ends in self.routes.items():
            tie = self._breaker_attrs(dev_id)
            nodes = [
                self.section_at(line, at if at is not None else self.line_attrs[line].length) for line, at, _ in ends
            ]
            if tie.external_source:
                if len(nodes) != 1:
                    raise NetworkError(
                        f"agents.{dev_id}: a tie to another substation ({tie.external_source}) "
                        f"has one route rule to a local line, found {len(nodes)}"
                    )
                ext = f"EXT:{dev_id}"
                self.net.sources[ext] = Source(
                    ext, True, tie.external_capacity_kva, self.net.sections[nodes[0]].nominal_kv
                )
                nodes.append(ext)
            if len(nodes) != 2:
                raise NetworkError(f"agents.{dev_id}: a tie joins two lines (route rules), found {len(nodes)}")
            normally_open = tie.normally_open or any(no for _, _, no in ends)
            self._add(dev_id, nodes[0], nodes[1], tie=True, normally_open=normally_open)

    def _fed_from_above(self) -> None:
        """Breakers fed by the substation or by another element (not tapped on a line), and the
        fixed connections of lines and station transformers to what feeds them."""
        net = self.net
        for parent, children in self.feeds.items():
            for child in children:
                if self.types[child] == BREAKER and child not in net.devices:
                    self._device_feeding(child, self._node_of(parent))
                elif self.types[child] == LINE and (
                    self.types[parent] in (LINE, SUBSTATION) or parent in net.station_nodes
                ):
                    net.fixed.append((self._node_of(parent), net.line_sections[child][0]))
                elif child in net.station_nodes and self.types[parent] == SUBSTATION:
                    net.fixed.append((parent, net.station_nodes[child]))

    def _breaker_attrs(self, dev_id: str) -> CircuitBreakerAttributes:
        return CircuitBreakerAttributes.model_validate(self.agents[dev_id].attributes)

    def _station_transformers(self) -> None:
        """Transformers fed by the substation or a breaker that feed breakers or lines: nodes."""
        net = self.net
        fed = {c for p, cs in self.feeds.items() if self.types[p] in (SUBSTATION, BREAKER) for c in cs}
        for agent_id, kind in self.types.items():
            if kind != "transformer" or agent_id in net.element_section or agent_id not in fed:
                continue
            if not any(self.types[c] in (BREAKER, LINE) for c in self.feeds.get(agent_id, [])):
                continue
            attrs = TransformerAttributes.model_validate(self.agents[agent_id].attributes)
            kv = attrs.secondary_voltage / 1000.0
            z_abs = attrs.impedance_percent / 100.0 * kv * kv / (attrs.rated_capacity / 1000.0)
            r = z_abs / math.sqrt(1.0 + STATION_TRANSFORMER_X_R**2)
            groups = [g for g in self.site.meter_groups if g.connected_transformer == agent_id]
            net.sections[agent_id] = Section(
                id=agent_id,
                line=agent_id,
                index=1,
                from_m=0.0,
                to_m=0.0,
                z_ohm=complex(r, r * STATION_TRANSFORMER_X_R),
                ampacity_a=attrs.rated_capacity / (SQRT3 * kv),
                nominal_kv=kv,
                elements=(),
                meter_groups=tuple(g.id for g in groups),
                customers=sum(g.count for g in groups),
                critical_customers=sum(len(g.critical_meters) for g in groups),
            )
            net.station_nodes[agent_id] = agent_id
            if attrs.regulation_enabled and "tap_setpoint" in self.agents[agent_id].points:
                # the low edge of its band: the bus may settle anywhere inside it
                net.regulated_pu[agent_id] = (attrs.voltage_setpoint_v - attrs.bandwidth_v / 2.0) / 120.0

    def _node_of(self, agent_id: str) -> str:
        if self.types[agent_id] == SUBSTATION:
            return agent_id
        if agent_id in self.net.station_nodes:
            return self.net.station_nodes[agent_id]
        if self.types[agent_id] == LINE:
            return self.net.line_sections[agent_id][-1]
        if agent_id in self.net.element_section:
            return self.net.element_section[agent_id]
        # an element between the substation and its feeder breakers (the station transformer)
        # is part of the station: what it feeds hangs from the substation's node
        parent, seen = agent_id, {agent_id}
        while True:
            parent = next((p for p, kids in self.feeds.items() if parent in kids), "")
            if not parent or parent in seen or self.types.get(parent) == LINE:
                break
            if self.types.get(parent) == SUBSTATION:
                return parent
            seen.add(parent)
        raise NetworkError(f"agents.{agent_id}: a {self.types[agent_id]} cannot feed a switching device")

    def _device_feeding(self, dev_id: str, upstream: str) -> None:
        lines = [c for c in self.feeds.get(dev_id, []) if self.types[c] == LINE]
        stations = [c for c in self.feeds.get(dev_id, []) if c in self.net.station_nodes]
        if len(lines) + len(stations) > 1:
            raise NetworkError(
                f"agents.{dev_id}: a switching device feeds one line or one transformer, found "
                f"{', '.join(lines + stations)}"
            )
        if lines:
            self._device(dev_id, upstream, self.net.line_sections[lines[0]][0])
        elif stations:
            self._device(dev_id, upstream, self.net.station_nodes[stations[0]])

    def _device(self, dev_id: str, a: str, b: str) -> None:
        self._add(dev_id, a, b, tie=False, normally_open=self._breaker_attrs(dev_id).normally_open)

    def _add(self, dev_id: str, a: str, b: str, *, tie: bool, normally_open: bool) -> None:
        attrs = self._breaker_attrs(dev_id)
        function = attrs.function
        interrupting = attrs.interrupting_capacity * 1000.0
        scheme = self.schemes.get(dev_id)
        pickup = None
        if scheme is not None:
            p51 = getattr(scheme.elements, "p51", None)
            p50 = getattr(scheme.elements, "p50", None)
            pickups = [e.pickup_a for e in (p51, p50) if e is not None]
            pickup = min(pickups) if pickups else None
        self.net.devices[dev_id] = Device(
            id=dev_id,
            function=function,
            a=a,
            b=b,
            tie=tie,
            normally_open=normally_open,
            allow_parallel=attrs.allow_parallel,
            external_source=attrs.external_source,
            rated_current_a=attrs.rated_current,
            interrupting_a=interrupting,
            protected=scheme is not None,
            pickup_a=pickup,
            points=dict(self.agents[dev_id].points),
        )

    def _place_elements(self) -> None:
        net = self.net
        for line, items in self.taps.items():
            cut_lines = len(net.line_sections[line]) > 1
            for child, pos in items:
                if self.types[child] == BREAKER:
                    continue
                if pos is None:
                    if cut_lines:
                        raise NetworkError(
                            f"agents.{child}: tapped on {line}, which has switching devices along it; "
                            "its connection rule needs position_m"
                        )
                    pos = self.line_attrs[line].length
                net.element_section[child] = self.section_at(line, pos)
        for a in self.site.agents:
            net.element_points[a.id] = dict(a.points)
            net.element_types[a.id] = a.type
        # elements fed by a tapped element (a DER behind a transformer) share its section
        changed = True
        while changed:
            changed = False
            for parent, children in self.feeds.items():
                if parent in net.element_section:
                    for child in children:
                        if child not in net.element_section and self.types[child] in TAPPED:
                            net.element_section[child] = net.element_section[parent]
                            changed = True

    def section_at(self, line: str, position_m: float, *, beyond: bool = False) -> str:
        """The section of `line` holding `position_m` (at a cut: the one before it, or after it
        with `beyond`)."""
        ids = self.net.line_sections[line]
        attrs = self.line_attrs[line]
        if not 0.0 <= position_m <= attrs.length:
            raise NetworkError(f"{line}: position {position_m:g} m is not on the line (0..{attrs.length:g} m)")
        cuts = [self._cut(ids, k) for k in range(len(ids) - 1)]
        for k, cut in enumerate(cuts):
            if position_m < cut or (position_m == cut and not beyond):
                return ids[k]
        return ids[-1]

    def _cut(self, ids: list[str], k: int) -> float:
        line = ids[0].rsplit("/", 1)[0]
        positions = sorted(
            {
                p
                for c, p in self.taps[line]
                if p is not None
                and self.types[c] == BREAKER
                and c not in self.routes
                and 0.0 < p < self.line_attrs[line].length
            }
        )
        return positions[k]
