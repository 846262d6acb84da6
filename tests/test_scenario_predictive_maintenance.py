"""Use-case scenario 3 end to end, as an operator runs it: `stima-hil scenario run
predictive-maintenance --json` against the real daemon, simulator and broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_predictive_maintenance_scenario_passes_with_its_figures() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hil", "scenario", "run", "predictive-maintenance", "--json", "--seed", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = json.loads(proc.stdout)
    failed = [c for c in result["checks"] if not c["passed"]]
    assert result["passed"] and proc.returncode == 0, failed
    names = " ".join(c["name"] for c in result["checks"])
    assert "healthy twin" in names and "revenue protection" in names
    f = result["figures"]
    assert 0.35 <= f["failure_probability"] <= 0.55 and f["horizon_days"] == 60
    assert f["work_order"]["id"].startswith("PM-") and f["work_order"]["window"]["label"]
    assert set(f["plans"]) == {"A", "B", "C"}
    for plan in f["plans"].values():
        assert plan["validated"] is True and plan["mva_covered"] > 0
        assert plan["way_back_validated"] is True and plan["way_back"][0] == "close CB-234P"
    assert f["critical_notified"] == 3 and f["customers_notified"] >= 2500
    assert f["twin_failure_probability"] < 0.02
    kinds = [m["source"] for m in result["timeline"]]
    assert "scada" in kinds and "switching" in kinds
