"""IEC 61850 MMS client for one IED: reports, polling of the rest, select-before-operate.

Threading design, and why
-------------------------
libiec61850's client blocks while it waits for an answer, and it calls report and
command-termination handlers on its own receive thread. The SWIG binding of pyiec61850-ng
keeps the GIL during most blocking calls, so a report handler (which needs the GIL) and a
blocking call (which waits for the receive thread that is stuck on the GIL) deadlock.

So this adapter binds the C library itself with cffi in ABI mode (`protocols._iec61850_ffi`):

- cffi drops the GIL around every foreign call; a thread blocked in libiec61850 never holds it.
- Every blocking call of one connection (connect, reads, RCB set-up, select/operate, close) runs
  in one dedicated worker thread (a single-thread executor per IED). One thread per connection
  keeps the calls serialised, so the handle is never used by two threads at once, and the
  asyncio loop never blocks. Each call is bounded by the IED's `timeout_ms` in the C library
  and again by a guard on the asyncio side.
- Report and command-termination handlers run on libiec61850's receive thread. They only copy
  the values out of the report (the report is freed when they return) and hand plain Python
  tuples to the loop with `loop.call_soon_threadsafe`; they take no lock and call nothing that
  waits on the network, so they cannot block the receive thread either.
- Writes (controls) have their own task and jump the worker queue ahead of the next poll; a
  poll is one job (one read per logical node and FC), so an operate waits at most one job.

Services: association with connect/request timeouts and reconnection with jittered backoff;
report subscription (RptEna, trigger options data change + quality change + integrity + GI,
IntgPd = poll period, a GI after enabling); reads of the points no report data set carries,
FC-aware (one read per LN and FC, values picked by MMS path); controls with the control model
the IED announces (SBO enhanced: select-with-value, operate, wait for CommandTermination;
SBO normal, direct normal/enhanced as well); IEC 61850 quality → `gateway.contract.points.Quality`.
A lost association marks every point invalid (communication failure) at once, and so does
silence longer than two poll periods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.contract.clock import Clock
from gateway.contract.settings import Iec61850Ied, Iec61850Point, PointKindName
from gateway.contract.points import GOOD, PointUpdate, Quality, QualityReason, Validity
from protocols import _iec61850_ffi as c
from gateway.contract.ports import AdapterStatus, CommandError, LinkState, Priority, Sink
from protocols.base import PolledAdapter

ffi, lib = c.ffi, c.lib
T = TypeVar("T")

DATA_ATTRIBUTE_NAMES = frozenset(
    {
        "stVal",
        "q",
        "t",
        "cVal",
        "mag",
        "ang",
        "instMag",
        "instCVal",
        "general",
        "ctlVal",
        "setMag",
        "setVal",
        "actVal",
        "valWTr",
        "subVal",
        "subMag",
        "range",
    }
)
"""Path elements that are data attributes: the data object ends just before the first one."""

OUT_OF_RANGE = Quality(Validity.INVALID, QualityReason.OUT_OF_RANGE)
DEVICE_EXCEPTION = Quality(Validity.INVALID, QualityReason.DEVICE_EXCEPTION)
MALFORMED = Quality(Validity.INVALID, QualityReason.MALFORMED_RESPONSE)

_DETAIL_REASONS = (
    (0x0004, QualityReason.OVERFLOW),
    (0x0008, QualityReason.OUT_OF_RANGE),
    (0x0010, QualityReason.INACCURATE),  # bad reference (calibration)
    (0x0020, QualityReason.OSCILLATORY),
    (0x0040, QualityReason.FAILURE),
    (0x0080, QualityReason.OLD_DATA),
    (0x0100, QualityReason.INCONSISTENT),
    (0x0200, QualityReason.INACCURATE),
    (0x0400, QualityReason.SUBSTITUTED),
    (0x0800, QualityReason.TEST),
    (0x1000, QualityReason.OPERATOR_BLOCKED),
)
_VALIDITY = {
    c.QUALITY_VALIDITY_GOOD: Validity.GOOD,
    c.QUALITY_VALIDITY_INVALID: Validity.INVALID,
    c.QUALITY_VALIDITY_QUESTIONABLE: Validity.QUESTIONABLE,
    1: Validity.INVALID,  # "reserved": not a value to trust
}


def map_quality(bits: int) -> Quality:
    """IEC 61850-7-3 quality (as libiec61850's uint16: validity in bits 0-1) → Quality.

    The first detail bit set names the reason; a good value with the substituted, test or
    operator-blocked flag keeps validity good and says so in the reason.
    """
    validity = _VALIDITY[bits & c.QUALITY_VALIDITY_MASK]
    for mask, reason in _DETAIL_REASONS:
        if bits & mask:
            return Quality(validity, reason)
    return Quality(validity, QualityReason.NONE)


def data_object_reference(reference: str) -> str:
    """'LD/MMXU1.A.phsA.cVal.mag.f' → 'LD/MMXU1.A.phsA': where the q and t siblings live."""
    head, _, rest = reference.partition("/")
    ln, *parts = rest.split(".")
    keep: list[str] = []
    for n, part in enumerate(parts):
        if n > 0 and part in DATA_ATTRIBUTE_NAMES:
            break
        keep.append(part)
    return f"{head}/{'.'.join([ln, *keep])}"


def _mms_path(relative: str) -> bytes:
    return relative.replace(".", "$").encode()


@dataclass(frozen=True, slots=True)
class PointAddress:
    """Where a point's value, quality and time are, as the client reads them."""

    point: Iec61850Point
    value_ref: str
    fc: str
    do_ref: str

    @classmethod
    def of(cls, point: Iec61850Point) -> PointAddress:
        if point.control:
            # The status of a controllable object: its stVal (FC=ST).
            return cls(point, f"{point.reference}.stVal", "ST", point.reference)
        return cls(point, point.reference, point.fc.value, data_object_reference(point.reference))

    @property
    def ln_ref(self) -> str:
        head, _, rest = self.value_ref.partition("/")
        return f"{head}/{rest.split('.')[0]}"


@dataclass(slots=True)
class _Extract:
    """How to pull one point out of a container value (a data set member or an LN read)."""

    point: Iec61850Point
    spec: Any
    value_path: bytes
    q_path: bytes | None
    t_path: bytes | None

    def child(self, container: Any, path: bytes) -> Any:
        if not path:
            return container
        return lib.MmsVariableSpecification_getChildValue(self.spec, container, path)

    def decode(self, container: Any) -> tuple[str, Any, Quality, float | None]:
        """Runs on whichever thread holds `container`; touches no Python state but the point."""
        point = self.point
        mms = self.child(container, self.value_path)
        if mms == ffi.NULL:
            return point.id, None, MALFORMED, None
        value, quality = decode_value(mms, point)
        if self.q_path is not None and quality.good:
            q = self.child(container, self.q_path)
            if q != ffi.NULL and lib.MmsValue_getType(q) == c.MMS_BIT_STRING:
                quality = map_quality(lib.Quality_fromMmsValue(q))
        source_time = None
        if self.t_path is not None:
            t = self.child(container, self.t_path)
            if t != ffi.NULL and lib.MmsValue_getType(t) == c.MMS_UTC_TIME:
                ms = lib.MmsValue_getUtcTimeInMs(t)
                source_time = ms / 1000.0 if ms else None
        return point.id, value, quality, source_time


def decode_value(mms: Any, point: Iec61850Point) -> tuple[float | int | bool | None, Quality]:
    """One MMS value → engineering value and the quality the value itself implies."""
    kind = lib.MmsValue_getType(mms)
    raw: float | int | bool
    if kind == c.MMS_FLOAT:
        raw = lib.MmsValue_toDouble(mms)
    elif kind == c.MMS_INTEGER:
        raw = lib.MmsValue_toInt64(mms)
    elif kind == c.MMS_UNSIGNED:
        raw = lib.MmsValue_toUint32(mms)
    elif kind == c.MMS_BOOLEAN:
        return bool(lib.MmsValue_getBoolean(mms)), GOOD
    elif kind == c.MMS_BIT_STRING and lib.MmsValue_getBitStringSize(mms) == 2:
        dbpos = lib.MmsValue_getBitStringAsIntegerBigEndian(mms)
        if dbpos == c.DBPOS_ON:
            return True, GOOD
        if dbpos == c.DBPOS_OFF:
            return False, GOOD
        if dbpos == c.DBPOS_INTERMEDIATE:
            return None, Quality(Validity.QUESTIONABLE, QualityReason.INCONSISTENT)
        return None, Quality(Validity.INVALID, QualityReason.INCONSISTENT)
    elif kind == c.MMS_DATA_ACCESS_ERROR:
        return None, DEVICE_EXCEPTION
    else:
        return None, MALFORMED
    if point.kind is PointKindName.BINARY:
        return bool(raw), GOOD
    value = raw * point.scale + point.offset
    if isinstance(value, float) and not math.isfinite(value):
        return None, MALFORMED
    if point.kind is PointKindName.COUNTER and float(value).is_integer():
        value = int(value)
    if point.valid_range is not None and not point.valid_range[0] <= value <= point.valid_range[1]:
        return value, OUT_OF_RANGE
    return value, GOOD


def _parse_dataset_entry(entry: str) -> tuple[str, str]:
    """'LD/LN.DO[MX]' → ('LD/LN.DO', 'MX')."""
    if entry.endswith("]") and "[" in entry:
        ref, _, fc = entry[:-1].rpartition("[")
        return ref, fc
    return entry, ""


def _relative(ref: str, container_ref: str) -> str | None:
    """Path of `ref` below `container_ref` ('' when equal), or None when not below it."""
    if ref == container_ref:
        return ""
    if ref.startswith(container_ref + "."):
        return ref[len(container_ref) + 1 :]
    return None


class _LinkDown(Exception):
    """The association is gone or does not answer."""


class _Refused(Exception):
    """The IED answered but would not do it."""


@dataclass(eq=False)
class _Session:
    """One association and everything that lives as long as it. Used on the worker thread;
    the report plans are only read by the receive thread once installed."""

    con: Any
    specs: list[Any] = field(default_factory=list)
    report_plans: dict[str, list[tuple[int, list[_Extract]]]] = field(default_factory=dict)
    polls: list[tuple[bytes, int, Any, list[_Extract]]] = field(default_factory=list)
    controls: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)
    rcbs: list[Any] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    closed: bool = False


class Iec61850Client(PolledAdapter):
    """Adapter for one IEC 61850 IED (see the module docstring for the threading design)."""

    protocol = "iec61850"

    def __init__(self, ied_config: Iec61850Ied, sink: Sink, clock: Clock, logger: logging.Logger | None) -> None:
        self.cfg = ied_config
        self.ied_id = ied_config.id
        self._sink = sink
        self._clock = clock
        self._log = logger.getChild(ied_config.id) if logger else logging.getLogger(__name__)
        self._addresses = {p.id: PointAddress.of(p) for p in ied_config.points}
        self._timeout = ied_config.timeout_ms / 1000.0
        self._guard = 3 * self._timeout + 2.0
        self._init_health()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: _Session | None = None
        self._link_generation = 0
        self._terminations: dict[str, asyncio.Future[tuple[int, int, int]]] = {}
        self._open_sessions: set[_Session] = set()
        self._online: asyncio.Event | None = None
        """Every association not yet closed, whoever holds it: an open that finishes after
        its caller was cancelled is still here, so close() can free it (its C callbacks live
        exactly as long as the association)."""
        self.status = AdapterStatus(
            ied_id=ied_config.id,
            protocol=ied_config.protocol,
            endpoint=f"{ied_config.host}:{ied_config.port}",
            extra={"reports": 0, "report_points": 0, "polled_points": 0, "rcbs_enabled": 0},
        )

    # ------------------------------------------------------------------ public API

    def submit_write(
        self, point_id: str, value: float | bool, priority: Priority = Priority.CONTROL
    ) -> asyncio.Future[Any]:
        """Operate a control point; the future fails with CommandError saying why."""
        address = self._addresses.get(point_id)
        refusal = None
        if address is None or not address.point.control:
            why = "is not a point of this IED" if address is None else "is not a control (control = true)"
            refusal = f"{self.ied_id}: {point_id} {why}"
        return self._queue_write(point_id, value, priority, refusal)

    async def close(self) -> None:
        self._closing = True
        self._writes.fail_all(f"{self.ied_id}: adapter stopped")
        self.status.state = LinkState.STOPPED
        await self._drop_session()
        await self._close_all()
        if self._worker is not None:
            self._worker.shutdown(wait=False)

    async def _close_all(self) -> None:
        """Queue behind any job still running (an open, a read) and close every association."""
        if self._worker is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the worker was already shut down
            job = self._loop.run_in_executor(self._worker, self._close_sessions)
            await asyncio.shield(job)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._online = asyncio.Event()
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"iec61850-{self.ied_id}")
        watchdog = asyncio.create_task(self._staleness_watchdog(), name=f"{self.ied_id}-watchdog")
        writer = asyncio.create_task(self._write_loop(), name=f"{self.ied_id}-writes")
        backoff = min(self._period, 1.0)
        try:
            while not self._closing:
                self.status.state = LinkState.CONNECTING
                self._link_generation += 1
                try:
                    self._session = await self._call(self._open_session, self._link_generation)
                except _LinkDown as exc:
                    self._link_lost(f"connect failed: {exc}")
                    self._writes.fail_all(f"{self.ied_id}: no link")
                    await self._sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, self.cfg.backoff_max_s)
                    continue
                self.status.extra["polled_points"] = sum(len(e) for *_, e in self._session.polls)
                self.status.extra["report_points"] = len(self._session.reported)
                self.status.extra["rcbs_enabled"] = len(self._session.report_plans)
                self.status.state = LinkState.ONLINE
                self._online.set()
                self._last_ok_mono = self._clock.monotonic()
                self._stale_marked = False
                self._log.info("link up", extra={"ied": self.ied_id, "endpoint": self.status.endpoint})
                backoff = min(self._period, 1.0)
                try:
                    await self._poll_forever()
                except _LinkDown as exc:
                    self._link_lost(str(exc))
                    await self._drop_session()
                    self._writes.fail_all(f"{self.ied_id}: link lost")
                    await self._sleep(backoff * random.uniform(0.8, 1.2))
        finally:
            for task in (watchdog, writer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._writes.fail_all(f"{self.ied_id}: adapter stopped")
            await self._drop_session()
            await self._close_all()

    # ------------------------------------------------------------------ worker plumbing

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking libiec61850 job on this connection's worker thread."""
        assert self._worker is not None and self._loop is not None
        job = self._loop.run_in_executor(self._worker, fn, *args)
        try:
            return await asyncio.wait_for(job, timeout=self._guard)
        except TimeoutError:
            raise _LinkDown(f"no answer within {self._guard:.1f} s") from None

    async def _sleep(self, delay: float) -> None:
        await asyncio.sleep(max(delay, 0.0))

    async def _drop_session(self) -> None:
        session, self._session = self._session, None
        self._link_generation += 1  # reports still queued from this association are dropped
        if session is None:
            return
        if self._worker is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                await self._loop.run_in_executor(self._worker, self._close_session, session)
        for future in self._terminations.values():
            if not future.done():
                future.set_exception(_LinkDown("link lost while waiting for command termination"))

    # ------------------------------------------------------------------ worker thread: session

    def _check(self, error: Any, what: str) -> None:
        code = error[0]
        if code == c.IED_ERROR_OK:
            return
        if code in c.LINK_ERRORS:
            raise _LinkDown(f"{what}: {c.ied_error_name(code)}")
        raise _Refused(f"{what}: {c.ied_error_name(code)}")

    def _open_session(self, generation: int) -> _Session:
        con = lib.IedConnection_create()
        if con == ffi.NULL:
            raise _LinkDown("cannot allocate a connection")
        lib.IedConnection_setConnectTimeout(con, self.cfg.timeout_ms)
        lib.IedConnection_setRequestTimeout(con, self.cfg.timeout_ms)
        session = _Session(con)
        self._open_sessions.add(session)
        error = ffi.new("int*")
        lib.IedConnection_connect(con, error, self.cfg.host.encode(), self.cfg.port)
        if error[0] != c.IED_ERROR_OK:
            self._close_session(session)
            raise _LinkDown(f"connect to {self.status.endpoint}: {c.ied_error_name(error[0])}")
        try:
            for rcb_ref in self.cfg.report_control_blocks:
                try:
                    self._subscribe(session, rcb_ref, generation)
                except _Refused as exc:
                    self._log.warning(
                        "report control block not used, its points are polled",
                        extra={"ied": self.ied_id, "rcb": rcb_ref, "reason": str(exc)},
                    )
            self._plan_polls(session)
        except BaseException:
            self._close_session(session)
            raise
        return session

    def _close_sessions(self) -> None:
        for session in list(self._open_sessions):
            self._close_session(session)

    def _close_session(self, session: _Session) -> None:
        if session.closed:
            return
        session.closed = True
        self._open_sessions.discard(session)
        for ctl in session.controls.values():
            lib.ControlObjectClient_destroy(ctl)
        session.controls.clear()
        lib.IedConnection_close(session.con)
        lib.IedConnection_destroy(session.con)  # joins the receive thread: no handler runs after
        for rcb in session.rcbs:
            lib.ClientReportControlBlock_destroy(rcb)
        for spec in session.specs:
            lib.MmsVariableSpecification_destroy(spec)
        session.specs.clear()
        session.rcbs.clear()

    def _spec(self, session: _Session, ref: str, fc: str) -> Any:
        error = ffi.new("int*")
        spec = lib.IedConnection_getVariableSpecification(session.con, error, ref.encode(), c.FC[fc])
        self._check(error, f"type of {ref}[{fc}]")
        session.specs.append(spec)
        return spec

    def _subscribe(self, session: _Session, rcb_ref: str, generation: int) -> None:
        con, error = session.con, ffi.new("int*")
        rcb = lib.IedConnection_getRCBValues(con, error, rcb_ref.encode(), ffi.NULL)
        self._check(error, f"read {rcb_ref}")
        session.rcbs.append(rcb)
        dataset_ref = ffi.string(lib.ClientReportControlBlock_getDataSetReference(rcb)).decode()
        dataset_ref = dataset_ref.replace("$", ".")
        deletable = ffi.new("bool*")
        directory = lib.IedConnection_getDataSetDirectory(con, error, dataset_ref.encode(), deletable)
        self._check(error, f"directory of data set {dataset_ref}")
        entries: list[tuple[str, str]] = []
        node = directory.next if directory != ffi.NULL else ffi.NULL
        while node != ffi.NULL:
            entries.append(_parse_dataset_entry(ffi.string(ffi.cast("char*", node.data)).decode()))
            node = node.next
        if directory != ffi.NULL:
            lib.LinkedList_destroy(directory)
        plan: list[tuple[int, list[_Extract]]] = []
        for index, (entry_ref, entry_fc) in enumerate(entries):
            extracts: list[_Extract] = []
            spec = None
            for address in self._addresses.values():
                if address.point.id in session.reported or address.fc != entry_fc:
                    continue
                value_path = _relative(address.value_ref, entry_ref)
                if value_path is None:
                    continue
                if spec is None:
                    spec = self._spec(session, entry_ref, entry_fc)
                q_path = _relative(f"{address.do_ref}.q", entry_ref)
                t_path = _relative(f"{address.do_ref}.t", entry_ref)
                extracts.append(
                    _Extract(
                        address.point,
                        spec,
                        _mms_path(value_path),
                        None if q_path is None else _mms_path(q_path),
                        None if t_path is None else _mms_path(t_path),
                    )
                )
            if extracts:
                plan.append((index, extracts))
        if not plan:
            raise _Refused(f"data set {dataset_ref} carries none of this IED's points")
        rpt_id_c = lib.ClientReportControlBlock_getRptId(rcb)
        rpt_id = ffi.string(rpt_id_c) if rpt_id_c != ffi.NULL else b""
        handler = ffi.callback("void(void*, ClientReport)", self._report_handler(plan, generation))
        session.callbacks.append(handler)
        lib.IedConnection_installReportHandler(con, rcb_ref.encode(), rpt_id or ffi.NULL, handler, ffi.NULL)
        lib.ClientReportControlBlock_setTrgOps(
            rcb,
            c.TRG_OPT_DATA_CHANGED | c.TRG_OPT_QUALITY_CHANGED | c.TRG_OPT_INTEGRITY | c.TRG_OPT_GI,
        )
        lib.ClientReportControlBlock_setIntgPd(rcb, self.cfg.poll_period_ms)
        lib.ClientReportControlBlock_setOptFlds(
            rcb,
            c.RPT_OPT_SEQ_NUM | c.RPT_OPT_TIME_STAMP | c.RPT_OPT_REASON_FOR_INCLUSION | c.RPT_OPT_DATA_SET,
        )
        lib.ClientReportControlBlock_setRptEna(rcb, True)
        lib.IedConnection_setRCBValues(
            con,
            error,
            rcb,
            c.RCB_ELEMENT_TRG_OPS | c.RCB_ELEMENT_INTG_PD | c.RCB_ELEMENT_OPT_FLDS | c.RCB_ELEMENT_RPT_ENA,
            True,
        )
        if error[0] != c.IED_ERROR_OK:
            lib.IedConnection_uninstallReportHandler(con, rcb_ref.encode())
        self._check(error, f"enable {rcb_ref}")
        lib.ClientReportControlBlock_setGI(rcb, True)
        lib.IedConnection_setRCBValues(con, error, rcb, c.RCB_ELEMENT_GI, True)
        if error[0] != c.IED_ERROR_OK:
            self._log.warning("general interrogation refused", extra={"ied": self.ied_id, "rcb": rcb_ref})
        session.report_plans[rcb_ref] = plan
        session.reported.update(ex.point.id for _, extracts in plan for ex in extracts)

    def _plan_polls(self, session: _Session) -> None:
        groups: dict[tuple[str, str], list[PointAddress]] = {}
        for address in self._addresses.values():
            if address.point.id not in session.reported:
                groups.setdefault((address.ln_ref, address.fc), []).append(address)
        for (ln_ref, fc), addresses in groups.items():
            spec = self._spec(session, ln_ref, fc)
            extracts = []
            for a in addresses:
                q_path = _relative(f"{a.do_ref}.q", ln_ref)
                t_path = _relative(f"{a.do_ref}.t", ln_ref)
                extracts.append(
                    _Extract(
                        a.point,
                        spec,
                        _mms_path(_relative(a.value_ref, ln_ref) or ""),
                        None if q_path is None else _mms_path(q_path),
                        None if t_path is None else _mms_path(t_path),
                    )
                )
            session.polls.append((ln_ref.encode(), c.FC[fc], spec, extracts))

    def _report_handler(self, plan: list[tuple[int, list[_Extract]]], generation: int) -> Callable[[Any, Any], None]:
        loop = self._loop

        def on_report(_param: Any, report: Any) -> None:
            # libiec61850's receive thread: copy values out, hand them to the loop, never block.
            try:
                values = lib.ClientReport_getDataSetValues(report)
                if values == ffi.NULL:
                    return
                size = lib.MmsValue_getArraySize(values)
                decoded: list[tuple[str, Any, Quality, float | None]] = []
                for index, extracts in plan:
                    if index >= size or lib.ClientReport_getReasonForInclusion(report, index) == c.REASON_NOT_INCLUDED:
                        continue
                    element = lib.MmsValue_getElement(values, index)
                    if element == ffi.NULL:
                        continue
                    decoded.extend(ex.decode(element) for ex in extracts)
                if decoded and loop is not None:
                    loop.call_soon_threadsafe(self._apply_report, generation, decoded)
            except RuntimeError:
                pass  # the loop is closed: the adapter is gone
            except Exception:  # noqa: BLE001 - nothing may escape into libiec61850's thread
                self._log.exception("report handling failed", extra={"ied": self.ied_id})

        return on_report

    def _poll_blocking(self, session: _Session) -> list[tuple[str, Any, Quality, float | None]]:
        error = ffi.new("int*")
        out: list[tuple[str, Any, Quality, float | None]] = []
        if not session.polls:
            # Everything arrives by report: probe the association so silence is noticed.
            if lib.IedConnection_getState(session.con) != c.IED_STATE_CONNECTED:
                raise _LinkDown("association closed")
            address = next(iter(self._addresses.values()), None)
            if address is not None:
                value = lib.IedConnection_readObject(session.con, error, address.value_ref.encode(), c.FC[address.fc])
                if value != ffi.NULL:
                    lib.MmsValue_delete(value)
                if error[0] in c.LINK_ERRORS:
                    raise _LinkDown(f"liveness read: {c.ied_error_name(error[0])}")
            return out
        for ln_ref, fc, _spec, extracts in session.polls:
            value = lib.IedConnection_readObject(session.con, error, ln_ref, fc)
            if error[0] in c.LINK_ERRORS:
                if value != ffi.NULL:
                    lib.MmsValue_delete(value)
                raise _LinkDown(f"read {ln_ref.decode()}: {c.ied_error_name(error[0])}")
            if value == ffi.NULL or error[0] != c.IED_ERROR_OK:
                out.extend((ex.point.id, None, DEVICE_EXCEPTION, None) for ex in extracts)
                continue
            try:
                out.extend(ex.decode(value) for ex in extracts)
            finally:
                lib.MmsValue_delete(value)
        return out

    # ------------------------------------------------------------------ worker thread: controls

    def _control_object(self, session: _Session, address: PointAddress) -> Any:
        ctl = session.controls.get(address.point.id)
        if ctl is not None:
            return ctl
        ctl = lib.ControlObjectClient_create(address.point.reference.encode(), session.con)
        if ctl == ffi.NULL:
            if lib.IedConnection_getState(session.con) != c.IED_STATE_CONNECTED:
                raise _LinkDown("association closed")
            raise _Refused(f"{address.point.reference} is not a controllable object on the IED")
        point_id, loop = address.point.id, self._loop

        def on_termination(_param: Any, client: Any) -> None:
            try:
                appl = lib.ControlObjectClient_getLastApplError(client)
                if loop is not None:
                    loop.call_soon_threadsafe(self._terminated, point_id, (appl.ctlNum, appl.error, appl.addCause))
            except RuntimeError:
                pass
            except Exception:  # noqa: BLE001 - nothing may escape into libiec61850's thread
                self._log.exception("command termination handling failed", extra={"ied": self.ied_id})

        handler = ffi.callback("void(void*, ControlObjectClient)", on_termination)
        session.callbacks.append(handler)
        lib.ControlObjectClient_setCommandTerminationHandler(ctl, handler, ffi.NULL)
        lib.ControlObjectClient_setOrigin(ctl, b"stima", c.CONTROL_ORCAT_STATION_CONTROL)
        session.controls[address.point.id] = ctl
        return ctl

    def _refusal(self, ctl: Any, step: str) -> Exception:
        error = lib.ControlObjectClient_getLastError(ctl)
        appl = lib.ControlObjectClient_getLastApplError(ctl)
        if error in c.LINK_ERRORS:
            return _LinkDown(f"{step}: {c.ied_error_name(error)}")
        cause = c.add_cause_name(appl.addCause)
        return _Refused(f"{step} refused: {cause} (AddCause {appl.addCause}), {c.ied_error_name(error)}")

    def _operate_blocking(
        self, session: _Session, address: PointAddress, value: bool
    ) -> tuple[int, tuple[int, int, int], float]:
        """Select (if the model asks for it) and operate; returns the control model, the
        LastApplError seen before (to tell a fresh CommandTermination- from an old one) and
        the monotonic time the first request went to the transport."""
        sent_monotonic = self._clock.monotonic()
        ctl = self._control_object(session, address)
        model = lib.ControlObjectClient_getControlModel(ctl)
        before = lib.ControlObjectClient_getLastApplError(ctl)
        snapshot = (before.ctlNum, before.error, before.addCause)
        ctl_val = lib.MmsValue_newBoolean(bool(value))
        try:
            if model == c.CDC_CTL_MODEL_SBO_ENHANCED:
                if not lib.ControlObjectClient_selectWithValue(ctl, ctl_val):
                    raise self._refusal(ctl, "select")
            elif model == c.CDC_CTL_MODEL_SBO_NORMAL:
                if not lib.ControlObjectClient_select(ctl):
                    raise self._refusal(ctl, "select")
            elif model == c.CDC_CTL_MODEL_NONE:
                raise _Refused(f"{address.point.reference} is status-only (ctlModel 0)")
            if not lib.ControlObjectClient_operate(ctl, ctl_val, 0):
                raise self._refusal(ctl, "operate")
        finally:
            lib.MmsValue_delete(ctl_val)
        return model, snapshot, sent_monotonic

    # ------------------------------------------------------------------ loop side

    async def _poll_forever(self) -> None:
        next_poll = self._clock.monotonic() + self.poll_phase * self._period
        while not self._closing:
            now = self._clock.monotonic()
            if now >= next_poll:
                missed = int((now - next_poll) / self._period)
                if missed:
                    self.status.extra["skipped_cycles"] = self.status.extra.get("skipped_cycles", 0) + missed
                next_poll += (missed + 1) * self._period
                await self._poll_once()
                continue
            await self._sleep(next_poll - now)

    async def _poll_once(self) -> None:
        session = self._session
        if session is None:
            raise _LinkDown("no session")
        self.status.last_poll_time = self._clock.wall()
        self.status.polls += 1
        try:
            decoded = await self._call(self._poll_blocking, session)
        except _LinkDown:
            self.status.poll_errors += 1
            raise
        self._mark_ok()
        if decoded:
            self._sink(self._updates(decoded))

    def _updates(self, decoded: Sequence[tuple[str, Any, Quality, float | None]]) -> list[PointUpdate]:
        mono, wall = self._clock.monotonic(), self._clock.wall()
        return [
            PointUpdate(
                point_id=pid,
                value=value,
                quality=quality,
                source_time=source_time,
                receive_monotonic=mono,
                receive_time=wall,
            )
            for pid, value, quality, source_time in decoded
        ]

    def _apply_report(self, generation: int, decoded: list[tuple[str, Any, Quality, float | None]]) -> None:
        if generation != self._link_generation or self._closing:
            return  # a late report of a dropped association
        self.status.extra["reports"] += 1
        self._mark_ok()
        self._sink(self._updates(decoded))

    def _terminated(self, point_id: str, appl: tuple[int, int, int]) -> None:
        future = self._terminations.get(point_id)
        if future is not None and not future.done():
            future.set_result(appl)

    async def _write_loop(self) -> None:
        assert self._online is not None
        while True:
            await self._writes.wakeup.wait()
            await self._online.wait()  # a protection write queued while connecting waits here
            while (item := self._writes.pop()) is not None:
                if item.future.done():
                    continue
                try:
                    sent_monotonic = await self._operate(item.point_id, bool(item.value))
                except CommandError as exc:
                    self.status.write_errors += 1
                    self.status.last_error = str(exc)
                    if not item.future.done():
                        item.future.set_exception(exc)
                    continue
                self.status.writes += 1
                if not item.future.done():
                    item.future.set_result(sent_monotonic)

    async def _operate(self, point_id: str, value: bool) -> float:
        session = self._session
        if session is None or self.status.state is not LinkState.ONLINE:
            raise CommandError(f"{self.ied_id} is {self.status.state.value}")
        address = self._addresses[point_id]
        assert self._loop is not None
        termination: asyncio.Future[tuple[int, int, int]] = self._loop.create_future()
        self._terminations[point_id] = termination
        try:
            try:
                model, before, sent_monotonic = await self._call(self._operate_blocking, session, address, value)
            except _Refused as exc:
                raise CommandError(f"{self.ied_id}: {point_id} {exc}") from None
            except _LinkDown as exc:
                raise CommandError(f"{self.ied_id}: {point_id} not operated, link down: {exc}") from None
            if model in (c.CDC_CTL_MODEL_SBO_ENHANCED, c.CDC_CTL_MODEL_DIRECT_ENHANCED):
                try:
                    appl = await asyncio.wait_for(termination, timeout=max(self._timeout, 1.0) * 5)
                except TimeoutError:
                    raise CommandError(f"{self.ied_id}: {point_id} operated, no CommandTermination") from None
                except _LinkDown as exc:
                    raise CommandError(f"{self.ied_id}: {point_id} {exc}") from None
                if appl != before and appl[1] != 0:
                    cause = c.add_cause_name(appl[2])
                    error = c.LAST_APPL_ERROR_NAMES.get(appl[1], str(appl[1]))
                    raise CommandError(
                        f"{self.ied_id}: {point_id} ended negative (CommandTermination-): "
                        f"{cause} (AddCause {appl[2]}), {error}"
                    )
        finally:
            self._terminations.pop(point_id, None)
        self._log.info("operated", extra={"ied": self.ied_id, "point": point_id, "value": value})
        return sent_monotonic

    def _link_lost(self, why: str) -> None:
        if self._online is not None:
            self._online.clear()
        super()._link_lost(why)
