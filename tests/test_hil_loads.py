"""Voltage-dependent loads: ZIP and exponential terms in the sweep, and CVR measured by the power flow."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from gateway import config
from hil.grid.model import GridModel
from hil.grid.network import BranchKind, Network
from hil.grid.powerflow import VoltageDependentLoads, solve
from hil.grid.settings import DEFAULT_LOAD_MODELS, LoadModelSettings, SimulationSettings

ROOT = Path(__file__).resolve().parents[1]


def _feeder(z_ohm: complex) -> tuple[Network, int]:
    net = Network(base_mva=10.0)
    src = net.add_bus("source", 11.0)
    bus = net.add_bus("load", 11.0)
    net.add_branch("line", src, bus, z_ohm, kind=BranchKind.LINE)
    return net, bus


def _one_term(bus: int, p_pu: float, q_pu: float, np_: float, nq: float) -> VoltageDependentLoads:
    return VoltageDependentLoads(
        bus=np.array([bus]), p_pu=np.array([p_pu]), q_pu=np.array([q_pu]), np_=np.array([np_]), nq=np.array([nq])
    )


@pytest.mark.parametrize(("v_source", "np_", "nq"), [(0.97, 0.8, 2.0), (1.04, 0.7, 2.0), (0.95, 0.0, 1.0)])
def test_exponential_load_at_a_stiff_bus(v_source: float, np_: float, nq: float) -> None:
    net, bus = _feeder(0j)  # no drop: the load sees the source voltage
    tree = net.radial_tree(0)
    n = len(net.buses)
    result = solve(
        tree, np.zeros(n, complex), np.zeros(n, complex), complex(v_source), dependent=_one_term(bus, 0.5, 0.2, np_, nq)
    )
    assert result.dependent_s_pu is not None
    # hand calculation: P = P0·V^np, Q = Q0·V^nq
    assert result.dependent_s_pu[0] == pytest.approx(complex(0.5 * v_source**np_, 0.2 * v_source**nq), rel=1e-9)


def test_zip_load_at_a_stiff_bus_and_its_cvr_factor() -> None:
    model = LoadModelSettings(zip_p=(0.3, 0.2, 0.5), zip_q=(0.6, 0.2, 0.2))
    terms = model.components()
    net, bus = _feeder(0j)
    tree = net.radial_tree(0)
    n = len(net.buses)
    dep = VoltageDependentLoads(
        bus=np.full(len(terms), bus),
        p_pu=np.array([0.4 * t[0] for t in terms]),
        q_pu=np.array([0.1 * t[2] for t in terms]),
        np_=np.array([t[1] for t in terms]),
        nq=np.array([t[3] for t in terms]),
    )
    for v in (0.95, 1.0, 1.05):
        drawn = solve(tree, np.zeros(n, complex), np.zeros(n, complex), complex(v), dependent=dep).dependent_s_pu
        assert drawn is not None
        assert drawn.sum().real == pytest.approx(0.4 * (0.3 * v * v + 0.2 * v + 0.5), rel=1e-9)
        assert drawn.sum().imag == pytest.approx(0.1 * (0.6 * v * v + 0.2 * v + 0.2), rel=1e-9)
    # near V0 the CVR factor of a ZIP load is 2Z + I = 0.8
    p = [
        solve(tree, np.zeros(n, complex), np.zeros(n, complex), complex(v), dependent=dep).dependent_s_pu.sum().real
        for v in (0.999, 1.001)
    ]
    assert (p[1] - p[0]) / 0.4 / 0.002 == pytest.approx(0.8, abs=1e-3)


def test_constant_impedance_load_behind_a_line() -> None:
    """np = nq = 2 is an impedance Z_L = |V0|²/conj(S0): I = V0/(Z_line + Z_L), P = |I|²·Re(Z_L)."""
    z_line_ohm = complex(1.2, 2.4)
    net, bus = _feeder(z_line_ohm)
    tree = net.radial_tree(0)
    n = len(net.buses)
    s0 = complex(0.3, 0.1)
    result = solve(
        tree, np.zeros(n, complex), np.zeros(n, complex), 1.0 + 0j, dependent=_one_term(bus, s0.real, s0.imag, 2.0, 2.0)
    )
    z_line = z_line_ohm / net.z_base_ohm(0)
    z_load = 1.0 / np.conj(s0)
    current = 1.0 / (z_line + z_load)
    assert result.dependent_s_pu is not None
    assert result.dependent_s_pu[0].real == pytest.approx(abs(current) ** 2 * z_load.real, rel=1e-7)
    assert result.dependent_s_pu[0].imag == pytest.approx(abs(current) ** 2 * z_load.imag, rel=1e-7)
    assert abs(result.voltage_pu[bus]) == pytest.approx(abs(current * z_load), rel=1e-7)


def test_load_model_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="either np"):
        LoadModelSettings(np=0.8, zip_p=(0.3, 0.2, 0.5), nq=2.0)
    with pytest.raises(ValidationError, match="sum to 1"):
        LoadModelSettings(zip_p=(0.3, 0.3, 0.5), nq=2.0)
    with pytest.raises(ValidationError, match="unknown load class"):
        SimulationSettings(load_models={"hospital": {"np": 1.0, "nq": 2.0}})
    # the defaults: the reference's CVR factor range for demand (0.7-0.8)
    assert {k: m.np for k, m in DEFAULT_LOAD_MODELS.items()} == {
        "residential": 0.8,
        "commercial": 0.7,
        "industrial": 0.7,
        "flat": 0.8,
    }


def _sub_007(**simulation: object) -> GridModel:
    site = config.load(ROOT / "deploy/examples/sub-007.toml")
    site = site.model_copy(update={"simulation": {**site.simulation, "load_noise_pct": 0.0, **simulation}})
    return GridModel.from_site(site, seed=1)


def test_each_load_draws_its_class_model_at_its_own_voltage() -> None:
    model = _sub_007()
    base_kw = model.net.base_mva * 1000.0
    for ld in model._loads:
        vm = abs(model._v[ld.bus])
        exp = model.settings.load_model(ld.load_class)
        nominal = model._result.dependent_s_pu  # type: ignore[union-attr]
        assert nominal is not None
        # the demand at 1 pu times the class's exponent law, at the bus voltage the sweep found
        terms = model._term_load == model._loads.index(ld)
        drawn_kw = float(nominal[terms].real.sum() * base_kw)
        assert ld.kw == pytest.approx(drawn_kw, rel=1e-9)
        assert exp.np is not None and ld.kw > 0
        assert vm > 0.9


def test_a_cvr_tap_change_reduces_demand_measurably() -> None:
    model = _sub_007()
    model.advance(1.0)
    before_kw = model.agent_values("SUB-007")["total_load_kw"]
    v_before = model.agent_values("XFMR-701")["secondary_voltage_v"]
    loads_before = {ld.id: (ld.kw, abs(model._v[ld.bus])) for ld in model._loads}
    model.apply_command("XFMR-701.tap_setpoint", 3, 2.0)  # the use case: tap 5 → 3
    model.advance(2.0 + 2 * model.settings.tap_change_time_s + 0.1)
    after_kw = model.agent_values("SUB-007")["total_load_kw"]
    v_after = model.agent_values("XFMR-701")["secondary_voltage_v"]
    assert model.agent_values("XFMR-701")["tap_position"] == 3
    dv = 1 - v_after / v_before
    assert 0.02 < dv < 0.03  # two 1.25 % steps
    reduction = 1 - after_kw / before_kw
    assert 0.012 < reduction < 0.025  # CVR factor 0.7-0.8, plus the losses that go with it
    assert before_kw - after_kw > 350  # the use case's order of magnitude (0.57 MW on 28.5 MW)
    # every load follows its class law between the two voltages (the noise is off, time barely moved)
    for ld in model._loads:
        kw0, v0 = loads_before[ld.id]
        n = model.settings.load_model(ld.load_class).np
        assert n is not None
        assert ld.kw == pytest.approx(kw0 * (abs(model._v[ld.bus]) / v0) ** n, rel=2e-3)


def test_constant_power_loads_show_no_cvr() -> None:
    flat = {k: {"np": 0.0, "nq": 0.0} for k in ("residential", "commercial", "industrial", "flat")}
    model = _sub_007(load_models=flat)
    model.advance(1.0)
    loads_before = sum(ld.kw for ld in model._loads)
    model.apply_command("XFMR-701.tap_setpoint", 3, 2.0)
    model.advance(2.0 + 2 * model.settings.tap_change_time_s + 0.1)
    assert sum(ld.kw for ld in model._loads) == pytest.approx(loads_before, rel=1e-4)
    assert math.isfinite(model.agent_values("SUB-007")["total_load_kw"])
