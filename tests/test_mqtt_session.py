"""The uplink's decisions without a broker: the spool window and its urgent lane, what is in
flight, sequence numbers, and birth/death bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.mqtt_session import (
    RETAIN_FLAG,
    BirthDeath,
    DropReport,
    InFlight,
    MessageSequence,
    PrimaryHost,
    SpoolWindow,
)

URGENT = ("alarms", "events")


# ---------------------------------------------------------------------- a spool and a sender


@dataclass
class Spool:
    """The SQLite spool's contract, in memory: ids ascending, never reused."""

    rows: dict[int, tuple[str, bytes, int]] = field(default_factory=dict)
    last_id: int = 0

    def append(self, messages: list[tuple[str, bytes, int]]) -> list[int]:
        ids = []
        for topic, body, flags in messages:
            self.last_id += 1
            self.rows[self.last_id] = (topic, body, flags)
            ids.append(self.last_id)
        return ids

    def peek(self, after: int, limit: int) -> list[tuple[int, str, bytes, int]]:
        return [(i, *self.rows[i]) for i in sorted(self.rows) if i > after][:limit]

    def drop_oldest(self, count: int) -> int:
        dropped = sorted(self.rows)[:count]
        for i in dropped:
            del self.rows[i]
        return dropped[-1] if dropped else 0


@dataclass
class Sender:
    """What the uplink does with the window, minus paho: load, send the head, take acks."""

    window: SpoolWindow
    spool: Spool
    limit: int
    inflight: InFlight = field(init=False)
    live: bool = False
    next_mid: int = 0
    sent: list[tuple[int, str]] = field(default_factory=list)
    """(spool id, lane) on the current connection."""
    acked: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.inflight = InFlight(self.limit)

    def accept(self, messages: list[tuple[str, bytes, int]], retain: bool) -> None:
        ids = self.spool.append(messages)
        self.window.accepted(ids, [(t, b, f, 0.0) for t, b, f in messages], live=self.live, retain=retain)

    def accept_elsewhere(self, messages: list[tuple[str, bytes, int]]) -> None:
        ids = self.spool.append(messages)
        self.window.accepted_elsewhere(ids[-1])

    def load(self) -> None:
        while (ask := self.window.to_load()) is not None:
            self.window.loaded(self.spool.peek(*ask), ask[1])
            if self.window.queue:
                return

    def pump(self) -> None:
        if not self.live:
            return
        while self.inflight.has_room():
            row = self.window.head()
            if row is None:
                if not self.window.backlog:
                    break
                self.load()
                row = self.window.head()
                if row is None:
                    break
            lane = "urgent" if self.window.urgent and self.window.urgent[0] is row else "ordered"
            self.window.sent(row)
            self.next_mid += 1
            self.inflight.sent(self.next_mid, row.spool_id)
            self.sent.append((row.spool_id, lane))
            if lane == "urgent":
                assert not row.retain and row.topic.partition("/")[0] in URGENT
            assert row.spool_id not in self.acked, "an acknowledged message was sent again"
            assert len(self.inflight) <= self.limit

    def ack(self, pick: int) -> None:
        if not self.inflight.mids:
            return
        mids = sorted(self.inflight.mids)
        spool_id = self.inflight.acked(mids[pick % len(mids)])
        if spool_id is not None:
            self.acked.add(spool_id)
            self.spool.rows.pop(spool_id, None)

    def reconnect(self) -> None:
        self.window.reset()
        self.inflight = InFlight(self.limit)
        self.sent = []
        self.live = True

    def check_connection(self) -> None:
        ids = [i for i, _ in self.sent]
        assert len(ids) == len(set(ids)), "a message was sent twice on one connection"
        for lane in ("ordered", "urgent"):
            in_lane = [i for i, name in self.sent if name == lane]
            assert in_lane == sorted(in_lane), f"the {lane} lane left its order"
        assert len(self.window.queue) <= self.window.size and len(self.window.urgent) <= self.window.size


topics = st.sampled_from(["alarms/CB-1", "events/x", "measurements/IED-1", "state/CB-1"])
messages = st.lists(st.tuples(topics, st.binary(min_size=1, max_size=4), st.just(1)), min_size=1, max_size=6)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("accept"), messages, st.booleans()),
        st.tuples(st.just("elsewhere"), messages),
        st.tuples(st.just("pump")),
        st.tuples(st.just("ack"), st.integers(0, 50)),
        st.tuples(st.just("reconnect")),
        st.tuples(st.just("down")),
        st.tuples(st.just("trim"), st.integers(1, 5)),
    ),
    min_size=3,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, size=st.integers(1, 8), limit=st.integers(1, 4), backlog=st.integers(0, 12))
def test_the_window_never_resends_the_acknowledged_keeps_each_lane_in_order_and_loses_nothing(
    ops: list[tuple[Any, ...]], size: int, limit: int, backlog: int
) -> None:
    spool = Spool()
    spool.append([("measurements/old", b"x", 1)] * backlog)  # left from before this start
    sender = Sender(SpoolWindow(size, URGENT, spool.last_id), spool, limit)
    sender.live = True  # connected from the start; "down" and "reconnect" change that
    trimmed: set[int] = set()
    for op in ops:
        kind = op[0]
        if kind == "accept":
            retain = bool(op[2])
            batch = [(t, b, f | (RETAIN_FLAG if retain else 0)) for t, b, f in op[1]]
            sender.accept(batch, retain)
        elif kind == "elsewhere":
            sender.accept_elsewhere(list(op[1]))
        elif kind == "pump":
            sender.pump()
        elif kind == "ack":
            sender.ack(int(op[1]))
        elif kind == "reconnect":
            sender.check_connection()
            sender.reconnect()
        elif kind == "down":
            sender.check_connection()
            sender.reconnect()
            sender.live = False
        elif kind == "trim":
            before = set(spool.rows)
            cutoff = spool.drop_oldest(int(op[1]))
            trimmed |= before - set(spool.rows)
            if cutoff:
                sender.window.trimmed(cutoff)
        sender.check_connection()
    # whatever happened, a connection that stays up delivers everything still spooled
    sender.check_connection()
    if not sender.live:
        sender.reconnect()
    for _ in range(4 * (len(spool.rows) + 2)):
        sender.pump()
        while sender.inflight.mids:
            sender.ack(0)
        if not spool.rows and sender.window.empty:
            break
    sender.check_connection()
    assert not spool.rows, "accepted messages were never delivered"
    assert sender.window.empty
    assert sender.acked | trimmed == set(range(1, spool.last_id + 1))  # each delivered, or dropped when full


def test_a_live_alarm_overtakes_a_backlog_and_is_not_sent_again_when_the_backlog_reaches_it() -> None:
    spool = Spool()
    sender = Sender(SpoolWindow(2, URGENT, 0), spool, limit=10)
    sender.live = True
    sender.accept([(f"measurements/m{i}", b"m", 1) for i in range(5)], retain=False)
    sender.accept([("alarms/CB-1", b"trip", 1)], retain=False)
    sender.accept([("state/CB-1", b"open", 1 | RETAIN_FLAG)], retain=True)  # retained: waits its turn
    sender.pump()  # nothing acknowledged yet: the alarm is still in the spool when the loader passes it
    assert [spool_id for spool_id, _ in sender.sent] == [6, 1, 2, 3, 4, 5, 7]
    assert [lane for _, lane in sender.sent] == ["urgent"] + ["ordered"] * 6


def test_the_window_refuses_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        SpoolWindow(0, URGENT, 0)


def test_sent_refuses_a_row_that_is_not_at_a_lane_head() -> None:
    window = SpoolWindow(4, URGENT, 2)
    assert window.to_load() == (0, 4)
    window.loaded([(1, "m/a", b"1", 1), (2, "m/b", b"2", 1)], 4)
    assert window.to_load() is None  # all read
    second = window.queue[1]
    with pytest.raises(ValueError, match="not at the head"):
        window.sent(second)


# ---------------------------------------------------------------------- in flight


@given(st.lists(st.integers(1, 4), min_size=1, max_size=20), st.randoms(use_true_random=False))
def test_a_message_in_parts_is_acknowledged_once_all_its_parts_are(parts: list[int], rng: Random) -> None:
    inflight = InFlight(limit=1000)
    mid = 0
    mids = []
    for spool_id, count in enumerate(parts, start=1):
        for _ in range(count):
            mid += 1
            inflight.sent(mid, spool_id)
            mids.append((mid, spool_id))
        inflight.sent_in_parts(spool_id, count)
    rng.shuffle(mids)
    left = {spool_id: count for spool_id, count in enumerate(parts, start=1)}
    done = []
    for mid, spool_id in mids:
        got = inflight.acked(mid)
        left[spool_id] -= 1
        assert got == (spool_id if left[spool_id] == 0 else None)
        if got is not None:
            done.append(got)
        assert inflight.acked(mid) is None  # a duplicate PUBACK changes nothing
    assert sorted(done) == list(range(1, len(parts) + 1))
    assert len(inflight) == 0 and not inflight.parts


def test_in_flight_room_and_the_death() -> None:
    inflight = InFlight(limit=2)
    inflight.sent(1, None)  # the birth takes a place too
    assert inflight.has_room() and inflight.fits(1) and not inflight.fits(2)
    inflight.sent(2, 10)
    assert not inflight.has_room()
    assert InFlight(limit=1).fits(5)  # nothing in flight: a message in many parts still goes
    inflight.death_sent(3)
    assert inflight.acked(1) is None and not inflight.death_acked
    assert inflight.acked(3) is None and inflight.death_acked
    assert inflight.acked(2) == 10
    assert inflight.acked(99) is None
    with pytest.raises(ValueError, match="max_inflight"):
        InFlight(0)


# ---------------------------------------------------------------------- sequence numbers


@given(st.lists(st.booleans(), max_size=600))
def test_seq_counts_messages_with_a_body_and_wraps_at_256(bodies: list[bool]) -> None:
    sequence = MessageSequence()
    sequence.born()
    expected = 0
    for has_body in bodies:
        seq = sequence.next_for(b"x" if has_body else b"")
        if has_body:
            expected = (expected + 1) % 256
        assert seq == expected
        sequence.used(seq)
    assert 0 <= sequence.seq <= 255


def test_a_birth_restarts_seq_and_historical_is_before_the_connection() -> None:
    sequence = MessageSequence(start_id=10)
    for _ in range(5):
        sequence.used(sequence.next_for(b"x"))
    sequence.born()
    assert sequence.next_for(b"x") == 1
    sequence.born(births=3)  # NBIRTH and two DBIRTHs took 0, 1, 2
    assert sequence.next_for(b"x") == 3
    assert sequence.historical(9) and not sequence.historical(10)


# ---------------------------------------------------------------------- birth and death


def test_bdseq_goes_on_from_the_stored_one_and_wraps() -> None:
    assert BirthDeath(None).next_bdseq() == 0
    assert BirthDeath("garbage").next_bdseq() == 0
    births = BirthDeath(254)
    assert [births.next_bdseq() for _ in range(3)] == [255, 0, 1]


def test_without_a_primary_host_the_birth_goes_at_connect() -> None:
    births = BirthDeath(3)
    assert births.connected() and births.may_birth(up=True)
    assert not births.may_birth(up=False)
    assert births.primary_state(online=False, up=True) is PrimaryHost.NOTHING


def test_with_a_primary_host_the_birth_waits_for_it_and_the_node_dies_when_it_leaves() -> None:
    births = BirthDeath(3, primary_host="scada")
    assert not births.connected()  # not known to be online: hold
    assert not births.may_birth(up=True)
    assert births.primary_state(online=False, up=True) is PrimaryHost.NOTHING
    assert births.primary_state(online=True, up=True) is PrimaryHost.BIRTH
    assert births.may_birth(up=True)
    assert births.primary_state(online=True, up=True) is PrimaryHost.NOTHING  # already born
    assert births.primary_state(online=False, up=True) is PrimaryHost.DIE
    # the next connection holds again until the host is back; a host known online lets it be born
    assert not births.connected()
    births.primary_state(online=True, up=False)
    assert births.connected()


def test_the_msgpack_birth_and_death_carry_the_connections_bdseq() -> None:
    metrics = [{"id": "CB-1.ia", "kind": "analog", "unit": "A"}]
    assert BirthDeath.birth(7, 1_000, "stima-SS-1", metrics) == {
        "timestamp": 1_000,
        "bdSeq": 7,
        "seq": 0,
        "client_id": "stima-SS-1",
        "metrics": metrics,
    }
    assert BirthDeath.death(7, 2_000) == {"timestamp": 2_000, "bdSeq": 7}


# ---------------------------------------------------------------------- spool-full reports


@given(st.lists(st.tuples(st.integers(1, 1000), st.floats(0.0, 30.0)), min_size=1, max_size=50))
def test_drops_are_reported_at_most_every_period_and_none_goes_uncounted(drops: list[tuple[int, float]]) -> None:
    report = DropReport(period_s=10.0)
    now = 0.0
    reported_at: list[float] = []
    total = reported = 0
    for count, gap_s in drops:
        now += gap_s
        total += count
        told = report.dropped(count, now)
        if told:
            reported_at.append(now)
            reported += told
    assert reported_at[0] == 0.0 + drops[0][1]  # the first drop is reported at once
    assert all(b - a >= 10.0 for a, b in zip(reported_at, reported_at[1:], strict=False))
    assert reported + report.unreported == total
