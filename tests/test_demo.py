"""`make demo` end to end: broker, simulator and daemon come up, values flow, the transient fault
is cleared by reclosing, regional SCADA opens and closes a breaker with signed commands, and a
permanent fault is located, isolated and restored around by FLISR.

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
        [
            sys.executable,
            "-m",
            "hil.demo",
            "--duration",
            "36",
            "--fault-at",
            "4",
            "--scada-at",
            "8",
            "--flisr-at",
            "24",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    # every IED online and every point good (as many as the example site has)
    assert re.search(r"IEDs online (\d+)/\1\b", out) and re.search(r"points good (\d+)/\1\b", out), out[-2000:]
    assert "uplink connected" in out
    summary = {
        line.split(":", 1)[1].split(":", 1)[0].strip(): line.split(":", 2)[2].strip()
        for line in out.splitlines()
        if re.match(r"demo: [^:]+: ", line)
    }
    events = summary["events on the broker"]
    assert re.search(r"CB-045 protection\.trip x\d", events), events
    # one reclose for the transient fault, two more and one lockout for the permanent one
    assert re.search(r"CB-045 protection\.reclose x3\b", events), events
    assert re.search(r"CB-045 protection\.lockout x1\b", events), events
    assert summary["SCADA"] == "open CB-044 ok, close CB-044 ok"
    assert summary["CB-044 positions seen"] == "closed, open", "CB-044 was never seen open"
    assert summary["FLISR"] == (
        "done; located LINE-045/2; open SW-045-1, open SW-045-2, close CB-045, "
        "close TIE-045-046; 2000 of 2500 customers restored, 500 left out"
    )
    assert re.fullmatch(
        r"CB-044 closed, CB-045 closed, CB-046 closed, SW-045-1 open, SW-045-2 open, "
        r"TIE-045-046 closed; IEDs online (\d+)/\1, points good (\d+)/\2, uplink connected",
        summary["at the end"],
    ), summary["at the end"]
    assert "messages arrived on the broker" in out
