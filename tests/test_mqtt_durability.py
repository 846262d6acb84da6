"""Durability of the uplink across kill -9: the spool survives, the will reports the death.

The publishing gateway runs in a separate process (this file run as a script) so that the test
can kill it with SIGKILL, as a power cut or the OOM killer would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASE = "stima/test-region/SUB-T"


# --------------------------------------------------------------------------- the helper process


async def _helper(mode: str, db: Path, port: int, tls_dir: str, count: int) -> int:
    from gateway.contract.clock import SystemClock
    from gateway.contract.settings import SiteIdentity, UplinkConfig
    from gateway.storage import Store
    from protocols.mqtt import MqttUplink

    fields: dict[str, Any] = {"broker_host": "127.0.0.1", "broker_port": port, "transport": "tcp"}
    if tls_dir != "-":
        fields |= {
            "transport": "tls",
            "ca_file": "tls/ca.crt",
            "cert_file": "tls/client.crt",
            "key_file": "tls/client.key",
        }
    up = MqttUplink(
        UplinkConfig(**fields),
        SiteIdentity(region="test-region", substation_id="SUB-T"),
        Store(db),
        SystemClock(),
        logging.getLogger("helper"),
        base_dir=Path(tls_dir),
        backoff_min_s=0.05,
        backoff_max_s=0.3,
    )
    task = asyncio.create_task(up.run())

    async def until(predicate: Any, timeout_s: float = 30.0) -> None:
        for _ in range(int(timeout_s / 0.01)):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise SystemExit(f"helper {mode}: timed out, status {up.status()}")

    if mode == "spool":
        for start in range(0, count, 100):
            up.publish_many([("telemetry", {"n": n}) for n in range(start, min(start + 100, count))])
        print("spooled", flush=True)
    elif mode == "connect":
        await until(lambda: up.status()["state"] == "connected")
        print(f"connected {up.status()['bdseq']}", flush=True)
    elif mode == "stream":
        await until(lambda: up.status()["state"] == "connected")
        half = count // 2
        for n in range(half):
            up.publish("telemetry", {"n": n})
            if n % 50 == 0:
                await asyncio.sleep(0)
        await until(lambda: up.status()["acked"] >= half // 4)  # traffic is flowing
        for n in range(half, count):
            up.publish("telemetry", {"n": n})
        print(f"published {up.status()['inflight']}", flush=True)
        time.sleep(60)  # noqa: ASYNC251 - the event loop must stop here with messages in flight
    elif mode == "drain":
        await until(lambda: up.status()["state"] == "connected" and up.status()["spool_depth"] == 0)
        await up.close()
        await task
        print("drained", flush=True)
        return 0
    await asyncio.sleep(60)  # wait to be killed
    return 1


# --------------------------------------------------------------------------- the tests

if __name__ != "__main__":
    from gateway.storage import Store
    from tests.support.broker import free_port, make_tls_files, run_mosquitto, subscriber


def _spawn(mode: str, tmp_path: Path, port: int, *, tls: bool, count: int = 0) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            mode,
            str(tmp_path / "state.db"),
            str(port),
            str(tmp_path) if tls else "-",
            str(count),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _line(proc: subprocess.Popen[str], timeout_s: float = 30.0) -> str:
    """The helper's next line of output, or a failure naming what it said on stderr."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout_s):
            proc.kill()
            raise AssertionError(f"helper said nothing in {timeout_s} s: {proc.communicate()[1]}")
    finally:
        sel.close()
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(10)
        raise AssertionError(f"helper exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    return line


def _kill9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_kill_9_with_a_full_spool_then_restart_delivers_everything(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    port = free_port()  # nothing listens yet: the broker is "down"
    count = 500
    proc = _spawn("spool", tmp_path, port, tls=True, count=count)
    assert _line(proc) == "spooled"
    _kill9(proc)
    assert Store(tmp_path / "state.db").spool_depth() == count

    with run_mosquitto(tmp_path, port, tls=tls) as broker, subscriber(broker, f"{BASE}/#") as sub:
        proc = _spawn("drain", tmp_path, port, tls=True)
        assert _line(proc) == "drained"
        _finish(proc)
        assert sub.wait_for(lambda m: len(sub.on("telemetry")) >= count, 30)
        received = sub.on("telemetry")
        assert [p["n"] for p in received] == list(range(count))
        assert all(p["historical"] for p in received)
        assert [p["seq"] for p in received] == [(k + 1) % 256 for k in range(count)]
        assert sub.wait_for(lambda m: len(sub.on("death")) == 1, 30)  # clean shutdown
    assert Store(tmp_path / "state.db").spool_depth() == 0


def test_kill_9_while_delivering_loses_nothing(tmp_path: Path) -> None:
    count = 3000
    with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{BASE}/telemetry") as sub:
        proc = _spawn("stream", tmp_path, broker.port, tls=False, count=count)
        in_flight_at_kill = int(_line(proc).split()[1])
        _kill9(proc)
        left = Store(tmp_path / "state.db").spool_depth()
        assert in_flight_at_kill > 0 and left >= count // 2  # the kill really left work for the restart
        proc = _spawn("drain", tmp_path, broker.port, tls=False)
        assert _line(proc) == "drained"
        _finish(proc)
        assert sub.wait_for(lambda m: {p["n"] for p in sub.on("telemetry")} >= set(range(count)), 30)
        # at least once: a message whose PUBACK was lost in the kill may come twice, never zero times
        assert {p["n"] for p in sub.on("telemetry")} == set(range(count))
    assert Store(tmp_path / "state.db").spool_depth() == 0


def test_death_is_published_as_the_will_when_the_process_is_killed(tmp_path: Path) -> None:
    with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{BASE}/#") as sub:
        proc = _spawn("connect", tmp_path, broker.port, tls=False)
        bdseq = int(_line(proc).split()[1])
        assert sub.wait_for(lambda m: len(sub.on("birth")) == 1, 30)
        assert sub.on("birth")[0]["bdSeq"] == bdseq
        time.sleep(0.05)
        _kill9(proc)
        assert sub.wait_for(lambda m: len(sub.on("death")) == 1, 30)
        assert sub.on("death")[0]["bdSeq"] == bdseq
        # a host joining now sees birth and death with the same bdSeq: the gateway is offline
        with subscriber(broker, f"{BASE}/+") as late:
            assert late.wait_for(lambda m: len(m) >= 2, 30)
            retained = {t.rsplit("/", 1)[1]: p["bdSeq"] for t, p, r in late.messages if r}
            assert retained == {"birth": bdseq, "death": bdseq}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(asyncio.run(_helper(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))
