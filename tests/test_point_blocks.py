"""A block read travels as columns (PointBlock): the process image, report-by-exception and the
history take it in one go and end in the same state as one update at a time."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.history import HistoryAggregator
from gateway.contract.points import (
    GOOD,
    PointBlock,
    PointKind,
    PointUpdate,
    ProcessImage,
    Quality,
    QualityReason,
    Validity,
)
from gateway.telemetry import TELEMETRY, PointSpec, Telemetry

OUT_OF_RANGE = Quality(Validity.INVALID, QualityReason.OUT_OF_RANGE)
IDS = tuple(f"IED.R{i}" for i in range(6))


def image() -> ProcessImage:
    img = ProcessImage()
    for pid in IDS:
        img.define(pid, PointKind.ANALOG, source="IED")
    return img


def test_a_block_is_stored_and_each_listener_told_as_it_asked() -> None:
    img = image()
    own: list[tuple[str, object]] = []
    blocks: list[list[str]] = []
    every: list[str] = []
    img.subscribe("IED.R2", lambda p, u: own.append((p.point_id, u.value)))
    img.subscribe_blocks(
        lambda points, block: blocks.append([p.point_id for p in points]), lambda p, u: every.append(p.point_id)
    )
    img.subscribe_all(lambda p, u: every.append(f"all:{p.point_id}"))
    values = [10, 11, 12, 13, 14, None]
    qualities = [GOOD] * 5 + [OUT_OF_RANGE]
    img.apply_block(PointBlock(IDS, values, qualities, 5.0, 1_700_000_000.0))
    assert [img[p].value for p in IDS] == values
    assert img["IED.R5"].quality == OUT_OF_RANGE and img["IED.R0"].receive_time == 1_700_000_000.0
    assert all(img[p].updates == 1 for p in IDS)
    assert own == [("IED.R2", 12)]  # the point's own listener (protection's way in)
    assert blocks == [list(IDS)]  # the block listener once, not its per-point form
    assert every == [f"all:{p}" for p in IDS]  # a plain listener of every point still hears each


def test_a_listener_subscribed_after_a_block_was_seen_is_told_next_time() -> None:
    img = image()
    block = PointBlock(IDS, [1] * 6, [GOOD] * 6, 1.0, 2.0)
    img.apply_block(block)
    heard: list[object] = []
    img.subscribe("IED.R0", lambda p, u: heard.append(u.value))
    img.apply_block(PointBlock(IDS, [3] * 6, [GOOD] * 6, 1.0, 2.0))
    assert heard == [3]


def test_iterating_a_block_gives_its_updates() -> None:
    block = PointBlock(IDS[:2], [1.5, 2], [GOOD, OUT_OF_RANGE], 3.0, 4.0)
    assert list(block) == [
        PointUpdate(point_id=IDS[0], value=1.5, quality=GOOD, receive_monotonic=3.0, receive_time=4.0),
        PointUpdate(point_id=IDS[1], value=2, quality=OUT_OF_RANGE, receive_monotonic=3.0, receive_time=4.0),
    ]


values = st.one_of(st.none(), st.integers(-5, 5), st.floats(-5, 5), st.just(math.nan))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(values, st.sampled_from([GOOD, OUT_OF_RANGE])), min_size=6, max_size=6),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([0.0, 1.0]),
)
def test_block_reporting_and_history_match_one_update_at_a_time(
    reads: list[list[tuple[object, Quality]]], deadband: float
) -> None:
    specs = [PointSpec(pid, PointKind.ANALOG, deadband) for pid in IDS]
    by_block, by_point = Telemetry(specs, integrity_period_s=1e9), Telemetry(specs, integrity_period_s=1e9)
    hist_block, hist_point = HistoryAggregator(60.0), HistoryAggregator(60.0)
    img_block, img_point = image(), image()
    img_block.subscribe_blocks(lambda pts, b: by_block.on_points(pts, b.receive_monotonic), lambda p, u: None)
    img_block.subscribe_blocks(hist_block.on_block, hist_block.on_point)
    img_point.subscribe_all(lambda p, u: by_point.on_change(p, u.receive_monotonic))
    img_point.subscribe_all(hist_point.on_point)
    for n, read in enumerate(reads):
        block = PointBlock(IDS, [v for v, _ in read], [q for _, q in read], float(n), 1_700_000_000.0 + n)
        img_block.apply_block(block)
        img_point.apply_many(block)
    sent_block = [m for s, p in by_block.flush(99.0, 0.0) if s == TELEMETRY for m in p["metrics"]]
    sent_point = [m for s, p in by_point.flush(99.0, 0.0) if s == TELEMETRY for m in p["metrics"]]
    assert repr(sent_block) == repr(sent_point)  # repr: NaN compares unequal to itself
    assert repr(hist_block.take_closed(2e9)) == repr(hist_point.take_closed(2e9))
    assert by_block.changes_seen == by_point.changes_seen == 6 * len(reads)


def decode_columns_message(payload: dict, table: list[str]) -> list[dict]:
    """What a host does with a columnar telemetry message (docs/mqtt.md): back to samples."""
    assert payload["format"] == "columns"
    bad = {pos: (q, r) for pos, q, r in payload.get("bad", [])}
    out = []
    for pos, (i, v, dt) in enumerate(zip(payload["i"], payload["v"], payload["dt"], strict=True)):
        q, r = bad.get(pos, ("good", None))
        sample = {"id": table[i], "v": v, "q": q, "t": None if dt is None else payload["t0"] + dt}
        if r is not None:
            sample["r"] = r
        out.append(sample)
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(values, st.sampled_from([GOOD, OUT_OF_RANGE])), min_size=6, max_size=6),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 9),
    st.booleans(),
)
def test_columnar_messages_carry_the_same_samples_as_sample_messages(
    reads: list[list[tuple[object, Quality]]], max_batch: int, one_unindexed: bool
) -> None:
    """Same decisions, same order, same values, qualities and times; a point missing from the
    birth's table still travels, in sample form."""
    specs = [PointSpec(pid, PointKind.ANALOG, 0.5) for pid in IDS]
    table = list(IDS)
    samples = Telemetry(specs, max_batch=max_batch, integrity_period_s=1e9)
    columns = Telemetry(specs, max_batch=max_batch, integrity_period_s=1e9, columns=True)
    columns.set_index({pid: n for n, pid in enumerate(table) if not (one_unindexed and n == 3)})
    img = image()
    sent_samples: list[dict] = []
    sent_columns: list[dict] = []
    for n, read in enumerate(reads):
        block = PointBlock(IDS, [v for v, _ in read], [q for _, q in read], float(n), 1_700_000_000.0 + n / 7)
        points = img.apply_block(block)
        samples.on_points(points, float(n))
        columns.on_points(points, float(n))
        assert samples.pending == columns.pending
        sent_samples += [m for s, p in samples.flush(float(n), 0.0) if s == TELEMETRY for m in p["metrics"]]
        for s, p in columns.flush(float(n), 0.0):
            if s != TELEMETRY:
                continue
            assert len(p.get("i", ())) + len(p.get("metrics", ())) <= max_batch
            sent_columns += decode_columns_message(p, table) if "format" in p else p["metrics"]
    key = lambda m: (m["id"], m["t"])  # noqa: E731  (an unindexed point's samples come apart from the columns)
    if one_unindexed:
        sent_samples.sort(key=key)
        sent_columns.sort(key=key)
    assert repr(sent_columns) == repr(sent_samples)
