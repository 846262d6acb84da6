"""The Modbus master's decisions without sockets: poll timing, skipped cycles, writes before
block reads, reconnect backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.modbus_schedule import WRITES_FIRST, PollCycle, PollSchedule, ReconnectBackoff


def test_first_cycle_is_due_one_phase_shift_after_the_link_came_up() -> None:
    schedule = PollSchedule(0.2, phase=0.25)
    schedule.restart(100.0)
    assert schedule.wait_s(100.0) == pytest.approx(0.05)
    assert schedule.wait_s(100.05) == pytest.approx(0.0)
    assert schedule.start_cycle(100.05) == 0
    assert schedule.wait_s(100.05) == pytest.approx(0.2)


def test_an_overrun_skips_the_missed_cycles_and_keeps_the_grid() -> None:
    schedule = PollSchedule(1.0)
    schedule.restart(0.0)
    assert schedule.start_cycle(0.0) == 0
    # the cycle started at 0 s ran until 3.4 s: the cycles due at 1 and 2 s are skipped, the one
    # due at 3 s starts late
    assert schedule.start_cycle(3.4) == 2
    assert schedule.skipped_cycles == 2
    assert schedule.wait_s(3.4) == pytest.approx(0.6)  # next due at 4 s, not 4.4 s
    assert schedule.start_cycle(4.0) == 0
    assert schedule.skipped_cycles == 2


def test_a_bad_period_is_refused() -> None:
    with pytest.raises(ValueError, match="poll period must be positive"):
        PollSchedule(0.0)


@given(
    period_s=st.floats(0.005, 10.0),
    lateness=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=30),
)
def test_cycles_run_plus_cycles_skipped_cover_the_time_elapsed(period_s: float, lateness: list[float]) -> None:
    """However late each cycle starts, no cycle is run twice and none is lost from the count."""
    schedule = PollSchedule(period_s)
    schedule.restart(0.0)
    now = 0.0
    runs = 0
    for late in lateness:
        now = max(now, schedule.next_due_s) + late * period_s
        schedule.start_cycle(now)
        runs += 1
        assert schedule.next_due_s > now - 1e-9 * period_s  # the next cycle is never already overdue
        assert schedule.next_due_s <= now + period_s * (1 + 1e-9)
    cycles_on_grid = round(schedule.next_due_s / period_s)
    assert runs + schedule.skipped_cycles == cycles_on_grid


def test_a_waiting_write_goes_before_the_next_block_read() -> None:
    cycle = PollCycle(["b0", "b1", "b2"])
    assert cycle.next_step(writes_waiting=False) == "b0"
    # a trip queued while b0 was on the wire goes next, before b1
    assert cycle.next_step(writes_waiting=True) is WRITES_FIRST
    assert cycle.next_step(writes_waiting=False) == "b1"
    assert cycle.next_step(writes_waiting=False) == "b2"
    assert cycle.next_step(writes_waiting=True) is None  # the cycle is done; writes wait for the loop


@given(st.integers(0, 20), st.lists(st.booleans(), max_size=80))
def test_every_block_is_read_once_in_order_and_writes_always_overtake(n_blocks: int, waiting: list[bool]) -> None:
    blocks = list(range(n_blocks))
    cycle = PollCycle(blocks)
    read: list[int] = []
    for writes_waiting in waiting + [False] * (n_blocks + 1):
        step = cycle.next_step(writes_waiting)
        if step is None:
            break
        if writes_waiting:
            assert step is WRITES_FIRST  # no block read while a write waits
        else:
            assert isinstance(step, int)
            read.append(step)
    assert read == blocks


def test_backoff_doubles_to_the_cap_and_starts_again_once_connected() -> None:
    backoff = ReconnectBackoff(0.5, 4.0, rng=random.Random(7))
    delays = [backoff.connect_failed() for _ in range(6)]
    for delay, nominal in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert 0.8 * nominal <= delay <= 1.2 * nominal
    backoff.connected()
    assert 0.4 <= backoff.link_lost() <= 0.6
    # a loss after a good connection does not grow the delay
    assert 0.4 <= backoff.link_lost() <= 0.6
    assert 0.4 <= backoff.connect_failed() <= 0.6


@given(st.floats(0.005, 5.0), st.floats(0.01, 3600.0), st.integers(0, 2**32 - 1), st.integers(1, 40))
def test_backoff_never_exceeds_its_cap_plus_jitter(first_s: float, max_s: float, seed: int, attempts: int) -> None:
    backoff = ReconnectBackoff(first_s, max_s, rng=random.Random(seed))
    for _ in range(attempts):
        delay = backoff.connect_failed()
        assert 0.0 < delay <= 1.2 * max(first_s, max_s)
