"""The AMI feed: smart-meter readings that data concentrators publish on the substation's broker.

A data concentrator reads its meters once per reading interval and publishes the readings in
batches, column-wise (one array per quantity, not one record per meter), msgpack-encoded, on
`ami/<substation_id>/<concentrator_id>/readings` (the site's `[ami] topic` with `+` in place
of the concentrator). docs/ami.md describes the payload; `encode_batch` / `decode_batch` are
its one implementation.

`AmiSubscriber` is the gateway's side. paho's network loop runs in its own thread; each
message is decoded and validated there (a bad one is logged, counted and dropped, never
raised) and the batch is handed to the event loop with `call_soon_threadsafe`, where the sink
`on_batch(meter_ids, columns, reading_time)` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.contract.clock import Clock
from gateway.contract.demand_response import DrConfirmation, DrEvent, DrPayloadError
from gateway.contract.settings import AmiConfig
from protocols import demand_response as dr_wire

FORMAT_VERSION = 1
MAX_METERS_PER_MESSAGE = 100_000
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i4", "<u4", "<i8", "|u1", "|b1"})

STANDARD_COLUMNS: dict[str, str] = {
    "voltage_v": "<f4",
    "current_a": "<f4",
    "demand_kw": "<f4",
    "energy_kwh": "<f8",
    "power_factor": "<f4",
    "thd_pct": "<f4",
    "powered": "|b1",
    "tamper": "|b1",
}
"""The quantities a concentrator reports, with their wire dtypes (NaN = no reading)."""

_COLUMN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

BatchSink = Callable[[list[str], dict[str, np.ndarray], float], Any]


class AmiPayloadError(ValueError):
    """A message that is not a valid AMI batch; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class AmiBatch:
    substation_id: str
    concentrator_id: str
    seq: int
    reading_time: float
    """POSIX seconds (UTC) at the end of the reading interval."""
    interval_s: float
    part: int
    parts: int
    meter_ids: list[str]
    columns: dict[str, np.ndarray]


# --------------------------------------------------------------------------- codec


def encode_batch(
    *,
    substation_id: str,
    concentrator_id: str,
    seq: int,
    reading_time: float,
    interval_s: float,
    meter_ids: Sequence[str],
    columns: Mapping[str, np.ndarray],
    part: int = 0,
    parts: int = 1,
) -> bytes:
    """One message: meter ids and one little-endian array per quantity, all the same length."""
    n = len(meter_ids)
    wire: dict[str, dict[str, Any]] = {}
    for name, values in columns.items():
        array = np.asarray(values)
        if array.shape != (n,):
            raise ValueError(f"column {name!r} has shape {array.shape}, expected ({n},)")
        dtype = STANDARD_COLUMNS.get(name) or array.dtype.newbyteorder("<").str
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ValueError(f"column {name!r}: dtype {dtype} is not one of {sorted(ALLOWED_DTYPES)}")
        wire[name] = {"dtype": dtype, "data": np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()}
    message = {
        "v": FORMAT_VERSION,
        "substation_id": substation_id,
        "concentrator_id": concentrator_id,
        "seq": int(seq),
        "reading_time": float(reading_time),
        "interval_s": float(interval_s),
        "part": int(part),
        "parts": int(parts),
        "ids": list(meter_ids),
        "columns": wire,
    }
    return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]


def _field(message: dict[str, Any], key: str, kinds: type | tuple[type, ...]) -> Any:
    if key not in message:
        raise AmiPayloadError(f"missing field {key!r}")
    value = message[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        expected = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        raise AmiPayloadError(f"field {key!r} must be {expected}, found {type(value).__name__}")
    return value


def decode_batch(payload: bytes | bytearray) -> AmiBatch:
    """Parse and validate one message; AmiPayloadError says what is wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise AmiPayloadError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        message = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, max_array_len=MAX_METERS_PER_MESSAGE, max_map_len=1024
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise AmiPayloadError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(message, dict):
        raise AmiPayloadError(f"payload must be a map, found {type(message).__name__}")
    version = _field(message, "v", int)
    if version != FORMAT_VERSION:
        raise AmiPayloadError(f"format version {version} is not supported (expected {FORMAT_VERSION})")
    substation_id = _field(message, "substation_id", str)
    concentrator_id = _field(message, "concentrator_id", str)
    if not concentrator_id:
        raise AmiPayloadError("field 'concentrator_id' is empty")
    seq = _field(message, "seq", int)
    if seq < 0:
        raise AmiPayloadError(f"field 'seq' must be >= 0, found {seq}")
    reading_time = float(_field(message, "reading_time", (int, float)))
    if not math.isfinite(reading_time) or reading_time < 0:
        raise AmiPayloadError(f"field 'reading_time' must be finite POSIX seconds, found {reading_time}")
    interval_s = float(_field(message, "interval_s", (int, float)))
    if not math.isfinite(interval_s) or interval_s <= 0:
        raise AmiPayloadError(f"field 'interval_s' must be > 0, found {interval_s}")
    part = _field(message, "part", int)
    parts = _field(message, "parts", int)
    if not 0 <= part < parts:
        raise AmiPayloadError(f"part {part} of {parts} is impossible")
    ids = _field(message, "ids", list)
    n = len(ids)
    for i, meter_id in enumerate(ids):
        if not isinstance(meter_id, str) or not meter_id:
            raise AmiPayloadError(f"ids[{i}] must be a non-empty string, found {meter_id!r}")
    raw_columns = _field(message, "columns", dict)
    if not raw_columns:
        raise AmiPayloadError("field 'columns' is empty")
    columns: dict[str, np.ndarray] = {}
    for name, column in raw_columns.items():
        if not isinstance(name, str) or not _COLUMN_NAME.match(name):
            raise AmiPayloadError(f"column name {name!r} is not a lower-case identifier")
        if not isinstance(column, dict):
            raise AmiPayloadError(f"column {name!r} must be a map with dtype and data")
        dtype = column.get("dtype")
        data = column.get("data")
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise AmiPayloadError(f"column {name!r}: dtype {dtype!r} is not one of {sorted(ALLOWED_DTYPES)}")
        if not isinstance(data, bytes):
            raise AmiPayloadError(f"column {name!r}: data must be bytes, found {type(data).__name__}")
        expected = STANDARD_COLUMNS.get(name)
        if expected is not None and dtype != expected:
            raise AmiPayloadError(f"column {name!r}: dtype {dtype} where {expected} is expected")
        itemsize = np.dtype(dtype).itemsize
        if len(data) != n * itemsize:
            raise AmiPayloadError(
                f"column {name!r}: {len(data)} bytes for {n} meters of {dtype} (expected {n * itemsize})"
            )
        columns[name] = np.frombuffer(data, dtype=np.dtype(dtype)).astype(np.dtype(dtype).newbyteorder("="))
    return AmiBatch(substation_id, concentrator_id, seq, reading_time, interval_s, part, parts, ids, columns)


def topic_for(pattern: str, concentrator_id: str) -> str:
    """The publish topic of one concentrator: the pattern's `+` (or a trailing `#`) filled in."""
    if "+" in pattern:
        return pattern.replace("+", concentrator_id, 1)
    if pattern.endswith("#"):
        return pattern[:-1] + f"{concentrator_id}/readings"
    return pattern


def concentrator_from_topic(pattern: str, topic: str) -> str | None:
    """The level of `topic` that stands where the pattern has `+` (the last one), if any."""
    levels, names = pattern.split("/"), topic.split("/")
    plus = [i for i, level in enumerate(levels) if level == "+"]
    if not plus or plus[-1] >= len(names):
        return None
    return names[plus[-1]]


# --------------------------------------------------------------------------- subscriber


class AmiSubscriber:
    """Receives concentrators' batches from the local broker and hands them to `sink`."""

    def __init__(
        self,
        cfg: AmiConfig,
        site_id: str,
        sink: BatchSink,
        clock: Clock,
        logger: logging.Logger | None = None,
        *,
        client_id: str | None = None,
        max_pending: int = 1000,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.site_id = site_id
        self.sink = sink
        self.clock = clock
        self.log = logger or logging.getLogger(__name__)
        self.client_id = client_id or f"stima-ami-{site_id}"
        self.max_pending = max_pending
        self.reconnect_max_s = reconnect_max_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._closed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._pending = 0
        self._lock = threading.Lock()
        self._last_seq: dict[str, int] = {}
        self.connected = False
        self.connects = 0
        self.messages = 0
        self.batches = 0
        self.readings = 0
        self.bad_messages = 0
        self.dropped_overload = 0
        self.sink_errors = 0
        self.seq_gaps = 0
        self.last_error = ""
        self.last_batch_monotonic: float | None = None
        self.last_reading_time: float | None = None
        self._other: list[tuple[str, Callable[[str, bytes, bool], None]]] = []
        self.published = 0
        self.publish_failures = 0

    def on_topic(self, topic_filter: str, callback: Callable[[str, bytes, bool], None]) -> None:
        """Also deliver what arrives on `topic_filter` (demand-response confirmations, the weather
        forecast) to `callback(topic, payload, retained)`, on the event loop. Call before `run`."""
        self._other.append((topic_filter, callback))

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> bool:
        """Queue a message to the AMI broker (a demand-response event); False when not connected
        (paho keeps nothing for a client that has never connected)."""
        client = self._client
        if client is None or not self.connected:
            self.publish_failures += 1
            return False
        info = client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.publish_failures += 1
            return False
        self.published += 1
        return True

    def send_dr_event(self, event: DrEvent) -> bool:
        """Publish a demand-response event to its concentrator on `[ami] dr_event_topic` (the
        concentrator id in place of `+`); False when the broker is not connected."""
        return self.publish(
            dr_wire.topic_for(self.cfg.dr_event_topic, event.concentrator_id), dr_wire.encode_event(event)
        )

    def on_dr_confirmation(
        self, confirmed: Callable[[DrConfirmation], None], refused: Callable[[str, str], None]
    ) -> None:
        """Deliver each confirmation arriving on `[ami] dr_confirm_topic` to `confirmed`, and each
        payload that is not one to `refused(topic, why)`; retained messages are old news. Call
        before `run`."""

        def deliver(topic: str, payload: bytes, retained: bool) -> None:
            if retained:
                return
            try:
                conf = dr_wire.decode_confirmation(payload)
            except DrPayloadError as exc:
                refused(topic, str(exc))
                return
            confirmed(conf)

        self.on_topic(self.cfg.dr_confirm_topic, deliver)

    # paho's thread ------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.last_error = f"connect refused: {reason}"
            self.log.warning(
                "AMI broker %s:%d refused the connection: %s", self.cfg.broker_host, self.cfg.broker_port, reason
            )
            return
        self.connected = True
        self.connects += 1
        client.subscribe([(self.cfg.topic, 1), *((f, 1) for f, _ in self._other)])
        self.log.info("AMI feed: subscribed to %s on %s:%d", self.cfg.topic, self.cfg.broker_host, self.cfg.broker_port)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.connected and not self._closed.is_set():
            self.log.warning("AMI feed: broker connection lost (%s); reconnecting", reason)
        self.connected = False

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        for topic_filter, callback in self._other:
            if mqtt.topic_matches_sub(topic_filter, msg.topic):
                loop = self._loop
                if loop is not None and not loop.is_closed():
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(
                            self._deliver_other, callback, msg.topic, bytes(msg.payload), bool(msg.retain)
                        )
                return
        self.messages += 1
        try:
            batch = decode_batch(msg.payload)
            from_topic = concentrator_from_topic(self.cfg.topic, msg.topic)
            if from_topic is not None and from_topic != batch.concentrator_id:
                raise AmiPayloadError(f"concentrator {batch.concentrator_id!r} published on {msg.topic!r}")
            if batch.substation_id != self.site_id:
                raise AmiPayloadError(f"substation {batch.substation_id!r} is not this site ({self.site_id!r})")
        except AmiPayloadError as exc:
            self.bad_messages += 1
            self.last_error = f"{msg.topic}: {exc}"
            self.log.warning("AMI feed: dropped a message on %s: %s", msg.topic, exc)
            return
        except Exception as exc:  # never let a message kill paho's thread
            self.bad_messages += 1
            self.last_error = f"{msg.topic}: {type(exc).__name__}: {exc}"
            self.log.exception("AMI feed: dropped a message on %s", msg.topic)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            if self._pending >= self.max_pending:
                self.dropped_overload += 1
                return
            self._pending += 1
        try:
            loop.call_soon_threadsafe(self._deliver, batch)
        except RuntimeError:  # the loop closed meanwhile
            pass

    # the event loop ------------------------------------------------------------

    def _deliver(self, batch: AmiBatch) -> None:
        with self._lock:
            self._pending -= 1
        last = self._last_seq.get(batch.concentrator_id)
        if last is not None and batch.seq != last + 1:
            if batch.seq > last + 1:
                self.seq_gaps += batch.seq - last - 1
                self.log.warning(
                    "AMI feed: %s skipped %d message(s) (seq %d after %d)",
                    batch.concentrator_id,
                    batch.seq - last - 1,
                    batch.seq,
                    last,
                )
            else:
                self.log.info(
                    "AMI feed: %s restarted its sequence (seq %d after %d)", batch.concentrator_id, batch.seq, last
                )
        self._last_seq[batch.concentrator_id] = batch.seq
        self.batches += 1
        self.readings += len(batch.meter_ids)
        self.last_batch_monotonic = self.clock.monotonic()
        self.last_reading_time = batch.reading_time
        try:
            result = self.sink(batch.meter_ids, batch.columns, batch.reading_time)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(self._sink_done)
        except Exception:
            self.sink_errors += 1
            self.log.exception("AMI feed: the sink failed on a batch from %s", batch.concentrator_id)

    def _deliver_other(
        self, callback: Callable[[str, bytes, bool], None], topic: str, payload: bytes, retained: bool
    ) -> None:
        try:
            callback(topic, payload, retained)
        except Exception:
            self.sink_errors += 1
            self.log.exception("AMI feed: the handler of %s failed", topic)

    def _sink_done(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.sink_errors += 1
            self.log.error("AMI feed: the sink failed: %r", task.exception())

    async def run(self) -> None:
        """Connect (and keep reconnecting) until `close`; batches flow to the sink meanwhile."""
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._stopped.clear()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, max(1, int(self.reconnect_max_s)))
        self._client = client
        try:
            client.connect_async(self.cfg.broker_host, self.cfg.broker_port, keepalive=30)
            client.loop_start()
            await self._closed.wait()
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
            try:
                await asyncio.to_thread(client.loop_stop)
            finally:
                self._client = None
                self.connected = False
                self._running = False
                self._stopped.set()

    async def close(self) -> None:
        """Stop and wait until the client's network thread has ended (a reload retiring this feed
        must not leave it subscribed, holding the old configuration's sink)."""
        self._closed.set()
        if self._running:
            await self._stopped.wait()

    def status(self) -> dict[str, Any]:
        age = None
        if self.last_batch_monotonic is not None:
            age = round(self.clock.monotonic() - self.last_batch_monotonic, 3)
        return {
            "broker": f"{self.cfg.broker_host}:{self.cfg.broker_port}",
            "topic": self.cfg.topic,
            "connected": self.connected,
            "connects": self.connects,
            "messages": self.messages,
            "batches": self.batches,
            "readings": self.readings,
            "bad_messages": self.bad_messages,
            "dropped_overload": self.dropped_overload,
            "sink_errors": self.sink_errors,
            "seq_gaps": self.seq_gaps,
            "concentrators": len(self._last_seq),
            "last_reading_time": self.last_reading_time,
            "last_batch_age_s": age,
            "last_error": self.last_error,
        }
