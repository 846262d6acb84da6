"""Site-file validation: the example is valid, and each class of error is reported with its
key path, the value found and what was expected — all problems at once."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load, validate

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml"


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(data, "site.toml")
    return [str(p) for p in info.value.problems]


def test_example_site_is_valid_and_complete() -> None:
    site = load(EXAMPLE)
    assert site.site.substation_id == "SUB-003"
    ids = {a.id for a in site.agents}
    assert {"LINE-044", "LINE-045", "LINE-046", "CB-044", "CB-045", "CB-046", "XFMR-101", "XFMR-102"} <= ids
    types = {a.type for a in site.agents}
    assert {"capacitor_bank", "renewable_energy", "substation"} <= types
    assert sum(g.count for g in site.meter_groups) > 0
    protocols = {i.protocol for i in site.ieds}
    assert protocols == {"modbus_tcp", "modbus_rtu", "iec61850"}


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[site]\nregion = \n")
    with pytest.raises(ConfigError) as info:
        load(bad)
    assert info.value.source == str(bad)
    assert "not valid TOML" in str(info.value) and "line 2" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load(tmp_path / "absent.toml")


def test_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[site]\nname = "Embakasi \xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(bad)


def test_missing_required_key() -> None:
    data = example()
    del data["site"]["substation_id"]
    assert any(p.startswith("site.substation_id: Field required") for p in problems_of(data))


def test_wrong_type() -> None:
    data = example()
    data["ieds"][0]["poll_period_ms"] = "fast"
    (p,) = [p for p in problems_of(data) if "poll_period_ms" in p]
    assert p.startswith("ieds[0:IED-CB-044].poll_period_ms:") and "'fast'" in p and "integer" in p


def test_out_of_range_value() -> None:
    data = example()
    data["ieds"][0]["points"][0]["address"] = 70000
    (p,) = problems_of(data)
    assert p.startswith("ieds[0:IED-CB-044].points[0:CB-044.ia].address:")
    assert "65535" in p and "70000" in p


def test_bad_enumeration_value_lists_the_choices() -> None:
    data = example()
    data["ieds"][0]["points"][0]["word_order"] = "middle"
    (p,) = problems_of(data)
    assert "word_order" in p and "'big' or 'little'" in p and "'middle'" in p


def test_unknown_key_is_refused() -> None:
    data = example()
    data["ieds"][0]["pol_period_ms"] = 100
    (p,) = problems_of(data)
    assert p.startswith("ieds[0:IED-CB-044].pol_period_ms:") and "not permitted" in p


def test_unknown_protocol() -> None:
    data = example()
    data["ieds"][0]["protocol"] = "dnp3"
    (p,) = problems_of(data)
    assert "ieds[0:IED-CB-044]" in p and "'modbus_tcp', 'modbus_rtu', 'iec61850'" in p


def test_inconsistent_point_definition() -> None:
    data = example()
    coil = next(p for p in data["ieds"][0]["points"] if p.get("function") == "coil")
    coil["type"] = "float32"
    (p,) = problems_of(data)
    assert "coil point holds one bit" in p


def test_duplicate_ids() -> None:
    data = example()
    data["ieds"][1]["points"][0]["id"] = data["ieds"][0]["points"][0]["id"]
    problems = problems_of(data)
    assert any("point id is used more than once" in p and "CB-044.ia" in p for p in problems)


def test_dangling_references() -> None:
    data = example()
    data["agents"][1]["points"]["ia"] = "CB-999.ia"
    data["agents"][1]["connection_rules"][0]["target_id"] = "LINE-999"
    data["meter_groups"][0]["connected_transformer"] = "XFMR-999"
    problems = problems_of(data)
    assert any(p.startswith("agents[1:CB-044].points.ia: is not a point") and "CB-999.ia" in p for p in problems)
    assert any("connection_rules[0].target_id" in p and "LINE-999" in p for p in problems)
    assert any("meter_groups[0:MTR-GRP-101].connected_transformer" in p for p in problems)


def test_tls_without_certificates() -> None:
    data = example()
    del data["uplink"]["cert_file"]
    (p,) = problems_of(data)
    assert p.startswith("uplink:") and "cert_file" in p and "transport = 'tcp'" in p


def test_serial_line_settings_must_agree() -> None:
    data = example()
    rtu = next(i for i in data["ieds"] if i["protocol"] == "modbus_rtu")
    twin = {
        **rtu,
        "id": "IED-CAP-302",
        "unit_id": 8,
        "baudrate": 9600,
        "points": [{**rtu["points"][0], "id": "CAP-302.bus_voltage_kv"}],
    }
    data["ieds"].append(twin)
    (p,) = problems_of(data)
    assert "shares serial line" in p and "IED-CAP-302" in p


def test_every_problem_is_reported_at_once() -> None:
    data = example()
    data["site"]["substation_id"] = "SUB 003"
    data["ieds"][0]["port"] = 0
    data["ieds"][2]["timeout_ms"] = -5
    data["agents"][0]["points"]["bus_voltage_kv"] = "nowhere"
    assert len(problems_of(data)) == 4


def test_cli_validate_exit_status_and_output(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "validate", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "SUB-003" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("poll_period_ms = 100", "poll_period_ms = 1", 1))
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "INVALID" in out.stderr and "ieds[0:IED-CB-044].poll_period_ms" in out.stderr and "(found 1)" in out.stderr


# --------------------------------------------------------------------------- switching devices and positions


def _feeder_site(*extra: dict[str, Any], line_rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The example's identity and uplink with one small feeder: CB-1 → L-1 (3000 m), L-2 next to it."""
    data = example()
    data.update(ieds=[], protection=[], meter_groups=[], simulation={})
    rule = lambda target, kind, **kw: {"target_id": target, "canonical_type": kind, **kw}  # noqa: E731
    data["agents"] = [
        {"id": "SUB", "type": "substation", "connection_rules": [rule("CB-1", "supply"), rule("CB-2", "supply")]},
        {"id": "CB-1", "type": "circuit_breaker", "connection_rules": [rule("L-1", "supply")]},
        {"id": "CB-2", "type": "circuit_breaker", "connection_rules": [rule("L-2", "supply")]},
        {
            "id": "L-1",
            "type": "power_line",
            "attributes": {"length": 3000.0},
            "connection_rules": [rule("CB-1", "depends_on"), *(line_rules or [])],
        },
        {
            "id": "L-2",
            "type": "power_line",
            "attributes": {"length": 2000.0},
            "connection_rules": [rule("CB-2", "depends_on")],
        },
        *extra,
    ]
    return data


def _agent(agent_id: str, kind: str, *rules: dict[str, Any], **attributes: Any) -> dict[str, Any]:
    return {"id": agent_id, "type": kind, "attributes": attributes, "connection_rules": list(rules)}


def _rule(target: str, kind: str, **kw: Any) -> dict[str, Any]:
    return {"target_id": target, "canonical_type": kind, **kw}


def test_a_feeder_with_switches_and_ties_is_valid() -> None:
    site = validate(
        _feeder_site(
            _agent(
                "SW-1",
                "circuit_breaker",
                _rule("L-1", "depends_on", position_m=1500.0),
                function="load_break_switch",
                fpi_pickup_a=400.0,
            ),
            _agent("T-1", "transformer", _rule("L-1", "depends_on", position_m=800.0)),
            _agent("T-2", "transformer", _rule("L-1", "depends_on", position_m=2500.0)),
            _agent(
                "TIE-1",
                "circuit_breaker",
                _rule("L-1", "route", position_m=3000.0),
                _rule("L-2", "route"),
                function="load_break_switch",
                normally_open=True,
            ),
            _agent(
                "TIE-X",
                "circuit_breaker",
                _rule("L-2", "route"),
                external_source="SUB-006/LINE-061",
                normally_open=True,
                allow_parallel=True,
                function="recloser",
            ),
        ),
        "site.toml",
    )
    assert site.agent("SW-1").connection_rules[0].position_m == 1500.0
    from gateway.agents.schema import CircuitBreakerAttributes

    sw = CircuitBreakerAttributes.model_validate(site.agent("SW-1").attributes)
    assert sw.function == "load_break_switch" and sw.interrupting_capacity == pytest.approx(0.63)
    assert sw.fpi_pickup_a == 400.0 and not sw.normally_open
    tie = CircuitBreakerAttributes.model_validate(site.agent("TIE-X").attributes)
    assert tie.external_source == "SUB-006/LINE-061" and tie.allow_parallel and tie.normally_open
    assert CircuitBreakerAttributes.model_validate({}).interrupting_capacity == 25.0
    given = CircuitBreakerAttributes.model_validate({"function": "load_break_switch", "interrupting_capacity": 16.0})
    assert given.interrupting_capacity == 16.0


def test_position_must_be_along_a_power_line() -> None:
    data = _feeder_site(_agent("T-1", "transformer", _rule("CB-1", "depends_on", position_m=100.0)))
    (p,) = problems_of(data)
    assert p.startswith("agents[5:T-1].connection_rules[0].position_m:") and "must be a power_line" in p


def test_position_beyond_the_end_of_the_line() -> None:
    data = _feeder_site(_agent("T-1", "transformer", _rule("L-1", "depends_on", position_m=3500.0)))
    (p,) = problems_of(data)
    assert p.startswith("agents[5:T-1].connection_rules[0].position_m:")
    assert "0..3000 m" in p and "L-1" in p and "3500" in p


def test_negative_position_is_a_type_error() -> None:
    data = _feeder_site(_agent("T-1", "transformer", _rule("L-1", "depends_on", position_m=-1.0)))
    (p,) = problems_of(data)
    assert p.startswith("agents[5:T-1].connection_rules[0].position_m:") and "greater than or equal to 0" in p


def test_elements_on_a_line_with_an_in_series_switch_must_give_positions() -> None:
    data = _feeder_site(
        _agent("SW-1", "circuit_breaker", _rule("L-1", "depends_on", position_m=1500.0)),
        _agent("T-1", "transformer", _rule("L-1", "depends_on", position_m=800.0)),
        _agent("T-2", "transformer", _rule("L-1", "depends_on")),
        line_rules=[_rule("T-3", "supply")],
    )
    data["agents"].append(_agent("T-3", "transformer"))
    problems = problems_of(data)
    assert len(problems) == 2
    assert any(p.startswith("agents[7:T-2].connection_rules[0].position_m:") and "SW-1" in p for p in problems)
    assert any(p.startswith("agents[3:L-1].connection_rules[1].position_m:") and "T-3" in p for p in problems)


def test_old_style_sites_need_no_positions() -> None:
    """Without in-series devices, positions stay optional (the simulator spreads elements)."""
    validate(
        _feeder_site(
            _agent("T-1", "transformer", _rule("L-1", "depends_on")),
            _agent("T-2", "transformer", _rule("L-1", "depends_on", position_m=100.0)),
        ),
        "site.toml",
    )


def test_an_element_tapped_at_two_positions() -> None:
    data = _feeder_site(
        _agent("T-1", "transformer", _rule("L-1", "depends_on", position_m=800.0)),
        line_rules=[_rule("T-1", "supply", position_m=900.0)],
    )
    (p,) = problems_of(data)
    assert "connection_rules" in p and "T-1 is tapped on L-1 at different positions" in p


def test_a_tie_names_two_different_lines() -> None:
    data = _feeder_site(
        _agent("TIE-1", "circuit_breaker", _rule("L-1", "route"), _rule("L-1", "route"), normally_open=True)
    )
    (p,) = problems_of(data)
    assert p.startswith("agents[5:TIE-1].connection_rules:") and "two different power lines" in p


def test_a_tie_with_one_line_needs_an_external_source() -> None:
    data = _feeder_site(_agent("TIE-1", "circuit_breaker", _rule("L-1", "route"), normally_open=True))
    (p,) = problems_of(data)
    assert p.startswith("agents[5:TIE-1].connection_rules:") and "external_source" in p


def test_an_external_tie_has_one_route() -> None:
    data = _feeder_site(
        _agent(
            "TIE-1",
            "circuit_breaker",
            _rule("L-1", "route"),
            _rule("L-2", "route"),
            external_source="SUB-006/LINE-061",
            normally_open=True,
        )
    )
    (p,) = problems_of(data)
    assert p.startswith("agents[5:TIE-1].connection_rules:") and "exactly one route rule" in p


def test_a_tie_route_must_name_a_line() -> None:
    data = _feeder_site(
        _agent("TIE-1", "circuit_breaker", _rule("L-1", "route"), _rule("CB-2", "route"), normally_open=True)
    )
    problems = problems_of(data)
    assert any(p.startswith("agents[5:TIE-1].connection_rules[1].target_id:") and "power_line" in p for p in problems)


def test_tie_attributes_on_a_device_that_is_not_a_tie() -> None:
    data = _feeder_site(
        _agent("SW-1", "circuit_breaker", _rule("L-1", "depends_on", position_m=100.0), allow_parallel=True)
    )
    (p,) = problems_of(data)
    assert p.startswith("agents[5:SW-1].attributes.allow_parallel:") and "is for a tie" in p


def test_position_on_a_route_between_two_lines_is_refused() -> None:
    data = _feeder_site(line_rules=[_rule("L-2", "route", normally_open=True, position_m=100.0)])
    (p,) = problems_of(data)
    assert p.startswith("agents[3:L-1].connection_rules[1].position_m:") and "tie switch" in p


def test_position_on_a_command_rule_is_refused() -> None:
    data = _feeder_site()
    data["agents"][1]["connection_rules"].append(_rule("L-1", "command", position_m=0.0))
    (p,) = problems_of(data)
    assert p.startswith("agents[1:CB-1].connection_rules[1].position_m:") and "supply, depends_on and route" in p


@pytest.mark.parametrize(
    ("attributes", "key", "words"),
    [
        ({"function": "fuse"}, "function", "'breaker', 'recloser' or 'load_break_switch'"),
        ({"fpi_pickup_a": 0.0}, "fpi_pickup_a", "greater than 0"),
        ({"external_source": "SUB 006"}, "external_source", "pattern"),
    ],
)
def test_switching_device_attributes_are_checked(attributes: dict[str, Any], key: str, words: str) -> None:
    data = _feeder_site()
    data["agents"][1]["attributes"] = attributes
    problems = problems_of(data)
    assert any(p.startswith(f"agents[1:CB-1].attributes.{key}:") and words in p for p in problems), problems


def test_critical_meters_are_meters_of_their_group() -> None:
    site = validate(example(), "site.toml")
    hospital = next(g for g in site.meter_groups if g.id == "MTR-GRP-102")
    assert "MTR-102-00017" in hospital.critical_meters
    data = example()
    data["meter_groups"][0]["critical_meters"] = ["MTR-101-00420", "MTR-102-00017"]
    data["meter_groups"][1]["critical_meters"] = ["MTR-102-00751"]
    problems = problems_of(data)
    assert any(
        p.startswith("meter_groups[0:MTR-GRP-101].critical_meters:")
        and "critical_meters[1]" in p
        and "'MTR-102-00017'" in p
        and "MTR-101-00001 to MTR-101-01250" in p
        for p in problems
    )
    assert any(
        p.startswith("meter_groups[1:MTR-GRP-102].critical_meters:") and "'MTR-102-00751'" in p for p in problems
    )
    data = example()
    data["meter_groups"][0]["critical_meters"] = ["MTR-101-00420", "MTR-101-00420"]
    (p,) = problems_of(data)
    assert "listed twice" in p


def test_columnar_telemetry_is_refused_with_sparkplug_payloads() -> None:
    from hil.rig import example_document

    doc = example_document()
    doc["uplink"].update(payload="sparkplug_b", telemetry_format="columns")
    with pytest.raises(ConfigError) as info:
        validate(doc)
    assert "telemetry_format 'columns'" in str(info.value)
