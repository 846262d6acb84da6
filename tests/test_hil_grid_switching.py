"""Feeder sections, switching devices and ties in the simulator's model (example site SUB-003).

Power flows with a section fed backwards through a tie are checked against pandapower's
Newton-Raphson, and fault currents on a back-fed section against its IEC 60909 calculation;
indicators, loops, failed devices and local control against what a real feeder does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import SiteConfig, load
from hil.grid.model import GridModel
from hil.grid.network import BranchKind
from hil.grid.switching import CommandRefused

SITE_PATH = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml"
SERIES = ("SW-044-1", "SW-044-2", "SW-045-1", "SW-045-2", "SW-046-1", "SW-046-2")
TIES = ("TIE-044-045", "TIE-045-046", "TIE-046-061")
FEEDERS = ("CB-044", "CB-045", "CB-046")
DEVICES = FEEDERS + SERIES + TIES


@pytest.fixture(scope="module")
def site() -> SiteConfig:
    return load(SITE_PATH)


def _model(site: SiteConfig, **simulation: Any) -> GridModel:
    merged = {**site.simulation, "load_noise_pct": 0.0, **simulation}
    return GridModel.from_site(site.model_copy(update={"simulation": merged}))


def _feeder_currents(model: GridModel) -> dict[str, float]:
    return {cb: model.agent_values(cb)["ia"] for cb in FEEDERS}


# --------------------------------------------------------------------------- layout


def test_each_feeder_has_three_sections_with_customers(site: SiteConfig) -> None:
    model = _model(site)
    sections = model.section_states()
    assert sorted(sections) == [f"LINE-04{n}/{k}" for n in (4, 5, 6) for k in (1, 2, 3)]
    assert sections["LINE-045/1"]["elements"] == ["XFMR-102"]
    assert sections["LINE-045/2"]["elements"] == ["XFMR-103", "TIE-044-045", "CAP-301"]
    assert sections["LINE-045/3"]["elements"] == ["XFMR-101", "TIE-045-046"]
    assert sections["LINE-046/3"]["elements"] == ["XFMR-163", "TIE-045-046", "TIE-046-061"]
    assert (sections["LINE-045/2"]["upstream_device"], sections["LINE-045/2"]["downstream_device"]) == (
        "SW-045-1",
        "SW-045-2",
    )
    groups = {g.connected_transformer for g in site.meter_groups}
    for sid, sec in sections.items():
        assert sec["energised"] and sec["source"] == "SUB-003", sid
        assert groups & set(sec["elements"]), f"{sid} has no customers"
        assert sec["fed_through"] == (sec["upstream_device"] or "CB-" + sid[5:8])
    states = model.device_states()
    assert all(states[d]["closed"] for d in FEEDERS + SERIES)
    assert not any(states[d]["closed"] for d in TIES)
    assert states["TIE-046-061"]["role"] == "external_tie" and states["SW-045-1"]["role"] == "series"
    assert states["SW-045-1"]["position_m"] == 1800.0 and states["SW-045-1"]["function"] == "load_break_switch"
    # an open tie sees both sides live, the external one its neighbour's feeder
    assert all(states[t]["side_energised"] == [True, True] for t in TIES)
    assert not model.parallel and model.parallel_loops == []


def test_sites_without_switching_devices_build_as_before(site: SiteConfig) -> None:
    """An old-style feeder (no positions, no devices) gets the same buses and branches it always had."""
    agents = [a for a in site.agents if a.id in ("SUB-003", "CB-045", "LINE-045", "XFMR-101", "XFMR-102", "CAP-301")]
    plain = []
    for agent in agents:
        rules = [
            r.model_copy(update={"position_m": None})
            for r in agent.connection_rules
            if r.target_id in {a.id for a in agents}
        ]
        plain.append(agent.model_copy(update={"connection_rules": rules}))
    old = site.model_copy(
        update={
            "agents": plain,
            "meter_groups": [],
            "simulation": {"positions_m": {"XFMR-102": 1500.0, "CAP-301": 3000.0, "XFMR-101": 4200.0}},
        }
    )
    model = GridModel.from_site(old)
    names = [b.name for b in model.net.branches]
    assert names == [
        "source",
        "CB-045",
        "LINE-045:0-1500",
        "LINE-045:1500-3000",
        "LINE-045:3000-4200",
        "LINE-045:4200-5000",
        "XFMR-101",
        "XFMR-102",
    ]
    assert model.section_states()["LINE-045/1"]["elements"] == ["XFMR-102", "CAP-301", "XFMR-101"]
    assert model.parallel_loops == []


# --------------------------------------------------------------------------- transfers through a tie


def _transfer(model: GridModel, via: str) -> None:
    """LINE-045 beyond SW-045-1 fed from a neighbour: open SW-045-1, close the tie."""
    model.operate_breaker("SW-045-1", False, 1.0)
    model.operate_breaker(via, True, 1.0)


@pytest.mark.parametrize("via", ["TIE-044-045", "TIE-045-046"])
def test_a_transferred_section_is_fed_backwards(site: SiteConfig, via: str) -> None:
    model = _model(site)
    before = _feeder_currents(model)
    _transfer(model, via)
    sections = model.section_states()
    donor = "CB-044" if via == "TIE-044-045" else "CB-046"
    assert sections["LINE-045/1"]["fed_through"] == "CB-045"
    assert sections["LINE-045/3"]["source"] == "SUB-003" and sections["LINE-045/2"]["energised"]
    after = _feeder_currents(model)
    assert after["CB-045"] < 0.5 * before["CB-045"] and after[donor] > before[donor] + 30.0
    states = model.device_states()
    tie = states[via]
    assert tie["closed"] and tie["current_a"] > 30.0
    # power through each device in its own from → to direction: a section fed from its far end
    # makes an in-series device's power negative
    if via == "TIE-045-046":  # side 1 is LINE-045: the power flows LINE-046 → LINE-045
        assert tie["direction"] == "reverse" and tie["active_power_kw"] < -500.0
        assert states["SW-045-2"]["direction"] == "reverse" and states["SW-045-2"]["active_power_kw"] < 0
        assert sections["LINE-045/2"]["fed_through"] == "SW-045-2"
    else:  # side 1 is LINE-044: LINE-044 → LINE-045
        assert tie["direction"] == "forward" and tie["active_power_kw"] > 500.0
        assert states["SW-045-2"]["direction"] == "forward"
        assert sections["LINE-045/3"]["fed_through"] == "SW-045-2"
    assert states["SW-045-1"]["closed"] is False and states["SW-045-1"]["current_a"] == 0.0
    assert model.point_values()["XFMR-101.secondary_voltage_v"] > 380.0


@pytest.mark.parametrize(
    ("via", "donor", "ampacity_a"), [("TIE-044-045", "CB-044", 400.0), ("TIE-045-046", "CB-046", 400.0)]
)
def test_capacity_matters_for_a_transfer(site: SiteConfig, via: str, donor: str, ampacity_a: float) -> None:
    """The example's loads: at noon a neighbour carries LINE-045 beyond SW-045-1 within its
    ampacity and with every section at 0.95 pu or more; with every load at its daily peak,
    after sunset, it cannot."""
    noon = _model(site)
    _transfer(noon, via)
    assert noon.agent_values(donor)["ia"] < 0.9 * ampacity_a and _lowest_line_voltage_pu(noon) >= 0.95
    peaks = {k: {**v, "profile": "flat"} for k, v in site.simulation["loads"].items()}
    evening = _model(site, start_hour=20.0, loads=peaks)
    assert evening.agent_values(donor)["ia"] < 0.8 * ampacity_a  # on its own it is fine
    assert _lowest_line_voltage_pu(evening) >= 0.95
    _transfer(evening, via)
    # over its ampacity (a little less than at constant power: the sagging loads draw less)
    assert evening.agent_values(donor)["ia"] > ampacity_a and _lowest_line_voltage_pu(evening) < 0.95


def _lowest_line_voltage_pu(model: GridModel) -> float:
    """The lowest voltage along any energised line, per unit of its nominal voltage."""
    return min(
        abs(model._v[seg[3]]) for line in model.lines.values() for seg in line.segments if model._energised[seg[3]]
    )


def _pandapower_net(model: GridModel) -> tuple[Any, list[int]]:
    """The model's network as pandapower elements, sources as external grids."""
    pp = pytest.importorskip("pandapower")
    net = model.net
    ppn = pp.create_empty_network(sn_mva=net.base_mva)
    buses = [pp.create_bus(ppn, vn_kv=b.base_kv) for b in net.buses]
    pp.create_ext_grid(ppn, buses[model.source_bus], vm_pu=model.settings.source_voltage_pu)
    for br in net.branches:
        f, t = buses[br.from_bus], buses[br.to_bus]
        if br.kind is BranchKind.IDEAL:  # another source's EMF: an external grid of its own
            if br.closed:
                pp.create_ext_grid(ppn, t, vm_pu=model.settings.source_voltage_pu * br.ratio)
        elif br.kind is BranchKind.SWITCH:
            pp.create_switch(ppn, f, t, et="b", closed=br.closed)
        elif br.kind is BranchKind.TRANSFORMER:
            xfmr = model.transformers[br.name]
            a = xfmr.attrs
            vk = a.impedance_percent
            vkr = vk / math.sqrt(1 + model.settings.transformer_x_r**2)
            pp.create_transformer_from_parameters(
                ppn,
                f,
                t,
                sn_mva=a.rated_capacity / 1000,
                vn_hv_kv=a.primary_voltage,
                vn_lv_kv=a.secondary_voltage / 1000,
                vkr_percent=vkr,
                vk_percent=vk,
                pfe_kw=0.0,
                i0_percent=0.0,
                tap_side="lv",
                tap_neutral=0,
                tap_pos=xfmr.tap_position,
                tap_changer_type="Ratio",
                tap_step_percent=a.tap_step_percent,
                tap_min=a.tap_min,
                tap_max=a.tap_max,
            )
        else:
            pp.create_line_from_parameters(
                ppn,
                f,
                t,
                length_km=1.0,
                r_ohm_per_km=br.z_ohm.real,
                x_ohm_per_km=br.z_ohm.imag,
                c_nf_per_km=0.0,
                max_i_ka=100.0,
            )
    for bus, (p_kw, q_kvar) in enumerate(zip(model._bus_load_kw, model._bus_load_kvar, strict=True)):
        if p_kw or q_kvar:
            pp.create_load(ppn, buses[bus], p_mw=p_kw / 1000, q_mvar=q_kvar / 1000)
    for cap in model.capacitors.values():
        q_mvar = cap.attrs.rated_capacity * cap.steps_active / cap.attrs.num_steps
        pp.create_shunt(ppn, buses[cap.bus], q_mvar=-q_mvar, p_mw=0.0, vn_kv=cap.attrs.voltage_level)
    return ppn, buses


@pytest.mark.parametrize(
    ("opened", "closed"),
    [
        (("SW-045-1",), ("TIE-044-045",)),
        (("SW-045-1",), ("TIE-045-046",)),
        (("SW-045-1", "SW-045-2"), ("TIE-044-045", "TIE-045-046")),
        (("CB-046", "SW-046-1"), ("TIE-046-061",)),
        (("SW-046-2", "SW-045-2"), ("TIE-046-061", "TIE-045-046")),
        (("CB-044", "SW-044-1"), ("TIE-044-045",)),
    ],
)
def test_transfer_power_flow_matches_pandapower(
    site: SiteConfig, opened: tuple[str, ...], closed: tuple[str, ...]
) -> None:
    """Sections moved between feeders (and onto the neighbour's feeder behind the external tie)
    solved again by pandapower's Newton-Raphson: same voltages, angles and losses."""
    pp = pytest.importorskip("pandapower")
    model = _model(site, start_hour=13.0)
    model.apply_command("CAP-301.steps_cmd", 2, 1.0)
    for device in opened:
        model.operate_breaker(device, False, 1.0)
    for device in closed:
        model.operate_breaker(device, True, 1.0)
    assert not model.parallel
    result = model._result
    assert result is not None
    ppn, _ = _pandapower_net(model)
    pp.runpp(ppn, algorithm="nr", tolerance_mva=1e-10, calculate_voltage_angles=True, init="flat", numba=False)
    live = np.flatnonzero(model._energised)
    vm_ref = ppn.res_bus.vm_pu.to_numpy()
    va_ref = ppn.res_bus.va_degree.to_numpy()
    assert np.max(np.abs(np.abs(result.voltage_pu[live]) - vm_ref[live])) < 1e-7
    assert np.max(np.abs(np.degrees(np.angle(result.voltage_pu[live])) - va_ref[live])) < 1e-5
    losses_ref_kw = (ppn.res_line.pl_mw.sum() + ppn.res_trafo.pl_mw.sum()) * 1000
    assert result.losses_pu.real * model.net.base_mva * 1000 == pytest.approx(losses_ref_kw, abs=1e-3)
    sources_ref_kw = ppn.res_ext_grid.p_mw.sum() * 1000
    assert result.source_power_pu.real * model.net.base_mva * 1000 == pytest.approx(sources_ref_kw, abs=1e-3)


def test_the_external_tie_feeds_from_the_neighbouring_substation(site: SiteConfig) -> None:
    model = _model(site)
    model.operate_breaker("SW-046-1", False, 1.0)
    model.operate_breaker("TIE-046-061", True, 1.0)
    sections = model.section_states()
    assert sections["LINE-046/1"]["source"] == "SUB-003"
    assert sections["LINE-046/2"]["source"] == sections["LINE-046/3"]["source"] == "SUB-006/LINE-061"
    tie = model.device_state("TIE-046-061")
    assert tie["direction"] == "reverse" and tie["active_power_kw"] < -1000.0  # side 2 → side 1
    assert model.device_state("SW-046-2")["direction"] == "reverse"
    assert not model.parallel
    # the neighbour's feeder goes dead: so does what it carried
    model.set_external_source("TIE-046-061", False, 2.0)
    assert not model.section_states()["LINE-046/3"]["energised"]
    assert model.agent_values("SOLAR-201")["connected"] is False


# --------------------------------------------------------------------------- faults on a back-fed section


def _sc_reference(model: GridModel, fault_bus: int, fault: str) -> float:
    """pandapower IEC 60909 initial symmetrical current at a bus (kA), the model's network at no
    load with every source as an external grid of its fault level."""
    sc = pytest.importorskip("pandapower.shortcircuit")
    pp = pytest.importorskip("pandapower")
    net = model.net
    ppn = pp.create_empty_network(sn_mva=net.base_mva)
    buses = [pp.create_bus(ppn, vn_kv=b.base_kv) for b in net.buses]
    for br in net.branches:
        f, t = buses[br.from_bus], buses[br.to_bus]
        if br.kind is BranchKind.SOURCE:  # a source's impedance: its external grid at its far bus
            z = abs(br.z_ohm)
            s_sc = net.buses[br.to_bus].base_kv ** 2 / z * 1.1
            pp.create_ext_grid(
                ppn,
                t,
                s_sc_max_mva=s_sc,
                rx_max=br.z_ohm.real / br.z_ohm.imag,
                x0x_max=br.z0_ohm.imag / br.z_ohm.imag,
                r0x0_max=br.z0_ohm.real / br.z0_ohm.imag,
                in_service=bool(model._energised[br.to_bus]),
            )
        elif br.kind is BranchKind.SWITCH:
            pp.create_switch(ppn, f, t, et="b", closed=br.closed)
        elif br.kind is BranchKind.LINE:
            pp.create_line_from_parameters(
                ppn,
                f,
                t,
                length_km=1.0,
                r_ohm_per_km=br.z_ohm.real,
                x_ohm_per_km=br.z_ohm.imag,
                c_nf_per_km=0.0,
                max_i_ka=100.0,
                r0_ohm_per_km=br.z0_ohm.real,
                x0_ohm_per_km=br.z0_ohm.imag,
                c0_nf_per_km=0.0,
            )
    sc.calc_sc(ppn, fault=fault, case="max", ip=False, bus=buses[fault_bus])
    return float(ppn.res_bus_sc.ikss_ka.at[buses[fault_bus]]) * 1000.0


@pytest.mark.parametrize(("ours", "theirs"), [("3ph", "3ph"), ("ll", "2ph"), ("slg", "1ph")])
def test_fault_on_a_back_fed_section_matches_pandapower_iec60909(site: SiteConfig, ours: str, theirs: str) -> None:
    """LINE-045/1 fed backwards from LINE-044 through TIE-044-045 and SW-045-1 (CB-045 open): a
    bolted fault at a tap bus draws what IEC 60909 says, and the devices on the path see it
    flowing towards the station end of LINE-045."""
    c = 1.1
    model = _model(
        site,
        source_voltage_pu=c,
        source_sc_mva=300.0 / c,
        unbalance_pct=0.0,
        start_hour=0.0,
        capacitor_steps={"CAP-301": 0},
    )
    model.load_step("SUB-003", 0.0, 0.0)
    model.operate_breaker("CB-045", False, 0.5)
    model.operate_breaker("TIE-044-045", True, 0.5)
    distance = 1500.0  # XFMR-102's tap
    info = model.inject_fault("LINE-045", distance, ours, now_s=1.0)
    expected = _sc_reference(model, model.lines["LINE-045"].at_bus[distance], theirs)
    assert info.energised and info.fault_current_a == pytest.approx(expected, rel=2e-3)
    assert info.breaker_id == "CB-044"  # the load-break switches on the way cannot clear it
    states = model.device_states()
    assert states["SW-045-1"]["fault_direction"] == "reverse"  # towards CB-045, against its direction
    assert states["TIE-044-045"]["fault_direction"] == "forward"  # LINE-044 → LINE-045
    assert states["CB-044"]["fault_direction"] == "forward"
    assert states["SW-045-2"]["fault_direction"] is None and states["SW-044-1"]["fault_direction"] == "forward"
    for device in ("SW-045-1", "TIE-044-045", "SW-044-1", "SW-044-2"):
        assert states[device]["current_a"] > 0.9 * info.fault_current_a and states[device]["fpi"] is True, device
    assert states["SW-045-2"]["fpi"] is False and states["SW-046-1"]["fpi"] is False


def test_fault_fed_from_the_external_source_matches_pandapower_iec60909(site: SiteConfig) -> None:
    c = 1.1
    model = _model(
        site,
        unbalance_pct=0.0,
        start_hour=0.0,
        external_sources={"TIE-046-061": {"sc_mva": 150.0 / c, "x_r": 8.0, "voltage_pu": c}},
    )
    model.load_step("SUB-003", 0.0, 0.0)
    model.operate_breaker("CB-046", False, 0.5)
    model.operate_breaker("TIE-046-061", True, 0.5)
    info = model.inject_fault("LINE-046", 2400.0, "3ph", now_s=1.0)
    expected = _sc_reference(model, model.lines["LINE-046"].at_bus[2400.0], "3ph")
    assert info.fault_current_a == pytest.approx(expected, rel=2e-3)
    assert info.breaker_id == "TIE-046-061"  # a recloser: it can clear it
    assert model.device_state("SW-046-2")["fault_direction"] == "reverse"
    assert model.device_state("TIE-046-061")["fault_direction"] == "reverse"
    assert model.device_state("SW-046-1")["fault_direction"] is None


# --------------------------------------------------------------------------- fault-passage indicators


def test_indicators_latch_upstream_of_the_fault_and_reset(site: SiteConfig) -> None:
    model = _model(site)
    model.inject_fault("LINE-045", 2500.0, "3ph", now_s=1.0)  # in LINE-045/2
    v = model.point_values()
    assert v["SW-045-1.fpi"] is True and v["SW-045-2.fpi"] is False and v["SW-044-1.fpi"] is False
    model.apply_command("CB-045.trip_cmd", True, 1.1)  # protection clears it; the indicator stays
    model.advance(60.0)
    assert model.point_values()["SW-045-1.fpi"] is True
    # the crew isolates and the station end is restored: voltage is back at SW-045-1's source
    # side... but it is open, so it measures its dead load side, and stays indicated
    model.operate_breaker("SW-045-1", False, 61.0)
    model.operate_breaker("CB-045", True, 62.0)
    model.advance(100.0)
    assert model.point_values()["SW-045-1.fpi"] is True
    # a remote reset clears it at once
    model.apply_command("SW-045-1.fpi_reset", True, 101.0)
    v = model.point_values()
    assert v["SW-045-1.fpi"] is False and v["SW-045-1.fpi_reset"] is True


def test_indicator_resets_itself_after_voltage_has_been_back_long_enough(site: SiteConfig) -> None:
    model = _model(site, fpi_reset_delay_s=10.0)
    model.inject_fault("LINE-045", 4500.0, "slg", now_s=1.0)  # in LINE-045/3
    assert all(model.point_values()[f"{d}.fpi"] for d in ("SW-045-1", "SW-045-2"))
    model.apply_command("CB-045.trip_cmd", True, 1.2)
    model.clear_faults(5.0)
    model.advance(30.0)  # dead: the timer does not run
    assert model.point_values()["SW-045-2.fpi"] is True
    model.apply_command("CB-045.close_cmd", True, 30.0)
    model.advance(39.0)
    assert model.point_values()["SW-045-2.fpi"] is True
    model.advance(40.5)
    v = model.point_values()
    assert v["SW-045-2.fpi"] is False and v["SW-045-1.fpi"] is False


def test_load_current_does_not_trip_an_indicator(site: SiteConfig) -> None:
    model = _model(site)
    _transfer(model, "TIE-044-045")
    model.advance(5.0)
    assert not any(model.device_state(d)["fpi"] for d in SERIES + TIES)


# --------------------------------------------------------------------------- loops


def test_closing_a_tie_between_two_live_feeders_is_reported_not_modelled(
    site: SiteConfig, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model(site)
    model.advance(1.0)
    before = _feeder_currents(model)
    with caplog.at_level("WARNING", logger="hil.grid.model"):
        model.operate_breaker("TIE-044-045", True, 1.0)
    loops = model.parallel_loops
    assert model.parallel and len(loops) == 1
    loop = loops[0]
    assert loop["closing"] == "TIE-044-045" and loop["energised"]
    assert {"CB-044", "CB-045", "SW-045-1", "SW-044-1", "SW-044-2"} <= set(loop["devices"])
    assert "LINE-045:1800-2400" in loop["branches"] and "SW-046-1" not in loop["devices"]
    assert model.device_state("TIE-044-045")["current_a"] == 0.0  # it carries nothing here
    assert _feeder_currents(model) == pytest.approx(before)
    assert any("closed loop" in r.message and "TIE-044-045" in r.message for r in caplog.records)
    model.operate_breaker("TIE-044-045", False, 2.0)
    assert not model.parallel and model.parallel_loops == []


def test_the_switch_closed_last_is_the_one_left_out(site: SiteConfig) -> None:
    """Back-feed first, then close the feeder breaker onto it: the breaker closes the loop."""
    model = _model(site)
    model.operate_breaker("CB-046", False, 1.0)
    model.operate_breaker("TIE-046-061", True, 2.0)
    assert not model.parallel
    model.operate_breaker("CB-046", True, 3.0)
    (loop,) = model.parallel_loops
    assert loop["closing"] == "CB-046" and "TIE-046-061" in loop["devices"]
    assert "TIE-046-061/emf" in loop["branches"] and "source" in loop["branches"]
    assert model.section_states()["LINE-046/1"]["source"] == "SUB-006/LINE-061"


def test_closing_the_external_tie_with_the_local_side_live_is_parallel(site: SiteConfig) -> None:
    model = _model(site)
    model.operate_breaker("TIE-046-061", True, 1.0)
    (loop,) = model.parallel_loops
    assert loop["closing"] == "TIE-046-061" and loop["energised"]
    assert model.section_states()["LINE-046/3"]["source"] == "SUB-003"


# --------------------------------------------------------------------------- failures and local control


def test_a_stuck_device_never_moves(site: SiteConfig) -> None:
    model = _model(site)
    model.set_device_failure("SW-045-1", "stuck")
    model.apply_command("SW-045-1.trip_cmd", True, 1.0)
    model.advance(60.0)
    state = model.device_state("SW-045-1")
    assert (
        state["closed"] is True and state["operations"] == 0 and state["failure"] == {"mode": "stuck", "delay_s": None}
    )
    assert model.point_values()["SW-045-1.trip_cmd"] is True  # the command did arrive
    model.set_device_failure("SW-045-1", "none")
    model.apply_command("SW-045-1.trip_cmd", True, 61.0)
    assert model.device_state("SW-045-1")["closed"] is False


def test_a_slow_device_moves_after_its_delay(site: SiteConfig) -> None:
    model = _model(site)
    model.set_device_failure("TIE-045-046", "slow", 4.0)
    model.apply_command("TIE-045-046.close_cmd", True, 1.0)
    model.advance(4.9)
    state = model.device_state("TIE-045-046")
    assert state["closed"] is False and state["moving_to"] == "closed" and state["moves_at_s"] == pytest.approx(5.0)
    model.advance(5.0)
    assert model.device_state("TIE-045-046")["closed"] is True
    with pytest.raises(ValueError, match="delay_s > 0"):
        model.set_device_failure("TIE-045-046", "slow", 0.0)
    with pytest.raises(ValueError, match="'stuck', 'slow' or 'none'"):
        model.set_device_failure("TIE-045-046", "jammed")
    with pytest.raises(KeyError, match="not a modelled switching device"):
        model.set_device_failure("XFMR-101", "stuck")


def test_a_device_in_local_control_refuses_remote_commands(site: SiteConfig) -> None:
    model = _model(site)
    model.inject_fault("LINE-045", 2500.0, "3ph", now_s=0.5)
    model.clear_faults(0.6)
    model.set_local("SW-045-1", True)
    assert model.point_values()["SW-045-1.local"] is True
    assert model.local_command_points()["SW-045-1.trip_cmd"] is True
    for point in ("SW-045-1.trip_cmd", "SW-045-1.close_cmd", "SW-045-1.fpi_reset"):
        with pytest.raises(CommandRefused, match="local control") as info:
            model.apply_command(point, True, 1.0)
        assert info.value.device_id == "SW-045-1" and info.value.reason == "local"
    v = model.point_values()
    assert v["SW-045-1.closed"] is True and v["SW-045-1.trip_cmd"] is False and v["SW-045-1.fpi"] is True
    model.operate_breaker("SW-045-1", False, 2.0)  # the operator at the pole can
    assert model.point_values()["SW-045-1.closed"] is False
    model.set_local("SW-045-1", False)
    model.apply_command("SW-045-1.close_cmd", True, 3.0)
    assert model.point_values()["SW-045-1.closed"] is True
    # IEC 61850 devices: the same through position_cmd
    model.set_local("SW-046-1", True)
    with pytest.raises(CommandRefused):
        model.apply_command("SW-046-1.position_cmd", False, 4.0)
    assert model.device_state("SW-046-1")["refused_commands"] == 1


# --------------------------------------------------------------------------- any configuration


_SHARED: dict[str, GridModel] = {}


def _shared() -> GridModel:
    if "m" not in _SHARED:
        site = load(SITE_PATH)
        _SHARED["m"] = GridModel.from_site(
            site.model_copy(update={"simulation": {**site.simulation, "load_noise_pct": 0.0}})
        )
    return _SHARED["m"]


@settings(max_examples=150, deadline=None)
@given(
    closed=st.lists(st.booleans(), min_size=len(DEVICES), max_size=len(DEVICES)),
    external_live=st.booleans(),
    hour=st.floats(0.0, 23.99),
)
def test_any_switch_configuration_is_solved_or_reported_parallel(
    closed: list[bool], external_live: bool, hour: float
) -> None:
    """Every configuration of the example's eleven devices either solves radially, with the
    sources' power equal to the loads plus the branch losses, or reports its loops."""
    model = _shared()
    now = model.now_s + hour * 3600.0
    model.set_external_source("TIE-046-061", external_live, now)
    for device, state in zip(DEVICES, closed, strict=True):
        model.operate_breaker(device, state, now)
    loops = model.parallel_loops
    sections = model.section_states()
    for loop in loops:
        assert loop["closing"] in DEVICES and loop["closing"] in loop["devices"]
        assert model.device_state(loop["closing"])["current_a"] == 0.0
    if model.parallel:
        assert any(lp["energised"] for lp in loops)
        return
    result, tree = model._result, model._tree
    assert result is not None and tree is not None
    v = model.point_values()
    assert all(math.isfinite(float(x)) for x in v.values())
    for sid, sec in sections.items():
        live = sec["energised"]
        assert (sec["source"] in ("SUB-003", "SUB-006/LINE-061")) == live, sid
        for element in sec["elements"]:
            if element in model.transformers:
                assert (model.agent_values(element)["secondary_voltage_v"] > 0.0) == live, element
    if model._collapsed:
        return  # past voltage collapse the loads are impedances, not their constant power
    j = result.current_pu[tree.nodes]
    losses = float(np.sum(tree.ratio**2 * np.abs(j) ** 2 * tree.z_pu.real))
    served = float(np.sum(model._bus_load_kw[model._energised])) / (model.net.base_mva * 1000.0)
    assert result.source_power_pu.real == pytest.approx(served + losses, rel=1e-6, abs=1e-9)
    # every feeder's current is what its own sections and what it carries through ties draw: a
    # dead feeder breaker carries nothing
    for cb in FEEDERS:
        if not model.device_state(cb)["closed"]:
            assert v[f"{cb}.ia"] == 0.0
