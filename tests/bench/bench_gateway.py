"""Gateway throughput, CPU and latency beside its peers, measured in the same run on the same workload.

Workload: N Modbus TCP IEDs × R holding registers, every register changing every poll period
(tests/bench/modbus_farm.py, its own process), polled at that period into a local mosquitto:
N·R/period values/s offered. Measured one after the other against the same farm:

- stima: the real daemon; TLS uplink with client certificates, QoS 1, the spool, report-by-exception,
  columnar telemetry messages (`--variant samples:uplink.telemetry_format="samples"` for the other form);
- bare: tests/bench/bare_poller.py, pymodbus + paho + msgpack and nothing else, same TLS broker, QoS 1;
- thingsboard (only with `--peer thingsboard`): ThingsBoard IoT Gateway 3.8 in its own virtualenv
  (installed on first use under ~/.cache/stima-bench), one 100-register read per device per poll,
  QoS 1, plain MQTT to its own local broker as its reference configuration has it, with a stand-in
  for the one server RPC it waits for.

For each: values/s delivered to the broker (counted by a subscriber that only stores what it
receives while measuring), the peer's CPU (utime + stime of its processes, from /proc) as a share of
one core and per delivered value, register change → broker latency, RSS, and how busy the whole
machine was meanwhile. With `--scaling`, CPU per value at 1, 20 and 100 IEDs and at 1 s, 100 ms and
20 ms. The ratios are printed last, only between figures of this run: the machine is shared and an
absolute figure moves 2-3× between hours. Figures only; nothing is asserted about speed.

    python tests/bench/bench_gateway.py [--seconds 15] [--rounds 1] [--peer thingsboard] [--scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import tomli_w

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.control import DaemonNotRunning, call  # noqa: E402
from tests.bench.modbus_farm import Farm  # noqa: E402
from tests.support.broker import Broker, TlsFiles, make_tls_files, run_mosquitto  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CACHE = Path(os.environ.get("STIMA_BENCH_CACHE", Path.home() / ".cache" / "stima-bench"))
THINGSBOARD_PACKAGES = ("thingsboard-gateway==3.8.*", "pymodbus==3.9.2", "pyserial", "pyserial-asyncio")

Pairs = Iterable[tuple[int, int]]
"""(register index, value) pairs found in one uplink message."""
Decoder = Callable[["Recorder", str, bytes], Pairs]


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a peer may run helpers in child processes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        tree += children
        frontier = children
    return tree


def tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs: how loaded the shared machine is."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


# --------------------------------------------------------------------------- what arrives


class Recorder:
    """An MQTT subscriber that stores (arrival time, topic, payload) and decodes nothing while
    measuring, so that it takes as little CPU as it can from the peer it measures."""

    def __init__(self, broker: Broker, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-recorder-{os.getpid()}")
        if broker.tls is not None:
            self.client.tls_set(**broker.client_tls_kwargs())
        self.topic = topic
        self.seen = 0
        self.table: list[str] = []
        self.recording = False
        self.arrivals: list[tuple[float, str, bytes]] = []
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topic.split(" ")])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"recorder did not subscribe to {topic}")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.seen += 1
        if msg.topic.endswith("/birth"):  # the point table of columnar messages
            self.table = [m["id"] for m in msgpack.unpackb(msg.payload, raw=False)["metrics"]]
            return
        if self.recording:
            self.arrivals.append((time.time(), msg.topic, msg.payload))

    def start_window(self) -> None:
        self.arrivals = []
        self.recording = True

    def end_window(self) -> list[tuple[float, str, bytes]]:
        self.recording = False
        out, self.arrivals = self.arrivals, []
        return out

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stima_pairs(recorder: Recorder, topic: str, payload: bytes) -> Pairs:
    """Values of a stima `telemetry` message, in either of its forms (docs/mqtt.md)."""
    if not topic.endswith("/telemetry"):
        return ()
    body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    out = [(int(m["id"][-3:]), m["v"]) for m in body.get("metrics", ()) if m.get("v") is not None]
    if body.get("format") == "columns":
        table = recorder.table
        out += [(int(table[i][-3:]), v) for i, v in zip(body["i"], body["v"], strict=True) if v is not None]
    return out


def bare_pairs(recorder: Recorder, topic: str, payload: bytes) -> Pairs:
    return [(i, v) for i, v in msgpack.unpackb(payload, raw=False)["v"]]


def thingsboard_pairs(recorder: Recorder, topic: str, payload: bytes) -> Pairs:
    if topic != "v1/gateway/telemetry":
        return ()
    out = []
    for entries in json.loads(payload).values():
        for entry in entries if isinstance(entries, list) else [entries]:
            for key, v in entry.get("values", entry).items():
                if key.startswith("hr_"):
                    out.append((int(key[3:]), int(v)))
    return out


# --------------------------------------------------------------------------- one measured window


@dataclass
class Result:
    peer: str
    devices: int
    registers: int
    period_ms: float
    seconds: float
    delivered: int
    cpu_s: float
    rss_mib: float
    machine_busy_cores: float
    load_average: float
    latencies_s: list[float] = field(default_factory=list)
    written: int = 0
    """Values the farm wrote during the window (each a change)."""
    notes: list[str] = field(default_factory=list)

    @property
    def delivered_share(self) -> float:
        """Of the changes the farm made, the share that reached the broker."""
        return self.delivered / max(self.written, 1)

    @property
    def offered_per_s(self) -> float:
        return self.devices * self.registers * 1000.0 / self.period_ms

    @property
    def delivered_per_s(self) -> float:
        return self.delivered / self.seconds

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.seconds

    @property
    def us_per_value(self) -> float:
        return self.cpu_s * 1e6 / max(self.delivered, 1)

    def print(self) -> None:
        lat = self.latencies_s
        print(
            f"  {self.peer:<12} delivered {self.delivered_per_s:9,.0f} values/s ({self.delivered_share:6.1%} of"
            f" {self.written / self.seconds:,.0f}/s written)"
            f"  CPU {self.cpu_share:6.1%} of a core = {self.us_per_value:6.2f} µs/value"
            f"  change→broker p50 {pct(lat, 0.5) * 1000:6.1f} p99 {pct(lat, 0.99) * 1000:6.1f} ms"
            f"  RSS {self.rss_mib:5.1f} MiB"
            f"  [machine: {self.machine_busy_cores:.2f} of {os.cpu_count()} cores busy, load {self.load_average:.1f}]"
        )
        for note in self.notes:
            print(f"  {'':<12} {note}")


def measure(
    peer: str,
    pids: Callable[[], list[int]],
    recorder: Recorder,
    pairs: Decoder,
    farm: Farm,
    args: argparse.Namespace,
    devices: int,
    period_ms: float,
    seconds: float,
) -> Result:
    """CPU of the peer's processes and what reached the broker over one window of `seconds`."""
    tree = pids()
    recorder.start_window()
    wall0 = time.time()
    c0, (b0, a0), t0 = tree_cpu_seconds(tree), machine_ticks(), time.monotonic()
    rss = 0.0
    while time.monotonic() - t0 < seconds:
        time.sleep(min(1.0, max(seconds - (time.monotonic() - t0), 0.0)))
        rss = max(rss, sum(rss_mib(p) for p in tree if Path(f"/proc/{p}").exists()))
    c1, (b1, a1), t1 = tree_cpu_seconds(tree), machine_ticks(), time.monotonic()
    arrivals = recorder.end_window()
    wall1 = time.time()
    # what the farm really wrote meanwhile: on a loaded machine it falls behind its period too
    written_cycles = sum(1 for t in list(farm.cycle_time.values()) if wall0 <= t < wall1)
    load = float(Path("/proc/loadavg").read_text().split()[0])
    delivered, latencies = 0, []
    for arrived, topic, payload in arrivals:
        for register, value in pairs(recorder, topic, payload):
            delivered += 1
            written = farm.cycle_time.get((int(value) - register) % 65536)
            if written is not None:
                latencies.append(arrived - written)
    busy_cores = (b1 - b0) / max(a1 - a0, 1) * (os.cpu_count() or 1)
    return Result(
        peer,
        devices,
        args.registers,
        period_ms,
        t1 - t0,
        delivered,
        c1 - c0,
        rss,
        busy_cores,
        load,
        latencies,
        written=written_cycles * devices * args.registers,
    )


# --------------------------------------------------------------------------- the peers


def stima_site(
    farm: Farm, broker: Broker, tls: TlsFiles, workdir: Path, registers: int, period_ms: float
) -> dict[str, Any]:
    return {
        "site": {
            "region": "bench",
            "substation_id": "SUB-B",
            "state_dir": str(workdir / "state"),
            "runtime_dir": str(workdir / "run"),
        },
        "uplink": {
            "broker_host": "127.0.0.1",
            "broker_port": broker.port,
            "transport": "tls",
            "ca_file": str(tls.ca_file),
            "cert_file": str(tls.client_cert),
            "key_file": str(tls.client_key),
            "integrity_period_s": 3600,
            "max_batch": 1000,
            "telemetry_format": "columns",
        },
        "ieds": [
            {
                "id": f"IED-{d:02d}",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": port,
                "poll_period_ms": int(period_ms),
                "timeout_ms": 1000,
                "retries": 1,
                "points": [{"id": f"D{d:02d}.R{i:03d}", "address": i, "type": "uint16"} for i in range(registers)],
            }
            for d, port in enumerate(farm.ports)
        ],
    }


def wait_status(runtime_dir: Path, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return dict(call(runtime_dir, "status"))
        except (DaemonNotRunning, OSError):
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited: {log.read_text()[-2000:]}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def baseline_tree(ref: str, workdir: Path) -> Path:
    """The project's files at git `ref`, beside the working tree, to run the daemon as it was
    (with this tree's compiled protection core): before and after measured in the same run."""
    tree = workdir / f"baseline-{ref.replace('/', '_')}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref], check=True, capture_output=True, timeout=120
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=120)
    for built in (ROOT / "native").glob("_stima_native*.so"):
        shutil.copy(built, tree / "native" / built.name)
    return tree


def parse_variant(text: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """`label:section.key=value,...` → the label and the site-file overrides (values as TOML)."""
    import tomllib

    label, _, assignments = text.partition(":")
    overrides: dict[str, dict[str, Any]] = {}
    for assignment in filter(None, assignments.split(",")):
        dotted, _, value = assignment.partition("=")
        section, _, key = dotted.partition(".")
        overrides.setdefault(section, {})[key] = tomllib.loads(f"v = {value}")["v"]
    return label, overrides


def run_stima(
    farm: Farm,
    broker: Broker,
    tls: TlsFiles,
    workdir: Path,
    args: argparse.Namespace,
    devices: int,
    period_ms: float,
    seconds: float,
    root: Path = ROOT,
    label: str = "stima",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix="stima-", dir=workdir))
    site = stima_site(farm, broker, tls, workdir, args.registers, period_ms)
    if root != ROOT:  # the daemon as it was knows one telemetry form only
        del site["uplink"]["telemetry_format"]
    for section, values in (overrides or {}).items():
        site.setdefault(section, {}).update(values)
    path = workdir / "site.toml"
    path.write_text(tomli_w.dumps(site))
    recorder = Recorder(broker, "stima/+/+/telemetry stima/+/+/birth")
    with (workdir / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.daemon", "--config", str(path), "--log-level", "WARNING"],
            stdout=log,
            stderr=log,
            cwd=root,
            env=dict(os.environ, PYTHONPATH=str(root)),
        )
    runtime_dir = Path(site["site"]["runtime_dir"])
    try:
        wait_status(runtime_dir, proc, workdir / "daemon.log")
        time.sleep(3.0)  # warm-up: connections up, the first integrity report sent
        s0, m0 = call(runtime_dir, "status"), time.monotonic()
        spy = None
        if args.py_spy and root == ROOT:
            spy = subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--threads",
                    "--format",
                    "raw",
                    "--output",
                    str(workdir / "profile.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        result = measure(label, lambda: [proc.pid], recorder, stima_pairs, farm, args, devices, period_ms, seconds)
        s1, m1 = call(runtime_dir, "status"), time.monotonic()
        if spy is not None:
            spy.wait(60)
            print_profile(workdir / "profile.txt", args.profile_top)
    finally:
        proc.terminate()
        proc.wait(30)
        recorder.stop()
    # the status calls bracket the window and the decoding of what arrived: rates over their own span
    to_image = (s1["updates_applied"] - s0["updates_applied"]) / (m1 - m0)
    not_good = s1["points"]["total"] - s1["points"]["good"]
    note = f"into the process image {to_image:,.0f} values/s"
    if "telemetry" in s1:  # changes the daemon saw (a poll between two farm writes sees none)
        reported = (s1["telemetry"]["changes_reported"] - s0["telemetry"]["changes_reported"]) / (m1 - m0)
        note += f"; reported {reported:,.0f}/s, of which delivered {result.delivered_per_s / max(reported, 1):.1%}"
    result.notes.append(f"{note}; spool depth at end {s1['uplink']['spool_depth']}; points not good at end {not_good}")
    return result


def print_profile(path: Path, top: int) -> None:
    """Where the daemon's time went, from py-spy's collapsed stacks: own time per function, and
    time spent inside the main stages of the path from registers to the broker."""
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    stages = {
        "pymodbus": "pymodbus/",
        "decode_block": "decode_block",
        "process image": "apply (gateway/points.py",
        "telemetry": "on_change (gateway/telemetry.py",
        "uplink publish": "publish_many",
        "paho + TLS": "paho/",
        "event loop": "base_events.py",
        "sqlite": "spool_append",
    }
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        if "idle" in stack.rsplit(";", 1)[-1] or stack.rsplit(";", 1)[-1].startswith(
            ("select ", "wait ", "_wait_for_tstate_lock", "epoll")
        ):
            continue
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + n
        for name, needle in stages.items():
            if needle in stack:
                within[name] = within.get(name, 0) + n
    if not total:
        print("  profile: no samples")
        return
    print(f"  profile of the daemon (py-spy, {total} busy samples):")
    print("    within: " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(within.items(), key=lambda kv: -kv[1])))
    for leaf, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {n / total:6.1%}  {leaf[:110]}")


def run_bare(
    farm: Farm,
    broker: Broker,
    tls: TlsFiles,
    workdir: Path,
    args: argparse.Namespace,
    devices: int,
    period_ms: float,
    seconds: float,
) -> Result:
    recorder = Recorder(broker, "bare/#")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "bench" / "bare_poller.py"),
            "--ports",
            ",".join(map(str, farm.ports)),
            "--registers",
            str(args.registers),
            "--period-ms",
            str(period_ms),
            "--broker-port",
            str(broker.port),
            "--ca",
            str(tls.ca_file),
            "--cert",
            str(tls.client_cert),
            "--key",
            str(tls.client_key),
            "--seconds",
            str(seconds + 10),
        ],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 20
        while recorder.seen == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(2.0)
        return measure("bare", lambda: [proc.pid], recorder, bare_pairs, farm, args, devices, period_ms, seconds)
    finally:
        proc.terminate()
        proc.wait(30)
        recorder.stop()


def thingsboard_executable() -> Path:
    """ThingsBoard IoT Gateway 3.8 in its own virtualenv, installed on first use."""
    venv = CACHE / "venv-thingsboard"
    exe = venv / "bin" / "thingsboard-gateway"
    if not exe.exists():
        print(f"installing ThingsBoard IoT Gateway into {venv} (once)", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *THINGSBOARD_PACKAGES], check=True, timeout=900)
    return exe


def thingsboard_configs(directory: Path, farm: Farm, broker_port: int, registers: int, period_ms: float) -> None:
    """The gateway's own configuration files: the Modbus connector only, one range read per device."""
    directory.mkdir(parents=True)
    (directory / "logs").mkdir()
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": broker_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 60, "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 8196,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60,
            "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": "benchlocaltoken"},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {
                "checkDeviceInactivity": False,
                "inactivityTimeoutSeconds": 300,
                "inactivityCheckPeriodSeconds": 10,
            },
            "rateLimits": "DEFAULT_TELEMETRY_RATE_LIMIT",
            "dpRateLimits": "DEFAULT_TELEMETRY_DP_RATE_LIMIT",
            "messagesRateLimits": "DEFAULT_MESSAGES_RATE_LIMIT",
            "deviceMessagesRateLimits": "DEFAULT_MESSAGES_RATE_LIMIT",
            "deviceRateLimits": "DEFAULT_TELEMETRY_RATE_LIMIT",
            "deviceDpRateLimits": "DEFAULT_TELEMETRY_DP_RATE_LIMIT",
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus Connector", "configuration": "modbus.json"}],
    }
    slaves = [
        {
            "host": "127.0.0.1",
            "port": port,
            "type": "tcp",
            "method": "socket",
            "unitId": 1,
            "deviceName": f"Bench Device {d:02d}",
            "deviceType": "default",
            "timeout": 35,
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": 3,
            "retryOnEmpty": True,
            "retryOnInvalid": True,
            "pollPeriod": int(period_ms),
            "connectAttemptTimeMs": 5000,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 300000,
            "attributes": [],
            "attributeUpdates": [],
            "rpc": [],
            "timeseries": [
                {
                    "tag": "hr_${address}",
                    "type": "16uint",
                    "functionCode": 3,
                    "objectsCount": 1,
                    "address": f"0-{registers - 1}",
                    "maxRegistersPerRequest": registers,
                }
            ],
        }
        for d, port in enumerate(farm.ports)
    ]
    console = {"class": "logging.StreamHandler", "formatter": "plain", "level": 0, "stream": "ext://sys.stdout"}
    logs = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"class": "logging.Formatter", "format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
        },
        "handlers": {"console": console},
        "loggers": {
            name: {"handlers": ["console"], "level": "INFO", "propagate": False}
            for name in ("database", "service", "connector", "converter", "tb_connection", "storage", "extension")
        },
        "root": {"level": "ERROR", "handlers": ["console"]},
    }
    for name, obj in (
        ("tb_gateway.json", gateway),
        ("modbus.json", {"master": {"slaves": slaves}}),
        ("logs.json", logs),
    ):
        (directory / name).write_text(json.dumps(obj, indent=2))


class SessionLimitsStandIn:
    """Answers the gateway's `getSessionLimits` RPC as a self-hosted ThingsBoard with the default
    tenant profile would (no limits): without an answer it sends no telemetry to a plain broker."""

    RESPONSE = {
        "maxPayloadSize": 65536,
        "maxInflightMessages": 100,
        "rateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
        "gatewayRateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
    }

    def __init__(self, broker: Broker) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-session-limits")
        self.client.on_connect = lambda c, *_: c.subscribe("v1/devices/me/rpc/request/+", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()

    def _on_message(self, client: Any, _u: Any, msg: Any) -> None:
        try:
            request = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(request, dict) and request.get("method") == "getSessionLimits":
            client.publish(
                f"v1/devices/me/rpc/response/{msg.topic.rsplit('/', 1)[-1]}", json.dumps(self.RESPONSE), qos=1
            )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_thingsboard(
    farm: Farm, workdir: Path, args: argparse.Namespace, devices: int, period_ms: float, seconds: float
) -> Result:
    exe = thingsboard_executable()
    run = Path(tempfile.mkdtemp(prefix="thingsboard-", dir=workdir))
    with run_mosquitto(run) as plain:
        shim = SessionLimitsStandIn(plain)
        recorder = Recorder(plain, "v1/gateway/#")
        config = run / "config"
        thingsboard_configs(config, farm, plain.port, args.registers, period_ms)
        env = dict(
            os.environ,
            TB_GW_CONFIG_DIR=f"{config}/",
            PYTHONUNBUFFERED="1",
            # its update check posts to an outside host: point it at a closed loopback port
            HTTPS_PROXY="http://127.0.0.1:9",
            https_proxy="http://127.0.0.1:9",
            HTTP_PROXY="http://127.0.0.1:9",
            http_proxy="http://127.0.0.1:9",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        with (run / "gateway.log").open("wb") as log:
            proc = subprocess.Popen([str(exe)], cwd=config, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + args.thingsboard_start_s
            while recorder.seen < 20 * devices and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
            if recorder.seen == 0:
                raise RuntimeError(f"ThingsBoard gateway sent nothing (log: {run / 'gateway.log'})")
            time.sleep(args.thingsboard_warmup_s)
            return measure(
                "thingsboard",
                lambda: process_tree(proc.pid),
                recorder,
                thingsboard_pairs,
                farm,
                args,
                devices,
                period_ms,
                seconds,
            )
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            recorder.stop()
            shim.stop()


# --------------------------------------------------------------------------- the runs


def same_workload(args: argparse.Namespace, workdir: Path, tls: TlsFiles) -> list[dict[str, Result]]:
    """Every peer on the bench workload, in alternating order round after round."""
    offered = args.devices * args.registers * 1000.0 / args.period_ms
    print(
        f"workload: {args.devices} IEDs x {args.registers} registers every {args.period_ms:.0f} ms = "
        f"{offered:,.0f} values/s offered; {args.seconds:.0f} s per window; stima and bare over TLS, QoS 1",
        flush=True,
    )
    rounds: list[dict[str, Result]] = []
    baseline = baseline_tree(args.baseline, workdir) if args.baseline else None
    variants = dict(parse_variant(text) for text in args.variant)
    farm = Farm(args.devices, args.registers, args.period_ms)
    try:
        with run_mosquitto(workdir, tls=tls, extra_config="set_tcp_nodelay true") as broker:
            for n in range(args.rounds):
                order = ["stima", "bare"] if n % 2 == 0 else ["bare", "stima"]
                if baseline is not None:
                    order.insert(1, f"stima@{args.baseline}")
                for text in args.variant:
                    order.insert(1, parse_variant(text)[0])
                if args.peer == "thingsboard":
                    order.append("thingsboard")
                print(f"round {n + 1}:", flush=True)
                results: dict[str, Result] = {}
                for peer in order:
                    if peer == "stima":
                        r = run_stima(farm, broker, tls, workdir, args, args.devices, args.period_ms, args.seconds)
                    elif baseline is not None and peer == f"stima@{args.baseline}":
                        r = run_stima(
                            farm,
                            broker,
                            tls,
                            workdir,
                            args,
                            args.devices,
                            args.period_ms,
                            args.seconds,
                            root=baseline,
                            label=peer,
                        )
                    elif peer == "bare":
                        r = run_bare(farm, broker, tls, workdir, args, args.devices, args.period_ms, args.seconds)
                    elif peer in variants:
                        r = run_stima(
                            farm,
                            broker,
                            tls,
                            workdir,
                            args,
                            args.devices,
                            args.period_ms,
                            args.seconds,
                            label=peer,
                            overrides=variants[peer],
                        )
                    else:
                        r = run_thingsboard(farm, workdir, args, args.devices, args.period_ms, args.seconds)
                    r.print()
                    results[peer] = r
                rounds.append(results)
    finally:
        farm.stop()
    return rounds


def scaling(args: argparse.Namespace, workdir: Path, tls: TlsFiles) -> list[tuple[Result, Result]]:
    """CPU per value of stima and the bare loop across IED counts and poll periods."""
    print(f"scaling ({args.registers} registers per IED, {args.scaling_seconds:.0f} s per window):", flush=True)
    rows = []
    with run_mosquitto(workdir, tls=tls, extra_config="set_tcp_nodelay true") as broker:
        for cell in args.scaling_grid.split(","):
            devices, period_ms = (float(x) for x in cell.split("x"))
            farm = Farm(int(devices), args.registers, period_ms)
            try:
                ours = run_stima(farm, broker, tls, workdir, args, int(devices), period_ms, args.scaling_seconds)
                bare = run_bare(farm, broker, tls, workdir, args, int(devices), period_ms, args.scaling_seconds)
            finally:
                farm.stop()
            print(
                f"  {int(devices):4d} IEDs every {period_ms:5.0f} ms ({ours.offered_per_s:8,.0f} values/s offered):",
                flush=True,
            )
            ours.print()
            bare.print()
            rows.append((ours, bare))
    return rows


def ratios(rounds: list[dict[str, Result]], rows: list[tuple[Result, Result]]) -> None:
    """The comparisons, last, and only between figures measured in this run."""
    print("ratios, CPU per delivered value, between peers measured in this run:")
    peers = [p for p in rounds[0] if p != "stima"] if rounds else []
    for peer in peers:
        per_round = [r["stima"].us_per_value / r[peer].us_per_value for r in rounds if peer in r]
        if not per_round:
            continue
        print(
            f"  stima / {peer:<12}: {statistics.median(per_round):5.2f}x"
            f"  (rounds: {', '.join(f'{x:.2f}' for x in per_round)})"
        )
    for r in rounds:
        print(
            "  delivered of what the farm wrote: "
            + ", ".join(f"{p} {x.delivered_share:.1%}" for p, x in r.items())
            + f"; stima change→broker p99 {pct(r['stima'].latencies_s, 0.99) * 1000:.1f} ms"
            f" (poll period {r['stima'].period_ms:.0f} ms)"
        )
    if rows:
        print(
            "  scaling (stima / bare CPU per value): "
            + ", ".join(f"{o.devices}x{o.period_ms:.0f}ms {o.us_per_value / b.us_per_value:.2f}" for o, b in rows)
        )
        full = [o for o, _ in rows if o.delivered_share >= 0.995 and o.written >= 0.95 * o.offered_per_s * o.seconds]
        if full:
            top = max(full, key=lambda o: o.offered_per_s)
            print(
                f"  highest load measured with full delivery: {top.offered_per_s:,.0f} values/s "
                f"({top.devices} IEDs every {top.period_ms:.0f} ms) at {top.cpu_share:.0%} of a core; "
                f"one core at that cost per value: about {1e6 / top.us_per_value:,.0f} values/s"
            )


def example_site_rss(args: argparse.Namespace, workdir: Path) -> None:
    """RSS of the daemon running the example site against the simulator."""
    from hil.rig import Rig, example_document

    with Rig(example_document(), workdir / "example", hil_args=("--no-ami",)) as rig:
        time.sleep(args.example_seconds)
        status = rig.daemon_call("status")
        assert rig.daemon is not None
        rss = rss_mib(rig.daemon.pid)
    good = status["points"]["good"]
    print(
        f"example site SUB-003 with the simulator: daemon RSS {rss:.1f} MiB "
        f"({status['points']['total']} points, {good} good, "
        f"{sum(1 for i in status['ieds'] if i['state'] == 'online')}/{len(status['ieds'])} IEDs online, "
        f"{status['agents']['meters']} meters)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured window")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every peer, in alternating order")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--period-ms", type=float, default=100.0)
    parser.add_argument("--peer", choices=["thingsboard"], help="also measure this peer (installed on first use)")
    parser.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also run the daemon as it is at this git ref (before/after in the same run)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:SECTION.KEY=VALUE,...",
        help="also run the daemon with these site-file settings, e.g. w20:uplink.batch_window_ms=20",
    )
    parser.add_argument("--thingsboard-start-s", type=float, default=120.0)
    parser.add_argument("--thingsboard-warmup-s", type=float, default=10.0)
    parser.add_argument("--scaling", action="store_true", help="also measure across IED counts and poll periods")
    parser.add_argument(
        "--scaling-grid", default="1x100,20x100,100x100,20x1000,20x20", help="IEDs x poll period in ms, comma-separated"
    )
    parser.add_argument("--scaling-seconds", type=float, default=8.0)
    parser.add_argument(
        "--py-spy", help="path to py-spy: profile the daemon during its window and print where the time goes"
    )
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--example-seconds", type=float, default=8.0)
    parser.add_argument(
        "--example",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the RSS of the example site with the simulator",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stima-bench-") as tmp:
        workdir = Path(tmp)
        tls = make_tls_files(workdir)
        rounds = same_workload(args, workdir, tls)
        rows = scaling(args, workdir, tls) if args.scaling else []
        if args.example:
            try:
                example_site_rss(args, workdir)
            except Exception as exc:  # the simulator may be unavailable on this machine
                print(f"example site RSS: not measured ({exc})")
        ratios(rounds, rows)


if __name__ == "__main__":
    main()
