"""Use case scenario 2 end to end: `stima-hil scenario run peak-demand --json` with two real
daemons, one simulator, the TLS broker with its ACL and the AMI broker; every check of the run
(actions in order and measured, demand response confirmed, the transfer confirmed by both sides,
the final load under 90 % without shedding, and the refusal, offline and broker-outage variants)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_peak_demand_scenario_command() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hil", "scenario", "run", "peak-demand", "--json", "--seed", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    result = json.loads(r.stdout)
    failed = [c for c in result["checks"] if not c["passed"]]
    assert r.returncode == 0 and result["passed"], failed
    f = result["figures"]
    assert set(f["reduction_mw"]) == {"cvr", "capacitors", "demand_response", "der", "transfer", "shed"}
    assert f["final_load_pct"] < 90.0 < f["peak_load_pct_before"]
    assert f["customers_shed"] == 0 and f["tie_closed"] is True
    assert f["reduction_mw"]["transfer"] > 1.0 and f["reduction_mw"]["demand_response"] > 0.5
    names = {c["name"] for c in result["checks"]}
    assert {
        "neighbour refuses: nothing operated, the part stays on its feeder",
        "neighbour offline: no tie operated, the part stays on its feeder",
        "broker outage mid-exchange ends in a safe state",
    } <= names
    assert any(m["source"] == "SUB-007 transfer" for m in result["timeline"])
