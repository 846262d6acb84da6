"""Backward/forward sweep power flow for radial feeders (grid reference sheet §8.1).

Complex per unit on the network's system base. Loads are constant power (S, drawn), a
constant shunt admittance (Y, capacitor banks: I = Y·V), and voltage-dependent terms
(`VoltageDependentLoads`: P = P0·|V|^np, Q = Q0·|V|^nq each, which covers exponential loads and
the three parts of a ZIP load), their currents re-evaluated at every iteration (§8.1: "add
shunt/ZIP terms here"). Each sweep is one gather and one
segment sum over the tree's path structure (`RadialTree.sum_subtrees` / `sum_ancestors`),
O(buses × depth), so a solve of a few dozen buses costs tens of microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hil.grid.network import RadialTree


@dataclass(frozen=True, slots=True)
class VoltageDependentLoads:
    """Load terms S = P0·|V|^np + j·Q0·|V|^nq, each at a bus (per unit, |V| in pu of the bus's base)."""

    bus: npt.NDArray[np.int64]
    p_pu: npt.NDArray[np.float64]
    q_pu: npt.NDArray[np.float64]
    np_: npt.NDArray[np.float64]
    nq: npt.NDArray[np.float64]

    def at_nominal_pu(self, n_bus: int) -> npt.NDArray[np.complex128]:
        out = np.zeros(n_bus, dtype=np.complex128)
        np.add.at(out, self.bus, self.p_pu + 1j * self.q_pu)
        return out


class PowerFlowDiverged(RuntimeError):
    """The sweep did not settle within its iteration budget (load far beyond the feeder's limit)."""


@dataclass(frozen=True, slots=True)
class PowerFlowResult:
    voltage_pu: npt.NDArray[np.complex128]
    """Per bus (all buses of the network); 0 where de-energised; the root holds the source voltage."""
    current_pu: npt.NDArray[np.complex128]
    """Per bus: current in the branch feeding it, on the bus's side of that branch; 0 elsewhere."""
    source_power_pu: complex
    losses_pu: complex
    iterations: int
    dependent_s_pu: npt.NDArray[np.complex128] | None = None
    """Power drawn by each voltage-dependent term at the solution (0 where its bus is dead)."""


def solve(
    tree: RadialTree,
    s_load_pu: npt.NDArray[np.complex128],
    y_shunt_pu: npt.NDArray[np.complex128],
    v_source_pu: complex = 1.0 + 0.0j,
    *,
    tolerance_pu: float = 1e-10,
    max_iterations: int = 100,
    v_start_pu: npt.NDArray[np.complex128] | None = None,
    dependent: VoltageDependentLoads | None = None,
) -> PowerFlowResult:
    """Solve the energised tree. `s_load_pu`/`y_shunt_pu` are indexed by bus (all buses)."""
    nodes = tree.nodes
    n_bus = tree.n_bus
    v_all = np.zeros(n_bus, dtype=np.complex128)
    j_all = np.zeros(n_bus, dtype=np.complex128)
    v_all[tree.root] = v_source_pu
    n_dep = 0 if dependent is None else len(dependent.bus)
    dep_s = np.zeros(n_dep, dtype=np.complex128)
    if nodes.size == 0:
        return PowerFlowResult(v_all, j_all, 0j, 0j, 0, dep_s if dependent is not None else None)
    dep_pos = np.zeros(0, dtype=np.int64)
    dep_live = np.zeros(n_dep, dtype=bool)
    if dependent is not None and n_dep:
        pos_of = np.full(n_bus, -1, dtype=np.int64)
        pos_of[nodes] = np.arange(nodes.size)
        where = pos_of[dependent.bus]
        dep_live = where >= 0
        dep_pos = where[dep_live]

    def dependent_current(v: npt.NDArray[np.complex128]) -> npt.NDArray[np.complex128]:
        out = np.zeros(nodes.size, dtype=np.complex128)
        if dep_pos.size:
            assert dependent is not None
            vk = v[dep_pos]
            s_k = (
                dependent.p_pu[dep_live] * np.abs(vk) ** dependent.np_[dep_live]
                + 1j * dependent.q_pu[dep_live] * np.abs(vk) ** dependent.nq[dep_live]
            )
            np.add.at(out, dep_pos, np.conj(s_k / vk))
        return out

    s = s_load_pu[nodes]
    y = y_shunt_pu[nodes]
    drop_gain = tree.ratio**2 * tree.z_pu
    v_open: np.ndarray = tree.gain * v_source_pu
    if v_start_pu is not None:
        v: np.ndarray = v_start_pu[nodes].copy()
        v[v == 0] = v_open[v == 0]
    else:
        v = v_open.copy()
    iterations = 0
    while True:
        iterations += 1
        i_load = np.conj(s / v) + y * v + dependent_current(v)
        j = tree.sum_subtrees(i_load)
        v_new = v_open - tree.sum_ancestors(drop_gain * j)
        change = np.max(np.abs(v_new - v))
        v = v_new
        if change < tolerance_pu:
            break
        if iterations >= max_iterations or not np.isfinite(change):
            raise PowerFlowDiverged(
                f"backward/forward sweep did not converge in {max_iterations} iterations (last change {change:.3g} pu)"
            )
    i_load = np.conj(s / v) + y * v + dependent_current(v)
    j = tree.sum_subtrees(i_load)
    v_all[nodes] = v
    j_all[nodes] = j
    top = tree.parent_pos < 0
    source_power = complex(v_source_pu * np.conj(np.sum(tree.ratio[top] * j[top])))
    consumed = complex(np.sum(v * np.conj(i_load)))
    if dependent is not None and dep_pos.size:
        vm = np.abs(v[dep_pos])
        dep_s[dep_live] = (
            dependent.p_pu[dep_live] * vm ** dependent.np_[dep_live]
            + 1j * dependent.q_pu[dep_live] * vm ** dependent.nq[dep_live]
        )
    return PowerFlowResult(
        v_all, j_all, source_power, source_power - consumed, iterations, dep_s if dependent is not None else None
    )


def solve_impedance(
    tree: RadialTree, y_pu: npt.NDArray[np.complex128], v_source_pu: complex = 1.0 + 0.0j
) -> PowerFlowResult:
    """All loads as constant admittances: a linear network, solved directly.

    The fallback past voltage collapse, where no constant-power solution exists: the sweep's
    fixed point is gone, but the loads' impedance at nominal voltage still gives the voltages
    a collapsing feeder really shows. (I + Pᵀ·D·P·Y)·V = A·V0, with D the branch drops.
    """
    nodes = tree.nodes
    v_all = np.zeros(tree.n_bus, dtype=np.complex128)
    j_all = np.zeros(tree.n_bus, dtype=np.complex128)
    v_all[tree.root] = v_source_pu
    if nodes.size == 0:
        return PowerFlowResult(v_all, j_all, 0j, 0j, 0)
    y = y_pu[nodes]
    path = tree.path.astype(np.complex128)
    drop = (tree.ratio**2 * tree.z_pu)[:, None] * path
    system = np.eye(nodes.size, dtype=np.complex128) + path.T @ (drop * y[None, :])
    v = np.linalg.solve(system, tree.gain * v_source_pu)
    i_load = y * v
    j = tree.sum_subtrees(i_load)
    v_all[nodes] = v
    j_all[nodes] = j
    top = tree.parent_pos < 0
    source_power = complex(v_source_pu * np.conj(np.sum(tree.ratio[top] * j[top])))
    consumed = complex(np.sum(v * np.conj(i_load)))
    return PowerFlowResult(v_all, j_all, source_power, source_power - consumed, 1)
