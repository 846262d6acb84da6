"""Crafted input gets an answer, never a crash: a site file nested 20,000 deep, control-socket
requests over 64 KiB or nested 30,000 deep. `make reliability` fuzzes the same parsers at scale."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import MAX_NESTING, ConfigError, load
from gateway.control import MAX_REQUEST_BYTES, ControlServer, call


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{b=", "}")])
def test_a_site_file_nested_20000_deep_is_refused_with_a_clear_error(
    tmp_path: Path, opening: str, closing: str
) -> None:
    site = tmp_path / "deep.toml"
    site.write_text("a = " + opening * 20_000 + closing * 20_000 + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "validate", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert "nested too deeply" in out.stderr


def test_nesting_just_past_the_limit_names_the_key(tmp_path: Path) -> None:
    site = tmp_path / "deep.toml"
    site.write_text("[site]\nname = 1\n[deep]\nx = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + "\n")
    with pytest.raises(ConfigError) as info:
        load(site)
    [problem] = info.value.problems
    assert problem.path.startswith("deep.x[0]") and "nested more than" in problem.message


def _raw_exchange(path: Path, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(path))
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything
        return s.makefile("rb").readline()


def test_oversized_and_deeply_nested_requests_are_answered_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ControlServer(tmp_path, group="no-such-group")
    server.register("echo", lambda text="": {"length": len(text)})
    answers: dict[str, bytes] = {}
    over = json.dumps({"op": "echo", "args": {"text": "x" * (MAX_REQUEST_BYTES + 10)}}).encode() + b"\n"
    just_under = json.dumps({"op": "echo", "args": {"text": "y" * (MAX_REQUEST_BYTES - 100)}}).encode() + b"\n"
    nested = b'{"op": "echo", "args": {"text": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}\n"
    array = b"[" * 30_000 + b"]" * 30_000 + b"\n"

    def client() -> None:
        answers["over"] = _raw_exchange(server.path, over)
        answers["just_under"] = _raw_exchange(server.path, just_under)
        answers["nested"] = _raw_exchange(server.path, nested)
        answers["array"] = _raw_exchange(server.path, array)
        answers["after"] = json.dumps(call(tmp_path, "echo", text="abc")).encode()

    async def main() -> None:
        await server.start()
        await asyncio.to_thread(client)
        await server.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert json.loads(answers["over"]) == {
        "ok": False,
        "error": "bad request: longer than 64 KiB (one JSON object on one line)",
    }
    assert json.loads(answers["just_under"]) == {"ok": True, "result": {"length": MAX_REQUEST_BYTES - 100}}
    assert json.loads(answers["nested"]) == {"ok": False, "error": "bad request: JSON nested too deeply"}
    assert json.loads(answers["array"]) == {"ok": False, "error": "bad request: JSON nested too deeply"}
    assert json.loads(answers["after"]) == {"length": 3}
    assert not [r for r in caplog.records if r.exc_info], "a refusal must not log a traceback"
