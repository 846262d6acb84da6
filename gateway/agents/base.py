"""Pieces every infrastructure agent shares: its memory, the transition helper, the links.

An agent object holds only settings (validated attributes and the topology links computed
once at build time). Everything that changes lives in its memory, a plain dataclass that
`step` copies and returns, so `step(memory, inputs, now) -> (memory, actions)` is pure.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, Self, TypeVar

from gateway.agents.actions import Action, StateChange
from gateway.agents.fsm import TransitionTable

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)
M = TypeVar("M", bound="Memory")

HISTORY_LENGTH = 20


@dataclass
class Memory:
    """Common part of every agent's memory: the state, since when, recent transitions."""

    state: Any
    since: float
    history: list[dict[str, Any]] = field(default_factory=list)

    TIME_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Fields holding monotonic times (numbers, lists of numbers, or lists of [time, value])."""

    def shift_times(self, delta_s: float) -> None:
        """Move every stored monotonic time by `delta_s` (the clock origin changed, e.g. a reboot)."""
        self.since += delta_s
        for record in self.history:
            record["time"] = record["time"] + delta_s
        for name in self.TIME_FIELDS:
            value = getattr(self, name)
            if isinstance(value, int | float):
                setattr(self, name, value + delta_s)
            elif isinstance(value, list):
                setattr(self, name, [_shift(v, delta_s) for v in value])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], state_type: type[enum.Enum]) -> Self:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["state"] = state_type(data["state"])
        return cls(**kwargs)


def _shift(value: Any, delta_s: float) -> Any:
    if isinstance(value, int | float):
        return value + delta_s
    if isinstance(value, list) and value:
        return [value[0] + delta_s, *value[1:]]
    return value


@dataclass(frozen=True, slots=True)
class Links:
    """Neighbours of an agent in the topology, resolved once when the runtime is built."""

    upstream_breaker: str | None = None
    breakers: tuple[str, ...] = ()
    transformers: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    substation: str | None = None
    adjacent_transformers: tuple[str, ...] = ()
    adjacent_lines: tuple[str, ...] = ()
    upstream_line: str | None = None
    transfer_options: tuple[dict[str, Any], ...] = ()
    customers_downstream: int = 0
    critical_customers_downstream: int = 0
    capacitors: tuple[str, ...] = ()


class Agent(Generic[S, E]):
    """Base of the infrastructure agent types; subclasses define TABLE, Memory and step."""

    agent_type: str = ""
    TABLE: TransitionTable[Any, Any]

    def __init__(self, agent_id: str, links: Links | None = None) -> None:
        self.agent_id = agent_id
        self.links = links or Links()

    def fire(self, memory: Memory, event: E, cause: str, now: float, actions: list[Action]) -> bool:
        """Apply one event through the table; record a real transition. Returns True on change."""
        old = memory.state
        new = self.TABLE.next(old, event)
        if new is old:
            return False
        memory.state = new
        memory.since = now
        record = {"time": now, "old": old.value, "new": new.value, "cause": cause, "event": event.name.lower()}
        memory.history = (memory.history + [record])[-HISTORY_LENGTH:]
        actions.append(
            StateChange(
                agent_id=self.agent_id, agent_type=self.agent_type, old=old.value, new=new.value, cause=cause, time=now
            )
        )
        return True

    def initial_memory(self, now: float) -> Memory:
        raise NotImplementedError

    def memory_from_dict(self, data: dict[str, Any]) -> Memory:
        raise NotImplementedError

    def attributes(self, memory: Memory) -> dict[str, Any]:
        """Live attributes for `stima agents show` (use-case names where they exist)."""
        return {}
