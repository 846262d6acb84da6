"""A Sparkplug B host application made of pysparkplug (Eclipse Sparkplug B in Python, not Stima's
code), for the tests: it prints every message it receives as one JSON line on stdout and takes
commands on stdin, one per line: `rebirth` (NCMD Node Control/Rebirth), `online` and `offline`
(its STATE as the primary host application).

Runs with pysparkplug and its own paho-mqtt 1.x from a separate folder on PYTHONPATH (`make deps`
installs them into .venv/sparkplug-host), as a process of its own.

    python sparkplug_host.py HOST PORT CA CERT KEY GROUP EDGE_NODE HOST_ID
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import pysparkplug as ps


def _metric(m: Any) -> dict[str, Any]:
    value = m.value
    if isinstance(value, bytes):
        value = value.hex()
    return {
        "name": m.name,
        "alias": m.alias,
        "datatype": int(m.datatype),
        "value": value,
        "is_historical": m.is_historical,
        "is_null": m.is_null,
        "timestamp": m.timestamp,
    }


_out = threading.Lock()


def _emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, whole: paho's thread (messages) and the main one (`ready`,
    `done`) both print, and `print` writes the text and its newline apart, so two unlocked lines
    can interleave into one that is not JSON."""
    line = json.dumps(obj) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


def main() -> int:
    host, port, ca, cert, key, group, node, host_id = sys.argv[1:9]
    client = ps.Client(
        client_id=f"sparkplug-host-{time.time_ns()}",
        transport_config=ps.TLSConfig(ca_certs=ca, certfile=cert, keyfile=key),
    )

    def on_message(_client: Any, message: Any) -> None:
        topic, payload = message.topic, message.payload
        out: dict[str, Any] = {
            "type": str(getattr(topic.message_type, "value", topic.message_type)),
            "group": topic.group_id,
            "node": topic.edge_node_id,
            "device": topic.device_id,
            "retain": message.retain,
        }
        if isinstance(payload, ps.State):
            out.update(online=payload.online, timestamp=payload.timestamp, host=topic.sparkplug_host_id)
        else:
            metrics = [payload.bd_seq_metric] if isinstance(payload, ps.NDeath) else list(payload.metrics)
            out.update(
                seq=getattr(payload, "seq", None),
                timestamp=getattr(payload, "timestamp", None),
                metrics=[_metric(m) for m in metrics],
            )
        _emit(out)

    client.connect(host, port=int(port), blocking=False)
    time.sleep(1.0)
    client.subscribe(ps.Topic(group_id=group, message_type=ps.MULTI_LEVEL_WILDCARD), ps.QoS.AT_LEAST_ONCE, on_message)
    _emit({"type": "ready"})
    for line in sys.stdin:
        command = line.strip()
        if command == "rebirth":
            metric = ps.Metric(
                timestamp=ps.get_current_timestamp(),
                name="Node Control/Rebirth",
                datatype=ps.DataType.BOOLEAN,
                value=True,
            )
            client.publish(
                ps.Message(
                    topic=ps.Topic(group_id=group, message_type=ps.MessageType.NCMD, edge_node_id=node),
                    payload=ps.NCmd(timestamp=ps.get_current_timestamp(), metrics=(metric,)),
                    qos=ps.QoS.AT_LEAST_ONCE,
                    retain=False,
                ),
                include_dtypes=True,
            )
        elif command in ("online", "offline"):
            client.publish(
                ps.Message(
                    topic=ps.Topic(sparkplug_host_id=host_id, message_type=ps.MessageType.STATE),
                    payload=ps.State(timestamp=ps.get_current_timestamp(), online=command == "online"),
                    qos=ps.QoS.AT_LEAST_ONCE,
                    retain=True,
                )
            )
        elif command == "quit":
            break
        _emit({"type": "done", "command": command})
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
