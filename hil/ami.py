"""Simulated data concentrators: the model's smart-meter readings published on the AMI broker.

One concentrator per meter group (its id is the group id), as on a real feeder where a
concentrator sits at each distribution transformer. Once per reading interval each
concentrator publishes all its meters in messages of at most `batch_size` meters, in the
format of `protocols.ami` (docs/ami.md), QoS 1, on the site's `[ami] topic` with `+` filled in.

Encoding happens on the simulator's event loop, a few messages per model step so that 100,000
meters never stall the IED servers; paho's network thread does the sending. While the broker
is unreachable, readings are skipped and counted rather than queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import SiteConfig
from protocols.ami import STANDARD_COLUMNS, encode_batch, topic_for

log = logging.getLogger(__name__)

UNASSIGNED = "DC-UNASSIGNED"


class AmiPublisher:
    def __init__(
        self,
        site: SiteConfig,
        *,
        batch_size: int = 1000,
        interval_s: float = 900.0,
        meters: int | None = None,
        client_id: str | None = None,
        max_inflight: int = 50,
    ) -> None:
        if site.ami is None:
            raise ValueError("the site file has no [ami] section")
        self.site = site
        self.cfg = site.ami
        self.substation_id = site.site.substation_id
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.meters = meters
        self.client_id = client_id or f"stima-hil-dc-{self.substation_id}"
        self.max_inflight = max_inflight
        self._prefixes = {g.prefix: g.id for g in site.meter_groups}
        self._own_groups = {g.id for g in site.meter_groups}
        self._own_key: tuple[Any, ...] | None = None
        self._own: np.ndarray | None = None
        """Indices of this substation's meters in the model's readings (None: all of them)."""
        self._plan_key: tuple[Any, ...] | None = None
        self._plan: list[tuple[str, np.ndarray]] = []
        self._seq: dict[str, int] = {}
        self._client: mqtt.Client | None = None
        self.connected = False
        self.readings_published = 0
        self.messages = 0
        self.bytes = 0
        self.intervals = 0
        self.skipped_intervals = 0
        self.last_publish_ms = 0.0
        self.last_meter_count = 0
        self.dropped_messages = 0
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self.on_dr_event: Any = None
        """Called on the simulator's loop with each valid `DrEvent` (set before `start`)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dr_events = 0
        self.dr_rejected = 0

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected = not getattr(reason, "is_failure", False)
        if self.connected:
            log.info("AMI: connected to %s:%d", self.cfg.broker_host, self.cfg.broker_port)
            if self.on_dr_event is not None:
                client.subscribe(self.cfg.dr_event_topic, qos=1)

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        """A demand-response event for one of our concentrators (paho's thread): decoded here,
        handled on the simulator's loop."""
        from protocols.demand_response import concentrator_of, decode_event
        from gateway.contract.demand_response import DrPayloadError

        concentrator = concentrator_of(self.cfg.dr_event_topic, message.topic)
        try:
            event = decode_event(message.payload)
        except DrPayloadError as exc:
            self.dr_rejected += 1
            log.warning("AMI: demand-response event on %s refused: %s", message.topic, exc)
            return
        if concentrator is not None and concentrator != event.concentrator_id:
            self.dr_rejected += 1
            log.warning("AMI: demand-response event for %s arrived on %s's topic", event.concentrator_id, concentrator)
            return
        loop, handler = self._loop, self.on_dr_event
        if loop is not None and handler is not None:
            loop.call_soon_threadsafe(handler, event)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        client = self._client
        if client is None or not self.connected:
            return False
        client.publish(topic, payload, qos=1, retain=retain)
        return True

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected and self._client is not None:
            log.warning("AMI: broker connection lost (%s)", reason)
        self.connected = False

    async def start(self, connect_timeout_s: float = 2.0) -> None:
        """Connect in the background; wait a little for the broker, but start without it."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._loop = asyncio.get_running_loop()
        client.max_inflight_messages_set(self.max_inflight)
        client.reconnect_delay_set(1, 10)
        self._client = client
        client.connect_async(self.cfg.broker_host, self.cfg.broker_port, keepalive=30)
        client.loop_start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout_s
        while not self.connected and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if not self.connected:
            log.warning(
                "AMI: broker %s:%d not reachable yet; readings are skipped until it is",
                self.cfg.broker_host,
                self.cfg.broker_port,
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        self.connected = False

    def _concentrators(self, ids: list[str]) -> list[tuple[str, np.ndarray]]:
        """(concentrator id, indices into the readings) per meter group, cached while ids stay.

        Meter ids are `<group prefix>-<n>`; a group's meters usually come in one run, so the
        prefix is split once per run and the run is followed with `startswith`.
        """
        key = (len(ids), ids[0] if ids else None, ids[-1] if ids else None)
        if key == self._plan_key:
            return self._plan
        runs: dict[str, list[np.ndarray]] = {}
        i, n = 0, len(ids)
        while i < n:
            prefix = ids[i].rsplit("-", 1)[0]
            head = prefix + "-"
            j = i + 1
            while j < n and ids[j].startswith(head):
                j += 1
            runs.setdefault(self._prefixes.get(prefix, UNASSIGNED), []).append(np.arange(i, j, dtype=np.intp))
            i = j
        self._plan = [(dc, np.concatenate(parts)) for dc, parts in runs.items()]
        self._plan_key = key
        return self._plan

    def _own_meters(self, ids: list[str], group_ids: Any) -> np.ndarray | None:
        """Indices of this site's meters when the readings hold other substations' too (one model
        serving several substations), cached while the readings keep their shape."""
        key = (len(ids), ids[0] if ids else None, ids[-1] if ids else None)
        if key != self._own_key:
            self._own_key = key
            groups = np.asarray(list(group_ids) if group_ids is not None else [], dtype=object)
            if group_ids is None or all(g in self._own_groups for g in set(groups.tolist())):
                self._own = None
            else:
                self._own = np.flatnonzero(np.isin(groups, list(self._own_groups)))
        return self._own

    def prepare(self, meter_ids: list[str], group_ids: Any = None) -> None:
        """Work out which concentrator reports which meter ahead of the first reading."""
        ids = list(meter_ids)
        own = self._own_meters(ids, group_ids)
        if own is not None:
            ids = [ids[i] for i in own]
        self._concentrators(ids[: self.meters] if self.meters is not None else ids)

    def publish(self, readings: Any, reading_time: float, *, spread: bool = False) -> int:
        """Queue one reading of every meter; returns the number of messages it makes.

        With `spread`, messages are sent by later `pump` calls (a few per simulator step, as
        concentrators report over a while), so a large fleet never stalls the IED servers;
        otherwise they are all sent now.
        """
        if self._client is None or not self.connected:
            self.skipped_intervals += 1
            return 0
        t0 = time.perf_counter()
        ids = list(readings.ids)
        own = self._own_meters(ids, getattr(readings, "group_ids", None))
        columns_all = {
            name: np.asarray(getattr(readings, name)) for name in STANDARD_COLUMNS if hasattr(readings, name)
        }
        if own is not None:
            ids = [ids[i] for i in own]
            columns_all = {name: values[own] for name, values in columns_all.items()}
        if self.meters is not None:
            ids = ids[: self.meters]
        n_all = len(ids)
        columns_all = {name: values[:n_all] for name, values in columns_all.items()}
        planned = 0
        for concentrator, index in self._concentrators(ids):
            parts = max(1, -(-len(index) // self.batch_size))
            for part in range(parts):
                chunk = index[part * self.batch_size : (part + 1) * self.batch_size]
                self._queue.append((concentrator, part, parts, reading_time, ids, chunk, columns_all))
                planned += 1
        self.readings_published += n_all
        self.last_meter_count = n_all
        self.intervals += 1
        if not spread:
            self.pump()
        self.last_publish_ms = (time.perf_counter() - t0) * 1e3
        return planned

    def pump(self, max_messages: int | None = None) -> int:
        """Encode and send queued messages (all, or at most `max_messages`); returns how many."""
        client = self._client
        sent = 0
        while self._queue and (max_messages is None or sent < max_messages):
            if client is None or not self.connected:
                self.dropped_messages += len(self._queue)
                self._queue.clear()
                break
            concentrator, part, parts, reading_time, ids, chunk, columns = self._queue.popleft()
            seq = self._seq.get(concentrator, -1) + 1
            self._seq[concentrator] = seq
            payload = encode_batch(
                substation_id=self.substation_id,
                concentrator_id=concentrator,
                seq=seq,
                reading_time=reading_time,
                interval_s=self.interval_s,
                meter_ids=[ids[i] for i in chunk],
                columns={name: values[chunk] for name, values in columns.items()},
                part=part,
                parts=parts,
            )
            client.publish(topic_for(self.cfg.topic, concentrator), payload, qos=1)
            self.messages += 1
            self.bytes += len(payload)
            sent += 1
        return sent

    @property
    def pending(self) -> int:
        return len(self._queue)

    def status(self) -> dict[str, Any]:
        return {
            "broker": f"{self.cfg.broker_host}:{self.cfg.broker_port}",
            "connected": self.connected,
            "meters": self.last_meter_count,
            "intervals": self.intervals,
            "skipped_intervals": self.skipped_intervals,
            "messages": self.messages,
            "pending_messages": len(self._queue),
            "dropped_messages": self.dropped_messages,
            "readings": self.readings_published,
            "bytes": self.bytes,
            "last_publish_ms": round(self.last_publish_ms, 2),
            "dr_events": self.dr_events,
            "dr_rejected": self.dr_rejected,
        }
