"""A simulated bay controller: an IEC 61850 MMS server built from the site file.

    python -m hil.iec61850_server --config SITE --ied IED-ID --port N [--host 127.0.0.1]

The model holds only what the IED's points reference, so any bay of any site file works:

- `LN.DO.mag.f` → MV, `LN.DO.SUB.cVal.mag.f` → a CMV under a plain container DO (WYE-like),
- `LN.Pos.stVal` (binary) → DPC status-only, `LN.DO.stVal` binary → SPS, numeric → INS,
- a point with `control = true` naming a DO (`CSWI1.Pos`) → DPC (SPC unless named Pos) with
  select-before-operate, enhanced security,
- LLN0 in every logical device, with a data set `dsPoints` of every referenced data object
  (controls by their FC=ST status) and the IED's report control blocks pointing at it.

The logical device name is split into IED name and LD instance at a trailing `LD<n>`
(`BAY046LD0` = `BAY046` + `LD0`).

Process protocol (one JSON object per line; the parent is `hil.runtime`):

- stdin  `{"values": {point_id: value}}` sets data attributes with a fresh timestamp and good
  quality; `null` marks the point invalid and keeps the last value;
  `{"interlock": {"point_id": ..., "blocked": true, "reason": "..."}}` sets or clears the
  fault/interlock flag: on a control point it blocks that control, on any other id of this IED
  (a status point or the IED id) it blocks every control of the IED;
  `{"local": {"point_id": ..., "on": true}}` puts a control point's device in local control
  (or, on the IED id, every control): select and operate, open or close, are then refused with
  add cause "blocked-by-switching-hierarchy", as a bay in local refuses remote control.
- stdout `{"command": {"point_id": ..., "value": ...}}` each time a control is operated.

The server runs in its own process, never in the gateway's: control handlers run on
libiec61850's threads and must not compete with a client for one interpreter.
It exits on stdin EOF or SIGTERM. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.config import ConfigError, load
from gateway.contract.settings import Iec61850Ied, Iec61850Point, PointKindName
from protocols import _iec61850_ffi as c

log = logging.getLogger("stima.hil.iec61850")

_LD_SPLIT = re.compile(r"^(?P<ied>.+?)(?P<inst>LD\d*)$")
DATA_SET_NAME = "dsPoints"
_TRG_OPS = c.TRG_OPT_DATA_CHANGED | c.TRG_OPT_QUALITY_CHANGED | c.TRG_OPT_INTEGRITY | c.TRG_OPT_GI
_RPT_OPTS = (
    c.RPT_OPT_SEQ_NUM
    | c.RPT_OPT_TIME_STAMP
    | c.RPT_OPT_REASON_FOR_INCLUSION
    | c.RPT_OPT_DATA_SET
    | c.RPT_OPT_ENTRY_ID
    | c.RPT_OPT_CONF_REV
)


class ModelError(ValueError):
    """The site file references something this simulator cannot build."""


@dataclass
class _Binding:
    """Where one point lives in the model and how its value is written."""

    point: Iec61850Point
    value_type: str  # "float" | "int" | "bool" | "dbpos"
    value_ref: str
    do_ref: str
    value_attr: Any = None
    q_attr: Any = None
    t_attr: Any = None


@dataclass
class _Control:
    point: Iec61850Point
    binding: _Binding
    do: Any = None
    blocked: bool = False
    reason: str = ""
    local: bool = False
    selected: bool = False
    callbacks: list[Any] = field(default_factory=list)


def split_reference(reference: str) -> tuple[str, str, list[str]]:
    """'LD/LN.DO.x.y' → ('LD', 'LN', ['DO', 'x', 'y'])."""
    ld, _, rest = reference.partition("/")
    ln, *parts = rest.split(".")
    if not ld or not ln or not parts:
        raise ModelError(f"reference {reference!r}: expected 'LD/LN.DO[.attribute...]'")
    return ld, ln, parts


class BayModel:
    """The dynamic libiec61850 model for one IED of the site file."""

    def __init__(self, ied: Iec61850Ied) -> None:
        self.ied = ied
        self.bindings: dict[str, _Binding] = {}
        self.controls: dict[str, _Control] = {}
        self._lds: dict[str, Any] = {}
        self._lns: dict[tuple[str, str], Any] = {}
        self._dos: dict[str, Any] = {}
        self._dataset_entries: dict[str, list[str]] = {}
        ld_names = sorted({split_reference(p.reference)[0] for p in ied.points})
        ied_names = {self._split_ld(n)[0] for n in ld_names}
        if len(ied_names) > 1:
            raise ModelError(f"IED {ied.id}: logical devices {ld_names} imply different IED names {sorted(ied_names)}")
        self.ied_name = ied_names.pop() if ied_names else ied.id.replace("-", "")
        self.model = c.lib.IedModel_create(self.ied_name.encode())
        # Controls first: a status point on the same data object then reuses the DPC.
        for point in sorted(ied.points, key=lambda p: not p.control):
            self._add_point(point)
        for ld_name, entries in self._dataset_entries.items():
            lln0 = self._ln(ld_name, "LLN0")
            dataset = c.lib.DataSet_create(DATA_SET_NAME.encode(), lln0)
            for entry in entries:
                c.lib.DataSetEntry_create(dataset, entry.encode(), -1, c.ffi.NULL)
        for rcb_ref in ied.report_control_blocks:
            self._add_rcb(rcb_ref)
        self._resolve_attributes()

    # ------------------------------------------------------------------ building

    @staticmethod
    def _split_ld(ld_name: str) -> tuple[str, str]:
        match = _LD_SPLIT.match(ld_name)
        if match is None:
            return "", ld_name
        return match["ied"], match["inst"]

    def _ld(self, ld_name: str) -> Any:
        if ld_name not in self._lds:
            self._lds[ld_name] = c.lib.LogicalDevice_create(self._split_ld(ld_name)[1].encode(), self.model)
            self._lns[(ld_name, "LLN0")] = c.lib.LogicalNode_create(b"LLN0", self._lds[ld_name])
            self._dataset_entries[ld_name] = []
        return self._lds[ld_name]

    def _ln(self, ld_name: str, ln_name: str) -> Any:
        ld = self._ld(ld_name)
        if (ld_name, ln_name) not in self._lns:
            self._lns[(ld_name, ln_name)] = c.lib.LogicalNode_create(ln_name.encode(), ld)
        return self._lns[(ld_name, ln_name)]

    def _parent(self, node: Any) -> Any:
        return c.ffi.cast("ModelNode*", node)

    def _add_point(self, point: Iec61850Point) -> None:
        ld_name, ln_name, parts = split_reference(point.reference)
        ln = self._ln(ld_name, ln_name)
        base = f"{ld_name}/{ln_name}"
        fc = point.fc.value
        where = f"point {point.id} ({point.reference})"
        if point.control:
            if len(parts) != 1:
                raise ModelError(f"{where}: a control point names a data object, e.g. 'LD/CSWI1.Pos'")
            do_ref = f"{base}.{parts[0]}"
            if point.kind is not PointKindName.BINARY:
                raise ModelError(f"{where}: only binary controls (SPC/DPC) are simulated")
            double = parts[0] == "Pos"
            create = c.lib.CDC_DPC_create if double else c.lib.CDC_SPC_create
            do = create(parts[0].encode(), self._parent(ln), 0, c.CDC_CTL_MODEL_SBO_ENHANCED)
            self._dos[do_ref] = do
            binding = _Binding(point, "dbpos" if double else "bool", f"{do_ref}.stVal", do_ref)
            self.controls[point.id] = _Control(point, binding, do)
            self.bindings[point.id] = binding
            self._dataset_entries[ld_name].append(f"{ln_name}$ST${parts[0]}")
            return
        if len(parts) == 3 and parts[1:] in (["mag", "f"], ["mag", "i"]):
            do_ref = f"{base}.{parts[0]}"
            integer = parts[2] == "i"
            if do_ref not in self._dos:
                self._dos[do_ref] = c.lib.CDC_MV_create(parts[0].encode(), self._parent(ln), 0, integer)
            value_type = "int" if integer else "float"
        elif len(parts) == 5 and parts[2:] == ["cVal", "mag", "f"]:
            container_ref = f"{base}.{parts[0]}"
            if container_ref not in self._dos:
                self._dos[container_ref] = c.lib.DataObject_create(parts[0].encode(), self._parent(ln), 0)
            do_ref = f"{container_ref}.{parts[1]}"
            if do_ref not in self._dos:
                self._dos[do_ref] = c.lib.CDC_CMV_create(parts[1].encode(), self._parent(self._dos[container_ref]), 0)
            value_type = "float"
        elif len(parts) == 2 and parts[1] == "stVal":
            do_ref = f"{base}.{parts[0]}"
            existing = self._dos.get(do_ref)
            if point.kind is PointKindName.BINARY and parts[0] == "Pos":
                if existing is None:
                    self._dos[do_ref] = c.lib.CDC_DPC_create(b"Pos", self._parent(ln), 0, c.CDC_CTL_MODEL_NONE)
                value_type = "dbpos"
            elif point.kind is PointKindName.BINARY:
                if existing is None:
                    self._dos[do_ref] = c.lib.CDC_SPS_create(parts[0].encode(), self._parent(ln), 0)
                value_type = "bool"
            else:
                if existing is None:
                    self._dos[do_ref] = c.lib.CDC_INS_create(parts[0].encode(), self._parent(ln), 0)
                value_type = "int"
        else:
            raise ModelError(
                f"{where}: unsupported reference shape; use LN.DO.mag.f, LN.DO.SUB.cVal.mag.f, "
                "LN.DO.stVal or a control DO"
            )
        expected_fc = "ST" if parts[-1] == "stVal" else "MX"
        if fc != expected_fc:
            raise ModelError(f"{where}: fc is {fc!r} but this attribute has FC {expected_fc}")
        self.bindings[point.id] = _Binding(point, value_type, point.reference, do_ref)
        entry = f"{ln_name}${fc}${do_ref[len(base) + 1 :].replace('.', '$')}"
        if entry not in self._dataset_entries[ld_name]:
            self._dataset_entries[ld_name].append(entry)

    def _add_rcb(self, rcb_ref: str) -> None:
        match = re.fullmatch(
            r"(?P<ld>[^/]+)/(?P<ln>[A-Za-z0-9_]+)\.(?P<kind>BR|RP)\.(?P<name>[A-Za-z0-9_]+)",
            rcb_ref,
        )
        if match is None:
            raise ModelError(f"report control block {rcb_ref!r}: expected 'LD/LN.BR.name' or 'LD/LN.RP.name'")
        ln = self._ln(match["ld"], match["ln"])
        if match["ln"] != "LLN0":
            raise ModelError(f"report control block {rcb_ref!r}: this simulator puts RCBs in LLN0 only")
        buffered = match["kind"] == "BR"
        c.lib.ReportControlBlock_create(
            match["name"].encode(),
            ln,
            rcb_ref.encode(),
            buffered,
            DATA_SET_NAME.encode(),
            1,
            _TRG_OPS,
            _RPT_OPTS,
            0,
            5000,
        )

    def _attr(self, ref: str) -> Any:
        node = c.lib.IedModel_getModelNodeByObjectReference(self.model, ref.encode())
        if node == c.ffi.NULL:
            raise ModelError(f"the built model has no {ref!r}")
        return c.ffi.cast("DataAttribute*", node)

    def _resolve_attributes(self) -> None:
        for binding in self.bindings.values():
            binding.value_attr = self._attr(binding.value_ref)
            binding.q_attr = self._attr(f"{binding.do_ref}.q")
            binding.t_attr = self._attr(f"{binding.do_ref}.t")

    def dataset_entries(self) -> dict[str, list[str]]:
        return {ld: list(entries) for ld, entries in self._dataset_entries.items()}


class BayServer:
    """The running server: applies stdin lines to the model, reports operated controls."""

    def __init__(self, model: BayModel, out: TextIO) -> None:
        self.model = model
        self._out = out
        self._out_lock = threading.Lock()
        self._ctl_lock = threading.Lock()
        self.server = c.lib.IedServer_create(model.model)
        for control in model.controls.values():
            self._install_handlers(control)

    # ------------------------------------------------------------------ lifecycle

    def start(self, host: str, port: int) -> None:
        # Nothing measured yet: every point starts invalid until its first value arrives.
        now_ms = int(time.time() * 1000)
        for binding in self.model.bindings.values():
            c.lib.IedServer_updateQuality(self.server, binding.q_attr, c.QUALITY_VALIDITY_INVALID)
            c.lib.IedServer_updateUTCTimeAttributeValue(self.server, binding.t_attr, now_ms)
        c.lib.IedServer_setLocalIpAddress(self.server, host.encode())
        c.lib.IedServer_start(self.server, port)
        if not c.lib.IedServer_isRunning(self.server):
            raise OSError(f"cannot listen on {host}:{port} (port in use or not permitted)")
        log.info("IEC 61850 server for %s listening on %s:%d", self.model.ied.id, host, port)

    def stop(self) -> None:
        c.lib.IedServer_stop(self.server)
        c.lib.IedServer_destroy(self.server)
        c.lib.IedModel_destroy(self.model.model)

    # ------------------------------------------------------------------ controls

    def _install_handlers(self, control: _Control) -> None:
        @c.ffi.callback("int(ControlAction, void*, MmsValue*, bool, bool)", onerror=lambda *a: None)
        def check(action: Any, _param: Any, ctl_val: Any, _test: bool, _interlock: bool) -> int:
            try:
                return self._check(control, action, ctl_val)
            except Exception:
                log.exception("check handler failed for %s", control.point.id)
                return c.CONTROL_HARDWARE_FAULT

        @c.ffi.callback("int(ControlAction, void*, MmsValue*, bool)", onerror=lambda *a: None)
        def operate(action: Any, _param: Any, ctl_val: Any, test: bool) -> int:
            try:
                return self._operate(control, ctl_val, test)
            except Exception:
                log.exception("control handler failed for %s", control.point.id)
                return c.CONTROL_RESULT_FAILED

        control.callbacks = [check, operate]  # the C side holds only raw pointers
        c.lib.IedServer_setPerformCheckHandler(self.server, control.do, check, c.ffi.NULL)
        c.lib.IedServer_setControlHandler(self.server, control.do, operate, c.ffi.NULL)

    def _check(self, control: _Control, action: Any, ctl_val: Any) -> int:
        """Called at select and at operate. libiec61850 already refuses an operate without a
        select under SBO; the record kept here makes the rule explicit and independent of it."""
        value = bool(c.lib.MmsValue_getBoolean(ctl_val))
        is_select = bool(c.lib.ControlAction_isSelect(action))
        with self._ctl_lock:
            blocked, reason, selected, local = control.blocked, control.reason, control.selected, control.local
            if not is_select:
                control.selected = False
        if local:
            log.warning(
                "refused %s of %s: the device is in local control",
                "select" if is_select else "operate",
                control.point.id,
            )
            c.lib.ControlAction_setAddCause(action, c.ADD_CAUSE_BLOCKED_BY_SWITCHING_HIERARCHY)
            return c.CONTROL_OBJECT_ACCESS_DENIED
        if value and blocked:
            log.warning("refused to close %s: %s", control.point.id, reason or "blocked")
            c.lib.ControlAction_setAddCause(action, c.ADD_CAUSE_BLOCKED_BY_INTERLOCKING)
            return c.CONTROL_OBJECT_ACCESS_DENIED
        if not is_select and not selected:
            log.warning("refused to operate %s: not selected", control.point.id)
            c.lib.ControlAction_setAddCause(action, c.ADD_CAUSE_OBJECT_NOT_SELECTED)
            return c.CONTROL_OBJECT_ACCESS_DENIED
        if is_select:
            with self._ctl_lock:
                control.selected = True
        return c.CONTROL_ACCEPTED

    def _operate(self, control: _Control, ctl_val: Any, test: bool) -> int:
        value = bool(c.lib.MmsValue_getBoolean(ctl_val))
        if test:
            return c.CONTROL_RESULT_OK
        self._write_status(control.binding, value)
        self.emit({"command": {"point_id": control.point.id, "value": value}})
        log.info("operated %s → %s", control.point.id, value)
        return c.CONTROL_RESULT_OK

    def emit(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with self._out_lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                log.warning("stdout closed; command not delivered: %s", line.strip())

    # ------------------------------------------------------------------ inputs

    def handle_line(self, line: str) -> None:
        """One stdin line; a bad line is logged and skipped, never fatal."""
        line = line.strip()
        if not line:
            return
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            log.warning("ignored a line that is not JSON (%s): %.120s", exc, line)
            return
        if not isinstance(message, dict):
            log.warning("ignored a line that is not a JSON object: %.120s", line)
            return
        known = {"values", "interlock", "local"}
        for key in message.keys() - known:
            log.warning("ignored unknown key %r (expected one of %s)", key, sorted(known))
        if "local" in message:
            self._apply_local(message["local"])
        if "values" in message:
            self._apply_values(message["values"])
        if "interlock" in message:
            self._apply_interlock(message["interlock"])

    def _apply_values(self, values: Any) -> None:
        if not isinstance(values, dict):
            log.warning("'values' must be an object {point_id: value}, found %s", type(values).__name__)
            return
        now_ms = int(time.time() * 1000)
        c.lib.IedServer_lockDataModel(self.server)
        try:
            for point_id, value in values.items():
                binding = self.model.bindings.get(point_id)
                if binding is None:
                    log.warning("values: %r is not a point of %s", point_id, self.model.ied.id)
                    continue
                if value is not None and (isinstance(value, str) or not isinstance(value, int | float | bool)):
                    log.warning("values.%s: expected a number, a boolean or null, found %r", point_id, value)
                    continue
                try:
                    self._update(binding, value, now_ms)
                except (ValueError, OverflowError) as exc:
                    log.warning("values.%s: %r cannot be stored (%s)", point_id, value, exc)
        finally:
            c.lib.IedServer_unlockDataModel(self.server)

    def _update(self, binding: _Binding, value: float | bool | None, now_ms: int) -> None:
        srv = self.server
        if value is None:
            c.lib.IedServer_updateQuality(srv, binding.q_attr, c.QUALITY_VALIDITY_INVALID)
            c.lib.IedServer_updateUTCTimeAttributeValue(srv, binding.t_attr, now_ms)
            return
        point = binding.point
        if binding.value_type == "dbpos":
            c.lib.IedServer_updateDbposValue(srv, binding.value_attr, c.DBPOS_ON if value else c.DBPOS_OFF)
        elif binding.value_type == "bool":
            c.lib.IedServer_updateBooleanAttributeValue(srv, binding.value_attr, bool(value))
        else:
            raw = (float(value) - point.offset) / point.scale
            if binding.value_type == "float":
                c.lib.IedServer_updateFloatAttributeValue(srv, binding.value_attr, raw)
            else:
                c.lib.IedServer_updateInt32AttributeValue(srv, binding.value_attr, round(raw))
        c.lib.IedServer_updateUTCTimeAttributeValue(srv, binding.t_attr, now_ms)
        c.lib.IedServer_updateQuality(srv, binding.q_attr, c.QUALITY_VALIDITY_GOOD)

    def _write_status(self, binding: _Binding, value: bool) -> None:
        c.lib.IedServer_lockDataModel(self.server)
        try:
            self._update(binding, value, int(time.time() * 1000))
        finally:
            c.lib.IedServer_unlockDataModel(self.server)

    def _apply_local(self, spec: Any) -> None:
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("point_id"), str)
            or not isinstance(spec.get("on"), bool)
        ):
            log.warning('\'local\' must be {"point_id": str, "on": bool}, found %r', spec)
            return
        point_id = spec["point_id"]
        if point_id in self.model.controls:
            targets = [self.model.controls[point_id]]
        elif point_id == self.model.ied.id:
            targets = list(self.model.controls.values())
        else:
            log.warning("local: %r is neither a control point nor the id of %s", point_id, self.model.ied.id)
            return
        with self._ctl_lock:
            for control in targets:
                control.local = spec["on"]
        log.info("%s control: %s", "local" if spec["on"] else "remote", ", ".join(t.point.id for t in targets))

    def _apply_interlock(self, spec: Any) -> None:
        if not isinstance(spec, dict) or not isinstance(spec.get("point_id"), str):
            log.warning(
                '\'interlock\' must be {"point_id": str, "blocked": bool, "reason": str}, found %r',
                spec,
            )
            return
        blocked = spec.get("blocked")
        if not isinstance(blocked, bool):
            log.warning("interlock.blocked: expected true or false, found %r", blocked)
            return
        reason = str(spec.get("reason", ""))
        point_id = spec["point_id"]
        if point_id in self.model.controls:
            targets = [self.model.controls[point_id]]
        elif point_id in self.model.bindings or point_id == self.model.ied.id:
            targets = list(self.model.controls.values())
        else:
            log.warning("interlock: %r is neither a point nor the id of %s", point_id, self.model.ied.id)
            return
        with self._ctl_lock:
            for control in targets:
                control.blocked, control.reason = blocked, reason
        log.info(
            "interlock %s on %s%s",
            "set" if blocked else "cleared",
            ", ".join(t.point.id for t in targets),
            f": {reason}" if reason else "",
        )


# --------------------------------------------------------------------------- parent side


class BayServerProcess:
    """The parent's handle on a server process: feed values and interlocks, collect commands.

    Used by tests and benchmarks; `hil.runtime` may use it or speak the same protocol itself.
    """

    def __init__(
        self,
        config: str,
        ied: str,
        port: int,
        host: str = "127.0.0.1",
        log_path: str | None = None,
        python: str = sys.executable,
    ) -> None:

        self.host, self.port = host, port
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self._log_file = open(log_path or os.devnull, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                python,
                "-m",
                "hil.iec61850_server",
                "--config",
                str(config),
                "--ied",
                ied,
                "--port",
                str(port),
                "--host",
                host,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_stdout, name=f"bay-{ied}-stdout", daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(line)
                if isinstance(message, dict) and "command" in message:
                    self.commands.put(message["command"])

    def wait_listening(self, timeout_s: float = 10.0) -> None:
        """Block until the server accepts TCP connections (or fail after `timeout_s`)."""

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"IEC 61850 server exited with status {self.proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise TimeoutError(f"IEC 61850 server not listening on {self.host}:{self.port} after {timeout_s} s")

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message, separators=(",", ":")) + "\n")
        self.proc.stdin.flush()

    def set_values(self, values: Mapping[str, float | int | bool | None]) -> None:
        self.send({"values": dict(values)})

    def interlock(self, point_id: str, blocked: bool, reason: str = "") -> None:
        self.send({"interlock": {"point_id": point_id, "blocked": blocked, "reason": reason}})

    def kill(self) -> None:
        """Die like a crashed IED: no goodbye on the wire."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log_file.close()

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop by closing stdin (the normal way); SIGKILL if it does not go in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        self._log_file.close()
        return self.proc.returncode


class _Terminate(Exception):
    pass


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise _Terminate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.iec61850_server", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="site file (TOML)")
    parser.add_argument("--ied", required=True, help="id of an IED with protocol 'iec61850'")
    parser.add_argument("--port", required=True, type=int, help="TCP port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        site = load(args.config)
        ied = site.ied(args.ied)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except KeyError:
        log.error("--ied %s: no such IED in %s", args.ied, args.config)
        return 2
    if not isinstance(ied, Iec61850Ied):
        log.error("--ied %s: protocol is %r, expected 'iec61850'", args.ied, ied.protocol)
        return 2
    if not 1 <= args.port <= 65535:
        log.error("--port %d: expected 1..65535", args.port)
        return 2
    try:
        model = BayModel(ied)
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    server = BayServer(model, sys.stdout)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # libiec61850's threads start with SIGTERM/SIGINT blocked, so the kernel delivers them to
    # the main thread and interrupts its read of stdin; otherwise a signal taken by a library
    # thread would wait for the next input line.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        server.start(args.host, args.port)
    except OSError as exc:
        log.error("%s", exc)
        server.stop()
        return 1
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    try:
        for line in sys.stdin:
            server.handle_line(line)
        log.info("stdin closed; stopping")
    except (_Terminate, KeyboardInterrupt):
        log.info("terminated; stopping")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
