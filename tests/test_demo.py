"""`make demo` end to end: broker, simulator and daemon come up, values flow, the fault is
cleared by reclosing, and regional SCADA opens and closes a breaker with signed commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--duration", "34", "--fault-at", "4", "--scada-at", "8",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=240, cwd=ROOT, stdin=subprocess.DEVNULL)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IEDs online 17/17" in out and "points good 185/185" in out and "uplink connected" in out
    assert "last protection event: CB-045: protection.reclose" in out
    assert "SCADA operated: open CB-044 (signed command, result ok)" in out
    assert "SCADA operated: close CB-044 (signed command, result ok)" in out
    screens = out.split("Stima demo")
    assert "CB-044.closed                   False" in "".join(screens), "CB-044 was never seen open"
    assert screens[-1].count("CB-044.closed                    True") == 1, "CB-044 not closed again at the end"
    assert "messages arrived on the broker" in out
