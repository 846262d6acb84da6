"""The topology graph of the example site and of small hand-built graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import CanonicalType, load
from gateway.agents.topology import Edge, Topology

SITE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml"


@pytest.fixture(scope="module")
def topo() -> Topology:
    return Topology.from_site(load(SITE))


@pytest.mark.parametrize(
    ("element", "breaker"),
    [
        ("LINE-045", "CB-045"),
        ("XFMR-101", "CB-045"),
        ("CAP-301", "CB-045"),
        ("MTR-GRP-102", "CB-045"),
        ("LINE-044", "CB-044"),
        ("SOLAR-201", "CB-046"),
        ("SUB-003", None),
        ("CB-045", None),
        ("SW-045-1", "CB-045"),
        ("XFMR-103", "CB-045"),
        ("XFMR-143", "CB-044"),
    ],
)
def test_protecting_breaker(topo: Topology, element: str, breaker: str | None) -> None:
    assert topo.protecting_breaker(element) == breaker


def test_meters_downstream_of_a_switch(topo: Topology) -> None:
    # nearest first, along the feeder: LINE-045/1, /2, /3
    assert topo.meter_groups_downstream("CB-045") == ["MTR-GRP-102", "MTR-GRP-103", "MTR-GRP-101"]
    assert topo.meters_downstream("CB-045") == 1250 + 750 + 500
    assert topo.meters_downstream("XFMR-102") == 750
    assert topo.meters_downstream("CB-044") == 300 + 250 + 400
    assert topo.meters_downstream("SUB-003") == 3670
    # an open switch on the way stops the walk
    assert topo.meters_downstream("SUB-003", open_switches=["CB-045"]) == 3670 - 2500


def test_normally_open_ties_are_not_supply_paths(topo: Topology) -> None:
    assert "LINE-045" not in topo.downstream("CB-044")
    assert "LINE-046" not in topo.downstream("CB-045")


def test_alternative_supply_paths_through_ties(topo: Topology) -> None:
    """The example's ties are tie switches (devices): LINE-045 can be fed through either, from the
    feeder beyond it and that feeder's breaker."""
    options = {o.via: o for o in topo.alternative_supply_paths("LINE-045")}
    assert set(options) == {"LINE-044", "LINE-046"}
    assert options["LINE-046"].tie == ("TIE-045-046", "LINE-045/3")
    assert options["LINE-046"].source_breaker == "CB-046"
    assert options["LINE-044"].tie == ("TIE-044-045", "LINE-045/2")
    assert options["LINE-044"].path[:3] == ("SUB-003", "CB-044", "LINE-044")
    assert {o.via for o in topo.alternative_supply_paths("LINE-044")} == {"LINE-045"}
    assert topo.adjacent_lines("LINE-045") == ["LINE-044", "LINE-046"]


def test_sections_and_switches(topo: Topology) -> None:
    """A load-break switch feeds the sections beyond it, and protects nothing."""
    assert topo.downstream("SW-045-2")[:3] == ["LINE-045/3", "XFMR-101", "MTR-GRP-101"]
    assert topo.meter_groups_downstream("SW-045-1") == ["MTR-GRP-103", "MTR-GRP-101"]
    assert topo.protecting_breaker("XFMR-101") == "CB-045"
    ties = {"TIE-044-045", "TIE-045-046", "TIE-046-061"}
    assert {g for g in topo.unfed({"CB-045", *ties}) if topo.type_of(g) == "meter_group"} == {
        "MTR-GRP-101",
        "MTR-GRP-102",
        "MTR-GRP-103",
    }
    # CB-045 open, the far section fed back through the tie from LINE-046
    assert {
        g for g in topo.unfed({"CB-045", "SW-045-2", "TIE-044-045", "TIE-046-061"}) if topo.type_of(g) == "meter_group"
    } == {"MTR-GRP-102", "MTR-GRP-103"}


def test_directed_tie_feeds_one_way_only() -> None:
    types = {"CB-A": "circuit_breaker", "CB-B": "circuit_breaker", "L-A": "power_line", "L-B": "power_line"}
    topo = Topology(
        node_types=types,
        edges=[
            Edge("CB-A", "L-A", CanonicalType.SUPPLY),
            Edge("CB-B", "L-B", CanonicalType.SUPPLY),
            Edge("L-A", "L-B", CanonicalType.ROUTE, normally_open=True),
        ],
    )
    assert [o.via for o in topo.alternative_supply_paths("L-B")] == ["L-A"]
    assert topo.alternative_supply_paths("L-A") == []


def test_unknown_node_in_an_edge_is_refused() -> None:
    with pytest.raises(ValueError, match="not a known element"):
        Topology(node_types={"A": "power_line"}, edges=[Edge("A", "B", CanonicalType.SUPPLY)])


def test_neighbours_and_export(topo: Topology) -> None:
    # the line's own node reaches its breaker and first section; sections reach the switches
    assert set(topo.neighbours("LINE-045", "circuit_breaker")) == {"CB-045"}
    assert set(topo.neighbours("LINE-045/2", "circuit_breaker")) == {"SW-045-1", "SW-045-2", "TIE-044-045"}
    data = topo.to_dict()
    assert data["nodes"]["MTR-GRP-101"] == "meter_group"
    assert any(e["normally_open"] for e in data["edges"])
