"""Alarms with a life cycle: standing while their agent is not back to normal, events cleared at
once, acknowledged by an operator, in the active list until both; kept across restarts."""

from __future__ import annotations

import pytest

from gateway.alarms import NORMAL_STATES, AlarmBook


def test_an_agents_alarm_stands_until_the_agent_is_normal_and_acknowledged() -> None:
    book = AlarmBook(["CB-045", "LINE-045"])
    a = book.raise_alarm("CB-045", "critical", "CB-045 locked out", 10.0)
    line = book.raise_alarm("LINE-045", "critical", "LINE-045 fault", 10.0)
    assert a.cleared is None and a.active and [x.id for x in book.active()] == [a.id, line.id]
    assert book.on_state("CB-045", "Locked_Out", 11.0) == []  # not normal: still standing
    acked = book.acknowledge(a.id, "scada:ncc-1", 12.0)
    assert acked.acknowledged_by == "scada:ncc-1" and acked.active  # acknowledged but not cleared
    [cleared] = book.on_state("CB-045", "Closed_Normal", 13.0)
    assert cleared.cleared == 13.0 and not cleared.active
    assert [x.id for x in book.active()] == [line.id]
    assert [s for s, _ in book.take_changes()] == ["raised", "raised", "acknowledged", "cleared"]
    with pytest.raises(KeyError):
        book.acknowledge(a.id, "x", 14.0)  # no longer active


def test_an_alarm_without_an_agent_is_an_event_that_waits_only_for_acknowledgement() -> None:
    book = AlarmBook(["CB-045"])
    a = book.raise_alarm("flisr-seq-3", "major", "sequence stopped", 5.0)
    assert a.cleared == 5.0 and a.active
    assert book.acknowledge(a.id, "local:op", 6.0).active is False
    assert book.active() == []
    assert book.raise_alarm("CB-045", "bogus", "x", 7.0).severity == "major"


def test_the_active_list_survives_a_restart() -> None:
    book = AlarmBook(["CB-045"])
    book.raise_alarm("CB-045", "critical", "locked out", 1.0)
    again = AlarmBook(["CB-045"])
    again.restore(book.snapshot())
    assert [a.as_dict() for a in again.active()] == [a.as_dict() for a in book.active()]
    assert again.raise_alarm("CB-045", "info", "next", 2.0).id == "alm-2"
    assert "Closed_Normal" in NORMAL_STATES and "Locked_Out" not in NORMAL_STATES
