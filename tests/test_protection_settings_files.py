"""Protection settings as files: export and read back, the digest, the diff by key path, the
check against the site file, refusals naming the key; the command's offline `check`."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load
from gateway.protection.settings import ProtectionScheme
from gateway.protection.settings_files import (
    SettingsFileError,
    check_against_site,
    diff,
    digest,
    dump,
    export_text,
    parse,
)

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"
SCHEMES = load(SITE).protection


def _edited(schemes: list[ProtectionScheme], breaker: str, path: tuple[str, ...], value: Any) -> list[ProtectionScheme]:
    out = []
    for s in schemes:
        data = dump(s)
        if s.breaker == breaker:
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        out.append(ProtectionScheme.model_validate(data))
    return out


def test_an_export_reads_back_to_the_same_settings() -> None:
    text = export_text(SCHEMES, "protection settings of SUB-003\nexported for review")
    assert text.startswith("# protection settings of SUB-003\n# exported for review\n# settings digest sha256:")
    back = parse(text, "exported.toml")
    assert diff(SCHEMES, back) == [] and digest(back) == digest(SCHEMES)
    assert digest(SCHEMES) in text


def test_the_digest_is_of_the_settings_not_of_the_text() -> None:
    """Reordered tables, defaults left out, comments: the same digest; a whole site file gives
    its protection's digest."""
    terse = {"protection": [s.model_dump(mode="json", by_alias=True, exclude_defaults=True) for s in reversed(SCHEMES)]}
    assert digest(parse("# a comment\n" + tomli_w.dumps(terse), "terse.toml")) == digest(SCHEMES)
    assert digest(parse(SITE.read_text(), str(SITE))) == digest(SCHEMES)


@settings(max_examples=60, deadline=None)
@given(breaker=st.sampled_from([s.breaker for s in SCHEMES]), factor=st.floats(1.01, 3.0))
def test_a_changed_setting_is_the_one_difference_and_changes_the_digest(breaker: str, factor: float) -> None:
    old = next(s for s in SCHEMES if s.breaker == breaker)
    assert old.elements.p51 is not None
    new_pickup = old.elements.p51.pickup_a * factor
    changed = _edited(SCHEMES, breaker, ("elements", "51P", "pickup_a"), new_pickup)
    changes = diff(SCHEMES, changed)
    assert [(c.breaker, c.key, c.old, c.new) for c in changes] == [
        (breaker, "elements.51P.pickup_a", old.elements.p51.pickup_a, new_pickup)
    ]
    assert digest(changed) != digest(SCHEMES)


def test_removed_elements_and_schemes_are_listed() -> None:
    data = [dump(s) for s in SCHEMES]
    del data[0]["elements"]["51N"]
    dropped = data[1]["breaker"]
    del data[1]
    changes = diff(SCHEMES, [ProtectionScheme.model_validate(d) for d in data])
    assert any(c.breaker == SCHEMES[0].breaker and c.key == "elements.51N.tms" and c.new is None for c in changes)
    assert any(c.breaker == dropped and c.key == "" and c.new is None for c in changes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["protection"][1]["elements"]["51P"].update(tms=-0.1),
            "protection[1:CB-045].elements.51P.tms: Input should be greater than 0 (found -0.1)",
        ),
        (
            lambda d: d["protection"][0]["elements"]["51P"].update(curve="fast"),
            "protection[0:CB-044].elements.51P.curve",
        ),
        (
            lambda d: d["protection"][0]["elements"]["50P"].update(pikup_a=1.0),
            "pikup_a: Extra inputs are not permitted",
        ),
        (lambda d: d["protection"].append(d["protection"][0]), "breaker CB-044 has more than one scheme"),
        (lambda d: d.pop("protection"), "no [[protection]] table"),
    ],
)
def test_bad_files_are_refused_naming_the_key(edit: Any, message: str) -> None:
    data = {"protection": [dump(s) for s in SCHEMES]}
    edit(data)
    with pytest.raises(SettingsFileError) as exc:
        parse(tomli_w.dumps(data), "proposed.toml")
    assert any(message in p for p in exc.value.problems), exc.value.problems


def test_not_toml_is_refused() -> None:
    with pytest.raises(SettingsFileError, match="not valid TOML"):
        parse("[[protection]\nbreaker =", "broken.toml")


def test_check_against_the_site() -> None:
    site_data = tomllib.loads(SITE.read_text())
    assert check_against_site(list(SCHEMES), site_data, "site") == []
    wrong_point = _edited(list(SCHEMES), "CB-045", ("trip", "point"), "CB-045.tirp_cmd")
    problems = check_against_site(wrong_point, site_data, "site")
    assert any("CB-045" in p and "no IED has" in p and "tirp_cmd" in p for p in problems), problems


def _stima(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "protection", "settings", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_the_check_command(tmp_path: Path) -> None:
    good = tmp_path / "proposed.toml"
    good.write_text(export_text(SCHEMES, "for review"))
    r = _stima("check", str(good), "--config", str(SITE))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "both protection cores accept them" in r.stdout and digest(SCHEMES) in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(export_text(_edited(list(SCHEMES), "CB-046", ("close", "point"), "CB-046.nowhere"), "x"))
    r = _stima("check", str(bad), "--config", str(SITE), "--json")
    data = json.loads(r.stdout)
    assert r.returncode == 1 and data["problems"] and "CB-046.nowhere" in " ".join(data["problems"])
    broken = tmp_path / "broken.toml"
    broken.write_text("[[protection]]\nbreaker = 'CB-045'\n[protection.elements.51P]\npickup_a = 'lots'\n")
    r = _stima("check", str(broken), "--config", str(SITE))
    assert r.returncode == 1 and "protection[0:CB-045].elements.51P.pickup_a" in r.stdout
