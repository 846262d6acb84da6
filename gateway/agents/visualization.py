"""The agents' `visualization_metadata`: how the use case asks each element to be drawn.

Pure functions of an agent's attributes and its live values (no I/O), shared by the HMI's
one-line diagram, `stima agents show` and the GeoJSON export, so every view draws an element
the same way:

- power line: colour by `voltage_rating` (red high, yellow medium, blue low), width by
  `voltage_rating`, solid for overhead and dashed for underground, `power_flow_animation`
  while it carries current;
- transformer: icon by `transformer_type`, colour by `load_percentage` (green below 80 %,
  yellow 80-90 %, red above 90 %), size by `rated_capacity`;
- smart meters (a group, drawn as one cluster per transformer): icon by `meter_type`, colour by
  status (green active, yellow high consumption, red outage), `cluster` for residential meters;
- switching devices (not in the use case's list): colour by position (red closed, green open,
  the utility control-room convention; magenta unknown), a hollow symbol when open.

A de-energised element is drawn grey whatever its own colour (`DEENERGISED`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

RED = "#d32f2f"
YELLOW = "#f9a825"
BLUE = "#1976d2"
GREEN = "#2e7d32"
GREY = "#9e9e9e"
MAGENTA = "#8e24aa"
DEENERGISED = GREY
"""Colour of everything the switching network finds without a source."""

HIGH_VOLTAGE_KV = 35.0
"""Lines at or above this are high voltage (red); medium from LOW_VOLTAGE_KV (yellow)."""
LOW_VOLTAGE_KV = 1.0
FLOWING_A = 1.0
"""A line carrying more than this is drawn with its power-flow animation."""
TRANSFORMER_YELLOW_PCT = 80.0
TRANSFORMER_RED_PCT = 90.0
METER_WARNING_STATES = frozenset({"High_Consumption", "Low_Voltage", "Power_Quality_Issue", "Tampered"})


def line_metadata(attributes: Mapping[str, Any], current_a: float | None = None) -> dict[str, Any]:
    kv = float(attributes.get("voltage_rating", 11.0))
    if kv >= HIGH_VOLTAGE_KV:
        color, width = RED, 5
    elif kv >= LOW_VOLTAGE_KV:
        color, width = YELLOW, 3
    else:
        color, width = BLUE, 2
    underground = attributes.get("line_type") == "underground"
    return {
        "color": color,
        "width": width,
        "style": "dashed" if underground else "solid",
        "power_flow_animation": current_a is not None and abs(current_a) > FLOWING_A,
    }


def transformer_metadata(attributes: Mapping[str, Any], load_percentage: float | None = None) -> dict[str, Any]:
    rated = max(float(attributes.get("rated_capacity", 1000.0)), 1.0)
    if load_percentage is None or not math.isfinite(load_percentage):
        color = GREY
    elif load_percentage > TRANSFORMER_RED_PCT:
        color = RED
    elif load_percentage >= TRANSFORMER_YELLOW_PCT:
        color = YELLOW
    else:
        color = GREEN
    size = round(min(24.0, max(10.0, 14.0 + 3.0 * math.log2(rated / 1000.0))), 1)
    return {"icon": f"transformer-{attributes.get('transformer_type', 'distribution')}", "color": color, "size": size}


def meters_metadata(meter_type: str, states: Mapping[str, int]) -> dict[str, Any]:
    """A meter group (or every group behind one transformer) as one cluster: the worst status
    present sets the colour, so one meter in outage among a thousand still shows."""
    if states.get("Outage", 0):
        color = RED
    elif any(states.get(s, 0) for s in METER_WARNING_STATES):
        color = YELLOW
    elif states and not states.get("Active", 0) and states.get("Communication_Loss", 0):
        color = GREY
    else:
        color = GREEN
    return {"icon": f"meter-{meter_type}", "color": color, "cluster": meter_type == "residential"}


def switch_metadata(attributes: Mapping[str, Any], position: str | None) -> dict[str, Any]:
    color = {"closed": RED, "open": GREEN}.get(position or "", MAGENTA)
    return {"icon": attributes.get("function", "breaker"), "color": color, "filled": position == "closed"}


def capacitor_metadata(steps_active: float | None, steps: int) -> dict[str, Any]:
    on = steps_active is not None and steps_active > 0
    return {"icon": "capacitor_bank", "color": GREEN if on else GREY, "steps": steps}


def der_metadata(attributes: Mapping[str, Any], state: str | None) -> dict[str, Any]:
    producing = state in ("Generating", "Curtailed")
    return {"icon": str(attributes.get("resource_type", "solar_pv")), "color": GREEN if producing else GREY}


def metadata(
    agent_type: str, attributes: Mapping[str, Any], live: Mapping[str, Any], state: str | None = None
) -> dict[str, Any]:
    """The metadata of one agent: `attributes` as configured, `live` as its agent reports them
    (`AgentRuntime.show()["attributes"]`), drawn by the view its type's spec names ({} for none)."""
    from gateway.agents.registry import SPECS  # the specs name the views below

    spec = SPECS.get(agent_type)
    view = spec.visualization if spec is not None else None
    return view(attributes, live, state) if view is not None else {}


# Each agent type's view (named by its spec).


def line_view(attributes: Mapping[str, Any], live: Mapping[str, Any], state: str | None) -> dict[str, Any]:
    return line_metadata(attributes, _num(live.get("current_a")))


def transformer_view(attributes: Mapping[str, Any], live: Mapping[str, Any], state: str | None) -> dict[str, Any]:
    return transformer_metadata(attributes, _num(live.get("load_percentage")))


def switch_view(attributes: Mapping[str, Any], live: Mapping[str, Any], state: str | None) -> dict[str, Any]:
    return switch_metadata(attributes, live.get("position"))


def capacitor_view(attributes: Mapping[str, Any], live: Mapping[str, Any], state: str | None) -> dict[str, Any]:
    return capacitor_metadata(_num(live.get("current_steps_active")), int(attributes.get("num_steps", 4)))


def der_view(attributes: Mapping[str, Any], live: Mapping[str, Any], state: str | None) -> dict[str, Any]:
    return der_metadata(attributes, state)


def substation_view(attributes: Mapping[str, Any], live: Mapping[str, Any], state: str | None) -> dict[str, Any]:
    return {"icon": "substation", "color": RED}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
