"""IEC 61850 without a network: quality mapping, reference handling, value decoding, and the
bay server's model building and stdin parsing (in-process, never started)."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load
from gateway.contract.settings import Iec61850Ied, Iec61850Point
from gateway.contract.points import GOOD, Quality, QualityReason, Validity
from hil.iec61850_server import BayModel, BayServer, ModelError
from protocols import _iec61850_ffi as c
from protocols.iec61850 import (
    MALFORMED,
    OUT_OF_RANGE,
    PointAddress,
    _parse_dataset_entry,
    _relative,
    data_object_reference,
    decode_value,
    map_quality,
)

SITE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml"
lib, ffi = c.lib, c.ffi


@pytest.fixture(scope="module")
def bay046() -> Iec61850Ied:
    ied = load(SITE).ied("IED-BAY-046")
    assert isinstance(ied, Iec61850Ied)
    return ied


# --------------------------------------------------------------------------- quality


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        (0x0000, GOOD),
        (0x0002, Quality(Validity.INVALID)),
        (0x0003, Quality(Validity.QUESTIONABLE)),
        (0x0001, Quality(Validity.INVALID)),
        (0x0002 | 0x0040, Quality(Validity.INVALID, QualityReason.FAILURE)),
        (0x0003 | 0x0080, Quality(Validity.QUESTIONABLE, QualityReason.OLD_DATA)),
        (0x0002 | 0x0008, Quality(Validity.INVALID, QualityReason.OUT_OF_RANGE)),
        (0x0003 | 0x0020, Quality(Validity.QUESTIONABLE, QualityReason.OSCILLATORY)),
        (0x0400, Quality(Validity.GOOD, QualityReason.SUBSTITUTED)),
        (0x0800, Quality(Validity.GOOD, QualityReason.TEST)),
        (0x1000, Quality(Validity.GOOD, QualityReason.OPERATOR_BLOCKED)),
        (0x0002 | 0x0004 | 0x0100, Quality(Validity.INVALID, QualityReason.OVERFLOW)),
    ],
)
def test_quality_mapping(bits: int, expected: Quality) -> None:
    assert map_quality(bits) == expected


@given(st.integers(min_value=0, max_value=0x1FFF))
def test_quality_mapping_is_total_and_keeps_validity(bits: int) -> None:
    quality = map_quality(bits)
    assert (
        quality.validity
        is {0: Validity.GOOD, 1: Validity.INVALID, 2: Validity.INVALID, 3: Validity.QUESTIONABLE}[bits & 3]
    )
    assert (quality.reason is QualityReason.NONE) == (bits & ~3 == 0)


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("reference", "do_ref"),
    [
        ("BAY046LD0/MMXU1.A.phsA.cVal.mag.f", "BAY046LD0/MMXU1.A.phsA"),
        ("BAY046LD0/MMXU1.A.neut.cVal.mag.f", "BAY046LD0/MMXU1.A.neut"),
        ("BAY046LD0/MMXU1.Hz.mag.f", "BAY046LD0/MMXU1.Hz"),
        ("BAY046LD0/XCBR1.Pos.stVal", "BAY046LD0/XCBR1.Pos"),
        ("BAY046LD0/CSWI1.Pos", "BAY046LD0/CSWI1.Pos"),
        ("LD/PTOC1.Str.general", "LD/PTOC1.Str"),
    ],
)
def test_data_object_reference(reference: str, do_ref: str) -> None:
    assert data_object_reference(reference) == do_ref


def test_control_point_is_read_through_its_status(bay046: Iec61850Ied) -> None:
    cmd = next(p for p in bay046.points if p.control)
    address = PointAddress.of(cmd)
    assert (address.value_ref, address.fc, address.do_ref) == (
        "BAY046LD0/CSWI1.Pos.stVal",
        "ST",
        "BAY046LD0/CSWI1.Pos",
    )
    assert address.ln_ref == "BAY046LD0/CSWI1"


def test_dataset_entries_and_relative_paths() -> None:
    assert _parse_dataset_entry("BAY046LD0/MMXU1.A.phsA[MX]") == ("BAY046LD0/MMXU1.A.phsA", "MX")
    assert _parse_dataset_entry("LD/LN.DO") == ("LD/LN.DO", "")
    assert _relative("LD/LN.A.phsA.cVal.mag.f", "LD/LN.A.phsA") == "cVal.mag.f"
    assert _relative("LD/LN.A.phsA", "LD/LN.A.phsA") == ""
    assert _relative("LD/LN.A.phsAB.q", "LD/LN.A.phsA") is None


# --------------------------------------------------------------------------- values


def _point(**changes: Any) -> Iec61850Point:
    return Iec61850Point(id="P", reference="LD/MMXU1.Hz.mag.f", **changes)


@given(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e3, max_value=1e3).filter(lambda v: v != 0),
    st.floats(min_value=-1e3, max_value=1e3),
)
@settings(max_examples=200)
def test_float_decoding_applies_scale_and_offset(raw: float, scale: float, offset: float) -> None:
    mms = lib.MmsValue_newFloat(raw)
    try:
        value, quality = decode_value(mms, _point(scale=scale, offset=offset))
    finally:
        lib.MmsValue_delete(mms)
    expected = raw * scale + offset
    if not math.isfinite(expected):
        assert (value, quality) == (None, MALFORMED)
    else:
        assert quality == GOOD
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_out_of_range_and_binary_and_integer_values() -> None:
    mms = lib.MmsValue_newFloat(75.0)
    try:
        assert decode_value(mms, _point(valid_range=(40.0, 70.0))) == (75.0, OUT_OF_RANGE)
    finally:
        lib.MmsValue_delete(mms)
    mms = lib.MmsValue_newBoolean(True)
    try:
        assert decode_value(mms, _point(kind="binary")) == (True, GOOD)
    finally:
        lib.MmsValue_delete(mms)
    mms = lib.MmsValue_newIntegerFromInt32(-42)
    try:
        assert decode_value(mms, _point(kind="counter", scale=2.0)) == (-84, GOOD)
    finally:
        lib.MmsValue_delete(mms)


# --------------------------------------------------------------------------- bay server model


def test_bay_model_holds_what_the_site_file_references(bay046: Iec61850Ied) -> None:
    model = BayModel(bay046)
    try:
        assert model.ied_name == "BAY046"
        assert model.dataset_entries() == {
            "BAY046LD0": [
                "CSWI1$ST$Pos",
                "MMXU1$MX$A$phsA",
                "MMXU1$MX$A$phsB",
                "MMXU1$MX$A$phsC",
                "MMXU1$MX$A$neut",
                "MMXU1$MX$PhV$phsA",
                "MMXU1$MX$Hz",
                "MMXU1$MX$TotW",
                "XCBR1$ST$Pos",
            ]
        }
        assert set(model.controls) == {"CB-046.position_cmd"}
        assert len(model.bindings) == len(bay046.points)
        # RCBs are not model nodes; test_iec61850.py reads BAY046LD0/LLN0.BR.brcbMeas01 over MMS.
    finally:
        lib.IedModel_destroy(model.model)


@pytest.mark.parametrize(
    ("point", "message"),
    [
        (
            {"id": "X", "reference": "LD0/MMXU1.A.phsA.instCVal.mag.f"},
            "unsupported reference shape",
        ),
        ({"id": "X", "reference": "LD0/MMXU1.Hz.mag.f", "fc": "ST"}, "has FC MX"),
        (
            {"id": "X", "reference": "LD0/CSWI1.Pos.stVal", "control": True, "kind": "binary"},
            "names a data object",
        ),
        ({"id": "X", "reference": "LD0/GGIO1.AnOut", "control": True}, "only binary controls"),
    ],
)
def test_bay_model_explains_what_it_cannot_build(point: dict[str, Any], message: str) -> None:
    ied = Iec61850Ied(id="IED-X", protocol="iec61850", host="127.0.0.1", points=[Iec61850Point(**point)])
    with pytest.raises(ModelError, match=message):
        BayModel(ied)


@pytest.fixture(scope="module")
def bay_server(bay046: Iec61850Ied) -> Iterator[tuple[BayServer, io.StringIO]]:
    out = io.StringIO()
    server = BayServer(BayModel(bay046), out)
    try:
        yield server, out
    finally:
        lib.IedServer_destroy(server.server)
        lib.IedModel_destroy(server.model.model)


def test_values_reach_the_data_model(bay_server: tuple[BayServer, io.StringIO]) -> None:
    server, _ = bay_server
    server.handle_line(json.dumps({"values": {"CB-046.ia": 12.5, "CB-046.closed": False}}))
    ia = server.model.bindings["CB-046.ia"]
    closed = server.model.bindings["CB-046.closed"]
    value = _attribute_value(server, ia.value_ref)
    assert lib.MmsValue_toFloat(value) == 12.5
    dbpos = _attribute_value(server, closed.value_ref)
    assert lib.MmsValue_getBitStringAsIntegerBigEndian(dbpos) == c.DBPOS_OFF
    server.handle_line(json.dumps({"values": {"CB-046.ia": None}}))
    q = _attribute_value(server, ia.do_ref + ".q")
    assert map_quality(lib.Quality_fromMmsValue(q)).validity is Validity.INVALID


def _attribute_value(server: BayServer, ref: str) -> Any:
    node = lib.IedModel_getModelNodeByObjectReference(server.model.model, ref.encode())
    assert node != ffi.NULL
    return lib.IedServer_getAttributeValue(server.server, ffi.cast("DataAttribute*", node))


def test_interlock_lines(bay_server: tuple[BayServer, io.StringIO]) -> None:
    server, _ = bay_server
    control = server.model.controls["CB-046.position_cmd"]
    server.handle_line(
        json.dumps({"interlock": {"point_id": "CB-046.position_cmd", "blocked": True, "reason": "fault"}})
    )
    assert control.blocked and control.reason == "fault"
    server.handle_line(json.dumps({"interlock": {"point_id": "IED-BAY-046", "blocked": False}}))
    assert not control.blocked
    server.handle_line(json.dumps({"interlock": {"point_id": "CB-046.closed", "blocked": True}}))
    assert control.blocked
    server.handle_line(json.dumps({"interlock": {"point_id": "CB-046.closed", "blocked": "yes"}}))
    assert control.blocked  # not a boolean: ignored
    server.handle_line(json.dumps({"interlock": {"point_id": "CB-046.closed", "blocked": False}}))
    assert not control.blocked


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(st.text(max_size=200))
@settings(max_examples=200)
def test_garbage_lines_never_raise(bay_server: tuple[BayServer, io.StringIO], line: str) -> None:
    bay_server[0].handle_line(line)


@given(
    st.dictionaries(st.sampled_from(["values", "interlock", "other"]), json_values, max_size=3),
    st.dictionaries(
        st.sampled_from(["CB-046.ia", "CB-046.closed", "CB-046.position_cmd", "nope"]),
        json_values,
        max_size=4,
    ),
)
@settings(max_examples=200)
def test_odd_json_never_raises(
    bay_server: tuple[BayServer, io.StringIO], message: dict[str, Any], values: dict[str, Any]
) -> None:
    server = bay_server[0]
    server.handle_line(json.dumps(message))
    server.handle_line(json.dumps({"values": values}))
    assert not bay_server[1].getvalue()  # no input line ever produces a command


_MAPPED_AFTER_IMPORT = """
import sys
import protocols.iec61850, protocols.iec61850_discovery
def mapped():
    with open("/proc/self/maps") as maps:
        return any("libiec61850" in line for line in maps)
before = mapped()
version = protocols.iec61850.lib.LibIEC61850_getVersionString()
print(before, "pyiec61850" in sys.modules, mapped(), bool(version))
"""


def test_importing_the_adapters_opens_no_library_until_one_is_called() -> None:
    """A site without IEC 61850 never maps libiec61850; the first call maps it, once."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _MAPPED_AFTER_IMPORT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=SITE.parents[2],
    ).stdout.split()
    assert out == ["False", "False", "True", "True"]


def test_the_adapter_and_the_browser_share_one_library() -> None:
    import protocols.iec61850_discovery as discovery

    assert discovery.lib is c.lib and lib is c.lib
    assert c.lib.IedConnection_create is c.lib.IedConnection_create  # kept after the first lookup
