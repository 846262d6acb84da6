"""AgentSpec: everything the rest of the gateway needs to know about one agent type, declared once.

Each agent type's module (power_line.py, transformer.py, ...) ends with a `SPEC`; the registry
(`gateway.agents.registry`) collects them. The runtime builds, feeds, steps and subscribes agents
from the spec; the site validation reads its point vocabulary; the agents CLI, the simulator's
point map, the docs and the table tests read the registry. A spec is checked when it is made: an
input field that is neither a point name of the type nor a declared derived input, a runtime
request the type does not list, message handlers without a bus subscription, are refused at
import (`SpecError`).
"""

from __future__ import annotations

import enum
import keyword
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from gateway.agents.actions import Action, BusMessage, Topic
from gateway.agents.fsm import TransitionTable

if TYPE_CHECKING:
    from gateway.agents.base import Agent, Links, Memory
    from gateway.agents.topology import Topology
    from gateway.config import SiteConfig


class SpecError(ValueError):
    """An agent spec (or a registry of them) contradicts itself: a programming error, found at import."""


# --------------------------------------------------------------------------- point vocabulary


@dataclass(frozen=True, slots=True)
class PointName:
    """What a point an agent reads or writes must be in the process image."""

    kinds: frozenset[str]
    """Point kinds accepted (analog, binary, counter)."""
    units: frozenset[str] = frozenset()
    """Units accepted when the point states one (an empty unit is not checked); empty: any."""
    command: bool = False
    """Written by the gateway: the point must be writable (Modbus) or a control (IEC 61850)."""

    def describe(self) -> str:
        kinds = " or ".join(sorted(self.kinds))
        unit = f" in {' or '.join(sorted(self.units))}" if self.units else ""
        what = f"{'writable ' if self.command else ''}{kinds} point{unit}"
        return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


ANALOG = frozenset({"analog"})
BINARY = frozenset({"binary"})
COUNT = frozenset({"analog", "counter"})


def analog(*units: str) -> PointName:
    """A measured analog point in one of these units."""
    return PointName(ANALOG, frozenset(units))


KV, KW, KVAR, AMP = analog("kV"), analog("kW"), analog("kvar", "kVAr", "kVAR"), analog("A")
TEMP = analog("degC", "°C", "C")
HZ = analog("Hz")
BIT = PointName(BINARY)
BIT_COMMAND = PointName(BINARY, command=True)
SETPOINT = PointName(ANALOG, command=True)
COUNTER = PointName(COUNT)


def type_name(agent_type: enum.Enum | str) -> str:
    """The registry's key for a site entry's `type` (an `AgentType`, or the name itself)."""
    return str(agent_type.value) if isinstance(agent_type, enum.Enum) else str(agent_type)


def input_field(point: str) -> str:
    """The input dataclass field a point name fills (`in` is a Python keyword: `in_`)."""
    return point + "_" if keyword.iskeyword(point) else point


# --------------------------------------------------------------------------- what builders and handlers see


class RuntimeView(Protocol):
    """The part of the agent runtime a spec's input derivation and handlers may read or ask."""

    @property
    def agents(self) -> Mapping[str, Agent[Any, Any]]: ...

    @property
    def memory(self) -> Mapping[str, Memory]: ...

    @property
    def readings(self) -> Mapping[str, Mapping[str, float | bool | None]]: ...

    @property
    def fault_pending(self) -> set[str]: ...

    @property
    def types(self) -> Mapping[str, str]:
        """Agent id → type name, every agent of the site in the site file's order."""
        ...

    def breaker_is_open(self, breaker: str) -> bool | None: ...

    def request(self, agent_id: str, request: str, now: float, **args: Any) -> list[Action]: ...


@dataclass(frozen=True)
class Build:
    """One `[[agents]]` entry being built: its validated attributes, its point names, the topology."""

    agent_id: str
    attrs: Any
    points: frozenset[str]
    site: SiteConfig
    topology: Topology

    def first_upstream(self, node_type: str, node: str | None = None) -> str | None:
        """The nearest element of `node_type` feeding `node` (default: this agent)."""
        topo = self.topology
        return next((u for u in topo.upstream(node or self.agent_id) if topo.type_of(u) == node_type), None)

    @property
    def substation(self) -> str | None:
        return self.first_upstream("substation")

    @property
    def protecting_breaker(self) -> str | None:
        return self.topology.protecting_breaker(self.agent_id)

    def of_type(self, nodes: list[str], node_type: str) -> tuple[str, ...]:
        return tuple(n for n in nodes if self.topology.type_of(n) == node_type)

    def critical_downstream(self, node: str | None = None) -> int:
        """Critical customers fed through `node` (default: this agent)."""
        groups = set(self.topology.meter_groups_downstream(node or self.agent_id))
        return sum(g.critical_count for g in self.site.meter_groups if g.id in groups)


DeriveInputs = Callable[[RuntimeView, str, "float | None"], Mapping[str, Any]]
"""(runtime, agent id, wall time or None) → input fields not read from points (topology, other agents)."""
View = Callable[[Mapping[str, Any], Mapping[str, Any], "str | None"], dict[str, Any]]
"""(configured attributes, live attributes, state) → the use case's `visualization_metadata`."""
MessageHandler = Callable[[RuntimeView, str, BusMessage, float], list[Action]]
"""(runtime, agent id, message, now) → actions; a bus message the runtime turns into a request."""
RequestHandler = Callable[[RuntimeView, str, float, Mapping[str, Any]], list[Action]]
"""(runtime, agent id, now, arguments) → actions; a request carried out by the runtime, not the agent."""


def _no_derived(runtime: RuntimeView, agent_id: str, wall: float | None) -> Mapping[str, Any]:
    return {}


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class AgentSpec:
    """One agent type, declared once (see the module docstring for who reads what)."""

    type_name: str
    """The site file's `type` (and the use case's name), e.g. "power_line"."""
    table: TransitionTable[Any, Any]
    """States, events and every (state, event) pair decided."""
    attributes: type[BaseModel]
    """The site file's `attributes` of one entry of this type."""
    points: Mapping[str, PointName]
    """Point vocabulary: name in the agent's `points` table → kind, unit, command."""
    inputs: type | None = None
    """Dataclass the step reads; its fields are point names or `derived` names."""
    derived: frozenset[str] = frozenset()
    """Input fields the runtime fills from topology and other agents (`derive_inputs`), not from points."""
    derive_inputs: DeriveInputs = _no_derived
    links: Callable[[Build], Links] | None = None
    """Link rules: the neighbours this type needs, resolved once from the topology."""
    factory: Callable[[Build, Links], Agent[Any, Any]] | None = None
    """Makes the agent; None for a type the runtime does not hold one agent per entry of (the meter fleet)."""
    step_order: int = 100
    """Agents step in this order within a cycle (what others read steps first)."""
    listing_order: int = 100
    """Place of the type in listings (the registry, `stima agents types`, docs/agents.md)."""
    requests: tuple[str, ...] = ()
    """Operator and SCADA requests accepted (`stima agents request ID REQUEST`)."""
    runtime_requests: Mapping[str, RequestHandler] = field(default_factory=dict)
    """Requests the runtime carries out for the type (they concern other agents)."""
    subscriptions: tuple[Topic, ...] = ()
    """Bus topics the agents of this type hear."""
    message_handlers: Mapping[str, MessageHandler] = field(default_factory=dict)
    """Bus message kind → what the runtime does for it; other kinds go to the agent's `on_message`."""
    visualization: View | None = None
    """How views draw an agent of the type (gateway/agents/visualization.py); None: no metadata."""
    description: str = ""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SpecError(f"agent type {self.type_name!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []
        if not self.type_name or not self.type_name.replace("_", "").isalnum() or not self.type_name.islower():
            out.append("type_name must be lower-case letters, digits and '_'")
        for name in self.points:
            if not isinstance(self.points[name], PointName):
                out.append(f"point {name!r} is not declared with a PointName")
        if self.inputs is not None:
            if not is_dataclass(self.inputs):
                out.append(f"inputs {self.inputs!r} is not a dataclass")
            else:
                readable = {input_field(n) for n, p in self.points.items() if not p.command}
                for f in fields(self.inputs):
                    if f.name not in readable and f.name not in self.derived:
                        out.append(
                            f"input {f.name!r} of {self.inputs.__name__} is not a point name of the type "
                            f"(known: {', '.join(sorted(readable)) or 'none'}) nor a derived input"
                        )
                unknown = self.derived - {f.name for f in fields(self.inputs)}
                if unknown:
                    out.append(f"derived inputs {sorted(unknown)} are not fields of {self.inputs.__name__}")
        elif self.derived:
            out.append("derived inputs declared without an inputs dataclass")
        if (self.factory is None) != (self.links is None):
            out.append("factory and links go together")
        if self.factory is not None and self.inputs is None:
            out.append("an agent built by the runtime needs an inputs dataclass")
        for name in self.runtime_requests:
            if name not in self.requests:
                out.append(f"runtime request {name!r} is not among the requests {list(self.requests)}")
        if self.message_handlers and not self.subscriptions:
            out.append("message handlers without a bus subscription")
        if not isinstance(self.table.initial, self.table.states):
            out.append("the table's initial state is not one of its states")
        return out

    @property
    def commands(self) -> frozenset[str]:
        """The point names the gateway writes for this type."""
        return frozenset(n for n, p in self.points.items() if p.command)

    @property
    def measurements(self) -> frozenset[str]:
        return frozenset(n for n, p in self.points.items() if not p.command)

    def unknown_points(self, names: Mapping[str, Any] | set[str] | frozenset[str]) -> list[str]:
        """The names among `names` this type does not know (a typo in a site file, a point of another type)."""
        return sorted(n for n in names if n not in self.points)

    @cached_property
    def boolean_inputs(self) -> frozenset[str]:
        """Input fields read from binary-only points (positions, connection states): stored as bool."""
        return frozenset(input_field(n) for n, p in self.points.items() if p.kinds == BINARY and not p.command)

    @cached_property
    def input_fields(self) -> frozenset[str]:
        """Every field of the inputs dataclass (none without one)."""
        return frozenset(f.name for f in fields(self.inputs)) if self.inputs is not None else frozenset()
