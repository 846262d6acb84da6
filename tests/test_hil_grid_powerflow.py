"""The backward/forward sweep against pandapower's Newton-Raphson on the IEEE 33-bus feeder.

The feeder is built in both solvers from the original Baran & Wu table (tests/data/ieee33bw.csv).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from hil.grid.network import BranchKind, Network
from hil.grid.powerflow import PowerFlowDiverged, solve, solve_impedance

DATA = Path(__file__).parent / "data" / "ieee33bw.csv"
KV = 12.66


def _rows() -> list[dict[str, float]]:
    with DATA.open() as f:
        lines = [line for line in f if not line.startswith("#")]
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(lines)]


def _ours(rows: list[dict[str, float]], scale: float = 1.0) -> tuple[Network, np.ndarray]:
    net = Network(base_mva=10.0)
    for n in range(1, 34):
        net.add_bus(f"B{n}", KV)
    s = np.zeros(33, dtype=np.complex128)
    for r in rows:
        f, t = int(r["from_bus"]) - 1, int(r["to_bus"]) - 1
        net.add_branch(
            f"{f + 1}-{t + 1}", f, t, complex(r["r_ohm"], r["x_ohm"]), closed=bool(r["status"]), kind=BranchKind.LINE
        )
        if r["status"]:
            s[t] = complex(r["load_kw"], r["load_kvar"]) * scale / 1e3 / net.base_mva
    return net, s


def _pandapower(rows: list[dict[str, float]], scale: float = 1.0):  # type: ignore[no-untyped-def]
    pp = pytest.importorskip("pandapower")
    net = pp.create_empty_network(sn_mva=10.0)
    buses = [pp.create_bus(net, vn_kv=KV) for _ in range(33)]
    pp.create_ext_grid(net, buses[0], vm_pu=1.0, va_degree=0.0)
    for r in rows:
        if not r["status"]:
            continue
        f, t = int(r["from_bus"]) - 1, int(r["to_bus"]) - 1
        pp.create_line_from_parameters(
            net,
            buses[f],
            buses[t],
            length_km=1.0,
            r_ohm_per_km=r["r_ohm"],
            x_ohm_per_km=r["x_ohm"],
            c_nf_per_km=0.0,
            max_i_ka=10.0,
        )
        pp.create_load(net, buses[t], p_mw=r["load_kw"] * scale / 1e3, q_mvar=r["load_kvar"] * scale / 1e3)
    pp.runpp(net, algorithm="nr", tolerance_mva=1e-10, calculate_voltage_angles=True, init="flat")
    return net


def test_ieee33_matches_pandapower() -> None:
    rows = _rows()
    net, s = _ours(rows)
    tree = net.radial_tree(0)
    assert tree.loop_branches == [] and len(tree.nodes) == 32
    result = solve(tree, s, np.zeros(33, dtype=np.complex128), tolerance_pu=1e-12)
    ref = _pandapower(rows)
    vm_ref = ref.res_bus.vm_pu.to_numpy()
    va_ref = ref.res_bus.va_degree.to_numpy()
    vm = np.abs(result.voltage_pu)
    va = np.degrees(np.angle(result.voltage_pu))
    assert np.max(np.abs(vm - vm_ref)) < 1e-8
    assert np.max(np.abs(va - va_ref)) < 1e-6
    loss_kw_ref = ref.res_line.pl_mw.sum() * 1e3
    loss_kvar_ref = ref.res_line.ql_mvar.sum() * 1e3
    assert result.losses_pu.real * 1e4 == pytest.approx(loss_kw_ref, abs=1e-6)
    assert result.losses_pu.imag * 1e4 == pytest.approx(loss_kvar_ref, abs=1e-6)
    # The figures everyone quotes for this feeder: 202.7 kW of losses, 0.9131 pu at bus 18.
    assert loss_kw_ref == pytest.approx(202.68, abs=0.01)
    assert vm[17] == pytest.approx(0.9131, abs=5e-5)
    assert result.iterations < 15


@settings(max_examples=8, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.6))
def test_ieee33_matches_pandapower_at_any_loading(scale: float) -> None:
    rows = _rows()
    net, s = _ours(rows, scale)
    result = solve(net.radial_tree(0), s, np.zeros(33, dtype=np.complex128), tolerance_pu=1e-12)
    ref = _pandapower(rows, scale)
    assert np.max(np.abs(np.abs(result.voltage_pu) - ref.res_bus.vm_pu.to_numpy())) < 1e-8
    assert result.losses_pu.real * 1e4 == pytest.approx(ref.res_line.pl_mw.sum() * 1e3, abs=1e-6)


def test_open_branch_deenergises_its_subtree() -> None:
    rows = _rows()
    net, s = _ours(rows)
    net.branches[5].closed = False  # 6-7: buses 7..18 lose supply
    result = solve(net.radial_tree(0), s, np.zeros(33, dtype=np.complex128))
    dead = np.abs(result.voltage_pu) == 0
    assert sorted(np.flatnonzero(dead) + 1) == list(range(7, 19))
    # Closing the 21-8 tie restores everything (7 is fed back through 8): radial, nothing dead.
    net.branches[32].closed = True
    tree = net.radial_tree(0)
    result = solve(tree, s, np.zeros(33, dtype=np.complex128))
    assert np.all(np.abs(result.voltage_pu) > 0.85) and tree.loop_branches == []


def test_closing_a_tie_between_energised_buses_is_reported_as_a_loop() -> None:
    rows = _rows()
    net, _ = _ours(rows)
    net.branches[32].closed = True
    assert len(net.radial_tree(0).loop_branches) == 1


def test_ideal_ratio_and_shunt() -> None:
    """A transformer tap raises the secondary by its ratio; a shunt capacitor injects Q·V²."""
    net = Network(base_mva=1.0)
    src = net.add_bus("src", 11.0)
    mv = net.add_bus("mv", 11.0)
    lv = net.add_bus("lv", 0.415)
    net.add_branch("source", src, mv, 0j, kind=BranchKind.SOURCE)
    net.add_branch("T", mv, lv, 0j, ratio=1.05, kind=BranchKind.TRANSFORMER)
    y = np.zeros(3, dtype=np.complex128)
    y[mv] = 0.3j
    result = solve(net.radial_tree(src), np.zeros(3, dtype=np.complex128), y)
    assert abs(result.voltage_pu[lv]) == pytest.approx(1.05)
    assert result.source_power_pu.imag == pytest.approx(-0.3)
    # with a real transformer impedance the drop is I·Z on the primary base
    net.branches[1].z_ohm = complex(0.0, 0.1 * 11.0**2)  # 10 % on 1 MVA
    s = np.zeros(3, dtype=np.complex128)
    s[lv] = 0.5
    result = solve(net.radial_tree(src), s, np.zeros(3, dtype=np.complex128), tolerance_pu=1e-12)
    v = result.voltage_pu[lv]
    # power balance: source delivers the load plus I²X of the transformer
    j_primary = result.current_pu[lv] * 1.05
    assert result.source_power_pu.real == pytest.approx(0.5, rel=1e-9)
    assert result.losses_pu.imag == pytest.approx(abs(j_primary) ** 2 * 0.1, rel=1e-9)
    assert math.isclose(abs(v), abs(1.05 * (1.0 - 0.1j * j_primary)), rel_tol=1e-9)


@st.composite
def _radial_feeders(draw: st.DrawFn) -> tuple[Network, np.ndarray, np.ndarray]:
    n = draw(st.integers(2, 40))
    net = Network(base_mva=10.0)
    net.add_bus("src", 11.0)
    for k in range(1, n):
        net.add_bus(f"B{k}", 11.0)
        parent = draw(st.integers(0, k - 1))
        r = draw(st.floats(0.001, 0.3))
        x = draw(st.floats(0.001, 0.3))
        ratio = draw(st.sampled_from([1.0, 1.0, 1.0, 0.975, 1.025]))
        kind = BranchKind.TRANSFORMER if ratio != 1.0 else BranchKind.LINE
        net.add_branch(f"{parent}-{k}", parent, k, complex(r, x), ratio=ratio, kind=kind)
    s = np.array([0j] + [complex(draw(st.floats(-0.05, 0.2)), draw(st.floats(-0.05, 0.1))) for _ in range(n - 1)])
    y = np.array([0j] + [complex(0.0, draw(st.sampled_from([0.0, 0.0, 0.02]))) for _ in range(n - 1)])
    return net, s, y


@settings(max_examples=60, deadline=None)
@given(_radial_feeders())
def test_sweep_satisfies_kirchhoff_on_any_radial_feeder(case: tuple[Network, np.ndarray, np.ndarray]) -> None:
    """Whatever the tree: every branch obeys Ohm's law with its ideal ratio, every bus obeys
    Kirchhoff's current law, and the source delivers the loads plus I²R losses."""
    net, s, y = case
    tree = net.radial_tree(0)
    try:
        result = solve(tree, s, y, tolerance_pu=1e-12)
    except PowerFlowDiverged:
        reject()  # load beyond what the drawn feeder can carry: no solution to check
    v, j = result.voltage_pu, result.current_pu
    injected = np.conj(s / np.where(v == 0, 1, v)) + y * v
    children: dict[int, list[int]] = {}
    for br in net.branches:
        children.setdefault(br.from_bus, []).append(br.to_bus)
    for br in net.branches:
        z_pu = br.z_ohm / net.z_base_ohm(br.from_bus)
        k = br.to_bus
        assert v[k] == pytest.approx(br.ratio * (v[br.from_bus] - z_pu * br.ratio * j[k]), abs=1e-9)
        out = sum(net.branches[c - 1].ratio * j[c] for c in children.get(k, []))
        assert j[k] == pytest.approx(injected[k] + out, abs=1e-9)
    series_losses = sum(
        abs(br.ratio * j[br.to_bus]) ** 2 * (br.z_ohm / net.z_base_ohm(br.from_bus)) for br in net.branches
    )
    assert result.losses_pu == pytest.approx(series_losses, abs=1e-9)
    assert result.losses_pu.real >= -1e-12


def test_impossible_load_raises_instead_of_returning_garbage() -> None:
    net = Network(base_mva=10.0)
    net.add_bus("src", 11.0)
    net.add_bus("far", 11.0)
    net.add_branch("line", 0, 1, complex(5.0, 5.0))
    s = np.array([0j, 20.0 + 10.0j])  # 200 MW through 7 ohm at 11 kV
    with pytest.raises(PowerFlowDiverged, match="did not converge"):
        solve(net.radial_tree(0), s, np.zeros(2, dtype=np.complex128))


def test_impedance_solution_reproduces_a_constant_power_one() -> None:
    """Loads turned into the admittances they present at the solved voltage give the same state."""
    rows = _rows()
    net, s = _ours(rows)
    tree = net.radial_tree(0)
    pq = solve(tree, s, np.zeros(33, dtype=np.complex128), tolerance_pu=1e-13)
    v = pq.voltage_pu
    y = np.conj(s) / np.where(v == 0, 1, np.abs(v) ** 2)
    z = solve_impedance(tree, y)
    assert np.max(np.abs(z.voltage_pu - v)) < 1e-10
    assert z.losses_pu == pytest.approx(pq.losses_pu, abs=1e-10)
