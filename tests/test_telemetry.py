"""Report-by-exception: deadbands, quality changes, batching and integrity reports (sans-IO)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import config
from gateway.contract.points import (
    COMM_FAILURE,
    GOOD,
    Point,
    PointKind,
    Quality,
    QualityReason,
    Validity,
)
from gateway.telemetry import INTEGRITY, TELEMETRY, PointSpec, Telemetry, exceeds

SITE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml"

QUALITIES = [
    GOOD,
    COMM_FAILURE,
    Quality(Validity.QUESTIONABLE, QualityReason.OLD_DATA),
    Quality(Validity.INVALID, QualityReason.OUT_OF_RANGE),
]


def _point(
    point_id: str,
    value: float | int | bool | None,
    quality: Quality = GOOD,
    kind: PointKind = PointKind.ANALOG,
    t: float = 1_767_225_600.0,
) -> Point:
    return Point(point_id=point_id, kind=kind, value=value, quality=quality, receive_time=t)


def _reported(messages: list[tuple[str, dict]]) -> list[dict]:
    return [m for suffix, payload in messages if suffix == TELEMETRY for m in payload["metrics"]]


# --------------------------------------------------------------------------- deadband properties

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(deadband=st.floats(min_value=0.0, max_value=1000.0), values=st.lists(finite, min_size=1, max_size=60))
def test_analog_change_smaller_than_the_deadband_is_never_reported(deadband: float, values: list[float]) -> None:
    tel = Telemetry([PointSpec("P", PointKind.ANALOG, deadband)], integrity_period_s=1e9)
    last_reported: float | None = None
    for n, v in enumerate(values):
        tel.on_change(_point("P", v), float(n))
        out = _reported(tel.flush(float(n), 0.0))
        if last_reported is None:
            assert [m["v"] for m in out] == [v], "the first value is always reported"
            last_reported = v
            continue
        if abs(v - last_reported) < deadband or v == last_reported:
            assert out == []
        else:
            assert [m["v"] for m in out] == [v]
            last_reported = v


@settings(max_examples=200, deadline=None)
@given(
    deadband=st.floats(min_value=0.0, max_value=1e6),
    steps=st.lists(st.tuples(finite, st.sampled_from(QUALITIES)), min_size=2, max_size=40),
)
def test_a_quality_change_is_always_reported(deadband: float, steps: list[tuple[float, Quality]]) -> None:
    tel = Telemetry([PointSpec("P", PointKind.ANALOG, deadband)], integrity_period_s=1e9)
    previous: Quality | None = None
    for n, (v, q) in enumerate(steps):
        tel.on_change(_point("P", v, q), float(n))
        out = _reported(tel.flush(float(n), 0.0))
        if previous is not None and q != previous:
            assert len(out) == 1 and out[0]["q"] == q.validity.value
            assert out[0].get("r", "none") == q.reason.value
        previous = q


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.one_of(st.booleans(), st.integers(0, 5)), min_size=1, max_size=60),
    kind=st.sampled_from([PointKind.BINARY, PointKind.COUNTER]),
)
def test_binaries_and_counters_report_every_change_and_only_changes(values: list[int | bool], kind: PointKind) -> None:
    # a large deadband in the spec must not matter for these kinds
    tel = Telemetry([PointSpec("B", kind, 100.0)], integrity_period_s=1e9)
    for n, v in enumerate(values):
        tel.on_change(_point("B", v, kind=kind), float(n))
    reported = [m["v"] for m in _reported(tel.flush(100.0, 0.0))]
    expected = [v for n, v in enumerate(values) if n == 0 or v != values[n - 1]]
    assert reported == expected


@settings(max_examples=100, deadline=None)
@given(
    n_points=st.integers(1, 40),
    seen=st.sets(st.integers(0, 39)),
    max_batch=st.integers(1, 16),
)
def test_integrity_includes_every_point(n_points: int, seen: set[int], max_batch: int) -> None:
    ids = [f"P{i}" for i in range(n_points)]
    tel = Telemetry([PointSpec(i, PointKind.ANALOG, 1.0) for i in ids], max_batch=max_batch, integrity_period_s=10.0)
    for i in sorted(seen):
        if i < n_points:
            tel.on_change(_point(ids[i], float(i)), 0.0)
    tel.flush(0.0, 0.0)  # pending changes go out; the integrity clock starts
    parts = [p for s, p in tel.flush(10.0, 5.0) if s == INTEGRITY]
    metrics = [m for p in parts for m in p["metrics"]]
    assert sorted(m["id"] for m in metrics) == sorted(ids)
    assert all(len(p["metrics"]) <= max_batch for p in parts)
    assert [p["part"] for p in parts] == list(range(1, len(parts) + 1))
    assert {p["parts"] for p in parts} == {len(parts)}
    for m in metrics:
        i = int(m["id"][1:])
        if i in seen:
            assert m["v"] == float(i) and m["q"] == "good"
        else:
            assert m["v"] is None and m["q"] == "invalid" and m["r"] == "not_yet_received"


# --------------------------------------------------------------------------- examples


def test_exceeds_edge_cases() -> None:
    assert exceeds(PointKind.ANALOG, 1.0, None, 3.0)
    assert exceeds(PointKind.ANALOG, 1.0, 3.0, None)
    assert not exceeds(PointKind.ANALOG, 1.0, None, None)
    assert exceeds(PointKind.ANALOG, 1.0, 3.0, math.nan)
    assert not exceeds(PointKind.ANALOG, 1.0, math.nan, math.nan)
    assert not exceeds(PointKind.ANALOG, 0.0, 2.0, 2.0)
    assert exceeds(PointKind.ANALOG, 0.0, 2.0, 2.0000001)
    assert exceeds(PointKind.ANALOG, 1.0, 2.0, 3.0)  # exactly the deadband: reported
    assert not exceeds(PointKind.ANALOG, 1.0, 2.0, 2.999)
    assert exceeds(PointKind.BINARY, 5.0, False, True)


def test_site_deadbands_and_kinds_come_from_the_site_file() -> None:
    site = config.load(SITE)
    tel = Telemetry.from_site(site)
    site_points = {p.id: p for ied in site.ieds for p in ied.points}
    assert sorted(tel.point_ids) == sorted(site_points)
    assert tel.max_batch == site.uplink.max_batch
    assert tel.integrity_period_s == site.uplink.integrity_period_s
    # a point with a deadband: a move below it stays quiet, a move of it is reported
    pid, spec = next((k, p) for k, p in site_points.items() if p.deadband > 0)
    tel.on_change(_point(pid, 100.0), 0.0)
    tel.on_change(_point(pid, 100.0 + spec.deadband * 0.5), 0.1)
    tel.on_change(_point(pid, 100.0 + spec.deadband * 1.5), 0.2)
    assert [m["v"] for m in _reported(tel.flush(0.2, 0.0))] == [100.0, 100.0 + spec.deadband * 1.5]


def test_batches_are_bounded_and_full_batches_are_signalled() -> None:
    tel = Telemetry(
        [PointSpec(f"P{i}", PointKind.ANALOG, 0.0) for i in range(25)], max_batch=10, integrity_period_s=1e9
    )
    full = [tel.on_change(_point(f"P{i}", 1.0), 0.0) for i in range(25)]
    assert full.index(True) == 9
    out = tel.flush(0.0, 1.5)
    assert [s for s, _ in out] == [TELEMETRY] * 3
    assert [len(p["metrics"]) for _, p in out] == [10, 10, 5]
    assert all(p["timestamp"] == 1500 for _, p in out)
    assert tel.flush(0.1, 1.6) == []


def test_sample_carries_time_in_ms_and_source_time_wins() -> None:
    tel = Telemetry([PointSpec("P", PointKind.ANALOG, 0.0)])
    p = _point("P", 1.0, t=10.0)
    p.source_time = 9.5
    tel.on_change(p, 0.0)
    (m,) = _reported(tel.flush(0.0, 0.0))
    assert m == {"id": "P", "v": 1.0, "q": "good", "t": 9500}


def test_binary_transitions_inside_one_window_are_all_kept() -> None:
    tel = Telemetry([PointSpec("CB", PointKind.BINARY)], integrity_period_s=1e9)
    for v in (False, True, False):
        tel.on_change(_point("CB", v, kind=PointKind.BINARY), 0.0)
    assert [m["v"] for m in _reported(tel.flush(0.0, 0.0))] == [False, True, False]


def test_integrity_is_periodic_on_request_and_resets_the_deadband_reference() -> None:
    tel = Telemetry([PointSpec("P", PointKind.ANALOG, 10.0)], integrity_period_s=60.0)
    tel.on_change(_point("P", 0.0), 0.0)
    assert [s for s, _ in tel.flush(0.0, 0.0)] == [TELEMETRY]
    tel.on_change(_point("P", 6.0), 1.0)  # below the deadband: not reported now
    assert tel.flush(59.0, 0.0) == []
    out = tel.flush(60.0, 0.0)
    assert [s for s, _ in out] == [INTEGRITY] and out[0][1]["metrics"][0]["v"] == 6.0
    tel.on_change(_point("P", 12.0), 61.0)  # 12 - 6 < 10: the host already knows 6
    assert tel.flush(61.0, 0.0) == []
    tel.request_integrity()
    assert [s for s, _ in tel.flush(62.0, 0.0)] == [INTEGRITY]
    assert tel.flush(100.0, 0.0) == []
    assert [s for s, _ in tel.flush(122.0, 0.0)] == [INTEGRITY]


def test_points_outside_the_site_file_are_reported_without_deadband() -> None:
    tel = Telemetry([])
    tel.on_change(_point("AMI.x", 1.0), 0.0)
    tel.on_change(_point("AMI.x", 1.001), 0.0)
    assert len(_reported(tel.flush(0.0, 0.0))) == 2


def test_bad_specs_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="deadband"):
        PointSpec("P", PointKind.ANALOG, -1.0)
    with pytest.raises(ValueError, match="twice"):
        Telemetry([PointSpec("P"), PointSpec("P")])
    with pytest.raises(ValueError, match="max_batch"):
        Telemetry([], max_batch=0)


def test_quality_reported_after_an_integrity_report_is_the_current_one() -> None:
    tel = Telemetry([PointSpec("P", PointKind.ANALOG, 1.0)], integrity_period_s=10.0)
    p = _point("P", 1.0, GOOD)
    tel.on_change(p, 0.0)
    tel.flush(0.0, 0.0)
    p.quality = COMM_FAILURE  # changed in the image, the change not yet seen by telemetry
    tel.flush(10.0, 0.0)  # integrity carries it
    p.value = 5.0
    tel.on_change(p, 11.0)
    (m,) = _reported(tel.flush(11.0, 0.0))
    assert (m["q"], m["r"]) == ("invalid", "communication_failure")


@settings(max_examples=300, deadline=None)
@given(
    deadband=st.sampled_from([0.0, 0.5, 2.0]),
    kind=st.sampled_from(list(PointKind)),
    steps=st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats(-10, 10), st.just(math.nan), st.integers(-3, 3), st.booleans()),
            st.sampled_from(QUALITIES),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_reporting_matches_the_reference_rule(
    deadband: float, kind: PointKind, steps: list[tuple[object, Quality]]
) -> None:
    """Whatever the value types: reported iff first, quality changed, or `exceeds` says so."""
    tel = Telemetry([PointSpec("P", kind, deadband)], integrity_period_s=1e9)
    last: tuple[object, Quality] | None = None
    for n, (v, q) in enumerate(steps):
        tel.on_change(_point("P", v, q, kind=kind), float(n))  # type: ignore[arg-type]
        out = _reported(tel.flush(float(n), 0.0))
        expected = last is None or q != last[1] or exceeds(kind, deadband, last[0], v)  # type: ignore[arg-type]
        assert len(out) == (1 if expected else 0)
        if expected:
            last = (v, q)
            assert out[0]["q"] == q.validity.value


def test_next_flush_at_lets_a_caller_sleep_until_there_is_work() -> None:
    tel = Telemetry([PointSpec("P", PointKind.ANALOG, 0.0)], max_batch=2, integrity_period_s=60.0)
    assert tel.next_flush_at(0.005) is None  # nothing pending, integrity clock not started
    tel.flush(0.0, 0.0)
    assert tel.next_flush_at(0.005) == 60.0
    tel.on_change(_point("P", 1.0), 10.0)
    assert tel.next_flush_at(0.005) == 10.005
    tel.on_change(_point("P", 2.0), 10.001)  # a full batch: now
    assert tel.next_flush_at(0.005) == float("-inf")
    tel.flush(10.002, 0.0)
    assert tel.next_flush_at(0.005) == 60.0
    tel.request_integrity()
    assert tel.next_flush_at(0.005) == float("-inf")
