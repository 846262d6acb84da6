"""What the MQTT uplink decides, without sockets, threads or clocks.

- `SpoolWindow`: which spooled messages are held in memory and which one leaves next. Messages
  leave in the order accepted, except live messages on urgent topics (alarms, events), which
  overtake a backlog in a lane of their own; retained topics never do (an older retained value
  arriving last would stay). Only a bounded window of the spool is in memory; the window says
  which spool rows to read next and takes them in.
- `InFlight`: what one connection has sent and the broker not yet acknowledged, at most `limit`
  publishes; a spooled message sent as several publishes is acknowledged when all of them are.
- `MessageSequence`: `seq` 0-255 on one connection, restarting with each birth, and which
  messages are historical (accepted before the connection came up).
- `DropReport`: when to log that a full spool dropped its oldest messages (at most every 10 s,
  with the count since the last report), so a long outage does not flood the log.
- `BirthDeath`: the birth/death sequence number (`bdSeq`) across connections, when a birth is due
  (at connect, or once the primary host is online), when to die, and the msgpack birth and death.

The uplink (protocols/mqtt.py) feeds paho's events and the spool's rows into these and carries
out what they return. Times come in as arguments (`now_ms`: wall-clock milliseconds).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Sequence
from typing import Any

RETAIN_FLAG = 0x10
"""Stored with the QoS in the spool's `qos` column: the message is published retained."""

SEQ_MODULO = 256
"""Sparkplug's `seq` and `bdSeq` run 0-255 and wrap."""


class SpooledRow:
    """One spooled message held in memory, ready to send."""

    __slots__ = ("spool_id", "topic", "body", "qos", "retain")

    def __init__(self, spool_id: int, topic: str, body: bytes, flags: int) -> None:
        self.spool_id = spool_id
        self.topic = topic
        self.body = body
        self.qos = flags & 0x03
        self.retain = bool(flags & RETAIN_FLAG)


class SpoolWindow:
    """The in-memory window over the spool: the ordered lane, the urgent lane, and what to read next.

    The spool holds every accepted message until it is acknowledged; the window holds at most
    `size` of them per lane. `loaded_upto` is the last spool id the ordered lane has taken in
    (or deliberately passed over); `backlog` says the spool holds rows past it not yet read.
    Rows sent in the urgent lane while the ordered lane lagged are remembered in `skip`, so
    the loader does not send them a second time.
    """

    __slots__ = ("size", "urgent_topics", "queue", "urgent", "skip", "loaded_upto", "backlog", "last_id")

    def __init__(self, size: int, urgent_topics: Iterable[str], last_id: int) -> None:
        if size < 1:
            raise ValueError(f"memory window must hold at least one message, found {size!r}")
        self.size = size
        self.urgent_topics = frozenset(urgent_topics)
        self.queue: collections.deque[SpooledRow] = collections.deque()
        self.urgent: collections.deque[SpooledRow] = collections.deque()
        self.skip: set[int] = set()
        self.loaded_upto = 0
        self.backlog = True
        self.last_id = last_id
        """The highest spool id known to be committed."""

    # -------------------------------------------------------------- accepting

    def accepted(
        self, ids: Sequence[int], rows: Sequence[tuple[str, bytes, int, Any]], *, live: bool, retain: bool
    ) -> None:
        """Messages just spooled by this thread, ids in order; `live`: a connection is up."""
        if not ids:
            return
        self.last_id = max(self.last_id, ids[-1])
        urgent_topics = self.urgent_topics
        for spool_id, (topic, encoded, flags, _) in zip(ids, rows, strict=True):
            # in step with the spool: nothing between the last row loaded and this one (a gap
            # means another thread spooled rows meanwhile: the loader reads them in order)
            in_step = not self.backlog and spool_id == self.loaded_upto + 1
            if live and not retain and topic.partition("/")[0] in urgent_topics and len(self.urgent) < self.size:
                self.urgent.append(SpooledRow(spool_id, topic, encoded, flags))
                if in_step:
                    self.loaded_upto = spool_id
                else:
                    self.skip.add(spool_id)
                    self.backlog = True
            elif in_step and len(self.queue) < self.size:
                self.queue.append(SpooledRow(spool_id, topic, encoded, flags))
                self.loaded_upto = spool_id
            else:
                self.backlog = True

    def accepted_elsewhere(self, last_id: int) -> None:
        """Messages another thread spooled, up to `last_id`: the loader meets them in order."""
        self.last_id = max(self.last_id, last_id)
        if last_id > self.loaded_upto:
            self.backlog = True

    # -------------------------------------------------------------- loading

    def to_load(self) -> tuple[int, int] | None:
        """(after this spool id, at most this many rows) to read from the spool, or None."""
        if not self.backlog:
            return None
        room = self.size - len(self.queue)
        if room <= 0:
            return None
        return self.loaded_upto, room

    def loaded(self, rows: Sequence[tuple[int, str, bytes, int]], asked: int) -> None:
        """Take in the rows read for `to_load()`, oldest first, passing over urgent-lane rows."""
        skip = self.skip
        queue = self.queue
        for spool_id, topic, body, flags in rows:
            if skip and spool_id in skip:
                continue  # already sent in the urgent lane
            queue.append(SpooledRow(spool_id, topic, body, flags))
        if rows:
            self.loaded_upto = rows[-1][0]
        if len(rows) < asked:
            self.backlog = False
            skip.clear()  # every row they could hide has been read or deleted
            # every id up to the last one spooled here was committed before this read
            self.loaded_upto = max(self.loaded_upto, self.last_id)
        elif skip:
            self.skip = {i for i in skip if i > self.loaded_upto}

    # -------------------------------------------------------------- sending

    def head(self) -> SpooledRow | None:
        """The message to send next among those in memory: the urgent lane first."""
        if self.urgent:
            return self.urgent[0]
        if self.queue:
            return self.queue[0]
        return None

    def sent(self, row: SpooledRow) -> None:
        """`row`, the head, was handed to the connection (or dropped): the next one is up."""
        urgent = self.urgent
        if urgent and urgent[0] is row:
            urgent.popleft()
        elif self.queue and self.queue[0] is row:
            self.queue.popleft()
        else:
            raise ValueError(f"spool id {row.spool_id} is not at the head of a lane")

    def trimmed(self, cutoff: int) -> None:
        """The spool dropped its oldest rows, up to spool id `cutoff`."""
        for lane in (self.queue, self.urgent):
            while lane and lane[0].spool_id <= cutoff:
                lane.popleft()

    def reset(self) -> None:
        """The connection ended: everything unacknowledged is read again from the spool's start."""
        self.queue.clear()
        self.urgent.clear()
        self.skip.clear()
        self.loaded_upto = 0
        self.backlog = True

    @property
    def in_memory(self) -> int:
        return len(self.queue) + len(self.urgent)

    @property
    def empty(self) -> bool:
        """Nothing left to send: both lanes empty and nothing unread in the spool."""
        return not self.queue and not self.urgent and not self.backlog


class InFlight:
    """Publishes one connection sent that the broker has not acknowledged (PUBACK) yet."""

    __slots__ = ("limit", "mids", "parts", "death_mid", "death_acked")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_inflight must be at least 1, found {limit!r}")
        self.limit = limit
        self.mids: dict[int, int | None] = {}
        """paho mid → spool id (None for birth and death, which are not spooled)."""
        self.parts: dict[int, int] = {}
        """Spool id → publishes of it not yet acknowledged, when one message went as several."""
        self.death_mid: int | None = None
        self.death_acked = False

    def __len__(self) -> int:
        return len(self.mids)

    def has_room(self) -> bool:
        """Another spooled message may be sent now."""
        return len(self.mids) < self.limit

    def fits(self, publishes: int) -> bool:
        """A message sent as `publishes` publishes may go now (always, when nothing is in flight)."""
        return not self.mids or len(self.mids) + publishes <= self.limit

    def sent(self, mid: int, spool_id: int | None) -> None:
        """One publish handed to paho; `spool_id` None for a birth, which is not spooled."""
        self.mids[mid] = spool_id

    def sent_in_parts(self, spool_id: int, publishes: int) -> None:
        """The message `spool_id` went as `publishes` publishes (each passed to `sent`)."""
        if publishes > 1:
            self.parts[spool_id] = publishes

    def death_sent(self, mid: int) -> None:
        self.mids[mid] = None
        self.death_mid = mid

    def acked(self, mid: int) -> int | None:
        """A PUBACK for `mid`: the spool id now fully acknowledged, or None (not one of ours,
        a birth or death, or one part of several). Sets `death_acked` for the death."""
        if mid not in self.mids:
            return None
        spool_id = self.mids.pop(mid)
        if mid == self.death_mid:
            self.death_acked = True
            return None
        if spool_id is None:
            return None
        left = self.parts.get(spool_id)
        if left is not None:
            if left > 1:
                self.parts[spool_id] = left - 1
                return None
            del self.parts[spool_id]
        return spool_id


class MessageSequence:
    """`seq` on one connection: 0 in the birth, then 1, 2, … 255, 0 per message with a body."""

    __slots__ = ("seq", "start_id")

    def __init__(self, start_id: int = 0) -> None:
        self.seq = 0
        self.start_id = start_id
        """Spool ids below this were accepted before the connection came up: historical."""

    def next_for(self, body: bytes) -> int:
        """The `seq` of the next message; an empty one (clearing a retained topic) takes none."""
        return (self.seq + 1) % SEQ_MODULO if body else self.seq

    def historical(self, spool_id: int) -> bool:
        return spool_id < self.start_id

    def used(self, seq: int) -> None:
        """The message numbered `seq` was handed to the connection."""
        self.seq = seq

    def born(self, births: int = 1) -> None:
        """A birth of `births` messages was sent (numbered from 0): the sequence starts again."""
        self.seq = (births - 1) % SEQ_MODULO


class PrimaryHost(enum.Enum):
    """What a change of the primary host application's state asks of the edge node."""

    NOTHING = "nothing"
    BIRTH = "birth"
    DIE = "die"


class BirthDeath:
    """`bdSeq` across connections, and when a birth is due.

    Each connection gets the next `bdSeq` (registered with its death as the MQTT will). The
    birth goes out at connect, unless a primary host application is named and not known to be
    online: then the connection holds until that host says it is online. When that host goes
    offline, the node dies (disconnects with its will) and waits for it again.
    """

    __slots__ = ("bdseq", "primary_host", "primary_online", "holding")

    def __init__(self, last_bdseq: object, primary_host: str | None = None) -> None:
        self.bdseq = int(last_bdseq) if isinstance(last_bdseq, int) else -1
        """The last one used (as stored), -1 when none was."""
        self.primary_host = primary_host
        self.primary_online = False
        self.holding = False
        """Connected, waiting for the primary host before the birth."""

    def next_bdseq(self) -> int:
        """The `bdSeq` for a new connection (its will and its birth carry it); store it."""
        self.bdseq = (self.bdseq + 1) % SEQ_MODULO
        return self.bdseq

    def connected(self) -> bool:
        """A connection came up: True when its birth is due now, False when it holds."""
        self.holding = self.primary_host is not None and not self.primary_online
        return not self.holding

    def may_birth(self, up: bool) -> bool:
        """A birth (new metrics, a rebirth request) may go now on a connection that is `up`."""
        return up and not self.holding

    def primary_state(self, online: bool, up: bool) -> PrimaryHost:
        """The primary host said it is `online` (or not); `up`: the connection is up."""
        was, self.primary_online = self.primary_online, online
        if online and up and self.holding:
            self.holding = False
            return PrimaryHost.BIRTH
        if not online and was and up and not self.holding:
            return PrimaryHost.DIE
        return PrimaryHost.NOTHING

    @staticmethod
    def birth(bdseq: int, now_ms: int, client_id: str, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """The msgpack birth: every metric, the connection's `bdSeq`, `seq` 0."""
        return {"timestamp": now_ms, "bdSeq": bdseq, "seq": 0, "client_id": client_id, "metrics": metrics}

    @staticmethod
    def death(bdseq: int, now_ms: int) -> dict[str, Any]:
        """The msgpack death (also the will) with the `bdSeq` of the birth it ends."""
        return {"timestamp": now_ms, "bdSeq": bdseq}


class DropReport:
    """Spool-full drops, reported at most once per `period_s` with the count since the last report."""

    __slots__ = ("period_s", "unreported", "reported_at")

    def __init__(self, period_s: float = 10.0) -> None:
        self.period_s = period_s
        self.unreported = 0
        self.reported_at = float("-inf")

    def dropped(self, count: int, now: float) -> int:
        """`count` messages dropped at `now` (monotonic s): how many to report now (0: not yet)."""
        self.unreported += count
        if now - self.reported_at < self.period_s:
            return 0
        report, self.unreported, self.reported_at = self.unreported, 0, now
        return report
