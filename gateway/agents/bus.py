"""The internal bus: publish-subscribe topics and direct agent-to-agent messages, by priority.

Sans-IO: `post` queues, `drain` hands back deliveries in order. Fault traffic (urgent messages
and everything on `fault_alerts`) comes out before anything else; direct messages before
ordinary publications; within a class, first in first out. The queue is bounded: when it is
full, the oldest non-urgent message is dropped and counted, never a fault message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.agents.actions import BusMessage, Topic

log = logging.getLogger(__name__)

PRIORITY_FAULT = 0
PRIORITY_DIRECT = 1
PRIORITY_TOPIC = 2


def priority_of(message: BusMessage) -> int:
    if message.urgent or message.topic is Topic.FAULT_ALERTS:
        return PRIORITY_FAULT
    return PRIORITY_DIRECT if message.target is not None else PRIORITY_TOPIC


@dataclass(frozen=True, slots=True)
class Delivery:
    recipient: str
    message: BusMessage


class Bus:
    def __init__(self, max_queued: int = 100_000) -> None:
        self._queue: list[tuple[int, int, BusMessage]] = []
        self._seq = itertools.count()
        self._subscribers: dict[Topic, list[str]] = {t: [] for t in Topic}
        self.max_queued = max_queued
        self.dropped = 0
        self.delivered = 0

    def subscribe(self, subscriber: str, *topics: Topic) -> None:
        for topic in topics:
            if subscriber not in self._subscribers[topic]:
                self._subscribers[topic].append(subscriber)

    def unsubscribe(self, subscriber: str) -> None:
        for subs in self._subscribers.values():
            if subscriber in subs:
                subs.remove(subscriber)

    def subscribers(self, topic: Topic) -> list[str]:
        return list(self._subscribers[topic])

    def post(self, message: BusMessage) -> None:
        prio = priority_of(message)
        if len(self._queue) >= self.max_queued:
            victim = max(
                (i for i, q in enumerate(self._queue) if q[0] != PRIORITY_FAULT),
                key=lambda i: (self._queue[i][0], -self._queue[i][1]),
                default=None,
            )
            if victim is None and prio != PRIORITY_FAULT:
                self.dropped += 1
                return
            if victim is not None:
                self._queue[victim] = self._queue[-1]
                self._queue.pop()
                heapq.heapify(self._queue)
                self.dropped += 1
        heapq.heappush(self._queue, (prio, next(self._seq), message))

    def post_all(self, messages: Iterable[BusMessage]) -> None:
        for m in messages:
            self.post(m)

    def __len__(self) -> int:
        return len(self._queue)

    def drain(self, limit: int | None = None) -> list[Delivery]:
        """Take queued messages in priority order and fan them out to their recipients."""
        out: list[Delivery] = []
        taken = 0
        while self._queue and (limit is None or taken < limit):
            _, _, message = heapq.heappop(self._queue)
            taken += 1
            if message.target is not None:
                out.append(Delivery(message.target, message))
            else:
                assert message.topic is not None
                out += [Delivery(s, message) for s in self._subscribers[message.topic] if s != message.source]
        self.delivered += len(out)
        return out
