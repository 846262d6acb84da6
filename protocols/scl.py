"""Reading IEC 61850-6 SCL files (ICD, CID, IID, SCD; editions 1, 2 and 2.1) into a plain model.

The document is parsed with lxml (no network, no entity expansion, a size bound) and validated
against the IEC 61850-6 2007B4 schema shipped in `protocols/scl_schema` (edition 2.1, which also
describes editions 1 and 2 once the root's version attributes are set aside: they are checked
here instead). Then the instance tree (IED → AccessPoint → Server → LDevice → LN0/LN) is
resolved through the DataTypeTemplates (LNodeType → DO/SDO → DOType → DA → DAType → BDA) into
every leaf data attribute with its functional constraint, and the data sets, report control
blocks, controls (with the `ctlModel` the instance or the type sets) and the connection from
the Communication section are collected.

Every refusal is an `SclError` naming the element path (`/SCL/IED[@name='X']/...`) and the
reason. Nothing here opens a socket; `read_scl` takes bytes or a path.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lxml import etree

NS = "http://www.iec.ch/61850/2003/SCL"
_Q = f"{{{NS}}}"
MAX_FILE_BYTES = 64 * 1024 * 1024
"""SCD files of large substations run to tens of megabytes; anything beyond this is refused."""
MAX_TYPE_DEPTH = 16
"""Nesting of SDO/DA/BDA types deeper than this is taken as a cycle in the templates."""
SCHEMA_DIR = Path(__file__).with_name("scl_schema")

CTL_MODELS = (
    "status-only",
    "direct-with-normal-security",
    "sbo-with-normal-security",
    "direct-with-enhanced-security",
    "sbo-with-enhanced-security",
)
TRIGGER_OPTIONS = ("dchg", "qchg", "dupd", "period", "gi")
OPTIONAL_FIELDS = ("seqNum", "timeStamp", "dataSet", "reasonCode", "dataRef", "entryID", "configRef", "bufOvfl")


class Edition(enum.Enum):
    ED1 = "1"
    ED2 = "2"
    ED2_1 = "2.1"


class SclError(ValueError):
    """The file cannot be used: `problems` holds (element path, reason) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {reason}" for path, reason in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}{more}")


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Attribute:
    """One leaf data attribute of a data object: `path` below the DO ('mag.f', 'stVal')."""

    path: str
    fc: str
    btype: str
    enum_type: str | None = None
    trigger: tuple[str, ...] = ()
    """Trigger options the type declares for it (dchg, qchg, dupd)."""


@dataclass(frozen=True, slots=True)
class DataObject:
    """A data object or sub-data object: `name` is its path in the LN ('A.phsA' for an SDO)."""

    name: str
    cdc: str
    attributes: tuple[Attribute, ...]
    ctl_model: str | None = None
    """For a controllable object (one with an Oper attribute): its control model."""
    units: tuple[str, str] | None = None
    """(SI unit, multiplier) when the instance or the type says so."""

    @property
    def controllable(self) -> bool:
        return any(a.fc == "CO" and a.path.split(".")[0] == "Oper" for a in self.attributes)


@dataclass(frozen=True, slots=True)
class DataSetMember:
    ld_inst: str
    prefix: str
    ln_class: str
    ln_inst: str
    do_name: str
    da_name: str
    fc: str

    @property
    def ln_name(self) -> str:
        return f"{self.prefix}{self.ln_class}{self.ln_inst}"

    def reference(self, ied_name: str) -> str:
        tail = f".{self.da_name}" if self.da_name else ""
        return f"{ied_name}{self.ld_inst}/{self.ln_name}.{self.do_name}{tail}"


@dataclass(frozen=True, slots=True)
class DataSet:
    name: str
    members: tuple[DataSetMember, ...]


@dataclass(frozen=True, slots=True)
class ReportControl:
    name: str
    buffered: bool
    rpt_id: str
    dataset: str
    conf_rev: int
    intg_pd_ms: int
    buf_time_ms: int
    trigger_options: frozenset[str]
    optional_fields: frozenset[str]
    indexed: bool
    max_clients: int

    def instance_names(self) -> list[str]:
        """Names of the RCB instances a server offers: `name01`... when indexed (IEC 61850-6)."""
        if not self.indexed:
            return [self.name]
        return [f"{self.name}{k:02d}" for k in range(1, max(self.max_clients, 1) + 1)]


@dataclass(frozen=True, slots=True)
class LogicalNode:
    prefix: str
    ln_class: str
    inst: str
    ln_type: str
    data_objects: tuple[DataObject, ...]
    data_sets: tuple[DataSet, ...] = ()
    report_controls: tuple[ReportControl, ...] = ()
    desc: str = ""

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.ln_class}{self.inst}"


@dataclass(frozen=True, slots=True)
class LogicalDevice:
    inst: str
    name: str
    """The LD's name in object references (IED name + inst, unless the file gives ldName)."""
    logical_nodes: tuple[LogicalNode, ...]
    desc: str = ""


@dataclass(frozen=True, slots=True)
class SclIed:
    name: str
    access_point: str
    logical_devices: tuple[LogicalDevice, ...]
    manufacturer: str = ""
    type: str = ""
    desc: str = ""
    ip: str | None = None
    port: int | None = None

    def logical_node(self, ld_name: str, ln_name: str) -> LogicalNode | None:
        for ld in self.logical_devices:
            if ld.name == ld_name:
                for ln in ld.logical_nodes:
                    if ln.name == ln_name:
                        return ln
        return None

    def attributes(self) -> Iterator[tuple[LogicalDevice, LogicalNode, DataObject, Attribute]]:
        for ld in self.logical_devices:
            for ln in ld.logical_nodes:
                for do in ln.data_objects:
                    for attr in do.attributes:
                        yield ld, ln, do, attr


@dataclass(frozen=True, slots=True)
class SclDocument:
    source: str
    edition: Edition
    version: str
    """The root's version/revision/release as written (e.g. '2007B4'; '' for edition 1)."""
    ieds: tuple[SclIed, ...]
    warnings: tuple[str, ...] = ()
    tool: str = ""

    def ied(self, name: str) -> SclIed:
        for ied in self.ieds:
            if ied.name == name:
                return ied
        have = ", ".join(i.name for i in self.ieds) or "none"
        raise SclError(self.source, [(f"/SCL/IED[@name='{name}']", f"no such IED with a server (have: {have})")])


# --------------------------------------------------------------------------- parsing


@lru_cache(maxsize=1)
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA_DIR / "SCL.xsd")))


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True, remove_pis=True, load_dtd=False
    )


def element_path(el: Any) -> str:
    """A readable path to `el`: /SCL/IED[@name='X']/AccessPoint[@name='AP1']/..."""
    parts = []
    node = el
    while node is not None and isinstance(node.tag, str):
        tag = etree.QName(node).localname
        key = next((k for k in ("name", "inst", "id", "iedName") if node.get(k) not in (None, "")), None)
        label = tag
        if key is not None:
            label += f"[@{key}='{node.get(key)}']"
        elif tag in ("LN", "LN0"):
            label += f"[@lnClass='{node.get('lnClass', '')}'][@inst='{node.get('inst', '')}']"
        elif tag == "FCDA":
            label += f"[@doName='{node.get('doName', '')}']"
        parts.append(label)
        node = node.getparent()
    return "/" + "/".join(reversed(parts))


def read_scl(source: bytes | str | Path, *, name: str | None = None, lenient: bool = False) -> SclDocument:
    """Parse, validate and resolve one SCL document.

    `lenient`: schema violations become warnings (vendor files that break the schema in parts
    the import does not use); problems that make the model ambiguous are refused all the same.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = name or str(path)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise SclError(label, [("/", f"file is {size} bytes; at most {MAX_FILE_BYTES} are read")])
            data = path.read_bytes()
        except OSError as exc:
            raise SclError(label, [("/", f"cannot read the file: {exc.strerror}")]) from None
    else:
        data, label = source, name or "<scl>"
        if len(data) > MAX_FILE_BYTES:
            raise SclError(label, [("/", f"document is {len(data)} bytes; at most {MAX_FILE_BYTES} are read")])
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line, col = exc.position if exc.position else (0, 0)
        raise SclError(label, [(f"line {line}, column {col}", f"not well-formed XML: {exc.msg}")]) from None
    if root is None or not isinstance(root.tag, str):
        raise SclError(label, [("/", "no root element")])
    if root.tag != f"{_Q}SCL":
        raise SclError(
            label, [(element_path(root), f"the root element must be SCL in the namespace {NS}, found {root.tag!r}")]
        )
    edition, version = _edition(label, root)
    warnings: list[str] = []
    problems = _validate(root)
    if problems:
        if not lenient:
            raise SclError(label, problems)
        warnings += [f"{p}: {r}" for p, r in problems]
    return _Resolver(label, root, edition, version, warnings).document()


def _edition(label: str, root: Any) -> tuple[Edition, str]:
    version, revision, release = root.get("version"), root.get("revision"), root.get("release")
    if version is None:
        return Edition.ED1, ""
    if version == "2003":
        return Edition.ED1, version
    if version != "2007":
        raise SclError(
            label,
            [
                (
                    "/SCL/@version",
                    f"SCL version {version!r} is not supported (expected none or 2003 "
                    "for edition 1, 2007 for editions 2 and 2.1)",
                )
            ],
        )
    if not revision or not revision.isalpha() or len(revision) != 1:
        raise SclError(label, [("/SCL/@revision", f"expected a revision letter with version 2007, found {revision!r}")])
    if release is not None and not release.isdigit():
        raise SclError(label, [("/SCL/@release", f"expected a release number, found {release!r}")])
    text = f"2007{revision}{release or ''}"
    if revision.upper() > "B" or (release is not None and int(release) >= 4):
        return Edition.ED2_1, text
    return Edition.ED2, text


def _validate(root: Any) -> list[tuple[str, str]]:
    """Schema problems as (path, reason); the root's version attributes are checked by _edition
    and set to the schema's own for the validation (then put back)."""
    saved = {k: root.get(k) for k in ("version", "revision", "release")}
    for key, value in (("version", "2007"), ("revision", "B"), ("release", "4")):
        root.set(key, value)
    schema = _schema()
    try:
        valid = schema.validate(root)
    finally:
        for key, value in saved.items():
            if value is None:
                root.attrib.pop(key, None)
            else:
                root.set(key, value)
    if valid:
        return []
    tree = root.getroottree()
    out: list[tuple[str, str]] = []
    for err in schema.error_log:
        message = err.message.replace(_Q, "")
        out.append((_error_location(tree, err, message), f"schema: {message}"))
    return out


def _error_location(tree: Any, err: Any, message: str) -> str:
    """The element a schema error is about: by its path, else by its name on the error's line."""
    if err.path:
        try:
            found = tree.xpath(err.path)
            if found:
                return element_path(found[0])
        except etree.XPathError:
            pass
    named = re.match(r"Element '([A-Za-z0-9_]+)'", message)
    if named is not None:
        for el in tree.getroot().iter(f"{_Q}{named.group(1)}"):
            if el.sourceline == err.line:
                return element_path(el)
    return f"line {err.line}"


def _bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("true", "1")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _children(el: Any, tag: str) -> list[Any]:
    return [c for c in el if isinstance(c.tag, str) and c.tag == f"{_Q}{tag}"]


def _child(el: Any, tag: str) -> Any | None:
    found = _children(el, tag)
    return found[0] if found else None


@dataclass
class _Types:
    lnode: dict[str, Any] = field(default_factory=dict)
    do: dict[str, Any] = field(default_factory=dict)
    da: dict[str, Any] = field(default_factory=dict)
    enum: dict[str, Any] = field(default_factory=dict)


class _Resolver:
    def __init__(self, label: str, root: Any, edition: Edition, version: str, warnings: list[str]) -> None:
        self.label = label
        self.root = root
        self.edition = edition
        self.version = version
        self.warnings = warnings
        self.problems: list[tuple[str, str]] = []
        self.types = _Types()
        templates = _child(root, "DataTypeTemplates")
        if templates is not None:
            for tag, table in (
                ("LNodeType", self.types.lnode),
                ("DOType", self.types.do),
                ("DAType", self.types.da),
                ("EnumType", self.types.enum),
            ):
                for el in _children(templates, tag):
                    type_id = el.get("id")
                    if not type_id:
                        self.problems.append((element_path(el), f"{tag} without an id"))
                    elif type_id in table:
                        self.problems.append(
                            (
                                element_path(el),
                                f"{tag} id {type_id!r} is defined twice: the types its users get are ambiguous",
                            )
                        )
                    else:
                        table[type_id] = el

    def document(self) -> SclDocument:
        addresses = self._addresses()
        ieds: list[SclIed] = []
        names: set[str] = set()
        for ied_el in _children(self.root, "IED"):
            name = ied_el.get("name", "")
            if not name:
                self.problems.append((element_path(ied_el), "IED without a name"))
                continue
            if name in names:
                self.problems.append((element_path(ied_el), f"IED name {name!r} is used twice"))
                continue
            names.add(name)
            for ap in _children(ied_el, "AccessPoint"):
                server = _child(ap, "Server")
                if server is None:
                    continue
                ap_name = ap.get("name", "")
                ip, port = addresses.get((name, ap_name), (None, None))
                lds = tuple(self._ld(name, ld) for ld in _children(server, "LDevice"))
                ieds.append(
                    SclIed(
                        name=name,
                        access_point=ap_name,
                        logical_devices=lds,
                        manufacturer=ied_el.get("manufacturer", ""),
                        type=ied_el.get("type", ""),
                        desc=ied_el.get("desc", ""),
                        ip=ip,
                        port=port,
                    )
                )
                break  # one server access point per IED: the MMS one
            else:
                self.warnings.append(
                    f"{element_path(ied_el)}: no access point with a Server (nothing to read over MMS)"
                )
        if self.problems:
            raise SclError(self.label, self.problems)
        header = _child(self.root, "Header")
        return SclDocument(
            source=self.label,
            edition=self.edition,
            version=self.version,
            ieds=tuple(ieds),
            warnings=tuple(self.warnings),
            tool="" if header is None else header.get("toolID", ""),
        )

    def _addresses(self) -> dict[tuple[str, str], tuple[str | None, int | None]]:
        out: dict[tuple[str, str], tuple[str | None, int | None]] = {}
        comm = _child(self.root, "Communication")
        if comm is None:
            return out
        for subnet in _children(comm, "SubNetwork"):
            for cap in _children(subnet, "ConnectedAP"):
                address = _child(cap, "Address")
                if address is None:
                    continue
                ip: str | None = None
                port: int | None = None
                for p in _children(address, "P"):
                    kind, text = p.get("type", ""), (p.text or "").strip()
                    if kind == "IP":
                        ip = text or None
                    elif kind in ("MMS-Port", "TCP-Port") and text.isdigit():
                        port = int(text)  # an extension type (IEC 61850-6 has no MMS port); 102 otherwise
                out[(cap.get("iedName", ""), cap.get("apName", ""))] = (ip, port)
        return out

    # ------------------------------------------------------------------ instances

    def _ld(self, ied_name: str, ld_el: Any) -> LogicalDevice:
        inst = ld_el.get("inst", "")
        ld_name = ld_el.get("ldName") or f"{ied_name}{inst}"
        lns = []
        seen: set[str] = set()
        for tag in ("LN0", "LN"):
            for ln_el in _children(ld_el, tag):
                ln = self._ln(ln_el)
                if ln is None:
                    continue
                if ln.name in seen:
                    self.problems.append((element_path(ln_el), f"logical node {ln.name} appears twice in {ld_name}"))
                    continue
                seen.add(ln.name)
                lns.append(ln)
        return LogicalDevice(inst=inst, name=ld_name, logical_nodes=tuple(lns), desc=ld_el.get("desc", ""))

    def _ln(self, ln_el: Any) -> LogicalNode | None:
        ln_type = ln_el.get("lnType", "")
        type_el = self.types.lnode.get(ln_type)
        if type_el is None:
            self.problems.append(
                (element_path(ln_el), f"lnType {ln_type!r} is not a LNodeType of the DataTypeTemplates")
            )
            return None
        ln_class = ln_el.get("lnClass", "")
        if type_el.get("lnClass") and type_el.get("lnClass") != ln_class:
            self.warnings.append(
                f"{element_path(ln_el)}: lnClass {ln_class} uses LNodeType {ln_type} of class {type_el.get('lnClass')}"
            )
        instance_values = self._instance_values(ln_el)
        dos: list[DataObject] = []
        for do_el in _children(type_el, "DO"):
            dos += self._data_object(do_el.get("name", ""), do_el.get("type", ""), do_el, instance_values, 0)
        data_sets = tuple(self._dataset(d) for d in _children(ln_el, "DataSet"))
        rcbs = tuple(self._rcb(r) for r in _children(ln_el, "ReportControl"))
        known = {d.name for d in data_sets}
        for r_el, rcb in zip(_children(ln_el, "ReportControl"), rcbs, strict=True):
            if rcb.dataset and rcb.dataset not in known:
                self.problems.append(
                    (element_path(r_el), f"datSet {rcb.dataset!r} is not a DataSet of this logical node")
                )
        return LogicalNode(
            prefix=ln_el.get("prefix", "") or "",
            ln_class=ln_class,
            inst=ln_el.get("inst", "") or "",
            ln_type=ln_type,
            data_objects=tuple(dos),
            data_sets=data_sets,
            report_controls=rcbs,
            desc=ln_el.get("desc", ""),
        )

    def _instance_values(self, ln_el: Any) -> dict[str, str]:
        """'DO[.SDO...].DA[.BDA...]' → the first Val of every DAI under the LN's DOI/SDI."""
        out: dict[str, str] = {}

        def walk(el: Any, prefix: str) -> None:
            for child in el:
                if not isinstance(child.tag, str):
                    continue
                tag = etree.QName(child).localname
                name = child.get("name", "")
                if tag in ("DOI", "SDI"):
                    walk(child, f"{prefix}{name}.")
                elif tag == "DAI":
                    val = _child(child, "Val")
                    if val is not None and val.text is not None:
                        out[f"{prefix}{name}"] = val.text.strip()

        walk(ln_el, "")
        return out

    def _data_object(self, name: str, type_id: str, where: Any, values: dict[str, str], depth: int) -> list[DataObject]:
        if depth > MAX_TYPE_DEPTH:
            self.problems.append(
                (element_path(where), f"data object types nest deeper than {MAX_TYPE_DEPTH} levels (a cycle?)")
            )
            return []
        type_el = self.types.do.get(type_id)
        if type_el is None:
            self.problems.append((element_path(where), f"type {type_id!r} of data object {name} is not a DOType"))
            return []
        attrs: list[Attribute] = []
        out: list[DataObject] = []
        defaults: dict[str, str] = {}
        for child in type_el:
            if not isinstance(child.tag, str):
                continue
            tag = etree.QName(child).localname
            if tag == "SDO":
                out += self._data_object(
                    f"{name}.{child.get('name', '')}", child.get("type", ""), child, values, depth + 1
                )
            elif tag == "DA":
                fc = child.get("fc", "")
                trigger = tuple(t for t in ("dchg", "qchg", "dupd") if _bool(child.get(t), False))
                attrs += self._leaves(child.get("name", ""), child, fc, trigger, depth + 1)
                val = _child(child, "Val")
                if val is not None and val.text is not None:
                    defaults[child.get("name", "")] = val.text.strip()
        ctl_model = None
        candidate = DataObject(name=name, cdc=type_el.get("cdc", ""), attributes=tuple(attrs))
        if candidate.controllable or any(a.path == "ctlModel" for a in attrs):
            raw = values.get(f"{name}.ctlModel", defaults.get("ctlModel"))
            ctl_model = _ctl_model(raw)
            if raw is not None and ctl_model is None:
                self.problems.append(
                    (
                        element_path(where),
                        f"ctlModel of {name} is {raw!r}; expected one of {', '.join(CTL_MODELS)} or 0-4",
                    )
                )
            if ctl_model is None and candidate.controllable:
                ctl_model = "status-only"
                self.warnings.append(
                    f"{element_path(where)}: {name} has Oper but no ctlModel value: taken as "
                    "status-only (not controlled)"
                )
        units = None
        unit = values.get(f"{name}.units.SIUnit")
        if unit is not None:
            units = (unit, values.get(f"{name}.units.multiplier", ""))
        out.insert(
            0,
            DataObject(name=name, cdc=candidate.cdc, attributes=candidate.attributes, ctl_model=ctl_model, units=units),
        )
        return out

    def _leaves(self, path: str, el: Any, fc: str, trigger: tuple[str, ...], depth: int) -> list[Attribute]:
        btype = el.get("bType", "")
        if btype != "Struct":
            enum_type = el.get("type") if btype == "Enum" else None
            if enum_type is not None and enum_type not in self.types.enum:
                self.problems.append((element_path(el), f"enum type {enum_type!r} is not an EnumType"))
            return [Attribute(path=path, fc=fc, btype=btype, enum_type=enum_type, trigger=trigger)]
        if depth > MAX_TYPE_DEPTH:
            self.problems.append(
                (element_path(el), f"attribute types nest deeper than {MAX_TYPE_DEPTH} levels (a cycle?)")
            )
            return []
        type_id = el.get("type", "")
        type_el = self.types.da.get(type_id)
        if type_el is None:
            self.problems.append((element_path(el), f"type {type_id!r} of attribute {path} is not a DAType"))
            return []
        out: list[Attribute] = []
        for bda in _children(type_el, "BDA"):
            out += self._leaves(f"{path}.{bda.get('name', '')}", bda, fc, trigger, depth + 1)
        return out

    # ------------------------------------------------------------------ data sets and report control

    def _dataset(self, el: Any) -> DataSet:
        members = []
        for fcda in _children(el, "FCDA"):
            fc = fcda.get("fc", "")
            if not fc:
                self.problems.append((element_path(fcda), "FCDA without fc"))
            members.append(
                DataSetMember(
                    ld_inst=fcda.get("ldInst", ""),
                    prefix=fcda.get("prefix", "") or "",
                    ln_class=fcda.get("lnClass", ""),
                    ln_inst=fcda.get("lnInst", "") or "",
                    do_name=fcda.get("doName", ""),
                    da_name=fcda.get("daName", "") or "",
                    fc=fc,
                )
            )
        return DataSet(name=el.get("name", ""), members=tuple(members))

    def _rcb(self, el: Any) -> ReportControl:
        trg = _child(el, "TrgOps")
        opt = _child(el, "OptFields")
        enabled = _child(el, "RptEnabled")
        return ReportControl(
            name=el.get("name", ""),
            buffered=_bool(el.get("buffered"), False),
            rpt_id=el.get("rptID", "") or "",
            dataset=el.get("datSet", "") or "",
            conf_rev=_int(el.get("confRev"), 0),
            intg_pd_ms=_int(el.get("intgPd"), 0),
            buf_time_ms=_int(el.get("bufTime"), 0),
            trigger_options=frozenset(t for t in TRIGGER_OPTIONS if trg is not None and _bool(trg.get(t), False)),
            optional_fields=frozenset(o for o in OPTIONAL_FIELDS if opt is not None and _bool(opt.get(o), False)),
            indexed=_bool(el.get("indexed"), True),
            max_clients=_int(enabled.get("max") if enabled is not None else None, 1),
        )


_CTL_ALIASES = {str(n): m for n, m in enumerate(CTL_MODELS)}
_CTL_ALIASES.update({m: m for m in CTL_MODELS})


def _ctl_model(raw: str | None) -> str | None:
    if raw is None:
        return None
    return _CTL_ALIASES.get(re.sub(r"\s+", "", raw).lower())
