"""Injected permanent faults are cleared by the real daemon against the simulated substation.

Over Modbus TCP (CB-045's relay) and over IEC 61850 reports and select-before-operate (the
CB-046 bay), each permanent fault trips the breaker, recloses onto the fault, and ends locked
out with the breaker open; an authorised operator close re-arms it once the fault is gone.
Timings are the benchmark's business (tests/bench/bench_fault_clearing.py), not this test's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.rig import Rig
from tests.support.faults import breaker, close_and_settle, fault_site


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir: Path = tmp_path_factory.mktemp("rig")
    with Rig(fault_site(reclose=True, relay_poll_ms=20), workdir, hil_args=("--no-ami",)) as r:
        yield r


@pytest.mark.parametrize(
    ("line", "cb", "distance_m", "kind"),
    [
        ("LINE-045", "CB-045", 300.0, "3ph"),
        ("LINE-045", "CB-045", 1800.0, "2ph"),
        ("LINE-046", "CB-046", 500.0, "3ph"),
        ("LINE-046", "CB-046", 1200.0, "2ph"),
    ],
)
def test_permanent_fault_is_cleared_and_locks_out(rig: Rig, line: str, cb: str, distance_m: float, kind: str) -> None:
    assert breaker(rig, cb) == "closed"
    before = len(rig.hil_call("clearings", last=10_000))
    rig.hil_call("fault", line=line, distance_m=distance_m, kind=kind, transient=False)
    # trip, two recloses onto the fault, lockout: the breaker ends open
    rig.wait(lambda: rig.daemon_call("status")["protection"]["breakers"][cb]["locked_out"], f"{cb} lockout", 30)
    rig.wait(lambda: breaker(rig, cb) == "open", f"{cb} open in the simulator", 10)
    clearings = rig.hil_call("clearings", last=10_000)[before:]
    assert clearings and clearings[0]["breaker"] == cb and clearings[0]["line"] == line
    assert rig.hil_call("status")["faults"], "the permanent fault is still there"
    events = rig.daemon_call("events", source=cb, limit=500)
    kinds = [e["kind"] for e in events]
    assert kinds.count("protection.reclose") >= 2 and "protection.lockout" in kinds
    # an unauthorised close is refused; clear the fault, then an authorised close re-arms it
    with pytest.raises(Exception, match="locked out"):
        rig.daemon_call("breaker.operate", breaker=cb, action="close", authorised=False)
    rig.hil_call("clear")
    close_and_settle(rig, cb)
    assert not rig.daemon_call("status")["protection"]["breakers"][cb]["locked_out"]


def test_lockout_survives_a_kill_of_the_daemon(rig: Rig) -> None:
    cb = "CB-045"
    rig.hil_call("fault", line="LINE-045", distance_m=700.0, kind="3ph", transient=False)
    rig.wait(lambda: rig.daemon_call("status")["protection"]["breakers"][cb]["locked_out"], f"{cb} lockout", 30)
    rig.hil_call("clear")
    rig.restart_daemon(hard=True)
    state = rig.daemon_call("status")["protection"]["breakers"][cb]
    assert state["locked_out"], "a kill -9 forgot the lockout"
    assert breaker(rig, cb) == "open"
    with pytest.raises(Exception, match="locked out"):
        rig.daemon_call("breaker.operate", breaker=cb, action="close", authorised=False)
    close_and_settle(rig, cb)


def test_stima_events_shows_the_protection_sequence(rig: Rig) -> None:
    """`stima events` lists what protection did, for people and for scripts."""
    import json
    import subprocess
    import sys

    base = [sys.executable, "-m", "gateway.cli", "events", "--runtime-dir", str(rig.runtime_dir)]
    scripted = subprocess.run(
        [*base, "--source", "CB-045", "--kind", "protection.", "--since", "1h", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scripted.returncode == 0, scripted.stderr
    events = json.loads(scripted.stdout)
    kinds = [e["kind"] for e in events]
    assert "protection.trip" in kinds and "protection.lockout" in kinds  # from the faults above
    assert all(e["source"] == "CB-045" and e["kind"].startswith("protection.") for e in events)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    human = subprocess.run([*base, "--source", "CB-045", "--limit", "5"], capture_output=True, text=True, timeout=60)
    assert human.returncode == 0 and human.stdout.startswith("TIME") and "CB-045" in human.stdout
    assert len(human.stdout.strip().splitlines()) == 2 + 5  # header, rule and the five newest
    bad = subprocess.run([*base, "--since", "yesterday"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected a duration such as 90s" in bad.stderr
