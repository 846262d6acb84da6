"""Every road to the plant is refused the same way: a permanent fault locks CB-045 out, and a
close tried by the CLI, the control socket, a signed SCADA select + operate and an agent request
(after an agent reset) is refused with the same interlock code, on the real daemon, the real
broker and the simulated substation; the breaker never closes onto the fault."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gateway.commands import sign_command
from gateway.control import ControlError
from hil.rig import Rig
from tests.support.broker import subscriber
from tests.support.faults import breaker, fault_site

KEY = b"r" * 40


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir: Path = tmp_path_factory.mktemp("roads")
    key = workdir / "command.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    doc = fault_site(reclose=True, relay_poll_ms=20)
    doc["uplink"]["commands"] = {"enabled": True, "scheme": "hmac", "key_file": str(key), "max_age_s": 120.0}
    with Rig(doc, workdir, hil_args=("--no-ami",)) as r:
        yield r


def _scada(rig: Rig, sub: Any, command: str, args: dict[str, Any]) -> dict[str, Any]:
    base = f"stima/{rig.doc['site']['region']}/{rig.doc['site']['substation_id']}"
    env = sign_command(KEY, command, args, "ncc-1", time.time())
    sub.client.publish(f"{base}/cmd/{command}", msgpack.packb(env, use_bin_type=True), qos=1).wait_for_publish(10)
    assert sub.wait_for(lambda _m: any(p.get("id") == env["id"] for p in sub.on(f"cmd_result/{command}")), 30)
    return next(p for p in sub.on(f"cmd_result/{command}") if p.get("id") == env["id"])


def _cli(rig: Rig, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv, "--runtime-dir", str(rig.runtime_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _control(rig: Rig, op: str, **args: Any) -> str:
    with pytest.raises(ControlError) as info:
        rig.daemon_call(op, **args)
    return str(info.value)


def test_a_locked_out_breaker_is_refused_the_same_way_on_every_road(rig: Rig) -> None:
    assert rig.broker is not None
    rig.hil_call("fault", line="LINE-045", distance_m=2300.0, kind="3ph", transient=False)
    rig.wait(lambda: rig.daemon_call("status")["protection"]["breakers"]["CB-045"]["locked_out"], "lockout", 30)
    rig.wait(lambda: rig.daemon_call("agents.show", id="CB-045")["state"] == "Locked_Out", "agent Locked_Out", 30)
    locked_at = rig.hil_call("status")["sim_time_s"]

    with subscriber(rig.broker, "stima/#") as sub:
        # plain closes: the lockout row refuses them all
        r = _cli(rig, "breaker", "close", "CB-045", "--yes")
        assert r.returncode == 1 and "refused (protection_lockout)" in r.stderr, r.stderr
        assert "refused (protection_lockout)" in _control(rig, "breaker.operate", breaker="CB-045", action="close")
        sel = _scada(rig, sub, "breaker/select", {"breaker": "CB-045", "action": "close"})
        assert sel["ok"] is False and sel["reason"] == "interlock" and sel["interlock"] == "protection_lockout"
        # the agent refuses a close itself; after an agent reset its close goes to the authority
        assert "Locked_Out" in _control(rig, "agents.request", id="CB-045", request="close")
        rig.daemon_call("agents.request", id="CB-045", request="reset")
        assert "refused (protection_lockout)" in _control(rig, "agents.request", id="CB-045", request="close")

        # authorised closes (the lockout overridden, with a reason): the fault is still indicated
        r = _cli(rig, "breaker", "close", "CB-045", "--yes", "--authorised", "--reason", "tried anyway")
        assert r.returncode == 1 and "refused (fault_indicated)" in r.stderr, r.stderr
        assert "refused (fault_indicated)" in _control(
            rig, "breaker.operate", breaker="CB-045", action="close", authorised=True, reason="tried anyway"
        )
        args = {"breaker": "CB-045", "action": "close", "authorised": True, "reason": "tried anyway"}
        sel = _scada(rig, sub, "breaker/select", args)
        assert sel["interlock"] == "fault_indicated"
        # SCADA cannot override it even as an explicit override of that row
        sel = _scada(
            rig,
            sub,
            "breaker/select",
            {**args, "override": ["fault_indicated", "protection_lockout", "agent_locked_out"]},
        )
        assert sel["ok"] is False and sel["interlock"] == "fault_indicated"
        assert any(
            p.get("kind") == "switching.refused" and p.get("interlock") == "fault_indicated" for p in sub.on("events")
        )

    # nothing reached the breaker, and the breaker never closed onto the fault
    assert breaker(rig, "CB-045") == "open"
    assert not [
        c
        for c in rig.hil_call("status")["last_commands"]
        if c["point"] == "CB-045.close_cmd" and c["sim_time_s"] >= locked_at
    ]
    refused = [e for e in rig.daemon_call("events", source="CB-045", limit=200) if e["kind"] == "switching.refused"]
    codes = {(e["via"], e["interlock"]) for e in refused}
    assert {
        ("local", "protection_lockout"),
        ("mqtt", "protection_lockout"),
        ("local", "fault_indicated"),
        ("mqtt", "fault_indicated"),
    } <= codes
    assert all(e["origin"] for e in refused)

    # the crew clears the fault; an authorised close with its reason now goes through
    rig.hil_call("clear")
    [record] = [f for f in rig.daemon_call("faults.list") if f["breaker"] == "CB-045" and f["status"] == "permanent"]
    rig.daemon_call("faults.clear", id=record["id"], reason="tree removed, line patrolled")
    done = rig.daemon_call(
        "breaker.operate", breaker="CB-045", action="close", authorised=True, reason="fault cleared by the crew"
    )
    assert [o["interlock"] for o in done["overridden"]] == ["protection_lockout"]
    rig.wait(lambda: breaker(rig, "CB-045") == "closed", "CB-045 closed", 20)
