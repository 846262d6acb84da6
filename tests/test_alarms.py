"""The active alarm list: raised, repeated, acknowledged, bounded, kept across a restart."""

from __future__ import annotations

import pytest

from gateway.alarms import AlarmBook


def test_an_alarm_stays_until_acknowledged_and_repeats_count_up() -> None:
    book = AlarmBook()
    a = book.raise_alarm(10.0, "LINE-045", "major", "LINE-045 fault: phase fault")
    again = book.raise_alarm(12.0, "LINE-045", "critical", "LINE-045 fault: phase fault")
    assert again is a and a.count == 2 and a.last_time == 12.0 and a.severity == "critical"
    b = book.raise_alarm(11.0, "CB-045", "warning", "CB-045 tripped")
    assert [x.id for x in book.active()] == [a.id, b.id]  # most severe first
    done = book.acknowledge(a.id, "hmi:ada", 20.0)
    assert done.acknowledged_by == "hmi:ada" and done.acknowledged_at == 20.0
    assert [x.id for x in book.active()] == [b.id] and book.recent()[0] is a
    with pytest.raises(KeyError, match="acknowledged by hmi:ada"):
        book.acknowledge(a.id, "hmi:bob", 21.0)
    with pytest.raises(KeyError, match="no active alarm"):
        book.acknowledge("A999", "hmi:bob", 21.0)
    # raised again after the acknowledgement: a new alarm
    c = book.raise_alarm(30.0, "LINE-045", "major", "LINE-045 fault: phase fault")
    assert c.id != a.id and c.count == 1


def test_the_list_is_bounded_and_survives_a_snapshot() -> None:
    book = AlarmBook(limit=3)
    for n in range(5):
        book.raise_alarm(float(n), f"S{n}", "warning", f"alarm {n}")
    assert [a.source for a in book.active()] == ["S4", "S3", "S2"] and book.dropped == 2
    book.acknowledge(book.active()[0].id, "local:ops", 9.0)
    again = AlarmBook(limit=3)
    again.restore(book.snapshot())
    assert [a.to_dict() for a in again.active()] == [a.to_dict() for a in book.active()]
    assert again.recent()[0].acknowledged_by == "local:ops" and again.dropped == 2
    assert again.raise_alarm(10.0, "S9", "info", "new").id == "A6"
    with pytest.raises(ValueError):
        again.restore({"version": 7})
