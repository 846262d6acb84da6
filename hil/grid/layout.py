"""Where things sit along the feeders: positions, in-series switching devices and ties.

Read from the agents' `connection_rules` as the site-file contract says (validated by
`gateway.config`): a rule's `position_m` is metres from the sending end of the power line at
the rule's other end; a `circuit_breaker` tapped on a line at a position, neither a tie nor
normally open, is in series and splits the line there; a tie is a `circuit_breaker` with
`route` rules to two lines, or to one line and an `external_source` (the far end of each route
defaults to the line's far end). Pure data, no electrical model: `hil.grid.model` builds the
network from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.agents.schema import AgentType, CircuitBreakerAttributes, PowerLineAttributes
from gateway.config import AgentConfig, CanonicalType, SiteConfig

_INJECTING = (AgentType.RENEWABLE_ENERGY, AgentType.CAPACITOR_BANK)


@dataclass(frozen=True, slots=True)
class TieEnd:
    line: str
    position_m: float


@dataclass(frozen=True, slots=True)
class TieLayout:
    """A tie switch: side 1 is its first route's line, side 2 the second line or the external source."""

    device: str
    ends: tuple[TieEnd, ...]
    external_source: str | None
    normally_open: bool


@dataclass(slots=True)
class SiteLayout:
    positions: dict[str, dict[str, float]] = field(default_factory=dict)
    """Line id → element id → position given by a rule (metres from the sending end)."""
    in_series: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    """Line id → in-series switching devices on it, (position, device id), nearest the source first."""
    ties: dict[str, TieLayout] = field(default_factory=dict)
    functions: dict[str, str] = field(default_factory=dict)
    """Switching device id → its `function` (breaker, recloser, load_break_switch)."""

    def tie_positions(self, line_id: str) -> list[float]:
        return [end.position_m for tie in self.ties.values() for end in tie.ends if end.line == line_id]

    def series_device_ids(self) -> set[str]:
        return {device for devices in self.in_series.values() for _, device in devices}


def _tap(agent: AgentConfig, rule_type: CanonicalType, target: AgentConfig) -> tuple[str, str] | None:
    """(element, line) when this rule taps an element on a line, else None."""
    if rule_type is CanonicalType.SUPPLY and agent.type == AgentType.POWER_LINE:
        return target.id, agent.id
    if rule_type is CanonicalType.DEPENDS_ON and target.type == AgentType.POWER_LINE:
        return agent.id, target.id
    if rule_type is CanonicalType.SUPPLY and target.type == AgentType.POWER_LINE and agent.type in _INJECTING:
        return agent.id, target.id
    return None


def site_layout(site: SiteConfig) -> SiteLayout:
    agents = {a.id: a for a in site.agents}
    layout = SiteLayout()
    lengths = {
        a.id: PowerLineAttributes.model_validate(a.attributes).length
        for a in site.agents
        if a.type == AgentType.POWER_LINE
    }
    breakers = {
        a.id: CircuitBreakerAttributes.model_validate(a.attributes)
        for a in site.agents
        if a.type == AgentType.CIRCUIT_BREAKER
    }
    layout.functions = {b: attrs.function for b, attrs in breakers.items()}
    for device, attrs in breakers.items():
        routes = [
            r
            for r in agents[device].connection_rules
            if r.canonical_type is CanonicalType.ROUTE and r.target_id in lengths
        ]
        if not routes and attrs.external_source is None:
            continue
        ends = tuple(
            TieEnd(r.target_id, r.position_m if r.position_m is not None else lengths[r.target_id]) for r in routes
        )
        layout.ties[device] = TieLayout(device, ends, attrs.external_source, attrs.normally_open)
    for agent in site.agents:
        for rule in agent.connection_rules:
            target = agents.get(rule.target_id)
            if target is None or rule.position_m is None or agent.id in layout.ties:
                continue
            tap = _tap(agent, rule.canonical_type, target)
            if tap is not None:
                layout.positions.setdefault(tap[1], {})[tap[0]] = rule.position_m
    for line, elements in layout.positions.items():
        series = sorted(
            (p, e)
            for e, p in elements.items()
            if e in breakers and e not in layout.ties and not breakers[e].normally_open
        )
        if series:
            layout.in_series[line] = series
    return layout
