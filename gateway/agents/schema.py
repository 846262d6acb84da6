"""Site-file schema for agent attributes, one model per agent type (use-case names)."""

from __future__ import annotations

import enum

from pydantic import BaseModel


class AgentType(enum.Enum):
    POWER_LINE = "power_line"
    TRANSFORMER = "transformer"
    SMART_METER = "smart_meter"
    CIRCUIT_BREAKER = "circuit_breaker"
    SUBSTATION = "substation"
    CAPACITOR_BANK = "capacitor_bank"
    RENEWABLE_ENERGY = "renewable_energy"


AGENT_ATTRIBUTE_MODELS: dict[AgentType, type[BaseModel]] = {}
