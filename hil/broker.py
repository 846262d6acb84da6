"""A local mosquitto broker for rigs, demos and tests, with certificates made on the spot.

The regional broker in the field is someone else's; on a rig we run Debian's mosquitto on
loopback: one TLS listener that requires client certificates (the uplink, as in the field)
and, optionally, one plain listener for the substation's AMI data concentrators.
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


class BrokerError(RuntimeError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if found is None:
        raise BrokerError("mosquitto is not installed (Debian package 'mosquitto'; `make test` installs it as root)")
    return found


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise BrokerError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def make_tls(directory: Path, client_name: str = "gateway") -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and one client certificate.

    Idempotent: existing files are kept.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / f"{client_name}.crt",
        directory / f"{client_name}.key",
    )
    if all(p.exists() for p in vars(files).values()):
        return files
    if shutil.which("openssl") is None:
        raise BrokerError("openssl is not installed (Debian package 'openssl')")
    d = directory
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=Stima rig CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn, ext in (("server", "localhost", ["-extfile", "server.ext"]), (client_name, client_name, [])):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650", *ext, cwd=d)
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return files


@dataclass
class Broker:
    process: subprocess.Popen[bytes]
    tls_port: int | None
    plain_port: int | None
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_broker(
    workdir: Path, *, tls: TlsFiles | None = None, tls_port: int | None = None, plain_port: int | None = None
) -> Broker:
    """Start mosquitto on 127.0.0.1 and wait until it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = ["persistence false", "log_dest stderr", "log_type error", "log_type warning",
             "max_queued_messages 100000", "per_listener_settings false", "allow_anonymous true"]
    if os.geteuid() == 0:
        lines.append("user root")  # otherwise it drops to 'mosquitto' and cannot read root's keys
    if tls is not None:
        tls_port = tls_port or free_port()
        lines += [f"listener {tls_port} 127.0.0.1", f"cafile {tls.ca_cert}", f"certfile {tls.server_cert}",
                  f"keyfile {tls.server_key}", "require_certificate true", "tls_version tlsv1.2"]
    if plain_port is not None or tls is None:
        plain_port = plain_port or free_port()
        lines.append(f"listener {plain_port} 127.0.0.1")
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    log_path = workdir / "mosquitto.log"
    log = log_path.open("wb")
    process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log,
                               stdin=subprocess.DEVNULL)
    log.close()
    broker = Broker(process, tls_port, plain_port, log_path)
    deadline = time.monotonic() + 10
    for port in (p for p in (tls_port, plain_port) if p):
        while True:
            if process.poll() is not None:
                raise BrokerError(f"mosquitto exited: {log_path.read_text(errors='replace')[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                broker.stop()
                raise BrokerError(f"mosquitto did not listen on {port}")
            time.sleep(0.05)
    return broker


@contextlib.contextmanager
def running_broker(workdir: Path, **kwargs: object) -> Iterator[Broker]:
    broker = start_broker(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield broker
    finally:
        broker.stop()
