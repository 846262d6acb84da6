"""The ports between the gateway and its adapters: what an adapter offers and what it is handed.

An adapter owns one link (an IED, the uplink broker); it hands decoded samples to a `Sink`,
carries out writes most urgent first (`Priority`), refuses with `CommandError`, reports its link
in an `AdapterStatus`, and keeps what must outlive a restart in a `Spool`. The gateway's core
programs against these names only, never against an adapter's module.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.contract.points import PointBlock, PointUpdate

Sink = Callable[[Sequence[PointUpdate] | PointBlock], None]
"""Where an adapter hands its samples: a list of updates, or one block read as columns."""


class Priority(enum.IntEnum):
    """Lower runs first. Protection trips pre-empt operator controls, which pre-empt reads."""

    PROTECTION = 0
    CONTROL = 1
    SETPOINT = 2


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"
    STOPPED = "stopped"


class CommandError(Exception):
    """A write or operate was refused or failed; the message says why."""


@dataclass
class AdapterStatus:
    ied_id: str
    protocol: str
    endpoint: str
    state: LinkState = LinkState.CONNECTING
    last_poll_time: float | None = None
    last_ok_time: float | None = None
    polls: int = 0
    poll_errors: int = 0
    writes: int = 0
    write_errors: int = 0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ied": self.ied_id,
            "protocol": self.protocol,
            "endpoint": self.endpoint,
            "state": self.state.value,
            "last_poll_time": self.last_poll_time,
            "last_ok_time": self.last_ok_time,
            "polls": self.polls,
            "poll_errors": self.poll_errors,
            "writes": self.writes,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            **self.extra,
        }


class Adapter(Protocol):
    """The shape every adapter has; the daemon picks the class by the IED's `protocol`."""

    ied_id: str
    status: AdapterStatus
    poll_phase: float

    async def run(self) -> None:
        """Poll / subscribe until cancelled. Never returns on link errors: it reconnects."""

    def submit_write(
        self, point_id: str, value: float | int | bool, priority: Priority = Priority.CONTROL
    ) -> asyncio.Future[float | None]:
        """Queue a write ahead of routine reads; the future fails with CommandError.

        On success the future's result is the monotonic time at which the request was handed
        to the transport (None where the adapter cannot tell), for latency accounting.
        """

    async def close(self) -> None:
        """Drop the link and fail any queued writes."""

    def set_sink(self, sink: Sink) -> None:
        """Deliver decoded updates to `sink` from now on (reload hand-over)."""


class Spool(Protocol):
    """The durable store-and-forward queue the uplink needs (the daemon hands it the database).

    Messages are (topic, payload, qos, created) rows with ids that only grow; a snapshot is a
    small value kept by key (the Sparkplug birth/death sequence).
    """

    def spool_append(self, rows: list[tuple[str, bytes, int, float]]) -> list[int]:
        """Insert the rows in one transaction, all or none; their ids."""

    def spool_peek(self, after: int = 0, limit: int = 100) -> list[tuple[int, str, bytes, int]]:
        """Up to `limit` (id, topic, payload, qos) rows with ids above `after`, oldest first."""

    def spool_remove(self, seqs: list[int]) -> int:
        """Delete acknowledged messages; how many were still there."""

    def spool_drop_oldest(self, count: int) -> tuple[int, int]:
        """Drop the `count` oldest messages; (how many were dropped, highest id dropped)."""

    def spool_depth(self) -> int:
        """Messages waiting."""

    def spool_last_id(self) -> int:
        """Highest id ever handed out (0 for a new spool)."""

    def wal_checkpoint(self) -> tuple[int, int, int]:
        """Flush the write-ahead log; safe from any thread (the uplink runs it off the event loop)."""

    def save_snapshot(self, key: str, value: Any, now: float) -> None:
        """Keep `value` under `key`, replacing the previous one."""

    def load_snapshot(self, key: str) -> Any | None:
        """The value kept under `key`, or None."""
