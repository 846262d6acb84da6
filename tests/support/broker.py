"""Test support on top of hil.broker: the broker itself and a recording MQTT subscriber."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from hil.broker import Broker, TlsFiles, free_port, make_tls_files, run_mosquitto

__all__ = ["Broker", "Subscriber", "TlsFiles", "free_port", "make_tls_files", "run_mosquitto", "subscriber"]


class Subscriber:
    """A paho MQTT 5 client recording every message it receives (msgpack decoded when possible).

    With `session_expiry_s` the broker keeps its subscription and queues messages while it is
    away (including across a restart of a persistent broker); it reconnects by itself.
    """

    def __init__(
        self, broker: Broker, topic: str = "#", *, client_id: str | None = None, session_expiry_s: int = 0
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.broker = broker
        self.topic = topic
        self.messages: list[tuple[str, Any, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=mqtt.MQTTv5)
        if broker.tls is not None:
            self.client.tls_set(**broker.client_tls_kwargs())
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # floats work
        self._subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self._props = Properties(PacketTypes.CONNECT)
        if session_expiry_s:
            self._props.SessionExpiryInterval = session_expiry_s
        self._clean_start = session_expiry_s == 0

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        import msgpack

        try:
            payload = msgpack.unpackb(msg.payload, raw=False, strict_map_key=False)
        except Exception:
            payload = msg.payload
        with self._cond:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
            self._cond.notify_all()

    def start(self, timeout_s: float = 30.0) -> Subscriber:
        self.client.connect(
            self.broker.host, self.broker.port, 30, clean_start=self._clean_start, properties=self._props
        )
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.client.loop_stop()
            raise RuntimeError("test subscriber did not connect and subscribe")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> bool:
        """Wait until `predicate(messages)` is true; False if it is not by the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    async def until(self, predicate: Any, timeout_s: float = 30.0) -> bool:
        """`wait_for` for code running in an event loop (which must stay free meanwhile)."""
        import asyncio

        for _ in range(int(timeout_s / 0.01) + 1):
            with self._cond:
                if predicate(self.messages):
                    return True
            await asyncio.sleep(0.01)
        with self._cond:
            return bool(predicate(self.messages))

    def on_prefix(self, below_base: str) -> list[Any]:
        """Payloads of the messages whose topic has `/below_base` in it (e.g. "notices/"), in arrival order."""
        with self._cond:
            return [p for t, p, _ in self.messages if "/" + below_base in t]

    def on(self, topic_end: str) -> list[Any]:
        """Payloads of the messages whose topic ends with `/topic_end`, in arrival order."""
        with self._cond:
            return [p for t, p, _ in self.messages if t.endswith("/" + topic_end)]


@contextlib.contextmanager
def subscriber(broker: Broker, topic: str = "#", **kwargs: Any) -> Iterator[Subscriber]:
    sub = Subscriber(broker, topic, **kwargs).start()
    try:
        yield sub
    finally:
        sub.stop()
