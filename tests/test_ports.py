"""Ports for local servers: never handed out twice, outside the kernel's ephemeral range, locked
against other processes, and mosquitto moves to a fresh port when its bind fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import hil.broker
from hil.broker import BindFailed, Broker, run_mosquitto
from hil.ports import PORT_FLOOR, ephemeral_low, handed_out, reserve_port

ROOT = Path(__file__).resolve().parent.parent


def test_reserved_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [reserve_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(PORT_FLOOR <= p < ephemeral_low() for p in ports)
    assert set(ports) <= handed_out()
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_reserved_here_is_skipped_by_another_process() -> None:
    mine = {reserve_port() for _ in range(50)}
    code = "import json; from hil.ports import reserve_port; print(json.dumps([reserve_port() for _ in range(2000)]))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    ).stdout
    theirs = set(map(int, out.strip("[]\n").split(",")))
    assert len(theirs) == 2000
    assert not (mine & theirs)


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        picks = iter([taken, taken, 20_001, 20_002])
        monkeypatch.setattr("hil.ports.random.Random.randint", lambda _self, _a, _b: next(picks))
        port = reserve_port()
    assert port != taken


def test_mosquitto_moves_to_a_fresh_port_when_its_bind_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(BindFailed):
            Broker(tmp_path, taken).start()
        real = hil.broker.free_port
        offered = iter([taken])
        monkeypatch.setattr(hil.broker, "free_port", lambda: next(offered, None) or real())
        with run_mosquitto(tmp_path) as broker:
            assert broker.port != taken
            with socket.create_connection(("127.0.0.1", broker.port), timeout=5):
                pass


def test_a_long_run_of_reservations_keeps_the_descriptor_table_small() -> None:
    # a whole test suite reserves well over a thousand ports in one process: were every lock kept,
    # later sockets would get descriptors above 1023, which select() (paho's loop) cannot watch
    from hil import ports

    before = len(os.listdir("/proc/self/fd"))
    taken = {ports.reserve_port() for _ in range(1200)}
    assert len(taken) == 1200
    assert len(os.listdir("/proc/self/fd")) <= before + ports.MAX_HELD
    with socket.socket() as s:
        assert s.fileno() < 1024
