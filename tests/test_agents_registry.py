"""The agent registry: one spec per type, read by the runtime, the CLI, the site validation, the
simulator's point map, the docs and the table tests; a new type is one module's spec."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import enum
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.agents import spec as sp
from gateway.agents.actions import StateChange, Topic
from gateway.agents.cli import register, types_markdown
from gateway.agents.fsm import TransitionTable, row
from gateway.agents.registry import SPECS, make_registry, spec_for
from gateway.agents.runtime import AgentRuntime
from gateway.agents.schema import AgentType
from gateway.agents.spec import AgentSpec, SpecError
from gateway.agents.vocabulary import POINT_NAMES
from gateway.config import AgentConfig, CanonicalType, ConnectionRule, SiteConfig, load
from tests.support.agent_types import weather_station
from tests.support.agent_types.weather_station import (
    WX_SPEC,
    WeatherStationAgent,
    WxState,
    WX_TABLE,
    WxAttributes,
    WxInputs,
)
from tests.test_agents_tables import check_table

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"


@pytest.fixture(scope="module")
def site() -> SiteConfig:
    return load(SITE)


# --------------------------------------------------------------------------- the gateway's own registry


def test_the_registry_holds_every_site_type_with_its_model_and_vocabulary() -> None:
    # every module of gateway/agents/elements, in the use case's order
    assert list(SPECS) == [t.value for t in AgentType]
    for t in AgentType:
        spec = spec_for(t.value)
        assert spec.type_name == t.value
        assert POINT_NAMES[t] == dict(spec.points)  # the site validation's vocabulary is the spec's
    # the site file's attributes are checked with the spec's model
    entry = {"id": "TX-9", "type": "transformer", "attributes": {"tap_min": "low"}}
    with pytest.raises(ValidationError, match="attributes.tap_min"):
        AgentConfig.model_validate(entry)
    with pytest.raises(ValidationError, match="unknown agent type 'weather_station'; known: power_line, transformer"):
        AgentConfig.model_validate({**entry, "type": "weather_station", "attributes": {}})
    with pytest.raises(KeyError, match="no agent type .weather_station. .known: capacitor_bank, circuit_breaker"):
        spec_for("weather_station")


def test_a_type_declared_twice_is_refused() -> None:
    with pytest.raises(SpecError, match="'transformer' is declared twice"):
        make_registry([*SPECS.values(), SPECS["transformer"]])


def test_the_requests_a_spec_declares_are_the_ones_its_agents_accept(site: SiteConfig) -> None:
    """A declared request reaches the agent (or the runtime) and is not refused as unknown; an
    undeclared one is refused naming the accepted ones."""
    rt = AgentRuntime(site, now=0.0)
    seen = set()
    for agent_id, spec in rt.specs.items():
        if spec.type_name in seen:
            continue
        seen.add(spec.type_name)
        agent = rt.agents[agent_id]
        for request in spec.requests:
            if request in spec.runtime_requests:
                continue
            try:
                agent.request(rt.memory[agent_id], request, {}, 0.0)  # type: ignore[attr-defined]
            except ValueError as exc:
                assert "unknown request" not in str(exc), (spec.type_name, request)
        with pytest.raises(ValueError, match="unknown request 'no_such_request'") as info:
            agent.request(rt.memory[agent_id], "no_such_request", {}, 0.0)  # type: ignore[attr-defined]
        for request in spec.requests:
            assert request in str(info.value) or request in spec.runtime_requests
    assert seen == {t for t in SPECS if SPECS[t].factory is not None}
    with pytest.raises(ValueError, match="no load-shedding plan"):  # a runtime request, from the spec
        rt.request("SUB-003", "shed", 1.0)


def test_docs_agents_md_is_generated_from_the_registry() -> None:
    """docs/agents.md is what `stima agents types --format markdown` prints: regenerate it after changing a spec."""
    assert (ROOT / "docs" / "agents.md").read_text() == types_markdown(SPECS)


def test_the_simulator_serves_and_obeys_the_registry_vocabulary(site: SiteConfig) -> None:
    """The simulated grid's point map is the registry's vocabulary (less what it leaves to other
    agents' points), its command points the registry's; what it serves it produces."""
    from hil.grid import model, point_map
    from hil.grid.ageing import CONDITION_NAMES

    for t in AgentType:
        assert point_map._NAMES[t] | point_map._NOT_MODELLED.get(t, frozenset()) == set(SPECS[t.value].points)
        assert point_map._COMMANDS.get(t, frozenset()) == SPECS[t.value].commands
    assert set(point_map.PHASOR_NAMES) <= point_map._NAMES[AgentType.CIRCUIT_BREAKER]
    produced: dict[AgentType, set[str]] = {}
    for path in sorted((ROOT / "deploy" / "examples").glob("*.toml")):
        example = load(path)
        first = next(a.id for a in example.agents if a.type == AgentType.TRANSFORMER)
        aged = example.model_copy(
            update={"simulation": {**example.simulation, "ageing": {first: {"profile": "scenario-3"}}}}
        )
        grid = model.GridModel.from_site(aged)
        for agent in example.agents:
            try:
                produced.setdefault(agent.type, set()).update(grid.agent_values(agent.id))
            except KeyError:
                continue  # not a modelled element
    assert CONDITION_NAMES <= produced[AgentType.TRANSFORMER]
    for t, names in produced.items():
        assert point_map._NAMES[t] - point_map._COMMANDS.get(t, frozenset()) <= names, (t, point_map._NAMES[t] - names)


# --------------------------------------------------------------------------- a made-up type, in one place


def _with_station(site: SiteConfig, points: dict[str, str]) -> SiteConfig:
    """The site plus one entry of the made-up type."""
    wx = AgentConfig.model_construct(
        id="WX-1",
        type="weather_station",
        attributes={"storm_wind_m_s": 25.0},
        points=points,
        connection_rules=[ConnectionRule(target_id="SUB-003", canonical_type=CanonicalType.DEPENDS_ON)],
    )
    return site.model_copy(update={"agents": [*site.agents, wx]})


def test_a_new_type_is_one_spec_the_runtime_builds_steps_and_subscribes(site: SiteConfig) -> None:
    registry = make_registry([*SPECS.values(), WX_SPEC])
    rt = AgentRuntime(_with_station(site, {"wind_m_s": "WX-1.wind_m_s"}), now=0.0, registry=registry)
    assert rt.types["WX-1"] == "weather_station" and isinstance(rt.agents["WX-1"], WeatherStationAgent)
    assert rt.agents["WX-1"].attrs.storm_wind_m_s == 25.0  # type: ignore[attr-defined]
    assert rt.agents["WX-1"].links.substation == "SUB-003"
    assert "WX-1" in rt.bus.subscribers(Topic.FAULT_ALERTS)
    rt.on_point("WX-1", "wind_m_s", 30.0, True, 0.0)
    actions = rt.tick(0.0, wall=1_790_000_000.0)
    assert rt.show("WX-1")["state"] == "Storm"
    assert any(isinstance(a, StateChange) and a.agent_id == "WX-1" and a.new == "Storm" for a in actions)
    assert rt.memory["WX-1"].last_wall_time == 1_790_000_000.0  # type: ignore[attr-defined]
    # a trip cuts customers off: the runtime's customer_impact reaches the station's handler
    for cb in ("CB-044", "CB-045", "CB-046"):
        rt.on_point(cb, "closed", True, True, 1.0)
    rt.tick(1.5)
    rt.on_protection_event("trip", "CB-045", "51P", "A", 8500.0, 2.0)
    assert rt.memory["WX-1"].outages_heard == 1  # type: ignore[attr-defined]
    # its memory survives a snapshot
    snap = rt.snapshot()
    again = AgentRuntime(_with_station(site, {"wind_m_s": "WX-1.wind_m_s"}), now=0.0, registry=registry)
    again.restore(snap)
    assert again.memory["WX-1"].state is WxState.STORM
    # and the CLI lists it and draws its table
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), registry=registry)
    args = parser.parse_args(["agents", "types", "weather_station", "--json"])
    assert args.registry["weather_station"] is WX_SPEC
    args = parser.parse_args(["agents", "diagram", "weather_station", "--format", "dot"])
    assert args.func(args) == 0
    assert "weather_station" in types_markdown(registry) and "`wind_m_s`" in types_markdown(registry)
    # and the table checks every agent type's table must pass cover it
    check_table(WX_SPEC.table)


def test_the_cli_prints_a_new_type(site: SiteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    registry = make_registry([*SPECS.values(), WX_SPEC])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), registry=registry)
    args = parser.parse_args(["agents", "types"])
    assert args.func(args) == 0
    listing = capsys.readouterr().out
    assert "weather_station" in listing.split("\n", 2)[2] and "outage_heard" in listing
    args = parser.parse_args(["agents", "diagram", "weather_station"])
    assert args.func(args) == 0
    assert "Calm" in capsys.readouterr().out
    # without it, the CLI refuses the name
    plain = argparse.ArgumentParser()
    register(plain.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        plain.parse_args(["agents", "types", "weather_station"])


_ONE_FILE = """
import sys
from gateway.agents import elements

elements.__path__.append(sys.argv[1])  # the made-up type's module, dropped beside the gateway's own

from gateway.agents.runtime import AgentRuntime
from gateway.cli.main import main
from gateway.site import load_site

site = load_site(sys.argv[2])
rt = AgentRuntime(site, now=0.0)
rt.on_point("WX-1", "wind_m_s", 31.0, True, 0.0)
rt.tick(0.0)
print("state", rt.show("WX-1")["state"])
sys.exit(main(sys.argv[3:]))
"""

_STATION = """
[[agents]]
id = "WX-1"
type = "weather_station"
attributes = { storm_wind_m_s = 30.0 }
points = { wind_m_s = "IED-WX-1.wind" }
connection_rules = [{ target_id = "SUB-003", canonical_type = "depends_on" }]

[[ieds]]
id = "IED-WX-1"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = 5999
unit_id = 7
points = [{ id = "IED-WX-1.wind", address = 0, type = "uint16", unit = "m/s", scale = 0.1 }]
"""


def test_a_new_type_is_one_module_in_the_elements_package(tmp_path: Path) -> None:
    """The module alone, on the elements package's path: the site file accepts the type and checks
    its points against its vocabulary, the runtime builds and steps it, the CLI lists it. Without
    the module the same site file is refused naming the type."""
    site = tmp_path / "site.toml"
    site.write_text(SITE.read_text() + _STATION)
    where = str(Path(weather_station.__file__).parent)
    script = [sys.executable, "-c", _ONE_FILE, where, str(site)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*args: str, module: str = where) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*script[:3], module, *script[4:], *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
        )

    listed = run("agents", "types")
    assert listed.returncode == 0, listed.stderr
    assert "state Storm" in listed.stdout and "weather_station" in listed.stdout
    assert "outage_heard" in listed.stdout  # its request, from its spec
    validated = run("config", "validate", str(site))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    # a point name outside the module's vocabulary is refused by the validation
    site.write_text(SITE.read_text() + _STATION.replace("wind_m_s =", "gust_m_s ="))
    refused = run("config", "validate", str(site))
    assert refused.returncode != 0 and "agents[" in refused.stdout + refused.stderr
    assert "gust_m_s" in refused.stdout + refused.stderr
    # without the module the type is unknown
    alone = run("config", "validate", str(site), module=str(tmp_path))
    assert alone.returncode != 0 and "unknown agent type 'weather_station'" in alone.stdout + alone.stderr


def test_a_table_with_an_undecided_event_fails_the_table_checks() -> None:
    class Grown(enum.Enum):
        WIND_LOW = enum.auto()
        WIND_HIGH = enum.auto()
        ICING = enum.auto()

    grown = TransitionTable(
        WxState,
        Grown,
        initial=WxState.CALM,
        rows={
            WxState.CALM: row(Grown, WIND_HIGH=WxState.STORM, ignore="WIND_LOW"),
            WxState.STORM: row(Grown, WIND_LOW=WxState.CALM, ignore="WIND_HIGH"),
        },
    )
    with pytest.raises(AssertionError):
        check_table(grown)


# --------------------------------------------------------------------------- unknown point names are refused


def test_an_input_that_is_no_point_name_is_refused_in_a_spec() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Typo:
        wind_ms: float | None = None

    with pytest.raises(SpecError, match="input 'wind_ms' of Typo is not a point name of the type"):
        AgentSpec(
            type_name="weather_station",
            table=WX_TABLE,
            attributes=WxAttributes,
            points={"wind_m_s": sp.analog("m/s")},
            inputs=Typo,
        )
    with pytest.raises(SpecError, match="derived inputs .'gust_m_s'. are not fields of WxInputs"):
        AgentSpec(
            type_name="weather_station",
            table=WX_TABLE,
            attributes=WxAttributes,
            points=WX_SPEC.points,
            inputs=WxInputs,
            derived=frozenset({"wall_time", "gust_m_s"}),
        )
    with pytest.raises(SpecError, match="runtime request 'shed' is not among the requests"):
        AgentSpec(
            type_name="weather_station",
            table=WX_TABLE,
            attributes=WxAttributes,
            points={},
            runtime_requests={"shed": lambda rt, a, now, args: []},
        )


def test_a_point_name_outside_the_spec_is_refused_in_a_site(site: SiteConfig) -> None:
    registry = make_registry([*SPECS.values(), WX_SPEC])
    with pytest.raises(
        ValueError,
        match="agent WX-1: weather_station has no point named wind_speed "
        r"\(known: ambient_temp_c, wind_m_s\)",
    ):
        AgentRuntime(_with_station(site, {"wind_speed": "WX-1.wind_speed"}), now=0.0, registry=registry)
    # the gateway's own types: the site validation reads the same vocabulary
    from gateway.site import agent_point_problems

    cb = site.agents[1]
    typo = cb.model_copy(update={"points": {**cb.points, "trip_cnd": "CB-044.trip_cmd"}})
    bad = site.model_copy(update={"agents": [site.agents[0], typo, *site.agents[2:]]})
    [problem] = agent_point_problems(bad)
    assert problem.path.endswith(".points.trip_cnd") and "trip_cmd" in problem.message
    with pytest.raises(ValueError, match="circuit_breaker has no point named trip_cnd"):
        AgentRuntime(bad, now=0.0)
