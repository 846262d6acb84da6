"""The northbound uplink: MQTT 5 to the regional SCADA broker, with a durable spool.

Rules this module keeps:

- Every message goes into the SQLite spool before `publish` returns, and leaves the spool only
  when the broker's PUBACK arrives (QoS 1). A broker outage, a network loss or a kill -9 loses
  nothing that was accepted; delivery is at least once (a message whose PUBACK was lost is sent
  again, flagged historical, with the same `msg_id`).
- Sparkplug B semantics in our own namespace: a retained `birth` listing every metric on every
  connect, a `death` registered as the MQTT will with the same `bdSeq` (and published on a
  clean shutdown), a per-message `seq` 0-255 restarting at 0 with each birth, a `cmd/rebirth`
  request, and `historical=True` on everything accepted before the current connection came up.
- Memory stays bounded whatever the backlog: only a small window of the spool is held in
  memory, at most `max_inflight` messages are unacknowledged, and the spool itself is capped at
  `spool_max_messages` (oldest dropped, with a logged count).
- Messages leave in the order accepted, except live `alarms` and `events`, which overtake a
  backlog (never retained topics: an older retained value arriving last would stay).
- Reconnects use jittered exponential backoff and never give up; each connection gets a fresh
  paho client, so no state of a dead connection leaks into the next.
- The event loop stays free: paho's network loop runs in its own thread (`loop_start`), its
  callbacks are handed to asyncio in batches, TCP/TLS connects run in a worker thread, and the
  spool's write-ahead log is checkpointed (fsync) in a worker thread too.

docs/mqtt.md is the contract with SCADA hosts: topics, payloads, sequence numbers, TLS.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import enum
import logging
import random
import sqlite3
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.contract.clock import Clock
from gateway.contract.ports import Spool
from gateway.contract.settings import SiteIdentity, UplinkConfig
from protocols.mqtt_session import (
    RETAIN_FLAG,
    BirthDeath,
    DropReport,
    InFlight,
    MessageSequence,
    PrimaryHost,
    SpooledRow,
    SpoolWindow,
)

RESERVED_KEYS = frozenset({"seq", "historical", "msg_id"})
"""Envelope fields the uplink adds when a message is sent; payloads must not carry them."""

BDSEQ_SNAPSHOT = "uplink.bdseq"
CONNACK_TIMEOUT_S = 10.0
DEATH_ACK_TIMEOUT_S = 2.0
CHECKPOINT_PERIOD_S = 1.0
"""How often the spool's write-ahead log is checkpointed off the event loop while data flows."""

CommandCallback = Callable[..., None]
"""`callback(command, payload, retained=...)`."""
"""(command, payload): the decoded msgpack value, or the raw bytes when it was not msgpack."""


class _PahoNoise(logging.Filter):
    """paho logs an error when its thread sees the socket we have just closed; it is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


_PAHO_LOG = logging.getLogger("stima.uplink.paho")
_PAHO_LOG.addFilter(_PahoNoise())


class UplinkState(enum.Enum):
    STARTING = "starting"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    CLOSED = "closed"


# ---------------------------------------------------------------------- msgpack envelope

_K_SEQ = msgpack.packb("seq")
_K_HISTORICAL = msgpack.packb("historical")
_K_MSG_ID = msgpack.packb("msg_id")
_TRUE, _FALSE = msgpack.packb(True), msgpack.packb(False)


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def envelope(body: bytes, seq: int, historical: bool, msg_id: int) -> bytes:
    """Add `seq`, `historical` and `msg_id` to an encoded msgpack map without decoding it."""
    first = body[0]
    if 0x80 <= first <= 0x8F:
        count, offset = first & 0x0F, 1
    elif first == 0xDE:
        count, offset = int.from_bytes(body[1:3], "big"), 3
    elif first == 0xDF:
        count, offset = int.from_bytes(body[1:5], "big"), 5
    else:
        raise ValueError("spooled payload is not a msgpack map")
    return b"".join(
        (
            _map_header(count + 3),
            memoryview(body)[offset:],
            _K_SEQ,
            msgpack.packb(seq),
            _K_HISTORICAL,
            _TRUE if historical else _FALSE,
            _K_MSG_ID,
            msgpack.packb(msg_id),
        )
    )


def _to_wire(obj: Any) -> Any:
    """msgpack fallback for values the daemon's components hand over: enums, numpy, sets, paths."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if getattr(obj, "shape", None) == () and callable(getattr(obj, "item", None)):
        return obj.item()  # a numpy scalar
    if callable(getattr(obj, "tolist", None)):
        return obj.tolist()  # a numpy array
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot encode a {type(obj).__name__} in an MQTT payload")


def _release(client: mqtt.Client) -> None:
    """Drop the callbacks that tie an ended client to its session: without the cycle they make,
    the client (and the socket pair paho keeps for waking its loop) is freed as soon as the
    session is, even where the cyclic collector never looks (objects frozen by the daemon)."""
    client.on_connect = None
    client.on_disconnect = None
    client.on_publish = None
    client.on_message = None


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 first): exponential, capped, jittered.

    The jitter (a uniform draw in the upper half) keeps a fleet of gateways that lost the same
    broker from coming back in lock step.
    """
    ceiling = min(max_s, min_s * 2.0 ** min(attempt, 60))
    return (rng or random).uniform(ceiling / 2.0, ceiling)


def _check_suffix(topic_suffix: str) -> None:
    if (
        not isinstance(topic_suffix, str)
        or not topic_suffix
        or topic_suffix.startswith("/")
        or topic_suffix.endswith("/")
        or "//" in topic_suffix
        or any(c in topic_suffix for c in "#+\x00")
    ):
        raise ValueError(f"topic suffix must be non-empty levels without wildcards, found {topic_suffix!r}")


# ---------------------------------------------------------------------- one connection


class _Session:
    """One paho client and one TCP/TLS connection; never reused after it ends."""

    def __init__(self, client: mqtt.Client, bdseq: int, number: int, max_inflight: int) -> None:
        self.client = client
        self.bdseq = bdseq
        self.number = number
        self.inflight = InFlight(max_inflight)
        self.sequence = MessageSequence()
        self.connack: asyncio.Future[ReasonCode | None] | None = None
        self.ended = asyncio.Event()
        self.up = False
        self.death_acked = asyncio.Event()


# ---------------------------------------------------------------------- the uplink


class MqttUplink:
    """MQTT 5 uplink with a durable spool; see the module docstring for its guarantees."""

    def __init__(
        self,
        cfg: UplinkConfig,
        site: SiteIdentity,
        store: Spool,
        clock: Clock,
        logger: logging.Logger | None = None,
        *,
        base_dir: Path = Path("."),
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        memory_window: int | None = None,
        urgent_topics: Iterable[str] = ("alarms", "events"),
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.store = store
        self.clock = clock
        self.log = logger or logging.getLogger("stima.uplink")
        self.base_dir = Path(base_dir)
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = max(backoff_max_s, backoff_min_s)
        self.base_topic = f"{cfg.topic_prefix}/{site.region}/{site.substation_id}"
        self.client_id = cfg.client_id or f"stima-{site.substation_id}"
        self.endpoint = f"{cfg.transport}://{cfg.broker_host}:{cfg.broker_port}"

        self.state = UplinkState.STARTING
        self.connected_since: float | None = None
        self.last_error = ""
        self.published = 0
        self.sent = 0
        self.acked = 0
        self.rejected = 0
        self.dropped = 0
        self.lost = 0
        self.sessions = 0
        self.commands = 0
        self._depth = store.spool_depth()
        self._depth_at_start = self._depth
        self._window = SpoolWindow(
            memory_window or max(2 * cfg.max_inflight + 256, 512), urgent_topics, store.spool_last_id()
        )
        """What of the spool is in memory and leaves next: the ordered lane and the urgent lane."""
        self._births = BirthDeath(
            store.load_snapshot(BDSEQ_SNAPSHOT), cfg.sparkplug.primary_host_id if cfg.payload == "sparkplug_b" else None
        )
        self._birth_metrics: list[dict[str, Any]] = []
        self._birth_listeners: list[Callable[[], None]] = []
        self._command_callbacks: list[CommandCallback] = []
        self._external: list[tuple[str, Callable[[str, Any, bool], None]]] = []
        self._session: _Session | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake_scheduled = False
        self._pump_scheduled = False
        self._acks: list[int] = []
        self._progress: asyncio.Event | None = None
        self._closing = False
        self._closed = False
        self._stop_event: asyncio.Event | None = None
        self._drops = DropReport()
        self._spool_writes = 0
        """Spool rows written or deleted since the last checkpoint."""
        self._codec: Any = None
        self._node_metrics: list[str] = []
        if cfg.payload == "sparkplug_b":
            from protocols.sparkplug import SparkplugCodec

            self._codec = SparkplugCodec(
                cfg.sparkplug.group_id or site.region, cfg.sparkplug.edge_node_id or site.substation_id
            )

    # ------------------------------------------------------------------ public API

    def check(self) -> None:
        """Raise now what would make every connection fail: unreadable or mismatched TLS files
        (ValueError naming the file). No I/O beyond reading those files."""
        if self.cfg.transport != "tls":
            return
        try:
            self._tls_context()
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"uplink TLS files (ca_file {self.cfg.ca_file}, cert_file {self.cfg.cert_file}, "
                f"key_file {self.cfg.key_file}) cannot be used: {exc}"
            ) from None

    def resync_spool(self) -> None:
        """Re-read the spool's depth, last id and birth/death sequence from the store.

        For an uplink built while another (the configuration it replaces) still spooled and
        sent: call it after that one closed and before `run()`.
        """
        if self._loop is not None:
            raise RuntimeError("resync_spool() is for an uplink that has not started")
        self._depth = self.store.spool_depth()
        self._depth_at_start = self._depth
        self._window.last_id = self.store.spool_last_id()
        self._births = BirthDeath(self.store.load_snapshot(BDSEQ_SNAPSHOT), self._births.primary_host)

    def set_birth(self, metrics: list[dict[str, Any]], node_metrics: Iterable[str] = ()) -> None:
        """The metric list sent in every birth (id, kind, unit, ...); re-sent now if connected.
        `node_metrics`: the Sparkplug node metrics the gateway's records may fill (NBIRTH declares them)."""
        self._birth_metrics = [dict(m) for m in metrics]
        self._node_metrics = list(node_metrics)
        if self._codec is not None:
            self._codec.set_metrics(self._birth_metrics, self._node_metrics)
        session = self._session
        if session is not None and self._births.may_birth(session.up):
            self._send_birth(session)

    def on_birth(self, listener: Callable[[], None]) -> None:
        """Call `listener` (in the event loop) after every birth, e.g. to send an integrity report."""
        self._birth_listeners.append(listener)

    def on_command(self, callback: CommandCallback) -> None:
        """Hand every message on `<base>/cmd/#` to `callback(command, payload, retained=...)`, decoded
        when it is msgpack and as raw bytes when it is not (the callback refuses what it cannot use).
        `retained` is the publisher's retain flag (the subscription asks for retain-as-published),
        or a retained copy delivered at subscription: such a command must never be carried out.
        An empty retained message (one that clears a retained command) is dropped quietly.

        `command` is the topic below `cmd/` (e.g. "operate/CB-044"). `cmd/rebirth` is handled by
        the uplink itself. Validating commands (signature, nonce, authority) is the caller's job.
        """
        self._command_callbacks.append(callback)

    def on_external(self, topic_filter: str, callback: Callable[[str, Any, bool], None]) -> None:
        """Subscribe (at every connect) to `topic_filter` outside the gateway's own subtree and
        hand each message to `callback(topic, payload, retained)`, msgpack decoded when it can
        be (raw bytes otherwise). Used for the neighbours' coordination messages and deaths."""
        self._external.append((topic_filter, callback))
        session = self._session
        if session is not None and session.up:
            session.client.subscribe(topic_filter, qos=1)

    def publish(
        self, topic_suffix: str, payload: dict[str, Any], *, qos: int | None = None, retain: bool = False
    ) -> None:
        """Accept one message: it is in the spool when this returns. Non-blocking.

        Meant for the event loop's thread; from another thread it is safe too (the message is
        spooled there and the event loop is told to send it).
        """
        self.publish_many([(topic_suffix, payload)], qos=qos, retain=retain)

    def clear_retained(self, topic_suffixes: Iterable[str]) -> None:
        """Clear retained topics (an empty retained message each, spooled in order like any other):
        e.g. the `state/<agent>` of agents removed from the site file. They carry no `seq`."""
        self._spool([(suffix, b"", 1 | RETAIN_FLAG) for suffix in topic_suffixes], retain=True)

    def publish_many(
        self, messages: Iterable[tuple[str, dict[str, Any]]], *, qos: int | None = None, retain: bool = False
    ) -> None:
        """Accept several messages in one spool transaction (cheaper per message)."""
        if self._closed:
            raise RuntimeError("the uplink is closed")
        qos = self.cfg.qos if qos is None else qos
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, found {qos!r}")
        flags = qos | (RETAIN_FLAG if retain else 0)
        wall = self.clock.wall()
        now_ms = round(wall * 1000.0)
        rows: list[tuple[str, bytes, int, float]] = []
        for topic_suffix, payload in messages:
            _check_suffix(topic_suffix)
            if not isinstance(payload, dict):
                raise TypeError(f"payload must be a dict, found {type(payload).__name__}")
            clash = RESERVED_KEYS.intersection(payload)
            if clash:
                raise ValueError(f"payload keys {sorted(clash)} are reserved for the uplink's envelope")
            body = payload if "timestamp" in payload else {"timestamp": now_ms, **payload}
            try:
                blob = msgpack.packb(body, use_bin_type=True, default=_to_wire)
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(f"payload for {topic_suffix!r} cannot be encoded: {exc}") from None
            rows.append((topic_suffix, blob, flags, wall))
        self._spool([(t, b, f) for t, b, f, _w in rows], retain=retain)

    def _spool(self, messages: list[tuple[str, bytes, int]], *, retain: bool) -> None:
        if self._closed:
            raise RuntimeError("the uplink is closed")
        wall = self.clock.wall()
        rows = []
        for topic_suffix, blob, flags in messages:
            _check_suffix(topic_suffix)
            rows.append((topic_suffix, blob, flags, wall))
        if not rows:
            return
        try:
            ids = self.store.spool_append(rows)
        except sqlite3.Error as exc:
            # a full or broken disk must not stop the caller; say loudly what was lost
            self.lost += len(rows)
            self._error(f"spool write failed, {len(rows)} message(s) lost: {exc}")
            return
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            # from another thread: durable already; the event loop picks it up from the spool
            with contextlib.suppress(RuntimeError):  # loop closed: the next start sends it
                loop.call_soon_threadsafe(self._accepted_elsewhere, ids)
            return
        self.published += len(ids)
        self._spool_writes += len(ids)
        self._depth += len(ids)
        # an alarm must not wait behind an outage's backlog; retained topics never jump the
        # queue, or an older retained value would arrive last and stay
        self._window.accepted(ids, rows, live=self._session is not None and self._session.up, retain=retain)
        if self._depth > self.cfg.spool_max_messages:
            self._trim()
        self._kick()

    def _accepted_elsewhere(self, ids: list[int]) -> None:
        """Bookkeeping, in the event loop, for messages another thread spooled."""
        self.published += len(ids)
        self._spool_writes += len(ids)
        self._depth += len(ids)
        self._window.accepted_elsewhere(ids[-1])
        if self._depth > self.cfg.spool_max_messages:
            self._trim()
        self._kick()

    @property
    def spool_depth(self) -> int:
        """Messages accepted and not yet acknowledged by the broker."""
        return self._depth

    @property
    def connected(self) -> bool:
        return self.state is UplinkState.CONNECTED

    def status(self) -> dict[str, Any]:
        session = self._session
        return {
            "state": self.state.value,
            "endpoint": self.endpoint,
            "client_id": self.client_id,
            "connected_since": self.connected_since,
            "published": self.published,
            "sent": self.sent,
            "acked": self.acked,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "lost": self.lost,
            "inflight": len(session.inflight) if session else 0,
            "in_memory": self._window.in_memory,
            "spool_depth": self._depth,
            "bdseq": self._births.bdseq if self._births.bdseq >= 0 else None,
            "sessions": self.sessions,
            "commands": self.commands,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Connect, keep connected, deliver the spool; returns after `close()`."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._progress = asyncio.Event()
        self._stop_event = asyncio.Event()
        if self._closing:
            return
        if self.cfg.transport == "tcp":
            self.log.warning(
                "uplink uses plain TCP: telemetry and commands travel unencrypted and unauthenticated",
                extra={"endpoint": self.endpoint},
            )
        if self._depth_at_start:
            self.log.info("spool holds messages from before this start", extra={"spool_depth": self._depth_at_start})
        attempt = 0
        checkpointer = asyncio.create_task(self._checkpoints(), name="uplink-spool-checkpoint")
        try:
            while not self._closing:
                self.state = UplinkState.CONNECTING
                try:
                    session = await self._connect()
                    if session is not None:
                        attempt = 0
                        await session.ended.wait()
                        await self._end_session(session)
                except Exception as exc:  # never let one bad attempt end the uplink for good
                    self.log.exception("uplink connection attempt failed unexpectedly")
                    self.last_error = f"unexpected: {exc!r}"
                    if self._session is not None and not self._closing:
                        with contextlib.suppress(Exception):
                            await self._end_session(self._session)
                if self._closing:
                    break
                delay = backoff_delay(attempt, self.backoff_min_s, self.backoff_max_s)
                attempt += 1
                self.state = UplinkState.BACKOFF
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), delay)
        finally:
            checkpointer.cancel()
            session = self._session
            if session is not None and not self._closed:
                # cancelled without close(): let the broker publish our death (the will)
                with contextlib.suppress(Exception):
                    session.client.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
                with contextlib.suppress(Exception):
                    session.client.loop_stop()
                self._session = None

    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is spooled (within `timeout_s`), publish the death, disconnect.

        What is not delivered by then stays in the spool for the next start.
        """
        if self._closed:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        session = self._session
        if session is not None and session.up and self._progress is not None:
            while not self._drained() and not session.ended.is_set() and loop.time() < deadline:
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), max(0.001, deadline - loop.time()))
            self._flush_acks()
            if not session.ended.is_set():
                topic, death = self._death(session.bdseq)
                info = session.client.publish(topic, death, qos=1, retain=self._codec is None)
                session.inflight.death_sent(info.mid)
                wait_s = max(0.05, min(DEATH_ACK_TIMEOUT_S, deadline - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.death_acked.wait(), wait_s)
                if session.death_acked.is_set():
                    session.client.disconnect()
                else:  # the broker has not confirmed our death: have it publish the will instead
                    session.client.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
            with contextlib.suppress(Exception):
                await asyncio.to_thread(session.client.loop_stop)
            self._flush_acks()
        self._session = None
        self._closed = True
        self.state = UplinkState.CLOSED
        self.connected_since = None
        if self._stop_event is not None:
            self._stop_event.set()
        if session is not None:
            session.ended.set()
        self.log.info("uplink closed", extra={"spool_depth": self._depth, "acked": self.acked})

    async def _checkpoints(self) -> None:
        """Keep SQLite's automatic checkpoint (an fsync) off the event loop's commits."""
        while True:
            await asyncio.sleep(CHECKPOINT_PERIOD_S)
            if not self._spool_writes:
                continue
            self._spool_writes = 0
            try:
                await asyncio.to_thread(self.store.wal_checkpoint)
            except Exception as exc:
                self.log.debug("spool checkpoint failed", extra={"error": str(exc)})

    # ------------------------------------------------------------------ connecting

    def _topic(self, suffix: str) -> str:
        return f"{self.base_topic}/{suffix}"

    def _death(self, bdseq: int) -> tuple[str, bytes]:
        """The death's topic and payload: msgpack `death` (retained), or Sparkplug NDEATH (not retained)."""
        now_ms = round(self.clock.wall() * 1000.0)
        if self._codec is not None:
            sparkplug: tuple[str, bytes] = self._codec.death(bdseq, now_ms)
            return sparkplug
        payload: bytes = msgpack.packb(BirthDeath.death(bdseq, now_ms))
        return self._topic("death"), payload

    def _tls_context(self) -> ssl.SSLContext:
        def path(p: Path | None) -> str:
            assert p is not None
            return str(p if p.is_absolute() else self.base_dir / p)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=path(self.cfg.ca_file))
        ctx.load_cert_chain(certfile=path(self.cfg.cert_file), keyfile=path(self.cfg.key_file))
        return ctx

    def _next_bdseq(self) -> int:
        bdseq = self._births.next_bdseq()
        self.store.save_snapshot(BDSEQ_SNAPSHOT, bdseq, self.clock.wall())
        return bdseq

    def _new_client(self, bdseq: int) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.enable_logger(_PAHO_LOG)
        client.max_inflight_messages_set(self.cfg.max_inflight + 2)  # + birth and death
        client.max_queued_messages_set(0)
        if self.cfg.transport == "tls":
            client.tls_set_context(self._tls_context())
        topic, death = self._death(bdseq)
        client.will_set(topic, death, qos=1, retain=self._codec is None)
        return client

    async def _connect(self) -> _Session | None:
        """One connection attempt; returns the session once CONNACK accepted it."""
        loop = asyncio.get_running_loop()
        bdseq = self._next_bdseq()
        try:
            client = self._new_client(bdseq)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._error(f"TLS set-up failed: {exc}")
            return None
        session = _Session(client, bdseq, self.sessions + 1, self.cfg.max_inflight)
        session.connack = loop.create_future()
        client.on_connect = lambda c, u, flags, rc, props: self._from_paho(("connack", session, rc))
        client.on_disconnect = lambda c, u, flags, rc, props: self._from_paho(("disconnect", session, rc))
        client.on_publish = lambda c, u, mid, rc, props: self._from_paho(("ack", session, mid, rc))
        client.on_message = lambda c, u, msg: self._from_paho(("message", session, msg.topic, msg.payload, msg.retain))
        try:
            await asyncio.to_thread(
                client.connect, self.cfg.broker_host, self.cfg.broker_port, self.cfg.keepalive_s, clean_start=True
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._error(f"cannot connect to {self.endpoint}: {exc}")
            return None
        self._session = session
        client.loop_start()
        try:
            rc = await asyncio.wait_for(asyncio.shield(session.connack), CONNACK_TIMEOUT_S)
        except TimeoutError:
            rc = None
        if session.up:
            return session  # run() ends it properly, even if it already dropped
        if rc is None or rc.is_failure or session.ended.is_set():
            reason = "no CONNACK" if rc is None else str(rc)
            if session.ended.is_set() and rc is None:
                reason = "connection closed during the handshake (client certificate refused?)"
            self._error(f"broker refused the connection: {reason}")
            with contextlib.suppress(Exception):
                client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            _release(client)
            self._session = None
            return None
        return session

    def _session_up(self, session: _Session) -> None:
        session.up = True
        self.sessions += 1
        self.state = UplinkState.CONNECTED
        self.connected_since = self.clock.wall()
        session.sequence.start_id = self._window.last_id + 1
        self.last_error = ""
        self.log.info(
            "uplink connected",
            extra={"endpoint": self.endpoint, "bdseq": session.bdseq, "spool_depth": self._depth},
        )
        # retain-as-published: a command published with the retain flag arrives with it, also to a
        # subscriber that is connected already, so it can be refused instead of carried out
        session.client.subscribe(self._topic("cmd/#"), options=SubscribeOptions(qos=1, retainAsPublished=True))
        for topic_filter, _ in self._external:
            session.client.subscribe(topic_filter, qos=1)
        birth_now = self._births.connected()
        if self._codec is not None:
            session.client.subscribe(self._codec.ncmd_topic, qos=1)
            host = self._births.primary_host
            if host is not None:
                session.client.subscribe(self._codec.state_topic(host), qos=1)
        if not birth_now:
            self.log.info(
                "waiting for the primary host application to be online", extra={"host": self._births.primary_host}
            )
            return
        self._send_birth(session)
        self._kick()

    def _send_birth(self, session: _Session) -> None:
        if self._codec is not None:
            births = self._codec.births(session.bdseq, round(self.clock.wall() * 1000.0))
            for topic, payload in births:  # Sparkplug: births are QoS 0 and never retained
                info = session.client.publish(topic, payload, qos=0, retain=False)
                session.inflight.sent(info.mid, None)
            session.sequence.born(len(births))
            self._birth_done()
            return
        session.sequence.born()
        birth = BirthDeath.birth(session.bdseq, round(self.clock.wall() * 1000.0), self.client_id, self._birth_metrics)
        info = session.client.publish(self._topic("birth"), msgpack.packb(birth, use_bin_type=True), qos=1, retain=True)
        session.inflight.sent(info.mid, None)
        self._birth_done()

    def _birth_done(self) -> None:
        for listener in self._birth_listeners:
            try:
                listener()
            except Exception:
                self.log.exception("birth listener failed")

    async def _end_session(self, session: _Session) -> None:
        was_up = session.up
        session.up = False
        if self.state is UplinkState.CONNECTED:
            self.state = UplinkState.BACKOFF
        with contextlib.suppress(Exception):
            await asyncio.to_thread(session.client.loop_stop)
        _release(session.client)
        self._flush_acks()
        if self._session is session:
            self._session = None
        self.connected_since = None
        # everything unacknowledged is still in the spool: read it again from the start
        self._window.reset()
        if was_up and not self._closing:
            self.log.warning(
                "uplink connection lost",
                extra={"endpoint": self.endpoint, "error": self.last_error, "spool_depth": self._depth},
            )

    def _error(self, message: str) -> None:
        if message != self.last_error:
            self.log.warning(message, extra={"endpoint": self.endpoint})
        self.last_error = message

    # ------------------------------------------------------------------ from paho's thread

    def _from_paho(self, item: tuple[Any, ...]) -> None:
        """Runs in paho's thread: queue the event and wake the event loop once per batch."""
        self._inbox.append(item)
        loop = self._loop
        if loop is None or self._wake_scheduled:
            return
        self._wake_scheduled = True
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._wake_scheduled = False
        inbox = self._inbox
        progressed = False
        while inbox:
            item = inbox.popleft()
            try:
                progressed |= self._handle(item)
            except Exception:
                self.log.exception("uplink event handling failed", extra={"event": item[0]})
        try:
            self._flush_acks()
        except sqlite3.Error as exc:
            self._error(f"spool delete failed: {exc}")
        if progressed and self._progress is not None:
            self._progress.set()
        self._pump()

    def _handle(self, item: tuple[Any, ...]) -> bool:
        """One event from paho's thread; True when it is progress (ack or end) close() waits for."""
        progressed = False
        kind = item[0]
        session: _Session = item[1]
        if kind == "ack":
            progressed = True
            self._on_ack(session, item[2], item[3])
        elif kind == "connack":
            rc: ReasonCode = item[2]
            if session.connack is not None and not session.connack.done():
                session.connack.set_result(rc)
            if rc.is_failure or session.ended.is_set():
                pass
            elif self._closed:
                # close() finished while this connection was being made: leave at once, and let
                # the broker publish the death registered for it
                session.client.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
            elif session is self._session:
                self._session_up(session)
        elif kind == "disconnect":
            rc = item[2]
            if rc is not None and getattr(rc, "is_failure", False):
                self.last_error = f"disconnected: {rc}"
            elif not self._closing:
                self.last_error = "connection lost"
            session.ended.set()
            if session.connack is not None and not session.connack.done():
                session.connack.set_result(None)
            progressed = True
        elif kind == "message":
            self._on_message(session, item[2], item[3], item[4])
        return progressed

    def _on_ack(self, session: _Session, mid: int, rc: ReasonCode) -> None:
        spool_id = session.inflight.acked(mid)
        if session.inflight.death_acked:
            session.death_acked.set()
        if spool_id is None:
            return
        if rc is not None and rc.is_failure:
            self.rejected += 1
            self.log.error(
                "broker refused a message; it is dropped",
                extra={"reason": str(rc), "msg_id": spool_id, "rejected": self.rejected},
            )
        else:
            self.acked += 1
        self._acks.append(spool_id)

    def _flush_acks(self) -> None:
        if self._acks:
            acks, self._acks = self._acks, []
            self._spool_writes += len(acks)
            self._depth -= self.store.spool_remove(acks)

    def _on_message(self, session: _Session, topic: str, raw: bytes, retained: bool) -> None:
        if self._codec is not None and topic.startswith(f"{self._codec.ncmd_topic[:7]}/"):
            self._on_sparkplug(session, topic, raw)
            return
        prefix = self._topic("cmd/")
        if not topic.startswith(prefix):
            self._on_external(topic, raw, retained)
            return
        command = topic[len(prefix) :]
        if retained and not raw:
            self.log.debug("empty retained message (clearing a retained command) ignored", extra={"command": command})
            return
        if retained:
            # a retained command would run again at every connect: refused, never carried out
            self.log.warning("retained command refused", extra={"command": command})
        if command == "rebirth":
            if retained:
                return
            if session.up and session is self._session:
                self.log.info("rebirth requested by the host")
                self._send_birth(session)
            return
        payload: Any
        try:
            payload = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as exc:
            # handed on as it came, so the host gets a refusal that says what was wrong
            self.log.warning("command is not msgpack", extra={"command": command, "error": str(exc)})
            payload = bytes(raw)
        self.commands += 1
        for callback in self._command_callbacks:
            try:
                callback(command, payload, retained=retained)
            except Exception:
                self.log.exception("command callback failed", extra={"command": command})

    def _on_external(self, topic: str, raw: bytes, retained: bool) -> None:
        for topic_filter, callback in self._external:
            if not mqtt.topic_matches_sub(topic_filter, topic):
                continue
            payload: Any
            try:
                payload = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            except Exception:
                payload = bytes(raw)
            try:
                callback(topic, payload, retained)
            except Exception:
                self.log.exception("subscription callback failed", extra={"topic": topic})

    def _on_sparkplug(self, session: _Session, topic: str, raw: bytes) -> None:
        """NCMD `Node Control/Rebirth`, and the primary host's STATE."""
        from protocols.sparkplug import REBIRTH, decode_metrics

        codec = self._codec
        host = self.cfg.sparkplug.primary_host_id
        if host is not None and topic == codec.state_topic(host):
            try:
                state = json.loads(raw.decode("utf-8")) if raw else {}
                online = bool(state.get("online")) if isinstance(state, dict) else False
            except (ValueError, UnicodeDecodeError):
                self.log.warning("primary host STATE is not JSON; taken as offline", extra={"host": host})
                online = False
            action = self._births.primary_state(online, session.up)
            if action is PrimaryHost.BIRTH:
                self.log.info("primary host application online: birth", extra={"host": host})
                self._send_birth(session)
                self._kick()
            elif action is PrimaryHost.DIE:
                # the host that must see everything is gone: die (the will) and wait for it again
                self.log.warning("primary host application offline: disconnecting", extra={"host": host})
                session.client.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
            return
        if topic != codec.ncmd_topic:
            return
        try:
            metrics = decode_metrics(raw)
        except ValueError as exc:
            self.log.warning("NCMD payload is not a Sparkplug payload", extra={"error": str(exc)})
            return
        if any(name == REBIRTH and value for name, _alias, value in metrics):
            if self._births.may_birth(session.up) and session is self._session:
                self.log.info("rebirth requested by a Sparkplug host (NCMD)")
                self._send_birth(session)
                self._kick()
        else:
            self.log.warning(
                "NCMD without a rebirth request ignored (commands are signed, on cmd/…)",
                extra={"metrics": [m[0] for m in metrics][:10]},
            )

    # ------------------------------------------------------------------ sending

    def _drained(self) -> bool:
        session = self._session
        inflight = len(session.inflight) if session else 0
        return self._window.empty and inflight == 0

    def _kick(self) -> None:
        loop = self._loop
        if (
            loop is None
            or self._pump_scheduled
            or self._session is None
            or not self._session.up
            or self._births.holding
        ):
            return
        self._pump_scheduled = True
        loop.call_soon(self._pump)

    def _load(self) -> None:
        """Refill the in-memory window from the spool, oldest first, skipping urgent-lane rows."""
        window = self._window
        while (ask := window.to_load()) is not None:
            window.loaded(self.store.spool_peek(*ask), ask[1])
            if window.queue:
                return

    def _pump(self) -> None:
        self._pump_scheduled = False
        session = self._session
        if session is None or not session.up or session.ended.is_set() or self._births.holding:
            return
        client = session.client
        inflight = session.inflight
        sequence = session.sequence
        window = self._window
        while inflight.has_room():
            row = window.head()
            if row is None:
                if not window.backlog:
                    break
                self._load()
                row = window.head()
                if row is None:
                    break
            if self._codec is not None:
                if not self._pump_sparkplug(session, row):
                    break
                continue
            seq = sequence.next_for(row.body)
            # an empty body clears a retained topic: sent as it is, not part of the sequence
            wire = envelope(row.body, seq, sequence.historical(row.spool_id), row.spool_id) if row.body else b""
            info = client.publish(f"{self.base_topic}/{row.topic}", wire, qos=row.qos, retain=row.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                self._error(f"publish failed: {mqtt.error_string(info.rc)}")
                break
            window.sent(row)
            sequence.used(seq)
            inflight.sent(info.mid, row.spool_id)
            self.sent += 1

    def _pump_sparkplug(self, session: _Session, row: SpooledRow) -> bool:
        """Send one spooled message as its Sparkplug messages; False to stop pumping for now."""
        sequence = session.sequence
        parts: list[tuple[str, bytes]]
        try:
            parts, seq = self._codec.encode_row(
                row.topic, row.body, sequence.historical(row.spool_id), sequence.seq, round(self.clock.wall() * 1000.0)
            )
        except Exception as exc:  # a message the codec cannot read must not block the spool
            self.log.error("message not sent as Sparkplug B; dropped", extra={"topic": row.topic, "error": str(exc)})
            parts, seq = [], sequence.seq
        if parts and not session.inflight.fits(len(parts)):
            return False
        self._window.sent(row)
        if not parts:
            self._acks.append(row.spool_id)
            return True
        for topic, wire in parts:
            info = session.client.publish(topic, wire, qos=row.qos, retain=False)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                self._error(f"publish failed: {mqtt.error_string(info.rc)}")
            session.inflight.sent(info.mid, row.spool_id)
        session.inflight.sent_in_parts(row.spool_id, len(parts))
        sequence.used(seq)
        self.sent += 1
        return True

    def _trim(self) -> None:
        excess = self._depth - self.cfg.spool_max_messages
        dropped, cutoff = self.store.spool_drop_oldest(excess)
        if not dropped:
            return
        self._depth -= dropped
        self.dropped += dropped
        self._window.trimmed(cutoff)
        report = self._drops.dropped(dropped, self.clock.monotonic())
        if report:
            self.log.error(
                "spool full: oldest messages dropped",
                extra={
                    "dropped": report,
                    "dropped_total": self.dropped,
                    "spool_max_messages": self.cfg.spool_max_messages,
                },
            )
