"""Downsampled point history: the aggregator, its table in the state database, the site file,
and the running daemon answering `stima points history`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, validate
from gateway.history import HistoryAggregator, HistoryRow
from gateway.contract.points import GOOD, PointKind, PointUpdate, ProcessImage
from gateway.storage import Store


def test_buckets_align_to_wall_clock_and_close_at_their_end() -> None:
    agg = HistoryAggregator(60.0)
    agg.add("P", 10.0, True, 1_000_005.0)  # bucket 999_960 .. 1_000_020
    agg.add("P", 30.0, True, 1_000_010.0)
    agg.add("P", 20.0, True, 1_000_019.999)
    assert agg.take_closed(1_000_019.999) == []  # still open
    [row] = agg.take_closed(1_000_020.0)
    assert row == HistoryRow("P", 999_960.0, 60.0, 10.0, 30.0, 20.0, 20.0, 3, 1.0)
    assert agg.take_closed(1_000_100.0) == []  # handed over once


def test_a_sample_on_the_boundary_opens_the_next_bucket() -> None:
    agg = HistoryAggregator(10.0)
    agg.add("P", 1.0, True, 100.0)
    agg.add("P", 2.0, True, 109.9)
    agg.add("P", 5.0, True, 110.0)
    rows = agg.take_closed(120.0)
    assert [(r.bucket_start, r.n, r.min, r.max, r.last) for r in rows] == [
        (100.0, 2, 1.0, 2.0, 2.0),
        (110.0, 1, 5.0, 5.0, 5.0),
    ]


def test_bad_quality_counts_against_the_good_fraction_only() -> None:
    agg = HistoryAggregator(60.0)
    agg.add("P", 5.0, True, 0.0)
    agg.add("P", 1000.0, False, 1.0)  # an invalid value never widens min/max
    agg.add("P", None, True, 2.0)  # no value: not good either
    agg.add("P", 7.0, True, 3.0)
    [row] = agg.take_closed(60.0)
    assert (row.min, row.max, row.mean, row.last, row.n) == (5.0, 7.0, 6.0, 7.0, 4)
    assert row.good_fraction == pytest.approx(0.5)


def test_a_bucket_of_bad_samples_only_has_no_values() -> None:
    agg = HistoryAggregator(60.0)
    agg.add("P", 3.0, False, 0.0)
    [row] = agg.take_closed(60.0)
    assert (row.min, row.max, row.mean, row.last, row.n, row.good_fraction) == (None, None, None, None, 1, 0.0)


def test_binary_points_are_zero_and_one() -> None:
    image = ProcessImage()
    image.define("CB.closed", PointKind.BINARY)
    agg = HistoryAggregator(60.0)
    image.subscribe_all(agg.on_point)
    for t, v in ((0.0, True), (10.0, False), (20.0, True), (30.0, True)):
        image.apply(PointUpdate(point_id="CB.closed", value=v, quality=GOOD, receive_monotonic=t, receive_time=t))
    [row] = agg.take_closed(60.0)
    assert (row.min, row.max, row.mean, row.last, row.n) == (0.0, 1.0, 0.75, 1.0, 4)


def test_a_gap_without_samples_writes_no_bucket() -> None:
    agg = HistoryAggregator(10.0)
    agg.add("P", 1.0, True, 5.0)
    assert [r.bucket_start for r in agg.take_closed(12.0)] == [0.0]
    assert agg.take_closed(100.0) == []  # 10..100: nothing received
    agg.add("P", 2.0, True, 105.0)
    assert [r.bucket_start for r in agg.take_closed(200.0)] == [100.0]


def test_take_all_hands_over_open_buckets_for_a_clean_stop() -> None:
    agg = HistoryAggregator(60.0)
    agg.add("A", 1.0, True, 10.0)
    agg.add("B", 2.0, True, 20.0)
    assert agg.take_closed(30.0) == []
    assert sorted(r.point_id for r in agg.take_all()) == ["A", "B"]
    assert agg.take_all() == []


samples = st.lists(
    st.tuples(st.floats(0.0, 600.0), st.one_of(st.none(), st.floats(-1e6, 1e6)), st.booleans()),
    max_size=200,
).map(lambda xs: sorted(xs, key=lambda s: s[0]))


@settings(max_examples=200, deadline=None)
@given(samples, st.sampled_from([10.0, 60.0]))
def test_property_stored_rows_match_a_naive_recomputation(
    xs: list[tuple[float, float | None, bool]], interval_s: float
) -> None:
    agg = HistoryAggregator(interval_s)
    store = Store(":memory:")
    for t, v, good in xs:
        agg.add("P", v, good, t)
    store.append_history(agg.take_closed(10_000.0))
    stored = {r["bucket_start"]: r for r in store.history("P")}
    expected: dict[float, list[tuple[float | None, bool]]] = {}
    for t, v, good in xs:
        expected.setdefault(t - t % interval_s, []).append((v, good))
    assert set(stored) == set(expected)
    for start, group in expected.items():
        row = stored[start]
        good_values = [v for v, g in group if g and v is not None]
        assert row["n"] == len(group)
        assert row["good_fraction"] == pytest.approx(len(good_values) / len(group))
        if good_values:
            assert row["min"] == min(good_values) and row["max"] == max(good_values)
            assert row["last"] == good_values[-1]
            assert row["mean"] == pytest.approx(math.fsum(good_values) / len(good_values), rel=1e-9, abs=1e-6)
            assert row["min"] <= row["mean"] + 1e-6 and row["mean"] <= row["max"] + 1e-6
        else:
            assert row["min"] is None and row["mean"] is None and row["max"] is None
    store.close()


def test_storage_round_trip_limit_and_retention(tmp_path: Path) -> None:
    store = Store(tmp_path / "stima.db")
    rows = [
        HistoryRow("P", 60.0 * i, 60.0, float(i), float(i) + 1, float(i) + 0.5, float(i), 10, 1.0) for i in range(100)
    ]
    rows.append(HistoryRow("Q", 0.0, 60.0, None, None, None, None, 3, 0.0))
    store.append_history(rows)
    back = store.history("P", since=600.0, until=1200.0)
    assert [r["bucket_start"] for r in back] == [60.0 * i for i in range(10, 21)]
    assert back[0] == {
        "point_id": "P",
        "bucket_start": 600.0,
        "interval_s": 60.0,
        "min": 10.0,
        "max": 11.0,
        "mean": 10.5,
        "last": 10.0,
        "n": 10,
        "good_fraction": 1.0,
    }
    assert [r["bucket_start"] for r in store.history("P", limit=3)] == [5820.0, 5880.0, 5940.0]  # newest, in order
    assert store.history("Q")[0]["min"] is None
    assert store.prune_history(before=60.0 * 10, limit=4) == 4  # a chunk at a time
    assert store.prune_history(before=60.0 * 10, limit=100) == 7
    assert store.prune_history(before=60.0 * 50) == 40  # the rest of P before 3000 s
    assert len(store.history("P")) == 50 and store.history("Q") == []
    store.close()
    reopened = Store(tmp_path / "stima.db")
    assert len(reopened.history("P")) == 50
    reopened.close()


def test_a_bucket_written_twice_is_merged() -> None:
    """A partial bucket flushed at a clean stop, completed after the restart."""
    store = Store(":memory:")
    store.append_history([HistoryRow("P", 0.0, 60.0, 1.0, 3.0, 2.0, 3.0, 4, 0.5)])  # 2 good, mean 2
    store.append_history([HistoryRow("P", 0.0, 60.0, 0.0, 2.0, 1.0, 0.5, 2, 1.0)])  # 2 good, mean 1
    [row] = store.history("P")
    assert (row["min"], row["max"], row["last"], row["n"]) == (0.0, 3.0, 0.5, 6)
    assert row["mean"] == pytest.approx(1.5) and row["good_fraction"] == pytest.approx(4 / 6)
    store.append_history([HistoryRow("P", 0.0, 60.0, None, None, None, None, 2, 0.0)])
    [row] = store.history("P")
    assert (row["min"], row["max"], row["last"], row["n"]) == (0.0, 3.0, 0.5, 8)
    assert row["mean"] == pytest.approx(1.5) and row["good_fraction"] == pytest.approx(0.5)
    store.close()


def _site(**history: Any) -> dict[str, Any]:
    return {
        "site": {"region": "r", "substation_id": "SUB-T"},
        "uplink": {"broker_host": "127.0.0.1", "transport": "tcp"},
        "history": history,
    }


def test_history_section_defaults_and_validation() -> None:
    site = validate(_site())
    assert (site.history.enabled, site.history.interval_s, site.history.retention_days) == (True, 60.0, 30.0)
    assert validate(_site(enabled=False, interval_s=900, retention_days=365)).history.interval_s == 900.0
    for key, value, path in (
        ("interval_s", 5, "history.interval_s"),
        ("interval_s", 7200, "history.interval_s"),
        ("retention_days", 0, "history.retention_days"),
        ("retention_days", 5000, "history.retention_days"),
        ("interval", 60, "history.interval"),
    ):
        with pytest.raises(ConfigError) as err:
            validate(_site(**{key: value}))
        [problem] = err.value.problems
        assert problem.path == path, (key, value, str(err.value))
        if key != "interval":
            assert problem.found == value
    short = _site(interval_s=1)
    short["simulation"] = {"speed": 1}
    assert validate(short).history.interval_s == 1.0  # a simulated site may sample faster


def test_daemon_answers_points_history(tmp_path: Path) -> None:
    from hil.rig import Rig, example_document

    doc = example_document()
    doc["history"] = {"interval_s": 1}
    with Rig(doc, tmp_path, hil_args=("--no-ami",)) as rig:
        point = next(p["id"] for p in rig.daemon_call("points.list") if p["kind"] == "analog")
        rows = rig.wait(
            lambda: (
                len(rig.daemon_call("points.history", id=point)) >= 2 and rig.daemon_call("points.history", id=point)
            ),
            "two history buckets",
            30.0,
            0.2,
        )
        assert all(r["interval_s"] == 1.0 and r["bucket_start"] % 1.0 == 0.0 for r in rows)
        assert all(r["min"] <= r["mean"] <= r["max"] for r in rows if r["min"] is not None)
        cli = [
            sys.executable,
            "-m",
            "gateway.cli",
            "points",
            "history",
            point,
            "--since",
            "1h",
            "--runtime-dir",
            str(rig.runtime_dir),
        ]
        out = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=60, check=True).stdout
        assert len(json.loads(out)) >= 2
        human = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True).stdout
        assert human.splitlines()[0].split() == ["TIME", "MIN", "MAX", "MEAN", "LAST", "N", "GOOD%"]
        unknown = subprocess.run(
            [*cli[:5], "NO.SUCH.POINT", "--runtime-dir", str(rig.runtime_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unknown.returncode == 1 and "no such point" in unknown.stderr and "Traceback" not in unknown.stderr


def test_a_clean_stop_writes_the_open_buckets(tmp_path: Path) -> None:
    from hil.rig import Rig, example_document

    doc = example_document()
    doc["history"] = {"interval_s": 3600}
    with Rig(doc, tmp_path, hil_args=("--no-ami",)) as rig:
        point = next(p["id"] for p in rig.daemon_call("points.list") if p["kind"] == "analog")
        rig.wait(lambda: rig.daemon_call("points.read", ids=[point])[0]["receive_time"], "a sample", 30.0, 0.1)
        if rig.daemon_call("points.history", id=point) == []:  # unless the hour turned meanwhile
            rig.restart_daemon()  # SIGTERM: the open hour is written as a partial bucket
        [row] = rig.daemon_call("points.history", id=point)[-1:]
        assert row["n"] >= 1 and row["interval_s"] == 3600.0 and row["bucket_start"] % 3600.0 == 0.0
