"""IEC 60870-5-104 outstation: lib60870-C's server (the stack in the `c104` wheel) wired to the
process image and the switching authority.

lib60870 runs the TCP server, one thread per master connection, the APCI (k, w, t0-t3, STARTDT/
STOPDT, TESTFR, sequence numbers), redundancy groups, event queues and TLS. This adapter:

- answers GI and counter interrogation with a snapshot of the image taken on the event loop,
  sent from the connection's own thread (the high-priority queue holds a whole GI);
- queues spontaneous changes (`gateway.iec104.Reporter` decides) from the event loop;
- hands each command to `gateway.iec104.CommandHandler` on the event loop and waits for its
  answer (at most `command_timeout_s`), then confirms it positively or negatively;
- confirms or refuses clock synchronisation by setting, and logs it.

A connection thread never sends for another connection; the event loop never waits on lib60870.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.contract.clock import Clock
from gateway.contract.settings import Iec104Config
from gateway.iec104 import (
    QCC_GENERAL,
    QOI_STATION,
    CommandHandler,
    CommandRequest,
    Cot,
    PointMap,
    Reporter,
    Sample,
    TypeId,
    clock_sync,
    group_samples,
    objects_per_asdu,
)
from gateway.contract.points import Point, PointUpdate, ProcessImage
from protocols import _lib60870_ffi as c

RETURN_INFO_WINDOW_S = 15.0
LOW_PRIORITY_QUEUE = 10_000
"""Spontaneous ASDUs a redundancy group's queue holds while no master is active."""
MAX_GROUP = 10_000_000
"""Samples of one type and cause in a row, before they are split into ASDUs."""
HIGH_PRIORITY_QUEUE = 2_048
"""ASDUs one connection can have waiting beyond its k window: a GI of 10,000 short floats is 625."""


class Iec104Outstation:
    def __init__(
        self,
        cfg: Iec104Config,
        point_map: PointMap,
        image: ProcessImage,
        commands: CommandHandler,
        reporter: Reporter,
        clock: Clock,
        log: logging.Logger,
        *,
        base_dir: Path = Path("."),
    ) -> None:
        self.cfg = cfg
        self.map = point_map
        self.image = image
        self.commands = commands
        self.reporter = reporter
        self.clock = clock
        self.log = log
        self.base_dir = base_dir
        self._lib = c.lib()
        self._ffi = c.ffi
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slave: Any = None
        self._tls: Any = None
        self._callbacks: list[Any] = []
        self._pending: list[Sample] = []
        self._flush_scheduled = False
        self._connections: dict[int, str] = {}
        self._active: set[int] = set()
        self._lock = threading.Lock()
        self.state = "stopped"
        self.last_error = ""
        self.audit: Callable[[float, str, str, dict[str, Any]], Any] | None = None
        """The event log's append (clock synchronisations are written there)."""
        self.counters = {
            "connections": 0,
            "gi": 0,
            "ci": 0,
            "clock_sync": 0,
            "commands": 0,
            "refused": 0,
            "spontaneous": 0,
            "queue_full": 0,
        }

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        lib, ffi = self._lib, self._ffi
        if self.cfg.tls is not None:
            self._tls = self._tls_config()
            self._slave = lib.CS104_Slave_createSecure(LOW_PRIORITY_QUEUE, HIGH_PRIORITY_QUEUE, self._tls)
        else:
            self._slave = lib.CS104_Slave_create(LOW_PRIORITY_QUEUE, HIGH_PRIORITY_QUEUE)
        s = self._slave
        lib.CS104_Slave_setLocalAddress(s, self.cfg.bind.encode())
        lib.CS104_Slave_setLocalPort(s, self.cfg.port)
        lib.CS104_Slave_setMaxOpenConnections(s, self.cfg.max_connections)
        apci = lib.CS104_Slave_getConnectionParameters(s)
        apci.k, apci.w, apci.t0, apci.t1, apci.t2, apci.t3 = (
            self.cfg.k,
            self.cfg.w,
            self.cfg.t0_s,
            self.cfg.t1_s,
            self.cfg.t2_s,
            self.cfg.t3_s,
        )
        if self.cfg.redundancy_groups:
            lib.CS104_Slave_setServerMode(s, c.MODE_MULTIPLE_REDUNDANCY_GROUPS)
            for group in self.cfg.redundancy_groups:
                g = lib.CS104_RedundancyGroup_create(group.name.encode())
                for ip in group.masters:
                    lib.CS104_RedundancyGroup_addAllowedClient(g, ip.encode())
                lib.CS104_Slave_addRedundancyGroup(s, g)
        else:
            lib.CS104_Slave_setServerMode(s, c.MODE_CONNECTION_IS_REDUNDANCY_GROUP)
        cb = self._callback
        lib.CS104_Slave_setConnectionRequestHandler(
            s, cb("CS104_ConnectionRequestHandler", self._on_request, False), ffi.NULL
        )
        lib.CS104_Slave_setConnectionEventHandler(s, cb("CS104_ConnectionEventHandler", self._on_event, None), ffi.NULL)
        lib.CS104_Slave_setInterrogationHandler(s, cb("CS101_InterrogationHandler", self._on_gi, False), ffi.NULL)
        lib.CS104_Slave_setCounterInterrogationHandler(
            s, cb("CS101_CounterInterrogationHandler", self._on_ci, False), ffi.NULL
        )
        lib.CS104_Slave_setClockSyncHandler(s, cb("CS101_ClockSynchronizationHandler", self._on_clock, False), ffi.NULL)
        lib.CS104_Slave_setASDUHandler(s, cb("CS101_ASDUHandler", self._on_asdu, False), ffi.NULL)
        self._al = lib.CS104_Slave_getAppLayerParameters(s)
        await asyncio.to_thread(lib.CS104_Slave_start, s)
        if not lib.CS104_Slave_isRunning(s):
            self.state, self.last_error = "failed", f"cannot listen on {self.cfg.bind}:{self.cfg.port} (in use?)"
            self.log.error("IEC 104 outstation could not start", extra={"bind": self.cfg.bind, "port": self.cfg.port})
            return
        self.state = "listening"
        # only now: lib60870 must not be handed events before its server runs
        self.image.subscribe_all(self._on_point)
        self.log.info(
            "IEC 104 outstation listening",
            extra={
                "bind": self.cfg.bind,
                "port": self.cfg.port,
                "common_address": self.map.common_address,
                "objects": len(self.map.monitored) + len(self.map.commands),
                "tls": self.cfg.tls is not None,
            },
        )

    async def close(self) -> None:
        self.image.unsubscribe_all(self._on_point)
        if self._slave is None:
            return
        slave, self._slave = self._slave, None
        self.state = "stopping"
        await asyncio.to_thread(self._lib.CS104_Slave_stop, slave)
        self._lib.CS104_Slave_destroy(slave)
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        with self._lock:
            masters = sorted(self._connections.values())
            active = sorted(self._connections[k] for k in self._active if k in self._connections)
        return {
            "state": self.state,
            "port": self.cfg.port,
            "common_address": self.map.common_address,
            "masters": masters,
            "active": active,
            "last_error": self.last_error,
            "accepted": self.commands.accepted,
            "refused": self.commands.refused,
            **self.counters,
        }

    def _tls_config(self) -> Any:
        tls = self.cfg.tls
        assert tls is not None
        lib = self._lib
        conf = lib.TLSConfiguration_create()

        def path(p: Path) -> bytes:
            return str(p if p.is_absolute() else self.base_dir / p).encode()

        if not lib.TLSConfiguration_setOwnCertificateFromFile(conf, path(tls.cert_file)):
            raise ValueError(f"iec104.tls.cert_file {tls.cert_file}: not a readable PEM certificate")
        if not lib.TLSConfiguration_setOwnKeyFromFile(conf, path(tls.key_file), self._ffi.NULL):
            raise ValueError(f"iec104.tls.key_file {tls.key_file}: not a readable PEM key")
        if not lib.TLSConfiguration_addCACertificateFromFile(conf, path(tls.ca_file)):
            raise ValueError(f"iec104.tls.ca_file {tls.ca_file}: not a readable PEM certificate")
        lib.TLSConfiguration_setChainValidation(conf, True)
        lib.TLSConfiguration_setAllowOnlyKnownCertificates(conf, False)
        lib.TLSConfiguration_setMinTlsVersion(conf, c.TLS_VERSION_1_2)
        return conf

    def _callback(self, ctype: str, fn: Callable[..., Any], on_error: Any) -> Any:
        """A C callback that never lets an exception reach lib60870's thread (logged, default answer)."""

        def onerror(exc_type: Any, exc: Any, tb: Any) -> None:
            self.log.error("IEC 104 handler failed", exc_info=(exc_type, exc, tb))

        handle = (
            self._ffi.callback(ctype, fn, error=on_error, onerror=onerror)
            if on_error is not None
            else self._ffi.callback(ctype, fn, onerror=onerror)
        )
        self._callbacks.append(handle)
        return handle

    # ------------------------------------------------------------------ the event loop's side

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the event loop and wait for its result (from a lib60870 thread)."""
        assert self._loop is not None
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the waiting thread
                    future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(self.cfg.command_timeout_s)

    def _on_point(self, point: Point, update: PointUpdate) -> None:
        if self._slave is None or self.state != "listening":
            return
        sample = self.reporter.on_update(
            point.point_id,
            update.value,
            update.quality,
            update.source_time if update.source_time is not None else update.receive_time,
            self.clock.monotonic(),
        )
        if sample is None:
            return
        self._pending.append(sample)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Queue the changes gathered in this turn of the loop, packed by type, in order."""
        self._flush_scheduled = False
        samples, self._pending = self._pending, []
        if self._slave is None or self.state != "listening":
            return
        self.counters["spontaneous"] += len(samples)
        for asdu in self._encode(samples):
            self._lib.CS104_Slave_enqueueASDU(self._slave, asdu)
            self._lib.CS101_ASDU_destroy(asdu)

    def expect_return(self, point_id: str) -> None:
        self.reporter.expect_return(point_id, self.clock.monotonic() + RETURN_INFO_WINDOW_S)

    # ------------------------------------------------------------------ encoding

    def _encode(self, samples: Sequence[Sample], cot: Cot | None = None) -> list[Any]:
        lib, ffi = self._lib, self._ffi
        out = []
        ts = ffi.new("struct sCP56Time2a*")
        bcr = ffi.new("struct sBinaryCounterReading*")
        by_type: dict[TypeId, int] = {}
        for group in group_samples(samples, MAX_GROUP):
            first = group[0]
            limit = by_type.setdefault(first.type_id, objects_per_asdu(first.type_id))
            for start in range(0, len(group), limit):
                asdu = lib.CS101_ASDU_create(
                    self._al, False, int(cot or first.cot), 0, self.map.common_address, False, False
                )
                for s in group[start : start + limit]:
                    io = self._object(s, ts, bcr)
                    lib.CS101_ASDU_addInformationObject(asdu, io)
                    lib.InformationObject_destroy(io)
                out.append(asdu)
        return out

    def _object(self, s: Sample, ts: Any, bcr: Any) -> Any:
        lib, null = self._lib, self._ffi.NULL
        if s.type_id.time_tagged:
            if s.time_ms is None:
                lib.CP56Time2a_setFromMsTimestamp(ts, int(self.clock.wall() * 1000))
                lib.CP56Time2a_setInvalid(ts, True)
            else:
                lib.CP56Time2a_setFromMsTimestamp(ts, s.time_ms)
        t = s.type_id
        if t is TypeId.M_ME_TF_1:
            return lib.MeasuredValueShortWithCP56Time2a_create(null, s.ioa, float(s.value), s.qds, ts)
        if t is TypeId.M_ME_NC_1:
            return lib.MeasuredValueShort_create(null, s.ioa, float(s.value), s.qds)
        if t is TypeId.M_DP_TB_1:
            return lib.DoublePointWithCP56Time2a_create(null, s.ioa, int(s.value), s.qds, ts)
        if t is TypeId.M_DP_NA_1:
            return lib.DoublePointInformation_create(null, s.ioa, int(s.value), s.qds)
        if t is TypeId.M_SP_TB_1:
            return lib.SinglePointWithCP56Time2a_create(null, s.ioa, bool(s.value), s.qds, ts)
        if t is TypeId.M_SP_NA_1:
            return lib.SinglePointInformation_create(null, s.ioa, bool(s.value), s.qds)
        value = int(s.value)
        value = value - (1 << 32) if value >= (1 << 31) else value
        lib.BinaryCounterReading_create(bcr, value, 0, False, False, bool(s.qds & 0x80))
        if t is TypeId.M_IT_TB_1:
            return lib.IntegratedTotalsWithCP56Time2a_create(null, s.ioa, bcr, ts)
        return lib.IntegratedTotals_create(null, s.ioa, bcr)

    # ------------------------------------------------------------------ lib60870's threads

    def _peer(self, connection: Any) -> str:
        buf = self._ffi.new("char[64]")
        self._lib.IMasterConnection_getPeerAddress(connection, buf, 64)
        text = str(self._ffi.string(buf).decode(errors="replace"))
        return text.rsplit(":", 1)[0].strip("[]") if ":" in text else text

    def _on_request(self, _param: Any, address: Any) -> bool:
        text = self._ffi.string(address).decode(errors="replace")
        ip = text.rsplit(":", 1)[0].strip("[]")
        allowed = not self.cfg.masters or ip in self.cfg.masters
        if not allowed:
            self.log.warning("IEC 104 connection refused: not a configured master", extra={"peer": text})
        return allowed

    def _on_event(self, _param: Any, connection: Any, event: int) -> None:
        key = int(self._ffi.cast("uintptr_t", connection))
        peer = self._peer(connection)
        with self._lock:
            if event == c.CON_OPENED:
                self._connections[key] = peer
                self.counters["connections"] += 1
            elif event == c.CON_CLOSED:
                self._connections.pop(key, None)
                self._active.discard(key)
            elif event == c.CON_ACTIVATED:
                self._active.add(key)
            elif event == c.CON_DEACTIVATED:
                self._active.discard(key)
        what = {
            c.CON_OPENED: "opened",
            c.CON_CLOSED: "closed",
            c.CON_ACTIVATED: "started (STARTDT)",
            c.CON_DEACTIVATED: "stopped (STOPDT)",
        }.get(event, str(event))
        self.log.info(f"IEC 104 master connection {what}", extra={"peer": peer})
        if event == c.CON_CLOSED and self._loop is not None:
            self._loop.call_soon_threadsafe(self.commands.forget, peer)

    def _send_all(self, connection: Any, asdus: list[Any]) -> bool:
        ok = True
        for asdu in asdus:
            if ok and not self._lib.IMasterConnection_sendASDU(connection, asdu):
                ok = False
                self.counters["queue_full"] += 1
            self._lib.CS101_ASDU_destroy(asdu)
        return ok

    def _on_gi(self, _param: Any, connection: Any, asdu: Any, qoi: int) -> bool:
        lib = self._lib
        if lib.CS101_ASDU_getCA(asdu) not in (self.map.common_address, 0xFFFF):
            lib.CS101_ASDU_setCOT(asdu, int(Cot.UNKNOWN_CA))
            lib.CS101_ASDU_setNegative(asdu, True)
            lib.IMasterConnection_sendASDU(connection, asdu)
            return True
        if lib.CS101_ASDU_getCOT(asdu) == Cot.DEACTIVATION or qoi != QOI_STATION:
            lib.IMasterConnection_sendACT_CON(connection, asdu, True)  # groups 1-16 and stopping a GI: not supported
            return True
        self.counters["gi"] += 1
        lib.IMasterConnection_sendACT_CON(connection, asdu, False)
        try:
            samples = self._in_loop(lambda: self.reporter.interrogation(self.image.points))
        except Exception as exc:
            self.log.error("IEC 104 general interrogation could not read the image", extra={"error": str(exc)})
            samples = []
        self._send_all(connection, self._encode(samples))
        lib.IMasterConnection_sendACT_TERM(connection, asdu)
        return True

    def _on_ci(self, _param: Any, connection: Any, asdu: Any, qcc: int) -> bool:
        lib = self._lib
        freeze = (qcc >> 6) & 0x03
        if (qcc & 0x3F) != QCC_GENERAL or freeze > 1 or lib.CS101_ASDU_getCOT(asdu) != Cot.ACTIVATION:
            lib.IMasterConnection_sendACT_CON(connection, asdu, True)  # groups, reset: not supported
            return True
        self.counters["ci"] += 1
        lib.IMasterConnection_sendACT_CON(connection, asdu, False)
        try:
            samples = self._in_loop(lambda: self.reporter.interrogation(self.image.points, counters=True))
        except Exception as exc:
            self.log.error("IEC 104 counter interrogation could not read the image", extra={"error": str(exc)})
            samples = []
        self._send_all(connection, self._encode(samples))
        lib.IMasterConnection_sendACT_TERM(connection, asdu)
        return True

    def _on_clock(self, _param: Any, connection: Any, asdu: Any, new_time: Any) -> bool:
        lib = self._lib
        self.counters["clock_sync"] += 1
        master_ms = int(lib.CP56Time2a_toMsTimestamp(new_time))
        reply = clock_sync(self.cfg.clock_sync, master_ms, self.clock.wall())
        peer = self._peer(connection)
        (self.log.info if reply.accepted else self.log.warning)(
            "IEC 104 " + reply.message, extra={"peer": peer, "offset_s": round(reply.offset_s, 3)}
        )
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._audit_clock, peer, reply.accepted, reply.offset_s, reply.message)
        lib.IMasterConnection_sendACT_CON(connection, asdu, not reply.accepted)
        return True

    def _audit_clock(self, peer: str, accepted: bool, offset_s: float, message: str) -> None:
        if self.audit is not None:
            self.audit(
                self.clock.wall(),
                "iec104",
                "iec104.clock_sync",
                {"origin": f"iec104:{peer}", "accepted": accepted, "offset_s": round(offset_s, 3), "message": message},
            )

    def _on_asdu(self, _param: Any, connection: Any, asdu: Any) -> bool:
        lib = self._lib
        type_id = lib.CS101_ASDU_getTypeID(asdu)
        if type_id not in (TypeId.C_DC_NA_1, TypeId.C_DC_TA_1, TypeId.C_SE_NC_1, TypeId.C_SE_TC_1):
            return False  # lib60870 answers: unknown type identification
        self.counters["commands"] += 1
        if lib.CS101_ASDU_getNumberOfElements(asdu) != 1:
            lib.IMasterConnection_sendACT_CON(connection, asdu, True)
            return True
        io = lib.CS101_ASDU_getElement(asdu, 0)
        value: float | int
        time_ms: int | None = None
        try:
            ioa = lib.InformationObject_getObjectAddress(io)
            if type_id in (TypeId.C_DC_NA_1, TypeId.C_DC_TA_1):
                select, value = bool(lib.DoubleCommand_isSelect(io)), int(lib.DoubleCommand_getState(io))
            else:
                select, value = (
                    bool(lib.SetpointCommandShort_isSelect(io)),
                    float(lib.SetpointCommandShort_getValue(io)),
                )
            if type_id in (TypeId.C_DC_TA_1, TypeId.C_SE_TC_1):
                tag = (
                    lib.DoubleCommandWithCP56Time2a_getTimestamp(io)
                    if type_id == TypeId.C_DC_TA_1
                    else lib.SetpointCommandShortWithCP56Time2a_getTimestamp(io)
                )
                if not lib.CP56Time2a_isInvalid(tag):
                    time_ms = int(lib.CP56Time2a_toMsTimestamp(tag))
        finally:
            lib.InformationObject_destroy(io)
        request = CommandRequest(
            type_id=type_id,
            cot=lib.CS101_ASDU_getCOT(asdu),
            common_address=lib.CS101_ASDU_getCA(asdu),
            ioa=ioa,
            select=select,
            value=value,
            master=self._peer(connection),
            test=bool(lib.CS101_ASDU_isTest(asdu)),
            time_ms=time_ms,
        )
        try:
            reply = self._in_loop(lambda: self.commands.handle(request, self.clock.wall()))
        except Exception as exc:
            self.counters["refused"] += 1
            self.log.error("IEC 104 command not answered in time: refused", extra={"ioa": ioa, "error": str(exc)})
            lib.IMasterConnection_sendACT_CON(connection, asdu, True)
            return True
        if reply.negative:
            self.counters["refused"] += 1
        (self.log.warning if reply.negative else self.log.info)(
            "IEC 104 command " + ("refused" if reply.negative else "confirmed"),
            extra={
                "peer": request.master,
                "ioa": ioa,
                "type": type_id,
                "select": select,
                "cot": int(reply.cot),
                "interlock": reply.refusal.interlock if reply.refusal is not None else None,
                "detail": reply.message,
            },
        )
        if reply.cot in (Cot.ACTIVATION_CON, Cot.DEACTIVATION_CON):
            lib.CS101_ASDU_setCOT(asdu, int(reply.cot))
            lib.CS101_ASDU_setNegative(asdu, reply.negative)
            lib.IMasterConnection_sendASDU(connection, asdu)
            if reply.terminate:
                lib.IMasterConnection_sendACT_TERM(connection, asdu)
        else:
            lib.CS101_ASDU_setCOT(asdu, int(reply.cot))
            lib.CS101_ASDU_setNegative(asdu, True)
            lib.IMasterConnection_sendASDU(connection, asdu)
        return True
