"""A made-up agent type, whole in one module as an agent type of the gateway is: a weather station
that goes to Storm when the wind passes its attribute and counts the supply losses it hears of.

The registry tests add it to a registry of their own, and drop this directory on the path of
`gateway.agents.elements` to show that the module alone makes a type the site file, the runtime
and the CLI know."""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.agents import spec as sp
from gateway.agents.actions import Action, BusMessage, Topic
from gateway.agents.base import Agent, Links, Memory
from gateway.agents.fsm import TransitionTable, row
from gateway.agents.spec import AgentSpec


class WxState(enum.Enum):
    CALM = "Calm"
    STORM = "Storm"


class WxEvent(enum.Enum):
    WIND_LOW = enum.auto()
    WIND_HIGH = enum.auto()


WX_TABLE: TransitionTable[WxState, WxEvent] = TransitionTable(
    WxState,
    WxEvent,
    initial=WxState.CALM,
    rows={
        WxState.CALM: row(WxEvent, WIND_HIGH=WxState.STORM, ignore="WIND_LOW"),
        WxState.STORM: row(WxEvent, WIND_LOW=WxState.CALM, ignore="WIND_HIGH"),
    },
)


class WxAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    storm_wind_m_s: float = Field(default=20.0, gt=0)


@dataclass(frozen=True, kw_only=True)
class WxInputs:
    wind_m_s: float | None = None
    ambient_temp_c: float | None = None
    wall_time: float | None = None


@dataclass
class WxMemory(Memory):
    outages_heard: int = 0
    last_wall_time: float | None = None


class WeatherStationAgent(Agent[WxState, WxEvent]):
    agent_type = "weather_station"
    TABLE = WX_TABLE

    def __init__(self, agent_id: str, attrs: WxAttributes, links: Links) -> None:
        super().__init__(agent_id, links)
        self.attrs = attrs

    def initial_memory(self, now: float) -> WxMemory:
        return WxMemory(state=WX_TABLE.initial, since=now)

    def memory_from_dict(self, data: dict[str, Any]) -> WxMemory:
        return WxMemory.from_dict(data, WxState)

    def step(self, memory: WxMemory, inputs: WxInputs, now: float) -> tuple[WxMemory, list[Action]]:
        m = copy.deepcopy(memory)
        out: list[Action] = []
        m.last_wall_time = inputs.wall_time
        if inputs.wind_m_s is not None:
            storm = inputs.wind_m_s >= self.attrs.storm_wind_m_s
            self.fire(m, WxEvent.WIND_HIGH if storm else WxEvent.WIND_LOW, f"wind {inputs.wind_m_s} m/s", now, out)
        return m, out

    def request(
        self, memory: WxMemory, request: str, args: dict[str, Any], now: float
    ) -> tuple[WxMemory, list[Action]]:
        if request != "outage_heard":
            raise ValueError(f"weather station {self.agent_id}: unknown request {request!r} (expected outage_heard)")
        m = copy.deepcopy(memory)
        m.outages_heard += 1
        return m, []


def _heard(rt: sp.RuntimeView, agent_id: str, message: BusMessage, now: float) -> list[Action]:
    return rt.request(agent_id, "outage_heard", now) if message.payload.get("event") == "supply_lost" else []


WX_SPEC = AgentSpec(
    type_name="weather_station",
    table=WX_TABLE,
    attributes=WxAttributes,
    points={"wind_m_s": sp.analog("m/s"), "ambient_temp_c": sp.TEMP},
    inputs=WxInputs,
    derived=frozenset({"wall_time"}),
    derive_inputs=lambda rt, agent_id, wall: {"wall_time": wall},
    links=lambda b: Links(substation=b.substation),
    factory=lambda b, links: WeatherStationAgent(b.agent_id, b.attrs, links),
    step_order=50,
    listing_order=50,
    requests=("outage_heard",),
    subscriptions=(Topic.FAULT_ALERTS,),
    message_handlers={"customer_impact": _heard},
    description="a made-up weather station",
)

SPEC = WX_SPEC
