"""The substation's electrical graph, built from the agents' `connection_rules`.

Edges keep the canonical types: `supply` (power flows source → target), `route` (electrical
connection; `normally_open` marks a tie switch), `command` (control) and `depends_on`
(the source needs the target, e.g. a line depends on its breaker). `bidirectional` edges are
stored both ways. Meter groups hang under their transformer as `supply` edges.

Questions answered: the breaker that protects an element, what (and which meters) lie
downstream of a switch, and which normally-open ties could feed an element from another
breaker (load-transfer options).

A line cut by switching devices along it (the switching network's sections, gateway/switching/
network.py) is expanded: the line's node feeds its first section (`<LINE>/1`, type
`line_section`), each section feeds what is tapped on it and the in-series device at its end,
which feeds the next section; a tie switch has `route` edges to the sections it joins. So
`downstream(SW-045-1)` is what that switch feeds, and a tie resolves to the feeder beyond it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import CanonicalType, Directionality, SiteConfig

BREAKER = "circuit_breaker"
METER_GROUP = "meter_group"
LINE_SECTION = "line_section"
LINE = "power_line"
SUBSTATION = "substation"
NOT_PROTECTIVE = frozenset({"load_break_switch"})
"""Switching devices that do not interrupt fault current: they protect nothing."""


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    kind: CanonicalType
    bidirectional: bool = False
    normally_open: bool = False


@dataclass(frozen=True, slots=True)
class TransferOption:
    """Close `tie` to feed `element`'s area from `source_breaker` through `via`."""

    element: str
    tie: tuple[str, str]
    via: str
    source_breaker: str | None
    path: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "element": self.element,
            "tie": list(self.tie),
            "via": self.via,
            "source_breaker": self.source_breaker,
            "path": list(self.path),
        }


@dataclass
class Topology:
    node_types: dict[str, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    meter_counts: dict[str, int] = field(default_factory=dict)
    functions: dict[str, str] = field(default_factory=dict)
    """Switching device → its function (breaker, recloser, load_break_switch)."""

    def __post_init__(self) -> None:
        self._out: dict[str, list[Edge]] = {n: [] for n in self.node_types}
        self._in: dict[str, list[Edge]] = {n: [] for n in self.node_types}
        for e in self.edges:
            self._index(e)

    def _index(self, e: Edge) -> None:
        for n in (e.source, e.target):
            if n not in self.node_types:
                raise ValueError(f"topology edge {e.source} -> {e.target}: {n!r} is not a known element")
        self._out[e.source].append(e)
        self._in[e.target].append(e)

    def add_edge(self, edge: Edge) -> None:
        self.edges.append(edge)
        self._index(edge)

    @classmethod
    def from_site(cls, site: SiteConfig) -> Topology:
        types = {a.id: a.type for a in site.agents}
        types.update({g.id: METER_GROUP for g in site.meter_groups})
        edges: list[Edge] = []
        seen: set[tuple[str, str, CanonicalType]] = set()
        for agent in site.agents:
            for rule in agent.connection_rules:
                both = rule.directionality is Directionality.BIDIRECTIONAL
                pairs = [(agent.id, rule.target_id)] + ([(rule.target_id, agent.id)] if both else [])
                for s, t in pairs:
                    if (s, t, rule.canonical_type) in seen:
                        continue
                    seen.add((s, t, rule.canonical_type))
                    edges.append(Edge(s, t, rule.canonical_type, both, rule.normally_open))
        for g in site.meter_groups:
            if (g.connected_transformer, g.id, CanonicalType.SUPPLY) not in seen:
                edges.append(Edge(g.connected_transformer, g.id, CanonicalType.SUPPLY))
        functions = {a.id: str(a.attributes.get("function", "breaker")) for a in site.agents if a.type == BREAKER}
        try:
            from gateway.switching.network import Network, NetworkError

            net: Any = Network.from_site(site)
        except (NetworkError, ValueError, KeyError):
            net = None
        if net is not None:
            edges = _sectioned(net, types, edges)
        return cls(
            node_types=types, edges=edges, meter_counts={g.id: g.count for g in site.meter_groups}, functions=functions
        )

    # ------------------------------------------------------------------ neighbours

    def type_of(self, node: str) -> str:
        return self.node_types[node]

    def children(self, node: str) -> list[str]:
        """Elements fed by `node` (closed supply edges)."""
        return [e.target for e in self._out.get(node, ()) if e.kind is CanonicalType.SUPPLY and not e.normally_open]

    def parents(self, node: str) -> list[str]:
        """Elements that feed `node`: reverse one-way supply edges, plus what it depends on."""
        out = [
            e.source
            for e in self._in.get(node, ())
            if e.kind is CanonicalType.SUPPLY and not e.bidirectional and not e.normally_open
        ]
        out += [e.target for e in self._out.get(node, ()) if e.kind is CanonicalType.DEPENDS_ON and e.target not in out]
        if not out:  # a DER or a meshed element: fall back on two-way supply edges
            out = [
                e.source
                for e in self._in.get(node, ())
                if e.kind is CanonicalType.SUPPLY and e.bidirectional and not e.normally_open
            ]
        return out

    def controllers(self, node: str) -> list[str]:
        return [e.source for e in self._in.get(node, ()) if e.kind is CanonicalType.COMMAND]

    def ties(self) -> list[Edge]:
        return [e for e in self.edges if e.normally_open]

    def neighbours(self, node: str, node_type: str | None = None) -> list[str]:
        seen: list[str] = []
        for e in [*self._out.get(node, []), *self._in.get(node, [])]:
            other = e.target if e.source == node else e.source
            if other != node and other not in seen and (node_type is None or self.node_types[other] == node_type):
                seen.append(other)
        return seen

    # ------------------------------------------------------------------ questions

    def upstream(self, node: str) -> list[str]:
        """Elements between `node` and the source, nearest first (breadth-first)."""
        order: list[str] = []
        seen = {node}
        queue = deque([node])
        while queue:
            current = queue.popleft()
            for parent in self.parents(current) + self.controllers(current):
                if parent not in seen:
                    seen.add(parent)
                    order.append(parent)
                    queue.append(parent)
        return order

    def protecting_breaker(self, node: str) -> str | None:
        """The nearest breaker upstream of `node` (a breaker is not its own protector)."""
        for element in self.upstream(node):
            if self.node_types[element] == BREAKER and self.functions.get(element) not in NOT_PROTECTIVE:
                return element
        return None

    def downstream(self, node: str, open_switches: Iterable[str] = ()) -> list[str]:
        """Everything fed through `node`, stopping at open switches (other than `node`)."""
        blocked = set(open_switches) - {node}
        order: list[str] = []
        seen = {node}
        queue = deque([node])
        while queue:
            current = queue.popleft()
            if current in blocked:
                continue
            for child in self.children(current):
                if child not in seen:
                    seen.add(child)
                    order.append(child)
                    queue.append(child)
        return order

    def meter_groups_downstream(self, node: str, open_switches: Iterable[str] = ()) -> list[str]:
        nodes = [node] + self.downstream(node, open_switches)
        return [n for n in nodes if self.node_types[n] == METER_GROUP]

    def meters_downstream(self, node: str, open_switches: Iterable[str] = ()) -> int:
        return sum(self.meter_counts.get(g, 0) for g in self.meter_groups_downstream(node, open_switches))

    def alternative_supply_paths(self, node: str) -> list[TransferOption]:
        """Normally-open ties that could feed `node` (and what hangs under it) from another breaker:
        device-less ties between lines, and tie switches (whose far side is resolved to its line
        and that line's breaker)."""
        own = self.protecting_breaker(node) if self.node_types[node] != BREAKER else node
        area = {node, *self.downstream(node)}
        options: list[TransferOption] = []
        seen: set[tuple[str, str]] = set()
        for tie in self.ties():
            if tie.target in area and tie.source not in area:
                near, far = tie.target, tie.source
            else:
                continue
            device: str | None = None
            if self.node_types[far] == BREAKER:  # a tie switch: look through it
                device = far
                beyond = [
                    e.target for e in self._out.get(far, ()) if e.kind is CanonicalType.ROUTE and e.target not in area
                ]
                if not beyond:
                    continue
                far = beyond[0]
            if (far, near) in seen:
                continue
            breaker = self.protecting_breaker(far) if self.node_types[far] != BREAKER else far
            if breaker is not None and breaker == own:
                continue
            seen.add((far, near))
            chain = [far] + [u for u in self.upstream(far)]
            path = tuple(reversed(chain)) + ((device,) if device else ()) + (near,)
            options.append(
                TransferOption(
                    element=node, tie=(device or far, near), via=self.line_of(far), source_breaker=breaker, path=path
                )
            )
        return options

    def line_of(self, node: str) -> str:
        """The power line a line section belongs to (the node itself otherwise)."""
        if self.node_types.get(node) == LINE_SECTION:
            return node.rsplit("/", 1)[0]
        return node

    def adjacent_lines(self, line: str) -> list[str]:
        """Lines joined to `line` by a route (directly, or through a tie switch)."""
        mine = {line} | {n for n, t in self.node_types.items() if t == LINE_SECTION and self.line_of(n) == line}
        out: list[str] = []
        for node in sorted(mine):
            for e in [*self._out.get(node, ()), *self._in.get(node, ())]:
                if e.kind is not CanonicalType.ROUTE:
                    continue
                other = e.target if e.source == node else e.source
                ends = [other]
                if self.node_types[other] == BREAKER:
                    ends = [x.target for x in self._out.get(other, ()) if x.kind is CanonicalType.ROUTE]
                for end in ends:
                    candidate = self.line_of(end)
                    if candidate != line and self.node_types.get(candidate) == LINE and candidate not in out:
                        out.append(candidate)
        return out

    def unfed(self, open_devices: Iterable[str]) -> set[str]:
        """Nodes no substation reaches through closed switching devices (supply flows either way
        along supply and depends_on edges, and across closed tie switches; a device-less
        normally-open tie never carries it)."""
        blocked = set(open_devices)
        sources = [n for n, t in self.node_types.items() if t == SUBSTATION]
        reached = set(sources)
        queue = deque(sources)
        while queue:
            node = queue.popleft()
            if node in blocked:
                continue
            for e in [*self._out.get(node, ()), *self._in.get(node, ())]:
                if e.kind is CanonicalType.COMMAND:
                    continue
                if e.normally_open and BREAKER not in (self.node_types[e.source], self.node_types[e.target]):
                    continue
                other = e.target if e.source == node else e.source
                if other not in reached:
                    reached.add(other)
                    queue.append(other)
        return set(self.node_types) - reached

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": dict(self.node_types),
            "edges": [
                {
                    "source": e.source,
                    "target": e.target,
                    "kind": e.kind.value,
                    "bidirectional": e.bidirectional,
                    "normally_open": e.normally_open,
                }
                for e in self.edges
            ],
        }


def _sectioned(net: Any, types: dict[str, str], edges: list[Edge]) -> list[Edge]:
    """The edges with every line that carries switching devices expanded into its sections."""
    touched = {line for line, secs in net.line_sections.items() if len(secs) > 1}
    for dev in net.devices.values():
        if dev.tie:
            for end in (dev.a, dev.b):
                if end in net.sections:
                    touched.add(net.sections[end].line)
    if not touched:
        return edges
    tapped = {e: s for e, s in net.element_section.items() if net.sections[s].line in touched}
    on_line: dict[str, set[str]] = {}  # devices in series or tie on a touched line -> the lines
    for dev in net.devices.values():
        for end in (dev.a, dev.b):
            sec = net.sections.get(end)
            if (
                sec is not None
                and sec.line in touched
                and (dev.tie or (dev.a in net.sections and dev.a not in net.station_nodes))
            ):
                on_line.setdefault(dev.id, set()).add(sec.line)
    kept = []
    for e in edges:
        pair = {e.source, e.target}
        line = next((n for n in pair if n in touched), None)
        other = next(iter(pair - {line}), None) if line else None
        if line and other and (tapped.get(other, "").rsplit("/", 1)[0] == line or line in on_line.get(other, ())):
            continue
        kept.append(e)
    for line in sorted(touched):
        for sid in net.line_sections[line]:
            types[sid] = LINE_SECTION
        kept.append(Edge(line, net.line_sections[line][0], CanonicalType.SUPPLY))
    for element, sid in tapped.items():
        if element in types:
            kept.append(Edge(sid, element, CanonicalType.SUPPLY))
    for dev in net.devices.values():
        if dev.id not in on_line:
            continue
        if dev.tie:
            for end in (dev.a, dev.b):
                if end in net.sections:
                    kept.append(Edge(dev.id, end, CanonicalType.ROUTE, True, dev.normally_open))
                    kept.append(Edge(end, dev.id, CanonicalType.ROUTE, True, dev.normally_open))
        else:
            kept.append(Edge(dev.a, dev.id, CanonicalType.SUPPLY, normally_open=dev.normally_open))
            kept.append(Edge(dev.id, dev.b, CanonicalType.SUPPLY, normally_open=dev.normally_open))
    return kept
