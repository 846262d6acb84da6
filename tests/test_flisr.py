"""FLISR planning on generated feeders: location from indicators (and distance), isolation,
upstream and downstream restoration within capacity, against an exhaustive oracle."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.switching.flisr import Location, estimate_distance_m, feeder_tree, locate, plan
from gateway.switching.network import SQRT3, Network
from tests.support.switching import Bench, bench


def path_devices(net: Network, breaker: str, config: dict[str, bool | None], fault: str) -> list[str]:
    """Devices between the breaker and the faulted node (the ones fault current passes)."""
    _, parent = feeder_tree(net, breaker, config)
    out, node = [], fault
    while node in parent:
        up, dev = parent[node]
        if dev is not None and dev != breaker:
            out.append(dev)
        node = up
    return out


def lockout(b: Bench, breaker: str, fault: str, *, indicators: bool = True) -> tuple[dict[str, bool | None], str]:
    """Feeder `breaker` locked out by a fault in `fault`: indicators latched on its path."""
    config = b.state.configuration()
    feeder = b.network.downstream(breaker, config)
    if indicators:
        for dev in path_devices(b.network, breaker, config, fault):
            b.set(f"{dev}.fpi", True)
    b.set_positions({breaker: False})
    rec = b.faults.on_trip(breaker, "51P", 3000.0, None, feeder, b.now - 1.0, 1e9, recloses=False)
    assert rec is not None
    return b.state.configuration(), rec.id


def loads(b: Bench) -> dict[str, complex]:
    return {s: (b.state.load_before(s, b.now).kva if b.state.load_before(s, b.now) else 0j) for s in b.network.sections}


def simulate(net: Network, config: dict[str, bool | None], steps: list) -> dict[str, bool | None]:  # type: ignore[type-arg]
    out = dict(config)
    for s in steps:
        out[s.device] = s.action == "close"
    return out


def oracle(
    net: Network,
    config: dict[str, bool | None],
    zone: set[str],
    feeder: set[str],
    ld: dict[str, complex],
    unusable: set[str],
) -> int:
    """Most customers of `feeder` outside `zone` that any setting of the devices touching the
    healthy part can serve with the zone dead, nothing parallel and nothing beyond its limit."""
    healthy = feeder - zone
    base = dict(config)
    for n in zone:
        for _, d in net.adjacent(n):
            if d is not None and config.get(d) and d not in unusable:
                base[d] = False
    free = sorted(
        {
            d
            for n in healthy
            for _, d in net.adjacent(n)
            if d is not None and d not in unusable and not ({net.devices[d].a, net.devices[d].b} & zone)
        }
    )
    best = 0
    for states in itertools.product((False, True), repeat=len(free)):
        trial = dict(config)
        trial.update(dict(zip(free, states, strict=True)))
        for n in zone:
            for _, d in net.adjacent(n):
                if d is not None and config.get(d) and d not in unusable:
                    trial[d] = False
        en = net.energise(trial)
        if zone & set(en.source_of) or en.loops:
            continue
        est = net.estimate(trial, ld)
        if est.worse_than(net.estimate(base, ld)):
            continue
        best = max(best, net.customers(n for n in healthy if n in en.source_of))
    return best


@pytest.mark.parametrize("feeder", [1, 2, 3])
@pytest.mark.parametrize("section", [1, 2, 3])
def test_every_section_of_every_feeder(feeder: int, section: int) -> None:
    b = bench(n_feeders=3, sections=3, section_load_kw=600.0)
    b.normal(loads_kw={}, pf=0.95)
    b.set_loads({}, default_kw=600.0)
    b.remember_loads()
    breaker, fault = f"CB-{feeder}", f"LINE-{feeder}/{section}"
    config, _ = lockout(b, breaker, fault)
    location = locate(b.network, breaker, config, {d: b.state.fpi(d) for d in b.network.devices})
    assert location.zone == (fault,)
    result = plan(b.network, breaker, config, location, loads(b))
    after = simulate(b.network, config, result.steps)
    en = b.network.energise(after)
    assert not en.energised(fault)
    assert not en.loops
    assert not b.network.estimate(after, loads(b)).violations
    assert all(en.energised(f"LINE-{feeder}/{s}") for s in range(1, 4) if s != section)
    assert result.customers_restored == result.customers_interrupted - 200
    kinds = [(s.purpose, s.device) for s in result.steps]
    opened = [d for p, d in kinds if p == "isolate"]
    assert set(opened) == {d for d in b.network.devices_of(fault) if d != breaker and config.get(d)}
    assert (("restore_upstream", breaker) in kinds) == (section > 1)
    # the isolation comes first, the upstream close before any transfer
    purposes = [p for p, _ in kinds]
    assert purposes == sorted(purposes, key=["isolate", "restore_upstream", "split", "transfer"].index)


def test_the_last_feeder_of_the_chain_transfers_backwards_and_the_middle_one_either_way() -> None:
    b = bench(n_feeders=3, sections=3)
    b.normal()
    b.set_loads({}, default_kw=600.0)
    b.remember_loads()
    config, _ = lockout(b, "CB-2", "LINE-2/1")
    location = locate(b.network, "CB-2", config, {d: b.state.fpi(d) for d in b.network.devices})
    result = plan(b.network, "CB-2", config, location, loads(b))
    ties = [s.device for s in result.steps if s.purpose == "transfer"]
    assert len(ties) == 1 and ties[0] in ("TIE-1-2", "TIE-2-3")


def test_capacity_decides_and_the_island_is_split_between_two_neighbours() -> None:
    # feeder 2 fails in its first section; neither neighbour can take both healthy sections,
    # each can take one: split at SW-2-2, LINE-2/2 from... no tie reaches LINE-2/2, so only
    # LINE-2/3 comes back through one tie (the other is a needless close).
    b = bench(n_feeders=3, sections=3)
    b.normal()
    b.set_loads(
        {
            "XFMR-1-1": 2500.0,
            "XFMR-1-2": 2400.0,
            "XFMR-1-3": 1200.0,
            "XFMR-3-1": 2500.0,
            "XFMR-3-2": 2400.0,
            "XFMR-3-3": 1200.0,
            "XFMR-2-2": 1800.0,
            "XFMR-2-3": 900.0,
        },
        default_kw=900.0,
    )
    b.remember_loads()
    config, _ = lockout(b, "CB-2", "LINE-2/1")
    location = Location(zone=("LINE-2/1",), method="test")
    ld = loads(b)
    result = plan(b.network, "CB-2", config, location, ld)
    feeder = set(feeder_tree(b.network, "CB-2", config)[0])
    best = oracle(b.network, config, {"LINE-2/1"}, feeder, ld, set())
    assert result.customers_restored == best
    after = simulate(b.network, config, result.steps)
    assert not b.network.estimate(after, ld).worse_than(b.network.estimate(config, ld))
    assert result.left_out and "LINE-2/1" in result.left_out


def test_missing_indicators_fall_back_on_distance_from_the_fault_current() -> None:
    b = bench(n_feeders=1, sections=3, line_length_m=6000.0)
    b.normal()
    b.remember_loads()
    config, _ = lockout(b, "CB-1", "LINE-1/2", indicators=False)
    for dev in ("SW-1-1", "SW-1-2"):
        b.set(f"{dev}.fpi", None, good=False)
    z_per_m = abs(b.network.sections["LINE-1/1"].z_ohm) / 2000.0
    # a bolted fault 3 km out, seen from an 11 kV bus that sags to 40 %
    i_fault = 4400.0
    v_kv = SQRT3 * i_fault * z_per_m * 3000.0 / 1000.0
    d = estimate_distance_m(b.network, "CB-1", i_fault, v_kv)
    assert d == pytest.approx(3000.0)
    location = locate(b.network, "CB-1", config, {d_: b.state.fpi(d_) for d_ in b.network.devices}, distance_m=d)
    assert location.zone == ("LINE-1/2",)
    assert "distance" in location.method
    no_distance = locate(b.network, "CB-1", config, {d_: None for d_ in b.network.devices})
    assert set(no_distance.zone) == {"LINE-1/1", "LINE-1/2", "LINE-1/3"}


def test_a_device_that_cannot_be_used_widens_the_isolated_zone() -> None:
    b = bench(n_feeders=2, sections=3)
    b.normal()
    b.remember_loads()
    config, _ = lockout(b, "CB-1", "LINE-1/2")
    location = Location(zone=("LINE-1/2",), method="test")
    result = plan(b.network, "CB-1", config, location, loads(b), unusable={"SW-1-2": "in local control"})
    assert set(result.zone) == {"LINE-1/2", "LINE-1/3"}
    assert "SW-1-2" not in [s.device for s in result.steps]
    result = plan(b.network, "CB-1", config, location, loads(b), unusable={"SW-1-1": "stuck"})
    assert set(result.zone) == {"LINE-1/1", "LINE-1/2"}
    assert "CB-1" not in [s.device for s in result.steps]


@settings(max_examples=60, deadline=None)
@given(
    fault_feeder=st.integers(1, 3),
    fault_section=st.integers(1, 3),
    kw=st.lists(st.floats(50.0, 3000.0), min_size=9, max_size=9),
    broken=st.sets(
        st.sampled_from(["SW-1-1", "SW-1-2", "SW-2-1", "SW-2-2", "SW-3-1", "SW-3-2", "TIE-1-2", "TIE-2-3"]), max_size=2
    ),
)
def test_flisr_invariants(fault_feeder: int, fault_section: int, kw: list[float], broken: set[str]) -> None:
    b = bench(n_feeders=3, sections=3)
    b.normal()
    names = [f"XFMR-{k}-{s}" for k in range(1, 4) for s in range(1, 4)]
    b.set_loads(dict(zip(names, kw, strict=True)))
    config0 = b.state.configuration()
    assume(not b.network.estimate(config0, {s: (b.state.section_load(s).kva) for s in b.network.sections}).violations)
    b.remember_loads()
    breaker, fault = f"CB-{fault_feeder}", f"LINE-{fault_feeder}/{fault_section}"
    config, _ = lockout(b, breaker, fault)
    location = locate(b.network, breaker, config, {d: b.state.fpi(d) for d in b.network.devices})
    assert fault in location.zone
    ld = loads(b)
    unusable = {d: "failed" for d in broken}
    result = plan(b.network, breaker, config, location, ld, unusable=unusable)
    assert not {s.device for s in result.steps} & broken
    # play it step by step: no close ever energises the fault
    trial = dict(config)
    for step in result.steps:
        before = b.network.energise(trial)
        trial[step.device] = step.action == "close"
        after = b.network.energise(trial)
        if step.action == "close":
            assert not after.energised(fault), f"{step.device} closes onto the fault"
            assert not after.loops
        assert set(after.source_of) >= set(before.source_of) or step.action == "open"
    en = b.network.energise(trial)
    assert not en.energised(fault)
    assert not en.loops
    assert not b.network.estimate(trial, ld).worse_than(b.network.estimate(config, ld))
    feeder = set(feeder_tree(b.network, breaker, config)[0])
    zone = set(result.zone)
    assert result.customers_restored == oracle(b.network, config, zone, feeder, ld, set(broken))


def test_an_indicator_latched_by_an_earlier_event_is_not_evidence() -> None:
    from gateway.switching.flisr import FlisrController, FlisrSettings

    b = bench(n_feeders=2, sections=3)
    b.normal()
    b.remember_loads()
    b.set("SW-1-1.fpi", True)  # left latched by a transient fault beyond SW-1-1
    b.now += 30.0
    config = b.state.configuration({"CB-1": False})
    feeder = b.network.downstream("CB-1", {**config, "CB-1": True})
    b.set_positions({"CB-1": False})
    record = b.faults.on_trip("CB-1", "51P", 3000.0, None, feeder, b.now, 1e9, recloses=False)
    assert record is not None
    flisr = FlisrController(b.network, b.state, b.faults, FlisrSettings(settle_s=0.0), unusable=lambda _d: None)
    flisr.on_lockout("CB-1", b.now)
    [seq] = flisr.tick(b.now, 1e9)
    # the stale indicator does not move the fault beyond SW-1-1: the first section stays suspect
    assert "LINE-1/1" in seq.plan["located_zone"]
    assert not any(s.device == "CB-1" and s.action == "close" for s in seq.steps)


def test_a_breaker_that_trips_again_after_flisr_stops_automatic_restoration() -> None:
    from gateway.switching.flisr import FlisrController, FlisrSettings

    b = bench(n_feeders=2, sections=3)
    b.normal()
    b.remember_loads()
    config, record_id = lockout(b, "CB-1", "LINE-1/2")
    flisr = FlisrController(b.network, b.state, b.faults, FlisrSettings(settle_s=0.0), unusable=lambda _d: None)
    assert flisr.on_lockout("CB-1", b.now) is None
    [seq] = flisr.tick(b.now, 1e9)
    assert b.faults.get(record_id).zone == ("LINE-1/2",)
    message = flisr.on_lockout("CB-1", b.now + 5, 1e9)
    assert message is not None and "tripped again" in message
    assert set(b.faults.get(record_id).zone) == {"LINE-1/1", "LINE-1/2", "LINE-1/3"}
    assert flisr.tick(b.now + 10, 1e9) == []


def _example_bench() -> Bench:
    from hil.rig import example_document

    b = bench(example_document())
    kw = {
        "XFMR-101": 650.0,
        "XFMR-102": 550.0,
        "XFMR-103": 400.0,
        "XFMR-141": 900.0,
        "XFMR-142": 800.0,
        "XFMR-143": 700.0,
        "XFMR-161": 700.0,
        "XFMR-162": 600.0,
        "XFMR-163": 600.0,
    }
    b.normal(loads_kw=kw)
    b.set("SUB-003.bus_voltage_kv", 11.22)
    b.remember_loads()
    return b


EXAMPLE_SECTIONS = [(f"CB-0{f}", f"LINE-0{f}/{s}") for f in (44, 45, 46) for s in (1, 2, 3)]


@pytest.mark.parametrize(("breaker", "fault"), EXAMPLE_SECTIONS)
def test_every_section_of_every_example_feeder(breaker: str, fault: str) -> None:
    b = _example_bench()
    config, _ = lockout(b, breaker, fault)
    location = locate(b.network, breaker, config, {d: b.state.fpi(d) for d in b.network.devices})
    assert location.zone == (fault,)
    ld = loads(b)
    result = plan(b.network, breaker, config, location, ld, source_voltage_pu=b.state.source_voltages())
    after = simulate(b.network, config, result.steps)
    en = b.network.energise(after)
    assert not en.energised(fault) and not en.loops
    assert not b.network.estimate(after, ld, source_voltage_pu=b.state.source_voltages()).violations
    feeder = set(feeder_tree(b.network, breaker, config)[0])
    assert result.customers_restored == oracle(b.network, config, {fault}, feeder, ld, set())
    # at the example's load every healthy section comes back
    assert result.customers_left_out == b.network.sections[fault].customers
