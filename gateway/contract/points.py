"""The process image: every measured or commanded value the gateway knows, with quality.

Points are the only way data reaches agents and protection. Adapters turn wire data into
`PointUpdate`s; the image stores the latest value of each point and tells listeners.
Quality follows IEC 61850-7-3: good, invalid, questionable, with a reason (detail quality).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field


class PointKind(enum.Enum):
    ANALOG = "analog"
    BINARY = "binary"
    COUNTER = "counter"


class Validity(enum.Enum):
    GOOD = "good"
    INVALID = "invalid"
    QUESTIONABLE = "questionable"


class QualityReason(enum.Enum):
    """Why a value is not good (IEC 61850-7-3 detail quality, plus gateway causes)."""

    NONE = "none"
    NOT_YET_RECEIVED = "not_yet_received"
    COMMUNICATION_FAILURE = "communication_failure"
    OUT_OF_RANGE = "out_of_range"
    DEVICE_EXCEPTION = "device_exception"
    MALFORMED_RESPONSE = "malformed_response"
    OVERFLOW = "overflow"
    OSCILLATORY = "oscillatory"
    FAILURE = "failure"
    OLD_DATA = "old_data"
    INCONSISTENT = "inconsistent"
    INACCURATE = "inaccurate"
    SUBSTITUTED = "substituted"
    TEST = "test"
    OPERATOR_BLOCKED = "operator_blocked"


@dataclass(frozen=True, slots=True)
class Quality:
    validity: Validity = Validity.GOOD
    reason: QualityReason = QualityReason.NONE

    @property
    def good(self) -> bool:
        return self.validity is Validity.GOOD

    def __str__(self) -> str:
        if self.reason is QualityReason.NONE:
            return self.validity.value
        return f"{self.validity.value}({self.reason.value})"


GOOD = Quality()
NOT_YET_RECEIVED = Quality(Validity.INVALID, QualityReason.NOT_YET_RECEIVED)
COMM_FAILURE = Quality(Validity.INVALID, QualityReason.COMMUNICATION_FAILURE)


@dataclass(frozen=True, slots=True, kw_only=True)
class PointUpdate:
    """One new sample of one point, as an adapter decoded it."""

    point_id: str
    value: float | int | bool | None
    quality: Quality = GOOD
    source_time: float | None = None
    """Wall time stamped by the IED, when the protocol carries one."""
    receive_monotonic: float
    receive_time: float
    """Wall time at which the gateway received it."""


@dataclass(slots=True)
class PointBlock:
    """New samples of several points received together (one block read), as columns.

    Polling moves tens of thousands of values a second, and one object per value costs more than
    the rest of the way to the broker: a block travels as its point ids (one tuple shared by every
    read of the block), its values and qualities, and one receive time. Iterating it gives the
    equivalent `PointUpdate`s, for consumers that want one object per value.
    """

    point_ids: tuple[str, ...]
    values: Sequence[float | int | bool | None]
    qualities: Sequence[Quality]
    receive_monotonic: float
    receive_time: float

    def __len__(self) -> int:
        return len(self.point_ids)

    def update(self, i: int) -> PointUpdate:
        return PointUpdate(
            point_id=self.point_ids[i],
            value=self.values[i],
            quality=self.qualities[i],
            receive_monotonic=self.receive_monotonic,
            receive_time=self.receive_time,
        )

    def __iter__(self) -> Iterator[PointUpdate]:
        return (self.update(i) for i in range(len(self.point_ids)))


@dataclass(slots=True)
class Point:
    """The latest known state of one point."""

    point_id: str
    kind: PointKind
    unit: str = ""
    source: str = ""
    """Id of the IED (or feed) the point comes from."""
    value: float | int | bool | None = None
    quality: Quality = NOT_YET_RECEIVED
    source_time: float | None = None
    receive_time: float | None = None
    receive_monotonic: float | None = None
    updates: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.point_id,
            "kind": self.kind.value,
            "unit": self.unit,
            "source": self.source,
            "value": self.value,
            "quality": self.quality.validity.value,
            "reason": self.quality.reason.value,
            "source_time": self.source_time,
            "receive_time": self.receive_time,
        }


Listener = Callable[[Point, PointUpdate], None]
BlockListener = Callable[[Sequence[Point], PointBlock], None]
"""Told once per block, after every point of the block is stored and per-point listeners ran."""


@dataclass
class ProcessImage:
    """Latest value of every configured point, with listeners per point and for all points."""

    points: dict[str, Point] = field(default_factory=dict)
    _listeners: dict[str, list[Listener]] = field(default_factory=dict)
    _all_listeners: list[Listener] = field(default_factory=list)
    _block_listeners: list[BlockListener] = field(default_factory=list)
    _block_per_point: list[Listener] = field(default_factory=list)
    _blocks: dict[tuple[str, ...], tuple[list[Point], list[tuple[int, list[Listener]]]]] = field(default_factory=dict)
    """Per block layout: its points, and which of them have per-point listeners."""

    def define(self, point_id: str, kind: PointKind, unit: str = "", source: str = "") -> Point:
        if point_id in self.points:
            raise ValueError(f"point {point_id!r} is defined twice")
        point = Point(point_id=point_id, kind=kind, unit=unit, source=source)
        self.points[point_id] = point
        return point

    def __contains__(self, point_id: object) -> bool:
        return point_id in self.points

    def __getitem__(self, point_id: str) -> Point:
        return self.points[point_id]

    def __len__(self) -> int:
        return len(self.points)

    def subscribe(self, point_id: str, listener: Listener) -> None:
        """Call `listener` synchronously on every update of `point_id` (the fast path)."""
        if point_id not in self.points:
            raise KeyError(f"no point {point_id!r}")
        self._listeners.setdefault(point_id, []).append(listener)
        self._blocks.clear()

    def subscribe_all(self, listener: Listener) -> None:
        self._all_listeners.append(listener)

    def subscribe_blocks(self, listener: BlockListener, per_point: Listener) -> None:
        """Like `subscribe_all`, told once per block by `apply_block` (the cheap way for a listener
        of every point) and per point by `apply`."""
        self._block_listeners.append(listener)
        self._block_per_point.append(per_point)
        self._all_listeners.append(per_point)

    def unsubscribe_all(self, listener: Listener) -> None:
        if listener in self._all_listeners:
            self._all_listeners.remove(listener)

    def apply(self, update: PointUpdate) -> Point:
        point = self.points[update.point_id]
        point.value = update.value
        point.quality = update.quality
        point.source_time = update.source_time
        point.receive_time = update.receive_time
        point.receive_monotonic = update.receive_monotonic
        point.updates += 1
        for listener in self._listeners.get(update.point_id, ()):
            listener(point, update)
        for listener in self._all_listeners:
            listener(point, update)
        return point

    def _layout(self, point_ids: tuple[str, ...]) -> tuple[list[Point], list[tuple[int, list[Listener]]]]:
        layout = self._blocks.get(point_ids)
        if layout is None:
            points = [self.points[pid] for pid in point_ids]  # KeyError for an unknown point, as apply
            listened = [(i, self._listeners[pid]) for i, pid in enumerate(point_ids) if self._listeners.get(pid)]
            layout = self._blocks[point_ids] = (points, listened)
        return layout

    def apply_block(self, block: PointBlock) -> list[Point]:
        """Store a whole block, then tell its points' own listeners (protection first), then the
        block listeners once, then any per-point listener of every point (one object each)."""
        points, listened = self._layout(block.point_ids)
        mono, wall = block.receive_monotonic, block.receive_time
        for point, value, quality in zip(points, block.values, block.qualities, strict=True):
            point.value = value
            point.quality = quality
            point.source_time = None
            point.receive_time = wall
            point.receive_monotonic = mono
            point.updates += 1
        for i, listeners in listened:
            update = block.update(i)
            for listener in listeners:
                listener(points[i], update)
        for block_listener in self._block_listeners:
            block_listener(points, block)
        others = [x for x in self._all_listeners if x not in self._block_per_point]
        if others:
            for i, point in enumerate(points):
                update = block.update(i)
                for listener in others:
                    listener(point, update)
        return points

    def carry(self, old: Point) -> bool:
        """Take over another image's last state of the same point, telling no listener (a reload
        keeps an IED running: what it said before is still what it says, and an IED that reports
        by exception may not say it again). False when this image has no such point."""
        point = self.points.get(old.point_id)
        if point is None or old.receive_monotonic is None:
            return False
        point.value, point.quality, point.source_time = old.value, old.quality, old.source_time
        point.receive_time, point.receive_monotonic, point.updates = (
            old.receive_time,
            old.receive_monotonic,
            old.updates,
        )
        return True

    def apply_many(self, updates: Iterable[PointUpdate]) -> None:
        for update in updates:
            self.apply(update)

    def counts_by_quality(self) -> dict[str, int]:
        counts = {v.value: 0 for v in Validity}
        for point in self.points.values():
            counts[point.quality.validity.value] += 1
        return counts
