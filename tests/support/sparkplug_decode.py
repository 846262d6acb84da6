"""Decode Sparkplug B payloads with pysparkplug (not Stima's code), for the tests: reads one JSON
object on stdin, `{"birth": hex, "data": [hex, ...]}` (a DBIRTH and DDATA payloads of its
device), and prints `{"birth": [metric, ...], "data": [[metric, ...], ...]}`, aliases of the
data resolved through the birth as a host does.

Runs with pysparkplug and its own paho-mqtt 1.x from a separate folder on PYTHONPATH (`make deps`
installs them into .venv/sparkplug-host), as a process of its own.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pysparkplug as ps
from pysparkplug import _protobuf as pb


def _metric(m: Any, raw: Any) -> dict[str, Any]:
    """pysparkplug's reading of a metric, with the property set (which it leaves out) from the
    protobuf message it parsed."""
    props = {}
    for key, value in zip(raw.properties.keys, raw.properties.values, strict=True):
        field = value.WhichOneof("value")
        props[key] = None if field is None else getattr(value, field)
    return {
        "name": m.name,
        "alias": m.alias,
        "datatype": int(m.datatype),
        "value": m.value,
        "is_null": m.is_null,
        "is_historical": m.is_historical,
        "timestamp": m.timestamp,
        "properties": props,
    }


def _metrics(payload: Any, raw: bytes) -> list[dict[str, Any]]:
    return [_metric(m, r) for m, r in zip(payload.metrics, pb.Payload.FromString(raw).metrics, strict=True)]


def main() -> int:
    request = json.loads(sys.stdin.read())
    birth_raw = bytes.fromhex(request["birth"])
    birth = ps.DBirth.decode(birth_raw)
    data = [(ps.DData.decode(raw, birth=birth), raw) for raw in map(bytes.fromhex, request["data"])]
    json.dump({"birth": _metrics(birth, birth_raw), "data": [_metrics(d, raw) for d, raw in data]}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
