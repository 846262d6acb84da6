"""Roles at the local control socket: viewers read, operators switch, engineers change settings.

The mapping from credentials to a role is tested with injected users and groups everywhere;
the whole path (kernel peer credentials → group database → role → answer and log) is tested
with real users and groups created for the test when it runs as root (as CI does); without
root, the same socket test runs with the current user mapped through an injected group lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import secrets
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ControlConfig
from gateway.control import (
    AccessPolicy,
    ControlError,
    ControlServer,
    PeerIdentity,
    Role,
    call,
    peer_identity,
)

GROUPS = {"stima-v": 1001, "stima-o": 1002, "stima-e": 1003, "other": 1004}
USERS = {2001: "vera", 2002: "otto", 2003: "erin", 2004: "nora", 2005: "both"}
MEMBERSHIP = {"vera": [1001], "otto": [1001, 1002], "erin": [1003], "nora": [1004], "both": [1001, 1003]}


def injected() -> AccessPolicy:
    return AccessPolicy(
        viewer_group="stima-v",
        operator_group="stima-o",
        engineer_group="stima-e",
        engineer_uids=frozenset({0, 999}),
        user_name=USERS.get,
        group_ids=lambda user, gid: [gid, *MEMBERSHIP[user]],
        group_id=GROUPS.get,
    )


@pytest.mark.parametrize(
    ("uid", "gid", "role"),
    [
        (0, 0, Role.ENGINEER),  # root
        (999, 999, Role.ENGINEER),  # the daemon's own user
        (2001, 1004, Role.VIEWER),  # supplementary group
        (2002, 1004, Role.OPERATOR),  # viewer and operator: the higher one
        (2003, 1004, Role.ENGINEER),
        (2004, 1004, Role.NONE),  # in none of the groups
        (2005, 1004, Role.ENGINEER),
        (2004, 1002, Role.OPERATOR),  # primary group from the peer's credentials
        (3333, 1004, Role.NONE),  # unknown to the user database
        (3333, 1001, Role.VIEWER),
    ],
)
def test_roles_from_injected_credentials(uid: int, gid: int, role: Role) -> None:
    peer = injected().identify(uid, gid)
    assert peer.role is role and peer.uid == uid
    assert peer.user == USERS.get(uid, f"uid{uid}")


def test_unknown_peer_and_missing_groups_give_no_role() -> None:
    assert injected().identify(None, None).role is Role.NONE
    nothing = AccessPolicy(
        viewer_group="no-such-group-x", operator_group="no-such-group-y", engineer_group="no-such-group-z"
    )
    assert nothing.identify(65534, 65534).role is Role.NONE


def test_site_file_defaults_are_safe() -> None:
    cfg = ControlConfig()
    assert (cfg.viewer_group, cfg.operator_group, cfg.engineer_group) == ("stima", "stima-operator", "stima-engineer")
    policy = AccessPolicy.from_config(cfg)
    assert policy.groups == {Role.VIEWER: "stima", Role.OPERATOR: "stima-operator", Role.ENGINEER: "stima-engineer"}


# --------------------------------------------------------------------------- over real sockets


class Served:
    """A ControlServer in a thread, with one op per role that returns who called it."""

    def __init__(self, runtime_dir: Path, access: AccessPolicy, group: str = "root") -> None:
        self.server = ControlServer(runtime_dir, group=group, access=access)
        self.switched: list[PeerIdentity] = []

        def who() -> dict[str, Any]:
            peer = peer_identity()
            return {"user": peer.user, "uid": peer.uid, "role": peer.role.label}

        def switch() -> dict[str, Any]:
            self.switched.append(peer_identity())
            return who()

        self.server.register("status", who, Role.VIEWER)
        self.server.register("breaker.operate", switch, Role.OPERATOR)
        self.server.register("settings.set", who, Role.ENGINEER)
        self.server.register("unmarked", who)  # no role given: engineers only
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


OPS = ("status", "breaker.operate", "settings.set", "unmarked")
ALLOWED = {
    Role.NONE: set(),
    Role.VIEWER: {"status"},
    Role.OPERATOR: {"status", "breaker.operate"},
    Role.ENGINEER: set(OPS),
}


def check_answers(answers: dict[str, dict[str, Any]], role: Role, user: str, uid: int) -> None:
    for op in OPS:
        answer = answers[op]
        if op in ALLOWED[role]:
            assert answer["ok"], (op, role, answer)
            assert answer["result"] == {"user": user, "uid": uid, "role": role.label}
        else:
            assert not answer["ok"], (op, role, answer)
            assert answer["error"].startswith(f"permission denied: {op} needs the "), answer
            assert f"uid {uid}" in answer["error"]


def refusals(caplog: pytest.LogCaptureFixture, uid: int) -> set[str]:
    return {
        r.op
        for r in caplog.records  # type: ignore[attr-defined]
        if r.getMessage() == "control operation refused" and r.peer_uid == uid
    }  # type: ignore[attr-defined]


@pytest.mark.parametrize("role", [Role.NONE, Role.VIEWER, Role.OPERATOR, Role.ENGINEER])
def test_each_role_over_a_real_socket_with_an_injected_group_lookup(
    tmp_path: Path, role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    me = os.getuid()
    name = pwd.getpwuid(me).pw_name
    groups = {Role.VIEWER: 70001, Role.OPERATOR: 70002, Role.ENGINEER: 70003}
    access = AccessPolicy(
        viewer_group="v",
        operator_group="o",
        engineer_group="e",
        engineer_uids=frozenset(),
        group_ids=lambda _u, _g: [groups[role]] if role else [],
        group_id=lambda g: {"v": 70001, "o": 70002, "e": 70003}[g],
    )
    caplog.set_level(logging.INFO, logger="gateway.control")
    with Served(tmp_path, access) as served:
        answers = {op: raw_call(served.server.path, op) for op in OPS}
    check_answers(answers, role, name, me)
    assert refusals(caplog, me) == set(OPS) - ALLOWED[role]
    assert len(served.switched) == (1 if "breaker.operate" in ALLOWED[role] else 0)


def raw_call(path: Path, op: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(json.dumps({"op": op, "args": {}}).encode() + b"\n")
        with s.makefile("rb") as reader:
            return dict(json.loads(reader.readline()))


def test_the_client_sees_the_refusal_as_a_control_error(tmp_path: Path) -> None:
    access = AccessPolicy(
        viewer_group="v",
        operator_group="o",
        engineer_group="e",
        engineer_uids=frozenset(),
        group_ids=lambda _u, _g: [70001],
        group_id=lambda g: {"v": 70001}.get(g),
    )
    with Served(tmp_path, access) as served:
        assert call(tmp_path, "status")["role"] == "viewer"
        with pytest.raises(ControlError, match="permission denied: breaker.operate needs the operator role"):
            call(tmp_path, "breaker.operate")
    assert served.switched == []


# --------------------------------------------------------------------------- real users (root)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def real_users() -> Iterator[dict[str, Any]]:
    """Unix groups and users made for this test (root only), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating users needs root (CI runs as root); the mapping is tested with injected credentials")
    tag = secrets.token_hex(3)
    names = {k: f"st{tag}{k}" for k in ("sock", "v", "o", "e")}
    users = {role: f"st{tag}u{role.value}" for role in Role}
    made_groups: list[str] = []
    made_users: list[str] = []
    try:
        for g in names.values():
            _run("groupadd", g)
            made_groups.append(g)
        member = {
            Role.NONE: [],
            Role.VIEWER: [names["v"]],
            Role.OPERATOR: [names["v"], names["o"]],
            Role.ENGINEER: [names["e"]],
        }
        for role, user in users.items():
            _run(
                "useradd",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "-g",
                names["sock"],
                "-G",
                ",".join([names["sock"], *member[role]]),
                user,
            )
            made_users.append(user)
        yield {"groups": names, "users": users}
    finally:
        for u in made_users:
            with contextlib.suppress(Exception):
                _run("userdel", u)
        for g in made_groups:
            with contextlib.suppress(Exception):
                _run("groupdel", g)


def as_user(user: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `fn` in a child process that has become `user` (uid, gid and groups); its result."""
    pw = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, call, report, exit without cleanup
        code = 1
        try:
            os.close(read_end)
            os.setgroups(os.getgrouplist(user, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os.write(write_end, json.dumps(fn()).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            with contextlib.suppress(Exception):
                os.write(write_end, json.dumps({"child_error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def test_each_role_with_real_users_and_groups(real_users: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    g = real_users["groups"]
    runtime = Path(tempfile.mkdtemp(prefix="stima-roles-"))
    runtime.chmod(0o755)  # the test users must reach the socket
    caplog.set_level(logging.INFO, logger="gateway.control")
    access = AccessPolicy.from_config(
        ControlConfig(socket_group=g["sock"], viewer_group=g["v"], operator_group=g["o"], engineer_group=g["e"])
    )
    try:
        with Served(runtime, access, group=g["sock"]) as served:
            assert grp.getgrgid(os.stat(served.server.path).st_gid).gr_name == g["sock"]
            for role, user in real_users["users"].items():
                uid = pwd.getpwnam(user).pw_uid
                answers = as_user(user, lambda: {op: raw_call(served.server.path, op) for op in OPS})
                assert "child_error" not in answers, answers
                check_answers(answers, role, user, uid)
                assert refusals(caplog, uid) == set(OPS) - ALLOWED[role], role
            root_answers = {op: raw_call(served.server.path, op) for op in OPS}
            check_answers(root_answers, Role.ENGINEER, "root", 0)
            users = real_users["users"]
            assert [p.user for p in served.switched] == [users[Role.OPERATOR], users[Role.ENGINEER], "root"]
    finally:
        with contextlib.suppress(OSError):
            for child in runtime.iterdir():
                child.unlink()
            runtime.rmdir()
