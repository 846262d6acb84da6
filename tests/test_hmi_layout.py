"""The one-line diagram's layout is computed from the network and stays readable at 30 feeders."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.hmi.layout import COL_W, Diagram, layout
from gateway.switching.network import Network
from hil.rig import example_document
from tests.support.feeder_sites import feeder_site, site_config


def _overlaps(d: Diagram) -> list[tuple[str, str, str, str]]:
    boxes = d.boxes()
    return [
        (a.id, a.kind, b.id, b.kind)
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if a.overlaps(b, margin=1.0) and a.id != b.id
    ]


def _inside(d: Diagram) -> list[str]:
    return [b.id for b in d.boxes() if b.x < 0 or b.y < 0 or b.x + b.w > d.width or b.y + b.h > d.height]


@pytest.mark.parametrize(
    "doc",
    [example_document(), feeder_site(30, 3), feeder_site(30, 3, ties="ring"), feeder_site(12, 5, external_tie=True)],
    ids=["example", "30 feeders", "30 feeders in a ring", "12 feeders, 5 sections, external tie"],
)
def test_nothing_overlaps_and_everything_is_on_the_canvas(doc: dict[str, Any]) -> None:
    site = site_config(doc)
    net = Network.from_site(site)
    d = layout(net)
    assert not _overlaps(d), _overlaps(d)[:5]
    assert not _inside(d)
    # every section, device and tapped element of the network is drawn, once
    assert sorted(s["id"] for s in d.sections) == sorted(net.sections)
    assert sorted(x["id"] for x in d.devices) == sorted(net.devices)
    assert sorted(e["id"] for e in d.elements) == sorted(net.element_section)


def test_thirty_feeders_one_column_each_in_tie_order() -> None:
    site = site_config(feeder_site(30, 3))
    d = layout(Network.from_site(site))
    breakers = sorted((x for x in d.devices if x["id"].startswith("CB-")), key=lambda x: x["x"])
    assert [b["id"] for b in breakers] == [f"CB-{k}" for k in range(1, 31)]  # the chain of ties, in order
    assert {round(b["y"]) for b in breakers} == {round(breakers[0]["y"])}  # one row under the bus
    assert all(b2["x"] - b1["x"] == COL_W for b1, b2 in zip(breakers, breakers[1:]))
    # a feeder's sections go down its column, in order
    for k in (1, 17, 30):
        secs = [s for s in d.sections if s["line"] == f"LINE-{k}"]
        assert len({s["x"] for s in secs}) == 1
        assert [s["id"] for s in sorted(secs, key=lambda s: s["y1"])] == [f"LINE-{k}/{n}" for n in (1, 2, 3)]
    # each tie joins neighbouring columns through the gap between them: no tie lane below
    ties = [x for x in d.devices if x["tie"]]
    assert len(ties) == 29
    lowest_section = max(s["y2"] for s in d.sections)
    assert all(t["y"] < lowest_section for t in ties)


def test_ties_of_far_apart_feeders_take_lanes_below() -> None:
    site = site_config(feeder_site(6, 2, ties="ring"))
    d = layout(Network.from_site(site))
    lowest_section = max(s["y2"] for s in d.sections)
    far = [x for x in d.devices if x["tie"] and x["y"] > lowest_section]
    assert [x["id"] for x in far] == ["TIE-6-1"]


def test_meters_are_one_cluster_per_transformer() -> None:
    site = site_config(example_document())
    groups: dict[str, list[tuple[str, int]]] = {}
    for g in site.meter_groups:
        groups.setdefault(g.connected_transformer, []).append((g.id, g.count))
    d = layout(Network.from_site(site), meters_by_transformer=groups)
    xf = next(e for e in d.elements if e["id"] == "XFMR-101")
    assert xf["meters"] == 1250 and xf["meter_groups"] == ["MTR-GRP-101"] and xf["meter_label"] == "1 250"
    assert not _overlaps(d)


def test_the_external_tie_ends_at_the_neighbours_mark() -> None:
    d = layout(Network.from_site(site_config(example_document())))
    assert [x["label"] for x in d.externals] == ["SUB-006/LINE-061"]
