"""Shared by the parts that run the whole rig: a broker log that keeps every message, and a
regional SCADA that keeps signed commands in flight."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from gateway.commands import sign_command
from hil.broker import TlsFiles
from hil.rig import Rig, example_document


def example_with_commands(workdir: Path) -> tuple[dict[str, Any], bytes]:
    """The example site with signed remote commands on (a fresh key in `workdir`)."""
    doc = example_document()
    workdir.mkdir(parents=True, exist_ok=True)
    key_file = workdir / "command.key"
    key_file.write_bytes(os.urandom(32).hex().encode())
    key_file.chmod(0o600)
    doc["uplink"]["commands"] = {
        **doc["uplink"].get("commands", {}),
        "enabled": True,
        "scheme": "hmac",
        "key_file": str(key_file),
    }
    return doc, key_file.read_bytes().strip()


def base_topic(rig: Rig) -> str:
    site = rig.doc["site"]
    return f"{rig.doc['uplink']['topic_prefix']}/{site['region']}/{site['substation_id']}"


RETAINED_COPY = "_retained_copy"
"""Key set on a message the broker delivered as a retained copy at subscription."""


class BrokerLog:
    """Every message under the gateway's prefix, as SCADA would receive it (QoS 1, one session
    for the whole run)."""

    def __init__(self, tls: TlsFiles, port: int, base: str, client_id: str = "reliability-scada") -> None:
        self.base = base
        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(tls.ca_file), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.disconnects = 0
        """Times this subscriber lost the broker (what was published meanwhile it never sees)."""
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(15):
            raise TimeoutError("the SCADA client could not connect to the broker")

    def _on_connect(self, client: Any, *_a: Any) -> None:
        client.subscribe(f"{self.base}/#", qos=1)
        self.connected.set()

    def _on_disconnect(self, *_a: Any) -> None:
        self.disconnects += 1
        self.connected.clear()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = msgpack.unpackb(msg.payload, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - counted as it came
            payload = {"raw": bytes(msg.payload)}
        if not isinstance(payload, dict):
            payload = {"value": payload}
        if msg.retain:  # a retained copy the broker hands over at subscription: published before it
            payload[RETAINED_COPY] = True
        suffix = msg.topic[len(self.base) + 1 :]
        with self.lock:
            self.messages.append((time.monotonic(), suffix, payload))
            if suffix.startswith("cmd_result") and isinstance(payload.get("id"), str):
                self.results[payload["id"]] = payload

    def spooled(self) -> list[tuple[float, str, dict[str, Any]]]:
        """Messages that came through the spool (they carry its `msg_id`) while this subscriber
        was subscribed. Retained copies handed over at subscription are left out: they were
        published before it, so the ones published between them and the subscription (never
        sent to this client) would count as gaps."""
        with self.lock:
            return [m for m in self.messages if isinstance(m[2].get("msg_id"), int) and not m[2].get(RETAINED_COPY)]

    def stop(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


class Scada:
    """Opens and closes one breaker with signed select-before-operate commands, one after the
    other, for as long as it runs; counts what it sent and what came back."""

    def __init__(self, log: BrokerLog, key: bytes, substation: str, breaker: str) -> None:
        self.log, self.key, self.substation, self.breaker = log, key, substation, breaker
        self.sent: Counter[str] = Counter()
        """Operate commands published, by action."""
        self.ok: Counter[str] = Counter()
        """Operate commands answered ok, by action."""
        self.refused: Counter[str] = Counter()
        self.unanswered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Scada:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)

    def _send(self, command: str, args: dict[str, Any]) -> dict[str, Any] | None:
        envelope = sign_command(self.key, command, args, "reliability-scada", time.time(), substation=self.substation)
        self.log.client.publish(f"{self.log.base}/cmd/{command}", msgpack.packb(envelope, use_bin_type=True), qos=1)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not self._stop.is_set():
            with self.log.lock:
                result = self.log.results.get(envelope["id"])
            if result is not None:
                return result
            time.sleep(0.02)
        return None

    def _run(self) -> None:
        action = "open"
        while not self._stop.is_set():
            selected = self._send("breaker/select", {"breaker": self.breaker, "action": action})
            if not selected or not selected.get("ok"):
                time.sleep(0.2)
                continue
            self.sent[action] += 1
            result = self._send(
                "breaker/operate",
                {"breaker": self.breaker, "action": action, "select_id": str(selected.get("select_id", ""))},
            )
            if result is None:
                self.unanswered += 1
            elif result.get("ok"):
                self.ok[action] += 1
                action = "close" if action == "open" else "open"
            else:
                self.refused[action] += 1
                if "already" in str(result.get("error", "")):
                    action = "close" if action == "open" else "open"
            time.sleep(0.3)
