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
    types = {a.type.value for a in site.agents}
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
    bad.write_bytes(b"[site]\nname = \"Embakasi \xe9\"\n")
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
    twin = {**rtu, "id": "IED-CAP-302", "unit_id": 8, "baudrate": 9600,
            "points": [{**rtu["points"][0], "id": "CAP-302.bus_voltage_kv"}]}
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
    ok = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "validate", str(EXAMPLE)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "SUB-003" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('poll_period_ms = 100', 'poll_period_ms = 1', 1))
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "validate", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "INVALID" in out.stderr and "ieds[0:IED-CB-044].poll_period_ms" in out.stderr and "(found 1)" in out.stderr


def test_critical_meters_are_meters_of_their_group() -> None:
    site = validate(example(), "site.toml")
    hospital = next(g for g in site.meter_groups if g.id == "MTR-GRP-102")
    assert "MTR-102-00017" in hospital.critical_meters
    data = example()
    data["meter_groups"][0]["critical_meters"] = ["MTR-101-00420", "MTR-102-00017"]
    data["meter_groups"][1]["critical_meters"] = ["MTR-102-00751"]
    problems = problems_of(data)
    assert any(p.startswith("meter_groups[0:MTR-GRP-101].critical_meters:") and "critical_meters[1]"
               in p and "'MTR-102-00017'" in p and "MTR-101-00001 to MTR-101-01250" in p for p in problems)
    assert any(p.startswith("meter_groups[1:MTR-GRP-102].critical_meters:") and "'MTR-102-00751'" in p
               for p in problems)
    data = example()
    data["meter_groups"][0]["critical_meters"] = ["MTR-101-00420", "MTR-101-00420"]
    (p,) = problems_of(data)
    assert "listed twice" in p
