"""A real mosquitto broker for tests and benchmarks, with test certificates made by `openssl`.

`run_mosquitto(tmp_path, port, tls=make_tls_files(tmp_path))` starts mosquitto on 127.0.0.1 and
yields a `Broker` that can be stopped and restarted on the same port (outage tests). With TLS the
broker requires a client certificate signed by the test CA, TLS 1.2 or later.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
_START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a throw-away PKI: one CA, a server certificate and a client certificate."""

    ca_file: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _issue(directory: Path, name: str, subject: str, extensions: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, crt, ext = (directory / f"{name}{s}" for s in (".key", ".csr", ".crt", ".ext"))
    ext.write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", subject, cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
             "-out", str(crt), "-extfile", str(ext), cwd=directory)
    return crt, key


def make_tls_files(directory: Path, *, client_cn: str = "stima-test-gateway") -> TlsFiles:
    """Generate a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory = Path(directory) / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "2", "-subj", "/CN=Stima Test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    server = _issue(directory, "server", "/CN=localhost",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
                    (ca_crt, ca_key))
    client = _issue(directory, "client", f"/CN={client_cn}", "extendedKeyUsage=clientAuth\n", (ca_crt, ca_key))
    return TlsFiles(ca_crt, ca_key, server[0], server[1], client[0], client[1])


class Broker:
    """One mosquitto process bound to 127.0.0.1:`port`; stop() and start() keep the port."""

    def __init__(self, directory: Path, port: int, tls: TlsFiles | None = None, extra_config: str = "",
                 persistent: bool = False) -> None:
        self.directory = Path(directory)
        self.port = port
        self.host = "127.0.0.1"
        self.tls = tls
        self.config_path = self.directory / f"mosquitto-{port}.conf"
        self.log_path = self.directory / f"mosquitto-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            *(
                [f"persistence true\npersistence_location {self.directory}/", "autosave_interval 0"]
                if persistent else ["persistence false"]
            ),
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if tls is not None:
            lines += [
                f"cafile {tls.ca_file}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
                "tls_version tlsv1.2",
            ]
        if extra_config:
            lines.append(extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        for _ in range(2000):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port}: {self.log()}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def client_tls_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for paho's `tls_set` with the test client certificate."""
        if self.tls is None:
            return {}
        return {
            "ca_certs": str(self.tls.ca_file),
            "certfile": str(self.tls.client_cert),
            "keyfile": str(self.tls.client_key),
        }


@contextlib.contextmanager
def run_mosquitto(
    tmp_path: Path, port: int | None = None, *, tls: TlsFiles | None = None, extra_config: str = "",
    persistent: bool = False,
) -> Iterator[Broker]:
    """Run mosquitto for the duration of the block; always stopped on exit.

    `persistent=True` keeps sessions and queued messages across `restart()` (mosquitto writes
    its database on a clean stop), as a production broker would.
    """
    broker = Broker(Path(tmp_path), port or free_port(), tls, extra_config, persistent)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Subscriber:
    """A paho MQTT 5 client recording every message it receives (msgpack decoded when possible).

    With `session_expiry_s` the broker keeps its subscription and queues messages while it is
    away (including across a restart of a persistent broker); it reconnects by itself.
    """

    def __init__(self, broker: Broker, topic: str = "#", *, client_id: str | None = None,
                 session_expiry_s: int = 0) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.broker = broker
        self.topic = topic
        self.messages: list[tuple[str, Any, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  protocol=mqtt.MQTTv5)
        if broker.tls is not None:
            self.client.tls_set(**broker.client_tls_kwargs())
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # floats work
        self._subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self._props = Properties(PacketTypes.CONNECT)
        if session_expiry_s:
            self._props.SessionExpiryInterval = session_expiry_s
        self._clean_start = session_expiry_s == 0

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        import msgpack

        try:
            payload = msgpack.unpackb(msg.payload, raw=False, strict_map_key=False)
        except Exception:
            payload = msg.payload
        with self._cond:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
            self._cond.notify_all()

    def start(self, timeout_s: float = 10.0) -> Subscriber:
        self.client.connect(self.broker.host, self.broker.port, 30, clean_start=self._clean_start,
                            properties=self._props)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.client.loop_stop()
            raise RuntimeError("test subscriber did not connect and subscribe")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> bool:
        """Wait until `predicate(messages)` is true; False if it is not by the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    async def until(self, predicate: Any, timeout_s: float = 30.0) -> bool:
        """`wait_for` for code running in an event loop (which must stay free meanwhile)."""
        import asyncio

        for _ in range(int(timeout_s / 0.01) + 1):
            with self._cond:
                if predicate(self.messages):
                    return True
            await asyncio.sleep(0.01)
        with self._cond:
            return bool(predicate(self.messages))

    def on(self, topic_end: str) -> list[Any]:
        """Payloads of the messages whose topic ends with `/topic_end`, in arrival order."""
        with self._cond:
            return [p for t, p, _ in self.messages if t.endswith("/" + topic_end)]


@contextlib.contextmanager
def subscriber(broker: Broker, topic: str = "#", **kwargs: Any) -> Iterator[Subscriber]:
    sub = Subscriber(broker, topic, **kwargs).start()
    try:
        yield sub
    finally:
        sub.stop()
