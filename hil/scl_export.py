"""The simulated bay controllers' model as IEC 61850-6 SCL (edition 2.1, 2007B4).

    stima-hil scl --config SITE [--ied IED-ID] [--out FILE.cid]

`hil.iec61850_server.BayModel` builds each IED's model from the site file's points; this module
writes the same model as a CID file, as an IED configurator would: the IED with one access
point and server, its logical devices and nodes, LLN0 with the data set `dsPoints` and the
report control blocks, the data type templates (MV, CMV under a WYE container, SPS, INS, SPC and
DPC with their control model), units where the site file names them, and the Communication
section with the IED's address. The MMS port, which IEC 61850-6 has no parameter for, is written
as the extension `<P type="MMS-Port">`.

The export is what `stima scl import` is tested against: import(export(IED)) must give back the
IED's references, FCs, controls and report control blocks.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from gateway.config import ConfigError, SiteConfig, load
from gateway.contract.settings import Iec61850Ied, PointKindName

NS = "http://www.iec.ch/61850/2003/SCL"
_LD_SPLIT = re.compile(r"^(?P<ied>.+?)(?P<inst>LD\d*)$")
_LN_SPLIT = re.compile(r"^(?P<prefix>[A-Za-z0-9_]*?)(?P<cls>[A-Z]{4})(?P<inst>\d*)$")
DATA_SET_NAME = "dsPoints"
CTL_MODEL_SBO_ENHANCED = "sbo-with-enhanced-security"
_UNITS = {
    "A": ("A", ""),
    "kV": ("V", "k"),
    "V": ("V", ""),
    "Hz": ("Hz", ""),
    "kW": ("W", "k"),
    "W": ("W", ""),
    "kvar": ("VAr", "k"),
    "var": ("VAr", ""),
    "kVA": ("VA", "k"),
    "deg": ("deg", ""),
    "°C": ("degC", ""),
}
_SI_UNIT_ORD = {"A": 5, "V": 29, "Hz": 33, "W": 62, "VAr": 63, "VA": 61, "deg": 9, "degC": 23}
_MULTIPLIER_ORD = {"": 0, "k": 3}


class ExportError(ValueError):
    """The IED's points cannot be written as the simulator's model (same rules as BayModel)."""


def _el(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{NS}}}{tag}", {k.rstrip("_"): v for k, v in attrs.items()})


def split_ld(ld_name: str) -> tuple[str, str]:
    match = _LD_SPLIT.match(ld_name)
    return ("", ld_name) if match is None else (match["ied"], match["inst"])


def split_ln(ln_name: str) -> tuple[str, str, str]:
    match = _LN_SPLIT.match(ln_name)
    if match is None:
        raise ExportError(f"logical node name {ln_name!r}: expected [prefix]CLASS[inst], e.g. MMXU1")
    return match["prefix"], match["cls"], match["inst"]


@dataclass
class _Do:
    kind: str  # MV, MVi, CMV, WYE, SPS, INS, DPS(Pos status), SPC, DPC
    unit: str = ""
    ctl_model: str = "status-only"
    children: dict[str, _Do] = field(default_factory=dict)


@dataclass
class _Ln:
    dos: dict[str, _Do] = field(default_factory=dict)


def _model(ied: Iec61850Ied) -> tuple[str, dict[str, dict[str, _Ln]], dict[str, list[tuple[str, str, str]]]]:
    """(IED name, LD → LN → data objects, LD → data set entries (LN, FC, DO path))."""
    lds: dict[str, dict[str, _Ln]] = {}
    entries: dict[str, list[tuple[str, str, str]]] = {}
    names = set()

    def ln_of(ld: str, ln: str) -> _Ln:
        lns = lds.setdefault(ld, {"LLN0": _Ln()})
        entries.setdefault(ld, [])
        return lns.setdefault(ln, _Ln())

    def entry(ld: str, item: tuple[str, str, str]) -> None:
        if item not in entries[ld]:
            entries[ld].append(item)

    for point in sorted(ied.points, key=lambda p: not p.control):
        ld, _, rest = point.reference.partition("/")
        ln, *parts = rest.split(".")
        names.add(split_ld(ld)[0])
        node = ln_of(ld, ln)
        where = f"point {point.id} ({point.reference})"
        if point.control:
            if len(parts) != 1 or point.kind is not PointKindName.BINARY:
                raise ExportError(f"{where}: a control point names a binary data object, e.g. 'LD/CSWI1.Pos'")
            node.dos[parts[0]] = _Do("DPC" if parts[0] == "Pos" else "SPC", ctl_model=CTL_MODEL_SBO_ENHANCED)
            entry(ld, (ln, "ST", parts[0]))
            continue
        if len(parts) == 3 and parts[1:] in (["mag", "f"], ["mag", "i"]):
            node.dos.setdefault(parts[0], _Do("MVi" if parts[2] == "i" else "MV", unit=point.unit))
            entry(ld, (ln, "MX", parts[0]))
        elif len(parts) == 5 and parts[2:] == ["cVal", "mag", "f"]:
            wye = node.dos.setdefault(parts[0], _Do("WYE"))
            wye.children.setdefault(parts[1], _Do("CMV", unit=point.unit))
            entry(ld, (ln, "MX", f"{parts[0]}.{parts[1]}"))
        elif len(parts) == 2 and parts[1] == "stVal":
            if parts[0] not in node.dos:
                if point.kind is PointKindName.BINARY:
                    node.dos[parts[0]] = _Do("DPS" if parts[0] == "Pos" else "SPS")
                else:
                    node.dos[parts[0]] = _Do("INS")
            entry(ld, (ln, "ST", parts[0]))
        else:
            raise ExportError(
                f"{where}: unsupported reference shape (the simulator serves LN.DO.mag.f, "
                "LN.DO.SUB.cVal.mag.f, LN.DO.stVal and control DOs)"
            )
    if len(names) > 1:
        raise ExportError(f"IED {ied.id}: logical devices imply different IED names {sorted(names)}")
    ied_name = names.pop() if names else ied.id.replace("-", "")
    return ied_name, lds, entries


def export_ied(ied: Iec61850Ied, root: etree._Element | None = None) -> etree._Element:
    """An SCL document (root element) holding `ied` as the simulator serves it."""
    ied_name, lds, entries = _model(ied)
    scl = root
    if scl is None:
        scl = etree.Element(f"{{{NS}}}SCL", nsmap={None: NS}, version="2007", revision="B", release="4")
        _el(
            scl,
            "Header",
            id=f"stima-hil-{ied.id}",
            version="1",
            revision="1",
            toolID="stima-hil scl",
            nameStructure="IEDName",
        )
        _el(scl, "Communication")
    comm = scl.find(f"{{{NS}}}Communication")
    assert comm is not None
    subnet = comm.find(f"{{{NS}}}SubNetwork")
    if subnet is None:
        subnet = _el(comm, "SubNetwork", name="StationBus", type="8-MMS")
    cap = _el(subnet, "ConnectedAP", iedName=ied_name, apName="AP1")
    address = _el(cap, "Address")
    _el(address, "P", type="IP").text = ied.host
    _el(address, "P", type="IP-SUBNET").text = "255.255.255.0"
    _el(address, "P", type="MMS-Port").text = str(ied.port)

    templates = scl.find(f"{{{NS}}}DataTypeTemplates")
    ied_el = _el(
        scl,
        "IED",
        name=ied_name,
        manufacturer="Stima",
        type="stima-hil bay",
        desc=ied.description or ied.id,
        configVersion="1",
        originalSclVersion="2007",
        originalSclRevision="B",
        originalSclRelease="4",
    )
    if templates is None:
        templates = _el(scl, "DataTypeTemplates")
    else:
        scl.remove(templates)
        scl.append(templates)  # the templates come last
    types = _Templates(templates)
    services = _el(ied_el, "Services")
    for tag in (
        "DynAssociation",
        "GetDirectory",
        "GetDataObjectDefinition",
        "DataObjectDirectory",
        "GetDataSetValue",
        "DataSetDirectory",
        "ReadWrite",
        "GetCBValues",
    ):
        _el(services, tag)
    _el(services, "ConfReportControl", max="8")
    _el(services, "ConfLNs", fixPrefix="true", fixLnInst="true")
    server = _el(_el(ied_el, "AccessPoint", name="AP1"), "Server")
    _el(server, "Authentication")
    rcbs_of: dict[str, list[tuple[str, bool]]] = {}
    for rcb_ref in ied.report_control_blocks:
        match = re.fullmatch(r"(?P<ld>[^/]+)/LLN0\.(?P<kind>BR|RP)\.(?P<name>[A-Za-z0-9_]+)", rcb_ref)
        if match is None:
            raise ExportError(
                f"report control block {rcb_ref!r}: the simulator puts RCBs in LLN0 "
                "('LD/LLN0.BR.name' or 'LD/LLN0.RP.name')"
            )
        rcbs_of.setdefault(match["ld"], []).append((match["name"], match["kind"] == "BR"))
    for ld_name in sorted(lds):
        ld_el = _el(server, "LDevice", inst=split_ld(ld_name)[1])
        lns = lds[ld_name]
        # an LNodeType needs one data object at least (IEC 61850-6): LLN0 is written with Beh,
        # which the simulated server does not hold (nothing reads it)
        ln0 = _el(ld_el, "LN0", lnClass="LLN0", inst="", lnType=types.lnode("LLN0", {"Beh": _Do("INS")}))
        if entries[ld_name]:
            ds = _el(ln0, "DataSet", name=DATA_SET_NAME)
            for ln_name, fc, do_path in entries[ld_name]:
                prefix, cls, inst = split_ln(ln_name)
                _el(
                    ds,
                    "FCDA",
                    ldInst=split_ld(ld_name)[1],
                    prefix=prefix,
                    lnClass=cls,
                    lnInst=inst,
                    doName=do_path,
                    fc=fc,
                )
        for name, buffered in rcbs_of.get(ld_name, []):
            indexed = re.fullmatch(r"(.+?)(\d{2})", name)
            base = indexed.group(1) if indexed and indexed.group(2) == "01" else name
            rc = _el(
                ln0,
                "ReportControl",
                name=base,
                rptID=f"{ld_name}/LLN0.{'BR' if buffered else 'RP'}.{name}",
                datSet=DATA_SET_NAME,
                confRev="1",
                buffered="true" if buffered else "false",
                bufTime="0",
                intgPd="5000",
                indexed="true" if base != name else "false",
            )
            _el(rc, "TrgOps", dchg="true", qchg="true", dupd="false", period="true", gi="true")
            _el(
                rc,
                "OptFields",
                seqNum="true",
                timeStamp="true",
                dataSet="true",
                reasonCode="true",
                dataRef="false",
                entryID="true",
                configRef="true",
                bufOvfl="false",
            )
            _el(rc, "RptEnabled", max="1")
        for ln_name in sorted(n for n in lns if n != "LLN0"):
            prefix, cls, inst = split_ln(ln_name)
            node = lns[ln_name]
            ln_el = _el(ld_el, "LN", prefix=prefix, lnClass=cls, inst=inst, lnType=types.lnode(cls, node.dos))
            for do_name, do in node.dos.items():
                _instance(ln_el, do_name, do)
    return scl


def _instance(ln_el: etree._Element, do_name: str, do: _Do) -> None:
    """DOI/DAI values: the control model of a control, the units of a measurement."""
    if do.kind in ("SPC", "DPC", "DPS"):
        doi = _el(ln_el, "DOI", name=do_name)
        _el(_el(doi, "DAI", name="ctlModel"), "Val").text = do.ctl_model
    elif do.kind in ("MV", "MVi") and do.unit in _UNITS:
        _units(_el(ln_el, "DOI", name=do_name), do.unit)
    elif do.kind == "WYE":
        children = [(n, c) for n, c in do.children.items() if c.unit in _UNITS]
        if children:
            doi = _el(ln_el, "DOI", name=do_name)
            for sub_name, sub in children:
                _units(_el(doi, "SDI", name=sub_name), sub.unit)


def _units(parent: etree._Element, unit: str) -> None:
    si, multiplier = _UNITS[unit]
    sdi = _el(parent, "SDI", name="units")
    _el(_el(sdi, "DAI", name="SIUnit"), "Val").text = si
    if multiplier:
        _el(_el(sdi, "DAI", name="multiplier"), "Val").text = multiplier


class _Templates:
    """The DataTypeTemplates section, each type written once."""

    def __init__(self, el: etree._Element) -> None:
        self.el = el
        self.ids = {t.get("id") for t in el}
        self._order = ("LNodeType", "DOType", "DAType", "EnumType")

    def _add(self, tag: str, type_id: str) -> etree._Element | None:
        if type_id in self.ids:
            return None
        self.ids.add(type_id)
        new = etree.Element(f"{{{NS}}}{tag}", id=type_id)
        rank = self._order.index(tag)
        position = sum(1 for t in self.el if self._order.index(etree.QName(t).localname) <= rank)
        self.el.insert(position, new)
        return new

    def lnode(self, cls: str, dos: dict[str, _Do]) -> str:
        type_id = f"HIL_{cls}_" + "_".join(f"{n}-{self.do(d)}" for n, d in sorted(dos.items()))
        el = self._add("LNodeType", type_id)
        if el is not None:
            el.set("lnClass", cls)
            for name, do in sorted(dos.items()):
                _el(el, "DO", name=name, type=self.do(do))
        return type_id

    def do(self, do: _Do) -> str:
        if do.kind == "WYE":
            type_id = "HIL_WYE_" + "_".join(sorted(do.children))
            el = self._add("DOType", type_id)
            if el is not None:
                el.set("cdc", "WYE")
                for name in sorted(do.children):
                    _el(el, "SDO", name=name, type=self.do(do.children[name]))
            return type_id
        type_id = f"HIL_{do.kind}"
        el = self._add("DOType", type_id)
        if el is None:
            return type_id
        cdc = {
            "MV": "MV",
            "MVi": "MV",
            "CMV": "CMV",
            "SPS": "SPS",
            "INS": "INS",
            "DPS": "DPC",
            "SPC": "SPC",
            "DPC": "DPC",
        }[do.kind]
        el.set("cdc", cdc)
        if do.kind in ("MV", "MVi"):
            _el(el, "DA", name="mag", bType="Struct", type=self.analogue(do.kind == "MVi"), fc="MX", dchg="true")
            self._qt(el, "MX")
            _el(el, "DA", name="units", bType="Struct", type=self.units(), fc="CF")
        elif do.kind == "CMV":
            _el(el, "DA", name="cVal", bType="Struct", type=self.vector(), fc="MX", dchg="true")
            self._qt(el, "MX")
            _el(el, "DA", name="units", bType="Struct", type=self.units(), fc="CF")
        elif do.kind in ("SPS", "INS"):
            _el(el, "DA", name="stVal", bType="BOOLEAN" if do.kind == "SPS" else "INT32", fc="ST", dchg="true")
            self._qt(el, "ST")
        else:
            binary = do.kind == "SPC"
            if do.kind != "DPS":
                for name in ("SBOw", "Oper"):
                    _el(el, "DA", name=name, bType="Struct", type=self.operate(), fc="CO")
                _el(el, "DA", name="Cancel", bType="Struct", type=self.cancel(), fc="CO")
            _el(el, "DA", name="stVal", bType="BOOLEAN" if binary else "Dbpos", fc="ST", dchg="true")
            self._qt(el, "ST")
            _el(el, "DA", name="ctlModel", bType="Enum", type=self.ctl_models(), fc="CF")
        return type_id

    @staticmethod
    def _qt(el: etree._Element, fc: str) -> None:
        _el(el, "DA", name="q", bType="Quality", fc=fc, qchg="true")
        _el(el, "DA", name="t", bType="Timestamp", fc=fc)

    def analogue(self, integer: bool) -> str:
        type_id = "HIL_AnalogueValue_i" if integer else "HIL_AnalogueValue"
        el = self._add("DAType", type_id)
        if el is not None:
            _el(el, "BDA", name="i" if integer else "f", bType="INT32" if integer else "FLOAT32")
        return type_id

    def vector(self) -> str:
        el = self._add("DAType", "HIL_Vector")
        if el is not None:
            _el(el, "BDA", name="mag", bType="Struct", type=self.analogue(False))
        return "HIL_Vector"

    def units(self) -> str:
        el = self._add("DAType", "HIL_Unit")
        if el is not None:
            _el(el, "BDA", name="SIUnit", bType="Enum", type=self._enum("HIL_SIUnit", _SI_UNIT_ORD))
            _el(el, "BDA", name="multiplier", bType="Enum", type=self._enum("HIL_Multiplier", _MULTIPLIER_ORD))
        return "HIL_Unit"

    def operate(self) -> str:
        el = self._add("DAType", "HIL_Operate")
        if el is not None:
            _el(el, "BDA", name="ctlVal", bType="BOOLEAN")
            _el(el, "BDA", name="origin", bType="Struct", type=self.originator())
            _el(el, "BDA", name="ctlNum", bType="INT8U")
            _el(el, "BDA", name="T", bType="Timestamp")
            _el(el, "BDA", name="Test", bType="BOOLEAN")
            _el(el, "BDA", name="Check", bType="Check")
        return "HIL_Operate"

    def cancel(self) -> str:
        el = self._add("DAType", "HIL_Cancel")
        if el is not None:
            _el(el, "BDA", name="ctlVal", bType="BOOLEAN")
            _el(el, "BDA", name="origin", bType="Struct", type=self.originator())
            _el(el, "BDA", name="ctlNum", bType="INT8U")
            _el(el, "BDA", name="T", bType="Timestamp")
            _el(el, "BDA", name="Test", bType="BOOLEAN")
        return "HIL_Cancel"

    def originator(self) -> str:
        el = self._add("DAType", "HIL_Originator")
        if el is not None:
            _el(
                el,
                "BDA",
                name="orCat",
                bType="Enum",
                type=self._enum(
                    "HIL_OrCat",
                    {
                        "not-supported": 0,
                        "bay-control": 1,
                        "station-control": 2,
                        "remote-control": 3,
                        "automatic-bay": 4,
                        "automatic-station": 5,
                        "automatic-remote": 6,
                        "maintenance": 7,
                        "process": 8,
                    },
                ),
            )
            _el(el, "BDA", name="orIdent", bType="Octet64")
        return "HIL_Originator"

    def ctl_models(self) -> str:
        return self._enum(
            "HIL_CtlModels",
            {
                "status-only": 0,
                "direct-with-normal-security": 1,
                "sbo-with-normal-security": 2,
                "direct-with-enhanced-security": 3,
                "sbo-with-enhanced-security": 4,
            },
        )

    def _enum(self, type_id: str, values: dict[str, int]) -> str:
        el = self._add("EnumType", type_id)
        if el is not None:
            for text, ord_ in sorted(values.items(), key=lambda kv: kv[1]):
                _el(el, "EnumVal", ord=str(ord_)).text = text
        return type_id


def export_site(site: SiteConfig, ied_ids: list[str] | None = None) -> bytes:
    """One SCD-like document with every (or the given) IEC 61850 IED of the site."""
    ieds = [i for i in site.ieds if isinstance(i, Iec61850Ied) and (not ied_ids or i.id in ied_ids)]
    if ied_ids:
        missing = sorted(set(ied_ids) - {i.id for i in ieds})
        if missing:
            raise ExportError(f"no IEC 61850 IED {', '.join(missing)} in the site file")
    if not ieds:
        raise ExportError("the site file has no IEC 61850 IED")
    root = export_ied(ieds[0])
    for ied in ieds[1:]:
        export_ied(ied, root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stima-hil scl", description="write the simulated IEC 61850 IEDs as SCL")
    parser.add_argument("--config", required=True, help="site file (TOML)")
    parser.add_argument("--ied", action="append", help="IED id (repeatable; default: every IEC 61850 IED)")
    parser.add_argument("--out", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    try:
        data = export_site(load(args.config), args.ied)
    except (ConfigError, ExportError) as exc:
        print(f"stima-hil scl: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
