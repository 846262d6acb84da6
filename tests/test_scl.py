"""SCL import: libiec61850's example files, the simulator's own model exported as SCL (and the
imported entry used against the running simulated IED), refusals with element paths, `--into`,
and hypothesis round trips and fuzzing of the reader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.cli.main import main
from gateway.contract.clock import SystemClock
from gateway.commissioning.scl_import import site_fragment
from gateway.config import load
from gateway.contract.settings import Iec61850Ied
from hil.iec61850_server import BayServerProcess
from hil.ports import reserve_port
from hil.scl_export import export_ied, export_site
from gateway.contract.ports import LinkState
from protocols.iec61850 import Iec61850Client
from protocols.scl import Edition, SclError, read_scl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "scl"
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"


def _ieds() -> list[Iec61850Ied]:
    return [i for i in load(SITE).ieds if isinstance(i, Iec61850Ied)]


def _signature(ied: Iec61850Ied) -> set[tuple[Any, ...]]:
    return {(p.reference, p.fc.value if not p.control else "CO", p.kind.value, p.control) for p in ied.points}


# --------------------------------------------------------------------------- other tools' files


def test_libiec61850_control_example_gives_every_control_model_and_the_report_block() -> None:
    doc = read_scl(DATA / "simpleIO_control_tests.cid")
    assert doc.edition is Edition.ED1
    ied = doc.ied("simpleIO")
    ggio = ied.logical_node("simpleIOGenericIO", "GGIO1")
    assert ggio is not None
    models = {do.name: do.ctl_model for do in ggio.data_objects if do.controllable}
    assert models == {
        "SPCSO1": "direct-with-normal-security",
        "SPCSO2": "sbo-with-normal-security",
        "SPCSO3": "direct-with-enhanced-security",
        "SPCSO4": "sbo-with-enhanced-security",
        "SPCSO5": "direct-with-normal-security",
        "SPCSO6": "sbo-with-normal-security",
        "SPCSO7": "direct-with-enhanced-security",
        "SPCSO8": "sbo-with-enhanced-security",
        "SPCSO9": "direct-with-enhanced-security",
    }
    lln0 = ied.logical_node("simpleIOGenericIO", "LLN0")
    assert lln0 is not None
    (rcb,) = lln0.report_controls
    assert not rcb.buffered and rcb.trigger_options == {"dchg"} and rcb.intg_pd_ms == 1000
    assert rcb.instance_names() == ["ControlEventsRCB01", "ControlEventsRCB02"]
    assert {"seqNum", "timeStamp", "dataSet", "reasonCode", "entryID", "configRef"} == rcb.optional_fields
    members = {(m.do_name, m.da_name, m.fc) for m in lln0.data_sets[0].members}
    assert ("SPCSO2", "opRcvd", "OR") in members and ("SPCSO9", "stVal", "ST") in members

    result = site_fragment(ied, host="127.0.0.1")
    entry = Iec61850Ied.model_validate(result.ied)
    controls = {p.reference for p in entry.points if p.control}
    assert controls == {f"simpleIOGenericIO/GGIO1.SPCSO{n}" for n in range(1, 10)}
    analog = {p.reference for p in entry.points if p.fc.value == "MX"}
    assert analog == {f"simpleIOGenericIO/GGIO1.AnIn{n}.mag.f" for n in range(1, 5)}
    assert entry.report_control_blocks == ["simpleIOGenericIO/LLN0.RP.ControlEventsRCB01"]
    # every MX and ST attribute is listed with its type and FC, points or not
    listed = {(a["reference"], a["fc"]) for a in result.attributes}
    assert ("simpleIOGenericIO/GGIO1.AnIn1.mag.f", "MX") in listed
    assert ("simpleIOGenericIO/GGIO1.SPCSO8.origin.orCat", "ST") in listed
    assert any("0.0.0.0" in n for n in site_fragment(ied).notes)  # no usable address in the file


def test_beagle_demo_connection_from_the_communication_section() -> None:
    doc = read_scl(DATA / "beagle_demo.icd")
    result = site_fragment(doc.ied("beagle"))
    assert result.ied["host"] == "10.0.0.2" and result.ied["port"] == 102
    dpc = next(p for p in result.ied["points"] if p["reference"] == "beagleGenericIO/GGIO1.DPCSO1")
    assert dpc["control"] and dpc["kind"] == "binary"
    # the data set of the report blocks holds the controls' status: one block carries them
    assert result.ied["report_control_blocks"] == ["beagleGenericIO/LLN0.RP.EventsRCB01"]
    assert {r["name"] for r in result.report_control_blocks} == {"EventsRCB", "EventsRCB2"}


def test_a_file_with_duplicate_type_ids_is_refused_with_the_element_path() -> None:
    with pytest.raises(SclError) as exc:
        read_scl(DATA / "sg_demo.icd")
    paths = [p for p, _ in exc.value.problems]
    assert "/SCL/DataTypeTemplates/DOType[@id='ENS_Health']" in paths
    # lenient: schema problems become warnings, but two types with one id stay ambiguous
    with pytest.raises(SclError) as exc:
        read_scl(DATA / "sg_demo.icd", lenient=True)
    assert any("defined twice" in reason and "ENS_Health" in path for path, reason in exc.value.problems)


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        (b"<SCL xmlns='http://www.iec.ch/61850/2003/SCL'><Header id='x'>", "line", "not well-formed"),
        (b"<root/>", "/root", "root element must be SCL"),
        (
            b"<SCL xmlns='http://www.iec.ch/61850/2003/SCL' version='2010' revision='A'><Header id='x'/></SCL>",
            "/SCL/@version",
            "not supported",
        ),
        (
            b"<SCL xmlns='http://www.iec.ch/61850/2003/SCL' version='2007' revision='B' release='4'><Header id='h'/>"
            b"<IED name='X'><AccessPoint name='AP'><Server><Authentication/><LDevice inst='LD0'>"
            b"<LN0 lnClass='LLN0' inst='' lnType='missing'/></LDevice></Server></AccessPoint></IED></SCL>",
            "LN0",
            "'missing'",
        ),
    ],
)
def test_malformed_or_unsupported_documents_are_refused(text: bytes, where: str, why: str) -> None:
    with pytest.raises(SclError) as exc:
        read_scl(text, name="t.cid")
    assert any(where in path and why in reason for path, reason in exc.value.problems), exc.value.problems


# --------------------------------------------------------------------------- the simulator's own model


def test_the_simulators_model_exports_as_valid_edition_2_1_and_imports_back() -> None:
    for ied in _ieds():
        data = etree.tostring(export_ied(ied), xml_declaration=True, encoding="UTF-8")
        doc = read_scl(data, name=f"{ied.id}.cid")  # schema-valid, strict
        assert doc.edition is Edition.ED2_1
        (scl_ied,) = doc.ieds
        entry = Iec61850Ied.model_validate(site_fragment(scl_ied, ied_id=ied.id).ied)
        assert (entry.host, entry.port) == (ied.host, ied.port)
        assert _signature(entry) == _signature(ied), ied.id
        assert entry.report_control_blocks == ied.report_control_blocks
        units = {p.reference: p.unit for p in ied.points if p.unit}
        assert {p.reference: p.unit for p in entry.points if p.reference in units} == units


def test_edition_2_documents_are_read_as_edition_2() -> None:
    root = export_ied(_ieds()[0])
    del root.attrib["release"]
    doc = read_scl(etree.tostring(root), name="ed2.cid")
    assert doc.edition is Edition.ED2 and doc.version == "2007B"


def test_the_imported_entry_works_against_the_running_simulated_ied(tmp_path: Path) -> None:
    site = load(SITE)
    original = site.ied("IED-BAY-046")
    assert isinstance(original, Iec61850Ied)
    port = reserve_port()
    (scl_ied,) = read_scl(export_site(site, ["IED-BAY-046"])).ieds
    entry = Iec61850Ied.model_validate(
        site_fragment(scl_ied, ied_id="IED-BAY-046", prefix="CB-046", port=port, poll_period_ms=500).ied
    )
    by_ref = {p.reference: p.id for p in entry.points}
    server = BayServerProcess(str(SITE), "IED-BAY-046", port, log_path=str(tmp_path / "bay.log"))
    try:
        server.wait_listening()
        values = {"CB-046.ia": 123.5, "CB-046.closed": True, "CB-046.position_cmd": True, "CB-046.frequency_hz": 50.01}
        server.set_values(values)
        seen: dict[str, Any] = {}

        async def run() -> dict[str, Any]:
            def sink(updates: Any) -> None:
                for u in updates:
                    if u.quality.good:
                        seen[u.point_id] = u.value

            client = Iec61850Client(entry, sink, SystemClock(), logging.getLogger("test.scl"))
            task = asyncio.create_task(client.run())
            try:
                wanted = {by_ref["BAY046LD0/MMXU1.A.phsA.cVal.mag.f"]: 123.5, by_ref["BAY046LD0/XCBR1.Pos.stVal"]: True}
                deadline = time.monotonic() + 20.0
                while not all(seen.get(k) == pytest.approx(v) for k, v in wanted.items()):
                    assert time.monotonic() < deadline, f"imported points never arrived: {seen}"
                    await asyncio.sleep(0.05)
                status = dict(client.status.extra)
                assert client.status.state is LinkState.ONLINE
                # the control point of the import operates the real control (select before operate)
                await asyncio.wait_for(client.submit_write(by_ref["BAY046LD0/CSWI1.Pos"], False), 20.0)
                return status
            finally:
                await client.close()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        status = asyncio.run(run())
        assert status["rcbs_enabled"] == 1 and status["report_points"] > 0
        command = server.commands.get(timeout=10)
        assert command == {"point_id": "CB-046.position_cmd", "value": False}
    finally:
        server.close()


# --------------------------------------------------------------------------- the command


def test_scl_import_into_a_site_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scd = tmp_path / "sub003.scd"
    scd.write_bytes(export_site(load(SITE), ["IED-SW-046-1"]))
    site = tmp_path / "site.toml"
    site.write_text(SITE.read_text())
    before = site.read_text()
    # the site already has an IED of that id: refused, file unchanged
    code = main(["scl", "import", str(scd), "--into", str(site), "--id", "IED-SW-046-1"])
    assert code == 2 and "already has IED(s) IED-SW-046-1" in capsys.readouterr().err
    assert site.read_text() == before
    # the same points under another id would duplicate point ids: refused, file unchanged
    code = main(["scl", "import", str(scd), "--into", str(site), "--id", "IED-RMU-2", "--prefix", "SW-046-1"])
    err = capsys.readouterr().err
    assert code == 2 and "would not be valid" in err and site.read_text() == before
    code = main(["scl", "import", str(scd), "--into", str(site), "--id", "IED-RMU-2", "--prefix", "RMU-2"])
    assert code == 0, capsys.readouterr().err
    merged = load(site)
    added = merged.ied("IED-RMU-2")
    assert isinstance(added, Iec61850Ied) and added.report_control_blocks == ["SW0461LD0/LLN0.BR.brcbMeas01"]
    assert (tmp_path / "site.toml.bak").read_text() == before
    assert before in site.read_text()  # the rest of the file (comments included) is kept


def test_scl_import_json_lists_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["scl", "import", str(DATA / "beagle_demo.icd"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (ied,) = data["ieds"]
    assert data["edition"] == "1"
    assert {c["reference"]: c["ctl_model"] for c in ied["controls"]}[
        "beagleGenericIO/GGIO1.DPCSO1"
    ] == "direct-with-enhanced-security"
    assert ied["report_control_blocks"][0]["trigger_options"] == ["period"]


# --------------------------------------------------------------------------- properties


_names = st.from_regex(r"[A-Z][a-z]{1,6}", fullmatch=True)


@st.composite
def _ied_configs(draw: st.DrawFn) -> Iec61850Ied:
    ied_name = draw(st.from_regex(r"[A-Z]{2,5}[0-9]{0,2}", fullmatch=True))
    lds = draw(st.lists(st.from_regex(r"LD[0-9]", fullmatch=True), min_size=1, max_size=2, unique=True))
    points: list[dict[str, Any]] = []
    for ld in lds:
        prefix = f"{ied_name}{ld}"
        for k in range(draw(st.integers(1, 3))):
            ln = f"MMXU{k + 1}"
            for do in draw(st.lists(_names, min_size=1, max_size=3, unique=True)):
                shape = draw(st.sampled_from(["mv", "cmv", "mvi"]))
                if shape == "mv":
                    ref = f"{prefix}/{ln}.{do}.mag.f"
                elif shape == "mvi":
                    ref = f"{prefix}/{ln}.{do}.mag.i"
                else:
                    ref = f"{prefix}/{ln}.{do}.{draw(st.sampled_from(['phsA', 'phsB', 'neut']))}.cVal.mag.f"
                points.append({"reference": ref, "fc": "MX", "unit": draw(st.sampled_from(["", "A", "kV", "Hz"]))})
        if draw(st.booleans()):
            points.append({"reference": f"{prefix}/XCBR1.Pos.stVal", "fc": "ST", "kind": "binary"})
        if draw(st.booleans()):
            points.append(
                {
                    "reference": f"{prefix}/GGIO1.{draw(_names)}.stVal",
                    "fc": "ST",
                    "kind": draw(st.sampled_from(["binary", "analog"])),
                }
            )
        if draw(st.booleans()):
            points.append({"reference": f"{prefix}/CSWI1.Pos", "fc": "CO", "kind": "binary", "control": True})
    for n, p in enumerate(points):
        p["id"] = f"P{n}"
    rcbs = [f"{ied_name}{lds[0]}/LLN0.{draw(st.sampled_from(['BR', 'RP']))}.rcb{draw(st.sampled_from(['01', 'X']))}"]
    return Iec61850Ied.model_validate(
        {
            "id": "IED-X",
            "protocol": "iec61850",
            "host": "127.0.0.1",
            "port": draw(st.integers(1, 65535)),
            "report_control_blocks": rcbs,
            "points": _dedupe(points),
        }
    )


def _dedupe(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for p in points:
        if p["reference"] not in seen:
            seen.add(p["reference"])
            out.append(p)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ied_configs())
def test_export_then_import_gives_back_the_same_references(ied: Iec61850Ied) -> None:
    doc = read_scl(export_site_of(ied), name="generated.cid")
    (scl_ied,) = doc.ieds
    entry = Iec61850Ied.model_validate(site_fragment(scl_ied, ied_id=ied.id).ied)
    assert _signature(entry) == _signature(ied)
    assert entry.report_control_blocks == ied.report_control_blocks
    assert entry.port == ied.port


def export_site_of(ied: Iec61850Ied) -> bytes:
    return etree.tostring(export_ied(ied), xml_declaration=True, encoding="UTF-8")


_VALID = (DATA / "beagle_demo.icd").read_bytes()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_damaged_documents_parse_or_are_refused_never_anything_else(data: st.DataObject) -> None:
    root = etree.fromstring(_VALID)
    elements = list(root.iter())
    for _ in range(data.draw(st.integers(1, 4))):
        victim = data.draw(st.sampled_from(elements))
        action = data.draw(st.sampled_from(["drop", "attr", "dup", "text"]))
        parent = victim.getparent()
        if action == "drop" and parent is not None:
            parent.remove(victim)
            elements = list(root.iter())
        elif action == "attr" and victim.attrib:
            key = data.draw(st.sampled_from(sorted(victim.attrib)))
            victim.set(
                key,
                data.draw(st.text(max_size=12).filter(lambda s: "\x00" not in s and all(c.isprintable() for c in s))),
            )
        elif action == "dup" and parent is not None:
            parent.append(etree.fromstring(etree.tostring(victim)))
            elements = list(root.iter())
        elif action == "text":
            victim.text = data.draw(st.text(max_size=8).filter(lambda s: all(c.isprintable() for c in s)))
    blob = etree.tostring(root)
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    if cut is not None:
        blob = blob[:cut]
    try:
        doc = read_scl(blob, name="damaged.icd", lenient=data.draw(st.booleans()))
    except SclError as exc:
        assert exc.problems and all(isinstance(p, str) and isinstance(r, str) for p, r in exc.problems)
        return
    for ied in doc.ieds:
        with contextlib.suppress(ValueError):
            site_fragment(ied)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_is_refused(blob: bytes) -> None:
    with contextlib.suppress(SclError):
        read_scl(blob, name="garbage")


def test_fragment_is_valid_toml() -> None:
    from gateway.commissioning.scl_import import fragment_text

    doc = read_scl(export_site(load(SITE)))
    text = fragment_text([site_fragment(i) for i in doc.ieds], "sub003.scd")
    parsed = tomllib.loads(text)
    assert [i["id"] for i in parsed["ieds"]] == ["IED-BAY046", "IED-SW0461", "IED-SW0462", "IED-TIE0461"]
