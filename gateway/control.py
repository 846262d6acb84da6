"""The local control socket: how the `stima` CLI talks to the running daemon.

JSON lines over a unix socket in the runtime directory. A request is
`{"op": "points.read", "args": {...}}`; the answer is `{"ok": true, "result": ...}` or
`{"ok": false, "error": "..."}`. Streaming operations (`points.watch`) answer with one line per
update until the client hangs up. The socket belongs to the `stima` group (mode 0660); every
operation is logged with the peer's uid.

Every operation is registered with the role it needs (`Role`: viewer reads, operator switches,
engineer changes settings). The peer's role comes from its credentials on the socket
(SO_PEERCRED, never from what it says) through an `AccessPolicy` built from the site file's
`[control]` groups; a refusal is answered and logged with the peer's uid and the operation.
Handlers learn who is calling with `peer_identity()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import grp
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.switching.model import Role

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST_BYTES = 64 * 1024
"""Longest request line the daemon reads; a longer one is answered with a refusal."""

Handler = Callable[..., Awaitable[Any] | Any]
StreamHandler = Callable[..., AsyncIterator[Any]]


class DaemonNotRunning(Exception):
    """No daemon answers on the control socket."""


class ControlError(Exception):
    """The daemon refused or failed the operation; the message is the daemon's."""


def socket_path(runtime_dir: Path | str) -> Path:
    return Path(runtime_dir) / SOCKET_NAME


# --------------------------------------------------------------------------- client


def _connect(runtime_dir: Path | str, timeout: float) -> socket.socket:
    path = socket_path(runtime_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise DaemonNotRunning(
            f"the Stima daemon is not running (no answer on {path}); "
            "start it with `systemctl start stima-gatewayd` or pass --runtime-dir"
        ) from exc
    except PermissionError as exc:
        sock.close()
        raise DaemonNotRunning(f"permission denied on {path}: join the 'stima' group") from exc
    return sock


def call(runtime_dir: Path | str, op: str, timeout: float = 10.0, **args: Any) -> Any:
    """Run one operation on the daemon and return its result."""
    with _connect(runtime_dir, timeout) as sock:
        sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        with sock.makefile("rb") as reader:
            line = reader.readline()
    if not line:
        raise ControlError(f"the daemon closed the connection during {op!r}")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "unknown error"))
    return answer.get("result")


def stream(runtime_dir: Path | str, op: str, **args: Any) -> Iterator[Any]:
    """Run a streaming operation; yields each update until interrupted."""
    with _connect(runtime_dir, 10.0) as sock:
        sock.settimeout(None)
        sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        with sock.makefile("rb") as reader:
            for line in reader:
                answer = json.loads(line)
                if not answer.get("ok"):
                    raise ControlError(answer.get("error", "unknown error"))
                yield answer.get("result")


# --------------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The unix user on the other end of the control socket, and its role."""

    user: str
    uid: int | None
    role: Role


UNKNOWN_PEER = PeerIdentity("unknown", None, Role.NONE)


class AccessPolicy:
    """Maps a peer's uid and gid to a role, from the group database (like sudo, not from the
    peer process's session): root and the daemon's own user are engineers; otherwise the
    highest role whose group holds the user, as primary or supplementary group."""

    def __init__(
        self,
        *,
        viewer_group: str = "stima",
        operator_group: str = "stima-operator",
        engineer_group: str = "stima-engineer",
        engineer_uids: frozenset[int] | None = None,
        user_name: Callable[[int], str | None] | None = None,
        group_ids: Callable[[str, int], list[int]] | None = None,
        group_id: Callable[[str], int | None] | None = None,
    ) -> None:
        self.groups = {Role.ENGINEER: engineer_group, Role.OPERATOR: operator_group, Role.VIEWER: viewer_group}
        self.engineer_uids = frozenset({0, os.getuid()}) if engineer_uids is None else engineer_uids
        """Engineers whatever their groups: root and the daemon's own user (default)."""
        self._user_name = user_name or _user_name
        self._group_ids = group_ids or os.getgrouplist
        self._group_id = group_id or _group_id

    @classmethod
    def from_config(cls, cfg: Any) -> AccessPolicy:
        """From the site file's `[control]` section (gateway.config.ControlConfig)."""
        return cls(viewer_group=cfg.viewer_group, operator_group=cfg.operator_group, engineer_group=cfg.engineer_group)

    def identify(self, uid: int | None, gid: int | None) -> PeerIdentity:
        if uid is None:
            return UNKNOWN_PEER
        name = self._user_name(uid)
        user = name if name is not None else f"uid{uid}"
        if uid in self.engineer_uids:
            return PeerIdentity(user, uid, Role.ENGINEER)
        member_of: set[int] = set() if gid is None else {gid}
        if name is not None:  # supplementary groups of a user the user database knows
            with contextlib.suppress(OSError, KeyError):
                member_of.update(self._group_ids(name, gid if gid is not None else 65534))
        for role in (Role.ENGINEER, Role.OPERATOR, Role.VIEWER):
            group = self._group_id(self.groups[role])
            if group is not None and group in member_of:
                return PeerIdentity(user, uid, role)
        return PeerIdentity(user, uid, Role.NONE)


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


_PEER: contextvars.ContextVar[PeerIdentity] = contextvars.ContextVar("stima_control_peer", default=UNKNOWN_PEER)


def peer_identity() -> PeerIdentity:
    """Who sent the control request being served (user name, uid, role), from the socket's
    peer credentials; `UNKNOWN_PEER` outside a request."""
    return _PEER.get()


def peer_user() -> str:
    """The unix user of the control client whose operation is running, from the socket's
    peer credentials (never from what the client says)."""
    return _PEER.get().user


class ControlServer:
    def __init__(self, runtime_dir: Path, group: str = "stima", access: AccessPolicy | None = None) -> None:
        self.path = socket_path(runtime_dir)
        self._group = group
        self.access = access or AccessPolicy(viewer_group=group)
        self._ops: dict[str, Handler] = {}
        self._streams: dict[str, StreamHandler] = {}
        self.roles: dict[str, Role] = {}
        """The role each operation needs."""
        self._server: asyncio.AbstractServer | None = None

    def register(self, op: str, handler: Handler, role: Role = Role.ENGINEER) -> None:
        """Serve `op` to peers with `role` or above (unless told otherwise: engineers only)."""
        self._ops[op] = handler
        self.roles[op] = role

    def register_stream(self, op: str, handler: StreamHandler, role: Role = Role.ENGINEER) -> None:
        self._streams[op] = handler
        self.roles[op] = role

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, 0o660)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(self.path, -1, grp.getgrnam(self._group).gr_gid)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid, gid = _peer_credentials(writer)
        try:
            peer = self.access.identify(uid, gid)
        except Exception:
            log.exception("control peer could not be identified", extra={"peer_uid": uid})
            peer = PeerIdentity(f"uid{uid}", uid, Role.NONE)
        _PEER.set(peer)  # this connection's task has a context of its own
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
            except ValueError:  # the line outgrew the reader's limit
                log.warning("control request refused: longer than %d bytes", MAX_REQUEST_BYTES, extra={"peer_uid": uid})
                await _send(
                    writer,
                    {
                        "ok": False,
                        "error": (
                            f"bad request: longer than {MAX_REQUEST_BYTES // 1024} KiB (one JSON object on one line)"
                        ),
                    },
                )
                return
            if not line:
                return
            try:
                op, args = parse_request(line)
            except BadRequest as exc:
                log.warning("control request refused: %s", exc, extra={"peer_uid": uid})
                await _send(writer, {"ok": False, "error": str(exc)})
                return
            needed = self.roles.get(op)
            if needed is not None and peer.role < needed:
                log.warning(
                    "control operation refused",
                    extra={
                        "op": op,
                        "peer_uid": uid,
                        "peer_user": peer.user,
                        "role": peer.role.label,
                        "needed": needed.label,
                    },
                )
                await _send(
                    writer,
                    {
                        "ok": False,
                        "error": (
                            f"permission denied: {op} needs the {needed.label} role; {peer.user} (uid {uid}) has "
                            f"{peer.role.label if peer.role else 'no role'} (groups: viewer "
                            f"{self.access.groups[Role.VIEWER]}, operator {self.access.groups[Role.OPERATOR]}, "
                            f"engineer {self.access.groups[Role.ENGINEER]})"
                        ),
                    },
                )
                return
            log.info("control operation", extra={"op": op, "peer_uid": uid, "role": peer.role.label})
            if op in self._streams:
                try:
                    async for item in self._streams[op](**args):
                        await _send(writer, {"ok": True, "result": item})
                except (ConnectionError, BrokenPipeError):
                    return
                except Exception as exc:  # the client gets the reason; the daemon keeps running
                    await _send(writer, {"ok": False, "error": str(exc)})
                return
            handler = self._ops.get(op)
            if handler is None:
                await _send(writer, {"ok": False, "error": f"unknown operation {op!r}"})
                return
            try:
                result = handler(**args)
                if asyncio.iscoroutine(result):
                    result = await result
            except TypeError as exc:
                await _send(writer, {"ok": False, "error": f"bad arguments for {op}: {exc}"})
                return
            except Exception as exc:
                log.warning("control operation failed", extra={"op": op, "error": str(exc)})
                await _send(writer, {"ok": False, "error": str(exc)})
                return
            await _send(writer, {"ok": True, "result": result})
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()


class BadRequest(ValueError):
    """A request line that is not `{"op": "...", "args": {...}}`; the message says why."""


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """One request line → (operation, arguments), or BadRequest."""
    try:
        request = json.loads(line)
    except RecursionError:
        raise BadRequest("bad request: JSON nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise BadRequest(f"bad request: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"bad request: a request is a JSON object, found {type(request).__name__}")
    op = request.get("op")
    if not isinstance(op, str):
        raise BadRequest('bad request: "op" must be a string naming the operation')
    args = request.get("args") or {}
    if not isinstance(args, dict):
        raise BadRequest('bad request: "args" must be an object')
    return op, args


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, default=str).encode() + b"\n")
    await writer.drain()


def _peer_credentials(writer: asyncio.StreamWriter) -> tuple[int | None, int | None]:
    """The peer's uid and gid from the kernel (SO_PEERCRED); (None, None) if unavailable."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None, None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, gid = struct.unpack("3i", creds)
        return int(uid), int(gid)
    except OSError:
        return None, None
