"""The agents' visualization_metadata follows the use case's rules, and every agent shows it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.agents import visualization as viz
from gateway.agents.runtime import AgentRuntime
from gateway.config import ConfigError
from hil.rig import example_document
from tests.support.feeder_sites import site_config


@pytest.mark.parametrize(
    ("kv", "color", "width"),
    [(66.0, viz.RED, 5), (35.0, viz.RED, 5), (11.0, viz.YELLOW, 3), (1.0, viz.YELLOW, 3), (0.415, viz.BLUE, 2)],
)
def test_line_colour_and_width_by_voltage_rating(kv: float, color: str, width: int) -> None:
    meta = viz.line_metadata({"voltage_rating": kv, "line_type": "overhead"})
    assert (meta["color"], meta["width"], meta["style"]) == (color, width, "solid")


def test_underground_lines_are_dashed_and_flow_is_animated_only_with_current() -> None:
    assert viz.line_metadata({"line_type": "underground"}, 120.0)["style"] == "dashed"
    assert viz.line_metadata({"line_type": "underground"}, 120.0)["power_flow_animation"] is True
    assert viz.line_metadata({"line_type": "overhead"}, 0.0)["power_flow_animation"] is False
    assert viz.line_metadata({"line_type": "overhead"}, None)["power_flow_animation"] is False


@given(st.floats(min_value=0.0, max_value=200.0))
def test_transformer_colour_by_load(load: float) -> None:
    color = viz.transformer_metadata({"rated_capacity": 1000.0}, load)["color"]
    assert color == (viz.RED if load > 90.0 else viz.YELLOW if load >= 80.0 else viz.GREEN)


def test_transformer_size_grows_with_rating_within_bounds() -> None:
    sizes = [viz.transformer_metadata({"rated_capacity": kva})["size"] for kva in (25, 250, 1000, 2500, 100_000)]
    assert sizes == sorted(sizes) and sizes[0] >= 10 and sizes[-1] <= 24 and sizes[0] < sizes[-1]
    assert viz.transformer_metadata({}, None)["color"] == viz.GREY


def test_meter_cluster_takes_the_worst_status_present() -> None:
    assert viz.meters_metadata("residential", {"Active": 999, "Outage": 1})["color"] == viz.RED
    assert viz.meters_metadata("residential", {"Active": 999, "High_Consumption": 1})["color"] == viz.YELLOW
    assert viz.meters_metadata("commercial", {"Active": 10})["color"] == viz.GREEN
    assert viz.meters_metadata("residential", {"Communication_Loss": 10})["color"] == viz.GREY
    assert viz.meters_metadata("residential", {})["cluster"] is True
    assert viz.meters_metadata("industrial", {})["cluster"] is False


def test_switch_colour_by_position() -> None:
    assert viz.switch_metadata({"function": "breaker"}, "closed") == {
        "icon": "breaker",
        "color": viz.RED,
        "filled": True,
    }
    assert viz.switch_metadata({}, "open")["color"] == viz.GREEN
    assert viz.switch_metadata({}, None)["color"] == viz.MAGENTA


def test_every_agent_of_the_example_shows_its_metadata() -> None:
    site = site_config(example_document())
    runtime = AgentRuntime(site, 0.0)
    for agent in site.agents:
        meta = runtime.show(agent.id)["visualization_metadata"]
        assert "color" in meta, agent.id
    assert runtime.show("LINE-046")["visualization_metadata"]["style"] == "dashed"  # underground cable
    assert runtime.show("LINE-045")["visualization_metadata"]["style"] == "solid"
    group = runtime.show("MTR-GRP-101")
    assert group["visualization_metadata"]["cluster"] is True
    assert sum(runtime.meter_states()["MTR-GRP-101"].values()) == 1250


def test_coordinates_outside_the_globe_are_refused() -> None:
    doc = example_document()
    xf = next(a for a in doc["agents"] if a["id"] == "XFMR-101")
    xf["attributes"]["coordinates"] = [95.0, 36.9]
    with pytest.raises(ConfigError) as exc:
        site_config(doc)
    assert any("agents" in p.path and "XFMR-101" in p.path for p in exc.value.problems), exc.value
