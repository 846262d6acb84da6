"""Two gateways on one simulator, through one broker or through a regional broker bridged to a
central one: each daemon up with its own certificate and publishing its own subtree, the ACL
refusing another's subtree (MQTT 5 PUBACK reason), coordination messages crossing the bridge."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from hil.rig import TwoRig, two_site_documents

pytestmark = pytest.mark.slow


class _Client:
    """An MQTT 5 client with a rig certificate, recording messages and PUBACK reason codes."""

    def __init__(self, rig: TwoRig, who: str, broker: str) -> None:
        self.messages: list[str] = []
        self.acks: dict[int, int] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{who}-{broker}", protocol=mqtt.MQTTv5)
        self.client.tls_set(**rig.client_tls(who))
        self.client.on_message = self._message
        self.client.on_publish = self._published
        connected = threading.Event()
        self.client.on_connect = lambda *_a: connected.set()
        self.client.connect("127.0.0.1", rig.ports[broker], clean_start=True)
        self.client.loop_start()
        # a subscribe sent before the CONNACK is lost: wait for the session (a loaded machine is slow)
        if not connected.wait(30.0):
            raise RuntimeError(f"test client {who} did not connect to the {broker} broker")

    def _message(self, _c: Any, _u: Any, message: Any) -> None:
        with self.lock:
            self.messages.append(message.topic)

    def _published(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self.lock:
            self.acks[mid] = int(reason.value)

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        info = self.client.publish(topic, payload, qos=1, properties=Properties(PacketTypes.PUBLISH))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.lock:
                if info.mid in self.acks:
                    return self.acks[info.mid]
            time.sleep(0.01)
        raise TimeoutError(f"no PUBACK for {topic}")

    def seen(self, prefix: str) -> bool:
        with self.lock:
            return any(t.startswith(prefix) for t in self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("bridged", [False, True], ids=["one-broker", "bridged"])
def test_two_gateways_one_simulator(tmp_path: Path, bridged: bool) -> None:
    with TwoRig(two_site_documents(), tmp_path, bridged=bridged, hil_args=("--no-ami",)) as rig:
        base = f"{rig.prefix}/{rig.region}"
        # each daemon: its own state directory, client id and certificate, every IED online
        states = {sub: rig.daemon_call(sub, "status") for sub in rig.subs}
        assert all(s["uplink"]["state"] == "connected" for s in states.values())
        assert (tmp_path / "SUB-006" / "state").is_dir() and (tmp_path / "SUB-007" / "state").is_dir()
        # SCADA (on the central broker when bridged) sees both subtrees, one of them across the bridge
        scada = _Client(rig, "scada", "central" if bridged else "regional")
        scada.client.subscribe(f"{base}/#", qos=1)
        rig.wait(lambda: all(scada.seen(f"{base}/{sub}/") for sub in rig.subs), "both subtrees at SCADA", 60.0)
        # the ACL: SUB-006's certificate may publish in its own subtree only (its messages to a
        # neighbour included), not in SUB-007's (MQTT 5: PUBACK reason 135, not authorized); SUB-007
        # reads what is addressed to it
        gw6 = _Client(rig, "SUB-006", rig.broker_of["SUB-006"])
        gw7 = _Client(rig, "SUB-007", rig.broker_of["SUB-007"])
        gw7.client.subscribe(f"{base}/+/coord/SUB-007", qos=1)
        time.sleep(0.5)
        assert gw6.publish(f"{base}/SUB-007/cmd/rebirth") == 135
        assert gw6.publish(f"{base}/SUB-006/test/allowed") in (0, 16)
        assert gw6.publish(f"{base}/SUB-006/coord/SUB-007") in (0, 16)
        rig.wait(lambda: gw7.seen(f"{base}/SUB-006/coord/SUB-007"), "a coordination message at SUB-007", 20.0)
        for client in (scada, gw6, gw7):
            client.close()
        hil = rig.hil_call("status")
        assert hil["substation_ids"] == ["SUB-006", "SUB-007"] and not hil["parallel"]
