"""A local mosquitto broker for rigs, demos, tests and benchmarks, with certificates made by `openssl`.

The regional broker in the field is someone else's; on a rig we run Debian's mosquitto on
127.0.0.1 with a TLS listener that requires client certificates, as in the field.

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.ports import reserve_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
_START_TIMEOUT_S = 10.0
_BIND_TRIES = 3


def free_port() -> int:
    """A loopback TCP port reserved for this process (see `hil.ports`): no other caller gets it."""
    return reserve_port()


class BindFailed(RuntimeError):
    """mosquitto could not bind its port (something outside our reservations holds it)."""


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
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        subject,
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-set_serial",
        str(int.from_bytes(os.urandom(8), "big")),
        "-days",
        "2",
        "-out",
        str(crt),
        "-extfile",
        str(ext),
        cwd=directory,
    )
    return crt, key


def make_tls_files(directory: Path, *, client_cn: str = "stima-gateway") -> TlsFiles:
    """Generate a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory = Path(directory) / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-days",
        "2",
        "-subj",
        "/CN=Stima rig CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    server = _issue(
        directory,
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        (ca_crt, ca_key),
    )
    client = _issue(directory, "client", f"/CN={client_cn}", "extendedKeyUsage=clientAuth\n", (ca_crt, ca_key))
    return TlsFiles(ca_crt, ca_key, server[0], server[1], client[0], client[1])


class Broker:
    """One mosquitto process bound to 127.0.0.1:`port`; stop() and start() keep the port."""

    def __init__(
        self, directory: Path, port: int, tls: TlsFiles | None = None, extra_config: str = "", persistent: bool = False
    ) -> None:
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
                if persistent
                else ["persistence false"]
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
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        for _ in range(2000):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                text = f"mosquitto exited with {self.process.returncode}: {err}{self.log()}"
                self.stop()
                raise (BindFailed if "Address already in use" in text else RuntimeError)(text)
            # mosquitto says "running" once every listener is bound: only then is the port ours
            if " running" in self.log()[log_offset:]:
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
        """Stop and start on the same port (an outage); a failed bind is retried a few times."""
        self.stop()
        for attempt in range(_BIND_TRIES):
            try:
                self.start()
                return
            except BindFailed:
                if attempt == _BIND_TRIES - 1:
                    raise
                time.sleep(0.5)

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
    tmp_path: Path,
    port: int | None = None,
    *,
    tls: TlsFiles | None = None,
    extra_config: str = "",
    persistent: bool = False,
) -> Iterator[Broker]:
    """Run mosquitto for the duration of the block; always stopped on exit.

    `persistent=True` keeps sessions and queued messages across `restart()` (mosquitto writes
    its database on a clean stop), as a production broker would.
    """
    for attempt in range(_BIND_TRIES):
        broker = Broker(Path(tmp_path), port or free_port(), tls, extra_config, persistent)
        try:
            broker.start()
            break
        except BindFailed:
            if port is not None or attempt == _BIND_TRIES - 1:
                raise
    try:
        yield broker
    finally:
        broker.stop()
