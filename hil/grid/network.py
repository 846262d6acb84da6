"""Electrical network: buses, series branches and switches, in per unit on one system base.

Per-unit convention: one system base `base_mva` for the whole network and a voltage base per
bus (its nominal line-to-line kV). Series impedances are given in ohms, referred to the
branch's `from` side, and converted with that side's base. A branch may carry an ideal
off-nominal ratio `ratio` on its `to` side (transformer taps): V_to = ratio · (V_from − Z·I_from).

Topology is plain data: which branches exist and whether they are closed. `closed_loops`
finds the closed switches that close a loop (two sources in parallel, or a ring), choosing in
each loop the switch closed last; `radial_tree` walks the closed branches from the source,
leaving those out, and returns the energised tree the sweep works on. Meshed operation is not
modelled: the loop-closing switch carries no current here.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


class BranchKind(enum.Enum):
    SOURCE = "source"
    """Thevenin impedance of the upstream grid, from the ideal source bus to the station bus."""
    LINE = "line"
    SWITCH = "switch"
    """Zero-impedance switching device (breaker, tie switch)."""
    TRANSFORMER = "transformer"
    IDEAL = "ideal"
    """Zero-impedance ideal ratio from the reference source to another source's EMF (a
    neighbouring substation's feeder behind an external tie), so one tree holds both."""


@dataclass(slots=True)
class Bus:
    name: str
    base_kv: float


@dataclass(slots=True)
class Branch:
    name: str
    from_bus: int
    to_bus: int
    z_ohm: complex
    ratio: float = 1.0
    closed: bool = True
    kind: BranchKind = BranchKind.LINE
    z0_ohm: complex = 0j
    """Zero-sequence series impedance (faults only); a transformer's restarts the zero-sequence path."""


@dataclass(slots=True)
class Network:
    """Buses and branches; bus 0 is the ideal source once `add_bus` has been called first."""

    base_mva: float = 10.0
    buses: list[Bus] = field(default_factory=list)
    branches: list[Branch] = field(default_factory=list)
    _bus_index: dict[str, int] = field(default_factory=dict)

    def add_bus(self, name: str, base_kv: float) -> int:
        if name in self._bus_index:
            raise ValueError(f"bus {name!r} already exists")
        if base_kv <= 0:
            raise ValueError(f"bus {name!r}: base_kv must be positive, found {base_kv}")
        self.buses.append(Bus(name, base_kv))
        self._bus_index[name] = len(self.buses) - 1
        return len(self.buses) - 1

    def bus(self, name: str) -> int:
        try:
            return self._bus_index[name]
        except KeyError:
            raise KeyError(f"no bus named {name!r}") from None

    def add_branch(
        self,
        name: str,
        from_bus: int,
        to_bus: int,
        z_ohm: complex,
        *,
        ratio: float = 1.0,
        closed: bool = True,
        kind: BranchKind = BranchKind.LINE,
        z0_ohm: complex = 0j,
    ) -> int:
        if ratio <= 0:
            raise ValueError(f"branch {name!r}: ratio must be positive, found {ratio}")
        self.branches.append(Branch(name, from_bus, to_bus, complex(z_ohm), ratio, closed, kind, complex(z0_ohm)))
        return len(self.branches) - 1

    def z_base_ohm(self, bus: int) -> float:
        return self.buses[bus].base_kv ** 2 / self.base_mva

    def i_base_a(self, bus: int) -> float:
        """Line current base at a bus: S_base / (√3 · V_base)."""
        return self.base_mva * 1e3 / (np.sqrt(3.0) * self.buses[bus].base_kv)

    def radial_tree(self, root: int = 0, skip: frozenset[int] | set[int] = frozenset()) -> RadialTree:
        return RadialTree.build(self, root, skip)


@dataclass(frozen=True, slots=True)
class Loop:
    """A closed loop: the switch that closes it and every branch around it (that switch first)."""

    closing_branch: int
    branches: tuple[int, ...]


def closed_loops(net: Network, closed_order: dict[int, int] | None = None) -> list[Loop]:
    """Loops of closed branches, each cut at the switch closed last (`closed_order`: branch →
    sequence number of its last closing; absent counts as closed from the start).

    Non-switch branches (lines, transformers, sources) are taken first, so a loop is always cut
    at a switch; among switches the earlier-closed are kept, so closing a tie between two live
    feeders leaves both as they were and the tie carries nothing.
    """
    order = closed_order or {}
    parent = list(range(len(net.buses)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def key(b: int) -> tuple[int, int, int]:
        switch = net.branches[b].kind is BranchKind.SWITCH
        return (1 if switch else 0, order.get(b, 0) if switch else 0, b)

    kept: list[int] = []
    cut: list[int] = []
    for b in sorted((b for b, br in enumerate(net.branches) if br.closed), key=key):
        br = net.branches[b]
        ra, rb = find(br.from_bus), find(br.to_bus)
        if ra == rb:
            cut.append(b)
        else:
            parent[ra] = rb
            kept.append(b)
    if not cut:
        return []
    adjacency: list[list[tuple[int, int]]] = [[] for _ in net.buses]
    for b in kept:
        br = net.branches[b]
        adjacency[br.from_bus].append((b, br.to_bus))
        adjacency[br.to_bus].append((b, br.from_bus))
    loops = []
    for b in cut:
        br = net.branches[b]
        via: dict[int, tuple[int, int]] = {br.from_bus: (-1, -1)}
        queue = deque([br.from_bus])
        while queue and br.to_bus not in via:
            bus = queue.popleft()
            for edge, other in adjacency[bus]:
                if other not in via:
                    via[other] = (edge, bus)
                    queue.append(other)
        path: list[int] = []
        bus = br.to_bus
        while bus != br.from_bus:
            edge, bus = via[bus]
            path.append(edge)
        loops.append(Loop(b, (b, *reversed(path))))
    return loops


@dataclass(slots=True)
class RadialTree:
    """The energised radial tree, in breadth-first order from the source, ready for the sweep.

    `nodes` are the energised buses other than the root, parents before children;
    `feeder_branch[k]` is the branch feeding `nodes[k]`. `path` is the matrix that sums
    injections into branch currents (J = path @ I) and spreads branch drops back into bus
    voltages (V = A·V0 − pathᵀ @ drop), with ideal ratios folded in.
    """

    root: int
    n_bus: int
    nodes: npt.NDArray[np.int64]
    feeder_branch: npt.NDArray[np.int64]
    parent_pos: npt.NDArray[np.int64]
    """Position in `nodes` of each node's parent, -1 for children of the root."""
    z_pu: npt.NDArray[np.complex128]
    ratio: npt.NDArray[np.float64]
    path: npt.NDArray[np.float64]
    gain: npt.NDArray[np.float64]
    """Product of ratios from the root to each node (A)."""
    energised: npt.NDArray[np.bool_]
    loop_branches: list[int]
    position: dict[int, int]
    # `path` in sparse form, row by row (subtrees) and column by column (ancestors): the sweeps
    # are O(nodes × depth) gathers and segment sums, with no BLAS call whose threads would stall
    # a step on a busy controller.
    _sub_cols: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _sub_vals: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    _sub_starts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _anc_cols: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _anc_vals: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    _anc_starts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def build(cls, net: Network, root: int = 0, skip: frozenset[int] | set[int] = frozenset()) -> RadialTree:
        """The tree of closed branches reachable from `root`, leaving out the `skip` branches."""
        n_bus = len(net.buses)
        adjacency: list[list[tuple[int, int]]] = [[] for _ in range(n_bus)]
        for b, br in enumerate(net.branches):
            if br.closed and b not in skip:
                adjacency[br.from_bus].append((b, br.to_bus))
                adjacency[br.to_bus].append((b, br.from_bus))
        seen = np.zeros(n_bus, dtype=bool)
        seen[root] = True
        used: set[int] = set()
        loops: list[int] = []
        order: list[int] = []
        feeder: list[int] = []
        parent: list[int] = []
        queue = deque([root])
        while queue:
            bus = queue.popleft()
            for b, other in adjacency[bus]:
                if b in used:
                    continue
                used.add(b)
                if seen[other]:
                    loops.append(b)
                    continue
                seen[other] = True
                order.append(other)
                feeder.append(b)
                parent.append(bus)
                queue.append(other)
        m = len(order)
        position = {bus: k for k, bus in enumerate(order)}
        parent_pos = np.array([position.get(p, -1) for p in parent], dtype=np.int64)
        z_pu = np.empty(m, dtype=np.complex128)
        ratio = np.empty(m, dtype=np.float64)
        for k, (bus, b) in enumerate(zip(order, feeder, strict=True)):
            br = net.branches[b]
            if br.to_bus == bus:
                z_pu[k] = br.z_ohm / net.z_base_ohm(br.from_bus)
                ratio[k] = br.ratio
            else:  # walked against its direction: the ideal ratio inverts, Z is kept on the primary base
                z_pu[k] = br.z_ohm / net.z_base_ohm(br.from_bus)
                ratio[k] = 1.0 / br.ratio
        path = np.zeros((m, m), dtype=np.float64)
        gain = np.ones(m, dtype=np.float64)
        for j in range(m):
            path[j, j] = 1.0
            factor = ratio[j]
            k = parent_pos[j]
            while k >= 0:
                path[k, j] = factor
                factor *= ratio[k]
                k = parent_pos[k]
            gain[j] = factor
        sub_rows, sub_cols = np.nonzero(path)
        anc_rows, anc_cols = np.nonzero(path.T)
        return cls(
            root=root,
            n_bus=n_bus,
            nodes=np.array(order, dtype=np.int64),
            feeder_branch=np.array(feeder, dtype=np.int64),
            parent_pos=parent_pos,
            z_pu=z_pu,
            ratio=ratio,
            path=path,
            gain=gain,
            energised=seen,
            loop_branches=loops,
            position=position,
            _sub_cols=sub_cols,
            _sub_vals=path[sub_rows, sub_cols],
            _sub_starts=np.searchsorted(sub_rows, np.arange(m)),
            _anc_cols=anc_cols,
            _anc_vals=path.T[anc_rows, anc_cols],
            _anc_starts=np.searchsorted(anc_rows, np.arange(m)),
        )

    def sum_subtrees(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """`path @ x`: per node, the sum over its subtree (ratios folded in)."""
        if x.size == 0:
            return x.copy()
        return np.add.reduceat(self._sub_vals * x[self._sub_cols], self._sub_starts)

    def sum_ancestors(self, x: npt.NDArray[Any], *, weighted: bool = True) -> npt.NDArray[Any]:
        """`pathᵀ @ x`: per node, the sum over itself and its ancestors (ratios folded in)."""
        if x.size == 0:
            return x.copy()
        terms = x[self._anc_cols]
        return np.add.reduceat(self._anc_vals * terms if weighted else terms, self._anc_starts)

    def subtree(self, pos: int) -> npt.NDArray[np.int64]:
        """Positions (in `nodes`) of a node and everything it feeds."""
        return np.flatnonzero(self.path[pos] != 0.0)

    def ancestors(self, pos: int) -> npt.NDArray[np.int64]:
        """Positions of a node and every node between it and the root."""
        return np.flatnonzero(self.path[:, pos] != 0.0)
