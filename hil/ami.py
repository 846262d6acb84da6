"""Simulated data concentrators: the model's smart-meter readings published on the AMI broker.

One concentrator per meter group (its id is the group id), as on a real feeder where a
concentrator sits at each distribution transformer. Once per reading interval each
concentrator publishes all its meters in messages of at most `batch_size` meters, in the
format of `protocols.ami` (docs/ami.md), QoS 1, on the site's `[ami] topic` with `+` filled in.

Publishing happens on the simulator's event loop; paho's network thread does the sending.
While the broker is unreachable, readings are skipped and counted rather than queued.
"""

from __future__ import annotations

import asyncio
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

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected = not getattr(reason, "is_failure", False)
        if self.connected:
            log.info("AMI: connected to %s:%d", self.cfg.broker_host, self.cfg.broker_port)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            log.warning("AMI: broker connection lost (%s)", reason)
        self.connected = False

    async def start(self, connect_timeout_s: float = 2.0) -> None:
        """Connect in the background; wait a little for the broker, but start without it."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
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
            log.warning("AMI: broker %s:%d not reachable yet; readings are skipped until it is",
                        self.cfg.broker_host, self.cfg.broker_port)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        self.connected = False

    def _concentrators(self, ids: list[str]) -> list[tuple[str, np.ndarray]]:
        """(concentrator id, indices into the readings) per meter group, cached while ids stay."""
        key = (len(ids), ids[0] if ids else None, ids[-1] if ids else None)
        if key == self._plan_key:
            return self._plan
        groups: dict[str, list[int]] = {}
        for i, meter_id in enumerate(ids):
            prefix = meter_id.rsplit("-", 1)[0]
            groups.setdefault(self._prefixes.get(prefix, UNASSIGNED), []).append(i)
        self._plan = [(dc, np.asarray(idx, dtype=np.intp)) for dc, idx in groups.items()]
        self._plan_key = key
        return self._plan

    def publish(self, readings: Any, reading_time: float) -> int:
        """Publish one reading of every meter; returns the number of messages queued."""
        client = self._client
        if client is None or not self.connected:
            self.skipped_intervals += 1
            return 0
        t0 = time.perf_counter()
        ids = list(readings.ids)
        if self.meters is not None:
            ids = ids[: self.meters]
        n_all = len(ids)
        columns_all = {name: np.asarray(getattr(readings, name))[:n_all]
                       for name in STANDARD_COLUMNS if hasattr(readings, name)}
        sent = 0
        for concentrator, index in self._concentrators(ids):
            parts = max(1, -(-len(index) // self.batch_size))
            topic = topic_for(self.cfg.topic, concentrator)
            for part in range(parts):
                chunk = index[part * self.batch_size:(part + 1) * self.batch_size]
                seq = self._seq.get(concentrator, -1) + 1
                self._seq[concentrator] = seq
                payload = encode_batch(
                    substation_id=self.substation_id, concentrator_id=concentrator, seq=seq,
                    reading_time=reading_time, interval_s=self.interval_s,
                    meter_ids=[ids[i] for i in chunk],
                    columns={name: values[chunk] for name, values in columns_all.items()},
                    part=part, parts=parts,
                )
                client.publish(topic, payload, qos=1)
                self.messages += 1
                self.bytes += len(payload)
                sent += 1
        self.readings_published += n_all
        self.last_meter_count = n_all
        self.intervals += 1
        self.last_publish_ms = (time.perf_counter() - t0) * 1e3
        log.debug("AMI: %d readings in %d messages (%.1f ms)", n_all, sent, self.last_publish_ms)
        return sent

    def status(self) -> dict[str, Any]:
        return {
            "broker": f"{self.cfg.broker_host}:{self.cfg.broker_port}",
            "connected": self.connected,
            "meters": self.last_meter_count,
            "intervals": self.intervals,
            "skipped_intervals": self.skipped_intervals,
            "messages": self.messages,
            "readings": self.readings_published,
            "bytes": self.bytes,
            "last_publish_ms": round(self.last_publish_ms, 2),
        }
