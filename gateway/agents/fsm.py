"""Transition tables: the one place each agent type's state logic is written down.

Rules (as in h11's state module): a table maps (state, event) to the next state; a pair that is
deliberately a no-op maps to `IGNORE`, named one by one (`row` has no default, so a new event is
decided in every state before the table test passes); a pair missing from the table is an
illegal move and raises `IllegalTransition`. Tables are plain data, so tests can check them exhaustively and
diagrams can be drawn from them. Behaviour code only *classifies* inputs into events; it never
assigns a state directly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class _Ignore(enum.Enum):
    IGNORE = "ignore"


IGNORE = _Ignore.IGNORE
"""Marks a (state, event) pair that is legal and leaves the state unchanged."""


class IllegalTransition(Exception):
    """An event arrived in a state whose table row does not mention it (a bug, not bad input)."""


@dataclass(frozen=True)
class TransitionTable(Generic[S, E]):
    states: type[S]
    events: type[E]
    initial: S
    rows: Mapping[S, Mapping[E, S | _Ignore]]

    def next(self, state: S, event: E) -> S:
        try:
            target = self.rows[state][event]
        except KeyError:
            raise IllegalTransition(
                f"{self.states.__name__}: event {event.name} is not allowed in {state.value}"
            ) from None
        return state if target is IGNORE else target

    def transitions(self) -> Iterable[tuple[S, E, S]]:
        """Every real move (ignored pairs left out), for diagrams and checks."""
        for state, row in self.rows.items():
            for event, target in row.items():
                if target is not IGNORE:
                    yield state, event, target

    def reachable(self) -> set[S]:
        seen = {self.initial}
        frontier = [self.initial]
        while frontier:
            state = frontier.pop()
            for target in self.rows.get(state, {}).values():
                if target is not IGNORE and target not in seen:
                    seen.add(target)
                    frontier.append(target)
        return seen

    def missing_pairs(self) -> list[tuple[S, E]]:
        return [(s, e) for s in self.states for e in self.events if e not in self.rows.get(s, {})]

    def to_dot(self) -> str:
        lines = [f'digraph "{self.states.__name__}" {{', f'  "{self.initial.value}" [shape=doublecircle];']
        for state, event, target in self.transitions():
            if state is not target:
                lines.append(f'  "{state.value}" -> "{target.value}" [label="{event.name.lower()}"];')
        lines.append("}")
        return "\n".join(lines)


def row(events: type[E], ignore: str = "", **targets: S | _Ignore) -> dict[E, S | _Ignore]:
    """A table row, every event decided by name: a target state, or listed in `ignore` (space-separated).

    There is no default: an event neither moved nor ignored is left out of the row, so
    `TransitionTable.missing_pairs` names it and the table test fails until someone decides it.
    An event both moved and ignored, or a name the event type does not have, is a mistake in the
    table and raises at import.
    """
    out: dict[E, S | _Ignore] = {}
    for name, target in targets.items():
        out[events[name]] = target
    for name in ignore.split():
        event = events[name]
        if event in out and out[event] is not IGNORE:
            raise ValueError(f"{events.__name__}.{name} is both ignored and mapped to {out[event]}")
        out[event] = IGNORE
    return out
