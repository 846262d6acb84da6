"""The daemon end to end: real pymodbus servers → stima-gatewayd → real mosquitto (TLS).

Values written into server registers arrive on MQTT decoded, scaled and with quality; the
CLI reads the running daemon; an IED that disappears is marked invalid and recovers; SIGHUP
with a bad site file is refused and the running configuration kept; SIGTERM stops cleanly
with a death message; systemd's notify protocol is spoken.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from protocols.modbus import encode_value
from gateway.contract.settings import ModbusPoint
from tests.support.broker import Broker, Subscriber, make_tls_files, run_mosquitto
from tests.support.modbus_server import ModbusTestServer

TIMEOUT_S = 30.0


def site_document(tmp: Path, broker: Broker, ports: dict[str, int]) -> dict[str, Any]:
    assert broker.tls is not None
    return {
        "site": {
            "region": "test-region",
            "substation_id": "SUB-T",
            "state_dir": str(tmp / "state"),
            "runtime_dir": str(tmp / "run"),
        },
        "uplink": {
            "broker_host": "127.0.0.1",
            "broker_port": broker.port,
            "transport": "tls",
            "ca_file": str(broker.tls.ca_file),
            "cert_file": str(broker.tls.client_cert),
            "key_file": str(broker.tls.client_key),
            "client_id": "stima-test",
            "topic_prefix": "stima",
            "integrity_period_s": 5,
        },
        "ieds": [
            {
                "id": "IED-A",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": ports["A"],
                "poll_period_ms": 50,
                "timeout_ms": 200,
                "retries": 0,
                "points": [
                    {"id": "A.ia", "address": 0, "type": "float32", "unit": "A", "deadband": 1.0},
                    {
                        "id": "A.temp",
                        "address": 2,
                        "type": "int16",
                        "scale": 0.1,
                        "unit": "degC",
                        "deadband": 0.5,
                        "valid_range": [-40.0, 150.0],
                    },
                    {"id": "A.ops", "address": 4, "type": "uint32", "word_order": "little", "kind": "counter"},
                    {"id": "A.closed", "address": 0, "function": "discrete", "type": "bool"},
                ],
            },
            {
                "id": "IED-B",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": ports["B"],
                "poll_period_ms": 50,
                "timeout_ms": 200,
                "retries": 0,
                "points": [
                    {
                        "id": "B.kv",
                        "address": 0,
                        "function": "input",
                        "type": "uint16",
                        "scale": 0.01,
                        "unit": "kV",
                        "deadband": 0.05,
                    }
                ],
            },
        ],
    }


class Rig:
    def __init__(self, tmp: Path, broker: Broker, servers: dict[str, ModbusTestServer]) -> None:
        self.tmp = tmp
        self.broker = broker
        self.servers = servers
        self.site_path = tmp / "site.toml"
        self.document = site_document(tmp, broker, {k: s.port for k, s in servers.items()})
        self.site_path.write_text(tomli_w.dumps(self.document))
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.5)
        self.notices: list[str] = []
        self._stop = threading.Event()
        self._notice_thread = threading.Thread(target=self._read_notices, daemon=True)
        self._notice_thread.start()
        self.log_path = tmp / "gatewayd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _read_notices(self) -> None:
        while not self._stop.is_set():
            try:
                self.notices.append(self.notify.recv(4096).decode())
            except (TimeoutError, OSError):
                continue

    def start(self) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "WATCHDOG_USEC": "2000000"}
        env.pop("WATCHDOG_PID", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.daemon", "--config", str(self.site_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args, "--runtime-dir", str(self.tmp / "run")],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stop.set()
        self._notice_thread.join(5)
        self.notify.close()


def wait_until(predicate: Any, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def metrics(sub: Subscriber, kind: str = "telemetry") -> list[dict[str, Any]]:
    return [m for payload in sub.on(kind) if isinstance(payload, dict) for m in payload.get("metrics", [])]


def latest(sub: Subscriber, point_id: str) -> dict[str, Any] | None:
    found = [m for m in metrics(sub) + metrics(sub, "integrity") if m.get("id") == point_id]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, Subscriber]]:
    tmp = tmp_path_factory.mktemp("gateway")
    tls = make_tls_files(tmp)
    servers = {"A": ModbusTestServer().start(), "B": ModbusTestServer().start()}
    with run_mosquitto(tmp, tls=tls) as broker:
        sub = Subscriber(broker, "stima/#").start()
        r = Rig(tmp, broker, servers)
        try:
            yield r, sub
        finally:
            sub.stop()
            r.close()
            for s in servers.values():
                s.close()


def point(**kw: Any) -> ModbusPoint:
    return ModbusPoint(id="x", **kw)


def test_values_arrive_on_mqtt_decoded_scaled_with_quality(rig: tuple[Rig, Subscriber]) -> None:
    r, sub = rig
    a = r.servers["A"]
    a.set("holding", 0, encode_value(412.5, point(address=0, type="float32")))
    a.set("holding", 2, encode_value(25.3, point(address=2, type="int16", scale=0.1)))
    a.set("holding", 4, encode_value(70000, point(address=4, type="uint32", word_order="little")))
    a.set("discrete", 0, [True])
    r.servers["B"].set("input", 0, [1105])
    r.start()
    wait_until(lambda: (m := latest(sub, "A.ia")) is not None and m["q"] == "good", "A.ia on the broker")
    assert latest(sub, "A.ia")["v"] == pytest.approx(412.5)  # type: ignore[index]
    assert latest(sub, "A.temp")["v"] == pytest.approx(25.3)  # type: ignore[index]
    assert latest(sub, "A.ops")["v"] == 70000  # type: ignore[index]
    assert latest(sub, "A.closed")["v"] is True  # type: ignore[index]
    wait_until(lambda: latest(sub, "B.kv") is not None, "B.kv on the broker")
    assert latest(sub, "B.kv")["v"] == pytest.approx(11.05)  # type: ignore[index]

    births = sub.on("birth")
    assert births, "no birth message"
    birth_ids = {m["id"] for m in births[-1]["metrics"]}
    assert {"A.ia", "A.temp", "A.ops", "A.closed", "B.kv"} <= birth_ids

    # a change beyond the deadband is reported; one within it is not
    a.set("holding", 0, encode_value(412.9, point(address=0, type="float32")))
    a.set("holding", 0, encode_value(420.0, point(address=0, type="float32")))
    wait_until(lambda: latest(sub, "A.ia")["v"] == pytest.approx(420.0), "the change beyond the deadband")  # type: ignore[index]
    assert not [m for m in metrics(sub) if m["id"] == "A.ia" and m["v"] == pytest.approx(412.9)]

    # an out-of-range value is reported invalid with its reason
    a.set("holding", 2, encode_value(-50.0, point(address=2, type="int16", scale=0.1)))
    wait_until(lambda: latest(sub, "A.temp")["q"] == "invalid", "A.temp out of range")  # type: ignore[index]
    assert latest(sub, "A.temp")["r"] == "out_of_range"  # type: ignore[index]

    # systemd heard READY=1, a STATUS line and watchdog pings
    wait_until(lambda: any(n.startswith("READY=1") for n in r.notices), "READY=1")
    wait_until(lambda: "WATCHDOG=1" in r.notices, "WATCHDOG=1", timeout_s=10)
    assert any("STATUS=" in n for n in r.notices)


def test_cli_reads_the_running_daemon(rig: tuple[Rig, Subscriber]) -> None:
    r, _ = rig
    status = r.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["substation_id"] == "SUB-T" and data["state"] == "running"
    assert {i["ied"]: i["state"] for i in data["ieds"]} == {"IED-A": "online", "IED-B": "online"}
    assert data["points"]["total"] == 5 and data["uplink"]["state"] == "connected"
    human = r.cli("status")
    assert human.returncode == 0 and "IED-A" in human.stdout and "spool depth" in human.stdout
    read = r.cli("points", "read", "A.ia", "B.kv", "--json")
    assert read.returncode == 0, read.stderr
    values = {p["id"]: p for p in json.loads(read.stdout)}
    assert values["B.kv"]["value"] == pytest.approx(11.05) and values["B.kv"]["quality"] == "good"
    listed = r.cli("points", "list", "A.*")
    assert listed.returncode == 0 and "A.temp" in listed.stdout and "B.kv" not in listed.stdout
    missing = r.cli("points", "read", "nope")
    assert missing.returncode == 1 and "no such point" in missing.stderr
    watch = r.cli("points", "watch", "A.*", "--count", "3", "--json")
    assert watch.returncode == 0 and len(watch.stdout.splitlines()) == 3


def test_comm_loss_marks_points_invalid_and_recovers(rig: tuple[Rig, Subscriber]) -> None:
    r, sub = rig
    b = r.servers["B"]
    b.stop()
    wait_until(lambda: latest(sub, "B.kv")["q"] == "invalid", "B.kv invalid after comm loss")  # type: ignore[index]
    assert latest(sub, "B.kv")["r"] == "communication_failure"  # type: ignore[index]
    assert latest(sub, "A.ia")["q"] == "good"  # type: ignore[index]
    b.start()
    b.set("input", 0, [1111])
    wait_until(lambda: latest(sub, "B.kv")["q"] == "good", "B.kv good again")  # type: ignore[index]
    assert latest(sub, "B.kv")["v"] == pytest.approx(11.11)  # type: ignore[index]


def test_sighup_with_a_bad_file_keeps_the_running_configuration(rig: tuple[Rig, Subscriber]) -> None:
    r, sub = rig
    assert r.proc is not None
    good = r.site_path.read_text()
    r.site_path.write_text(good.replace("poll_period_ms = 50", 'poll_period_ms = "often"', 1))
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(e.get("msg", "").startswith("reload refused") for e in r.log()), "the refusal in the log")
    refusal = [e for e in r.log() if e.get("msg") == "reload refused: invalid site file"]
    assert any("poll_period_ms" in e.get("problem", "") and "often" in e.get("problem", "") for e in refusal)
    # still running the old configuration: new values keep flowing
    r.servers["A"].set("holding", 0, encode_value(555.0, point(address=0, type="float32")))
    wait_until(lambda: latest(sub, "A.ia")["v"] == pytest.approx(555.0), "values after a refused reload")  # type: ignore[index]
    assert r.proc.poll() is None
    # a valid new file is taken: the new point appears
    doc = dict(r.document)
    doc["ieds"][1]["points"].append(
        {"id": "B.hz", "address": 1, "function": "input", "type": "uint16", "scale": 0.01, "unit": "Hz"}
    )
    r.servers["B"].set("input", 1, [5001])
    r.site_path.write_text(tomli_w.dumps(doc))
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: latest(sub, "B.hz") is not None, "the point added by the reload")
    status = json.loads(r.cli("status", "--json").stdout)
    assert status["reloads"] == 1 and status["reload_failures"] == 1


def test_sigterm_stops_cleanly_with_a_death_message(rig: tuple[Rig, Subscriber]) -> None:
    r, sub = rig
    assert r.proc is not None
    deaths_before = len(sub.on("death"))
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(timeout=20) == 0
    assert sub.wait_for(lambda _m: len(sub.on("death")) > deaths_before, timeout_s=10)
    assert any(e.get("msg") == "stopped" for e in r.log())
    assert any(n.startswith("STOPPING=1") for n in r.notices)
    assert not (r.tmp / "run" / "control.sock").exists()
