"""docs/mqtt.md lists every word a host must understand, and the lists are the code's: states per
agent type, alarm severities, refusal reasons, interlock codes, the requests each agent type
accepts, command names. (Event kinds seen on the real rig are checked against the page in
tests/test_mqtt_contract.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.agents.actions import Severity
from gateway.agents.elements.capacitor_bank import CapacitorState
from gateway.agents.elements.circuit_breaker import BreakerState
from gateway.agents.elements.power_line import LineState
from gateway.agents.elements.renewable import DerState
from gateway.agents.runtime import AgentRuntime
from gateway.agents.elements.smart_meter import MeterState
from gateway.agents.elements.substation import SubstationState
from gateway.agents.elements.transformer import TransformerState
from gateway.alarms import NORMAL_STATES, SEVERITIES
from gateway.commands import Reason
from gateway.config import COMMAND_NAMES, SiteConfig
from gateway.switching.interlocks import TABLE

DOC = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text()


def _table_row(first_cell: str, after: str = "") -> list[str]:
    """The backquoted words in the rest of the first table row, after the text `after`, whose
    first cell is `first_cell`."""
    for line in DOC[DOC.index(after) :].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] == first_cell:
            return re.findall(r"`([^`]+)`", " ".join(cells[1:]))
    raise AssertionError(f"docs/mqtt.md has no table row {first_cell!r}")


@pytest.mark.parametrize(
    ("agent_type", "states"),
    [
        ("`circuit_breaker`", BreakerState),
        ("`power_line`", LineState),
        ("`transformer`", TransformerState),
        ("`substation`", SubstationState),
        ("`capacitor_bank`", CapacitorState),
        ("`renewable_energy`", DerState),
        ("`smart_meter` (in `meters.state`)", MeterState),
    ],
)
def test_every_state_of_every_agent_type_is_listed(agent_type: str, states: type) -> None:
    assert _table_row(agent_type) == [s.value for s in states]


def test_severities_reasons_interlocks_and_commands_are_listed() -> None:
    assert tuple(s.value for s in Severity) == SEVERITIES
    assert all(f"`{s}`" in DOC for s in SEVERITIES)
    reasons = {m.group(1) for m in re.finditer(r"^\| `([a-z_]+)` \| ", DOC, re.M)}
    assert {r.value for r in Reason} <= reasons
    assert {row.code for row in TABLE} <= set(re.findall(r"`([a-z_]+)`", DOC))
    for name in COMMAND_NAMES:
        assert f"| `{name}` |" in DOC
    normal = re.search(r"enters a normal state again\s*\(([^)]*)\)", DOC)
    assert normal is not None and set(re.findall(r"`([^`]+)`", normal.group(1))) == NORMAL_STATES


def test_the_requests_each_agent_type_accepts_are_listed() -> None:
    from hil.rig import example_document

    site = SiteConfig.model_validate(example_document())
    runtime = AgentRuntime(site, 0.0)
    by_type: dict[str, str] = {}
    for agent in site.agents:
        by_type.setdefault(agent.type, agent.id)
    for agent_type, agent_id in sorted(by_type.items()):
        with pytest.raises(ValueError) as info:
            runtime.request(agent_id, "no_such_request", 1.0)
        expected = re.search(r"\(expected ([^)]*)\)", str(info.value))
        assert expected is not None, str(info.value)
        accepted = {w.strip() for w in expected.group(1).split(",")}
        listed = set(_table_row(f"`{agent_type}`", after="Requests each agent type accepts"))
        if agent_type == "circuit_breaker":
            accepted -= {"open", "close"}  # documented: only through select and operate
        if agent_type == "substation":
            accepted |= {"shed"}
        assert accepted <= listed, (agent_type, accepted, listed)
