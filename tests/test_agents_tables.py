"""Every agent type's transition table: one initial state, all states reachable, every pair decided."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from typing import Any

from gateway.agents.fsm import IGNORE, IllegalTransition, TransitionTable
from gateway.agents.registry import SPECS
from gateway.agents.schema import AgentType

TABLES = {name: spec.table for name, spec in SPECS.items()}

USE_CASE_STATES = {
    "power_line": {"Operational", "Loaded", "Overloaded", "Faulted", "De-energized", "Emergency"},
    "transformer": {
        "Normal_Operation",
        "High_Load",
        "Overloaded",
        "Overheating",
        "Voltage_Regulation",
        "Faulted",
        "Offline",
    },
    "smart_meter": {
        "Active",
        "High_Consumption",
        "Low_Voltage",
        "Power_Quality_Issue",
        "Outage",
        "Tampered",
        "Communication_Loss",
    },
    "circuit_breaker": {
        "Closed_Normal",
        "Closed_High_Current",
        "Tripped",
        "Open_Manual",
        "Reclosing",
        "Locked_Out",
        "Maintenance",
    },
    "substation": {
        "Normal_Operation",
        "High_Load",
        "Voltage_Regulation_Active",
        "Feeder_Fault",
        "Transformer_Fault",
        "Emergency_Mode",
        "Maintenance_Mode",
    },
    "capacitor_bank": {
        "All_Steps_Off",
        "Partial_Energization",
        "Fully_Energized",
        "Switching",
        "Locked_Out",
        "Maintenance",
    },
    "renewable_energy": {"Generating", "Standby", "Curtailed", "Islanded", "Faulted", "Offline", "Maintenance"},
}


def test_every_agent_type_has_a_table_and_an_attribute_model() -> None:
    assert {t.value for t in AgentType} <= set(TABLES)  # the types the code names are registered
    for spec in SPECS.values():
        assert issubclass(spec.attributes, BaseModel) and spec.attributes.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("agent_type", sorted(TABLES))
def test_transition_table(agent_type: str) -> None:
    # exactly the use case's state names (for the use case's types)
    if agent_type in USE_CASE_STATES:
        assert {s.value for s in TABLES[agent_type].states} == USE_CASE_STATES[agent_type]
    check_table(TABLES[agent_type])


def check_table(table: TransitionTable[Any, Any]) -> None:
    """What every agent type's table must be (a table added to the registry is checked by the above)."""
    # a single initial state, itself a state of the machine
    assert isinstance(table.initial, table.states)
    # no unreachable state
    assert table.reachable() == set(table.states), f"unreachable: {set(table.states) - table.reachable()}"
    # every (state, event) pair mapped or explicitly ignored, and nothing else in the rows
    assert table.missing_pairs() == []
    assert set(table.rows) == set(table.states)
    for row in table.rows.values():
        assert set(row) == set(table.events)
        for target in row.values():
            assert target is IGNORE or isinstance(target, table.states)
    # every state can be left (no trap) and `next` agrees with the rows
    for state in table.states:
        assert any(t is not IGNORE and t is not state for t in table.rows[state].values()), f"{state} is a trap"
        for event in table.events:
            expected = table.rows[state][event]
            assert table.next(state, event) is (state if expected is IGNORE else expected)
    assert table.to_dot().startswith("digraph")


def test_a_missing_pair_is_an_illegal_transition() -> None:
    import enum

    class S(enum.Enum):
        A = "A"
        B = "B"

    class E(enum.Enum):
        GO = 1
        STOP = 2

    table = TransitionTable(S, E, initial=S.A, rows={S.A: {E.GO: S.B}, S.B: {E.GO: IGNORE, E.STOP: S.A}})
    assert table.missing_pairs() == [(S.A, E.STOP)]
    with pytest.raises(IllegalTransition, match="STOP"):
        table.next(S.A, E.STOP)


def test_agent_decision_code_does_no_io() -> None:
    """Sans-IO: no module that decides imports asyncio, socket, time or threading (the CLI is a client)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "gateway"
    files = [p for p in (root / "agents").rglob("*.py") if p.name != "cli.py"]
    assert {"topology.py", "bus.py", "reliability.py", "circuit_breaker.py"} <= {p.name for p in files}
    forbidden = {"asyncio", "socket", "time", "threading", "selectors", "subprocess"}
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not forbidden & set(names), f"{path.name} imports {forbidden & set(names)}"


def test_a_row_has_no_default_so_a_new_event_is_undecided_until_named() -> None:
    """`row` maps only the events it names: an event added later is missing from every row."""
    import enum

    from gateway.agents.fsm import row

    class S(enum.Enum):
        A = "A"
        B = "B"

    class E(enum.Enum):
        GO = 1
        STOP = 2

    class ENew(enum.Enum):  # the same events plus one nobody has decided yet
        GO = 1
        STOP = 2
        NEW = 3

    rows = {S.A: dict(GO=S.B, ignore="STOP"), S.B: dict(STOP=S.A, ignore="GO")}
    decided = TransitionTable(S, E, initial=S.A, rows={s: row(E, **r) for s, r in rows.items()})  # type: ignore[arg-type]
    assert decided.missing_pairs() == []
    grown = TransitionTable(S, ENew, initial=S.A, rows={s: row(ENew, **r) for s, r in rows.items()})  # type: ignore[arg-type]
    assert grown.missing_pairs() == [(S.A, ENew.NEW), (S.B, ENew.NEW)]
    with pytest.raises(IllegalTransition, match="NEW"):
        grown.next(S.A, ENew.NEW)


def test_a_row_refuses_an_event_both_moved_and_ignored_and_an_unknown_name() -> None:
    import enum

    from gateway.agents.fsm import row

    class S(enum.Enum):
        A = "A"

    class E(enum.Enum):
        GO = 1

    with pytest.raises(ValueError, match="E.GO is both ignored and mapped"):
        row(E, GO=S.A, ignore="GO")
    with pytest.raises(KeyError, match="GOO"):
        row(E, ignore="GOO")
