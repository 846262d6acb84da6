"""The unit file passes `systemd-analyze verify` and carries the hardening the design asks for."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "stima-gatewayd.service"


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("systemd-analyze is missing: install Debian's 'systemd' package (or run the tests as root)")
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"],
        check=True,
        timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("systemd-analyze")
    assert found, "installing systemd did not provide systemd-analyze"
    return found


def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's real daemon entry point
    daemon = Path(sys.executable).with_name("stima-gatewayd")
    if not daemon.exists():
        daemon = Path(sys.executable)
    unit = tmp_path / "stima-gatewayd.service"
    unit.write_text(UNIT.read_text().replace("/opt/stima/venv/bin/stima-gatewayd", str(daemon)))
    result = subprocess.run([_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "stima-gatewayd.service" not in result.stderr, result.stderr


def test_unit_settings() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["User"] == "stima"
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert service[key] == "stima"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["CapabilityBoundingSet"] == ""
    assert service["DevicePolicy"] == "closed"
    text = UNIT.read_text()
    assert "DeviceAllow=char-ttyS rw" in text and "DeviceAllow=char-ttyUSB rw" in text
