"""IEEE 1366 indices from hand-computed examples (definitions in the reference sheet, section 7)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.agents.reliability import OutageLedger, indices

DAY = 86400.0


def test_hand_computed_example() -> None:
    # 1000 customers over one day. Event 1: 200 customers out 90 min. Event 2: 50 customers out 30 min.
    # Event 3: 300 customers out 60 s (momentary, auto-reclose).
    starts = np.concatenate([np.full(200, 3600.0), np.full(50, 7200.0), np.full(300, 10_000.0)])
    ends = np.concatenate([np.full(200, 3600.0 + 5400), np.full(50, 7200.0 + 1800), np.full(300, 10_060.0)])
    r = indices(starts, ends, 1000, 0.0, DAY)
    assert r.sustained_interruptions == 250 and r.momentary_interruptions == 300
    assert r.saifi == pytest.approx(0.25)
    assert r.customer_minutes_interrupted == pytest.approx(200 * 90 + 50 * 30)
    assert r.saidi_min == pytest.approx(19.5)
    assert r.caidi_min == pytest.approx(78.0)
    assert r.maifi == pytest.approx(0.3)
    assert r.asai == pytest.approx(1 - 19500 / (1000 * 1440))


def test_momentary_threshold_is_a_setting() -> None:
    starts, ends = np.array([0.0]), np.array([240.0])  # 4 minutes
    assert indices(starts, ends, 10, 0, DAY).momentary_interruptions == 1  # IEEE 1366: 5 min
    assert indices(starts, ends, 10, 0, DAY, momentary_threshold_s=180).sustained_interruptions == 1  # EN 50160
    assert indices(np.array([0.0]), np.array([300.0]), 10, 0, DAY).momentary_interruptions == 1  # <= 5 min


def test_period_selection_and_ongoing_interruptions() -> None:
    ledger = OutageLedger(100)
    ledger.record(np.arange(10), np.full(10, 100.0), 1000.0)
    ledger.record(np.arange(5), np.full(5, 5000.0), 5600.0)
    r = ledger.indices(0, 2000)
    assert r.sustained_interruptions == 10 and r.saidi_min == pytest.approx(10 * 900 / 60 / 100)
    ongoing = np.full(100, np.nan)
    ongoing[50:60] = 1500.0
    r2 = ledger.indices(0, 2000, ongoing_starts=ongoing)
    assert r2.sustained_interruptions == 20  # ten more, 500 s so far
    assert r2.customer_minutes_interrupted == pytest.approx((10 * 900 + 10 * 500) / 60)


def test_ledger_snapshot_round_trip() -> None:
    a = OutageLedger(20)
    a.record(np.array([1, 2, 3]), np.array([10.0, 11.0, 12.0]), 700.0)
    b = OutageLedger(20)
    b.restore(a.snapshot())
    assert b.indices(0, 1000) == a.indices(0, 1000)
    assert len(b) == 3


def test_bad_periods_are_refused() -> None:
    with pytest.raises(ValueError, match="until > since"):
        indices(np.empty(0), np.empty(0), 10, 5, 5)
    with pytest.raises(ValueError, match="customers_served"):
        indices(np.empty(0), np.empty(0), 0, 0, 5)


@given(st.lists(st.tuples(st.floats(0, 80_000), st.floats(0, 20_000)), max_size=50), st.integers(1, 500))
def test_index_identities(records: list[tuple[float, float]], customers: int) -> None:
    starts = np.array([s for s, _ in records], dtype=float)
    ends = np.array([s + d for s, d in records], dtype=float)
    r = indices(starts, ends, customers, 0.0, DAY)
    assert r.sustained_interruptions + r.momentary_interruptions == len(records)
    if r.saifi:
        assert r.caidi_min == pytest.approx(r.saidi_min / r.saifi)
    assert r.asai <= 1.0
    assert r.saidi_min >= 0 and r.maifi >= 0
