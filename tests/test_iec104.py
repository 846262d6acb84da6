"""The IEC 104 outstation's deciding half, without sockets: the IOA map generated from the site
file with its overrides, quality bits, dead-bands, and every command answer (select, execute,
deactivate, refusals with their causes) through a real switching authority."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import SiteConfig
from gateway.iec104 import (
    DP_OFF,
    DP_ON,
    QDS_BL,
    QDS_IV,
    QDS_NT,
    QDS_OV,
    QDS_SB,
    CommandHandler,
    CommandRequest,
    Cot,
    MapError,
    Reporter,
    TypeId,
    build_map,
    clock_sync,
    group_samples,
    objects_per_asdu,
    quality_descriptor,
)
from gateway.contract.points import GOOD, PointKind, Quality, QualityReason, Validity
from gateway.switching.model import Kind, Role
from tests.support.feeder_sites import feeder_site
from tests.support.switching import Bench, bench


def _site(doc: dict[str, Any], **iec104: Any) -> SiteConfig:
    doc = dict(doc)
    doc["iec104"] = {"enabled": True, **iec104}
    return SiteConfig.model_validate(doc)


def test_the_map_is_generated_from_the_points_with_types_by_kind_and_role() -> None:
    site = _site(feeder_site(2, 2))
    pmap = build_map(site)
    by_point = {m.point_id: m for m in pmap.monitored}
    assert by_point["CB-1.ia"].type_id is TypeId.M_ME_TF_1
    assert by_point["CB-1.closed"].type_id is TypeId.M_DP_TB_1  # a switching device's position
    assert by_point["SW-1-1.fpi"].type_id is TypeId.M_SP_TB_1
    ioas = [m.ioa for m in pmap.monitored]
    assert ioas == list(range(1001, 1001 + len(ioas)))  # site-file order, consecutive
    doubles = [c for c in pmap.commands if c.setpoint is None]
    assert {c.target for c in doubles} == {"CB-1", "CB-2", "SW-1-1", "SW-2-1", "TIE-1-2"}
    assert [c.ioa for c in doubles] == list(range(5001, 5001 + len(doubles)))
    without_time = build_map(_site(feeder_site(2, 2), time_tags=False))
    assert {m.type_id for m in without_time.monitored} <= {TypeId.M_ME_NC_1, TypeId.M_DP_NA_1, TypeId.M_SP_NA_1}


def test_overrides_move_retype_exclude_and_collisions_are_refused() -> None:
    doc = feeder_site(1, 2)
    pmap = build_map(
        _site(
            doc,
            points=[
                {"id": "CB-1.ia", "ioa": 7000, "type": "M_ME_NC_1", "deadband": 5.0},
                {"id": "CB-1.ib", "exclude": True},
            ],
            commands=[{"target": "CB-1", "ioa": 9000}],
        )
    )
    ia = pmap.by_point["CB-1.ia"]
    assert (ia.ioa, ia.type_id, ia.deadband) == (7000, TypeId.M_ME_NC_1, 5.0)
    assert "CB-1.ib" not in pmap.by_point
    assert pmap.by_command_ioa[9000].target == "CB-1"
    with pytest.raises(MapError, match="IOA 7000"):
        build_map(_site(doc, points=[{"id": "CB-1.ia", "ioa": 7000}, {"id": "CB-1.ic", "ioa": 7000}]))
    with pytest.raises(MapError, match="not a point"):
        build_map(_site(doc, points=[{"id": "NOPE.x", "ioa": 1}]))
    with pytest.raises(MapError, match="does not fit"):
        build_map(_site(doc, points=[{"id": "CB-1.closed", "type": "M_ME_TF_1"}]))
    with pytest.raises(MapError, match="not a switching device"):
        build_map(_site(doc, commands=[{"target": "LINE-1", "ioa": 9}]))


@pytest.mark.parametrize(
    ("quality", "analog", "bits"),
    [
        (GOOD, True, 0),
        (Quality(Validity.INVALID, QualityReason.COMMUNICATION_FAILURE), True, QDS_IV | QDS_NT),
        (Quality(Validity.INVALID, QualityReason.NOT_YET_RECEIVED), False, QDS_IV | QDS_NT),
        (Quality(Validity.QUESTIONABLE, QualityReason.OLD_DATA), True, QDS_NT),
        (Quality(Validity.INVALID, QualityReason.OVERFLOW), True, QDS_IV | QDS_OV),
        (Quality(Validity.INVALID, QualityReason.OVERFLOW), False, QDS_IV),
        (Quality(Validity.QUESTIONABLE, QualityReason.SUBSTITUTED), True, QDS_SB),
        (Quality(Validity.QUESTIONABLE, QualityReason.OPERATOR_BLOCKED), False, QDS_BL),
        (Quality(Validity.QUESTIONABLE, QualityReason.INACCURATE), True, QDS_NT),
        (Quality(Validity.INVALID, QualityReason.DEVICE_EXCEPTION), True, QDS_IV),
    ],
)
def test_quality_maps_to_the_104_quality_bits(quality: Quality, analog: bool, bits: int) -> None:
    assert quality_descriptor(quality, analog) == bits


@given(deadband=st.floats(0.0, 100.0), values=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=40))
def test_an_analog_is_reported_exactly_when_it_leaves_its_deadband(deadband: float, values: list[float]) -> None:
    pmap = build_map(_site(feeder_site(1, 1), points=[{"id": "CB-1.ia", "deadband": deadband}]))
    rep = Reporter(pmap)
    last: float | None = None
    for v in values:
        sample = rep.on_update("CB-1.ia", v, GOOD, 1.0, 0.0)
        expected = last is None or abs(v - last) > deadband or (deadband == 0 and v != last)
        assert (sample is not None) == expected
        if sample is not None:
            assert sample.cot == Cot.SPONTANEOUS and sample.value == v
            last = v


def test_binary_changes_quality_changes_and_return_information() -> None:
    rep = Reporter(build_map(_site(feeder_site(1, 1))))
    assert rep.on_update("CB-1.closed", True, GOOD, 1.0, 0.0).value == DP_ON  # type: ignore[union-attr]
    assert rep.on_update("CB-1.closed", True, GOOD, 1.0, 0.0) is None
    bad = rep.on_update("CB-1.closed", None, Quality(Validity.INVALID, QualityReason.COMMUNICATION_FAILURE), 2.0, 0.0)
    assert bad is not None and bad.qds == QDS_IV | QDS_NT and bad.value == 3  # indeterminate
    rep.expect_return("CB-1.closed", until=10.0)
    answer = rep.on_update("CB-1.closed", False, GOOD, 3.0, 5.0)
    assert answer is not None and answer.cot == Cot.RETURN_INFO_REMOTE and answer.value == DP_OFF
    later = rep.on_update("CB-1.closed", True, GOOD, 4.0, 6.0)
    assert later is not None and later.cot == Cot.SPONTANEOUS  # only the next change answers the command


def test_interrogation_snapshots_and_packing() -> None:
    pmap = build_map(_site(feeder_site(1, 2)))
    rep = Reporter(pmap)
    points = {
        m.point_id: SimpleNamespace(
            value=1.0 if m.kind is PointKind.ANALOG else True, quality=GOOD, source_time=None, receive_time=5.0
        )
        for m in pmap.monitored
    }
    gi = rep.interrogation(points)
    assert {s.ioa for s in gi} == {m.ioa for m in pmap.monitored if m.kind is not PointKind.COUNTER}
    assert all(s.cot == Cot.INTERROGATED_BY_STATION and s.time_ms == 5000 for s in gi)
    packed = group_samples(gi * 20, objects_per_asdu(TypeId.M_ME_TF_1))
    assert all(len(g) <= 127 and len({s.type_id for s in g}) == 1 for g in packed)
    assert [s for g in packed for s in g] == gi * 20  # order kept
    assert objects_per_asdu(TypeId.M_ME_TF_1) == 16 and objects_per_asdu(TypeId.M_SP_NA_1) == 60


class _Plant:
    def __init__(self, b: Bench) -> None:
        self.b = b

    def select(self, op):  # type: ignore[no-untyped-def]
        return self.b.authority.select(op, self.b.now)

    def operate(self, op):  # type: ignore[no-untyped-def]
        return self.b.authority.request(op, self.b.now)

    def cancel(self, select_id, origin):  # type: ignore[no-untyped-def]
        return self.b.authority.cancel(select_id, origin, self.b.now)


def _handler() -> tuple[Bench, CommandHandler, int]:
    doc = feeder_site(2, 2)
    doc["iec104"] = {"enabled": True, "common_address": 3}
    b = bench(doc)
    b.normal()
    pmap = build_map(SiteConfig.model_validate(doc), b.network)
    handler = CommandHandler(pmap, _Plant(b), Role.OPERATOR)
    ioa = next(c.ioa for c in pmap.commands if c.target == "SW-1-1")
    return b, handler, ioa


def _req(
    ioa: int,
    value: int,
    *,
    select: bool,
    cot: int = Cot.ACTIVATION,
    master: str = "10.0.0.1",
    type_id: int = TypeId.C_DC_NA_1,
    ca: int = 3,
) -> CommandRequest:
    return CommandRequest(
        type_id=type_id, cot=cot, common_address=ca, ioa=ioa, select=select, value=value, master=master
    )


def test_select_then_execute_goes_through_the_authority_with_the_masters_origin() -> None:
    b, h, ioa = _handler()
    sel = h.handle(_req(ioa, DP_OFF, select=True))
    assert (sel.cot, sel.negative) == (Cot.ACTIVATION_CON, False)
    held = b.authority.sbo.holder("SW-1-1", b.now)
    assert held is not None and held.origin == "iec104:10.0.0.1" and held.action == "open"
    exe = h.handle(_req(ioa, DP_OFF, select=False, type_id=TypeId.C_DC_TA_1))
    assert (exe.cot, exe.negative, exe.terminate) == (Cot.ACTIVATION_CON, False, True)
    accepted = [e for e in b.authority.take_audit() if e.kind == "switching.accepted"]
    assert accepted[0].record["via"] == "iec104" and accepted[0].record["role"] == "operator"


def test_refusals_answer_with_their_cause_and_the_authoritys_code() -> None:
    b, h, ioa = _handler()
    # execute without a select: the authority's not_selected row
    r = h.handle(_req(ioa, DP_OFF, select=False))
    assert (r.cot, r.negative) == (Cot.ACTIVATION_CON, True) and r.refusal is not None
    assert r.refusal.interlock == "not_selected"
    # a device in local control refuses the select (local_mode)
    b.set("SW-1-1.local", True)
    r = h.handle(_req(ioa, DP_OFF, select=True))
    assert r.negative and r.refusal is not None and r.refusal.interlock == "local_mode"
    b.set("SW-1-1.local", False)
    # another master's select reserves the device
    assert not h.handle(_req(ioa, DP_OFF, select=True, master="10.0.0.2")).negative
    r = h.handle(_req(ioa, DP_OFF, select=True))
    assert r.negative and r.refusal is not None and r.refusal.reason == "reserved"
    # deactivation by the holder cancels; by a master holding nothing is refused
    assert h.handle(_req(ioa, DP_OFF, select=True, cot=Cot.DEACTIVATION)).negative
    d = h.handle(_req(ioa, DP_OFF, select=True, cot=Cot.DEACTIVATION, master="10.0.0.2"))
    assert (d.cot, d.negative) == (Cot.DEACTIVATION_CON, False)
    assert b.authority.sbo.holder("SW-1-1", b.now) is None
    # states 0 and 3 are not permitted
    assert h.handle(_req(ioa, 3, select=True)).negative
    # addressing errors
    assert (h.handle(_req(99999, DP_OFF, select=True)).cot) == Cot.UNKNOWN_IOA
    assert (h.handle(_req(ioa, DP_OFF, select=True, ca=4)).cot) == Cot.UNKNOWN_CA
    assert (h.handle(_req(ioa, DP_OFF, select=True, type_id=TypeId.C_SE_NC_1)).cot) == Cot.UNKNOWN_TYPE_ID
    assert (h.handle(_req(ioa, DP_OFF, select=True, cot=3)).cot) == Cot.UNKNOWN_COT
    refused = [e.record for e in b.authority.take_audit() if e.kind == "switching.refused"]
    assert [r["interlock"] for r in refused] == ["not_selected", "local_mode", None]
    assert all(r["via"] == "iec104" for r in refused)


@settings(max_examples=40, deadline=None)
@given(delay_s=st.floats(min_value=-600.0, max_value=600.0, allow_nan=False))
def test_a_time_tagged_command_held_back_beyond_the_maximum_delay_is_refused_and_changes_nothing(
    delay_s: float,
) -> None:
    b, h, ioa = _handler()
    h.max_delay_s = 30.0
    now_s = 1_796_000_000.0
    tagged = CommandRequest(
        type_id=TypeId.C_DC_TA_1,
        cot=Cot.ACTIVATION,
        common_address=3,
        ioa=ioa,
        select=True,
        value=DP_OFF,
        master="10.0.0.1",
        time_ms=round((now_s - delay_s) * 1000),
    )
    r = h.handle(tagged, now_s)
    held = b.authority.sbo.holder("SW-1-1", b.now)
    if abs(delay_s) > 30.0 + 0.01:
        assert (r.cot, r.negative, r.refusal) == (Cot.ACTIVATION_CON, True, None)
        assert "maximum delay" in r.message and "command_max_delay_s" in r.message
        assert held is None
    elif abs(delay_s) < 30.0 - 0.01:
        assert not r.negative and held is not None and held.origin == "iec104:10.0.0.1"


def test_the_delay_check_spares_untagged_commands_and_refuses_an_invalid_time_tag() -> None:
    b, h, ioa = _handler()
    h.max_delay_s = 30.0
    invalid = CommandRequest(
        type_id=TypeId.C_DC_TA_1,
        cot=Cot.ACTIVATION,
        common_address=3,
        ioa=ioa,
        select=True,
        value=DP_OFF,
        master="10.0.0.1",
        time_ms=None,
    )
    r = h.handle(invalid, 1_796_000_000.0)
    assert r.negative and "invalid" in r.message and b.authority.sbo.holder("SW-1-1", b.now) is None
    # C_DC_NA_1 carries no time: not checked
    assert not h.handle(_req(ioa, DP_OFF, select=True), 1_796_000_000.0).negative
    # a deactivation is never held back: a late cancel only makes the device free sooner
    late_cancel = CommandRequest(
        type_id=TypeId.C_DC_TA_1,
        cot=Cot.DEACTIVATION,
        common_address=3,
        ioa=ioa,
        select=True,
        value=DP_OFF,
        master="10.0.0.1",
        time_ms=0,
    )
    d = h.handle(late_cancel, 1_796_000_000.0)
    assert (d.cot, d.negative) == (Cot.DEACTIVATION_CON, False) and b.authority.sbo.holder("SW-1-1", b.now) is None
    # with the check off (0) an old time tag is carried out
    h.max_delay_s = 0.0
    old = CommandRequest(
        type_id=TypeId.C_DC_TA_1,
        cot=Cot.ACTIVATION,
        common_address=3,
        ioa=ioa,
        select=True,
        value=DP_OFF,
        master="10.0.0.1",
        time_ms=0,
    )
    assert not h.handle(old, 1_796_000_000.0).negative


def test_a_command_with_the_test_bit_is_answered_but_never_carried_out() -> None:
    b, h, ioa = _handler()
    for select in (True, False):
        req = CommandRequest(
            type_id=TypeId.C_DC_NA_1,
            cot=Cot.ACTIVATION,
            common_address=3,
            ioa=ioa,
            select=select,
            value=DP_OFF,
            master="10.0.0.1",
            test=True,
        )
        r = h.handle(req)
        assert (r.cot, r.negative) == (Cot.ACTIVATION_CON, True) and "test bit" in r.message
    assert b.authority.sbo.holder("SW-1-1", b.now) is None and b.authority.take_audit() == []
    # nor does a test deactivation cancel a real select
    assert not h.handle(_req(ioa, DP_OFF, select=True)).negative
    test_cancel = CommandRequest(
        type_id=TypeId.C_DC_NA_1,
        cot=Cot.DEACTIVATION,
        common_address=3,
        ioa=ioa,
        select=True,
        value=DP_OFF,
        master="10.0.0.1",
        test=True,
    )
    d = h.handle(test_cancel)
    assert (d.cot, d.negative) == (Cot.DEACTIVATION_CON, True)
    assert b.authority.sbo.holder("SW-1-1", b.now) is not None


def test_a_setpoint_is_only_mapped_where_the_point_is_writable_and_gets_its_kind() -> None:
    doc = feeder_site(1, 1)
    doc["ieds"].append(
        {
            "id": "IED-DER",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "port": 30001,
            "points": [
                {"id": "DER-1.p_limit", "address": 10, "type": "float32", "writable": True},
                {"id": "DER-1.q_set", "address": 12, "type": "float32"},
            ],
        }
    )
    doc["agents"].append(
        {
            "id": "DER-1",
            "type": "renewable_energy",
            "attributes": {"rated_capacity": 500.0},
            "points": {"p_limit_pct": "DER-1.p_limit", "q_setpoint_kvar": "DER-1.q_set"},
            "connection_rules": [{"target_id": "LINE-1", "canonical_type": "supply"}],
        }
    )
    pmap = build_map(_site(doc))
    setpoints = [c for c in pmap.commands if c.setpoint is not None]
    assert [(c.target, c.setpoint, c.ioa) for c in setpoints] == [("DER-1", "p_limit_pct", 6001)]
    assert setpoints[0].types == (TypeId.C_SE_NC_1, TypeId.C_SE_TC_1)
    sent: list[Any] = []

    class Plant:
        def operate(self, op):  # type: ignore[no-untyped-def]
            sent.append(op)
            return SimpleNamespace(op_id="op-1")

    h = CommandHandler(pmap, Plant(), Role.OPERATOR)  # type: ignore[arg-type]
    r = h.handle(_req(6001, 50, select=False, type_id=TypeId.C_SE_NC_1, ca=1))  # type: ignore[arg-type]
    assert not r.negative and sent[0].kind is Kind.DER_SETPOINT and sent[0].value == 50.0
    assert sent[0].point == "p_limit_pct" and sent[0].origin.who == "iec104:10.0.0.1"


def test_clock_synchronisation_is_confirmed_or_refused_by_setting() -> None:
    ok = clock_sync("accept", 1_700_000_100_000, 1_700_000_000.0)
    assert ok.accepted and ok.offset_s == pytest.approx(100.0)
    no = clock_sync("refuse", 1_700_000_100_000, 1_700_000_000.0)
    assert not no.accepted and "refused" in no.message


# --------------------------------------------------------------------------- the adapter in-process


class _Outstation:
    """The real adapter (lib60870 and its threads) on a loop of its own, with a small image."""

    def __init__(self, **cfg: Any) -> None:
        import asyncio
        import logging
        import threading
        import time as _time

        from gateway.contract.clock import SystemClock
        from gateway.contract.settings import Iec104Config
        from gateway.iec104 import MonitorPoint, PointMap
        from gateway.contract.points import PointUpdate, ProcessImage
        from hil.broker import free_port
        from protocols.iec104 import Iec104Outstation

        self.image = ProcessImage()
        monitored = []
        for n in range(3):
            pid = f"P{n}.value"
            self.image.define(pid, PointKind.ANALOG)
            self.image.apply(
                PointUpdate(
                    point_id=pid,
                    value=float(n),
                    quality=GOOD,
                    receive_monotonic=_time.monotonic(),
                    receive_time=_time.time(),
                )
            )
            monitored.append(MonitorPoint(pid, 100 + n, TypeId.M_ME_TF_1, 0.0, PointKind.ANALOG))
        pmap = PointMap(1, tuple(monitored), (), {m.point_id: m for m in monitored}, {})
        self.port = free_port()
        self.cfg = Iec104Config(enabled=True, bind="127.0.0.1", port=self.port, **cfg)
        self.outstation = Iec104Outstation(
            self.cfg,
            pmap,
            self.image,
            CommandHandler(pmap, _Plant(bench()), Role.OPERATOR),
            Reporter(pmap),
            SystemClock(),
            logging.getLogger("t104"),
        )
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.outstation.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def update(self, point_id: str, value: float) -> None:
        import time as _time

        from gateway.contract.points import PointUpdate

        self.loop.call_soon_threadsafe(
            self.image.apply,
            PointUpdate(
                point_id=point_id,
                value=value,
                quality=GOOD,
                receive_monotonic=_time.monotonic(),
                receive_time=_time.time(),
            ),
        )

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.outstation.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_tls_per_62351_3_with_a_master_certificate_from_the_ca(tmp_path: Any) -> None:
    import ssl

    from hil.broker import make_tls_files
    from tests.support.iec104_master import Master

    tls = make_tls_files(tmp_path)
    station = _Outstation(
        tls={"ca_file": str(tls.ca_file), "cert_file": str(tls.server_cert), "key_file": str(tls.server_key)}
    )
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        with Master("127.0.0.1", station.port, common_address=1, ssl_context=ctx).connect() as m:
            assert sorted(o.ioa for a in m.interrogate() for o in a.objects) == [100, 101, 102]
        # a master that speaks plain TCP to the TLS port gets nowhere
        plain = Master("127.0.0.1", station.port, common_address=1, timeout_s=3.0)
        with pytest.raises((TimeoutError, OSError)):
            plain.connect()
        plain.close()
        # nor one without a certificate the CA signed
        anonymous = ssl.create_default_context(cafile=str(tls.ca_file))
        with pytest.raises((TimeoutError, OSError, ssl.SSLError)):
            with Master(
                "127.0.0.1", station.port, common_address=1, ssl_context=anonymous, timeout_s=3.0
            ).connect() as m:
                m.interrogate(timeout_s=3.0)
    finally:
        station.close()


def test_clock_sync_refused_by_setting_and_a_redundancy_group_shares_one_active_master() -> None:
    import datetime as dt

    from tests.support import iec104_master as m104
    from tests.support.iec104_master import Master

    station = _Outstation(
        clock_sync="refuse", redundancy_groups=[{"name": "ncc", "masters": ["127.0.0.1"]}], max_connections=3
    )
    try:
        with (
            Master("127.0.0.1", station.port, common_address=1).connect() as active,
            Master("127.0.0.1", station.port, common_address=1).connect(start=False) as standby,
        ):
            con = active.clock_sync(dt.datetime.utcnow())
            assert con.cot == m104.COT_ACT_CON and con.negative
            station.update("P1.value", 42.0)
            active.wait_for(lambda a: a.cot == m104.COT_SPONTANEOUS and a.objects[0].value == 42.0, "the change")
            assert standby.received == []  # stands by: no STARTDT, no data
            active.close()
            # the standby takes over: STARTDT, and the group's events flow to it
            standby._send_u(m104.STARTDT_ACT)
            standby.wait_u(m104.STARTDT_CON)
            station.update("P2.value", 7.0)
            standby.wait_for(
                lambda a: a.cot == m104.COT_SPONTANEOUS and any(o.ioa == 102 and o.value == 7.0 for o in a.objects),
                "the change at the new active master",
            )
    finally:
        station.close()


def test_only_the_configured_masters_may_connect() -> None:
    from tests.support.iec104_master import Master

    station = _Outstation(masters=["127.0.0.2"])
    try:
        with Master("127.0.0.1", station.port, common_address=1, source="127.0.0.2").connect() as allowed:
            assert allowed.interrogate()
        refused = Master("127.0.0.1", station.port, common_address=1, timeout_s=3.0)
        with pytest.raises((TimeoutError, OSError)):
            refused.connect()
        refused.close()
    finally:
        station.close()
