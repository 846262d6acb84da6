"""From an IEC 61850 model (an SCL file's IED, or what an online browse found) to the site file's
`[[ieds]]` entry: connection, points with their references, FC, kind and unit, the report control
blocks that carry them, the controls with their control model, and a proposed point naming.

The naming follows the gateway's own names where the logical node says what a value is (MMXU
`A.phsA` is `ia`, XCBR `Pos` is `closed`, CSWI `Pos` the `position_cmd` control, ...); anything
else gets a name made from its reference. The engineer maps the names to agents (the agent hint
lists those a circuit-breaker agent reads). Pure functions; the CLI reads and writes the files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.contract.settings import Iec61850Ied
from protocols.scl import Attribute, DataObject, LogicalDevice, LogicalNode, SclIed

POINT_FCS = ("MX", "ST")
NUMERIC_BTYPES = frozenset(
    {"FLOAT32", "FLOAT64", "INT8", "INT16", "INT24", "INT32", "INT64", "INT8U", "INT16U", "INT24U", "INT32U", "Enum"}
)
BINARY_BTYPES = frozenset({"BOOLEAN", "Dbpos"})
SKIPPED_ROOTS = frozenset(
    {
        "q",
        "t",
        "origin",
        "ctlNum",
        "stSeld",
        "units",
        "range",
        "instMag",
        "instCVal",
        "d",
        "dU",
        "cdcNs",
        "cdcName",
        "dataNs",
        "sVC",
        "rangeC",
        "smpRate",
        "db",
        "zeroDb",
    }
)
"""Attribute roots that are no measured value of their own (quality, time, configuration, and the
instantaneous twins of the dead-banded values)."""
HOUSEKEEPING = frozenset({"Mod", "Beh", "Health", "NamPlt", "PhyNam", "PhyHealth", "Proxy"})
"""Data objects every logical node has (listed among the attributes, not proposed as points)."""

# (LN class, DO path, attribute path) → proposed name; the DO path may name an SDO ('A.phsA')
_NAMES: dict[tuple[str, str, str], str] = {
    ("MMXU", "A.phsA", "cVal.mag.f"): "ia",
    ("MMXU", "A.phsB", "cVal.mag.f"): "ib",
    ("MMXU", "A.phsC", "cVal.mag.f"): "ic",
    ("MMXU", "A.neut", "cVal.mag.f"): "in",
    ("MMXU", "A.res", "cVal.mag.f"): "in",
    ("MMXU", "A.phsA", "cVal.ang.f"): "ia_deg",
    ("MMXU", "A.phsB", "cVal.ang.f"): "ib_deg",
    ("MMXU", "A.phsC", "cVal.ang.f"): "ic_deg",
    ("MMXU", "PhV.phsA", "cVal.mag.f"): "va_kv",
    ("MMXU", "PhV.phsB", "cVal.mag.f"): "vb_kv",
    ("MMXU", "PhV.phsC", "cVal.mag.f"): "vc_kv",
    ("MMXU", "PhV.phsA", "cVal.ang.f"): "va_deg",
    ("MMXU", "PhV.phsB", "cVal.ang.f"): "vb_deg",
    ("MMXU", "PhV.phsC", "cVal.ang.f"): "vc_deg",
    ("MMXU", "PPV.phsAB", "cVal.mag.f"): "voltage_kv",
    ("MMXU", "Hz", "mag.f"): "frequency_hz",
    ("MMXU", "TotW", "mag.f"): "active_power_kw",
    ("MMXU", "TotVAr", "mag.f"): "reactive_power_kvar",
    ("MMXU", "TotVA", "mag.f"): "apparent_power_kva",
    ("MMXU", "TotPF", "mag.f"): "power_factor",
    ("XCBR", "Pos", "stVal"): "closed",
    ("XSWI", "Pos", "stVal"): "closed",
    ("XCBR", "OpCnt", "stVal"): "operations",
    ("XSWI", "OpCnt", "stVal"): "operations",
    ("XCBR", "Loc", "stVal"): "local",
    ("XSWI", "Loc", "stVal"): "local",
    ("CSWI", "Loc", "stVal"): "local",
    ("SFPI", "FltInd", "stVal"): "fpi",
    ("PTOC", "Op", "general"): "trip",
    ("PTOC", "Str", "general"): "pickup",
    ("YLTC", "TapPos", "valWTr.posVal"): "tap_position",
    ("ATCC", "TapChg", "valWTr.posVal"): "tap_position",
    ("STMP", "Tmp", "mag.f"): "top_oil_temp_c",
}
_CONTROL_NAMES = {
    ("CSWI", "Pos"): "position_cmd",
    ("XCBR", "Pos"): "position_cmd",
    ("XSWI", "Pos"): "position_cmd",
    ("SFPI", "RsFlt"): "fpi_reset",
}
_UNIT_TARGET = {
    "ia": "A",
    "ib": "A",
    "ic": "A",
    "in": "A",
    "va_kv": "kV",
    "vb_kv": "kV",
    "vc_kv": "kV",
    "voltage_kv": "kV",
    "frequency_hz": "Hz",
    "active_power_kw": "kW",
    "reactive_power_kvar": "kvar",
    "apparent_power_kva": "kVA",
    "ia_deg": "deg",
    "ib_deg": "deg",
    "ic_deg": "deg",
    "va_deg": "deg",
    "vb_deg": "deg",
    "vc_deg": "deg",
    "top_oil_temp_c": "°C",
}
_SI = {"A": "A", "V": "V", "Hz": "Hz", "W": "W", "VAr": "var", "VA": "VA", "deg": "deg", "°C": "°C", "degC": "°C"}
_MULTIPLIER = {"": 1.0, "none": 1.0, "k": 1e3, "Kilo": 1e3, "M": 1e6, "Mega": 1e6, "m": 1e-3, "Milli": 1e-3}
BREAKER_AGENT_POINTS = (
    "ia",
    "ib",
    "ic",
    "in",
    "closed",
    "voltage_kv",
    "frequency_hz",
    "active_power_kw",
    "reactive_power_kvar",
    "operations",
    "position_cmd",
    "local",
    "fpi",
    "fpi_reset",
    "va_kv",
    "vb_kv",
    "vc_kv",
    "va_deg",
    "vb_deg",
    "vc_deg",
    "ia_deg",
    "ib_deg",
    "ic_deg",
)


@dataclass
class ImportResult:
    """One IED's site-file entry and what the engineer should know about it."""

    ied: dict[str, Any]
    agent_hint: dict[str, str] = field(default_factory=dict)
    """Proposed name → point id, for the names a circuit-breaker agent reads."""
    notes: list[str] = field(default_factory=list)
    attributes: list[dict[str, str]] = field(default_factory=list)
    """Every MX and ST data attribute of the IED, with its type and FC (points or not)."""
    report_control_blocks: list[dict[str, Any]] = field(default_factory=list)
    data_sets: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower() or "value"


def _point_id(prefix: str, name: str) -> str:
    pid = f"{prefix}.{name}" if prefix else name
    pid = re.sub(r"[^A-Za-z0-9_.\-]", "_", pid)
    if not pid[:1].isalnum():
        pid = "P" + pid
    return pid[:64]


def _unit(name: str | None, do: DataObject) -> tuple[str, float, str | None]:
    """(unit, scale, note): the SCL's units (SIUnit and multiplier) brought to the unit the
    proposed name implies (kV for voltages, kW for power); unknown units are left as they are."""
    target = _UNIT_TARGET.get(name or "")
    if do.units is None:
        if target is None:
            return "", 1.0, None
        return target, 1.0, f"the SCL states no unit for {do.name}: check that the IED sends {target}"
    si, mult = do.units
    base = _SI.get(si, si)
    factor = _MULTIPLIER.get(mult, None)
    if factor is None:
        return f"{mult}{base}", 1.0, f"{do.name}: unknown multiplier {mult!r}, value taken as is"
    if target is None:
        prefix = {1e3: "k", 1e6: "M", 1e-3: "m"}.get(factor, "")
        return f"{prefix}{base}", 1.0, None
    target_factor = {"kV": 1e3, "kW": 1e3, "kvar": 1e3, "kVA": 1e3}.get(target, 1.0)
    target_base = {"kV": "V", "kW": "W", "kvar": "var", "kVA": "VA"}.get(target, target)
    if target_base != base:
        return (
            f"{mult}{base}",
            1.0,
            f"{do.name}: SCL unit {mult}{si} does not fit the proposed name (expected {target})",
        )
    return target, factor / target_factor, None


def _kind(attr: Attribute, do: DataObject) -> str | None:
    if attr.btype in BINARY_BTYPES:
        return "binary"
    if attr.btype in NUMERIC_BTYPES:
        counter = (do.cdc == "BCR" and attr.path.startswith("actVal")) or (do.name == "OpCnt" and attr.path == "stVal")
        return "counter" if counter else "analog"
    return None


def _value_attribute(attr: Attribute) -> bool:
    root = attr.path.split(".")[0]
    return attr.fc in POINT_FCS and root not in SKIPPED_ROOTS and attr.btype not in ("Quality", "Timestamp")


class _Fragment:
    """One IED's points, controls and report blocks, gathered step by step into an ImportResult."""

    def __init__(self, ied: SclIed, prefix: str) -> None:
        self.ied = ied
        self.prefix = prefix
        self.result = ImportResult(ied={})
        self.points: list[dict[str, Any]] = []
        self.used_ids: set[str] = set()
        self.by_reference: dict[tuple[str, str], str] = {}

    def add(self, point: dict[str, Any], name: str) -> None:
        pid = _point_id(self.prefix, name)
        n = 2
        while pid in self.used_ids:
            pid = _point_id(self.prefix, f"{name}_{n}")
            n += 1
        self.used_ids.add(pid)
        point["id"] = pid
        self.points.append(point)
        if name in BREAKER_AGENT_POINTS and name not in self.result.agent_hint:
            self.result.agent_hint[name] = pid

    def value_points(self) -> None:
        """A point for every value attribute the gateway reads (a control's status excepted)."""
        ied, result = self.ied, self.result
        controlled = {
            f"{ld.name}/{ln.name}.{do.name}"
            for ld, ln, do in _data_objects(ied)
            if do.controllable
            and do.ctl_model not in (None, "status-only")
            and any(a.path == "Oper.ctlVal" and a.btype in BINARY_BTYPES for a in do.attributes)
        }
        for ld, ln, do, attr in ied.attributes():
            if attr.fc in POINT_FCS and attr.path.split(".")[-1] not in ("q", "t"):
                result.attributes.append(
                    {
                        "reference": f"{ld.name}/{ln.name}.{do.name}.{attr.path}",
                        "fc": attr.fc,
                        "type": attr.btype + (f" ({attr.enum_type})" if attr.enum_type else ""),
                        "cdc": do.cdc,
                    }
                )
            if not _value_attribute(attr) or do.name.split(".")[0] in HOUSEKEEPING:
                continue
            if f"{ld.name}/{ln.name}.{do.name}" in controlled and attr.path == "stVal":
                continue  # the control point carries its status
            self._value_point(ld, ln, do, attr)

    def _value_point(self, ld: Any, ln: Any, do: Any, attr: Attribute) -> None:
        kind = _kind(attr, do)
        reference = f"{ld.name}/{ln.name}.{do.name}.{attr.path}"
        if kind is None:
            self.result.notes.append(f"{reference} [{attr.fc}] is {attr.btype}: not a point the gateway reads")
            return
        name = _NAMES.get((ln.ln_class, do.name, attr.path))
        if name is not None and ln.prefix:
            name = f"{_slug(ln.prefix)}_{name}"
        if name is None or name in {p.get("_name") for p in self.points}:
            tail = "" if attr.path in ("stVal", "mag.f", "cVal.mag.f", "general", "mag.i") else f"_{attr.path}"
            name = _slug(f"{ln.name}_{do.name}{tail}")
        unit, scale, note = _unit(name, do) if kind == "analog" else ("", 1.0, None)
        if note:
            self.result.notes.append(note)
        point: dict[str, Any] = {"_name": name, "reference": reference, "fc": attr.fc, "kind": kind}
        if unit:
            point["unit"] = unit
        if scale != 1.0:
            point["scale"] = scale
        self.add(point, name)
        self.by_reference[(reference, attr.fc)] = point["id"]

    def control_points(self) -> None:
        """Every controllable data object listed; a point for each binary one the gateway operates."""
        result = self.result
        for ld, ln, do in _data_objects(self.ied):
            if not do.controllable:
                continue
            if do.ctl_model is None:
                result.notes.append(
                    f"{ld.name}/{ln.name}.{do.name} can be operated but its control model is not "
                    "known (ctlModel not readable): not proposed as a control; check it at the IED"
                )
                continue
            reference = f"{ld.name}/{ln.name}.{do.name}"
            control: dict[str, Any] = {"reference": reference, "cdc": do.cdc, "ctl_model": do.ctl_model}
            result.controls.append(control)
            if do.ctl_model == "status-only":
                continue
            value = next((a for a in do.attributes if a.path == "Oper.ctlVal"), None)
            if value is None or value.btype not in BINARY_BTYPES:
                result.notes.append(
                    f"{reference} ({do.cdc}, {do.ctl_model}) is controlled by a "
                    f"{value.btype if value else 'missing'} value: the gateway operates binary "
                    "controls (SPC, DPC) only"
                )
                continue
            name = _CONTROL_NAMES.get((ln.ln_class, do.name)) or _slug(f"{ln.name}_{do.name}_cmd")
            control["point"] = True
            self.add({"_name": name, "reference": reference, "fc": "CO", "kind": "binary", "control": True}, name)
            self.by_reference[(f"{reference}.stVal", "ST")] = self.points[-1]["id"]  # its status arrives as ST

    def report_blocks(self) -> list[str]:
        """Data sets and report control blocks listed; one instance chosen per data set carrying points
        (buffered first)."""
        ied, result = self.ied, self.result
        rcbs: list[str] = []
        ld_names = {ld.inst: ld.name for ld in ied.logical_devices}

        def member_ref(m: Any) -> str:
            tail = f".{m.da_name}" if m.da_name else ""
            return f"{ld_names.get(m.ld_inst, ied.name + m.ld_inst)}/{m.ln_name}.{m.do_name}{tail}"

        for ld, ln in _lns(ied):
            for ds in ln.data_sets:
                carried = [
                    m
                    for m in ds.members
                    if any(
                        ref == member_ref(m) or ref.startswith(member_ref(m) + ".")
                        for ref, fc in self.by_reference
                        if fc == m.fc
                    )
                ]
                result.data_sets.append(
                    {
                        "reference": f"{ld.name}/{ln.name}.{ds.name}",
                        "members": [f"{member_ref(m)}[{m.fc}]" for m in ds.members],
                        "carries_points": len(carried),
                    }
                )
            chosen: dict[str, str] = {}
            for rcb in sorted(ln.report_controls, key=lambda r: not r.buffered):
                kind = "BR" if rcb.buffered else "RP"
                instances = [f"{ld.name}/{ln.name}.{kind}.{n}" for n in rcb.instance_names()]
                result.report_control_blocks.append(
                    {
                        "name": rcb.name,
                        "instances": instances,
                        "buffered": rcb.buffered,
                        "data_set": rcb.dataset,
                        "rpt_id": rcb.rpt_id,
                        "intg_pd_ms": rcb.intg_pd_ms,
                        "buf_time_ms": rcb.buf_time_ms,
                        "trigger_options": sorted(rcb.trigger_options),
                        "optional_fields": sorted(rcb.optional_fields),
                        "conf_rev": rcb.conf_rev,
                    }
                )
                ds_entry = next(
                    (d for d in result.data_sets if d["reference"] == f"{ld.name}/{ln.name}.{rcb.dataset}"), None
                )
                if ds_entry and ds_entry["carries_points"] and rcb.dataset not in chosen:
                    chosen[rcb.dataset] = instances[0]
            rcbs += chosen.values()
        return rcbs


def site_fragment(
    ied: SclIed,
    *,
    ied_id: str | None = None,
    prefix: str | None = None,
    host: str | None = None,
    port: int | None = None,
    poll_period_ms: int = 1000,
) -> ImportResult:
    """The `[[ieds]]` entry for `ied` (validated as the site file would validate it)."""
    fragment = _Fragment(ied, ied.name if prefix is None else prefix)
    fragment.value_points()
    fragment.control_points()
    rcbs = fragment.report_blocks()
    result, points = fragment.result, fragment.points
    if ied.ip in (None, "", "0.0.0.0") and host is None:
        result.notes.append(
            f"the SCL gives no usable address for {ied.name} ({ied.ip or 'none'}): host set to 127.0.0.1, pass --host"
        )
    entry: dict[str, Any] = {
        "id": ied_id or f"IED-{ied.name}",
        "description": (ied.desc or f"{ied.manufacturer} {ied.type}".strip() or f"IEC 61850 IED {ied.name}")[:200],
        "protocol": "iec61850",
        "host": host or (ied.ip if ied.ip not in (None, "", "0.0.0.0") else "127.0.0.1"),
        "port": port or ied.port or 102,
        "poll_period_ms": poll_period_ms,
        "report_control_blocks": rcbs,
        "points": [
            {"id": p["id"], **{k: v for k, v in p.items() if not k.startswith("_") and k != "id"}} for p in points
        ],
    }
    try:
        Iec61850Ied.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ValueError(f"the entry made for {ied.name} is not a valid site-file IED: {problems}") from None
    result.ied = entry
    if not points:
        result.notes.append(f"{ied.name} has no MX or ST value attribute and no binary control: no points")
    return result


def _lns(ied: SclIed) -> list[tuple[LogicalDevice, LogicalNode]]:
    return [(ld, ln) for ld in ied.logical_devices for ln in ld.logical_nodes]


def _data_objects(ied: SclIed) -> list[tuple[LogicalDevice, LogicalNode, DataObject]]:
    return [(ld, ln, do) for ld, ln in _lns(ied) for do in ln.data_objects]


def fragment_text(results: list[ImportResult], source: str) -> str:
    """The TOML text of the entries, with the agent hints and notes as comments above each."""
    import tomli_w

    blocks = [
        f"# IEC 61850 IEDs imported from {source} by `stima scl import`.",
        "# Review the point names, units and scales; map them to agents (points = {...}).",
    ]
    for r in results:
        blocks.append("")
        if r.agent_hint:
            pairs = ", ".join(f'{k} = "{v}"' for k, v in r.agent_hint.items())
            blocks.append(f"# agent points (circuit_breaker): points = {{ {pairs} }}")
        for note in r.notes[:40]:
            blocks.append(f"# note: {note}")
        blocks.append(tomli_w.dumps({"ieds": [r.ied]}).rstrip())
    return "\n".join(blocks) + "\n"
