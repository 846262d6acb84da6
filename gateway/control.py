"""The local control socket: how the `stima` CLI talks to the running daemon.

JSON lines over a unix socket in the runtime directory. A request is
`{"op": "points.read", "args": {...}}`; the answer is `{"ok": true, "result": ...}` or
`{"ok": false, "error": "..."}`. Streaming operations (`points.watch`) answer with one line per
update until the client hangs up. The socket belongs to the `stima` group (mode 0660); every
operation is logged with the peer's uid.
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
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"

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


_PEER_UID: contextvars.ContextVar[int | None] = contextvars.ContextVar("stima_control_peer_uid", default=None)


def peer_user() -> str:
    """The unix user of the control client whose operation is running, from the socket's
    peer credentials (never from what the client says)."""
    uid = _PEER_UID.get()
    if uid is None:
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def peer_role() -> str:
    """The role of the control client: root is an engineer, any other member of the socket's
    group an operator."""
    uid = _PEER_UID.get()
    return "engineer" if uid == 0 else "operator"


class ControlServer:
    def __init__(self, runtime_dir: Path, group: str = "stima") -> None:
        self.path = socket_path(runtime_dir)
        self._group = group
        self._ops: dict[str, Handler] = {}
        self._streams: dict[str, StreamHandler] = {}
        self._server: asyncio.AbstractServer | None = None

    def register(self, op: str, handler: Handler) -> None:
        self._ops[op] = handler

    def register_stream(self, op: str, handler: StreamHandler) -> None:
        self._streams[op] = handler

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
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
        uid = _peer_uid(writer)
        _PEER_UID.set(uid)  # this connection's task has a context of its own
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            if not line:
                return
            try:
                request = json.loads(line)
                op = str(request["op"])
                args = request.get("args") or {}
                if not isinstance(args, dict):
                    raise TypeError("args must be an object")
            except (ValueError, KeyError, TypeError) as exc:
                await _send(writer, {"ok": False, "error": f"bad request: {exc}"})
                return
            log.info("control operation", extra={"op": op, "peer_uid": uid})
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


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, default=str).encode() + b"\n")
    await writer.drain()


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    except OSError:
        return None
