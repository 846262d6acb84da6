"""A whole rig on one machine: local broker, the simulated substation and the real daemon.

`Rig` takes a site document (the parsed TOML of a site file), moves every address to free
loopback ports and local paths under `workdir`, writes the file both programs read, and
starts mosquitto (TLS with client certificates for the uplink, plain for AMI),
`stima-hil serve` and `stima-gatewayd` as separate processes. The demo, the end-to-end tests
and the fault-clearing benchmark all run on it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from gateway.control import ControlError, DaemonNotRunning, call
from hil import control as hil_control
from hil.broker import BindFailed, Broker, TlsFiles, free_port, make_tls_files

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "examples" / "sub-003.toml"


def example_document() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def localise(doc: dict[str, Any], workdir: Path, tls: TlsFiles, tls_port: int, ami_port: int) -> dict[str, Any]:
    """The same site with its addresses moved to free loopback ports and paths under `workdir`."""
    doc = tomllib.loads(tomli_w.dumps(doc))  # a deep copy
    doc["site"]["state_dir"] = str(workdir / "state")
    doc["site"]["runtime_dir"] = str(workdir / "run")
    doc["uplink"].update(broker_host="127.0.0.1", broker_port=tls_port, transport="tls",
                         ca_file=str(tls.ca_file), cert_file=str(tls.client_cert), key_file=str(tls.client_key))
    if "ami" in doc:
        doc["ami"].update(broker_host="127.0.0.1", broker_port=ami_port)
    if "hmi" in doc:
        doc["hmi"].update(address="127.0.0.1", port=free_port())
        users_file = Path(doc["hmi"].get("users_file", "hmi-users"))
        doc["hmi"]["users_file"] = str(users_file if users_file.is_absolute() else workdir / users_file)
    for ied in doc["ieds"]:
        if ied["protocol"] in ("modbus_tcp", "iec61850"):
            ied["host"] = "127.0.0.1"
            ied["port"] = free_port()
        elif ied["protocol"] == "modbus_rtu":
            ied["serial_port"] = str(workdir / "tty" / Path(ied["serial_port"]).name)
    return doc


class Rig:
    def __init__(self, doc: dict[str, Any], workdir: Path, *, hil_args: tuple[str, ...] = (),
                 fresh_state: bool = True) -> None:
        self.workdir = workdir
        (workdir / "tty").mkdir(parents=True, exist_ok=True)
        if fresh_state:
            shutil.rmtree(workdir / "state", ignore_errors=True)
        self.tls = make_tls_files(workdir)
        self.tls_port, self.ami_port = free_port(), free_port()
        self.doc = localise(doc, workdir, self.tls, self.tls_port, self.ami_port)
        self.site_path = workdir / "site.toml"
        self.site_path.write_text(tomli_w.dumps(self.doc))
        self.runtime_dir = workdir / "run"
        self.hil_socket = workdir / "hil.sock"
        self._hil_args = hil_args
        self.broker: Broker | None = None
        self.hil: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Rig:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=ROOT)

    def start(self, timeout_s: float = 60.0) -> None:
        broker_dir = self.workdir / "broker"
        broker_dir.mkdir(exist_ok=True)
        # the uplink's TLS listener, and a plain one on loopback for the AMI data concentrators
        for attempt in range(3):
            self.broker = Broker(broker_dir, self.tls_port, self.tls,
                                 extra_config=f"set_tcp_nodelay true\nlistener {self.ami_port} 127.0.0.1")
            try:
                self.broker.start()
                break
            except BindFailed:
                if attempt == 2:
                    raise
                self._move_broker_ports()
        py = sys.executable
        self.hil = self._spawn("hil", [py, "-m", "hil", "serve", "--config", str(self.site_path),
                                       "--control", str(self.hil_socket), *self._hil_args])
        deadline = time.monotonic() + timeout_s
        # the daemon starts once every IED server listens: its first connections then succeed
        # instead of waiting out a reconnect backoff
        while not self._hil_ready():
            if self.hil.poll() is not None:
                log = (self.workdir / "hil.log").read_text(errors="replace")
                raise RuntimeError(f"stima-hil exited with {self.hil.returncode}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the simulator did not come up (every IED server listening) in time")
            time.sleep(0.1)
        self.daemon = self._spawn("gatewayd", [py, "-m", "gateway.daemon", "--config", str(self.site_path)])
        while True:
            for name, proc in (("stima-hil", self.hil), ("stima-gatewayd", self.daemon)):
                if proc.poll() is not None:
                    log = (self.workdir / f"{'hil' if name == 'stima-hil' else 'gatewayd'}.log").read_text(errors="replace")
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log[-3000:]}")
            try:
                status = self.daemon_call("status")
                if all(i["state"] == "online" for i in status["ieds"]) and status["uplink"]["state"] == "connected":
                    return
            except (DaemonNotRunning, ControlError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the rig did not come up (IEDs online, uplink connected) in time")
            time.sleep(0.2)

    def _hil_ready(self) -> bool:
        try:
            return bool(self.hil_call("status").get("ready"))
        except (hil_control.ControlError, OSError):
            return False

    def _move_broker_ports(self) -> None:
        """mosquitto could not bind: take fresh ports and rewrite the site file before anything read it."""
        self.tls_port, self.ami_port = free_port(), free_port()
        self.doc["uplink"]["broker_port"] = self.tls_port
        if "ami" in self.doc:
            self.doc["ami"]["broker_port"] = self.ami_port
        self.site_path.write_text(tomli_w.dumps(self.doc))

    def restart_daemon(self, *, hard: bool = False, timeout_s: float = 60.0) -> None:
        """Stop the daemon (SIGTERM, or SIGKILL when `hard`) and start it again on the same site."""
        assert self.daemon is not None
        if hard:
            self.daemon.kill()
        else:
            self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(30)
        self.daemon = self._spawn("gatewayd", [sys.executable, "-m", "gateway.daemon", "--config", str(self.site_path)])
        self.wait(lambda: self.daemon_call("status")["uplink"]["state"] == "connected", "the daemon back up", timeout_s,
                  interval_s=0.2)

    def stop(self) -> None:
        for proc in (self.daemon, self.hil):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.daemon, self.hil):
            if proc is None:
                continue
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.broker is not None:
            self.broker.stop()

    @property
    def hmi_url(self) -> str:
        """The daemon's web HMI (the site document has an [hmi] section)."""
        hmi = self.doc["hmi"]
        return f"{'https' if hmi.get('cert_file') else 'http'}://{hmi['address']}:{hmi['port']}"

    def daemon_call(self, op: str, **args: Any) -> Any:
        return call(self.runtime_dir, op, timeout=10, **args)

    def hil_call(self, op: str, **args: Any) -> Any:
        result = hil_control.request(self.hil_socket, {"op": op, **args})
        return result.get("result", result) if set(result) == {"result"} else result

    def wait(self, predicate: Any, what: str, timeout_s: float = 30.0, interval_s: float = 0.02) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(DaemonNotRunning, ControlError, hil_control.ControlError, OSError):
                result = predicate()
                if result:
                    return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(interval_s)
