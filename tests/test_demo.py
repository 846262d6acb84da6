"""`make demo` end to end: broker, simulator and daemon come up, values flow, the fault is
cleared by reclosing, and regional SCADA opens and closes a breaker with signed commands.

The assertions read the demo's closing summary (every event that reached the broker, the SCADA
operations, the positions seen and the state at the end), not one screen: a screen shows only
the last event, and the 27 element's pickup and dropout right after the reclose usually hide it.
"""

from __future__ import annotations

import re
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
    summary = {line.split(":", 1)[1].split(":", 1)[0].strip(): line.split(":", 2)[2].strip()
               for line in out.splitlines() if re.match(r"demo: [^:]+: ", line)}
    events = summary["events on the broker"]
    assert re.search(r"CB-045 protection\.trip x\d", events), events
    assert re.search(r"CB-045 protection\.reclose x1\b", events), events
    assert "CB-045 protection.lockout" not in events, "a transient fault must not lock the breaker out"
    assert summary["SCADA"] == "open CB-044 ok, close CB-044 ok"
    assert summary["CB-044 positions seen"] == "closed, open", "CB-044 was never seen open"
    assert summary["at the end"] == ("CB-044 closed, CB-045 closed, CB-046 closed; IEDs online 17/17, "
                                     "points good 185/185, uplink connected")
    assert "messages arrived on the broker" in out
