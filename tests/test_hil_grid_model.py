"""The simulator's electrical model built from the example site SUB-003."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import SiteConfig, load
from hil.grid.faults import FaultKind, parse_kind, sequence_currents
from hil.grid.model import GridModel
from hil.grid.settings import load_settings

SITE_PATH = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml"


@pytest.fixture(scope="module")
def site() -> SiteConfig:
    return load(SITE_PATH)


def _site(site: SiteConfig, **simulation: Any) -> SiteConfig:
    merged = dict(site.simulation)
    merged.update(simulation)
    return site.model_copy(update={"simulation": merged})


def _model(site: SiteConfig, seed: int = 0, **simulation: Any) -> GridModel:
    return GridModel.from_site(_site(site, **simulation), seed=seed)


# --------------------------------------------------------------------------- points and commands


def test_every_ied_point_is_produced(site: SiteConfig) -> None:
    values = GridModel.from_site(site).point_values()
    ieds = [p.id for ied in site.ieds for p in ied.points]
    assert sorted(values) == sorted(set(ieds))
    assert all(isinstance(v, (bool, int, float)) and math.isfinite(float(v)) for v in values.values())


def test_a_point_shared_by_two_agents_is_produced_by_the_agent_it_names(site: SiteConfig) -> None:
    """A capacitor controller in var or temperature mode reads the feeder's kvar and a
    transformer's ambient temperature: those points keep coming from the breaker and the
    transformer, however many agents read them."""
    agents = []
    for agent in site.agents:
        if agent.id == "CAP-301":
            points = {
                **agent.points,
                "source_reactive_power_kvar": "CB-045.reactive_power_kvar",
                "ambient_temp_c": "XFMR-101.ambient_temp_c",
            }
            agent = agent.model_copy(update={"points": points})
        agents.append(agent)
    shared = site.model_copy(update={"agents": agents})
    plain, both = GridModel.from_site(site).point_values(), GridModel.from_site(shared).point_values()
    assert both["CB-045.reactive_power_kvar"] == pytest.approx(plain["CB-045.reactive_power_kvar"])
    assert both["XFMR-101.ambient_temp_c"] == pytest.approx(plain["XFMR-101.ambient_temp_c"])
    assert both["CB-045.reactive_power_kvar"] != 0.0 and both["XFMR-101.ambient_temp_c"] > -50.0
    assert sorted(both) == sorted(plain)


def test_normal_state_is_plausible(site: SiteConfig) -> None:
    v = GridModel.from_site(site).point_values()
    assert 10.5 < v["SUB-003.bus_voltage_kv"] < 11.6
    assert 0.94 < v["SOLAR-201.voltage_pu"] < 1.06
    assert v["CB-044.closed"] and v["CB-045.closed"] and v["CB-046.closed"]
    for cb in ("CB-044", "CB-045", "CB-046"):
        assert 5.0 < v[f"{cb}.ia"] < 400.0
        assert v[f"{cb}.in"] < 0.1 * v[f"{cb}.ia"]
    feeders = sum(v[f"{cb}.active_power_kw"] for cb in ("CB-044", "CB-045", "CB-046"))
    assert v["SUB-003.total_load_kw"] == pytest.approx(feeders, rel=1e-9)
    assert 200.0 < v["XFMR-101.secondary_voltage_v"] < 450.0
    assert v["XFMR-101.top_oil_temp_c"] > v["XFMR-101.ambient_temp_c"]
    assert v["XFMR-101.tap_setpoint"] == v["XFMR-101.tap_position"] == 0


def test_power_balance_includes_losses(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    sub = model.agent_values("SUB-003")
    loads = sum(model.agent_values(t)["load_kw"] for t in model.transformers)
    loads += sum(ld.kw for ld in model._loads if ld.id.startswith("LINE"))
    solar = model.agent_values("SOLAR-201")["active_power_kw"]
    losses = sub["total_load_kw"] - (loads - solar)
    assert 0.0 < losses < 0.08 * sub["total_load_kw"]


def test_breaker_trip_and_close_deenergise_and_restore(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    model.apply_command("CB-045.trip_cmd", True, 1.0)
    v = model.point_values()
    assert not model.breaker_closed("CB-045") and v["CB-045.closed"] is False
    assert v["CB-045.ia"] == 0.0 and v["XFMR-101.secondary_voltage_v"] == 0.0
    assert v["CB-045.operations"] == 1 and v["CB-045.trip_cmd"] is True
    meters = model.meter_readings(2.0)
    feeder = np.array([g in ("MTR-GRP-101", "MTR-GRP-102") for g in meters.group_ids])
    assert not meters.powered[feeder].any()
    assert (meters.voltage_v[feeder] == 0).all() and (meters.demand_kw[feeder] == 0).all()
    model.apply_command("CB-045.close_cmd", True, 3.0)
    v = model.point_values()
    assert v["CB-045.closed"] is True and v["CB-045.ia"] > 5.0 and v["CB-045.operations"] == 2
    assert model.meter_readings(4.0).powered.all()


def test_iec61850_position_command_and_der_islanding(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    assert model.point_values()["SOLAR-201.connected"] is True
    model.apply_command("CB-046.position_cmd", False, 1.0)
    v = model.point_values()
    assert v["CB-046.closed"] is False and v["CB-046.position_cmd"] is False
    assert v["SOLAR-201.connected"] is False and v["SOLAR-201.active_power_kw"] == 0.0
    model.apply_command("CB-046.position_cmd", True, 2.0)
    assert model.point_values()["SOLAR-201.connected"] is False  # IEEE 1547 enter-service delay
    model.advance(2.0 + 299.0)
    assert model.point_values()["SOLAR-201.connected"] is False
    model.advance(2.0 + 301.0)
    v = model.point_values()
    assert v["SOLAR-201.connected"] is True and v["SOLAR-201.active_power_kw"] > 0.0
    quick = _model(site, der_enter_service_delay=False)
    quick.apply_command("CB-046.position_cmd", False, 1.0)
    quick.apply_command("CB-046.position_cmd", True, 2.0)
    assert quick.point_values()["SOLAR-201.connected"] is True


def test_breaker_opening_time_is_simulated(site: SiteConfig) -> None:
    model = _model(site, breaker_opening_time_ms=50.0)
    model.apply_command("CB-044.trip_cmd", True, 1.0)
    assert model.breaker_closed("CB-044")
    model.advance(1.049)
    assert model.breaker_closed("CB-044")
    model.advance(1.051)
    assert not model.breaker_closed("CB-044")


def test_der_commands(site: SiteConfig) -> None:
    model = _model(site, start_hour=12.0)
    before = model.point_values()["SOLAR-201.active_power_kw"]
    assert before > 100.0
    model.apply_command("SOLAR-201.p_limit_pct", 30, 1.0)
    model.apply_command("SOLAR-201.q_setpoint_kvar", 50, 1.0)
    v = model.point_values()
    assert v["SOLAR-201.active_power_kw"] == pytest.approx(min(before, 0.3 * 500.0))
    assert v["SOLAR-201.reactive_power_kvar"] == 50.0 and v["SOLAR-201.p_limit_pct"] == 30.0
    model.apply_command("SOLAR-201.connect_cmd", False, 2.0)
    v = model.point_values()
    assert v["SOLAR-201.connected"] is False and v["SOLAR-201.active_power_kw"] == 0.0


def test_night_has_no_sun(site: SiteConfig) -> None:
    v = _model(site, start_hour=23.0).point_values()
    assert v["SOLAR-201.irradiance_w_m2"] == 0.0 and v["SOLAR-201.active_power_kw"] == 0.0


def test_tap_changer_moves_secondary_voltage(site: SiteConfig) -> None:
    model = _model(site, tap_change_time_s=2.0)
    v0 = model.point_values()["XFMR-101.secondary_voltage_v"]
    model.apply_command("XFMR-101.tap_setpoint", 4, 1.0)
    assert model.point_values()["XFMR-101.tap_setpoint"] == 4
    model.advance(3.5)  # one step every 2 s
    assert model.point_values()["XFMR-101.tap_position"] == 1
    model.advance(9.5)
    v = model.point_values()
    assert v["XFMR-101.tap_position"] == 4
    assert v["XFMR-101.secondary_voltage_v"] == pytest.approx(v0 * 1.025, rel=0.01)
    with pytest.raises(ValueError, match="outside the device's range"):  # refused, not clamped
        model.apply_command("XFMR-101.tap_setpoint", 99, 10.0)
    assert model.point_values()["XFMR-101.tap_setpoint"] == 4
    with pytest.raises(ValueError, match="outside the device's range"):
        model.apply_command("CAP-301.steps_cmd", 99, 10.0)


def test_capacitor_steps_raise_voltage_and_supply_vars(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    before = model.point_values()
    model.apply_command("CAP-301.steps_cmd", 4, 1.0)
    after = model.point_values()
    assert after["CAP-301.steps_active"] == 4 and after["CAP-301.steps_cmd"] == 4
    assert after["CAP-301.reactive_power_kvar"] > 1000.0
    assert after["CAP-301.bus_voltage_kv"] > before["CAP-301.bus_voltage_kv"]
    assert after["CB-045.reactive_power_kvar"] < before["CB-045.reactive_power_kvar"] - 900.0


def test_unknown_command_point_is_a_clear_key_error(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    with pytest.raises(KeyError, match="CB-044.ia.*not a command point"):
        model.apply_command("CB-044.ia", 1.0, 0.0)
    with pytest.raises(KeyError, match="NOPE"):
        model.apply_command("NOPE.trip_cmd", True, 0.0)
    with pytest.raises(KeyError, match="not a modelled breaker"):
        model.breaker_closed("CB-999")


def test_time_cannot_go_backwards(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    model.advance(10.0)
    with pytest.raises(ValueError, match="backwards"):
        model.advance(9.0)


# --------------------------------------------------------------------------- faults


def test_fault_current_is_kiloamps_near_the_station_and_less_far_out(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    near = model.inject_fault("LINE-045", 100.0, "3ph", now_s=1.0)
    model.clear_faults(1.0)
    far = model.inject_fault("LINE-045", 5000.0, "3ph", now_s=1.0)
    assert near.fault_current_a > 8000.0
    assert 1000.0 < far.fault_current_a < near.fault_current_a / 2
    assert far.breaker_id == "CB-045" and far.energised
    v = model.point_values()
    assert v["CB-045.ia"] > 1000.0 and v["CB-045.ib"] > 1000.0 and v["CB-045.ic"] > 1000.0
    assert v["CB-044.ia"] < 400.0  # the healthy feeder only sees its load
    assert v["SUB-003.bus_voltage_kv"] < 11.0


def test_single_line_to_ground_shows_in_phase_a_and_the_residual(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    info = model.inject_fault("LINE-045", 2300.0, "slg", now_s=1.0)
    v = model.point_values()
    assert v["CB-045.ia"] > 1000.0 and v["CB-045.in"] > 1000.0
    assert v["CB-045.ib"] < 400.0 and v["CB-045.ic"] < 400.0
    assert info.in_a == pytest.approx(info.ia_a)


def test_line_to_line_fault_is_0866_of_three_phase() -> None:
    z1 = complex(0.8, 1.2)
    three = sequence_currents(FaultKind.THREE_PHASE, 6350.0, z1, z1, 3 * z1)
    ll = sequence_currents(FaultKind.LINE_LINE, 6350.0, z1, z1, 3 * z1)
    assert max(abs(i) for i in ll.phases()) == pytest.approx(math.sqrt(3) / 2 * abs(three.i1))
    assert abs(ll.phases()[0]) == pytest.approx(0.0, abs=1e-9) and ll.residual == 0


def test_transient_fault_clears_once_the_breaker_opens(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    model.inject_fault("LINE-045", 2300.0, "3ph", transient=True, now_s=1.0)
    assert len(model.active_faults) == 1
    model.apply_command("CB-045.trip_cmd", True, 1.1)
    assert model.active_faults == []
    model.apply_command("CB-045.close_cmd", True, 31.1)  # reclose after the dead time: healthy
    v = model.point_values()
    assert v["CB-045.closed"] is True and v["CB-045.ia"] < 400.0


def test_permanent_fault_returns_on_reclose_until_cleared(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    model.inject_fault("LINE-045", 2300.0, "ll", now_s=1.0)
    model.apply_command("CB-045.trip_cmd", True, 1.1)
    (dead,) = model.active_faults
    assert not dead.energised and dead.fault_current_a == 0.0
    model.apply_command("CB-045.close_cmd", True, 31.1)
    assert model.point_values()["CB-045.ib"] > 1000.0
    model.clear_faults(32.0)
    assert model.active_faults == [] and model.point_values()["CB-045.ib"] < 400.0


def test_fault_input_errors(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    with pytest.raises(KeyError, match="not a modelled power line"):
        model.inject_fault("XFMR-101", 10.0, "3ph", now_s=0.0)
    with pytest.raises(ValueError, match="distance_m"):
        model.inject_fault("LINE-045", 6000.0, "3ph", now_s=0.0)
    with pytest.raises(ValueError, match="unknown fault kind"):
        model.inject_fault("LINE-045", 10.0, "4ph", now_s=0.0)
    assert parse_kind("1ph") is FaultKind.LINE_GROUND and parse_kind("2ph-g") is FaultKind.LINE_LINE_GROUND


_MODEL_CACHE: dict[str, GridModel] = {}


def _shared_model() -> GridModel:
    """One model for the property tests (a fixture would print the whole site on failure)."""
    if "m" not in _MODEL_CACHE:
        _MODEL_CACHE["m"] = GridModel.from_site(load(SITE_PATH))
    return _MODEL_CACHE["m"]


def _fault_a(model: GridModel, distance_m: float, kind: str, zf: float = 0.0) -> float:
    info = model.inject_fault("LINE-045", distance_m, kind, impedance_ohm=zf, now_s=model.now_s)
    model.clear_faults(model.now_s)
    return info.fault_current_a


@settings(max_examples=40, deadline=None)
@given(d1=st.floats(0.0, 5000.0), d2=st.floats(0.0, 5000.0), kind=st.sampled_from(["3ph", "ll", "slg", "llg"]))
def test_fault_current_falls_with_distance(d1: float, d2: float, kind: str) -> None:
    model = _shared_model()
    near, far = sorted((d1, d2))
    assert _fault_a(model, near, kind) >= _fault_a(model, far, kind) * (1 - 1e-9)
    assert 0 < _fault_a(model, far, kind) < 20_000


@settings(max_examples=40, deadline=None)
@given(d=st.floats(0.0, 5000.0), zf=st.floats(0.0, 50.0), kind=st.sampled_from(["3ph", "ll", "slg"]))
def test_fault_current_falls_with_fault_impedance(d: float, zf: float, kind: str) -> None:
    # (not for a double line-to-ground fault: resistance in the ground path can raise one
    # phase's current while it shifts the sequence currents' angles)
    model = _shared_model()
    assert _fault_a(model, d, kind, zf) <= _fault_a(model, d, kind) * (1 + 1e-9)


def test_fault_currents_match_pandapower_iec60909(site: SiteConfig) -> None:
    """Bolted faults at no load against pandapower's IEC 60909 short-circuit calculation
    (c = 1.1: our source at 1.1 pu behind Z = c·U²/S''k)."""
    pp = pytest.importorskip("pandapower")
    sc = pytest.importorskip("pandapower.shortcircuit")
    s_sc_mva, x_r, c = 250.0, 10.0, 1.1
    model = _model(
        site,
        source_sc_mva=s_sc_mva / c,
        source_x_r=x_r,
        source_voltage_pu=c,
        source_z0_z1=1.0,
        start_hour=0.0,
        unbalance_pct=0.0,
    )
    model.load_step("SUB-003", 0.0, 0.0)
    line = model.lines["LINE-045"].attrs
    net = pp.create_empty_network()
    b0 = pp.create_bus(net, vn_kv=11.0)
    b1 = pp.create_bus(net, vn_kv=11.0)
    pp.create_ext_grid(net, b0, s_sc_max_mva=s_sc_mva, rx_max=1 / x_r, x0x_max=1.0, r0x0_max=1 / x_r)
    distance_m = 2300.0
    imp = line.impedance
    pp.create_line_from_parameters(
        net,
        b0,
        b1,
        length_km=distance_m / 1000,
        r_ohm_per_km=imp.r_ohm_per_km,
        x_ohm_per_km=imp.x_ohm_per_km,
        c_nf_per_km=0.0,
        max_i_ka=1.0,
        r0_ohm_per_km=imp.r0_ohm_per_km,
        x0_ohm_per_km=imp.x0_ohm_per_km,
        c0_nf_per_km=0.0,
    )
    for ours, theirs in (("3ph", "3ph"), ("ll", "2ph"), ("slg", "1ph")):
        sc.calc_sc(net, fault=theirs, case="max", ip=False)
        expected_a = net.res_bus_sc.ikss_ka.at[b1] * 1000.0
        info = model.inject_fault("LINE-045", distance_m, ours, now_s=1.0)
        model.clear_faults(1.0)
        assert info.fault_current_a == pytest.approx(expected_a, rel=1e-3), ours


# --------------------------------------------------------------------------- loads, time, meters


def test_same_seed_same_scenario(site: SiteConfig) -> None:
    runs = []
    for _ in range(2):
        model = GridModel.from_site(site, seed=7)
        trace = []
        for k in range(1, 6):
            model.advance(k * 90.0)
            trace.append(model.point_values()["CB-044.active_power_kw"])
        runs.append(trace)
    assert runs[0] == runs[1]
    other = GridModel.from_site(site, seed=8)
    other.advance(450.0)
    assert other.point_values()["CB-044.active_power_kw"] != runs[0][-1]


def test_noise_does_not_depend_on_step_size(site: SiteConfig) -> None:
    coarse = GridModel.from_site(site, seed=3)
    fine = GridModel.from_site(site, seed=3)
    coarse.advance(600.0)
    for k in range(1, 121):
        fine.advance(k * 5.0)
    a, b = coarse.point_values(), fine.point_values()
    assert a["XFMR-102.load_kw"] == pytest.approx(b["XFMR-102.load_kw"], rel=1e-9)


def test_daily_profile_residential_peaks_in_the_evening(site: SiteConfig) -> None:
    model = _model(site, start_hour=0.0, load_noise_pct=0.0)
    load = {}
    for hour in (4, 12, 19):
        model.advance(hour * 3600.0)
        load[hour] = model.point_values()["XFMR-101.load_kw"]
    assert load[19] > load[12] > load[4]


def test_load_step_on_transformer_meter_group_and_line(site: SiteConfig) -> None:
    model = _model(site, load_noise_pct=0.0)
    base = model.point_values()
    model.load_step("XFMR-101", 2.0, 0.0)
    assert model.point_values()["XFMR-101.load_kw"] == pytest.approx(2 * base["XFMR-101.load_kw"], rel=0.02)
    model.load_step("MTR-GRP-102", 0.5, 0.0)
    assert model.point_values()["XFMR-102.load_kw"] == pytest.approx(0.5 * base["XFMR-102.load_kw"], rel=0.02)
    model.load_step("LINE-044", 1.5, 0.0)
    assert model.point_values()["CB-044.active_power_kw"] > 1.4 * base["CB-044.active_power_kw"]
    with pytest.raises(KeyError):
        model.load_step("CAP-301", 2.0, 0.0)


def test_overload_heats_the_oil_with_its_time_constant(site: SiteConfig) -> None:
    model = _model(site, load_noise_pct=0.0, start_hour=12.0)
    cold = model.point_values()["XFMR-101.top_oil_temp_c"]
    model.load_step("XFMR-101", 4.0, 0.0)
    model.advance(60.0)
    early = model.point_values()["XFMR-101.top_oil_temp_c"]
    model.advance(4 * 3600.0)
    late = model.point_values()["XFMR-101.top_oil_temp_c"]
    assert cold < early < late and late - cold > 20.0


def test_temperature_ramp(site: SiteConfig) -> None:
    model = _model(site, ambient_swing_c=0.0)
    a0 = model.point_values()["XFMR-102.ambient_temp_c"]
    model.temperature_ramp("XFMR-102", 10.0, 100.0, 10.0)
    model.advance(60.0)
    assert model.point_values()["XFMR-102.ambient_temp_c"] == pytest.approx(a0 + 5.0)
    model.advance(200.0)
    v = model.point_values()
    assert v["XFMR-102.ambient_temp_c"] == pytest.approx(a0 + 10.0)
    assert v["XFMR-101.ambient_temp_c"] == pytest.approx(a0)
    assert v["XFMR-102.top_oil_temp_c"] - v["XFMR-102.ambient_temp_c"] < 60.0


def test_meter_readings_columns(site: SiteConfig) -> None:
    model = GridModel.from_site(site, seed=2)
    r = model.meter_readings(0.0)
    assert len(r) == sum(g.count for g in site.meter_groups) == 3670
    for g in site.meter_groups:  # each group's meters side by side, in order
        first = r.ids.index(f"{g.prefix}-00001")
        assert r.ids[first : first + g.count] == [f"{g.prefix}-{n:05d}" for n in range(1, g.count + 1)]
        assert set(r.group_ids[first : first + g.count]) == {g.id}
    assert r.powered.all() and not r.tamper.any()
    assert np.all((r.voltage_v > 200) & (r.voltage_v < 260))
    assert np.all((r.power_factor > 0.8) & (r.power_factor <= 1.0))
    group = np.array(r.group_ids) == "MTR-GRP-101"
    xfmr = model.point_values()["XFMR-101.load_kw"]
    assert r.demand_kw[group].sum() == pytest.approx(xfmr, rel=0.05)
    later = model.meter_readings(3600.0)
    assert np.all(later.energy_kwh >= r.energy_kwh) and later.energy_kwh.sum() > r.energy_kwh.sum()
    assert np.allclose(later.current_a, later.demand_kw * 1000 / (later.voltage_v * later.power_factor))


def test_hundred_thousand_meters(site: SiteConfig) -> None:
    model = GridModel.from_site(site, meters=100_000)
    r = model.meter_readings(1.0)
    assert len(r) == 100_000 and len(set(r.ids[:10])) == 10
    assert r.energy_kwh.shape == (100_000,) and r.powered.all()


def test_settings_validation_names_the_key() -> None:
    assert load_settings(None).source_sc_mva == 250.0
    with pytest.raises(ValueError, match=r"simulation\.source_sc_mva"):
        load_settings({"source_sc_mva": -1})
    with pytest.raises(ValueError, match=r"simulation\.nonsense"):
        load_settings({"nonsense": 1})
    with pytest.raises(ValueError, match=r"simulation\.loads\.XFMR-101\.profile"):
        load_settings({"loads": {"XFMR-101": {"profile": "lunar"}}})


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.floats(0, 1000), max_size=30),
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "source_sc_mva",
                "source_x_r",
                "frequency_hz",
                "start_hour",
                "seed",
                "breaker_opening_time_ms",
                "loads",
                "irradiance",
                "positions_m",
                "solve_period_s",
                "unknown_key",
            ]
        ),
        _VALUES,
        max_size=5,
    )
)
def test_settings_either_parse_or_name_the_bad_key(raw: dict[str, Any]) -> None:
    try:
        parsed = load_settings(raw)
    except ValueError as exc:
        assert str(exc).startswith("invalid [simulation] table") and "simulation." in str(exc)
    else:
        assert parsed.source_sc_mva > 0 and 0 <= parsed.start_hour < 24


def test_commands_stamped_slightly_late_act_now(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    model.advance(5.0)
    model.apply_command("CB-044.trip_cmd", True, 4.999)
    assert not model.breaker_closed("CB-044")
    assert model.inject_fault("LINE-045", 10.0, "3ph", now_s=4.9).start_s == 5.0


def test_unknown_ids_in_the_simulation_table(site: SiteConfig) -> None:
    with pytest.raises(ValueError, match=r"simulation\.loads\.XFMR-999"):
        _model(site, loads={"XFMR-999": {"peak_kw": 10}})
    with pytest.raises(ValueError, match=r"simulation\.positions_m\.XFMR-101"):
        _model(site, positions_m={"XFMR-101": 99_999.0})


def test_tie_switch_restores_a_dead_feeder(site: SiteConfig) -> None:
    model = GridModel.from_site(site)
    assert model.ties == {}  # the example's ties are switching devices
    model.apply_command("CB-044.trip_cmd", True, 1.0)
    assert model.agent_values("LINE-044")["end_voltage_kv"] == 0.0
    base_045 = model.point_values()["CB-045.active_power_kw"]
    model.apply_command("TIE-044-045.close_cmd", True, 2.0)
    assert model.agent_values("LINE-044")["end_voltage_kv"] > 9.5
    assert model.point_values()["CB-045.active_power_kw"] > base_045 + 500.0


def test_device_less_tie_restores_a_dead_feeder(site: SiteConfig) -> None:
    """A normally-open route rule between two lines (no device) is a tie between their far ends."""
    agents = [
        {"id": "SUB", "type": "substation", "connection_rules": [_rule("CB-1"), _rule("CB-2")]},
        {"id": "CB-1", "type": "circuit_breaker", "connection_rules": [_rule("L-1")]},
        {"id": "CB-2", "type": "circuit_breaker", "connection_rules": [_rule("L-2")]},
        {
            "id": "L-1",
            "type": "power_line",
            "connection_rules": [_rule("T-1"), {"target_id": "L-2", "canonical_type": "route", "normally_open": True}],
        },
        {"id": "L-2", "type": "power_line", "connection_rules": [_rule("T-2")]},
        {"id": "T-1", "type": "transformer"},
        {"id": "T-2", "type": "transformer"},
    ]
    model = GridModel.from_site(_custom_site(site, agents), seed=1)
    assert sorted(model.ties) == ["TIE-L-1-L-2"]
    model.operate_breaker("CB-1", False, 1.0)
    assert model.agent_values("T-1")["secondary_voltage_v"] == 0.0
    base = model.agent_values("CB-2")["active_power_kw"]
    model.set_tie("TIE-L-1-L-2", True, 2.0)
    assert model.agent_values("T-1")["secondary_voltage_v"] > 380.0
    assert model.agent_values("CB-2")["active_power_kw"] > base + 300.0
    model.operate_breaker("CB-1", True, 3.0)  # closed onto the tie: a loop, reported
    assert model.parallel and model.parallel_loops[0]["closing"] == "CB-1"


def _custom_site(
    site: SiteConfig,
    agents: list[dict[str, Any]],
    groups: list[dict[str, Any]] | None = None,
    simulation: dict[str, Any] | None = None,
) -> SiteConfig:
    data = site.model_dump(mode="json", exclude={"agents", "meter_groups", "ieds", "protection", "simulation"})
    data.update(agents=agents, meter_groups=groups or [], simulation=simulation or {})
    return SiteConfig.model_validate(data)


def _rule(target: str, kind: str = "supply") -> dict[str, Any]:
    return {"target_id": target, "canonical_type": kind}


def test_midline_recloser_clears_only_the_downstream_line(site: SiteConfig) -> None:
    agents = [
        {"id": "SUB", "type": "substation", "connection_rules": [_rule("CB-1")]},
        {"id": "CB-1", "type": "circuit_breaker", "connection_rules": [_rule("L-1")]},
        {
            "id": "L-1",
            "type": "power_line",
            "attributes": {"length": 3000.0},
            "connection_rules": [_rule("T-1"), _rule("REC-1")],
        },
        {"id": "T-1", "type": "transformer", "attributes": {"rated_capacity": 500.0}},
        {"id": "REC-1", "type": "circuit_breaker", "connection_rules": [_rule("L-2")]},
        {"id": "L-2", "type": "power_line", "attributes": {"length": 4000.0}, "connection_rules": [_rule("T-2")]},
        {"id": "T-2", "type": "transformer", "connection_rules": [_rule("L-2", "depends_on")]},
    ]
    groups = [{"id": "G-2", "prefix": "M2", "count": 10, "connected_transformer": "T-2"}]
    model = GridModel.from_site(_custom_site(site, agents, groups), seed=1)
    assert model.lines["L-2"].breaker_id == "REC-1"
    info = model.inject_fault("L-2", 2000.0, "slg", now_s=1.0)
    assert info.breaker_id == "REC-1"
    v = model.agent_values("CB-1")
    assert v["ia"] > 1000.0 and model.agent_values("REC-1")["ia"] > 1000.0
    model.operate_breaker("REC-1", False, 1.1)  # no IED points on this site
    assert model.active_faults[0].energised is False
    assert model.agent_values("T-1")["secondary_voltage_v"] > 350.0
    assert model.agent_values("T-2")["secondary_voltage_v"] == 0.0
    assert not model.meter_readings(2.0).powered.any()


def test_sites_without_meters_or_substation(site: SiteConfig) -> None:
    agents = [
        {"id": "SUB", "type": "substation", "connection_rules": [_rule("L-1")]},
        {"id": "L-1", "type": "power_line"},
    ]
    model = GridModel.from_site(_custom_site(site, agents))
    assert len(model.meter_readings(1.0)) == 0
    assert model.agent_values("L-1")["current_a"] > 10.0  # the lumped load of a line with nothing below
    with pytest.raises(ValueError, match="needs a substation agent"):
        GridModel.from_site(_custom_site(site, agents[1:]))


def test_zero_meters_override(site: SiteConfig) -> None:
    readings = GridModel.from_site(site, meters=0).meter_readings(1.0)
    assert len(readings) == 0 and readings.energy_kwh.shape == (0,)


def test_site_model_power_flow_matches_pandapower(site: SiteConfig) -> None:
    """The example site's network in its current state (source impedance, breakers, line
    sections, distribution transformers, a capacitor bank in service, PV output, one feeder
    open) solved again by pandapower's Newton-Raphson: same voltages, same losses."""
    pp = pytest.importorskip("pandapower")
    from hil.grid.network import BranchKind

    model = _model(site, start_hour=13.0, source_voltage_pu=1.03)
    model.apply_command("CAP-301.steps_cmd", 3, 1.0)
    model.apply_command("CB-044.trip_cmd", True, 1.0)
    model.apply_command("XFMR-101.tap_setpoint", 4, 1.0)
    model.apply_command("XFMR-102.tap_setpoint", -3, 1.0)
    net = model.net
    result = model._result
    assert result is not None
    ppn = pp.create_empty_network(sn_mva=net.base_mva)
    buses = [pp.create_bus(ppn, vn_kv=b.base_kv) for b in net.buses]
    pp.create_ext_grid(ppn, buses[model.source_bus], vm_pu=model.settings.source_voltage_pu)
    for br in net.branches:
        f, t = buses[br.from_bus], buses[br.to_bus]
        if br.kind is BranchKind.IDEAL:  # the neighbouring substation's EMF behind the external tie
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
        else:  # source impedance and line sections: series R + jX
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
    pp.runpp(ppn, algorithm="nr", tolerance_mva=1e-10, calculate_voltage_angles=True, init="flat", numba=False)
    live = np.flatnonzero(model._energised)
    dead = np.flatnonzero(~model._energised)
    assert len(dead) > 0 and np.all(result.voltage_pu[dead] == 0)
    vm_ref = ppn.res_bus.vm_pu.to_numpy()
    va_ref = ppn.res_bus.va_degree.to_numpy()
    assert np.max(np.abs(np.abs(result.voltage_pu[live]) - vm_ref[live])) < 1e-7
    assert np.max(np.abs(np.degrees(np.angle(result.voltage_pu[live])) - va_ref[live])) < 1e-5
    losses_ref_kw = (ppn.res_line.pl_mw.sum() + ppn.res_trafo.pl_mw.sum()) * 1000
    assert result.losses_pu.real * net.base_mva * 1000 == pytest.approx(losses_ref_kw, abs=1e-3)


def test_voltage_collapse_does_not_stop_the_simulator(site: SiteConfig) -> None:
    model = _model(site, load_noise_pct=0.0)
    model.load_step("LINE-044", 40.0, 1.0)  # far past the feeder's maximum power transfer
    v = model.point_values()
    assert model._collapsed and model.agent_values("LINE-044")["end_voltage_kv"] < 7.0
    assert v["CB-044.ia"] > 1000.0 and v["CB-045.ia"] < 400.0
    model.load_step("LINE-044", 1.0, 2.0)
    assert model.agent_values("LINE-044")["end_voltage_kv"] > 9.5


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_fault_kind_parser_accepts_or_explains(text: str) -> None:
    try:
        kind = parse_kind(text)
    except ValueError as exc:
        assert "expected '3ph', 'll', 'llg' or 'slg'" in str(exc)
    else:
        assert isinstance(kind, FaultKind)


def test_a_long_jump_follows_the_day(site: SiteConfig) -> None:
    """One advance over a day integrates energy along the profile, as many small ones do."""
    jump = _model(site, start_hour=0.0, load_noise_pct=0.0)
    steps = _model(site, start_hour=0.0, load_noise_pct=0.0)
    jump.advance(86_400.0)
    for k in range(1, 289):
        steps.advance(k * 300.0)
    a, b = jump.meter_readings(86_400.0), steps.meter_readings(86_400.0)
    assert np.allclose(a.energy_kwh, b.energy_kwh)
    day_kwh = (a.energy_kwh - _model(site, start_hour=0.0).meter_readings(0.0).energy_kwh).sum()
    peak_kw = sum(cfg["peak_kw"] for key, cfg in site.simulation["loads"].items() if key.startswith("MTR-GRP"))
    assert 0.3 * peak_kw * 24 < day_kwh < 0.9 * peak_kw * 24
