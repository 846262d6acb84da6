"""Sandbox: the exposure score systemd gives the unit, and why each remaining exposure stays."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.reliability.common import Report, part_main

TITLE = "Sandbox (systemd-analyze security)"
BUDGET_S = 60
METHOD = """
`systemd-analyze security --offline=true systemd/stima-gatewayd.service` scores the unit file as
shipped (0 is fully locked down, 10 fully exposed); offline, so it needs neither root nor a
running systemd. Every setting it still counts against the unit is listed with the reason the
daemon needs it. Goal: 2.0 or lower.
"""

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "stima-gatewayd.service"

WHY = {
    "PrivateNetwork=": "the daemon polls IEDs over TCP and talks to the regional MQTT broker",
    "RestrictAddressFamilies=~AF_(INET|INET6)": "Modbus TCP, IEC 61850 (MMS over TCP) and MQTT need IP sockets",
    "RestrictAddressFamilies=~AF_UNIX": "the control socket for the `stima` CLI, and sd_notify to systemd",
    "PrivateDevices=": "Modbus RTU needs the serial ports (limited by DeviceAllow to ttyS, ttyUSB, ttyACM)",
    "DeviceAllow=": "serial ports for Modbus RTU; char-rtc:r is systemd's own addition for ProtectClock",
    "SupplementaryGroups=": "`dialout` owns the serial ports",
    "PrivateUsers=": "a user namespace would hide the `dialout` group that opens the serial ports",
    "IPAddressDeny=": "IED and broker addresses are site-specific; restrict them at install time with "
    "IPAddressAllow= in a drop-in when the site's addresses are known",
    "MemoryDenyWriteExecute=": "libffi (cffi callbacks for IEC 61850 reports) needs executable trampolines",
    "UMask=": "0027: the state files are readable by the `stima` group (operators' tools), no one else",
    "ProcSubset=": "left at the default: /proc/meminfo and /proc/cpuinfo are read by the Python runtime and "
    "numpy; the gain (0.1) is not worth a start failure on some platform",
    "RootDirectory=/RootImage=": "the daemon runs from /opt/stima inside the host's file system, "
    "made read-only by ProtectSystem=strict",
}


def run(report: Report, workdir: Path, quick: bool) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        report.skip("systemd-analyze is not installed (Debian package 'systemd'; make deps installs it as root)")
        return
    out = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    text = out.stdout + out.stderr
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", text)
    if score is None:
        report.error = f"no score in the output of systemd-analyze security:\n{text[-2000:]}"
        return
    value = float(score.group(1))
    report.check("exposure score", f"{value:.1f}", "≤ 2.0", value <= 2.0)
    exposures = []
    for line in text.splitlines():
        if not line.startswith("✗"):
            continue
        parts = re.split(r"\s{2,}", line[1:].strip())
        setting = parts[0]
        weight = parts[-1] if re.fullmatch(r"[0-9.]+", parts[-1]) else ""
        exposures.append((setting, weight))
    unexplained = [s for s, _ in exposures if s not in WHY]
    report.check("remaining exposures without a reason", len(unexplained), "0", not unexplained)
    for setting, weight in exposures:
        report.row(f"exposure {setting}", f"+{weight}" if weight else "-", WHY.get(setting, "NOT EXPLAINED"))
    report.headline = f"exposure {value:.1f} (goal ≤ 2.0), {len(exposures)} remaining exposures each justified"
    report.data = {"score": value, "exposures": exposures}


if __name__ == "__main__":
    part_main("sandbox", TITLE, run)
