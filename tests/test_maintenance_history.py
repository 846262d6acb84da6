"""The history the trends read: hourly aggregation over months of minute buckets, and the import of
another historian's export (refused whole, with the line and column, when any line is wrong)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.history import HistoryImportError, HistoryRow, parse_import
from gateway.storage import Store

KNOWN = frozenset({"XFMR-234.top_oil_temp_c", "XFMR-234.c2h2_ppm"})


def test_minute_buckets_aggregate_to_hours_weighted_by_good_samples(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    rows = [
        HistoryRow("P", 3600.0 * 10 + 60 * k, 60.0, 10.0 + k, 10.0 + k, 10.0 + k, 10.0 + k, 6, 1.0) for k in range(60)
    ]
    rows.append(HistoryRow("P", 3600.0 * 11, 60.0, 100.0, 100.0, 100.0, 100.0, 6, 0.5))  # half the samples good
    rows.append(HistoryRow("P", 3600.0 * 11 + 60, 60.0, 0.0, 0.0, 0.0, 0.0, 6, 1.0))
    store.append_history(rows)
    hours = store.history_aggregated("P", 0.0, 1e9)
    assert [h["bucket_start"] for h in hours] == [36000.0, 39600.0]
    assert hours[0]["mean"] == pytest.approx(10.0 + 59 / 2) and (hours[0]["min"], hours[0]["max"]) == (10.0, 69.0)
    assert hours[1]["mean"] == pytest.approx(100.0 * 3 / 9)  # 3 good samples at 100, 6 at 0
    assert hours[0]["n"] == 360 and hours[0]["interval_s"] == 3600.0
    assert store.history_aggregated("P", 39600.0, 1e9)[0]["bucket_start"] == 39600.0


def test_an_export_is_parsed_in_any_column_order_with_defaults() -> None:
    text = "mean,point_id,interval_s,bucket_start\n72.5,XFMR-234.top_oil_temp_c,3600,1000\n\n3.5,XFMR-234.c2h2_ppm,3600,1000\n"
    rows = parse_import(text, "log.csv", KNOWN)
    assert rows[0] == HistoryRow("XFMR-234.top_oil_temp_c", 1000.0, 3600.0, 72.5, 72.5, 72.5, 72.5, 1, 1.0)
    assert len(rows) == 2


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("", "empty file"),
        ("point_id,bucket_start,mean\n", "missing column(s) interval_s"),
        ("point_id,bucket_start,interval_s,mean,colour\n", "unknown column(s) colour"),
        (
            "point_id,bucket_start,interval_s,mean\nXFMR-999.x,1,3600,1\n",
            "line 2: point_id: 'XFMR-999.x' is not a point",
        ),
        ("point_id,bucket_start,interval_s,mean\nXFMR-234.c2h2_ppm,1,3600,nan\n", "line 2: mean: expected a finite"),
        ("point_id,bucket_start,interval_s,mean\nXFMR-234.c2h2_ppm,1,0.1,1\n", "interval_s: expected 1..86400"),
        ("point_id,bucket_start,interval_s,mean,n\nXFMR-234.c2h2_ppm,1,60,1,0.5\n", "n: expected a whole number"),
        ("point_id,bucket_start,interval_s,mean\nXFMR-234.c2h2_ppm,1,60\n", "line 2: 3 values for 4 columns"),
    ],
)
def test_a_bad_export_is_refused_whole_naming_the_line_and_column(text: str, expect: str) -> None:
    with pytest.raises(HistoryImportError, match="nothing imported|line 1|empty") as info:
        parse_import(text, "log.csv", KNOWN)
    assert expect in str(info.value)
