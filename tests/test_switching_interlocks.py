"""The interlock table, row by row, through the switching authority on a generated site."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.switching.authority import PointWrite, ProtectionOperate, Refused
from gateway.switching.interlocks import ROWS, TABLE
from gateway.switching.model import Kind, Operation, Origin, Override, Role, Via
from tests.support.switching import Bench, bench

LOCAL_OP = Origin(via=Via.LOCAL, who="local:alice", role=Role.OPERATOR)
LOCAL_ENG = Origin(via=Via.LOCAL, who="local:erin", role=Role.ENGINEER)
SCADA_OP = Origin(via=Via.MQTT, who="scada:ncc", role=Role.OPERATOR)
SCADA_ENG = Origin(via=Via.MQTT, who="scada:eng", role=Role.ENGINEER)
AGENT = Origin(via=Via.AGENT, who="agent:SUB-1")
FLISR = Origin(via=Via.FLISR, who="flisr")


def op(kind: Kind, target: str, origin: Origin = LOCAL_OP, **kw: object) -> Operation:
    return Operation(kind=kind, target=target, origin=origin, **kw)  # type: ignore[arg-type]


def refusal(b: Bench, operation: Operation) -> str:
    with pytest.raises(Refused) as info:
        b.authority.request(operation, b.now)
    return info.value.interlock or info.value.reason


def remote(b: Bench, kind: Kind, target: str, origin: Origin, **kw: object) -> object:
    sel = b.authority.select(op(kind, target, origin, **kw), b.now)
    return b.authority.request(op(kind, target, origin, select_id=sel.select_id, **kw), b.now)


@pytest.fixture
def b() -> Bench:
    site = bench(n_feeders=3, sections=3)
    site.normal()
    return site


def test_every_row_has_a_test_below() -> None:
    tested = {
        "not_selected",
        "local_mode",
        "position_unknown",
        "maintenance",
        "protection_lockout",
        "agent_locked_out",
        "fault_indicated",
        "parallel",
        "overload",
        "interrupting_capacity",
    }
    assert {r.code for r in TABLE} == tested


def test_a_plain_open_passes_and_goes_to_the_command_point(b: Bench) -> None:
    accepted = b.authority.request(op(Kind.OPEN, "SW-1-1"), b.now)
    assert accepted.writes == (PointWrite("SW-1-1.trip_cmd", True),)
    assert accepted.expect_closed is False


def test_a_protected_breaker_is_operated_through_protection(b: Bench) -> None:
    accepted = b.authority.request(op(Kind.OPEN, "CB-1"), b.now)
    assert accepted.writes == (ProtectionOperate("CB-1", "open", False),)


def test_not_selected_remote_needs_select(b: Bench) -> None:
    assert refusal(b, op(Kind.OPEN, "SW-1-1", SCADA_OP)) == "not_selected"
    assert remote(b, Kind.OPEN, "SW-1-1", SCADA_OP)
    # a select is for one origin and one operation
    sel = b.authority.select(op(Kind.OPEN, "SW-2-1", SCADA_OP), b.now)
    other = Origin(via=Via.MQTT, who="scada:other", role=Role.OPERATOR)
    with pytest.raises(Refused) as info:
        b.authority.request(op(Kind.OPEN, "SW-2-1", other, select_id=sel.select_id), b.now)
    assert info.value.reason == "not_selected"
    # the holder's reservation blocks a local operation meanwhile
    sel = b.authority.select(op(Kind.OPEN, "SW-3-1", SCADA_OP), b.now)
    assert refusal(b, op(Kind.OPEN, "SW-3-1")) == "reserved"
    # an override never stands in for a select
    assert refusal(b, op(Kind.OPEN, "SW-1-2", SCADA_ENG, override=Override(reason="urgent"))) == "not_selected"


def test_local_mode_refuses_every_origin_and_an_unknown_mode_too(b: Bench) -> None:
    b.set("SW-1-1.local", True)
    for origin in (LOCAL_ENG, AGENT, FLISR):
        assert refusal(b, op(Kind.OPEN, "SW-1-1", origin, override=Override(reason="x"))) == "local_mode"
    b.set("SW-1-1.local", None, good=False)
    assert refusal(b, op(Kind.OPEN, "SW-1-1")) == "local_mode"
    b.set("SW-1-1.local", False)
    assert b.authority.request(op(Kind.OPEN, "SW-1-1"), b.now)


def test_position_unknown_is_refused_and_only_a_local_engineer_may_override(b: Bench) -> None:
    b.set("SW-1-1.closed", None, good=False)
    assert refusal(b, op(Kind.OPEN, "SW-1-1")) == "position_unknown"
    assert refusal(b, op(Kind.OPEN, "SW-1-1", override=Override(reason="checked by eye"))) == "position_unknown"
    with pytest.raises(Refused):
        remote(b, Kind.OPEN, "SW-1-1", SCADA_ENG, override=Override(reason="checked by eye"))
    accepted = b.authority.request(
        op(Kind.OPEN, "SW-1-1", LOCAL_ENG, override=Override(reason="checked by eye")), b.now
    )
    assert [r.code for r in accepted.overridden] == ["position_unknown"]


def test_maintenance_state_and_tags(b: Bench) -> None:
    b.agent_states["SW-1-1"] = "Maintenance"
    assert refusal(b, op(Kind.OPEN, "SW-1-1")) == "maintenance"
    assert refusal(b, op(Kind.OPEN, "SW-1-1", override=Override(reason="r"))) == "maintenance"
    assert b.authority.request(op(Kind.OPEN, "SW-1-1", LOCAL_ENG, override=Override(reason="r")), b.now)
    b.agent_states.clear()
    b.authority.add_tag("SW-2-1", LOCAL_OP, "crew on pole 17", b.now)
    assert refusal(b, op(Kind.CLOSE, "SW-2-1")) == "maintenance"
    assert refusal(b, op(Kind.OPEN, "SW-2-1", AGENT)) == "maintenance"
    b.authority.remove_tags("SW-2-1", LOCAL_OP, "crew clear")
    assert b.authority.request(op(Kind.OPEN, "SW-2-1"), b.now)


def test_protection_lockout_needs_an_authorised_close_with_a_reason(b: Bench) -> None:
    b.set_positions({"CB-1": False})
    b.lockouts.add("CB-1")
    assert refusal(b, op(Kind.CLOSE, "CB-1")) == "protection_lockout"
    assert refusal(b, op(Kind.CLOSE, "CB-1", AGENT)) == "protection_lockout"
    assert refusal(b, op(Kind.CLOSE, "CB-1", FLISR)) == "protection_lockout"
    with pytest.raises(ValueError):
        Override(reason=" ")
    accepted = remote(
        b,
        Kind.CLOSE,
        "CB-1",
        SCADA_OP,
        override=Override(reason="line patrolled", rows=frozenset({"protection_lockout"})),
    )
    assert accepted.writes == (ProtectionOperate("CB-1", "close", True),)  # type: ignore[attr-defined]
    viewer = Origin(via=Via.LOCAL, who="local:vic", role=Role.VIEWER)
    assert refusal(b, op(Kind.CLOSE, "CB-1", viewer, override=Override(reason="r"))) == "protection_lockout"
    # FLISR passes it only with an override it records
    accepted = b.authority.request(
        op(
            Kind.CLOSE,
            "CB-1",
            FLISR,
            override=Override(reason="FLISR: fault isolated", rows=frozenset({"protection_lockout"})),
        ),
        b.now,
    )
    assert accepted.overridden[0].code == "protection_lockout"


def test_agent_locked_out(b: Bench) -> None:
    b.set_positions({"CB-2": False})
    b.agent_states["CB-2"] = "Locked_Out"
    assert refusal(b, op(Kind.CLOSE, "CB-2")) == "agent_locked_out"
    assert b.authority.request(op(Kind.CLOSE, "CB-2", override=Override(reason="reset by crew")), b.now)
    # opening is never refused for it
    assert b.authority.request(op(Kind.OPEN, "CB-2"), b.now)


def _fault_on_feeder_1(b: Bench) -> str:
    b.set_positions({"CB-1": False})
    feeder = b.network.downstream("CB-1", b.state.configuration({"CB-1": True}))
    rec = b.faults.on_trip("CB-1", "51P", 3200.0, None, feeder, b.now, 1e9, recloses=True)
    assert rec is not None
    b.faults.on_lockout("CB-1", 1e9)
    return rec.id


def test_fault_indicated_cannot_be_overridden_remotely(b: Bench) -> None:
    rec = _fault_on_feeder_1(b)
    assert refusal(b, op(Kind.CLOSE, "CB-1")) == "fault_indicated"
    with pytest.raises(Refused) as info:
        remote(b, Kind.CLOSE, "CB-1", SCADA_ENG, override=Override(reason="sure"))
    assert info.value.interlock == "fault_indicated"
    # a tie that would back-feed the faulted feeder is refused the same way
    assert refusal(b, op(Kind.CLOSE, "TIE-1-2")) == "fault_indicated"
    # located and isolated: closing upstream of the open switch no longer energises the fault
    b.faults.locate(rec, ["LINE-1/2"], "fault-passage indicators", 1e9)
    b.set_positions({"SW-1-1": False, "SW-1-2": False})
    accepted = b.authority.request(op(Kind.CLOSE, "CB-1", override=Override(reason="isolated")), b.now)
    assert accepted.operation.target == "CB-1"
    b.set_positions({"CB-1": True})
    assert refusal(b, op(Kind.CLOSE, "SW-1-1")) == "fault_indicated"
    # a local engineer may still decide otherwise, on record
    assert b.authority.request(op(Kind.CLOSE, "SW-1-1", LOCAL_ENG, override=Override(reason="cable tested")), b.now)


def test_parallel_sources_and_loops_are_refused_unless_allowed() -> None:
    b = bench(n_feeders=2, sections=2, external_tie=True)
    b.normal()
    assert refusal(b, op(Kind.CLOSE, "TIE-1-2")) == "parallel"
    assert refusal(b, op(Kind.CLOSE, "TIE-EXT")) == "parallel"
    # with the local side dead, the external tie may pick the section up
    b.set_positions({"SW-2-1": False})
    assert b.authority.request(op(Kind.CLOSE, "TIE-EXT"), b.now)
    from tests.support.feeder_sites import feeder_site

    doc = feeder_site(2, 2)
    for agent in doc["agents"]:
        if agent["id"] == "TIE-1-2":
            agent["attributes"]["allow_parallel"] = True
    allowed = bench(doc)
    allowed.normal()
    assert allowed.authority.request(op(Kind.CLOSE, "TIE-1-2"), allowed.now)


def test_overload_of_the_receiving_feeder_is_refused() -> None:
    b = bench(n_feeders=2, sections=3)
    b.normal(loads_kw={"XFMR-2-1": 2500.0, "XFMR-2-2": 2000.0, "XFMR-2-3": 1500.0})
    b.remember_loads()
    b.set_positions({"SW-1-2": False})
    b.now += 5
    message = refusal(b, op(Kind.CLOSE, "TIE-1-2"))
    assert message == "overload"
    accepted = b.authority.request(op(Kind.CLOSE, "TIE-1-2", override=Override(reason="short transfer")), b.now)
    assert accepted.overridden[0].code == "overload"
    light = bench(n_feeders=2, sections=3)
    light.normal(loads_kw={"XFMR-2-1": 300.0, "XFMR-2-2": 300.0, "XFMR-2-3": 300.0})
    light.remember_loads()
    light.set_positions({"SW-1-2": False})
    assert light.authority.request(op(Kind.CLOSE, "TIE-1-2"), light.now)


def test_interrupting_capacity_of_a_load_break_switch(b: Bench) -> None:
    b.set("SW-1-1.ia", 3200.0)
    assert refusal(b, op(Kind.OPEN, "SW-1-1", LOCAL_ENG, override=Override(reason="x"))) == "interrupting_capacity"
    b.set("SW-1-1.ia", 120.0)
    assert b.authority.request(op(Kind.OPEN, "SW-1-1"), b.now)


def test_every_refusal_is_audited_with_its_code_and_every_override_with_role_and_reason(b: Bench) -> None:
    b.set_positions({"CB-2": False})
    b.lockouts.add("CB-2")
    b.authority.take_audit()
    with pytest.raises(Refused):
        b.authority.request(op(Kind.CLOSE, "CB-2"), b.now)
    b.authority.request(op(Kind.CLOSE, "CB-2", override=Override(reason="after patrol")), b.now)
    audit = b.authority.take_audit()
    assert [e.kind for e in audit] == ["switching.refused", "switching.accepted"]
    assert audit[0].record["interlock"] == "protection_lockout"
    assert audit[0].record["origin"] == "local:alice" and audit[0].record["role"] == "operator"
    assert audit[1].record["overridden"][0]["interlock"] == "protection_lockout"
    assert audit[1].record["override"]["reason"] == "after patrol"


def test_check_back_done_and_timeout(b: Bench) -> None:
    accepted = b.authority.request(op(Kind.OPEN, "SW-1-1"), b.now)
    assert b.authority.tick(b.now + 1) == []
    b.set_positions({"SW-1-1": False})
    [done] = b.authority.tick(b.now + 1)
    assert done.ok and done.op_id == accepted.op_id
    b.authority.request(op(Kind.OPEN, "SW-2-1"), b.now)
    [failed] = b.authority.tick(b.now + 11)
    assert not failed.ok and "still reads closed" in failed.message


def test_set_points_pass_the_rows_that_apply_to_them() -> None:
    b = bench(n_feeders=1, sections=2)
    b.normal()
    with pytest.raises(Refused) as info:
        b.authority.request(
            Operation(kind=Kind.TAP_CHANGE, target="XFMR-1-1", origin=LOCAL_OP, point="tap_setpoint", value=2), b.now
        )
    assert info.value.reason == "bad_args"  # this transformer has no tap changer point
    accepted = b.authority.request(
        Operation(kind=Kind.INDICATOR_RESET, target="SW-1-1", origin=AGENT, point="fpi_reset", value=True), b.now
    )
    assert accepted.writes == (PointWrite("SW-1-1.fpi_reset", True),)
    b.agent_states["SW-1-1"] = "Maintenance"
    with pytest.raises(Refused) as info:
        b.authority.request(
            Operation(kind=Kind.INDICATOR_RESET, target="SW-1-1", origin=AGENT, point="fpi_reset", value=True), b.now
        )
    assert info.value.interlock == "maintenance"


# --------------------------------------------------------------------------- properties


DEVICES = ["CB-1", "CB-2", "SW-1-1", "SW-1-2", "SW-2-1", "SW-2-2", "TIE-1-2"]


@settings(max_examples=150, deadline=None)
@given(
    positions=st.fixed_dictionaries({d: st.booleans() for d in DEVICES}),
    loads=st.lists(st.floats(0.0, 4000.0), min_size=6, max_size=6),
    fault_zone=st.sets(
        st.sampled_from(["LINE-1/1", "LINE-1/2", "LINE-1/3", "LINE-2/1", "LINE-2/2", "LINE-2/3"]), max_size=2
    ),
    target=st.sampled_from(DEVICES),
)
def test_an_accepted_close_never_energises_a_fault_parallels_or_overloads(
    positions: dict[str, bool], loads: list[float], fault_zone: set[str], target: str
) -> None:
    b = bench(n_feeders=2, sections=3)
    names = ["XFMR-1-1", "XFMR-1-2", "XFMR-1-3", "XFMR-2-1", "XFMR-2-2", "XFMR-2-3"]
    b.normal(loads_kw=dict(zip(names, loads, strict=True)))
    b.remember_loads()
    b.set_positions(positions)
    if fault_zone:
        rec = b.faults.on_trip("CB-1", "50P", 4000.0, None, sorted(fault_zone), b.now, 1e9, recloses=False)
        assert rec is not None
    config = b.state.configuration()
    before = b.network.energise(config)
    try:
        b.authority.request(op(Kind.CLOSE, target, AGENT), b.now)
    except Refused as exc:
        assert exc.refusals or exc.reason in ("bad_args", "reserved")
        assert all(r.code in ROWS for r in exc.refusals)
        return
    before_config = dict(config)
    config[target] = True
    after = b.network.energise(config)
    newly = set(after.source_of) - set(before.source_of)
    assert not newly & fault_zone
    assert target not in after.loops
    if newly:
        ld = b.authority.loads_kva(b.now)
        assert not b.network.estimate(config, ld).worse_than(b.network.estimate(before_config, ld))


def test_a_far_side_live_that_the_model_cannot_explain_is_a_source_it_does_not_know(b: Bench) -> None:
    # SW-1-2 open: LINE-1/3 is dead by the model, but SW-1-2 measures 11 kV beyond it (a
    # neighbour's tie closed onto it): closing would parallel that source
    b.set_positions({"SW-1-2": False})
    b.set("SW-1-2.voltage_kv", 11.1)
    assert refusal(b, op(Kind.CLOSE, "SW-1-2", LOCAL_ENG, override=Override(reason="x"))) == "parallel"
    b.set("SW-1-2.voltage_kv", 0.02)
    assert b.authority.request(op(Kind.CLOSE, "SW-1-2"), b.now)
