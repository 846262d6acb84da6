"""What the southbound adapters share, and the registry the wiring picks them from.

The ports they implement are in `gateway.contract.ports`. An adapter owns one IED's link:
connection, timers, retries, backoff and reconnects. It turns wire data into `PointUpdate`s
handed to `sink`, and carries out writes (breaker commands, set-points) ahead of its routine
reads, most urgent first. It knows nothing of grid logic.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.contract.clock import Clock
from gateway.contract.points import COMM_FAILURE, PointUpdate
from gateway.contract.ports import Adapter, AdapterStatus, CommandError, LinkState, Priority, Sink


@dataclass(order=True)
class QueuedWrite:
    priority: int
    seq: int
    point_id: str = field(compare=False)
    value: float | int | bool = field(compare=False)
    future: asyncio.Future[float | None] = field(compare=False)
    queued_monotonic: float = field(compare=False, default=0.0)


class WriteQueue:
    """Writes waiting for the link, most urgent first and in arrival order within a priority."""

    def __init__(self) -> None:
        self._heap: asyncio.PriorityQueue[QueuedWrite] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self.wakeup = asyncio.Event()

    def new_item(self, point_id: str, value: float | int | bool, priority: Priority, now: float) -> QueuedWrite:
        """A write numbered in this queue's order, whichever path carries it out."""
        future: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        return QueuedWrite(int(priority), next(self._seq), point_id, value, future, now)

    def put(
        self, point_id: str, value: float | int | bool, priority: Priority, now: float
    ) -> asyncio.Future[float | None]:
        item = self.new_item(point_id, value, priority, now)
        self.put_item(item)
        return item.future

    def put_item(self, item: QueuedWrite) -> None:
        """Queue a write, or one handed back by another path, keeping its future and its place."""
        self._heap.put_nowait(item)
        self.wakeup.set()

    def pop(self) -> QueuedWrite | None:
        try:
            item = self._heap.get_nowait()
        except asyncio.QueueEmpty:
            self.wakeup.clear()
            return None
        return item

    def __len__(self) -> int:
        return self._heap.qsize()

    def fail_all(self, reason: str) -> None:
        while (item := self.pop()) is not None:
            if not item.future.done():
                item.future.set_exception(CommandError(reason))


class PolledAdapter:
    """What every adapter does alike: link health, invalid marking, and queueing writes.

    Subclasses set `cfg` (with `id`, `points`, `poll_period_ms`), `status`, `_sink`, `_clock`
    and `_log`, then call `_init_health()`. Points go invalid (communication failure) as soon
    as the link is lost, or once no data has arrived for two poll periods.
    """

    cfg: Any
    ied_id: str
    status: AdapterStatus
    _sink: Sink
    _clock: Clock
    _log: logging.Logger

    poll_phase: float = 0.0
    """Fraction of the poll period by which this IED's polls are shifted. The daemon spreads
    its IEDs over the period so their answers do not all land in one burst."""

    def set_sink(self, sink: Sink) -> None:
        """Deliver decoded updates to `sink` from now on: a reload hands a running adapter, link
        and queued writes included, to the new configuration when its IED is unchanged."""
        self._sink = sink

    def _init_health(self) -> None:
        self._period = self.cfg.poll_period_ms / 1000.0
        self._writes = WriteQueue()
        self._closing = False
        self._stale_marked = False
        self._last_ok_mono = self._clock.monotonic()

    def _mark_ok(self, monotonic: float | None = None) -> None:
        self.status.last_ok_time = self._clock.wall()
        self._last_ok_mono = self._clock.monotonic() if monotonic is None else monotonic
        self._stale_marked = False

    def _mark_all_invalid(self) -> None:
        if self._stale_marked or self._closing:
            return
        self._stale_marked = True
        mono, wall = self._clock.monotonic(), self._clock.wall()
        self._sink(
            [
                PointUpdate(point_id=p.id, value=None, quality=COMM_FAILURE, receive_monotonic=mono, receive_time=wall)
                for p in self.cfg.points
            ]
        )

    def _link_lost(self, why: str) -> None:
        was_online = self.status.state is LinkState.ONLINE
        self.status.state = LinkState.OFFLINE
        self.status.last_error = why
        if was_online:
            self._log.warning("link lost", extra={"ied": self.ied_id, "reason": why})
        self._mark_all_invalid()

    async def _staleness_watchdog(self) -> None:
        """Mark every point invalid once nothing has arrived for two poll periods."""
        limit = 2 * self._period
        while True:
            # sleep until exactly two periods after the last data (re-checked if data came meanwhile)
            silent_s = self._clock.monotonic() - self._last_ok_mono
            await asyncio.sleep(self._period if self._stale_marked else max(limit - silent_s, self._period / 8))
            if self._clock.monotonic() - self._last_ok_mono >= limit and not self._stale_marked:
                self._log.warning("no data for two poll periods", extra={"ied": self.ied_id})
                self._mark_all_invalid()

    def _queue_write(
        self, point_id: str, value: float | int | bool, priority: Priority, refusal: str | None
    ) -> asyncio.Future[Any]:
        """Queue a write, or answer at once with CommandError(`refusal`) or a link-state refusal.

        Protection writes are queued even while the link is down: they go out on reconnect.
        """
        if refusal is None and self.status.state is not LinkState.ONLINE and priority is not Priority.PROTECTION:
            refusal = f"{self.ied_id} is {self.status.state.value}"
        if refusal is not None:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(CommandError(refusal))
            return future
        return self._enqueue(point_id, value, priority)

    def _enqueue(self, point_id: str, value: float | int | bool, priority: Priority) -> asyncio.Future[Any]:
        return self._writes.put(point_id, value, priority, self._clock.monotonic())


AdapterFactory = Callable[..., Adapter]
"""Adapters share one constructor: (ied_config, sink, clock, logger)."""

_REGISTRY = {
    "modbus_tcp": ("protocols.modbus", "ModbusTcpMaster"),
    "modbus_rtu": ("protocols.modbus", "ModbusRtuMaster"),
    "iec61850": ("protocols.iec61850", "Iec61850Client"),
}


def adapter_class(protocol: str) -> AdapterFactory:
    import importlib

    module_name, class_name = _REGISTRY[protocol]
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]


def make_adapter(ied_config: Any, sink: Sink, clock: Clock, logger: logging.Logger) -> Adapter:
    return adapter_class(ied_config.protocol)(ied_config, sink, clock, logger)
