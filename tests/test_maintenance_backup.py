"""Backup plans A/B/C for taking a station transformer out, on the example substation with its two
station transformers (XFMR-234 feeds LINE-045, XFMR-235 LINE-044 and LINE-046) and the tie to
SUB-006: capacity checked by the power-flow estimate, sequences validated, critical customers
first and never shed, the neighbour asked through its interface (a test double here)."""

from __future__ import annotations

import pytest

from gateway.config import validate
from gateway.maintenance import backup
from gateway.maintenance.backup import BackupSettings, MessageError, TransferOffer, TransferRequest
from gateway.switching.faults import FaultBook
from gateway.switching.network import Network
from gateway.switching.sequences import Sequence, Step
from gateway.switching.sequences import validate as validate_sequence
from hil.scenarios.predictive_maintenance import site

# night loads of each section (kW + j kvar), close to what the simulator gives at 02:00
NIGHT = {
    "LINE-044/1": 520 + 200j,
    "LINE-044/2": 510 + 200j,
    "LINE-044/3": 450 + 180j,
    "LINE-045/1": 660 + 280j,
    "LINE-045/2": 1090 + 360j,
    "LINE-045/3": 285 + 95j,
    "LINE-046/1": 1250 + 600j,
    "LINE-046/2": 1150 + 550j,
    "LINE-046/3": 320 + 130j,
}
OUT = "XFMR-234"


@pytest.fixture(scope="module")
def network() -> Network:
    return Network.from_site(validate(site()))


def offering(kva: float, log: list[TransferRequest] | None = None) -> backup.AskNeighbour:
    def ask(request: TransferRequest) -> TransferOffer | None:
        if log is not None:
            log.append(request)
        return TransferOffer(request.request_id, request.tie, kva, request.window_end, "SUB-006 (test double)")

    return ask


def silent(_request: TransferRequest) -> TransferOffer | None:
    return None


def plans(
    network: Network,
    ask: backup.AskNeighbour | None,
    loads: dict[str, complex] | None = None,
    config: dict[str, bool | None] | None = None,
    faults: FaultBook | None = None,
    unusable: dict[str, str] | None = None,
) -> dict[str, backup.BackupPlan]:
    out = backup.plan_backup(
        network,
        config or network.normal_configuration(),
        loads or NIGHT,
        OUT,
        ask_neighbour=ask,
        substation="SUB-003",
        window=(1000.0, 1000.0 + 6 * 3600),
        faults=faults,
        unusable=unusable,
    )
    return {p.name: p for p in out}


def final_config(network: Network, plan: backup.BackupPlan) -> dict[str, bool | None]:
    config: dict[str, bool | None] = dict(network.normal_configuration())
    for step in plan.steps:
        config[step.device] = step.action == "close"
    return config


def test_every_plan_takes_the_transformer_out_and_keeps_everybody_else_supplied(network: Network) -> None:
    before = network.energise(network.normal_configuration())
    for plan in plans(network, offering(1500)).values():
        en = network.energise(final_config(network, plan))
        assert not en.energised(OUT), plan.name
        assert not en.loops
        others = [n for n in before.source_of if n in network.sections and not n.startswith("LINE-045") and n != OUT]
        assert all(en.energised(n) for n in others), plan.name
        assert sorted(plan.restored) == sorted(n for n in en.source_of if n.startswith("LINE-045"))
        assert plan.validated and not plan.validation, plan.validation
        assert plan.steps[0] == backup.PlanStep("CB-045", "open", "isolate the transformer's feeders")
        assert plan.steps[-1] == backup.PlanStep("CB-234P", "open", "de-energise the transformer")
        assert plan.switching_time_s == 90.0 * len(plan.steps)


def test_plan_a_uses_this_substation_only_and_its_limits_hold(network: Network) -> None:
    a = plans(network, offering(1500))["A"]
    assert "TIE-046-061" not in {s.device for s in a.steps}
    assert 0 < a.covered_kva < a.required_kva  # the adjacent transformer takes what it can, not all
    est = network.estimate(final_config(network, a), NIGHT)
    assert not est.violations
    assert est.node_current_a["XFMR-235"] <= network.sections["XFMR-235"].ampacity_a
    assert a.loading["transformer"] <= 1.0


def test_plan_b_asks_the_neighbour_for_the_gap_and_uses_what_it_offers(network: Network) -> None:
    asked: list[TransferRequest] = []
    p = plans(network, offering(1500, asked))
    a, b = p["A"], p["B"]
    assert len(asked) == 1
    request = asked[0]
    assert request.tie == "TIE-046-061" and request.to_substation == "SUB-006"
    assert request.kva_requested == pytest.approx(a.required_kva - a.covered_kva)
    assert ("TIE-046-061", "close") in {(s.device, s.action) for s in b.steps}
    assert b.covered_kva > a.covered_kva
    assert b.offer is not None and b.offer.kva_offered == 1500
    est = network.estimate(final_config(network, b), NIGHT)
    assert est.source_load_kva["EXT:TIE-046-061"] <= 1500 + 1e-6
    assert "LINE-046/3" in b.brief_interruption  # moved onto the neighbour: a brief interruption


def test_a_silent_neighbour_leaves_plan_b_as_plan_a_and_says_so(network: Network) -> None:
    p = plans(network, silent)
    assert p["B"].restored == p["A"].restored
    assert p["B"].offer is None
    assert any("no offer" in n for n in p["B"].notes)
    small = plans(network, offering(100))
    assert small["B"].offer is not None
    est = network.estimate(final_config(network, small["B"]), NIGHT)
    assert est.source_load_kva.get("EXT:TIE-046-061", 0.0) <= 100 + 1e-6  # never beyond what was offered


def test_plan_c_sheds_non_critical_customers_only_and_restores_every_critical_one(network: Network) -> None:
    p = plans(network, offering(1500))
    c = p["C"]
    assert c.critical_restored == c.critical_total == 3  # the hospital's two supplies and the water works
    assert c.covered_kva >= p["B"].covered_kva
    for section, customers in c.shed_customers.items():
        info = network.sections[section]
        assert 0 < customers <= info.customers - info.critical_customers
        assert section not in p["B"].restored  # only what B could not carry is shed
    assert c.customers_restored == c.customers_total - c.customers_shed
    loads = dict(NIGHT)
    for section, kva in c.shed_kva.items():
        loads[section] = NIGHT[section] * (1 - kva / abs(NIGHT[section]))
    assert not network.estimate(final_config(network, c), loads).violations


def test_light_loads_need_neither_the_neighbour_nor_shedding(network: Network) -> None:
    light = {k: v * 0.3 for k, v in NIGHT.items()}
    asked: list[TransferRequest] = []
    p = plans(network, offering(1500, asked), loads=light)
    assert p["A"].covered_kva == pytest.approx(p["A"].required_kva)
    assert not asked and any("nothing to ask" in n for n in p["B"].notes)
    assert not p["C"].shed_kva


def test_a_faulted_section_is_never_energised_and_an_unusable_device_never_used(network: Network) -> None:
    faults = FaultBook()
    record = faults.on_trip(
        "CB-045", "50P", 3000.0, None, ("LINE-045/1", "LINE-045/2", "LINE-045/3"), 0.0, 0.0, recloses=False
    )
    assert record is not None
    faults.locate(record.id, ("LINE-045/2",), "test", 0.0)
    for plan in plans(network, offering(1500), faults=faults).values():
        assert "LINE-045/2" not in plan.restored
        assert not network.energise(final_config(network, plan)).energised("LINE-045/2")
    for plan in plans(network, offering(1500), unusable={"TIE-045-046": "tagged"}).values():
        assert "TIE-045-046" not in {s.device for s in plan.steps}


def test_a_distribution_transformer_has_no_switching_plan(network: Network) -> None:
    out = backup.plan_backup(network, network.normal_configuration(), NIGHT, "XFMR-101")
    assert [p.name for p in out] == ["A", "B", "C"]
    assert all(not p.steps and "no switching" in p.notes[0] for p in out)


def test_more_devices_than_the_search_allows_keeps_the_nearest(network: Network) -> None:
    p = backup.plan_backup(
        network,
        network.normal_configuration(),
        NIGHT,
        OUT,
        ask_neighbour=offering(1500),
        settings=BackupSettings(max_devices=3),
    )
    assert all(p_.validated for p_ in p)


def test_request_and_offer_messages_round_trip_and_refuse_bad_input() -> None:
    req = TransferRequest("XFER-1", "SUB-003", "TIE-046-061", "SUB-006/LINE-061", 10.0, 20.0, 800.0, "planned")
    assert TransferRequest.from_dict(req.to_dict()) == req
    offer = TransferOffer("XFER-1", "TIE-046-061", 700.0, 20.0, "SUB-006", "ok")
    assert TransferOffer.from_dict(offer.to_dict()) == offer
    with pytest.raises(MessageError, match="window"):
        TransferRequest.from_dict({**req.to_dict(), "window_end": 5.0})
    with pytest.raises(MessageError, match="kva_offered"):
        TransferOffer.from_dict({**offer.to_dict(), "kva_offered": "lots"})
    with pytest.raises(MessageError, match="type"):
        TransferOffer.from_dict(req.to_dict())
    with pytest.raises(MessageError, match="tie"):
        TransferRequest.from_dict({**req.to_dict(), "tie": "../etc"})


def test_the_declared_capacity_answers_for_a_neighbour_not_yet_connected(network: Network) -> None:
    ask = backup.declared_capacity(network)
    req = TransferRequest("XFER-2", "SUB-003", "TIE-046-061", "SUB-006/LINE-061", 0.0, 1.0, 800.0)
    offer = ask(req)
    assert offer is not None and offer.kva_offered == 1000.0  # what the site file declares, whatever was asked
    assert ask(TransferRequest("XFER-3", "SUB-003", "NO-SUCH-TIE", "SUB-009/L", 0.0, 1.0, 10.0)) is None


def test_every_plan_has_a_validated_way_back_to_the_normal_configuration(network: Network) -> None:
    normal = network.normal_configuration()
    for plan in plans(network, offering(1000)).values():
        assert plan.return_steps[0] == backup.PlanStep("CB-234P", "close", "re-energise the transformer")
        config = final_config(network, plan)
        for step in plan.return_steps:
            config[step.device] = step.action == "close"
            assert not network.energise(config).loops, (plan.name, step)  # break before make, always
        assert {d: bool(v) for d, v in config.items()} == {d: bool(v) for d, v in normal.items()}, plan.name
        assert plan.return_validation == [], (plan.name, plan.return_validation)
        assert plan.to_dict()["return_validated"] is True


def test_the_way_back_relieves_the_adjacent_transformer_before_it_takes_its_own_load_back(network: Network) -> None:
    """Plan C leaves XFMR-235 carrying part of LINE-045 and the neighbour LINE-046/3: giving
    LINE-046/3 back first would put XFMR-235 beyond its rating, so LINE-045 goes home first."""
    c = plans(network, offering(1000))["C"]
    order = [(s.action, s.device) for s in c.return_steps]
    assert (
        order.index(("open", "TIE-044-045"))
        < order.index(("close", "CB-045"))
        < order.index(("open", "TIE-046-061"))
        < order.index(("close", "SW-046-2"))
    )
    wrong = [
        "close CB-234P",
        "open TIE-046-061",
        "close SW-046-2",
        "open TIE-045-046",
        "open TIE-044-045",
        "close CB-045",
        "close SW-045-2",
    ]
    seq = Sequence(
        id="wrong",
        name="wrong order",
        created_by="test",
        created=0.0,
        steps=tuple(Step(device=w.split()[1], action=w.split()[0]) for w in wrong),
    )
    problems = validate_sequence(seq, network, final_config(network, c), FaultBook(), NIGHT)
    assert problems and "XFMR-235" in problems[0] and "close SW-046-2" in problems[0]


def test_a_way_back_through_an_overloaded_normal_configuration_says_so(network: Network) -> None:
    heavy = {k: v * 1.4 for k, v in NIGHT.items()}
    b = plans(network, offering(1000), loads=heavy)["B"]
    assert b.return_validation and "normal configuration itself is beyond limits" in b.return_validation[-1]


def test_a_transformer_whose_feeder_is_already_open_says_there_is_nothing_to_back_up(network: Network) -> None:
    config = dict(network.normal_configuration())
    config["CB-045"] = None  # its poll timed out: the position is unknown
    p = plans(network, offering(1000), config=config)
    for plan in p.values():
        assert plan.required_kva == 0 and plan.restored == []
        assert any("supplies no section" in n and "CB-045 unknown" in n for n in plan.notes), plan.notes
