"""The MQTT contract as a host adopting it from docs/mqtt.md meets it, on the real rig: a late
joiner reads every agent's state at once; a state of an agent removed from the site file is
cleared; the sequence rule (retained deliveries are not part of the sequence) finds no false gap;
a retained command is refused with its own reason and never carried out, and the message that
clears it is ignored quietly; breaker operations (SCADA, local, protection) are events."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.commands import sign_command
from gateway.keys import public_bytes
from gateway.storage import Store
from hil.rig import Rig
from tests.support.broker import subscriber
from tests.support.faults import breaker, clear_faults, fault_site

SCADA = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir: Path = tmp_path_factory.mktemp("contract")
    doc = fault_site(reclose=True, relay_poll_ms=20)
    doc["uplink"]["commands"] = {"enabled": True, "max_age_s": 120.0}
    with Rig(doc, workdir, hil_args=("--no-ami",)) as r:
        r.daemon_call("keys.add", name="ncc-1", public_key=public_bytes(SCADA.public_key()).hex(), role="operator")
        yield r


def _base(rig: Rig) -> str:
    return f"stima/{rig.doc['site']['region']}/{rig.doc['site']['substation_id']}"


def _command(rig: Rig, sub: Any, command: str, args: dict[str, Any], *, retain: bool = False) -> dict[str, Any]:
    env = sign_command(SCADA, command, args, "ncc-1", time.time(), key_name="ncc-1")
    sub.client.publish(
        f"{_base(rig)}/cmd/{command}", msgpack.packb(env, use_bin_type=True), qos=1, retain=retain
    ).wait_for_publish(10)
    assert sub.wait_for(lambda _m: any(p.get("id") == env["id"] for p in sub.on(f"cmd_result/{command}")), 30)
    return next(p for p in sub.on(f"cmd_result/{command}") if p.get("id") == env["id"])


def test_a_late_joiner_reads_every_agents_state_and_no_false_gap(rig: Rig) -> None:
    assert rig.broker is not None
    agents = {a["id"]: a["type"] for a in rig.doc["agents"]}
    base = _base(rig)
    time.sleep(1.0)
    with subscriber(rig.broker, f"{base}/#") as sub:
        assert sub.wait_for(lambda m: len({t for t, _p, r in m if "/state/" in t and r}) == len(agents), 20)
        states = {p["agent"]: p for t, p, r in sub.messages if "/state/" in t and r}
        assert set(states) == set(agents)
        assert all(p["agent_type"] == agents[a] and isinstance(p["new"], str) for a, p in states.items())
        assert states["CB-045"]["new"] == "Closed_Normal"
        # the sequence rule: messages delivered with the retain flag (birth, death, states) are not
        # part of the sequence; every other message follows the previous one by 1 (mod 256)
        sub.wait_for(lambda m: sum(1 for t, _p, r in m if not r) >= 30, 30)
        live = [p["seq"] for _t, p, r in list(sub.messages) if not r and isinstance(p, dict)]
        assert len(live) >= 30
        assert all((b - a) % 256 == 1 for a, b in zip(live, live[1:])), live
        retained_seqs = [p["seq"] for t, p, r in sub.messages if r and "/state/" in t]
        assert retained_seqs and any((s - live[0]) % 256 != 255 for s in retained_seqs)  # counting them would gap


def test_the_retained_state_of_an_agent_removed_from_the_site_file_is_cleared(rig: Rig) -> None:
    assert rig.broker is not None and rig.daemon is not None
    base = _base(rig)
    with subscriber(rig.broker, f"{base}/state/#") as host:
        host.client.publish(
            f"{base}/state/XFMR-OLD", msgpack.packb({"agent": "XFMR-OLD", "new": "Normal"}), qos=1, retain=True
        ).wait_for_publish(10)
    # this gateway once had XFMR-OLD in its site file
    rig.daemon.send_signal(signal.SIGTERM)
    rig.daemon.wait(30)
    store = Store(rig.workdir / "state" / "stima.db")
    try:
        known = store.load_snapshot("uplink.state_topics")
        assert "CB-045" in known
        store.save_snapshot("uplink.state_topics", [*known, "XFMR-OLD"], time.time())
    finally:
        store.close()
    rig.daemon = rig._spawn("gatewayd", [sys.executable, "-m", "gateway.daemon", "--config", str(rig.site_path)])
    rig.wait(lambda: rig.daemon_call("status")["uplink"]["state"] == "connected", "the daemon back", 60, 0.2)
    rig.wait(lambda: rig.daemon_call("status")["uplink"]["spool_depth"] == 0, "the spool sent", 30, 0.2)
    with subscriber(rig.broker, f"{base}/state/#") as late:
        assert late.wait_for(lambda m: len(m) >= len(rig.doc["agents"]), 20)
        time.sleep(0.5)
        assert not [t for t, _p, _r in late.messages if t.endswith("/XFMR-OLD")]
        assert len({t for t, _p, r in late.messages if r}) == len(rig.doc["agents"])


def test_the_gateway_has_its_own_key_pair_in_its_state_directory(rig: Rig) -> None:
    own = rig.daemon_call("status")["own_key"]
    path = rig.workdir / "state" / "gateway-ed25519.key"
    assert own["name"] == f"gw-{rig.doc['site']['substation_id']}" and len(bytes.fromhex(own["public_key"])) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    from gateway.keys import load_or_create_keypair, verify

    pair = load_or_create_keypair(path.parent, own["name"])
    assert verify(pair.sign({"kind": "load_transfer.request", "kw": 800.0}), bytes.fromhex(own["public_key"]))


def test_a_retained_command_is_refused_and_never_carried_out(rig: Rig) -> None:
    assert rig.broker is not None
    base = _base(rig)
    with subscriber(rig.broker, f"{base}/cmd_result/#") as sub:
        result = _command(rig, sub, "breaker/select", {"breaker": "CB-044", "action": "open"}, retain=True)
        assert result["ok"] is False and result["reason"] == "retained"
        assert rig.daemon_call("breaker.status", breaker="CB-044")["selected_by"] is None
        # the message that clears it gets no answer at all; an unknown device is bad_args
        sub.client.publish(f"{base}/cmd/breaker/select", b"", qos=1, retain=True).wait_for_publish(10)
        unknown = _command(rig, sub, "breaker/select", {"breaker": "CB-999", "action": "open"})
        assert unknown["reason"] == "bad_args" and "CB-999" in unknown["error"]
        assert len(sub.on("cmd_result/breaker/select")) == 2
    refused = [e for e in rig.daemon_call("events", source="gateway", limit=100) if e["kind"] == "command.refused"]
    assert any(e["reason"] == "retained" for e in refused)


def test_breaker_operations_are_events_whoever_made_them(rig: Rig) -> None:
    assert rig.broker is not None
    base = _base(rig)
    with subscriber(rig.broker, f"{base}/#") as sub:
        sel = _command(rig, sub, "breaker/select", {"breaker": "CB-044", "action": "open"})
        op = _command(
            rig, sub, "breaker/operate", {"breaker": "CB-044", "action": "open", "select_id": sel["select_id"]}
        )
        assert op["ok"] and op["key"] == "ncc-1", op
        rig.wait(lambda: rig.daemon_call("breaker.status", breaker="CB-044")["position"] == "open", "CB-044 open", 20)
        rig.daemon_call("breaker.operate", breaker="CB-044", action="close")
        rig.wait(lambda: breaker(rig, "CB-044") == "closed", "CB-044 closed", 20)
        rig.hil_call("fault", line="LINE-045", distance_m=2300.0, kind="3ph", transient=True)

        def kinds(m: Any) -> list[tuple[str, str, str]]:
            return [
                (p.get("kind"), p.get("via"), p.get("action"))
                for p in sub.on("events")
                if p.get("source") in ("CB-044", "CB-045")
            ]

        assert sub.wait_for(
            lambda m: (
                {
                    ("switching.accepted", "mqtt", "open"),
                    ("switching.done", None, "open"),
                    ("switching.accepted", "local", "close"),
                    ("switching.done", None, "close"),
                    ("switching.protection", "protection", "open"),
                }
                <= set(kinds(m))
            ),
            30,
        ), "; ".join(map(str, sorted(set(kinds(0)), key=str)))
        done = [p for p in sub.on("events") if p.get("kind") == "switching.done" and p.get("source") == "CB-044"]
        assert {p["origin"] for p in done} >= {"scada:ncc-1"}
        assert sub.wait_for(
            lambda m: any(p.get("kind") == "protection.trip" and p["source"] == "CB-045" for p in sub.on("events")), 30
        )
        trip = next(p for p in sub.on("events") if p.get("kind") == "protection.trip" and p["source"] == "CB-045")
        assert trip["current_a"] > 500.0
        # every kind a host met is in the page's table of event kinds
        doc = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text()
        table = doc[doc.index("Event kinds:") : doc.index("Every breaker operation is therefore an event")]
        documented = {
            k
            for row in table.splitlines()
            if row.startswith("| `")
            for k in re.findall(r"`([a-z_.]+)`", row.split("|")[1])
        }
        seen = {p.get("kind") for p in sub.on("events")}
        assert seen <= documented, seen - documented
    _back_to_normal(rig)


def _back_to_normal(rig: Rig) -> None:
    """CB-045 closed again: by its reclose after a transient fault, or (a slow trip on a loaded
    machine runs into breaker failure and locks out) by an authorised close after the repair."""
    rig.hil_call("clear")
    protection = lambda: rig.daemon_call("status")["protection"]["breakers"]["CB-045"]  # noqa: E731
    rig.wait(lambda: protection()["reclose_state"] in ("ready", "lockout"), "CB-045's protection settled", 30)
    clear_faults(rig, "CB-045")
    if protection()["locked_out"]:
        rig.daemon_call("breaker.operate", breaker="CB-045", action="close", authorised=True, reason="repaired")
    rig.wait(lambda: breaker(rig, "CB-045") == "closed", "CB-045 closed again", 30)


def test_alarms_are_raised_acknowledged_cleared_and_listed(rig: Rig) -> None:
    assert rig.broker is not None
    base = _base(rig)
    with subscriber(rig.broker, f"{base}/#") as sub:
        rig.hil_call("fault", line="LINE-045", distance_m=2300.0, kind="3ph", transient=False)
        assert sub.wait_for(
            lambda m: any(
                p.get("source") == "CB-045" and p.get("state") == "raised" and "locked out" in p.get("message", "")
                for p in sub.on("alarms")
            ),
            30,
        )
        lockout = next(p for p in sub.on("alarms") if p.get("source") == "CB-045" and "locked out" in p["message"])
        assert lockout["severity"] == "critical" and lockout["active"] and lockout["cleared"] is None
        result = _command(rig, sub, "alarm/acknowledge", {"alarm": lockout["id"]})
        assert result["ok"] and result["alarm"]["acknowledged_by"] == "scada:ncc-1", result
        unknown = _command(rig, sub, "alarm/acknowledge", {"alarm": "alm-99999"})
        assert unknown["reason"] == "bad_args"

    # a host that joins now reads the active list, with the lockout acknowledged and standing
    # (the list is retained: not urgent, it may reach the broker a moment after the command's result)
    def acknowledged(messages: list[Any]) -> list[dict[str, Any]]:
        return [
            a
            for _t, p, _r in messages
            for a in p["alarms"]
            if a["id"] == lockout["id"] and a["acknowledged_by"] == "scada:ncc-1"
        ]

    with subscriber(rig.broker, f"{base}/alarms/active") as late:
        assert late.wait_for(lambda m: bool(m), 10)
        assert late.messages[0][2]  # the first is the broker's retained copy
        assert late.wait_for(lambda m: bool(acknowledged(m)), 20)
        assert acknowledged(late.messages)[-1]["cleared"] is None
    # repaired and closed: the breaker is normal again, the alarm clears and leaves the list
    with subscriber(rig.broker, f"{base}/alarms/#") as sub:
        rig.hil_call("clear")
        clear_faults(rig, "CB-045")
        rig.daemon_call("breaker.operate", breaker="CB-045", action="close", authorised=True, reason="repaired")
        assert sub.wait_for(
            lambda m: any(p.get("id") == lockout["id"] and p.get("state") == "cleared" for p in sub.on("alarms")), 30
        )
        assert sub.wait_for(
            lambda m: any(
                t.endswith("/alarms/active") and lockout["id"] not in [a["id"] for a in p["alarms"]] for t, p, _r in m
            ),
            10,
        )
    assert lockout["id"] not in [a["id"] for a in rig.daemon_call("alarms.list")]
    acked = [e for e in rig.daemon_call("events", source="CB-045", limit=500) if e["kind"] == "alarm.acknowledged"]
    assert acked and acked[-1]["origin"] == "scada:ncc-1"


def test_the_order_after_a_reload_and_a_rebirth_is_the_documented_one(rig: Rig) -> None:
    assert rig.broker is not None and rig.daemon is not None
    base = _base(rig)
    with subscriber(rig.broker, f"{base}/#") as sub:
        sub.wait_for(lambda m: any(t.endswith("/birth") for t, _p, _r in m), 10)
        old_bdseq = next(p for t, p, _r in sub.messages if t.endswith("/birth"))["bdSeq"]
        mark = len(sub.messages)
        reloads = rig.daemon_call("status")["reloads"]
        rig.daemon.send_signal(signal.SIGHUP)
        rig.wait(lambda: rig.daemon_call("status")["reloads"] == reloads + 1, "the reload", 60)

        def order(start: int) -> list[tuple[str, Any]]:
            out = []
            for t, p, r in sub.messages[start:]:
                if r or not isinstance(p, dict) or p.get("historical"):
                    continue  # retained copies; a backlog (historical) goes between the birth and the states
                name = t[len(base) + 1 :]
                if name in ("death", "birth", "integrity") or (
                    name.startswith("state/") and p.get("cause") == "current state"
                ):
                    out.append((name.split("/")[0], p))
            return out

        assert sub.wait_for(lambda m: any(n == "integrity" for n, _p in order(mark)), 30)
        seen = order(mark)
        names = [n for n, _p in seen]
        death, birth = names.index("death"), names.index("birth")
        first_state, first_integrity = names.index("state"), names.index("integrity")
        assert death < birth < first_state < first_integrity, names[:12]
        assert seen[death][1]["bdSeq"] == old_bdseq and seen[birth][1]["bdSeq"] == (old_bdseq + 1) % 256
        assert names.count("state") >= len(rig.doc["agents"])
        # a rebirth request: birth, the states, the integrity report again
        mark = len(sub.messages)
        sub.client.publish(f"{base}/cmd/rebirth", b"", qos=1).wait_for_publish(10)
        assert sub.wait_for(lambda m: any(n == "integrity" for n, _p in order(mark)), 30)
        names = [n for n, _p in order(mark)]
        assert names.index("birth") < names.index("state") < names.index("integrity") and "death" not in names


def test_keys_from_the_cli_generate_add_list_revoke(rig: Rig, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    cli = [sys.executable, "-m", "gateway.cli"]
    rt = ["--runtime-dir", str(rig.runtime_dir)]
    private = tmp_path / "host.key"
    r = subprocess.run([*cli, "keys", "generate", "--out", str(private)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and private.stat().st_mode & 0o777 == 0o600, r.stderr
    public_hex = r.stdout.strip()
    r = subprocess.run(
        [*cli, "keys", "add", "cli-host", "--role", "engineer", "--public-key", public_hex, "--expires", "30d", *rt],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "engineer" in r.stdout, r.stderr
    r = subprocess.run([*cli, "keys", "list", "--json", *rt], capture_output=True, text=True, timeout=60)
    row = next(k for k in json.loads(r.stdout) if k["name"] == "cli-host")
    assert row["state"] == "valid" and row["public_key"] == public_hex and row["expires"] > time.time() + 29 * 86400
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    with subscriber(rig.broker, f"{_base(rig)}/cmd_result/#") as sub:  # type: ignore[arg-type]
        env = sign_command(
            key, "breaker/select", {"breaker": "CB-044", "action": "open"}, "eng", time.time(), key_name="cli-host"
        )
        sub.client.publish(
            f"{_base(rig)}/cmd/breaker/select", msgpack.packb(env, use_bin_type=True), qos=1
        ).wait_for_publish(10)
        assert sub.wait_for(lambda _m: any(p.get("id") == env["id"] for p in sub.on("cmd_result/breaker/select")), 30)
        result = next(p for p in sub.on("cmd_result/breaker/select") if p.get("id") == env["id"])
        assert result["ok"] and result["key"] == "cli-host"
    r = subprocess.run(
        [*cli, "keys", "revoke", "cli-host", "--reason", "test over", *rt], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "revoked" in r.stdout
    # a viewer-level list shows it revoked; adding needs the engineer role (root here is one)
    r = subprocess.run([*cli, "keys", "list", "--json", *rt], capture_output=True, text=True, timeout=60)
    assert next(k for k in json.loads(r.stdout) if k["name"] == "cli-host")["state"] == "revoked"
