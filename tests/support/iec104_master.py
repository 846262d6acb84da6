"""A small IEC 60870-5-104 master (controlling station) written from the standard, for tests.

It shares no code with the outstation's library: APCI framing (IEC 60870-5-104 §5), the ASDU
header and the information elements it needs (IEC 60870-5-101 §7.2-7.3, 104 §9) are decoded
here byte by byte. It runs over a plain blocking socket, acknowledges what it receives
(S-frames), answers TESTFR, and keeps every received ASDU in order for the test to inspect.

Only what the tests need: GI, counter interrogation, clock sync, double commands with and
without time tag (select and execute), short-float set-points, and the monitoring types the
gateway sends (single/double points, short floats, integrated totals, with and without time).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

START = 0x68
STARTDT_ACT, STARTDT_CON = 0x07, 0x0B
STOPDT_ACT, STOPDT_CON = 0x13, 0x23
TESTFR_ACT, TESTFR_CON = 0x43, 0x83

# type identifications (101 §7.2.1.1)
M_SP_NA_1, M_DP_NA_1, M_ME_NA_1, M_ME_NC_1, M_IT_NA_1 = 1, 3, 9, 13, 15
M_SP_TB_1, M_DP_TB_1, M_ME_TF_1, M_IT_TB_1 = 30, 31, 36, 37
C_SC_NA_1, C_DC_NA_1, C_SE_NC_1 = 45, 46, 50
C_DC_TA_1, C_SE_TC_1 = 59, 63
M_EI_NA_1 = 70
C_IC_NA_1, C_CI_NA_1, C_CS_NA_1 = 100, 101, 103

# causes of transmission (101 §7.2.3)
COT_PERIODIC, COT_SPONTANEOUS, COT_INITIALISED, COT_REQUEST = 1, 3, 4, 5
COT_ACT, COT_ACT_CON, COT_DEACT, COT_DEACT_CON, COT_ACT_TERM = 6, 7, 8, 9, 10
COT_RETURN_REMOTE, COT_RETURN_LOCAL = 11, 12
COT_INROGEN, COT_REQCOGEN = 20, 37
COT_UNKNOWN_TYPE, COT_UNKNOWN_COT, COT_UNKNOWN_CA, COT_UNKNOWN_IOA = 44, 45, 46, 47

# double point / command states (101 §7.2.6.2, §7.2.6.16)
DP_INTERMEDIATE, DP_OFF, DP_ON, DP_INDETERMINATE = 0, 1, 2, 3


def cp56_encode(when: dt.datetime) -> bytes:
    """CP56Time2a (101 §7.2.6.18): ms of the minute, minute, hour, day + day of week, month, year."""
    ms = when.second * 1000 + when.microsecond // 1000
    return struct.pack(
        "<HBBBBB",
        ms,
        when.minute & 0x3F,
        when.hour & 0x1F,
        (when.day & 0x1F) | ((when.isoweekday() & 0x07) << 5),
        when.month & 0x0F,
        when.year % 100,
    )


def cp56_decode(raw: bytes) -> tuple[dt.datetime, bool]:
    """(time, invalid flag) of a CP56Time2a; the century is taken as 2000."""
    ms, minute, hour, day, month, year = struct.unpack("<HBBBBB", raw)
    invalid = bool(minute & 0x80)
    when = dt.datetime(
        2000 + (year & 0x7F), month & 0x0F, day & 0x1F, hour & 0x1F, minute & 0x3F, ms // 1000, (ms % 1000) * 1000
    )
    return when, invalid


@dataclass
class InfoObject:
    ioa: int
    value: Any
    quality: int = 0
    """The quality descriptor's bits as sent (IV 0x80, NT 0x40, SB 0x20, BL 0x10, OV 0x01)."""
    time: dt.datetime | None = None
    select: bool | None = None
    """Commands: the S/E bit (True: select, False: execute)."""
    qualifier: int | None = None


@dataclass
class Asdu:
    type_id: int
    sequence: bool
    cot: int
    negative: bool
    test: bool
    originator: int
    common_address: int
    objects: list[InfoObject] = field(default_factory=list)
    received_monotonic: float = 0.0

    def __repr__(self) -> str:
        sign = "-" if self.negative else "+"
        return (
            f"<Asdu type {self.type_id} cot {self.cot}{sign} ca {self.common_address} "
            f"{[(o.ioa, o.value) for o in self.objects][:6]}>"
        )


class ProtocolError(Exception):
    pass


_ELEMENT_SIZE = {
    M_SP_NA_1: 1,
    M_DP_NA_1: 1,
    M_ME_NA_1: 3,
    M_ME_NC_1: 5,
    M_IT_NA_1: 5,
    M_SP_TB_1: 8,
    M_DP_TB_1: 8,
    M_ME_TF_1: 12,
    M_IT_TB_1: 12,
    C_SC_NA_1: 1,
    C_DC_NA_1: 1,
    C_SE_NC_1: 5,
    C_DC_TA_1: 8,
    C_SE_TC_1: 12,
    M_EI_NA_1: 1,
    C_IC_NA_1: 1,
    C_CI_NA_1: 1,
    C_CS_NA_1: 7,
}


def _element(type_id: int, raw: bytes) -> InfoObject:
    obj = InfoObject(ioa=0, value=None)
    if type_id in (M_SP_NA_1, M_SP_TB_1):
        obj.value, obj.quality = bool(raw[0] & 0x01), raw[0] & 0xF0
    elif type_id in (M_DP_NA_1, M_DP_TB_1):
        obj.value, obj.quality = raw[0] & 0x03, raw[0] & 0xF0
    elif type_id in (M_ME_NC_1, M_ME_TF_1):
        obj.value, obj.quality = struct.unpack("<f", raw[:4])[0], raw[4]
    elif type_id == M_ME_NA_1:
        obj.value, obj.quality = struct.unpack("<h", raw[:2])[0] / 32768.0, raw[2]
    elif type_id in (M_IT_NA_1, M_IT_TB_1):
        obj.value, obj.quality = struct.unpack("<i", raw[:4])[0], raw[4] & 0xE0  # IV CA CY | SQ
    elif type_id in (C_DC_NA_1, C_DC_TA_1):
        obj.value, obj.select, obj.qualifier = raw[0] & 0x03, bool(raw[0] & 0x80), (raw[0] >> 2) & 0x1F
    elif type_id == C_SC_NA_1:
        obj.value, obj.select = bool(raw[0] & 0x01), bool(raw[0] & 0x80)
    elif type_id in (C_SE_NC_1, C_SE_TC_1):
        obj.value, obj.select, obj.qualifier = struct.unpack("<f", raw[:4])[0], bool(raw[4] & 0x80), raw[4] & 0x7F
    elif type_id in (C_IC_NA_1, C_CI_NA_1, M_EI_NA_1):
        obj.value = raw[0]
    elif type_id == C_CS_NA_1:
        obj.value = cp56_decode(raw[:7])[0]
    if type_id in (M_SP_TB_1, M_DP_TB_1, M_ME_TF_1, M_IT_TB_1, C_DC_TA_1, C_SE_TC_1):
        obj.time = cp56_decode(raw[-7:])[0]
    return obj


def decode_asdu(raw: bytes) -> Asdu:
    """An ASDU with 1-octet type, 1-octet VSQ, 2-octet COT, 2-octet CA and 3-octet IOA (104 §9)."""
    if len(raw) < 6:
        raise ProtocolError(f"ASDU of {len(raw)} bytes is shorter than its header")
    type_id, vsq, cot_byte, originator = raw[0], raw[1], raw[2], raw[3]
    common_address = raw[4] | (raw[5] << 8)
    asdu = Asdu(
        type_id=type_id,
        sequence=bool(vsq & 0x80),
        cot=cot_byte & 0x3F,
        negative=bool(cot_byte & 0x40),
        test=bool(cot_byte & 0x80),
        originator=originator,
        common_address=common_address,
    )
    count = vsq & 0x7F
    size = _ELEMENT_SIZE.get(type_id)
    if size is None:
        raise ProtocolError(f"type {type_id} is not one this master decodes")
    pos = 6
    base_ioa = 0
    for n in range(count):
        if not asdu.sequence or n == 0:
            if pos + 3 > len(raw):
                raise ProtocolError("ASDU ends inside an information object address")
            base_ioa = raw[pos] | (raw[pos + 1] << 8) | (raw[pos + 2] << 16)
            pos += 3
            ioa = base_ioa
        else:
            ioa = base_ioa + n
        if pos + size > len(raw):
            raise ProtocolError(f"ASDU type {type_id} ends inside object {n}")
        obj = _element(type_id, raw[pos : pos + size])
        obj.ioa = ioa
        asdu.objects.append(obj)
        pos += size
    if pos != len(raw):
        raise ProtocolError(f"ASDU type {type_id}: {len(raw) - pos} bytes left after {count} objects")
    return asdu


def encode_asdu(
    type_id: int,
    cot: int,
    common_address: int,
    ioa: int,
    element: bytes,
    *,
    originator: int = 0,
    negative: bool = False,
    test: bool = False,
) -> bytes:
    cot_byte = cot | (0x40 if negative else 0) | (0x80 if test else 0)
    return (
        bytes([type_id, 0x01, cot_byte, originator])
        + struct.pack("<H", common_address)
        + ioa.to_bytes(3, "little")
        + element
    )


class Master:
    """One connection to an outstation. Receives on a thread; the test waits on `wait_for`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        originator: int = 0,
        common_address: int = 1,
        timeout_s: float = 10.0,
        w: int = 8,
        source: str | None = None,
        ssl_context: Any = None,
    ) -> None:
        self.host, self.port = host, port
        self.source = source
        self.ssl_context = ssl_context
        self.originator = originator
        self.common_address = common_address
        self.timeout_s = timeout_s
        self.w = w
        self.received: list[Asdu] = []
        self.u_frames: list[int] = []
        self._send_seq = 0
        self._recv_seq = 0
        self._unacked = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.closed = threading.Event()
        self.error: str | None = None

    # ------------------------------------------------------------------ connection

    def connect(self, *, start: bool = True) -> Master:
        self._sock = socket.create_connection(
            (self.host, self.port), timeout=self.timeout_s, source_address=(self.source, 0) if self.source else None
        )
        if self.ssl_context is not None:
            self._sock = self.ssl_context.wrap_socket(self._sock, server_hostname=self.host)
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._reader, name="iec104-master", daemon=True)
        self._thread.start()
        if start:
            self._send_u(STARTDT_ACT)
            self.wait_u(STARTDT_CON)
        return self

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Master:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send_u(self, code: int) -> None:
        assert self._sock is not None
        self._sock.sendall(bytes([START, 4, code, 0, 0, 0]))

    def _send_s(self) -> None:
        assert self._sock is not None
        self._sock.sendall(bytes([START, 4, 0x01, 0]) + struct.pack("<H", self._recv_seq << 1))
        self._unacked = 0

    def send_asdu(self, asdu: bytes) -> None:
        assert self._sock is not None
        with self._lock:
            apci = struct.pack("<BBHH", START, len(asdu) + 4, self._send_seq << 1, self._recv_seq << 1)
            self._send_seq = (self._send_seq + 1) % 32768
            self._unacked = 0
            self._sock.sendall(apci + asdu)

    def _read_exact(self, n: int) -> bytes:
        assert self._sock is not None
        out = b""
        while len(out) < n:
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the outstation closed the connection")
            out += chunk
        return out

    def _reader(self) -> None:
        try:
            while True:
                head = self._read_exact(2)
                if head[0] != START:
                    raise ProtocolError(f"APDU starts with {head[0]:#x}, expected 0x68")
                length = head[1]
                if not 4 <= length <= 253:
                    raise ProtocolError(f"APDU length {length} outside 4..253")
                body = self._read_exact(length)
                now = time.monotonic()
                control = body[:4]
                if control[0] & 0x01 == 0:  # I-format
                    send_seq = struct.unpack("<H", control[:2])[0] >> 1
                    asdu = decode_asdu(body[4:])
                    asdu.received_monotonic = now
                    with self._cond:
                        if send_seq != self._recv_seq:
                            raise ProtocolError(f"I-frame N(S) {send_seq}, expected {self._recv_seq}")
                        self._recv_seq = (self._recv_seq + 1) % 32768
                        self._unacked += 1
                        self.received.append(asdu)
                        if self._unacked >= self.w:
                            self._send_s()
                        self._cond.notify_all()
                elif control[0] & 0x03 == 0x01:  # S-format
                    continue
                else:  # U-format
                    code = control[0]
                    if code == TESTFR_ACT:
                        self._send_u(TESTFR_CON)
                    with self._cond:
                        self.u_frames.append(code)
                        self._cond.notify_all()
        except (OSError, ConnectionError, ProtocolError) as exc:
            with self._cond:
                self.error = str(exc)
                self._cond.notify_all()
        finally:
            self.closed.set()

    # ------------------------------------------------------------------ waiting

    def ack(self) -> None:
        """Acknowledge everything received so far (an S-frame)."""
        with self._lock:
            self._send_s()

    def wait_u(self, code: int, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        with self._cond:
            while code not in self.u_frames:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    raise TimeoutError(f"no U-frame {code:#x} ({self.error or 'timeout'})")
                self._cond.wait(left)
            self.u_frames.remove(code)

    def wait_for(self, predicate: Any, what: str, timeout_s: float | None = None, start: int = 0) -> Asdu:
        """The first received ASDU (from index `start`) for which `predicate` holds."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        with self._cond:
            while True:
                for asdu in self.received[start:]:
                    if predicate(asdu):
                        return asdu
                left = deadline - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    raise TimeoutError(
                        f"timed out waiting for {what} ({self.error or 'no such ASDU'}); received {self.received[-8:]}"
                    )
                self._cond.wait(left)

    def mark(self) -> int:
        with self._lock:
            return len(self.received)

    def since(self, mark: int) -> list[Asdu]:
        with self._lock:
            return list(self.received[mark:])

    # ------------------------------------------------------------------ requests

    def _ca(self, common_address: int | None) -> int:
        return self.common_address if common_address is None else common_address

    def interrogate(
        self, common_address: int | None = None, qoi: int = 20, timeout_s: float | None = None
    ) -> list[Asdu]:
        """General interrogation: every ASDU between the confirmation and the termination."""
        ca = self._ca(common_address)
        mark = self.mark()
        self.send_asdu(encode_asdu(C_IC_NA_1, COT_ACT, ca, 0, bytes([qoi]), originator=self.originator))
        con = self.wait_for(
            lambda a: a.type_id == C_IC_NA_1 and a.cot == COT_ACT_CON, "GI confirmation", timeout_s, start=mark
        )
        if con.negative:
            return [con]
        end = self.wait_for(
            lambda a: a.type_id == C_IC_NA_1 and a.cot == COT_ACT_TERM, "GI termination", timeout_s, start=mark
        )
        got = self.since(mark)
        first, last = got.index(con), got.index(end)
        return [a for a in got[first + 1 : last] if a.cot == qoi]

    def counter_interrogate(
        self, common_address: int | None = None, qcc: int = 5, timeout_s: float | None = None
    ) -> list[Asdu]:
        ca = self._ca(common_address)
        mark = self.mark()
        self.send_asdu(encode_asdu(C_CI_NA_1, COT_ACT, ca, 0, bytes([qcc]), originator=self.originator))
        con = self.wait_for(
            lambda a: a.type_id == C_CI_NA_1 and a.cot == COT_ACT_CON, "CI confirmation", timeout_s, start=mark
        )
        if con.negative:
            return [con]
        self.wait_for(
            lambda a: a.type_id == C_CI_NA_1 and a.cot == COT_ACT_TERM, "CI termination", timeout_s, start=mark
        )
        return [a for a in self.since(mark) if a.cot == COT_REQCOGEN]

    def clock_sync(self, when: dt.datetime, common_address: int | None = None) -> Asdu:
        ca = self._ca(common_address)
        mark = self.mark()
        self.send_asdu(encode_asdu(C_CS_NA_1, COT_ACT, ca, 0, cp56_encode(when), originator=self.originator))
        return self.wait_for(
            lambda a: a.type_id == C_CS_NA_1 and a.cot in (COT_ACT_CON, COT_UNKNOWN_CA),
            "clock sync confirmation",
            start=mark,
        )

    def double_command(
        self,
        ioa: int,
        state: int,
        *,
        select: bool,
        time_tag: dt.datetime | None = None,
        qualifier: int = 0,
        common_address: int | None = None,
    ) -> Asdu:
        """A double command (C_DC_NA_1, or C_DC_TA_1 with `time_tag`); the confirmation."""
        ca = self._ca(common_address)
        dco = (state & 0x03) | ((qualifier & 0x1F) << 2) | (0x80 if select else 0)
        type_id = C_DC_NA_1 if time_tag is None else C_DC_TA_1
        element = bytes([dco]) + (b"" if time_tag is None else cp56_encode(time_tag))
        mark = self.mark()
        self.send_asdu(encode_asdu(type_id, COT_ACT, ca, ioa, element, originator=self.originator))
        return self.wait_for(
            lambda a: (
                a.type_id == type_id
                and a.objects
                and a.objects[0].ioa == ioa
                and a.cot in (COT_ACT_CON, COT_UNKNOWN_IOA, COT_UNKNOWN_CA, COT_UNKNOWN_TYPE)
            ),
            f"confirmation of the double command to IOA {ioa}",
            start=mark,
        )

    def setpoint(
        self,
        ioa: int,
        value: float,
        *,
        select: bool = False,
        time_tag: dt.datetime | None = None,
        common_address: int | None = None,
    ) -> Asdu:
        ca = self._ca(common_address)
        qos = 0x80 if select else 0
        type_id = C_SE_NC_1 if time_tag is None else C_SE_TC_1
        element = struct.pack("<fB", value, qos) + (b"" if time_tag is None else cp56_encode(time_tag))
        mark = self.mark()
        self.send_asdu(encode_asdu(type_id, COT_ACT, ca, ioa, element, originator=self.originator))
        return self.wait_for(
            lambda a: (
                a.type_id == type_id
                and a.objects
                and a.objects[0].ioa == ioa
                and a.cot in (COT_ACT_CON, COT_UNKNOWN_IOA, COT_UNKNOWN_CA, COT_UNKNOWN_TYPE)
            ),
            f"confirmation of the set-point to IOA {ioa}",
            start=mark,
        )
