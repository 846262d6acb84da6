"""SCADA commands: envelope checks, replay protection, select-before-operate, interlocks, audit,
and end to end over a real broker against the real daemon and the simulated substation."""

from __future__ import annotations

import os
import re
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.commands import (
    DISABLED_MESSAGE,
    CommandRefused,
    CommandService,
    MemoryNonces,
    Reason,
    Verifier,
    canonical,
    read_key,
    sign_command,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import ConfigError, load, validate
from gateway.contract.settings import CommandsConfig
from gateway.site import site_problems
from gateway.keys import public_bytes
from gateway.storage import Store
from gateway.switching.authority import Refused, SelectBeforeOperate
from gateway.switching.model import Origin, Role, Via

KEY = b"k" * 40
SCADA = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NOW = 1_767_225_600.0
SUB = "SUB-003"


def verifier(**kw: Any) -> Verifier:
    return Verifier(KEY, substation=SUB, max_age_s=30.0, nonces=kw.pop("nonces", MemoryNonces()), **kw)


def refused(fn: Any, *args: Any, **kw: Any) -> CommandRefused:
    with pytest.raises(CommandRefused) as info:
        fn(*args, **kw)
    return info.value


def select_args(breaker: str = "CB-044", action: str = "open", **kw: Any) -> dict[str, Any]:
    return {"breaker": breaker, "action": action, **kw}


# --------------------------------------------------------------------------- the envelope


def test_signed_command_passes_and_canonical_form_ignores_key_order() -> None:
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW, substation=SUB)
    cmd = verifier().verify("breaker/select", env, NOW + 1.0)
    assert (cmd.name, cmd.origin, cmd.id) == ("breaker/select", "scada-1", env["id"])
    assert cmd.args == {"breaker": "CB-044", "action": "open", "authorised": False}
    reordered = {k: env[k] for k in reversed(list(env))}
    reordered["args"] = {"action": "open", "breaker": "CB-044"}
    assert canonical(reordered) == canonical(env)
    # the envelope survives msgpack on the wire unchanged
    wire = msgpack.unpackb(msgpack.packb(env, use_bin_type=True), raw=False)
    assert verifier().verify("breaker/select", wire, NOW).nonce == env["nonce"]


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        ([1, 2], "expected a msgpack map"),
        ({"id": "x"}, "missing field(s)"),
        ("junk", "expected a msgpack map"),
    ],
)
def test_malformed_payloads(payload: Any, expect: str) -> None:
    exc = refused(verifier().verify, "breaker/select", payload, NOW)
    assert exc.reason is Reason.MALFORMED and expect in exc.message


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("time", "yesterday", "field 'time'"),
        ("time", True, "field 'time'"),
        ("nonce", "short", "field 'nonce'"),
        ("origin", "", "field 'origin'"),
        ("args", [1], "field 'args'"),
        ("sig", "not-bytes", "field 'sig'"),
        ("id", 7, "field 'id'"),
    ],
)
def test_malformed_fields_say_which_and_what(field: str, value: Any, expect: str) -> None:
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW)
    env[field] = value
    exc = refused(verifier().verify, "breaker/select", env, NOW)
    assert exc.reason is Reason.MALFORMED and expect in exc.message and "expected" in exc.message


def test_unknown_field_is_refused() -> None:
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW)
    env["priority"] = 1
    exc = refused(verifier().verify, "breaker/select", env, NOW)
    assert exc.reason is Reason.MALFORMED and "'priority'" in exc.message


def test_bad_signature_wrong_key_or_altered() -> None:
    env = sign_command(b"x" * 32, "breaker/select", select_args(), "scada-1", NOW)
    assert refused(verifier().verify, "breaker/select", env, NOW).reason is Reason.BAD_SIGNATURE
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW)
    env["args"]["breaker"] = "CB-045"
    assert refused(verifier().verify, "breaker/select", env, NOW).reason is Reason.BAD_SIGNATURE
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW)
    env["origin"] = "scada-2"
    assert refused(verifier().verify, "breaker/select", env, NOW).reason is Reason.BAD_SIGNATURE


def test_wrong_topic_or_substation() -> None:
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW)
    exc = refused(verifier().verify, "breaker/operate", env, NOW)
    assert exc.reason is Reason.WRONG_TARGET and "cmd/breaker/operate" in exc.message
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW, substation="SUB-004")
    exc = refused(verifier().verify, "breaker/select", env, NOW)
    assert exc.reason is Reason.WRONG_TARGET and "SUB-004" in exc.message


@pytest.mark.parametrize(("skew_s", "word"), [(31.0, "old"), (-31.0, "in the future")])
def test_stale_or_future(skew_s: float, word: str) -> None:
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW - skew_s)
    exc = refused(verifier().verify, "breaker/select", env, NOW)
    assert exc.reason is Reason.STALE and word in exc.message and "±30 s" in exc.message
    # just inside the window passes
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW - 29.0)
    verifier().verify("breaker/select", env, NOW)


def test_replay_refused_and_nonces_forgotten_only_after_they_could_pass() -> None:
    v = verifier()
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW)
    v.verify("breaker/select", env, NOW)
    assert refused(v.verify, "breaker/select", env, NOW + 29.0).reason is Reason.REPLAYED
    # once the nonce is forgotten, the same message is too old anyway
    assert refused(v.verify, "breaker/select", env, NOW + 61.0).reason is Reason.STALE


def test_nonces_survive_a_restart_in_the_state_database(tmp_path: Path) -> None:
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW)
    store = Store(tmp_path / "stima.db")
    verifier(nonces=store).verify("breaker/select", env, NOW)
    store.close()
    store = Store(tmp_path / "stima.db")
    assert refused(verifier(nonces=store).verify, "breaker/select", env, NOW + 5).reason is Reason.REPLAYED
    assert store.remember_nonce("other", NOW + 1, NOW) is True
    assert store.remember_nonce("other", NOW + 1, NOW) is False
    assert store.remember_nonce("other", NOW + 10, NOW + 2) is True  # expired, forgotten
    store.close()


def test_maintenance_commands_pass_their_arguments_checked() -> None:
    for command, args in (
        ("maintenance/accept", {"work_order": "PM-2025-1024-234", "external_id": "MX-1"}),
        ("maintenance/reschedule", {"work_order": "PM-2025-1024-234", "start": NOW + 86400}),
        ("maintenance/close", {"work_order": "PM-2025-1024-234", "note": "all tests passed"}),
    ):
        cmd = verifier().verify(command, sign_command(KEY, command, args, "maximo", NOW), NOW)
        assert cmd.args == args


def test_unknown_and_not_allowed_commands() -> None:
    env = sign_command(KEY, "breaker/explode", {}, "scada-1", NOW)
    assert refused(verifier().verify, "breaker/explode", env, NOW).reason is Reason.UNKNOWN_COMMAND
    env = sign_command(KEY, "agent/request", {"agent": "XFMR-101", "request": "reset"}, "scada-1", NOW)
    exc = refused(verifier(allowed=["breaker/select"]).verify, "agent/request", env, NOW)
    assert exc.reason is Reason.NOT_ALLOWED and "uplink.commands.allowed" in exc.message


@pytest.mark.parametrize(
    ("command", "args", "expect"),
    [
        ("breaker/select", {"action": "open"}, "args.breaker: missing"),
        ("breaker/select", {"breaker": "CB-044", "action": "toggle"}, "args.action: expected 'open' or 'close'"),
        ("breaker/select", {"breaker": "CB 044!", "action": "open"}, "args.breaker: expected a breaker id"),
        ("breaker/select", {"breaker": "CB-044", "action": "close", "authorised": "yes"}, "args.authorised"),
        ("breaker/select", {"breaker": "CB-044", "action": "open", "force": True}, "unknown key(s) force"),
        ("breaker/operate", {"breaker": "CB-044", "action": "open"}, "args.select_id: missing"),
        ("breaker/cancel", {}, "args.select_id: missing"),
        ("agent/request", {"agent": "XFMR-101"}, "args.request: missing"),
        ("agent/request", {"agent": "XFMR-101", "request": "x", "bad key": 1}, "not a request argument name"),
        ("maintenance/accept", {}, "args.work_order: missing"),
        ("maintenance/accept", {"work_order": "PM-1", "external_id": "bad id!"}, "args.external_id"),
        ("maintenance/reschedule", {"work_order": "PM-1"}, "args.start: missing"),
        ("maintenance/reschedule", {"work_order": "PM-1", "start": "sunday"}, "args.start: expected the new window"),
        ("maintenance/close", {"work_order": "PM-1", "window": 3}, "unknown key(s) window"),
    ],
)
def test_bad_args_name_the_key_and_what_was_expected(command: str, args: dict[str, Any], expect: str) -> None:
    env = sign_command(KEY, command, args, "scada-1", NOW)
    exc = refused(verifier().verify, command, env, NOW)
    assert exc.reason is Reason.BAD_ARGS and expect in exc.message


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
    max_leaves=12,
)
_field_names = st.sampled_from(["id", "time", "nonce", "origin", "command", "args", "sig", "substation", "x"])


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_property_random_bytes_only_ever_refused(raw: bytes) -> None:
    try:
        payload = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:
        payload = raw
    with pytest.raises(CommandRefused):
        verifier().verify("breaker/select", payload, NOW)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(_field_names, _values, max_size=9),
    sign=st.booleans(),
    command=st.sampled_from(["breaker/select", "breaker/operate", "breaker/cancel", "agent/request", "x/y"]),
)
def test_property_random_maps_never_raise_anything_but_a_refusal(
    payload: dict[str, Any], sign: bool, command: str
) -> None:
    if sign:
        # correctly signed random content reaches the argument checks
        payload = {**payload, "command": command, "time": NOW, "nonce": os.urandom(12).hex(), "origin": "o", "id": "i"}
        payload.setdefault("args", {})
        payload.pop("x", None)
        try:
            from gateway.commands import signature

            payload["sig"] = signature(KEY, payload)
        except Exception:
            payload["sig"] = b"\0" * 32
    try:
        verifier().verify(command, payload, NOW)
    except CommandRefused:
        pass


def test_a_fault_inside_a_check_is_not_passed_off_as_a_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The fuzz tests above can fail: a crash in a parser escapes `verify` instead of becoming a
    refusal. On the MQTT path the service still answers (`failed`) and logs the traceback."""
    import gateway.commands as commands

    def broken(_command: str, _args: Any) -> dict[str, Any]:
        raise ZeroDivisionError("a parser bug")

    monkeypatch.setattr(commands, "validate_args", broken)
    env = sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW)
    with pytest.raises(ZeroDivisionError):
        verifier().verify("breaker/select", env, NOW)
    svc, plant, rec = service()
    result = svc.handle_mqtt("breaker/select", sign_command(KEY, "breaker/select", select_args(), "scada-1", NOW))
    assert result["ok"] is False and result["reason"] == "failed" and "a parser bug" in result["error"]
    assert plant.operated == [] and [t for t, _ in rec.published] == ["cmd_result/breaker/select"]
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


# --------------------------------------------------------------------------- select before operate


def sbo_refused(fn: Any, *args: Any) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args)
    return info.value


def test_sbo_reservation_operate_cancel_and_timeout() -> None:
    ids = iter(f"sel-{n}" for n in range(100))
    sbo = SelectBeforeOperate(30.0, new_id=lambda: next(ids))
    a = sbo.select("CB-044", "open", "scada-1", 0.0)
    exc = sbo_refused(sbo.select, "CB-044", "close", "scada-2", 1.0)
    assert exc.reason == "reserved" and "scada-1" in exc.message
    assert sbo_refused(sbo.take, a.select_id, "CB-044", "open", "scada-2", 2.0).reason == "not_selected"
    assert sbo.take(a.select_id, "CB-044", "open", "scada-1", 2.0) == a
    assert sbo_refused(sbo.take, a.select_id, "CB-044", "open", "scada-1", 3.0).reason == "not_selected"  # consumed
    assert sbo_refused(sbo.take, "sel-never", "CB-044", "open", "scada-1", 3.0).reason == "not_selected"
    b = sbo.select("CB-044", "open", "scada-2", 4.0)  # free again
    exc = sbo_refused(sbo.take, b.select_id, "CB-044", "open", "scada-2", 34.5)
    assert exc.reason == "not_selected" and "timed out" in exc.message
    c = sbo.select("CB-044", "open", "scada-1", 40.0)
    exc = sbo_refused(sbo.take, c.select_id, "CB-044", "close", "scada-1", 41.0)
    assert exc.reason == "not_selected" and "cancelled" in exc.message
    assert sbo.holder("CB-044", 41.0) is None
    d = sbo.select("CB-044", "close", "scada-1", 50.0)
    assert sbo_refused(sbo.cancel, d.select_id, "scada-2", 51.0).reason == "not_selected"
    assert sbo.cancel(d.select_id, "scada-1", 51.0) == d
    assert sbo.holder("CB-044", 51.0) is None


class Rec:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[float, str, str, dict[str, Any]]] = []
        self.wall = NOW
        self.mono = 100.0


class BenchPlant:
    """The example site's real switching authority, with the plant's state set by hand."""

    def __init__(self, rec: Rec, select_timeout_s: float) -> None:
        from hil.rig import example_document
        from tests.support.switching import bench

        self.rec = rec
        self.b = bench(example_document())
        self.b.authority.sbo.timeout_s = select_timeout_s
        self.b.normal()
        self.operated: list[tuple[str, str, bool, str]] = []
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    def select(self, op: Any) -> Any:
        return self.b.authority.select(op, self.rec.mono)

    def operate(self, op: Any) -> Any:
        accepted = self.b.authority.request(op, self.rec.mono)
        rearm = any(getattr(w, "authorised", False) for w in accepted.writes)
        self.operated.append((op.target, op.action, rearm, op.origin.who))
        if rearm:
            self.b.lockouts.discard(op.target)
        return accepted

    def cancel(self, select_id: str, origin: Any) -> Any:
        return self.b.authority.cancel(select_id, origin, self.rec.mono)

    def device_status(self, device: str) -> dict[str, Any]:
        if device not in self.b.network.devices:
            raise KeyError(device)
        return {"device": device, "locked_out": device in self.b.lockouts}

    def approve(self, sequence: str, origin: Any) -> Any:
        raise Refused("bad_args", f"no switching sequence {sequence!r}")

    abort = approve

    def agent_type(self, agent_id: str) -> str | None:
        return {"CB-044": "circuit_breaker", "XFMR-101": "transformer"}.get(agent_id)

    def agent_request(self, agent_id: str, request: str, args: dict[str, Any], origin: Any) -> list[dict[str, Any]]:
        if request == "explode":
            raise ValueError("unknown request 'explode'")
        self.requests.append((agent_id, request, args))
        return [{"kind": "state"}]


def service(enabled: bool = True, **cfg: Any) -> tuple[CommandService, BenchPlant, Rec]:
    rec = Rec()
    plant = BenchPlant(rec, cfg.get("select_timeout_s", 30.0))
    svc = CommandService(
        CommandsConfig(enabled=enabled, scheme="hmac", key_file=Path("k") if enabled else None, **cfg),
        key=KEY if enabled else None,
        substation=SUB,
        nonces=MemoryNonces(),
        plant=plant,
        publish=lambda s, p: rec.published.append((s, p)),
        audit=lambda t, src, kind, rec_: rec.events.append((t, src, kind, rec_)),
        wall=lambda: rec.wall,
        monotonic=lambda: rec.mono,
    )
    return svc, plant, rec


def send(svc: CommandService, command: str, args: dict[str, Any], origin: str = "scada-1") -> dict[str, Any]:
    return svc.handle_mqtt(command, sign_command(KEY, command, args, origin, NOW))


LOCAL = Origin(via=Via.LOCAL, who="local:op", role=Role.OPERATOR)


def test_select_operate_through_the_service_with_results_and_audit() -> None:
    svc, plant, rec = service()
    sel = send(svc, "breaker/select", select_args())
    assert sel["ok"] and sel["select_id"] and sel["error"] is None and sel["origin"] == "scada-1"
    assert send(svc, "breaker/select", select_args(action="close"), "scada-2")["reason"] == "reserved"
    op = send(svc, "breaker/operate", select_args(select_id=sel["select_id"]))
    assert op["ok"] and plant.operated == [("CB-044", "open", False, "scada:scada-1")]
    again = send(svc, "breaker/operate", select_args(select_id=sel["select_id"]))
    assert again["reason"] == "not_selected" and len(plant.operated) == 1
    # one result per command, on cmd_result/<command>, never under cmd/
    assert [t for t, _ in rec.published] == [
        "cmd_result/breaker/select",
        "cmd_result/breaker/select",
        "cmd_result/breaker/operate",
        "cmd_result/breaker/operate",
    ]
    for _, result in rec.published:
        assert {"id", "command", "origin", "ok", "error", "time"} <= set(result)
    kinds = [(src, kind) for _, src, kind, _ in rec.events]
    assert kinds == [
        ("CB-044", "command.accepted"),
        ("CB-044", "command.refused"),
        ("CB-044", "command.accepted"),
        ("CB-044", "command.refused"),
    ]


def test_operate_without_select_is_refused() -> None:
    svc, plant, _ = service()
    result = send(svc, "breaker/operate", select_args(select_id="sel-made-up"))
    assert not result["ok"] and result["reason"] == "not_selected" and "select first" in result["error"]
    assert plant.operated == []


def test_interlocks_at_select_and_at_operate() -> None:
    svc, plant, _ = service()
    plant.b.set_positions({"CB-044": False})
    plant.b.lockouts.add("CB-044")
    r = send(svc, "breaker/select", select_args(action="close"))
    assert r["reason"] == "interlock" and r["interlock"] == "protection_lockout" and "locked out" in r["error"]
    assert r["interlocks"][0]["override"] == "any"
    assert send(svc, "breaker/select", select_args(action="open"))["ok"]  # open always allowed
    assert send(svc, "breaker/select", select_args("CB-099"))["reason"] == "bad_args"  # no such device
    # selected while allowed; the breaker goes into maintenance before the operate
    plant.b.lockouts.clear()
    plant.b.authority.sbo = SelectBeforeOperate(30.0)
    sel = send(svc, "breaker/select", select_args(action="close"))
    plant.b.agent_states["CB-044"] = "Maintenance"
    r = send(svc, "breaker/operate", select_args(action="close", select_id=sel["select_id"]))
    assert r["reason"] == "interlock" and r["interlock"] == "maintenance" and plant.operated == []
    # an authorised close of a locked-out breaker needs a reason, and then re-arms the recloser
    plant.b.agent_states.clear()
    plant.b.lockouts.add("CB-044")
    r = send(svc, "breaker/select", select_args(action="close", authorised=True))
    assert r["reason"] == "bad_args" and "args.reason" in r["error"]
    sel = send(svc, "breaker/select", select_args(action="close", authorised=True, reason="line patrolled"))
    assert sel["ok"], sel
    r = send(
        svc,
        "breaker/operate",
        select_args(action="close", authorised=True, reason="line patrolled", select_id=sel["select_id"]),
    )
    assert r["ok"] and plant.operated == [("CB-044", "close", True, "scada:scada-1")]
    assert r["overridden"][0]["interlock"] == "protection_lockout"


def test_select_timeout_from_the_site_file() -> None:
    svc, plant, rec = service(select_timeout_s=5.0)
    sel = send(svc, "breaker/select", select_args())
    rec.mono += 5.5
    r = send(svc, "breaker/operate", select_args(select_id=sel["select_id"]))
    assert r["reason"] == "not_selected" and "timed out" in r["error"] and plant.operated == []


def test_cancel_and_agent_requests() -> None:
    svc, plant, _ = service()
    sel = send(svc, "breaker/select", select_args())
    assert send(svc, "breaker/cancel", {"select_id": sel["select_id"]}, "scada-2")["reason"] == "not_selected"
    assert send(svc, "breaker/cancel", {"select_id": sel["select_id"]})["ok"]
    assert send(svc, "breaker/operate", select_args(select_id=sel["select_id"]))["reason"] == "not_selected"
    r = send(svc, "agent/request", {"agent": "XFMR-101", "request": "maintenance", "on": True})
    assert r["ok"] and plant.requests == [("XFMR-101", "maintenance", {"on": True})] and r["actions"]
    r = send(svc, "agent/request", {"agent": "CB-044", "request": "open"})
    assert r["reason"] == "bad_args" and "breaker/select" in r["error"]
    assert send(svc, "agent/request", {"agent": "NOPE", "request": "reset"})["reason"] == "bad_args"
    r = send(svc, "agent/request", {"agent": "XFMR-101", "request": "explode"})
    assert r["reason"] == "failed" and "explode" in r["error"]


def test_disabled_commands_get_a_result_and_change_nothing() -> None:
    svc, plant, rec = service(enabled=False)
    r = send(svc, "breaker/select", select_args())
    assert r == {**r, "ok": False, "error": DISABLED_MESSAGE, "reason": "disabled", "command": "breaker/select"}
    assert rec.published[0][0] == "cmd_result/breaker/select"
    assert rec.events[0][2] == "command.refused" and plant.operated == []
    # the local operator path works whatever the remote setting
    sel = svc.local("breaker/select", select_args(), LOCAL)
    assert svc.local("breaker/operate", select_args(select_id=sel["select_id"]), LOCAL)["ok"]
    assert plant.operated == [("CB-044", "open", False, "local:op")]


def test_garbage_on_the_mqtt_path_never_raises() -> None:
    svc, plant, rec = service()
    for payload in (None, b"\x00", [1], {"id": 5}, {"id": "x", "args": {1: 2}}):
        assert svc.handle_mqtt("breaker/select", payload)["ok"] is False
    assert len(rec.published) == 5 and plant.operated == []


def test_a_flood_of_unsigned_junk_is_answered_but_not_all_written_to_the_event_log() -> None:
    from gateway.commands import UNTRUSTED_AUDIT_LIMIT, UNTRUSTED_AUDIT_WINDOW_S

    svc, plant, rec = service()
    for _ in range(UNTRUSTED_AUDIT_LIMIT + 40):
        svc.handle_mqtt("breaker/select", {"id": "x"})
    assert len(rec.published) == UNTRUSTED_AUDIT_LIMIT + 40
    assert len(rec.events) == UNTRUSTED_AUDIT_LIMIT and svc.suppressed == 40
    # signed commands are always audited
    assert send(svc, "breaker/select", select_args())["ok"] and rec.events[-1][2] == "command.accepted"
    rec.wall += UNTRUSTED_AUDIT_WINDOW_S
    svc.handle_mqtt("breaker/select", b"junk")
    summary, junk = rec.events[-2][3], rec.events[-1][3]
    assert summary["suppressed"] == 40 and junk["reason"] == "malformed"


# --------------------------------------------------------------------------- key file and site file


def test_key_file_checks(tmp_path: Path) -> None:
    key = tmp_path / "command.key"
    with pytest.raises(ValueError, match="command.key cannot be read"):
        read_key(key)
    key.write_bytes(b"short\n")
    key.chmod(0o600)
    with pytest.raises(ValueError, match="holds 5 bytes; expected at least 32"):
        read_key(key)
    key.write_bytes(os.urandom(16).hex().encode() * 2 + b"\n")
    key.chmod(0o644)
    with pytest.raises(ValueError, match="accessible by group or others"):
        read_key(key)
    key.chmod(0o600)
    assert len(read_key(key)) == 64


def test_site_file_commands_section(tmp_path: Path) -> None:
    site = load("deploy/examples/sub-003.toml")
    assert site.uplink.commands.enabled is False and site.uplink.commands.max_age_s == 30.0
    doc = {
        "site": {"region": "r", "substation_id": "S"},
        "uplink": {"broker_host": "h", "transport": "tcp", "commands": {"enabled": True}},
    }
    assert validate(doc).uplink.commands.scheme == "ed25519"  # keys in the key book, no file
    doc["uplink"]["commands"] = {"enabled": True, "key_file": "command.key"}
    with pytest.raises(ConfigError, match="uplink.commands: key_file is the shared secret of scheme 'hmac'"):
        validate(doc)
    doc["uplink"]["commands"] = {"enabled": True, "scheme": "hmac"}
    with pytest.raises(ConfigError, match="uplink.commands: scheme 'hmac' needs key_file"):
        validate(doc)
    doc["uplink"]["commands"] = {"enabled": True, "allowed": ["breaker/explode"]}
    with pytest.raises(ConfigError, match=r"uplink.commands.allowed\[0\]"):
        validate(doc)
    doc["uplink"]["commands"] = {"enabled": True, "max_age_s": -1}
    with pytest.raises(ConfigError, match="uplink.commands.max_age_s"):
        validate(doc)
    doc["uplink"]["commands"] = {"enabled": True, "scheme": "hmac", "key_file": "command.key"}
    ok = validate(doc)
    [problem] = site_problems(ok, tmp_path)
    assert problem.path == "uplink.commands.key_file"
    assert re.search(r"command key file .*command.key cannot be read", problem.message), problem.message
    (tmp_path / "command.key").write_bytes(b"z" * 32)
    (tmp_path / "command.key").chmod(0o600)
    assert site_problems(ok, tmp_path) == []


def test_daemon_refuses_to_start_with_an_unusable_key_file(tmp_path: Path) -> None:
    import tomli_w

    from hil.rig import example_document

    doc = example_document()
    doc["uplink"]["commands"] = {"enabled": True, "scheme": "hmac", "key_file": "command.key"}
    site = tmp_path / "site.toml"
    site.write_text(tomli_w.dumps(doc))
    key = tmp_path / "command.key"
    key.write_bytes(b"q" * 64)
    key.chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "gateway.daemon", "--config", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2 and str(key) in r.stderr and "group or others" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "validate", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "uplink.commands.key_file" in r.stderr


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from hil.rig import Rig, example_document

    workdir: Path = tmp_path_factory.mktemp("cmdrig")
    doc = example_document()
    doc["uplink"]["commands"] = {"enabled": True, "max_age_s": 120.0}
    with Rig(doc, workdir, hil_args=("--no-ami",)) as r:
        r.daemon_call("keys.add", name="scada-test", public_key=public_bytes(SCADA.public_key()).hex(), role="operator")
        yield r


def _result(sub: Any, command: str, command_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    def found(_messages: Any) -> bool:
        return any(p.get("id") == command_id for p in sub.on(f"cmd_result/{command}") if isinstance(p, dict))

    assert sub.wait_for(found, timeout_s), f"no result for {command} {command_id}"
    return next(p for p in sub.on(f"cmd_result/{command}") if isinstance(p, dict) and p.get("id") == command_id)


def _publish(sub: Any, base: str, command: str, envelope: dict[str, Any]) -> None:
    info = sub.client.publish(f"{base}/cmd/{command}", msgpack.packb(envelope, use_bin_type=True), qos=1)
    info.wait_for_publish(10)


def test_end_to_end_signed_sbo_opens_a_breaker_replays_refused_and_cli(rig: Any) -> None:
    from tests.support.broker import subscriber
    from tests.support.faults import breaker

    base = f"stima/{rig.doc['site']['region']}/{rig.doc['site']['substation_id']}"
    cb = "CB-044"
    assert breaker(rig, cb) == "closed"
    assert rig.broker is not None
    with subscriber(rig.broker, f"{base}/cmd_result/#") as sub:
        # a key the gateway does not hold is refused before anything else is trusted
        stranger = sign_command(
            Ed25519PrivateKey.generate(),
            "breaker/select",
            {"breaker": cb, "action": "open"},
            "scada-test",
            time.time(),
            key_name="scada-test",
        )
        _publish(sub, base, "breaker/select", stranger)
        assert _result(sub, "breaker/select", stranger["id"])["reason"] == "bad_signature"
        sel_env = sign_command(
            SCADA, "breaker/select", {"breaker": cb, "action": "open"}, "scada-test", time.time(), key_name="scada-test"
        )
        _publish(sub, base, "breaker/select", sel_env)
        sel = _result(sub, "breaker/select", sel_env["id"])
        assert sel["ok"] and sel["key"] == "scada-test", sel
        assert "seq" in sel and sel["command"] == "breaker/select" and sel["state"]["device"] == cb
        op_env = sign_command(
            SCADA,
            "breaker/operate",
            {"breaker": cb, "action": "open", "select_id": sel["select_id"]},
            "scada-test",
            time.time(),
            key_name="scada-test",
        )
        _publish(sub, base, "breaker/operate", op_env)
        op = _result(sub, "breaker/operate", op_env["id"])
        assert op["ok"], op
        rig.wait(lambda: breaker(rig, cb) == "open", f"{cb} open in the simulator", 20)

        # the same message again: refused, nothing operated
        sent = rig.daemon_call("status")["protection"]["commands_sent"]
        _publish(sub, base, "breaker/operate", op_env)
        assert sub.wait_for(
            lambda _m: len([p for p in sub.on("cmd_result/breaker/operate") if p.get("id") == op_env["id"]]) == 2, 30
        )
        replay = [p for p in sub.on("cmd_result/breaker/operate") if p.get("id") == op_env["id"]]
        assert replay[1]["ok"] is False and replay[1]["reason"] == "replayed"
        assert rig.daemon_call("status")["protection"]["commands_sent"] == sent

        # after a restart of the daemon the nonce is still known
        rig.restart_daemon()
        _publish(sub, base, "breaker/select", sel_env)
        assert sub.wait_for(
            lambda _m: len([p for p in sub.on("cmd_result/breaker/select") if p.get("id") == sel_env["id"]]) == 2, 30
        )
        again = [p for p in sub.on("cmd_result/breaker/select") if p.get("id") == sel_env["id"]][1]
        assert again["ok"] is False and again["reason"] == "replayed"

        # a payload that is not msgpack at all still gets an answer saying so
        sub.client.publish(f"{base}/cmd/breaker/select", b"\xc1 not msgpack", qos=1).wait_for_publish(10)
        assert sub.wait_for(
            lambda _m: any(p.get("reason") == "malformed" for p in sub.on("cmd_result/breaker/select")), 30
        )
        garbage = next(p for p in sub.on("cmd_result/breaker/select") if p.get("reason") == "malformed")
        assert garbage["ok"] is False and "bytes" in garbage["error"] and "msgpack" in garbage["error"]

    # audited: accepted ones under the breaker, refusals before the arguments were trusted under "gateway"
    assert [e["kind"] for e in rig.daemon_call("events", source=cb, limit=50)].count("command.accepted") == 2
    refusals = [e for e in rig.daemon_call("events", source="gateway", limit=50) if e["kind"] == "command.refused"]
    assert sorted(e["reason"] for e in refusals) == ["bad_signature", "malformed", "replayed", "replayed"]
    # the key that signed is in the audit, with its role as the origin's
    accepted = [e for e in rig.daemon_call("events", source=cb, limit=50) if e["kind"] == "command.accepted"]
    assert {e["key"] for e in accepted} == {"scada-test"}
    # revoked: refused as such, and the revocation is audited
    rig.daemon_call("keys.revoke", name="scada-test", reason="host decommissioned")
    with subscriber(rig.broker, f"{base}/cmd_result/#") as sub:
        env = sign_command(
            SCADA, "breaker/select", {"breaker": cb, "action": "open"}, "scada-test", time.time(), key_name="scada-test"
        )
        _publish(sub, base, "breaker/select", env)
        assert _result(sub, "breaker/select", env["id"])["reason"] == "key_revoked"
    assert [e["kind"] for e in rig.daemon_call("events", source="keys", limit=50)] == ["keys.added", "keys.revoked"]

    # the operator CLI: no terminal and no --yes is refused; --yes selects and operates
    cli = [sys.executable, "-m", "gateway.cli", "breaker"]
    rt = ["--runtime-dir", str(rig.runtime_dir)]
    rig.wait(lambda: rig.daemon_call("breaker.status", breaker=cb)["position"] == "open", f"{cb}'s position read", 30)
    r = subprocess.run([*cli, "close", cb, *rt], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "--yes" in r.stderr
    # on a terminal it shows the breaker and asks; anything but y cancels the select
    out = _on_a_terminal([*cli, "close", cb, *rt], answer=b"n\n")
    assert b"[y/N]" in out and b"not operated" in out and cb.encode() in out
    assert breaker(rig, cb) == "open" and rig.daemon_call("breaker.status", breaker=cb)["selected_by"] is None
    r = subprocess.run([*cli, "close", cb, "--yes", "--json", *rt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rig.wait(lambda: breaker(rig, cb) == "closed", f"{cb} closed again in the simulator", 20)
    r = subprocess.run([*cli, "status", cb, *rt], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and cb in r.stdout and "protection" in r.stdout
    accepted = [e for e in rig.daemon_call("events", source=cb, limit=50) if e["kind"] == "command.accepted"]
    # the origin is the peer's unix user, taken from the socket's credentials
    me = "local:" + pwd.getpwuid(os.getuid()).pw_name
    assert any(e.get("origin") == me for e in accepted), accepted


def _on_a_terminal(argv: list[str], answer: bytes, timeout_s: float = 60.0) -> bytes:
    """Run `argv` with a pseudo-terminal as stdin/stdout/stderr, type `answer` at the prompt; all it wrote."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and b"[y/N]" in out:
                    os.write(master, answer)
                    answered = True
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(master)
    return out
