"""Gateway throughput and latency: 20 Modbus TCP IEDs × 100 registers polled every 100 ms.

Every register changes at every poll period (tests/bench/modbus_farm.py, its own process), so
20,000 values/s are offered. The real daemon polls them and uplinks to a real mosquitto over
TLS; a subscriber counts what arrives. Printed: values/s into the process image and onto the
broker, the daemon's CPU as a share of one core, register change → broker latency (p50/p99/
max), and the daemon's RSS. Then the RSS of the daemon on the example site with the simulator.
Figures only; nothing is asserted about speed.

    python tests/bench/bench_gateway.py [--seconds 20] [--devices 20] [--registers 100] [--period-ms 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.control import DaemonNotRunning, call  # noqa: E402
from tests.bench.modbus_farm import Farm  # noqa: E402
from tests.support.broker import Subscriber, make_tls_files, run_mosquitto  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def run_daemon(site: dict[str, Any], workdir: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    path = workdir / f"{name}.toml"
    path.write_text(tomli_w.dumps(site))
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "--config", str(path), "--log-level", "WARNING"],
                            stdout=log, stderr=log, cwd=ROOT)
    return proc, Path(site["site"]["runtime_dir"])


def wait_status(runtime_dir: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return dict(call(runtime_dir, "status"))
        except (DaemonNotRunning, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def throughput(args: argparse.Namespace, workdir: Path) -> None:
    tls = make_tls_files(workdir)
    farm = Farm(args.devices, args.registers, args.period_ms)
    with run_mosquitto(workdir, tls=tls, extra_config="set_tcp_nodelay true" if args.nodelay else "") as broker:
        arrivals: list[tuple[float, list[dict[str, Any]]]] = []
        lock = threading.Lock()
        sub = Subscriber(broker, "stima/+/+/telemetry")

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            import msgpack

            payload = msgpack.unpackb(msg.payload, raw=False)
            with lock:
                arrivals.append((time.time(), payload.get("metrics", [])))

        sub.client.on_message = on_message
        sub.start()
        site = {
            "site": {"region": "bench", "substation_id": "SUB-B", "state_dir": str(workdir / "state"),
                     "runtime_dir": str(workdir / "run")},
            "uplink": {"broker_host": "127.0.0.1", "broker_port": broker.port, "transport": "tls",
                       "ca_file": str(tls.ca_file), "cert_file": str(tls.client_cert),
                       "key_file": str(tls.client_key), "integrity_period_s": 3600, "max_batch": 1000},
            "ieds": [
                {"id": f"IED-{d:02d}", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port,
                 "poll_period_ms": int(args.period_ms), "timeout_ms": 1000, "retries": 1,
                 "points": [{"id": f"D{d:02d}.R{i:03d}", "address": i, "type": "uint16"} for i in range(args.registers)]}
                for d, port in enumerate(farm.ports)
            ],
        }
        daemon, runtime_dir = run_daemon(site, workdir, "bench-site")
        try:
            wait_status(runtime_dir)
            time.sleep(3.0)  # warm-up: connections up, first integrity done
            s0 = call(runtime_dir, "status")
            c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            with lock:
                arrivals.clear()
            time.sleep(args.seconds)
            s1 = call(runtime_dir, "status")
            c1, t1 = cpu_seconds(daemon.pid), time.monotonic()
            rss = rss_mib(daemon.pid)
            with lock:
                window = list(arrivals)
        finally:
            daemon.terminate()
            daemon.wait(30)
            sub.stop()
            farm.stop()
    elapsed = t1 - t0
    offered = args.devices * args.registers * 1000.0 / args.period_ms
    to_image = (s1["updates_applied"] - s0["updates_applied"]) / elapsed
    values = [m for _, batch in window for m in batch]
    invalid = sum(1 for m in values if m.get("q") != "good")
    to_broker = len(values) / elapsed
    latencies, to_decode, to_broker_from_decode = [], [], []
    for arrived, batch in window:
        for m in batch:
            if m.get("v") is None:
                continue
            register = int(m["id"][-3:])
            k = (int(m["v"]) - register) % 65536
            written = farm.cycle_time.get(k)
            if written is not None:
                latencies.append(arrived - written)
                if m.get("t") is not None:
                    to_decode.append(m["t"] / 1000.0 - written)
                    to_broker_from_decode.append(arrived - m["t"] / 1000.0)
    cpu_share = (c1 - c0) / elapsed
    print(f"workload: {args.devices} IEDs x {args.registers} registers every {args.period_ms:.0f} ms "
          f"= {offered:,.0f} values/s offered; window {elapsed:.1f} s; TLS uplink, QoS 1")
    print(f"  values/s into the process image : {to_image:10,.0f}  ({to_image / offered:6.1%} of offered)")
    print(f"  values/s delivered to the broker: {to_broker:10,.0f}  ({to_broker / offered:6.1%} of offered)")
    print(f"  daemon CPU                       : {cpu_share:10.1%} of one core"
          f"  ({cpu_share * 1e6 / max(to_broker, 1):.1f} µs CPU per delivered value)")
    print(f"  register change -> broker latency: p50 {pct(latencies, 0.5) * 1000:7.1f} ms   "
          f"p99 {pct(latencies, 0.99) * 1000:7.1f} ms   max {max(latencies, default=float('nan')) * 1000:7.1f} ms"
          f"   (poll period {args.period_ms:.0f} ms; n={len(latencies):,})")
    print(f"     of which change -> decoded   : p50 {pct(to_decode, 0.5) * 1000:7.1f} ms   "
          f"p99 {pct(to_decode, 0.99) * 1000:7.1f} ms")
    print(f"     of which decoded -> broker   : p50 {pct(to_broker_from_decode, 0.5) * 1000:7.1f} ms   "
          f"p99 {pct(to_broker_from_decode, 0.99) * 1000:7.1f} ms")
    print(f"  daemon RSS under this load       : {rss:10.1f} MiB")
    print(f"  samples not good in the window   : {invalid:10,d}")
    print(f"  spool depth at end of window     : {s1['uplink']['spool_depth']:10d}")
    tb_cpu, tb_delivered = 0.29, 16_700.0
    print(f"  vs ThingsBoard gateway 3.8.5 on the same workload (notes/anchors.md): delivered "
          f"{to_broker / tb_delivered:.2f}x, CPU per value {(cpu_share / max(to_broker, 1)) / (tb_cpu / tb_delivered):.2f}x")


def example_site_rss(args: argparse.Namespace, workdir: Path) -> None:
    """RSS of the daemon running the example site against the simulator."""
    from hil.rig import Rig, example_document

    with Rig(example_document(), workdir / "example", hil_args=("--no-ami",)) as rig:
        time.sleep(args.example_seconds)
        status = rig.daemon_call("status")
        assert rig.daemon is not None
        rss = rss_mib(rig.daemon.pid)
    good = status["points"]["good"]
    print(f"example site SUB-003 with the simulator: daemon RSS {rss:.1f} MiB "
          f"({status['points']['total']} points, {good} good, "
          f"{sum(1 for i in status['ieds'] if i['state'] == 'online')}/{len(status['ieds'])} IEDs online, "
          f"{status['agents']['meters']} meters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--period-ms", type=float, default=100.0)
    parser.add_argument("--example-seconds", type=float, default=8.0)
    parser.add_argument("--nodelay", action=argparse.BooleanOptionalAction, default=True,
                        help="broker sends without Nagle's delay (mosquitto set_tcp_nodelay), as a SCADA broker should")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stima-bench-") as tmp:
        throughput(args, Path(tmp))
        try:
            example_site_rss(args, Path(tmp))
        except Exception as exc:  # the simulator may be unavailable on this machine
            print(f"example site RSS: not measured ({exc})")


if __name__ == "__main__":
    main()
