"""Browsing an IEC 61850 server (MMS): logical devices, nodes, data objects with their data
attributes and functional constraints, data sets and report control blocks, controls and their
control model — into the same model an SCL file gives (`protocols.scl.SclIed`), so the same
import makes a site-file entry of it.

Read services only (GetServerDirectory, GetLogicalDeviceDirectory, GetLogicalNodeDirectory,
GetDataDefinition through the MMS variable specifications, GetDataSetDirectory, GetRCBValues,
reads of ctlModel). Every request is bounded by the connection's request timeout, the browse by
a deadline and a request budget; a refusal (access denied, object undefined) is recorded and
the browse goes on. Blocking calls into libiec61850 through cffi (the GIL is released); run it
from a command line or a worker thread, not from an event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from protocols import _iec61850_ffi as c
from protocols.scl import (
    CTL_MODELS,
    Attribute,
    DataObject,
    DataSet,
    DataSetMember,
    LogicalDevice,
    LogicalNode,
    ReportControl,
    SclIed,
)

ffi, lib = c.ffi, c.lib
BROWSED_FCS = ("ST", "MX", "CO", "CF", "SP", "DC")
DATA_ATTRIBUTE_ROOTS = frozenset(
    {
        "stVal",
        "q",
        "t",
        "mag",
        "cVal",
        "instMag",
        "instCVal",
        "ang",
        "range",
        "units",
        "db",
        "zeroDb",
        "sVC",
        "rangeC",
        "smpRate",
        "general",
        "dirGeneral",
        "phsA",
        "phsB",
        "phsC",
        "neut",
        "ctlModel",
        "sboTimeout",
        "sboClass",
        "operTimeout",
        "Oper",
        "SBO",
        "SBOw",
        "Cancel",
        "origin",
        "ctlNum",
        "stSeld",
        "opRcvd",
        "opOk",
        "tOpOk",
        "ctlVal",
        "setMag",
        "setVal",
        "minVal",
        "maxVal",
        "stepSize",
        "vendor",
        "swRev",
        "d",
        "dU",
        "configRev",
        "ldNs",
        "lnNs",
        "cdcNs",
        "cdcName",
        "dataNs",
        "hwRev",
        "serNum",
        "model",
        "location",
        "actVal",
        "frVal",
        "frTm",
        "pulsQty",
        "frEna",
        "strTm",
        "frPd",
        "frRs",
        "valWTr",
        "mxVal",
        "subVal",
        "subQ",
        "subEna",
        "subID",
        "blkEna",
        "angRef",
        "phsAB",
        "phsBC",
        "phsCA",
        "res",
        "net",
        "seqT",
    }
)
"""Names that are data attributes of the common data classes (IEC 61850-7-3). WYE/DEL children
phsA... are SDOs of their own CMV type but, under ACD/ACT (Str, Op), attributes: an element named
so with children of its own is taken as a sub data object."""

_MMS_BTYPE = {
    c.MMS_BOOLEAN: "BOOLEAN",
    c.MMS_INTEGER: "INT32",
    c.MMS_UNSIGNED: "INT32U",
    c.MMS_FLOAT: "FLOAT32",
    c.MMS_UTC_TIME: "Timestamp",
    c.MMS_OCTET_STRING: "Octet64",
    c.MMS_VISIBLE_STRING: "VisString255",
    c.MMS_STRING: "Unicode255",
}


class BrowseError(Exception):
    """The server could not be browsed at all (no association)."""


class _Stop(Exception):
    pass


@dataclass
class Browse:
    host: str
    port: int
    ied: SclIed | None = None
    requests: int = 0
    duration_s: float = 0.0
    refusals: list[str] = field(default_factory=list)
    """What the server refused, and why (the browse went on)."""
    stopped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        ied = self.ied
        return {
            "host": self.host,
            "port": self.port,
            "requests": self.requests,
            "duration_s": self.duration_s,
            "stopped": self.stopped,
            "refusals": self.refusals,
            "logical_devices": []
            if ied is None
            else [
                {
                    "name": ld.name,
                    "logical_nodes": [
                        {
                            "name": ln.name,
                            "data_objects": [
                                {
                                    "name": do.name,
                                    "cdc": do.cdc or None,
                                    "ctl_model": do.ctl_model,
                                    "attributes": [f"{a.path}[{a.fc}] {a.btype}" for a in do.attributes],
                                }
                                for do in ln.data_objects
                            ],
                            "data_sets": [
                                {
                                    "name": ds.name,
                                    "members": [
                                        f"{m.ld_inst}/{m.ln_name}.{m.do_name}{'.' + m.da_name if m.da_name else ''}[{m.fc}]"
                                        for m in ds.members
                                    ],
                                }
                                for ds in ln.data_sets
                            ],
                            "report_control_blocks": [
                                {
                                    "name": r.name,
                                    "buffered": r.buffered,
                                    "data_set": r.dataset,
                                    "rpt_id": r.rpt_id,
                                    "intg_pd_ms": r.intg_pd_ms,
                                    "buf_time_ms": r.buf_time_ms,
                                    "conf_rev": r.conf_rev,
                                    "trigger_options": sorted(r.trigger_options),
                                    "optional_fields": sorted(r.optional_fields),
                                }
                                for r in ln.report_controls
                            ],
                        }
                        for ln in ld.logical_nodes
                    ],
                }
                for ld in ied.logical_devices
            ],
        }


_TRG = (
    ("dchg", c.TRG_OPT_DATA_CHANGED),
    ("qchg", c.TRG_OPT_QUALITY_CHANGED),
    ("dupd", c.TRG_OPT_DATA_UPDATE),
    ("period", c.TRG_OPT_INTEGRITY),
    ("gi", c.TRG_OPT_GI),
)
_OPT = (
    ("seqNum", c.RPT_OPT_SEQ_NUM),
    ("timeStamp", c.RPT_OPT_TIME_STAMP),
    ("reasonCode", c.RPT_OPT_REASON_FOR_INCLUSION),
    ("dataSet", c.RPT_OPT_DATA_SET),
    ("dataRef", c.RPT_OPT_DATA_REFERENCE),
    ("bufOvfl", c.RPT_OPT_BUFFER_OVERFLOW),
    ("entryID", c.RPT_OPT_ENTRY_ID),
    ("configRef", c.RPT_OPT_CONF_REV),
)


class Iec61850Browser:
    def __init__(
        self,
        host: str,
        port: int = 102,
        *,
        timeout_s: float = 2.0,
        deadline_s: float = 120.0,
        max_requests: int = 20_000,
    ) -> None:
        if not 0 < timeout_s <= 60 or not 0 < deadline_s <= 3600 or max_requests < 1:
            raise BrowseError("timeout 0..60 s, deadline up to an hour, a request budget of 1 at least")
        self.result = Browse(host, port)
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_requests = max_requests
        self._deadline = 0.0
        self._con: Any = None

    ASSOCIATION_ATTEMPTS = 3
    """An association lost at its very first request is opened again (seen with libiec61850
    servers now and then, about one association in twenty); a loss later ends the browse."""

    def run(self) -> Browse:
        started = time.monotonic()
        self._deadline = started + self.deadline_s
        try:
            for attempt in range(self.ASSOCIATION_ATTEMPTS):
                self.result.stopped = None
                first_request = self.result.requests
                lds = self._browse_once()
                lost_at_once = (
                    (self.result.stopped or "").startswith("association lost")
                    and not lds
                    and self.result.requests - first_request <= 1
                )
                if not lost_at_once or attempt == self.ASSOCIATION_ATTEMPTS - 1:
                    break
                time.sleep(0.1 * (attempt + 1))
            ied_name = _common_prefix([ld.name for ld in lds])
            self.result.ied = SclIed(
                name=ied_name, access_point="", logical_devices=tuple(lds), ip=self.result.host, port=self.result.port
            )
        finally:
            self.result.duration_s = time.monotonic() - started
        return self.result

    def _browse_once(self) -> list[LogicalDevice]:
        con = lib.IedConnection_create()
        if con == ffi.NULL:
            raise BrowseError("cannot allocate a connection")
        self._con = con
        ms = int(self.timeout_s * 1000)
        lib.IedConnection_setConnectTimeout(con, ms)
        lib.IedConnection_setRequestTimeout(con, ms)
        error = ffi.new("int*")
        lds: list[LogicalDevice] = []
        try:
            lib.IedConnection_connect(con, error, self.result.host.encode(), self.result.port)
            if error[0] != c.IED_ERROR_OK:
                raise BrowseError(
                    f"cannot associate with {self.result.host}:{self.result.port}: {c.ied_error_name(error[0])}"
                )
            try:
                for ld_name in self._names(lib.IedConnection_getLogicalDeviceList, "server directory"):
                    lds.append(self._ld(ld_name))
            except _Stop as exc:
                self.result.stopped = str(exc)
        finally:
            lib.IedConnection_close(con)
            lib.IedConnection_destroy(con)
            self._con = None
        return lds

    # ------------------------------------------------------------------ plumbing

    def _count(self) -> None:
        if time.monotonic() > self._deadline:
            raise _Stop(f"deadline of {self.deadline_s:g} s reached")
        if self.result.requests >= self.max_requests:
            raise _Stop(f"request budget of {self.max_requests} used")
        self.result.requests += 1

    def _check(self, error: Any, what: str) -> bool:
        code = error[0]
        if code == c.IED_ERROR_OK:
            return True
        if code in c.LINK_ERRORS:
            raise _Stop(f"association lost during {what}: {c.ied_error_name(code)}")
        self.result.refusals.append(f"{what}: {c.ied_error_name(code)}")
        return False

    def _names(self, fn: Any, what: str, *args: Any) -> list[str]:
        self._count()
        error = ffi.new("int*")
        found = fn(self._con, error, *args)
        names: list[str] = []
        try:
            if not self._check(error, what):
                return names
            node = found.next if found != ffi.NULL else ffi.NULL
            steps = 0
            while node != ffi.NULL and steps < 100_000:
                names.append(ffi.string(ffi.cast("char*", node.data)).decode(errors="replace"))
                node = node.next
                steps += 1
        finally:
            if found != ffi.NULL:
                lib.LinkedList_destroy(found)
        return names

    # ------------------------------------------------------------------ model

    def _ld(self, ld_name: str) -> LogicalDevice:
        lns = []
        for ln_name in self._names(
            lib.IedConnection_getLogicalDeviceDirectory, f"directory of {ld_name}", ld_name.encode()
        ):
            lns.append(self._ln(ld_name, ln_name))
        return LogicalDevice(inst=ld_name, name=ld_name, logical_nodes=tuple(lns))

    def _ln(self, ld_name: str, ln_name: str) -> LogicalNode:
        ln_ref = f"{ld_name}/{ln_name}"
        dos: dict[str, list[Attribute]] = {}
        order: list[str] = []
        for fc in BROWSED_FCS:
            self._count()
            error = ffi.new("int*")
            spec = lib.IedConnection_getVariableSpecification(self._con, error, ln_ref.encode(), c.FC[fc])
            if error[0] == c.IED_ERROR_OK and spec != ffi.NULL:
                try:
                    for do_path, attr_path, btype in _leaves(spec):
                        if do_path not in dos:
                            dos[do_path] = []
                            order.append(do_path)
                        dos[do_path].append(Attribute(path=attr_path, fc=fc, btype=btype))
                finally:
                    lib.MmsVariableSpecification_destroy(spec)
            elif error[0] in c.LINK_ERRORS:
                raise _Stop(f"association lost reading the definition of {ln_ref}[{fc}]")
            # a missing FC of a logical node is ordinary (no CO in MMXU): not a refusal
        data_objects = []
        for do_path in order:
            attrs = tuple(dos[do_path])
            ctl_model = None
            if any(a.path == "ctlModel" and a.fc == "CF" for a in attrs):
                ctl_model = self._ctl_model(f"{ln_ref}.{do_path}")
            data_objects.append(DataObject(name=do_path, cdc="", attributes=attrs, ctl_model=ctl_model))
        data_sets = tuple(
            self._dataset(ln_ref, name)
            for name in self._names(
                lib.IedConnection_getLogicalNodeDirectory,
                f"data sets of {ln_ref}",
                ln_ref.encode(),
                c.ACSI_CLASS_DATA_SET,
            )
        )
        rcbs = []
        for acsi, kind in ((c.ACSI_CLASS_BRCB, "BR"), (c.ACSI_CLASS_URCB, "RP")):
            for name in self._names(
                lib.IedConnection_getLogicalNodeDirectory, f"{kind} blocks of {ln_ref}", ln_ref.encode(), acsi
            ):
                rcb = self._rcb(f"{ln_ref}.{kind}.{name}", name, kind == "BR")
                if rcb is not None:
                    rcbs.append(rcb)
        prefix_class_inst = _split_ln(ln_name)
        return LogicalNode(
            prefix=prefix_class_inst[0],
            ln_class=prefix_class_inst[1],
            inst=prefix_class_inst[2],
            ln_type="",
            data_objects=tuple(data_objects),
            data_sets=data_sets,
            report_controls=tuple(rcbs),
        )

    def _ctl_model(self, do_ref: str) -> str | None:
        self._count()
        error = ffi.new("int*")
        value = lib.IedConnection_readObject(self._con, error, f"{do_ref}.ctlModel".encode(), c.FC["CF"])
        try:
            if not self._check(error, f"read {do_ref}.ctlModel[CF]") or value == ffi.NULL:
                return None
            kind = lib.MmsValue_getType(value)
            if kind == c.MMS_DATA_ACCESS_ERROR:
                self.result.refusals.append(
                    f"read {do_ref}.ctlModel[CF]: data access error {lib.MmsValue_getDataAccessError(value)}"
                )
                return None
            if kind not in (c.MMS_INTEGER, c.MMS_UNSIGNED):
                return None
            n = lib.MmsValue_toInt32(value)
            return CTL_MODELS[n] if 0 <= n < len(CTL_MODELS) else None
        finally:
            if value != ffi.NULL:
                lib.MmsValue_delete(value)

    def _dataset(self, ln_ref: str, name: str) -> DataSet:
        self._count()
        error = ffi.new("int*")
        deletable = ffi.new("bool*")
        ds_ref = f"{ln_ref}.{name}"
        directory = lib.IedConnection_getDataSetDirectory(self._con, error, ds_ref.encode(), deletable)
        members = []
        try:
            if self._check(error, f"directory of data set {ds_ref}"):
                node = directory.next if directory != ffi.NULL else ffi.NULL
                steps = 0
                while node != ffi.NULL and steps < 10_000:
                    members.append(_member(ffi.string(ffi.cast("char*", node.data)).decode(errors="replace")))
                    node = node.next
                    steps += 1
        finally:
            if directory != ffi.NULL:
                lib.LinkedList_destroy(directory)
        return DataSet(name=name, members=tuple(m for m in members if m is not None))

    def _rcb(self, rcb_ref: str, name: str, buffered: bool) -> ReportControl | None:
        self._count()
        error = ffi.new("int*")
        rcb = lib.IedConnection_getRCBValues(self._con, error, rcb_ref.encode(), ffi.NULL)
        try:
            if not self._check(error, f"read {rcb_ref}") or rcb == ffi.NULL:
                return None
            ds = lib.ClientReportControlBlock_getDataSetReference(rcb)
            rpt = lib.ClientReportControlBlock_getRptId(rcb)
            ds_ref = ffi.string(ds).decode(errors="replace").replace("$", ".") if ds != ffi.NULL else ""
            trg = lib.ClientReportControlBlock_getTrgOps(rcb)
            opt = lib.ClientReportControlBlock_getOptFlds(rcb)
            return ReportControl(
                name=name,
                buffered=buffered,
                rpt_id=ffi.string(rpt).decode(errors="replace") if rpt != ffi.NULL else "",
                dataset=ds_ref.rpartition(".")[2] if ds_ref else "",
                conf_rev=int(lib.ClientReportControlBlock_getConfRev(rcb)),
                intg_pd_ms=int(lib.ClientReportControlBlock_getIntgPd(rcb)),
                buf_time_ms=int(lib.ClientReportControlBlock_getBufTm(rcb)),
                trigger_options=frozenset(n for n, bit in _TRG if trg & bit),
                optional_fields=frozenset(n for n, bit in _OPT if opt & bit),
                indexed=False,
                max_clients=1,
            )
        finally:
            if rcb != ffi.NULL:
                lib.ClientReportControlBlock_destroy(rcb)


def _leaves(spec: Any) -> list[tuple[str, str, str]]:
    """(data object path, attribute path, basic type) of every leaf below an LN's FC view."""
    out: list[tuple[str, str, str]] = []

    def walk(node: Any, names: list[str], depth: int) -> None:
        if depth > 24 or len(out) > 100_000:
            return
        kind = lib.MmsVariableSpecification_getType(node)
        if kind == c.MMS_STRUCTURE:
            for k in range(lib.MmsVariableSpecification_getSize(node)):
                child = lib.MmsVariableSpecification_getChildSpecificationByIndex(node, k)
                if child == ffi.NULL:
                    continue
                raw = lib.MmsVariableSpecification_getName(child)
                walk(
                    child,
                    [*names, ffi.string(raw).decode(errors="replace") if raw != ffi.NULL else f"[{k}]"],
                    depth + 1,
                )
            return
        if kind == c.MMS_BIT_STRING:
            bits = abs(lib.MmsVariableSpecification_getSize(node))
            btype = "Dbpos" if bits == 2 else "Quality" if bits == 13 else f"BitString{bits}"
        else:
            btype = _MMS_BTYPE.get(kind, f"MMS{kind}")
        split = next(
            (
                k
                for k, n in enumerate(names)
                if k > 0
                and n in DATA_ATTRIBUTE_ROOTS
                and not (
                    n in ("phsA", "phsB", "phsC", "neut", "res", "net", "phsAB", "phsBC", "phsCA")
                    and k + 1 < len(names)
                    and names[k + 1] in ("cVal", "instCVal", "q", "t", "units", "db", "range", "rangeC", "zeroDb")
                )
            ),
            len(names) - 1,
        )
        out.append((".".join(names[:split]), ".".join(names[split:]), btype))

    walk(spec, [], 0)
    return out


def _member(entry: str) -> DataSetMember | None:
    """'LD/LN.DO.da[FC]' → a data-set member (ld_inst holds the full LD name here)."""
    ref, fc = entry, ""
    if entry.endswith("]") and "[" in entry:
        ref, _, fc = entry[:-1].rpartition("[")
    ld, _, rest = ref.partition("/")
    if not rest:
        return None
    ln, _, path = rest.partition(".")
    prefix, cls, inst = _split_ln(ln)
    names = path.split(".") if path else []
    split = next(
        (
            k
            for k, n in enumerate(names)
            if k > 0 and n in DATA_ATTRIBUTE_ROOTS and n not in ("phsA", "phsB", "phsC", "neut")
        ),
        len(names),
    )
    return DataSetMember(
        ld_inst=ld,
        prefix=prefix,
        ln_class=cls,
        ln_inst=inst,
        do_name=".".join(names[:split]),
        da_name=".".join(names[split:]),
        fc=fc,
    )


def _split_ln(name: str) -> tuple[str, str, str]:
    """'MMXU1' → ('', 'MMXU', '1'); 'LLN0' → ('', 'LLN0', ''); prefixes before the 4-letter class."""
    if name == "LLN0":
        return "", "LLN0", ""
    digits = len(name) - len(name.rstrip("0123456789"))
    body, inst = (name[:-digits], name[-digits:]) if digits else (name, "")
    return body[:-4], body[-4:], inst


def _common_prefix(names: list[str]) -> str:
    """The IED name: what the logical device names share before their instance ('BAY046LD0' → 'BAY046')."""
    if not names:
        return "IED"
    first = names[0]
    if len(names) == 1:
        stem = first.rstrip("0123456789")
        for suffix in ("LD", "Ld", "ld"):
            if stem.endswith(suffix) and len(stem) > len(suffix):
                return stem[: -len(suffix)]
        return first
    k = 0
    while all(len(n) > k and n[k] == first[k] for n in names):
        k += 1
    return first[:k] or first


def browse(host: str, port: int = 102, **kw: Any) -> Browse:
    return Iec61850Browser(host, port, **kw).run()
