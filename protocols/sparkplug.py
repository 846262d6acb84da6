"""Sparkplug B 3.0 on the wire: topics, the protobuf payload, and the gateway's messages as
NBIRTH/DBIRTH/NDATA/DDATA/NDEATH.

`uplink.payload = "sparkplug_b"` makes the uplink publish through `SparkplugCodec` instead of
msgpack: the edge node is the substation (`spBv1.0/<group>/…/<edge node>`), each IED is a
device whose metrics are its points, and the gateway's own records (events, alarms, states,
notices, switching, faults, command results) are node metrics holding their JSON text.

The Payload protobuf (sparkplug_b.proto, Eclipse Tahu) is encoded here by hand: it is small
and stable, and this keeps the payload's bytes in one readable place. Only what the gateway
sends and the NCMD it reads are covered. Sans-IO: the uplink calls it when it sends.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"

# Sparkplug B data types (the spec's DataType enum)
INT32, INT64, UINT64, FLOAT, DOUBLE, BOOLEAN, STRING = 3, 4, 8, 9, 10, 11, 12
# the Sparkplug 3.0 quality property's values
QUALITY_BAD, QUALITY_GOOD, QUALITY_STALE = 0, 192, 500

NODE_RECORDS: Mapping[str, str] = {
    "events": "Events",
    "alarms": "Alarms",
    "alarms/active": "Alarms/Active",
    "switching": "Switching",
    "faults": "Faults",
}
"""Topic suffixes of the msgpack namespace → the node metric carrying their JSON."""


# --------------------------------------------------------------------------- protobuf, by hand


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field_no: int, wire_type: int) -> bytes:
    return _varint((field_no << 3) | wire_type)


def _uint(field_no: int, value: int) -> bytes:
    return _key(field_no, 0) + _varint(value)


def _bytes(field_no: int, value: bytes) -> bytes:
    return _key(field_no, 2) + _varint(len(value)) + value


def _double(field_no: int, value: float) -> bytes:
    return _key(field_no, 1) + struct.pack("<d", value)


@dataclass(frozen=True, slots=True)
class SpMetric:
    name: str | None
    datatype: int
    value: Any = None
    """None: is_null."""
    alias: int | None = None
    timestamp: int | None = None
    is_historical: bool = False
    properties: Mapping[str, tuple[int, Any]] = field(default_factory=dict)
    """name → (data type INT32 or STRING, value)."""

    def encode(self) -> bytes:
        out = b""
        if self.name is not None:
            out += _bytes(1, self.name.encode("utf-8"))
        if self.alias is not None:
            out += _uint(2, self.alias)
        if self.timestamp is not None:
            out += _uint(3, self.timestamp)
        out += _uint(4, self.datatype)
        if self.is_historical:
            out += _uint(5, 1)
        if self.properties:
            out += _bytes(9, _property_set(self.properties))
        if self.value is None:
            return out + _uint(7, 1)
        return out + _value(self.datatype, self.value, (10, 11, 13, 14, 15))


def _value(datatype: int, value: Any, fields: tuple[int, int, int, int, int]) -> bytes:
    int_f, long_f, double_f, bool_f, string_f = fields
    if datatype == BOOLEAN:
        return _uint(bool_f, 1 if value else 0)
    if datatype == DOUBLE:
        return _double(double_f, float(value))
    if datatype in (INT64, UINT64):
        return _uint(long_f, int(value))
    if datatype == INT32:
        return _uint(int_f, int(value) & 0xFFFFFFFF)
    return _bytes(string_f, str(value).encode("utf-8"))


def _property_set(props: Mapping[str, tuple[int, Any]]) -> bytes:
    keys = b"".join(_bytes(1, k.encode("utf-8")) for k in props)
    values = b"".join(_bytes(2, _uint(1, t) + _value(t, v, (3, 4, 6, 7, 8))) for t, v in props.values())
    return keys + values


def encode_payload(timestamp_ms: int, metrics: Sequence[SpMetric], seq: int | None) -> bytes:
    out = _uint(1, timestamp_ms) + b"".join(_bytes(2, m.encode()) for m in metrics)
    if seq is not None:
        out += _uint(3, seq)
    return out


def _fields(raw: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; ValueError when it is not one."""
    pos = 0
    while pos < len(raw):
        key, pos = _read_varint(raw, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _read_varint(raw, pos)
        elif wire == 1:
            value, pos = raw[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(raw, pos)
            value, pos = raw[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = raw[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} not expected")
        if pos > len(raw):
            raise ValueError("protobuf message ends inside a field")
        yield number, wire, value


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise ValueError("protobuf varint truncated")
        b = raw[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def decode_metrics(raw: bytes) -> list[tuple[str | None, int | None, Any]]:
    """(name, alias, value) of a payload's metrics (booleans, integers, strings): for NCMD."""
    out = []
    for number, wire, value in _fields(raw):
        if number != 2 or wire != 2:
            continue
        name, alias, val = None, None, None
        for n, w, v in _fields(value):
            if n == 1 and w == 2:
                name = v.decode("utf-8", errors="replace")
            elif n == 2 and w == 0:
                alias = v
            elif n in (10, 11) and w == 0:
                val = v
            elif n == 14 and w == 0:
                val = bool(v)
            elif n == 15 and w == 2:
                val = v.decode("utf-8", errors="replace")
        out.append((name, alias, val))
    return out


# --------------------------------------------------------------------------- the gateway's messages


def _datatype(kind: str) -> int:
    return {"analog": DOUBLE, "binary": BOOLEAN, "counter": INT64}.get(kind, DOUBLE)


def _quality(q: str | None) -> int:
    return {"good": QUALITY_GOOD, "questionable": QUALITY_STALE}.get(q or "good", QUALITY_BAD)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=lambda o: o.hex() if isinstance(o, bytes) else repr(o))


@dataclass
class _Point:
    name: str
    device: str
    alias: int
    datatype: int
    unit: str
    value: Any = None
    quality: int = QUALITY_BAD
    time_ms: int | None = None


class SparkplugCodec:
    """The edge node's view of the gateway: its devices and metrics, their last values (for the
    births), and each spooled message as the Sparkplug messages that carry it."""

    def __init__(self, group_id: str, edge_node_id: str) -> None:
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self._points: dict[str, _Point] = {}
        self._by_index: dict[int, _Point] = {}
        """Points by their index `i` in the birth's metric list (columnar telemetry names them so)."""
        self._devices: dict[str, list[_Point]] = {}
        self._node: dict[str, str | None] = {name: None for name in NODE_RECORDS.values()}

    # topics
    def topic(self, message_type: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group_id}/{message_type}/{self.edge_node_id}"
        return base if device is None else f"{base}/{device}"

    @property
    def ncmd_topic(self) -> str:
        return self.topic("NCMD")

    @staticmethod
    def state_topic(host_id: str) -> str:
        return f"{NAMESPACE}/STATE/{host_id}"

    def set_metrics(self, metrics: Sequence[Mapping[str, Any]], node_metrics: Iterable[str] = ()) -> None:
        """The birth's metric list (the msgpack birth's: id, kind, unit, source) and extra node
        metrics (agents' states); aliases follow the list's order."""
        old = self._points
        self._points, self._devices, self._by_index = {}, {}, {}
        for n, m in enumerate(metrics, start=1):
            pid, device = str(m["id"]), str(m.get("source") or "gateway")
            prev = old.get(pid)
            p = _Point(pid, device, n, _datatype(str(m.get("kind", "analog"))), str(m.get("unit", "")))
            if prev is not None and prev.datatype == p.datatype:
                p.value, p.quality, p.time_ms = prev.value, prev.quality, prev.time_ms
            self._points[pid] = p
            self._devices.setdefault(device, []).append(p)
            index = m.get("i")
            if isinstance(index, int) and not isinstance(index, bool):
                self._by_index[index] = p
        for name in node_metrics:
            self._node.setdefault(name, None)

    # births and death
    def death(self, bdseq: int, now_ms: int) -> tuple[str, bytes]:
        return self.topic("NDEATH"), encode_payload(now_ms, [SpMetric(BDSEQ, UINT64, bdseq)], None)

    def births(self, bdseq: int, now_ms: int) -> list[tuple[str, bytes]]:
        """NBIRTH (seq 0) and one DBIRTH per device (seq 1 …), every metric with its last value."""
        node = [SpMetric(BDSEQ, UINT64, bdseq), SpMetric(REBIRTH, BOOLEAN, False)]
        node += [SpMetric(name, STRING, value) for name, value in self._node.items()]
        out = [(self.topic("NBIRTH"), encode_payload(now_ms, node, 0))]
        for seq, (device, points) in enumerate(self._devices.items(), start=1):
            metrics = [
                SpMetric(
                    p.name,
                    p.datatype,
                    p.value,
                    alias=p.alias,
                    timestamp=p.time_ms,
                    properties={"Quality": (INT32, p.quality), "Engineering Units": (STRING, p.unit)},
                )
                for p in points
            ]
            out.append((self.topic("DBIRTH", device), encode_payload(now_ms, metrics, seq % 256)))
        return out

    # data
    def encode_row(
        self, suffix: str, body: bytes, historical: bool, seq: int, now_ms: int
    ) -> tuple[list[tuple[str, bytes]], int]:
        """The Sparkplug messages for one spooled message, and the last `seq` used.

        Telemetry (samples or columns) and integrity samples become DDATA per device (by alias,
        with their time and quality); the gateway's records become NDATA of one String metric
        holding their JSON.
        An empty body (clearing a retained msgpack topic) has nothing to say in Sparkplug."""
        if not body:
            return [], seq
        payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
        stamp = int(payload.get("timestamp", now_ms)) if isinstance(payload, dict) else now_ms
        head = suffix.partition("/")[0]
        out: list[tuple[str, bytes]] = []
        if head in ("telemetry", "integrity"):
            by_device: dict[str, list[SpMetric]] = {}
            for p, sample in self._samples(payload):
                value = sample.get("v")
                if isinstance(value, float) and not math.isfinite(value):
                    value = None
                if value is not None and p.datatype == BOOLEAN:
                    value = bool(value)
                elif value is not None and p.datatype == INT64:
                    value = int(value)
                p.value, p.quality, p.time_ms = value, _quality(sample.get("q")), sample.get("t")
                by_device.setdefault(p.device, []).append(
                    SpMetric(
                        None,
                        p.datatype,
                        value,
                        alias=p.alias,
                        timestamp=p.time_ms,
                        is_historical=historical,
                        properties={"Quality": (INT32, p.quality)},
                    )
                )
            for device, metrics in by_device.items():
                seq = (seq + 1) % 256
                out.append((self.topic("DDATA", device), encode_payload(stamp, metrics, seq)))
            return out, seq
        name = self._node_metric(suffix, payload)
        if name is None:
            return [], seq
        record = (
            {k: v for k, v in payload.items() if k not in ("timestamp", "seq", "historical", "msg_id")}
            if isinstance(payload, dict)
            else payload
        )
        text = _json(record)
        if name.startswith("Agents/"):
            text = str(record.get("new")) if isinstance(record, dict) else text
        self._node[name] = text
        seq = (seq + 1) % 256
        metric = SpMetric(name, STRING, text, timestamp=stamp, is_historical=historical)
        return [(self.topic("NDATA"), encode_payload(stamp, [metric], seq))], seq

    def _samples(self, payload: Any) -> Iterable[tuple[_Point, Mapping[str, Any]]]:
        """A telemetry message's samples with their points, in either form the gateway sends
        (`metrics` maps, or the columnar form of docs/mqtt.md); unknown points are skipped."""
        if not isinstance(payload, dict):
            raise ValueError(f"telemetry payload is a {type(payload).__name__}, not a map")
        for sample in payload.get("metrics", ()):
            p = self._points.get(str(sample.get("id")))
            if p is not None:
                yield p, sample
        if payload.get("format") != "columns":
            return
        t0, bad = payload.get("t0"), {pos: q for pos, q, _r in payload.get("bad", ())}
        for pos, (i, v, dt) in enumerate(zip(payload["i"], payload["v"], payload["dt"], strict=True)):
            p = self._by_index.get(i)
            if p is not None:
                yield p, {"v": v, "q": bad.get(pos, "good"), "t": None if dt is None or t0 is None else t0 + dt}

    def _node_metric(self, suffix: str, payload: Any) -> str | None:
        if suffix in NODE_RECORDS:
            return NODE_RECORDS[suffix]
        head, _, rest = suffix.partition("/")
        if head == "state" and rest:
            name = f"Agents/{rest}/State"
        elif head == "notices" and rest:
            name = f"Notices/{rest}"
        elif head == "cmd_result" and rest:
            name = f"Command Results/{rest}"
        else:
            return None
        self._node.setdefault(name, None)
        return name

    def node_metric_names(self) -> list[str]:
        return [BDSEQ, REBIRTH, *self._node]
