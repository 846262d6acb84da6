"""The IEC 60870-5-104 outstation on the real rig (the daemon, the simulated substation over Modbus
and IEC 61850), driven by an independent master written from the standard (tests/support/
iec104_master.py, no code shared with lib60870): general and counter interrogation, spontaneous
changes and quality, select-before-operate open and close of CB-045 through the switching
authority, a close refused with its cause after a permanent fault locked CB-045 out (the same
interlock code in the event log as the other roads), clock synchronisation, reconnection, and
two masters at once."""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control import ControlError
from hil.broker import free_port
from hil.rig import Rig
from tests.support import iec104_master as m104
from tests.support.faults import breaker, clear_faults, fault_site
from tests.support.iec104_master import Master

CA = 47


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir: Path = tmp_path_factory.mktemp("iec104")
    # 50 ms: a stall of the daemon's loop over two periods (a busy moment on a shared machine)
    # marks the relay's points stale, and a select then is refused as position_unknown, rightly
    doc = fault_site(reclose=True, relay_poll_ms=50)
    doc["iec104"] = {
        "enabled": True,
        "bind": "127.0.0.1",
        "port": free_port(),
        "common_address": CA,
        "max_connections": 3,
        "clock_sync": "accept",
        "t3_s": 5,
    }
    with Rig(doc, workdir, hil_args=("--no-ami",)) as r:
        yield r


def _master(rig: Rig, **kw: Any) -> Master:
    return Master("127.0.0.1", rig.doc["iec104"]["port"], common_address=CA, **kw).connect()


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in rows if all(r.get(k) == v for k, v in match.items()))


def _value(asdus: list[m104.Asdu], ioa: int) -> m104.InfoObject:
    return next(o for a in asdus for o in a.objects if o.ioa == ioa)


def test_interrogation_answers_every_point_with_its_type_value_and_quality(rig: Rig) -> None:
    rows = rig.daemon_call("iec104.map")
    monitored = [r for r in rows if r["type"].startswith("M_")]
    pos_ioa = _row(rows, point="CB-045.closed")["ioa"]
    expected = {r["ioa"]: m104.__dict__[r["type"]] for r in monitored if not r["type"].startswith("M_IT")}
    with _master(rig) as master:
        # a stall of the daemon's first seconds marks CB-045's points invalid and not topical for
        # a moment (as it should), so interrogate until the GI finds them read again
        deadline = time.monotonic() + 30
        while True:
            gi = master.interrogate()
            assert {o.ioa: a.type_id for a in gi for o in a.objects} == expected
            pos = _value(gi, pos_ioa)
            if pos.quality == 0 or time.monotonic() > deadline:
                break
            assert pos.quality & 0xC0 == 0xC0, pos  # invalid, not topical: not yet (or no longer) read
            time.sleep(0.2)
        # a breaker's position is a double point: CB-045 closed → ON, good quality, time-tagged
        assert pos.value == m104.DP_ON and pos.quality == 0 and pos.time is not None
        # a measured current as a short float, as the image holds it
        ia_ioa = _row(rows, point="CB-045.ia")["ioa"]
        [image] = rig.daemon_call("points.read", ids=["CB-045.ia"])
        assert _value(gi, ia_ioa).value == pytest.approx(image["value"], rel=0.2, abs=2.0)
        # counters answer the counter interrogation (M_IT_TB_1, cause 37), not the GI
        ci = master.counter_interrogate()
        counters = {o.ioa for a in ci for o in a.objects}
        assert counters == {r["ioa"] for r in monitored if r["type"].startswith("M_IT")} and counters
        assert all(a.type_id == m104.M_IT_TB_1 for a in ci)


def test_spontaneous_changes_and_quality_reach_the_master(rig: Rig) -> None:
    rows = rig.daemon_call("iec104.map")
    ia_ioa = _row(rows, point="CB-045.ia")["ioa"]
    with _master(rig) as master:
        master.interrogate()
        mark = master.mark()
        before = rig.daemon_call("points.read", ids=["CB-045.ia"])[0]["value"]
        rig.hil_call("loadstep", target="XFMR-101", factor=1.6)
        change = master.wait_for(
            lambda a: a.cot == m104.COT_SPONTANEOUS and any(o.ioa == ia_ioa for o in a.objects),
            "a spontaneous CB-045.ia",
            20,
            start=mark,
        )
        obj = next(o for o in change.objects if o.ioa == ia_ioa)
        assert change.type_id == m104.M_ME_TF_1 and obj.quality == 0 and obj.value > before
        # an IED that stops answering: its points go invalid and not topical, spontaneously
        mark = master.mark()
        rig.hil_call("commloss", ied="IED-CB-045", duration_s=4.0)
        lost = master.wait_for(
            lambda a: a.cot == m104.COT_SPONTANEOUS and any(o.ioa == ia_ioa and o.quality & 0x80 for o in a.objects),
            "CB-045.ia invalid",
            30,
            start=mark,
        )
        assert next(o for o in lost.objects if o.ioa == ia_ioa).quality & 0xC0 == 0xC0
        master.wait_for(
            lambda a: a.cot == m104.COT_SPONTANEOUS and any(o.ioa == ia_ioa and o.quality == 0 for o in a.objects),
            "CB-045.ia good again",
            30,
            start=master.received.index(lost) + 1,
        )
    rig.wait(
        lambda: rig.daemon_call("points.read", ids=["CB-045.closed"])[0]["quality"] == "good",
        "CB-045's position good again",
    )
    rig.hil_call("loadstep", target="XFMR-101", factor=1 / 1.6)


def _position_known(rig: Rig, device: str) -> None:
    """Wait until the image holds `device`'s position with good quality (a select needs it)."""
    rig.wait(
        lambda: rig.daemon_call("points.read", ids=[f"{device}.closed"])[0]["quality"] == "good",
        f"{device}'s position known",
    )


def _events(rig: Rig, since: float, kind: str) -> list[dict[str, Any]]:
    return [e for e in rig.daemon_call("events", since=since, limit=2000) if e["kind"] == kind]


def test_select_and_execute_open_then_close_through_the_switching_authority(rig: Rig) -> None:
    rows = rig.daemon_call("iec104.map")
    cmd = _row(rows, target="CB-045")["ioa"]
    pos = _row(rows, point="CB-045.closed")["ioa"]
    start = time.time()
    with _master(rig) as master:
        master.interrogate()
        for state, name in ((m104.DP_OFF, "open"), (m104.DP_ON, "close")):
            _position_known(rig, "CB-045")
            mark = master.mark()
            sel = master.double_command(cmd, state, select=True, time_tag=dt.datetime.utcnow())
            assert sel.cot == m104.COT_ACT_CON and not sel.negative and sel.objects[0].select
            exe = master.double_command(cmd, state, select=False, time_tag=dt.datetime.utcnow())
            assert exe.cot == m104.COT_ACT_CON and not exe.negative, exe
            master.wait_for(
                lambda a: a.type_id == m104.C_DC_TA_1 and a.cot == m104.COT_ACT_TERM, "termination", start=mark
            )
            moved = master.wait_for(
                lambda a, s=state: (
                    any(o.ioa == pos and o.value == s for o in a.objects)
                    and a.cot in (m104.COT_RETURN_REMOTE, m104.COT_SPONTANEOUS)
                ),
                f"CB-045 {name} reported",
                20,
                start=mark,
            )
            assert moved.cot == m104.COT_RETURN_REMOTE  # the answer to this master's own command
            assert breaker(rig, "CB-045") == ("open" if name == "open" else "closed")
    selected = [e for e in _events(rig, start, "switching.selected") if e["source"] == "CB-045"]
    accepted = [e for e in _events(rig, start, "switching.accepted") if e["source"] == "CB-045"]
    assert [e["action"] for e in selected] == ["open", "close"] == [e["action"] for e in accepted]
    assert all(
        e["via"] == "iec104" and e["origin"] == "iec104:127.0.0.1" and e["role"] == "operator"
        for e in selected + accepted
    )
    rig.wait(
        lambda: any(e["source"] == "CB-045" and e["action"] == "close" for e in _events(rig, start, "switching.done")),
        "the close checked back",
        20,
    )


def test_a_close_of_a_locked_out_breaker_is_refused_with_its_cause(rig: Rig) -> None:
    rows = rig.daemon_call("iec104.map")
    cmd = _row(rows, target="CB-045")["ioa"]
    start = time.time()
    rig.hil_call("fault", line="LINE-045", distance_m=2300.0, kind="3ph", transient=False)
    rig.wait(lambda: rig.daemon_call("status")["protection"]["breakers"]["CB-045"]["locked_out"], "lockout", 30)
    try:
        with _master(rig) as master:
            sel = master.double_command(cmd, m104.DP_ON, select=True)
            assert sel.cot == m104.COT_ACT_CON and sel.negative  # negative confirmation of the select
            exe = master.double_command(cmd, m104.DP_ON, select=False)
            assert exe.cot == m104.COT_ACT_CON and exe.negative  # no execute without a select
            assert not any(a.cot == m104.COT_ACT_TERM and a.type_id == m104.C_DC_NA_1 for a in master.received)
            bad = master.double_command(cmd + 100_000, m104.DP_ON, select=True)
            assert bad.cot == m104.COT_UNKNOWN_IOA and bad.negative
            wrong_ca = master.double_command(cmd, m104.DP_ON, select=True, common_address=CA + 1)
            assert wrong_ca.cot == m104.COT_UNKNOWN_CA and wrong_ca.negative
        refused = [e for e in _events(rig, start, "switching.refused") if e["source"] == "CB-045"]
        assert [(e["via"], e["stage"], e["interlock"]) for e in refused] == [
            ("iec104", "select", "protection_lockout"),
            ("iec104", "operate", "not_selected"),
        ]
        # the operator's road is refused with the same code
        with pytest.raises(ControlError, match=r"refused \(protection_lockout\)"):
            rig.daemon_call("breaker.operate", breaker="CB-045", action="close")
        local = [e for e in _events(rig, start, "switching.refused") if e["via"] == "local"]
        assert local and local[0]["interlock"] == refused[0]["interlock"]
        assert breaker(rig, "CB-045") == "open"
    finally:
        rig.hil_call("clear")
        clear_faults(rig, "CB-045")
        rig.daemon_call("breaker.operate", breaker="CB-045", action="close", authorised=True, reason="repaired")
        rig.wait(lambda: breaker(rig, "CB-045") == "closed", "CB-045 closed again", 30)


def test_a_command_held_back_beyond_the_maximum_delay_or_with_the_test_bit_is_refused(rig: Rig) -> None:
    rows = rig.daemon_call("iec104.map")
    cmd = _row(rows, target="CB-045")["ioa"]
    _position_known(rig, "CB-045")
    with _master(rig) as master:
        # a select whose time tag is two minutes old (iec104.command_max_delay_s is 30 s)
        late = master.double_command(
            cmd, m104.DP_OFF, select=True, time_tag=dt.datetime.utcnow() - dt.timedelta(minutes=2)
        )
        assert late.cot == m104.COT_ACT_CON and late.negative
        assert rig.daemon_call("breaker.status", breaker="CB-045")["selected_by"] is None
        # a select with the test bit (T = 1) is answered, mirrored, and not carried out
        mark = master.mark()
        master.send_asdu(m104.encode_asdu(m104.C_DC_NA_1, m104.COT_ACT, CA, cmd, bytes([0x81]), test=True))
        test = master.wait_for(
            lambda x: x.type_id == m104.C_DC_NA_1 and x.cot == m104.COT_ACT_CON,
            "the test command's confirmation",
            start=mark,
        )
        assert test.negative and test.test
        assert rig.daemon_call("breaker.status", breaker="CB-045")["selected_by"] is None
        # the same select sent now is taken, and cancelled again
        fresh = master.double_command(cmd, m104.DP_OFF, select=True, time_tag=dt.datetime.utcnow())
        assert not fresh.negative
        assert rig.daemon_call("breaker.status", breaker="CB-045")["selected_by"] == "iec104:127.0.0.1"
        mark = master.mark()
        master.send_asdu(m104.encode_asdu(m104.C_DC_NA_1, m104.COT_DEACT, CA, cmd, bytes([0x81])))
        assert not master.wait_for(lambda x: x.cot == m104.COT_DEACT_CON, "deactivation confirmed", start=mark).negative
    assert breaker(rig, "CB-045") == "closed"


def test_clock_synchronisation_is_confirmed_and_logged(rig: Rig) -> None:
    start = time.time()
    with _master(rig) as master:
        ahead = dt.datetime.utcnow() + dt.timedelta(hours=1)
        con = master.clock_sync(ahead)
        assert con.cot == m104.COT_ACT_CON and not con.negative
    [event] = rig.wait(lambda: _events(rig, start, "iec104.clock_sync"), "the clock sync in the event log")
    assert event["accepted"] is True and event["offset_s"] == pytest.approx(3600.0, abs=5.0)
    assert event["origin"] == "iec104:127.0.0.1"


def test_two_masters_and_reconnection(rig: Rig) -> None:
    rows = rig.daemon_call("iec104.map")
    cmd = _row(rows, target="SW-045-1")["ioa"]
    ia_ioa = _row(rows, point="CB-045.ia")["ioa"]
    with _master(rig) as a, _master(rig, source="127.0.0.2") as b:
        status = rig.wait(
            lambda: (s := rig.daemon_call("status")["iec104"]) and len(s["active"]) == 2 and s, "both masters active"
        )
        assert status["active"] == ["127.0.0.1", "127.0.0.2"]
        # both get the same spontaneous change
        marks = a.mark(), b.mark()
        rig.hil_call("loadstep", target="XFMR-101", factor=1.5)
        for master, mark in zip((a, b), marks):
            master.wait_for(
                lambda x: x.cot == m104.COT_SPONTANEOUS and any(o.ioa == ia_ioa for o in x.objects),
                "the change at both masters",
                20,
                start=mark,
            )
        rig.hil_call("loadstep", target="XFMR-101", factor=1 / 1.5)
        # a select reserves the switch for the master that made it
        _position_known(rig, "SW-045-1")
        assert not a.double_command(cmd, m104.DP_OFF, select=True).negative
        assert b.double_command(cmd, m104.DP_OFF, select=True).negative
        assert not a.double_command(cmd, m104.DP_OFF, select=True, common_address=CA).negative
        # a deactivation cancels it; the other master may select then
        mark = a.mark()
        a.send_asdu(m104.encode_asdu(m104.C_DC_NA_1, m104.COT_DEACT, CA, cmd, bytes([0x81])))
        deact = a.wait_for(lambda x: x.cot == m104.COT_DEACT_CON, "deactivation confirmed", start=mark)
        assert not deact.negative
        assert not b.double_command(cmd, m104.DP_OFF, select=True).negative
        b.send_asdu(m104.encode_asdu(m104.C_DC_NA_1, m104.COT_DEACT, CA, cmd, bytes([0x81])))
    # reconnection: a new connection is served at once, with a full GI
    with _master(rig) as again:
        assert len(again.interrogate()) > 0
    # after a reload of the site file (SIGHUP): the old outstation closes, the new one listens
    assert rig.daemon is not None
    reloads = rig.daemon_call("status")["reloads"]
    rig.daemon.send_signal(signal.SIGHUP)
    rig.wait(lambda: rig.daemon_call("status")["reloads"] == reloads + 1, "the reload", 60)
    _interrogate_when_back(rig)
    # and after the daemon restarts
    rig.restart_daemon()
    _interrogate_when_back(rig)


def _interrogate_when_back(rig: Rig) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with _master(rig) as after:
                assert after.interrogate()
                return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_set_point_selected_and_executed_reaches_the_der(rig: Rig) -> None:
    rows = rig.daemon_call("iec104.map")
    cmd = _row(rows, target="SOLAR-201", setpoint="p_limit_pct")["ioa"]
    readback = _row(rows, point="SOLAR-201.p_limit_pct")["ioa"]
    start = time.time()
    with _master(rig) as master:
        master.interrogate()
        mark = master.mark()
        sel = master.setpoint(cmd, 40.0, select=True)
        assert sel.cot == m104.COT_ACT_CON and not sel.negative, sel
        exe = master.setpoint(cmd, 40.0, select=False)
        assert exe.cot == m104.COT_ACT_CON and not exe.negative, exe
        master.wait_for(
            lambda a: any(o.ioa == readback and o.value == pytest.approx(40.0) for o in a.objects),
            "the DER's limit read back at 40 %",
            30,
            start=mark,
        )
        # an execute without its own select is refused (select-before-operate)
        bad = master.setpoint(cmd, 40.0, select=False)
        assert bad.cot == m104.COT_ACT_CON and bad.negative
    accepted = [e for e in _events(rig, start, "switching.accepted") if e["source"] == "SOLAR-201"]
    assert accepted and accepted[0]["action"] == "der_setpoint" and accepted[0]["value"] == 40.0
    assert accepted[0]["via"] == "iec104" and accepted[0]["point"] == "p_limit_pct"
