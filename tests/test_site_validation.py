"""The one site-file validation (`gateway.site.load_site`): each cross-reference the schema
cannot see is refused with the file, the key and what was expected, all problems at once, and
`stima config validate`, the daemon's start and a reload refuse the same file the same way."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway import reload
from gateway.config import ConfigError
from gateway.daemon import main as daemon_main
from gateway.site import load_site

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml"


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def _agent(doc: dict[str, Any], agent_id: str) -> dict[str, Any]:
    return next(a for a in doc["agents"] if a["id"] == agent_id)


def _ied(doc: dict[str, Any], ied_id: str) -> dict[str, Any]:
    return next(i for i in doc["ieds"] if i["id"] == ied_id)


def _point(doc: dict[str, Any], point_id: str) -> dict[str, Any]:
    return next(p for i in doc["ieds"] for p in i["points"] if p["id"] == point_id)


def problems(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> list[str]:
    """The problems `load_site` reports for the example changed by `change`, written to a file."""
    doc = example()
    change(doc)
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert info.value.source == str(path)  # which file
    return [str(p) for p in info.value.problems]


def test_the_example_site_passes_every_check() -> None:
    assert load_site(EXAMPLE).site.substation_id == "SUB-003"


def test_an_agent_point_name_nobody_reads_is_refused(tmp_path: Path) -> None:
    def typo(doc: dict[str, Any]) -> None:
        _agent(doc, "CB-044")["points"]["trip_cnd"] = _agent(doc, "CB-044")["points"].pop("trip_cmd")

    [problem] = problems(tmp_path, typo)
    assert problem.startswith(
        "agents[1:CB-044].points.trip_cnd: is not a point name a circuit_breaker agent "
        "reads or writes (expected one of: "
    )
    assert "trip_cmd" in problem and "(found 'trip_cnd')" in problem


def test_an_agent_point_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    def analog_position(doc: dict[str, Any]) -> None:
        _agent(doc, "CB-044")["points"]["closed"] = "CB-044.ia"

    assert problems(tmp_path, analog_position) == [
        "agents[1:CB-044].points.closed: must name a binary point: CB-044.ia is analog (found 'CB-044.ia')"
    ]


def test_an_agent_point_in_the_wrong_unit_is_refused(tmp_path: Path) -> None:
    def amps_as_volts(doc: dict[str, Any]) -> None:
        _agent(doc, "LINE-044")["points"]["voltage_kv"] = "CB-044.ia"

    assert problems(tmp_path, amps_as_volts) == [
        "agents[4:LINE-044].points.voltage_kv: must name an analog point in kV: CB-044.ia is in 'A' (found 'CB-044.ia')"
    ]


def test_a_command_point_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    def read_only_trip(doc: dict[str, Any]) -> None:
        _point(doc, "CB-044.trip_cmd")["writable"] = False
        _point(doc, "CAP-301.steps_cmd")["writable"] = False

    found = problems(tmp_path, read_only_trip)
    assert (
        "agents[1:CB-044].points.trip_cmd: is a command: CB-044.trip_cmd must be one the gateway can write "
        "(writable = true) (found 'CB-044.trip_cmd')" in found
    )
    assert any(p.startswith("agents[9:CAP-301].points.steps_cmd: is a command") for p in found)


def test_a_command_point_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    def analog_trip(doc: dict[str, Any]) -> None:
        _agent(doc, "CB-045")["points"]["trip_cmd"] = "CAP-301.steps_cmd"  # writable, but a number

    assert problems(tmp_path, analog_trip) == [
        "agents[2:CB-045].points.trip_cmd: must name a writable binary point: CAP-301.steps_cmd is analog "
        "(found 'CAP-301.steps_cmd')"
    ]


def test_two_protection_schemes_for_one_breaker_are_refused(tmp_path: Path) -> None:
    def twice(doc: dict[str, Any]) -> None:
        doc["protection"].append(dict(doc["protection"][0]))

    n = len(example()["protection"])
    assert problems(tmp_path, twice) == [
        f"protection[{n}:CB-044].breaker: a breaker has one protection scheme: protection[0] already protects it "
        "(found 'CB-044')"
    ]


def test_protection_on_an_agent_that_is_not_a_breaker_is_refused(tmp_path: Path) -> None:
    def on_a_line(doc: dict[str, Any]) -> None:
        doc["protection"][0]["breaker"] = "LINE-044"

    assert (
        "protection[0:LINE-044].breaker: must name a circuit_breaker agent, not a power_line (found 'LINE-044')"
        in problems(tmp_path, on_a_line)
    )


def test_an_unreadable_command_key_is_refused(tmp_path: Path) -> None:
    def hmac(doc: dict[str, Any]) -> None:
        doc["uplink"]["commands"] = {"enabled": True, "scheme": "hmac", "key_file": "absent.key"}

    [problem] = problems(tmp_path, hmac)
    assert problem.startswith("uplink.commands.key_file: command key file ") and "absent.key" in problem


def test_a_tie_must_join_real_feeders(tmp_path: Path) -> None:
    def to_a_transformer_and_nowhere(doc: dict[str, Any]) -> None:
        routes = [r for r in _agent(doc, "TIE-044-045")["connection_rules"] if r["canonical_type"] == "route"]
        routes[0]["target_id"], routes[1]["target_id"] = "XFMR-101", "LINE-999"

    found = problems(tmp_path, to_a_transformer_and_nowhere)
    assert any(
        "TIE-044-045].connection_rules" in p and "a tie's route rule must name a power_line" in p and "XFMR-101" in p
        for p in found
    ), found
    assert any("TIE-044-045].connection_rules" in p and "is not an agent id (found 'LINE-999')" in p for p in found), (
        found
    )


def test_two_ieds_on_one_address_and_unit_are_refused(tmp_path: Path) -> None:
    def same_address(doc: dict[str, Any]) -> None:
        _ied(doc, "IED-XFMR-102")["port"] = 15101
        _ied(doc, "IED-BAY-046")["port"] = 10461  # IEC 61850: host and port

    found = problems(tmp_path, same_address)
    assert (
        "ieds[4:IED-XFMR-102]: has the address of IED IED-XFMR-101 (127.0.0.1:15101 unit 1): each IED needs "
        "its own address and unit" in found
    )
    assert any(p.startswith("ieds[14:IED-SW-046-1]: has the address of IED IED-BAY-046") for p in found), found


def test_another_unit_at_the_same_address_is_fine(tmp_path: Path) -> None:
    doc = example()
    _ied(doc, "IED-XFMR-102").update(port=15101, unit_id=2)
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(doc))
    assert load_site(path).ied("IED-XFMR-102").unit_id == 2  # type: ignore[union-attr]


def test_overlapping_registers_are_refused(tmp_path: Path) -> None:
    def overlap(doc: dict[str, Any]) -> None:
        _point(doc, "CB-044.ib")["address"] = 1  # float32 at 0..1 and at 1..2

    assert problems(tmp_path, overlap) == [
        "ieds[0:IED-CB-044].points[1:CB-044.ib].address: overlaps point CB-044.ia (holding registers 0..1): "
        "each register belongs to one point (found 1)"
    ]


def test_inverted_ranges_are_refused(tmp_path: Path) -> None:
    def inverted(doc: dict[str, Any]) -> None:
        _point(doc, "CB-046.ia")["valid_range"] = [5000.0, 0.0]
        _agent(doc, "SOLAR-201")["attributes"]["enter_service_v_min_pu"] = 1.2

    found = problems(tmp_path, inverted)
    assert (
        "ieds[2:IED-BAY-046].points[0:CB-046.ia].valid_range: is an inverted range: minimum 5000.0 above "
        "maximum 0.0 (found [5000.0, 0.0])" in found
    )
    assert (
        "agents[10:SOLAR-201].attributes.enter_service_v_min_pu: is an inverted range: minimum 1.2 above "
        "maximum 1.05 (found [1.2, 1.05])" in found
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def many(doc: dict[str, Any]) -> None:
        _agent(doc, "CB-044")["points"]["closed"] = "CB-044.ia"
        _agent(doc, "XFMR-101")["points"]["oil_temp"] = "XFMR-101.top_oil_temp_c"
        doc["protection"].append(dict(doc["protection"][1]))
        _point(doc, "CB-044.ib")["address"] = 1
        _ied(doc, "IED-XFMR-102")["port"] = 15101

    assert len(problems(tmp_path, many)) == 5


def _bad_file(tmp_path: Path) -> Path:
    doc = example()
    doc["protection"].append(dict(doc["protection"][0]))
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


EXPECTED = "protection[3:CB-044].breaker: a breaker has one protection scheme"


def test_config_validate_refuses_the_file(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"{path}: INVALID, 1 problem(s)" in out.stderr and EXPECTED in out.stderr


def test_the_daemon_refuses_to_start_on_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad_file(tmp_path)
    assert daemon_main(["--config", str(path), "--log-level", "ERROR"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 1 problem(s)" in err and EXPECTED in err


def test_a_reload_refuses_the_file_before_building_anything(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)

    class NeverBuilt:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("a refused file must not be built")

    with pytest.raises(ConfigError) as info:
        reload.build(path, clock=None, store=None, gateway_class=NeverBuilt)  # type: ignore[arg-type]
    assert info.value.source == str(path) and [str(p).split(" (found")[0] for p in info.value.problems] == [
        EXPECTED + ": protection[0] already protects it"
    ]


def test_the_vocabulary_covers_every_name_the_code_reads_or_writes() -> None:
    """Names read elsewhere (the runtime's inputs, switching, maintenance, the SCL import, the HIL)
    are all in the vocabulary, and the names written are commands there."""
    from dataclasses import fields

    from gateway.agents.registry import SPECS
    from gateway.agents.schema import AgentType
    from gateway.agents.vocabulary import POINT_NAMES
    from gateway.commissioning.scl_import import BREAKER_AGENT_POINTS
    from gateway.maintenance.service import HEALTH_NAMES
    from gateway.switching.authority import SETPOINT_POINTS, SWITCH_POINTS
    from gateway.switching.state import DEVICE_NAMES, LOAD_NAMES
    from hil.grid import point_map as model

    names = {t: set(v) for t, v in POINT_NAMES.items()}
    commands = {t: {n for n, spec in v.items() if spec.command} for t, v in POINT_NAMES.items()}
    for spec in SPECS.values():  # the fields the runtime fills from topology are declared `derived`
        if spec.inputs is not None:
            read = {"in" if f.name == "in_" else f.name for f in fields(spec.inputs)} - spec.derived
            assert read <= names[spec.type_name], (spec.type_name, read - names[spec.type_name])
    breaker, xfmr = AgentType.CIRCUIT_BREAKER, AgentType.TRANSFORMER
    assert set(BREAKER_AGENT_POINTS) | DEVICE_NAMES <= names[breaker]
    assert set(SWITCH_POINTS) | {"fpi_reset"} <= commands[breaker]
    assert set(HEALTH_NAMES) <= names[xfmr]
    for agent_type, (p, q) in LOAD_NAMES.items():
        assert {n for n in (p, q) if n} <= names[agent_type]
    written = set().union(*SETPOINT_POINTS.values())
    assert written <= set().union(*commands.values())
    for agent_type, hil_names in model._NAMES.items():
        assert hil_names <= names[agent_type], (agent_type, hil_names - names[agent_type])
    for agent_type, hil_commands in model._COMMANDS.items():
        assert hil_commands == commands[agent_type], agent_type
