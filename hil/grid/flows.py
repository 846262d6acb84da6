"""Reading a solved radial tree: what flows through a branch, and which way, whatever the tree's
orientation; which source and which switching device feed a bus.

The tree is walked from the sources, so a branch may be walked against its from → to
direction (a section fed backwards through a tie). These helpers turn the tree's per-node
quantities back into per-branch ones in the branch's own direction.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from hil.grid.network import Branch, RadialTree


class BranchFlow(NamedTuple):
    currents_pu: npt.NDArray[np.complex128]
    """Phase currents a, b, c through the branch (on the fed bus's side), per unit."""
    power_pu: complex
    """Complex power at the sending end, positive in the branch's from → to direction."""
    direction: int
    """+1 from → to, −1 to → from (fed from its `to` side), 0 when it carries nothing (open,
    dead, or cut out of a loop)."""


_NO_FLOW = np.zeros(3, dtype=np.complex128)


def branch_flow(
    tree: RadialTree,
    branch_index: int,
    branch: Branch,
    v: npt.NDArray[np.complex128],
    i1: npt.NDArray[np.complex128],
    i_abc: npt.NDArray[np.complex128],
) -> BranchFlow:
    for node, sign in ((branch.to_bus, 1), (branch.from_bus, -1)):
        pos = tree.position.get(node)
        if pos is not None and tree.feeder_branch[pos] == branch_index:
            parent_pos = tree.parent_pos[pos]
            parent_bus = tree.nodes[parent_pos] if parent_pos >= 0 else tree.root
            s = complex(v[parent_bus] * np.conj(i1[node] * tree.ratio[pos]))
            return BranchFlow(i_abc[node], sign * s, sign)
    return BranchFlow(_NO_FLOW, 0j, 0)


def top_node(tree: RadialTree, bus: int) -> int | None:
    """The node right under the reference on `bus`'s path (which source feeds it); None if dead."""
    pos = tree.position.get(bus)
    if pos is None:
        return None
    while tree.parent_pos[pos] >= 0:
        pos = int(tree.parent_pos[pos])
    return int(tree.nodes[pos])


def nearest_upstream(tree: RadialTree, bus: int, names: dict[int, str]) -> str | None:
    """The name of the first branch in `names` (branch index → name) met walking from `bus`
    towards its source."""
    pos = tree.position.get(bus, -1)
    while pos >= 0:
        name = names.get(int(tree.feeder_branch[pos]))
        if name is not None:
            return name
        pos = int(tree.parent_pos[pos])
    return None


def walked_forward(tree: RadialTree, path: npt.NDArray[np.int64], branch_index: int, to_bus: int) -> bool | None:
    """Whether `branch_index` is walked from → to among the tree positions `path` (None if absent)."""
    hits = tree.nodes[path][tree.feeder_branch[path] == branch_index]
    return None if hits.size == 0 else bool(hits[0] == to_bus)
