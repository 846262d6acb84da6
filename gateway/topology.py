"""The substation's electrical graph, built from the agents' `connection_rules`.

Edges keep the canonical types: `supply` (power flows source → target), `route` (electrical
connection; `normally_open` marks a tie switch), `command` (control) and `depends_on`
(the source needs the target, e.g. a line depends on its breaker). `bidirectional` edges are
stored both ways. Meter groups hang under their transformer as `supply` edges.

Questions answered: the breaker that protects an element, what (and which meters) lie
downstream of a switch, and which normally-open ties could feed an element from another
breaker (load-transfer options).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import CanonicalType, Directionality, SiteConfig

BREAKER = "circuit_breaker"
METER_GROUP = "meter_group"


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
        return {"element": self.element, "tie": list(self.tie), "via": self.via,
                "source_breaker": self.source_breaker, "path": list(self.path)}


@dataclass
class Topology:
    node_types: dict[str, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    meter_counts: dict[str, int] = field(default_factory=dict)

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
        types = {a.id: a.type.value for a in site.agents}
        types.update({g.id: METER_GROUP for g in site.meter_groups})
        topo = cls(node_types=types, meter_counts={g.id: g.count for g in site.meter_groups})
        seen: set[tuple[str, str, CanonicalType]] = set()
        for agent in site.agents:
            for rule in agent.connection_rules:
                both = rule.directionality is Directionality.BIDIRECTIONAL
                pairs = [(agent.id, rule.target_id)] + ([(rule.target_id, agent.id)] if both else [])
                for s, t in pairs:
                    if (s, t, rule.canonical_type) in seen:
                        continue
                    seen.add((s, t, rule.canonical_type))
                    topo.add_edge(Edge(s, t, rule.canonical_type, both, rule.normally_open))
        for g in site.meter_groups:
            if (g.connected_transformer, g.id, CanonicalType.SUPPLY) not in seen:
                topo.add_edge(Edge(g.connected_transformer, g.id, CanonicalType.SUPPLY))
        return topo

    # ------------------------------------------------------------------ neighbours

    def type_of(self, node: str) -> str:
        return self.node_types[node]

    def children(self, node: str) -> list[str]:
        """Elements fed by `node` (closed supply edges)."""
        return [e.target for e in self._out.get(node, ()) if e.kind is CanonicalType.SUPPLY and not e.normally_open]

    def parents(self, node: str) -> list[str]:
        """Elements that feed `node`: reverse one-way supply edges, plus what it depends on."""
        out = [e.source for e in self._in.get(node, ())
               if e.kind is CanonicalType.SUPPLY and not e.bidirectional and not e.normally_open]
        out += [e.target for e in self._out.get(node, ()) if e.kind is CanonicalType.DEPENDS_ON
                and e.target not in out]
        if not out:  # a DER or a meshed element: fall back on two-way supply edges
            out = [e.source for e in self._in.get(node, ())
                   if e.kind is CanonicalType.SUPPLY and e.bidirectional and not e.normally_open]
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
            if self.node_types[element] == BREAKER:
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
        """Normally-open ties that could feed `node` (and what hangs under it) from another breaker."""
        own = self.protecting_breaker(node) if self.node_types[node] != BREAKER else node
        area = {node, *self.downstream(node)}
        options: list[TransferOption] = []
        seen: set[tuple[str, str]] = set()
        for tie in self.ties():
            if tie.target in area and tie.source not in area:
                near, far = tie.target, tie.source
            else:
                continue
            if (far, near) in seen:
                continue
            breaker = self.protecting_breaker(far) if self.node_types[far] != BREAKER else far
            if breaker is not None and breaker == own:
                continue
            seen.add((far, near))
            chain = [far] + [u for u in self.upstream(far)]
            path = tuple(reversed(chain)) + (near,)
            options.append(TransferOption(element=node, tie=(far, near), via=far, source_breaker=breaker, path=path))
        return options

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": dict(self.node_types),
                "edges": [{"source": e.source, "target": e.target, "kind": e.kind.value,
                           "bidirectional": e.bidirectional, "normally_open": e.normally_open} for e in self.edges]}
