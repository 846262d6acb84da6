"""The internal bus: fault traffic first, then direct messages, then publications; FIFO within."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.agents.actions import BusMessage, Topic
from gateway.agents.bus import PRIORITY_FAULT, Bus, priority_of


def msg(i: int, topic: Topic | None = None, target: str | None = None, urgent: bool = False) -> BusMessage:
    return BusMessage(source="src", kind=f"m{i}", topic=topic, target=target, urgent=urgent)


def test_fault_traffic_is_delivered_first() -> None:
    bus = Bus()
    bus.subscribe("SUB", *Topic)
    bus.post(msg(1, topic=Topic.LOAD_CHANGES))
    bus.post(msg(2, target="CB-1"))
    bus.post(msg(3, topic=Topic.FAULT_ALERTS))
    bus.post(msg(4, target="CB-2", urgent=True))
    bus.post(msg(5, topic=Topic.VOLTAGE_EVENTS))
    kinds = [d.message.kind for d in bus.drain()]
    assert kinds == ["m3", "m4", "m2", "m1", "m5"]


def test_publications_reach_subscribers_but_not_the_sender() -> None:
    bus = Bus()
    bus.subscribe("A", Topic.LOAD_CHANGES)
    bus.subscribe("src", Topic.LOAD_CHANGES)
    bus.subscribe("B", Topic.FAULT_ALERTS)
    bus.post(msg(1, topic=Topic.LOAD_CHANGES))
    out = bus.drain()
    assert [d.recipient for d in out] == ["A"]
    bus.unsubscribe("A")
    bus.post(msg(2, topic=Topic.LOAD_CHANGES))
    assert bus.drain() == []


def test_full_queue_drops_ordinary_traffic_never_faults() -> None:
    bus = Bus(max_queued=3)
    for i in range(3):
        bus.post(msg(i, target="X"))
    bus.post(msg(9, topic=Topic.FAULT_ALERTS))
    bus.subscribe("S", Topic.FAULT_ALERTS)
    kinds = [d.message.kind for d in bus.drain()]
    assert kinds[0] == "m9" and len(kinds) == 3 and bus.dropped == 1


def test_a_message_has_a_topic_or_a_target() -> None:
    import pytest

    with pytest.raises(ValueError):
        BusMessage(source="a", kind="k")
    with pytest.raises(ValueError):
        BusMessage(source="a", kind="k", topic=Topic.FAULT_ALERTS, target="b")


@given(st.lists(st.tuples(st.sampled_from([None, *Topic]), st.booleans()), max_size=60))
def test_drain_order_is_by_priority_then_fifo(specs: list[tuple[Topic | None, bool]]) -> None:
    bus = Bus()
    posted = []
    for i, (topic, urgent) in enumerate(specs):
        m = msg(i, topic=topic, target=None if topic else "T", urgent=urgent)
        bus.post(m)
        posted.append(m)
    for t in Topic:
        bus.subscribe("S", t)
    out = [d.message for d in bus.drain(limit=None)]
    keys = [(priority_of(m), posted.index(m)) for m in out]
    assert keys == sorted(keys)
    assert len(out) == len(posted)
    assert all(priority_of(m) == PRIORITY_FAULT for m in out[: sum(priority_of(p) == 0 for p in posted)])
