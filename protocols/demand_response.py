"""Demand-response events to the data concentrators and their confirmations, on the AMI broker.

The head-end (the gateway's demand-response coordinator) sends an event to a concentrator (one
per meter group) on the site's `[ami] dr_event_topic` with the concentrator id in place of `+`;
the concentrator answers, per meter, on `dr_confirm_topic`. Both payloads are msgpack maps, like
the readings of the same feed; docs/ami.md#demand-response is the contract, and `encode_*` /
`decode_*` here its one implementation. A payload that does not fit raises `DrPayloadError`
naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from gateway.contract.demand_response import ANSWERS, DrConfirmation, DrEvent, DrPayloadError

FORMAT_VERSION = 1


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _pack(body: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _unpack(payload: bytes) -> Mapping[str, Any]:
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types
        raise DrPayloadError(f"not msgpack: {exc}") from None
    if not isinstance(data, dict):
        raise DrPayloadError("payload must be a map")
    if data.get("v") != FORMAT_VERSION:
        raise DrPayloadError(f"v must be {FORMAT_VERSION}, found {data.get('v')!r}")
    return data


def encode_event(event: DrEvent) -> bytes:
    body: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "event_id": event.event_id,
        "program": event.program,
        "concentrator_id": event.concentrator_id,
        "start": float(event.start),
        "duration_s": float(event.duration_s),
        "issued_at": float(event.issued_at),
    }
    if event.reduction_pct is not None:
        body["reduction_pct"] = float(event.reduction_pct)
    if event.meters is not None:
        body["meters"] = list(event.meters)
    return _pack(body)


def decode_event(payload: bytes) -> DrEvent:
    data = _unpack(payload)
    meters = data.get("meters")
    if meters is not None and not isinstance(meters, list):
        raise DrPayloadError("meters must be an array of meter ids")
    try:
        return DrEvent(
            event_id=data.get("event_id"),  # type: ignore[arg-type]
            program=data.get("program"),  # type: ignore[arg-type]
            concentrator_id=data.get("concentrator_id"),  # type: ignore[arg-type]
            start=data.get("start"),  # type: ignore[arg-type]
            duration_s=data.get("duration_s"),  # type: ignore[arg-type]
            reduction_pct=data.get("reduction_pct"),
            meters=tuple(meters) if meters is not None else None,
            issued_at=float(data.get("issued_at", 0.0)) if _finite(data.get("issued_at", 0.0)) else 0.0,
        )
    except TypeError as exc:
        raise DrPayloadError(str(exc)) from None


def encode_confirmation(conf: DrConfirmation) -> bytes:
    return _pack(
        {
            "v": FORMAT_VERSION,
            "event_id": conf.event_id,
            "substation_id": conf.substation_id,
            "concentrator_id": conf.concentrator_id,
            "time": float(conf.time),
            "meters": list(conf.meters),
            "answers": list(conf.answers),
            "demand_kw": [float(x) for x in conf.demand_kw],
            "error": conf.error,
        }
    )


def decode_confirmation(payload: bytes) -> DrConfirmation:
    data = _unpack(payload)
    lists = {k: data.get(k) for k in ("meters", "answers", "demand_kw")}
    for key, value in lists.items():
        if not isinstance(value, list):
            raise DrPayloadError(f"{key} must be an array")
    if not all(_finite(x) for x in lists["demand_kw"]):  # type: ignore[union-attr]
        raise DrPayloadError("demand_kw must hold finite numbers")
    if not _finite(data.get("time")):
        raise DrPayloadError(f"time must be POSIX seconds, found {data.get('time')!r}")
    return DrConfirmation(
        event_id=str(data.get("event_id", "")),
        substation_id=str(data.get("substation_id", "")),
        concentrator_id=str(data.get("concentrator_id", "")),
        time=float(data["time"]),
        meters=tuple(str(m) for m in lists["meters"]),  # type: ignore[union-attr]
        answers=tuple(str(a) for a in lists["answers"]),  # type: ignore[union-attr]
        demand_kw=tuple(float(x) for x in lists["demand_kw"]),  # type: ignore[union-attr]
        error=str(data.get("error", "")),
    )


def topic_for(pattern: str, concentrator_id: str) -> str:
    """The concrete topic of one concentrator from a site pattern with one `+`."""
    return pattern.replace("+", concentrator_id, 1)


def concentrator_of(pattern: str, topic: str) -> str | None:
    """The level of `topic` that the pattern's `+` matches (None when it does not match)."""
    p_levels, t_levels = pattern.split("/"), topic.split("/")
    if len(p_levels) != len(t_levels):
        return None
    found = None
    for p, t in zip(p_levels, t_levels, strict=True):
        if p == "+":
            found = t
        elif p != t:
            return None
    return found


def answers_count(answers: Sequence[str]) -> dict[str, int]:
    return {a: sum(1 for x in answers if x == a) for a in ANSWERS}
