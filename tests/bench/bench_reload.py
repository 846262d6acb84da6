"""Reload (SIGHUP) on a rig: the longest gap in protection evaluation, through the real daemon.

The example site (CB-045's relay polled every 20 ms over Modbus TCP, the CB-046 bay over
IEC 61850, the rest at their own periods, uplink to a TLS broker), reloaded again and again
with a new site file. Two kinds of reload:

- one IED changed: its adapter restarts, every other IED keeps polling on its link;
- every IED changed: every adapter restarts (each IED's poll period differs).

Protection schemes are unchanged, so the engine's live state is handed over each time. For
each reload the daemon reports (status.last_reload) the longest interval between two
protection evaluations from the reload's start until 5 s after the hand-over, and the
reload's own duration. For comparison, the same figure over 5 s windows of normal running
(the `protection.gaps` control operation); the protection clock steps every 5 ms between samples.
Figures only.

    python tests/bench/bench_reload.py [--reloads 6]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tomli_w  # noqa: E402

from hil.rig import Rig  # noqa: E402
from tests.support.faults import fault_site  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def variant(doc: dict[str, Any], n: int, every_ied: bool) -> dict[str, Any]:
    doc = tomllib.loads(tomli_w.dumps(doc))
    for ied in doc["ieds"]:
        if every_ied or ied["id"] == "IED-CB-044":
            ied["poll_period_ms"] = int(ied.get("poll_period_ms", 100)) + 1 + n % 2
    return doc


def reload_once(rig: Rig, doc: dict[str, Any]) -> dict[str, Any]:
    before = rig.daemon_call("status")["reloads"]
    rig.site_path.write_text(tomli_w.dumps(doc))
    assert rig.daemon is not None
    rig.daemon.send_signal(signal.SIGHUP)
    rig.wait(lambda: rig.daemon_call("status")["reloads"] > before, "the reload", 30)
    report = rig.wait(
        lambda: (r := rig.daemon_call("status")["last_reload"])["protection_longest_gap_s"] is not None and r,
        "the reload's gap window to close",
        30,
        interval_s=0.2,
    )
    if not report["ok"]:
        raise RuntimeError(f"reload failed: {report}")
    return dict(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reloads", type=int, default=3, help="reloads of each kind (about 8 s each)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Rig(fault_site(reclose=True, relay_poll_ms=20), Path(tmp), hil_args=("--no-ami",)) as rig,
    ):
        print(
            f"{'reload':<22} {'n':>3} {'gap p50 ms':>11} {'gap max ms':>11} {'build max ms':>13} "
            f"{'hand-over max ms':>17} {'reload p50 s':>13}  IEDs kept / restarted, breakers handed over"
        )
        for every_ied in (False, True):
            gaps, durations, builds, hand_overs, last = [], [], [], [], {}
            for n in range(args.reloads):
                last = reload_once(rig, variant(rig.doc, n, every_ied))
                gaps.append(last["protection_longest_gap_s"] * 1000.0)
                durations.append(last["duration_s"])
                builds.append(last["build_s"] * 1000.0)
                hand_overs.append(last["hand_over_s"] * 1000.0)
            name = "every IED changed" if every_ied else "one IED changed"
            print(
                f"{name:<22} {len(gaps):>3} {pct(gaps, 0.5):>11.1f} {max(gaps):>11.1f} {max(builds):>13.1f} "
                f"{max(hand_overs):>17.1f} {pct(durations, 0.5):>13.2f}  "
                f"{len(last['ieds_kept_running'])} / {len(last['ieds_restarted'])}, "
                f"{len(last['breakers_handed_over'])}",
                flush=True,
            )
        baseline = [
            rig.daemon_call("protection.gaps", window_s=5.0)["longest_gap_s"] * 1000.0 for _ in range(args.reloads)
        ]
        print(
            f"{'no reload (5 s windows)':<22} {len(baseline):>3} {pct(baseline, 0.5):>11.1f} {max(baseline):>11.1f}",
            flush=True,
        )
        status = rig.daemon_call("status")
        assert status["reload_failures"] == 0 and all(i["state"] == "online" for i in status["ieds"])


if __name__ == "__main__":
    main()
