"""`stima protection test|curve` through the real `stima` argument parser."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli.main import main
from gateway.cli.protection import UsageError, parse_quantity

SITE = str(Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml")


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_test_51p_prints_formula_and_core_times(capsys) -> None:
    code, out = run(capsys, "protection", "test", "CB-045", "--element", "51P", "--current", "2400A", "--config", SITE)
    assert code == 0
    assert "expected operate time (formula):  0.4623 s" in out
    assert "within one sample period" in out


def test_test_json_agrees_for_each_element_kind(capsys) -> None:
    cases = [
        ("CB-045", "51P", "--current", "2.4kA", 0.4623),
        ("CB-045", "51P", "--current", "1000", None),
        ("CB-046", "50P", "--current", "5000A", 0.05),
        ("CB-045", "27", "--voltage", "0.7pu", 2.0),
        ("CB-045", "59", "--voltage", "12.5kV", 2.0),
        ("CB-045", "81O", "--frequency", "52Hz", 0.5),
        ("CB-044", "51N", "--current", "40A", None),
    ]
    for breaker, element, flag, value, expected in cases:
        code, out = run(
            capsys,
            "protection",
            "test",
            breaker,
            "--element",
            element,
            flag,
            value,
            "--config",
            SITE,
            "--json",
            "--backend",
            "native",
        )
        data = json.loads(out)
        assert code == 0 and data["agree"], data
        if expected is not None:
            assert data["expected_s"] == pytest.approx(expected, abs=1e-4)
            assert abs(data["core_s"] - data["expected_s"]) <= data["step_s"] + 1e-9
    code, out = run(
        capsys, "protection", "test", "CB-044", "--element", "51P", "--current", "300A", "--config", SITE, "--json"
    )
    assert json.loads(out)["core_s"] is None  # below pickup: does not operate


def test_test_thermal_hot_start(capsys) -> None:
    code, out = run(
        capsys,
        "protection",
        "test",
        "CB-045",
        "--element",
        "49",
        "--current",
        "600A",
        "--preload",
        "400A",
        "--config",
        SITE,
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["agree"]
    assert data["expected_s"] == pytest.approx(342.188, abs=1e-3)


def test_test_reports_usage_errors(capsys) -> None:
    code, out = run(capsys, "protection", "test", "CB-999", "--element", "51P", "--current", "1A", "--config", SITE)
    assert code == 2 and "CB-999 has no protection scheme" in out and "CB-045" in out
    code, out = run(capsys, "protection", "test", "CB-046", "--element", "27", "--voltage", "5kV", "--config", SITE)
    assert code == 2 and "no 27 element" in out
    code, out = run(capsys, "protection", "test", "CB-045", "--element", "51P", "--current", "lots", "--config", SITE)
    assert code == 2 and "is not a current" in out


def test_curve_table_and_plot(capsys, tmp_path: Path) -> None:
    png = tmp_path / "cb046.png"
    code, out = run(capsys, "protection", "curve", "CB-046", "--element", "51P", "--config", SITE, "--plot", str(png))
    assert code == 0
    assert "7.0277" in out  # IEEE VI TD 1 at M = 2 (sheet: 7.02767)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_json_thermal_and_definite(capsys) -> None:
    code, out = run(capsys, "protection", "curve", "CB-045", "--element", "49", "--config", SITE, "--json")
    rows = json.loads(out)["rows"]
    assert code == 0 and rows[0]["m"] == 1.1 and rows[0]["time_s"] > rows[-1]["time_s"]
    code, out = run(capsys, "protection", "curve", "CB-045", "--element", "27", "--config", SITE)
    assert code == 2 and "definite-time" in out


def test_plot_without_matplotlib_says_so(capsys, monkeypatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, out = run(
        capsys, "protection", "curve", "CB-045", "--element", "51P", "--config", SITE, "--plot", str(tmp_path / "x.png")
    )
    assert code == 1
    assert "needs matplotlib" in out and "OPERATE_TIME_S" in out


def test_parse_quantity() -> None:
    assert parse_quantity("2.4kA", "current") == (2400.0, "")
    assert parse_quantity("0.7pu", "voltage") == (0.7, "pu")
    assert parse_quantity("400 V", "voltage") == (0.4, "")
    with pytest.raises(UsageError, match="unit 'Hz' is not a current unit"):
        parse_quantity("50Hz", "current")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=20), kind=st.sampled_from(["current", "voltage", "frequency"]))
def test_parse_quantity_parses_or_says_why(text: str, kind: str) -> None:
    try:
        value, unit = parse_quantity(text, kind)
    except UsageError as exc:
        assert repr(text) in str(exc) or text.strip() in str(exc)
    else:
        assert value >= 0.0 and unit in ("", "pu")
