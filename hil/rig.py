"""A whole rig on one machine: local broker, the simulated substation and the real daemon.

`Rig` takes a site document (the parsed TOML of a site file), moves every address to free
loopback ports and local paths under `workdir`, writes the file both programs read, and
starts mosquitto (TLS with client certificates for the uplink, plain for AMI),
`stima-hil serve` and `stima-gatewayd` as separate processes. The demo, the end-to-end tests
and the fault-clearing benchmark all run on it.
"""

from __future__ import annotations

import contextlib
import os
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
    doc["uplink"].update(
        broker_host="127.0.0.1",
        broker_port=tls_port,
        transport="tls",
        ca_file=str(tls.ca_file),
        cert_file=str(tls.client_cert),
        key_file=str(tls.client_key),
    )
    if "ami" in doc:
        doc["ami"].update(broker_host="127.0.0.1", broker_port=ami_port)
    if doc.get("iec104", {}).get("enabled"):
        doc["iec104"].update(bind="127.0.0.1", port=free_port())
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


def localise_ieds(docs: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """Copies of several site documents with every IED on a free loopback port (serial lines under
    `workdir`); an IED in more than one document (a tie's RTU both gateways poll) gets one port."""
    out = [tomllib.loads(tomli_w.dumps(doc)) for doc in docs]  # deep copies
    ports: dict[str, int] = {}
    for doc in out:
        for ied in doc.get("ieds", []):
            if ied["protocol"] in ("modbus_tcp", "iec61850"):
                ied["host"] = "127.0.0.1"
                ied["port"] = ports.setdefault(ied["id"], free_port())
            elif ied["protocol"] == "modbus_rtu":
                ied["serial_port"] = str(workdir / "tty" / Path(ied["serial_port"]).name)
    return out


class Rig:
    def __init__(
        self, doc: dict[str, Any], workdir: Path, *, hil_args: tuple[str, ...] = (), fresh_state: bool = True
    ) -> None:
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
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT
            )

    def start(self, timeout_s: float = 60.0) -> None:
        broker_dir = self.workdir / "broker"
        broker_dir.mkdir(exist_ok=True)
        # the uplink's TLS listener, and a plain one on loopback for the AMI data concentrators
        for attempt in range(3):
            self.broker = Broker(
                broker_dir,
                self.tls_port,
                self.tls,
                extra_config=f"set_tcp_nodelay true\nlistener {self.ami_port} 127.0.0.1",
            )
            try:
                self.broker.start()
                break
            except BindFailed:
                if attempt == 2:
                    raise
                self._move_broker_ports()
        py = sys.executable
        self.hil = self._spawn(
            "hil",
            [
                py,
                "-m",
                "hil",
                "serve",
                "--config",
                str(self.site_path),
                "--control",
                str(self.hil_socket),
                *self._hil_args,
            ],
        )
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
                    log = (self.workdir / f"{'hil' if name == 'stima-hil' else 'gatewayd'}.log").read_text(
                        errors="replace"
                    )
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
        self.wait(
            lambda: self.daemon_call("status")["uplink"]["state"] == "connected",
            "the daemon back up",
            timeout_s,
            interval_s=0.2,
        )

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


# --------------------------------------------------------------------------- two gateways

ACL_TEMPLATE = """# Stima rig ACL: who may publish and subscribe where (mosquitto acl_file).
# A client's user name is its certificate's CN (use_identity_as_username).
#
# SCADA and the bridge to the central broker see everything of the utility.
user scada
topic readwrite {prefix}/#
user bridge
topic readwrite {prefix}/#

# Every other client is a gateway whose CN is its substation id: it writes its own subtree only
# (its messages to a neighbour go to {prefix}/{region}/<itself>/coord/<neighbour>), reads what its
# neighbours address to it and their births and deaths (load-transfer exchanges, docs/mqtt.md).
pattern readwrite {prefix}/{region}/%u/#
pattern read {prefix}/{region}/+/coord/%u
pattern read {prefix}/{region}/+/death
pattern read {prefix}/{region}/+/birth
"""


def broker_config(
    port: int,
    tls: TlsFiles,
    acl_path: Path,
    log_path: Path,
    data_dir: Path,
    *,
    ami_port: int | None = None,
    bridge_to: int | None = None,
    bridge_cert: tuple[Path, Path] | None = None,
    prefix: str = "stima",
) -> str:
    """A mosquitto configuration: a TLS listener requiring client certificates whose CN is the
    user the ACL confines; optionally a plain loopback listener for the AMI concentrators and a
    bridge (TLS, its own certificate) to a central broker carrying `<prefix>/#` both ways."""
    lines = [
        "per_listener_settings true",
        "persistence false",
        f"log_dest file {log_path}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "max_queued_messages 100000",
        "max_inflight_messages 0",
        "set_tcp_nodelay true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    lines += [
        f"listener {port} 127.0.0.1",
        f"cafile {tls.ca_file}",
        f"certfile {tls.server_cert}",
        f"keyfile {tls.server_key}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        f"acl_file {acl_path}",
        "allow_anonymous false",
    ]
    if ami_port is not None:
        lines += [f"listener {ami_port} 127.0.0.1", "allow_anonymous true"]
    if bridge_to is not None:
        assert bridge_cert is not None
        lines += [
            "connection central",
            f"address 127.0.0.1:{bridge_to}",
            f"topic {prefix}/# both 1",
            f"bridge_cafile {tls.ca_file}",
            f"bridge_certfile {bridge_cert[0]}",
            f"bridge_keyfile {bridge_cert[1]}",
            "bridge_insecure false",
            "remote_clientid bridge-regional",
            "cleansession true",
            "try_private true",
            "start_type automatic",
            "restart_timeout 1 5",
        ]
    del data_dir
    return "\n".join(lines) + "\n"


class TwoRig:
    """Two gateways, one simulator: SUB-006 and SUB-007 (or any documents) each with its own
    `stima-gatewayd` (state directory, certificate, client id), one `stima-hil serve` for both,
    and mosquitto with TLS client certificates and an ACL; `bridged=True` puts the gateways on two
    brokers, a regional one bridged to a central one, so that everything between them crosses the
    bridge."""

    def __init__(
        self,
        docs: list[dict[str, Any]],
        workdir: Path,
        *,
        bridged: bool = False,
        hil_args: tuple[str, ...] = (),
        coordinate: bool = True,
    ) -> None:
        from hil.broker import _issue

        self.workdir = workdir
        self.bridged = bridged
        (workdir / "tty").mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_files(workdir, client_cn="scada")
        ca = (self.tls.ca_file, self.tls.ca_key)
        tls_dir = self.tls.ca_file.parent
        self.subs = [d["site"]["substation_id"] for d in docs]
        self.certs = {
            sub: _issue(tls_dir, sub.lower(), f"/CN={sub}", "extendedKeyUsage=clientAuth\n", ca) for sub in self.subs
        }
        self.bridge_cert = _issue(tls_dir, "bridge", "/CN=bridge", "extendedKeyUsage=clientAuth\n", ca)
        self.prefix = docs[0]["uplink"].get("topic_prefix", "stima")
        self.region = docs[0]["site"]["region"]
        self.ports = {"regional": free_port(), "central": free_port(), "ami": free_port()}
        self.broker_of = {sub: ("central" if bridged and n == 0 else "regional") for n, sub in enumerate(self.subs)}
        self.docs = localise_ieds(docs, workdir)
        self.paths: dict[str, Path] = {}
        self.public_keys = self._key_pairs() if coordinate else {}
        for doc in self.docs:
            sub = doc["site"]["substation_id"]
            home = workdir / sub
            if coordinate:
                # each gateway knows its neighbours' public keys, as commissioning would enter them
                doc.setdefault("coordination", {})["neighbours"] = {
                    other: key for other, key in self.public_keys.items() if other != sub
                }
            doc["site"]["state_dir"] = str(home / "state")
            doc["site"]["runtime_dir"] = str(home / "run")
            cert, key = self.certs[sub]
            doc["uplink"].update(
                broker_host="127.0.0.1",
                broker_port=self.ports[self.broker_of[sub]],
                transport="tls",
                ca_file=str(self.tls.ca_file),
                cert_file=str(cert),
                key_file=str(key),
                client_id=f"stima-{sub}",
            )
            if "ami" in doc:
                doc["ami"].update(broker_host="127.0.0.1", broker_port=self.ports["ami"])
            path = workdir / f"{sub.lower()}.toml"
            path.write_text(tomli_w.dumps(doc))
            self.paths[sub] = path
        self.hil_socket = workdir / "hil.sock"
        self._hil_args = hil_args
        self.brokers: dict[str, Broker] = {}
        self.hil: subprocess.Popen[bytes] | None = None
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def _key_pairs(self) -> dict[str, str]:
        """Each gateway's own Ed25519 key pair made in its state directory (the daemon uses it
        from there); substation → public key in hex."""
        from gateway.keys import load_or_create_keypair

        return {
            sub: load_or_create_keypair(self.workdir / sub / "state", f"gw-{sub}").public.hex() for sub in self.subs
        }

    def __enter__(self) -> TwoRig:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT
            )

    def _broker(self, name: str, *, ami: bool, bridge: bool) -> Broker:
        directory = self.workdir / f"broker-{name}"
        directory.mkdir(exist_ok=True)
        acl = directory / "acl"
        acl.write_text(ACL_TEMPLATE.format(prefix=self.prefix, region=self.region))
        broker = Broker(directory, self.ports[name], self.tls)
        broker.config_path.write_text(
            broker_config(
                self.ports[name],
                self.tls,
                acl,
                broker.log_path,
                directory,
                ami_port=self.ports["ami"] if ami else None,
                bridge_to=self.ports["central"] if bridge else None,
                bridge_cert=self.bridge_cert,
                prefix=self.prefix,
            )
        )
        broker.start()
        return broker

    def start(self, timeout_s: float = 120.0) -> None:
        if self.bridged:
            self.brokers["central"] = self._broker("central", ami=False, bridge=False)
        self.brokers["regional"] = self._broker("regional", ami=True, bridge=self.bridged)
        py = sys.executable
        configs = [a for sub in self.subs for a in ("--config", str(self.paths[sub]))]
        self.hil = self._spawn(
            "hil", [py, "-m", "hil", "serve", *configs, "--control", str(self.hil_socket), *self._hil_args]
        )
        deadline = time.monotonic() + timeout_s
        while not self._hil_ready():
            if self.hil.poll() is not None:
                raise RuntimeError(f"stima-hil exited with {self.hil.returncode}:\n{self.log('hil')[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the simulator did not come up in time")
            time.sleep(0.1)
        for sub in self.subs:
            self.daemons[sub] = self._spawn(
                f"gatewayd-{sub}", [py, "-m", "gateway.daemon", "--config", str(self.paths[sub])]
            )
        for sub in self.subs:
            self.wait(
                lambda s=sub: self._daemon_up(s),
                f"{sub}'s daemon up (IEDs online, uplink connected)",
                max(1.0, deadline - time.monotonic()),
                interval_s=0.2,
            )

    def restart_daemon(self, sub: str, timeout_s: float = 60.0) -> None:
        """Start `sub`'s daemon again (after a test stopped it) and wait until it is up."""
        proc = self.daemons.get(sub)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        self.daemons[sub] = self._spawn(
            f"gatewayd-{sub}", [sys.executable, "-m", "gateway.daemon", "--config", str(self.paths[sub])]
        )
        self.wait(lambda: self._daemon_up(sub), f"{sub}'s daemon up again", timeout_s, interval_s=0.2)

    def _daemon_up(self, sub: str) -> bool:
        proc = self.daemons[sub]
        if proc.poll() is not None:
            raise RuntimeError(
                f"stima-gatewayd {sub} exited with {proc.returncode}:\n{self.log(f'gatewayd-{sub}')[-3000:]}"
            )
        status = self.daemon_call(sub, "status")
        return bool(all(i["state"] == "online" for i in status["ieds"]) and status["uplink"]["state"] == "connected")

    def _hil_ready(self) -> bool:
        try:
            return bool(self.hil_call("status").get("ready"))
        except (hil_control.ControlError, OSError):
            return False

    def log(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        procs = [*self.daemons.values(), self.hil]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            if proc is None:
                continue
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for broker in self.brokers.values():
            broker.stop()

    def daemon_call(self, sub: str, op: str, **args: Any) -> Any:
        return call(self.workdir / sub / "run", op, timeout=10, **args)

    def hil_call(self, op: str, **args: Any) -> Any:
        result = hil_control.request(self.hil_socket, {"op": op, **args})
        return result.get("result", result) if set(result) == {"result"} else result

    def client_tls(self, who: str) -> dict[str, str]:
        """paho `tls_set` arguments for a client with `who`'s certificate (a substation id or 'scada')."""
        cert, key = (self.tls.client_cert, self.tls.client_key) if who == "scada" else self.certs[who]
        return {"ca_certs": str(self.tls.ca_file), "certfile": str(cert), "keyfile": str(key)}

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


def two_site_documents() -> list[dict[str, Any]]:
    """The example neighbours, SUB-006 and SUB-007."""
    return [tomllib.loads((ROOT / "deploy" / "examples" / f"sub-00{n}.toml").read_text()) for n in (6, 7)]
