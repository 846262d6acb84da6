"""The control socket and the systemd notify protocol, over real unix sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.control import ControlError, ControlServer, DaemonNotRunning, call, stream
from gateway.sdnotify import Notifier


def test_daemon_not_running_is_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match="not running"):
        call(tmp_path, "status")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--runtime-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "not running" in result.stderr and "Traceback" not in result.stderr


def test_operations_errors_and_streams(tmp_path: Path) -> None:
    server = ControlServer(tmp_path, group="no-such-group")
    server.register("echo", lambda text: {"text": text})

    async def boom() -> None:
        raise ValueError("refused: breaker locked out")

    server.register("boom", boom)

    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    server.register_stream("count", count)
    results: dict[str, object] = {}

    def client() -> None:
        results["echo"] = call(tmp_path, "echo", text="hello")
        for key, op, kwargs in (("boom", "boom", {}), ("nope", "nope", {}), ("bad-args", "echo", {"wrong": 1})):
            try:
                call(tmp_path, op, **kwargs)
            except ControlError as exc:
                results[key] = str(exc)
        results["stream"] = list(stream(tmp_path, "count", n=5))

    async def main() -> None:
        await server.start()
        assert oct(os.stat(server.path).st_mode & 0o777) == "0o660"
        await asyncio.to_thread(client)
        await server.close()

    asyncio.run(main())
    assert results["echo"] == {"text": "hello"}
    assert results["boom"] == "refused: breaker locked out"
    assert "unknown operation 'nope'" in str(results["nope"])
    assert "bad arguments for echo" in str(results["bad-args"])
    assert results["stream"] == [0, 1, 2, 3, 4]
    assert not server.path.exists()


def test_garbage_request_is_answered_not_fatal(tmp_path: Path) -> None:
    server = ControlServer(tmp_path, group="no-such-group")
    server.register("ping", lambda: "pong")
    answers: list[bytes] = []

    def client() -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(server.path))
            s.sendall(b"\xff\xfe not json\n")
            answers.append(s.makefile("rb").readline())
        answers.append(str(call(tmp_path, "ping")).encode())

    async def main() -> None:
        await server.start()
        await asyncio.to_thread(client)
        await server.close()

    asyncio.run(main())
    assert b"bad request" in answers[0]
    assert answers[1] == b"pong"


def test_sd_notify_ready_status_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval_s == 15.0
    notifier.ready("IEDs 3/3 online")
    notifier.watchdog()
    notifier.status("reloading")
    got = [receiver.recv(4096).decode() for _ in range(3)]
    receiver.close()
    assert got == ["READY=1\nSTATUS=IEDs 3/3 online", "WATCHDOG=1", "STATUS=reloading"]
    # another process's watchdog settings are not ours
    assert (
        Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    )
    assert not Notifier({}).enabled


def test_sd_notify_abstract_socket() -> None:
    name = f"stima-test-{os.getpid()}-{threading.get_ident()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(5)
    Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
    assert receiver.recv(100) == b"READY=1"
    receiver.close()
