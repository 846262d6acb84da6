"""Protection commissioning on the real rig.

`stima protection test --seq ... --live`: the simulator's relay of CB-045 plays the states, the
daemon polls it over Modbus TCP, its protection trips the simulated breaker, and the trip time
measured at the breaker is compared with the core's. `stima protection settings
export|check|diff`: the running settings exported, edited, checked, compared, reloaded, and
the running digest is then the one signed off."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from gateway.protection.settings_files import digest, parse
from hil.rig import Rig
from tests.support.faults import close_and_settle, fault_site

ROOT = Path(__file__).resolve().parents[1]
POLL_MS = 20
ALLOWANCE_S = 0.3
"""Transport allowance beyond one poll period. On a quiet machine the live trip comes 20-60 ms
after the core's (docs/commissioning.md); the tests run on a shared machine, so they check what
the relay did (which state, which curve: fast and delayed differ by 0.43 s here) rather than
how fast the machine was."""
BAND_S = POLL_MS / 1000 + ALLOWANCE_S


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    doc = fault_site(reclose=True, relay_poll_ms=POLL_MS)
    with Rig(doc, tmp_path_factory.mktemp("injection"), hil_args=("--no-ami",)) as r:
        yield r


def live(rig: Rig, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "protection",
            "test",
            "CB-045",
            *argv,
            "--live",
            "--hil-socket",
            str(rig.hil_socket),
            "--config",
            str(rig.site_path),
            "--runtime-dir",
            str(rig.runtime_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_a_stepped_sequence_trips_the_simulated_breaker_when_the_core_says(rig: Rig) -> None:
    """Pre-fault, a fault that steps down below the fast curve's trip, then up again: the first
    trip on the fast curve, at the time the core predicts within one poll period and the
    transport allowance; the 79 recloses onto the injected current and trips again."""
    start = time.time()
    r = live(
        rig,
        "--seq",
        "1s 200A; 0.2s 1200A; 0.3s 300A; 4s 1200A; 1.5s 0A",
        "--json",
        "--live-tolerance",
        str(ALLOWANCE_S),
    )
    data = json.loads(r.stdout)
    result = data["live"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert data["agree"] and result["agree"] and result["finished"]
    expected = data["runs"][0]["trip_s"]
    assert expected is not None and 1.5 < expected < 3.5
    assert result["expected_trip_s"] == expected
    assert -BAND_S <= result["measured_trip_s"] - expected <= BAND_S
    commands = result["commands"]
    assert commands[0]["kind"] == "trip" and commands[0]["state"] == 4
    # the 79 recloses onto the injected current and the delayed curve trips again, when the
    # core says (a 50BF retrip may come between: the breaker is seen open one poll later)
    reclose = next(c for c in commands if c["kind"] == "close")
    again = next(c for c in commands if c["kind"] == "trip" and c["time_s"] > reclose["time_s"])
    events = data["runs"][0]["events"]
    offline_trips = sorted({e["time_s"] for e in events if e["kind"] == "trip"})
    offline_reclose = next(e["time_s"] for e in events if e["kind"] == "reclose")
    assert len(offline_trips) >= 2
    delayed_s = offline_trips[1] - offline_reclose  # the delayed curve's time, from the reclose
    assert -BAND_S <= (again["time_s"] - reclose["time_s"]) - delayed_s <= BAND_S
    # the daemon saw it as protection: its own log has the trips
    trips = [
        e
        for e in rig.daemon_call("events", since=start - 1, source="CB-045", limit=200)
        if e["kind"] == "protection.trip"
    ]
    assert len(trips) >= 2
    rig.wait(
        lambda: not rig.daemon_call("status")["protection"]["breakers"]["CB-045"]["pickups"],
        "CB-045's elements to drop out",
        20,
    )


def test_a_sequence_below_pickup_does_not_trip_and_says_so(rig: Rig) -> None:
    if rig.hil_call("status")["breakers"]["CB-045"] != "closed":
        close_and_settle(rig, "CB-045")
    r = live(rig, "--seq", "0.5s 100A; 1s 500A; 0.5s 0A")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trip time: measured does not operate, core does not operate" in r.stdout
    assert "within" in r.stdout


def test_a_second_sequence_while_one_plays_or_with_other_settings_is_refused(rig: Rig, tmp_path: Path) -> None:
    rig.hil_call("inject", breaker="CB-045", states=[{"duration_s": 600.0, "ia": 100.0, "ib": 100.0, "ic": 100.0}])
    r = live(rig, "--seq", "1s 100A")
    assert r.returncode == 2 and "already playing" in r.stdout
    other = tmp_path / "other.toml"  # CB-045's 51P set otherwise than the daemon runs it
    doc = tomllib.loads(rig.site_path.read_text())
    next(p for p in doc["protection"] if p["breaker"] == "CB-045")["elements"]["51P"]["tms"] = 0.3
    other.write_text(tomli_w.dumps(doc))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "protection",
            "test",
            "CB-045",
            "--seq",
            "1s 100A",
            "--live",
            "--hil-socket",
            str(rig.hil_socket),
            "--config",
            str(other),
            "--runtime-dir",
            str(rig.runtime_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2 and "the daemon runs other protection settings for CB-045" in r.stdout
    stopped = rig.hil_call("injection", stop=True)
    assert not stopped["running"] and stopped["finished_s"] < 600.0
    rig.wait(
        lambda: rig.daemon_call("points.read", ids=["CB-045.ia"])[0]["value"] != 100.0,
        "the bay's own current served again",
        20,
    )
    bad = subprocess.run(
        [sys.executable, "-m", "hil", "status", "--control", str(rig.hil_socket)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 0  # the simulator keeps running


def settings_cmd(rig: Rig, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "protection",
            "settings",
            *argv,
            "--runtime-dir",
            str(rig.runtime_dir),
            "--config",
            str(rig.site_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_settings_exported_edited_checked_compared_and_reloaded(rig: Rig, tmp_path: Path) -> None:
    exported = tmp_path / "running.toml"
    r = settings_cmd(rig, "export", "--out", str(exported))
    assert r.returncode == 0, r.stdout + r.stderr
    running = parse(exported.read_text(), "running.toml")
    assert digest(running) in r.stdout and {s.breaker for s in running} >= {"CB-045", "CB-046"}
    r = settings_cmd(rig, "diff", str(exported))
    assert r.returncode == 0 and "no difference" in r.stdout, r.stdout + r.stderr
    # the engineer slows CB-045's 51P: checked against the site, compared with the running settings
    data = tomllib.loads(exported.read_text())
    cb045 = next(t for t in data["protection"] if t["breaker"] == "CB-045")
    old_tms = cb045["elements"]["51P"]["tms"]
    cb045["elements"]["51P"]["tms"] = round(old_tms * 1.2, 4)
    proposed = tmp_path / "proposed.toml"
    proposed.write_text(tomli_w.dumps(data))
    signed = digest(parse(proposed.read_text(), "proposed.toml"))
    r = settings_cmd(rig, "check", str(proposed))
    assert r.returncode == 0 and signed in r.stdout, r.stdout + r.stderr
    r = settings_cmd(rig, "diff", str(proposed), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert json.loads(r.stdout)["changes"] == [
        {"breaker": "CB-045", "key": "elements.51P.tms", "old": old_tms, "new": cb045["elements"]["51P"]["tms"]}
    ]
    # signed off: into the site file, reloaded; the running settings are now the file's
    site = tomllib.loads(rig.site_path.read_text())
    site["protection"] = data["protection"]
    before = rig.daemon_call("status")
    rig.site_path.write_text(tomli_w.dumps(site))
    assert rig.daemon is not None
    rig.daemon.send_signal(signal.SIGHUP)
    rig.wait(lambda: rig.daemon_call("status")["reloads"] > before["reloads"], "the reload", 60)
    assert rig.daemon_call("protection.settings")["digest"] == signed
    r = settings_cmd(rig, "diff", str(proposed))
    assert r.returncode == 0 and "no difference" in r.stdout, r.stdout + r.stderr
