"""FLISR and switching sequences on the real rig: an advisory plan published to SCADA and run on a
signed approval; a switch that does not move stops the sequence in a safe state, raises an alarm,
and FLISR plans again around it; an operator's sequence file validated and run from the CLI;
the whole fault-isolation scenario command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gateway.commands import sign_command
from hil.rig import Rig
from hil.scenarios.fault_isolation import BREAKER, site
from tests.support.broker import subscriber

KEY = b"f" * 40
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir: Path = tmp_path_factory.mktemp("flisr")
    key = workdir / "command.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    doc = site()
    doc["flisr"] = {"mode": "advisory", "settle_s": 0.5}
    doc["uplink"]["commands"] = {"enabled": True, "scheme": "hmac", "key_file": str(key), "max_age_s": 120.0}
    with Rig(doc, workdir, hil_args=("--no-ami",)) as r:
        time.sleep(3.0)  # a few load samples before the first fault
        yield r


def _sequence(rig: Rig, since: float, statuses: tuple[str, ...]) -> dict[str, Any] | None:
    return next(
        (
            s
            for s in rig.daemon_call("switching.list")
            if s["source"] == "flisr" and s["created"] >= since and s["status"] in statuses
        ),
        None,
    )


def _lockout(rig: Rig, distance_m: float) -> float:
    start = time.time()
    rig.hil_call("fault", line="LINE-045", distance_m=distance_m, kind="3ph", transient=False)
    rig.wait(lambda: rig.daemon_call("status")["protection"]["breakers"][BREAKER]["locked_out"], "lockout", 30)
    return start


def _back_to_normal(rig: Rig) -> None:
    rig.hil_call("clear")
    for rec in rig.daemon_call("faults.list"):
        if rec["status"] in ("tripped", "permanent"):
            rig.daemon_call("faults.clear", id=rec["id"], reason="repaired")
    for dev, state in rig.hil_call("status")["devices"].items():
        rig.hil_call("failure", device=dev, mode="none")
        normal_open = dev.startswith("TIE-")
        if state["closed"] == normal_open:
            rig.hil_call("operate", device=dev, action="open" if normal_open else "close")
    rig.wait(
        lambda: rig.daemon_call("status")["protection"]["breakers"][BREAKER]["reclose_state"] in ("ready", "lockout"),
        "protection settled",
        20,
    )
    if rig.daemon_call("status")["protection"]["breakers"][BREAKER]["locked_out"]:
        rig.daemon_call("breaker.operate", breaker=BREAKER, action="close", authorised=True, reason="repaired")
    rig.wait(
        lambda: (
            all(s["energised"] for s in rig.hil_call("status")["sections"].values())
            and not any(d["fpi"] for d in rig.hil_call("status")["devices"].values())
        ),
        "normal",
        40,
    )
    time.sleep(3.5)  # the switch-onto-fault window after the close


def test_an_advisory_plan_is_published_and_runs_on_a_signed_approval(rig: Rig) -> None:
    assert rig.broker is not None
    base = f"stima/{rig.doc['site']['region']}/{rig.doc['site']['substation_id']}"
    with subscriber(rig.broker, f"{base}/#") as sub:
        start = _lockout(rig, 2700.0)
        proposed = rig.wait(lambda: _sequence(rig, start, ("proposed",)), "a proposed FLISR plan", 20)
        assert proposed["plan"]["located_zone"] == ["LINE-045/2"]
        time.sleep(1.0)
        assert rig.hil_call("status")["devices"]["SW-045-1"]["closed"], "an advisory plan must not run by itself"
        assert sub.wait_for(
            lambda _m: any(
                p.get("id") == proposed["id"] and p.get("status") == "proposed" for p in sub.on("switching")
            ),
            20,
        )
        env = sign_command(KEY, "switching/approve", {"sequence": proposed["id"]}, "ncc-1", time.time())
        sub.client.publish(
            f"{base}/cmd/switching/approve", msgpack.packb(env, use_bin_type=True), qos=1
        ).wait_for_publish(10)
        assert sub.wait_for(
            lambda _m: any(p.get("id") == env["id"] for p in sub.on("cmd_result/switching/approve")), 20
        )
        result = next(p for p in sub.on("cmd_result/switching/approve") if p.get("id") == env["id"])
        assert result["ok"] and result["status"] == "running", result
        done = rig.wait(lambda: _sequence(rig, start, ("done", "failed")), "the approved plan done", 30)
        assert done["status"] == "done" and done["approved_by"] == "scada:ncc-1"
        sections = rig.hil_call("status")["sections"]
        assert not sections["LINE-045/2"]["energised"]
        assert sections["LINE-045/1"]["energised"] and sections["LINE-045/3"]["energised"]
        # the steps ran with select-before-operate in the approver's name
        selected = [e for e in rig.daemon_call("events", since=start, limit=2000) if e["kind"] == "switching.selected"]
        assert {e["source"] for e in selected} >= {"SW-045-1", "SW-045-2", "CB-045"}
        assert all(e["origin"] == "scada:ncc-1" for e in selected)
    _back_to_normal(rig)


def test_a_switch_that_does_not_move_stops_the_sequence_and_flisr_plans_around_it(rig: Rig) -> None:
    rig.hil_call("failure", device="SW-045-2", mode="stuck")
    start = _lockout(rig, 2700.0)
    first = rig.wait(lambda: _sequence(rig, start, ("proposed",)), "a proposed plan", 20)
    rig.daemon_call("switching.approve", id=first["id"])
    failed = rig.wait(
        lambda: next(
            (
                s
                for s in rig.daemon_call("switching.list")
                if s["id"] == first["id"] and s["status"] in ("failed", "done")
            ),
            None,
        ),
        "the plan to stop",
        30,
    )
    assert failed["status"] == "failed"
    assert "SW-045-2 still reads closed" in failed["results"][-1]["message"]
    # stopped in a safe state: CB-045 was not closed after the failed isolation
    assert not rig.hil_call("status")["devices"][BREAKER]["closed"]
    alarms = [e for e in rig.daemon_call("events", since=start, limit=2000) if e["kind"] == "alert"]
    assert any("SW-045-2" in e["message"] and "failed" in e["message"] for e in alarms), alarms
    # a new plan without SW-045-2: the isolated zone takes in LINE-045/3 too
    second = rig.wait(
        lambda: next(
            (
                s
                for s in rig.daemon_call("switching.list")
                if s["source"] == "flisr" and s["created"] > first["created"]
            ),
            None,
        ),
        "a new plan",
        20,
    )
    assert set(second["plan"]["isolated_zone"]) == {"LINE-045/2", "LINE-045/3"}
    assert "SW-045-2" not in [s["device"] for s in second["steps"]]
    _back_to_normal(rig)


def test_an_operator_sequence_validated_and_run_from_the_cli(rig: Rig, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "gateway.cli", "switching"]
    rt = ["--runtime-dir", str(rig.runtime_dir)]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "parallel"\n[[steps]]\ndevice = "TIE-045-046"\naction = "close"\n')
    r = subprocess.run([*cli, "validate", str(bad), *rt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "parallel two sources" in r.stdout, r.stdout + r.stderr
    good = tmp_path / "backfeed.json"
    good.write_text(
        json.dumps(
            {
                "name": "Back-feed LINE-045/3 from LINE-046",
                "steps": [
                    {"device": "SW-045-2", "action": "open"},
                    {"device": "TIE-045-046", "action": "close", "require": {"SW-045-2": "open"}},
                ],
            }
        )
    )
    r = subprocess.run([*cli, "validate", str(good), *rt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(
        [*cli, "run", str(good), *rt], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 1 and "--yes" in r.stderr
    r = subprocess.run([*cli, "run", str(good), "--yes", "--json", *rt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seq_id = json.loads(r.stdout)["id"]
    done = rig.wait(
        lambda: (s := rig.daemon_call("switching.show", id=seq_id))["status"] in ("done", "failed") and s,
        "the operator's sequence",
        30,
    )
    assert done["status"] == "done", done["results"]
    sections = rig.hil_call("status")["sections"]
    assert sections["LINE-045/3"]["fed_through"] == "TIE-045-046" and sections["LINE-045/3"]["source"]
    r = subprocess.run([*cli, "show", seq_id, *rt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "DONE" in r.stdout and "TIE-045-046" in r.stdout
    # and back, break before make (closing SW-045-2 with the tie closed would parallel two feeders)
    back = tmp_path / "back.toml"
    back.write_text(
        'name = "back"\n[[steps]]\ndevice = "TIE-045-046"\naction = "open"\n'
        '[[steps]]\ndevice = "SW-045-2"\naction = "close"\n'
    )
    r = subprocess.run([*cli, "run", str(back), "--yes", "--json", *rt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    back_id = json.loads(r.stdout)["id"]
    done = rig.wait(
        lambda: (s := rig.daemon_call("switching.show", id=back_id))["status"] in ("done", "failed") and s, "back", 30
    )
    assert done["status"] == "done", done["results"]


def test_the_fault_isolation_scenario_command(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hil", "scenario", "run", "fault-isolation", "--json", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    result = json.loads(r.stdout)
    failed = [c for c in result["checks"] if not c["passed"]]
    assert r.returncode == 0 and result["passed"], failed
    assert set(result) >= {"scenario", "passed", "checks", "timeline", "figures"}
    figures = result["figures"]
    assert figures["closed_onto_fault"] == 0 and figures["overloaded_elements"] == []
    assert figures["customers_interrupted"] == 3 * 2500
    assert figures["customers_left_out"] == 750 + 500 + 1250  # each time, the faulted section only
    assert max(figures["seconds_lockout_to_restored"].values()) < 10.0
