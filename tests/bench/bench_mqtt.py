"""Benchmark of the uplink: values/s through telemetry → spool → TLS broker → a subscriber.

    .venv/bin/python tests/bench/bench_mqtt.py [--seconds 10] [--points 2000] [--period-ms 100]

Three runs against a real mosquitto with TLS client certificates:

1. offered load: `points` values changing every `period_ms` (20 devices × 100 registers every
   100 ms = 20,000 values/s, the workload of the open peer measured in docs), for `seconds`;
2. ceiling: values offered as fast as the uplink takes them;
3. backlog: the broker is down while 200,000 values are spooled, then comes back; drain rate.

The subscriber runs in its own process, so the CPU figures are the uplink's own (telemetry,
spool, paho's thread, TLS). Prints figures and ratios; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.contract.clock import SystemClock  # noqa: E402
from gateway.contract.settings import SiteIdentity, UplinkConfig  # noqa: E402
from gateway.contract.points import GOOD, Point, PointKind  # noqa: E402
from gateway.storage import Store  # noqa: E402
from gateway.telemetry import PointSpec, Telemetry  # noqa: E402
from protocols.mqtt import MqttUplink  # noqa: E402
from tests.support.broker import free_port, make_tls_files, run_mosquitto  # noqa: E402

SITE = SiteIdentity(region="bench", substation_id="SUB-B")
BASE = "stima/bench/SUB-B"
PEER_CPU_PER_1000_MS = 0.29 / 16_700 * 1000 * 1000  # ThingsBoard gateway: 29 % of a core at 16,700 values/s

SUBSCRIBER = textwrap.dedent(
    """
    import json, sys, threading, time
    import msgpack
    import paho.mqtt.client as mqtt
    base, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    values = 0
    messages = 0
    latencies = []
    done = threading.Event()
    ready = threading.Event()
    def on_message(c, u, m):
        global values, messages
        now_ms = time.time() * 1000.0
        if m.topic.endswith("/bench/stop"):
            done.set()
            return
        if not m.topic.endswith("/telemetry"):
            return
        p = msgpack.unpackb(m.payload, raw=False)
        messages += 1
        for s in p["metrics"]:
            values += 1
            if not p["historical"] and values % 7 == 0:
                latencies.append(now_ms - s["t"])
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(base + "/#", qos=1)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    ready.wait(10)
    print("ready", flush=True)
    done.wait(float(sys.argv[6]))
    latencies.sort()
    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None
    print(json.dumps({"values": values, "messages": messages, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                      "max_ms": latencies[-1] if latencies else None}), flush=True)
    c.disconnect()
    c.loop_stop()
    """
)


class Subscriber:
    def __init__(self, port: int, tls: Any, timeout_s: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SUBSCRIBER,
                BASE,
                str(port),
                str(tls.ca_file),
                str(tls.client_cert),
                str(tls.client_key),
                str(timeout_s),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"subscriber did not start: {line!r}")

    def result(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=300)
        return dict(json.loads(out.strip().splitlines()[-1]))


def cpu_s() -> float:
    """CPU time of this process, all threads (the event loop and paho's network thread)."""
    return time.process_time()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_uplink(tmp: Path, port: int, name: str, **overrides: Any) -> MqttUplink:
    cfg = UplinkConfig(
        broker_host="127.0.0.1",
        broker_port=port,
        transport="tls",
        ca_file=Path("tls/ca.crt"),
        cert_file=Path("tls/client.crt"),
        key_file=Path("tls/client.key"),
        **overrides,
    )
    return MqttUplink(
        cfg,
        SITE,
        Store(tmp / f"{name}.db"),
        SystemClock(),
        logging.getLogger("bench.uplink"),
        base_dir=tmp,
        backoff_min_s=0.05,
        backoff_max_s=0.5,
    )


async def wait(predicate: Any, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()


def percentiles_ms(samples_s: list[float]) -> str:
    xs = sorted(samples_s) or [0.0]
    return f"p50 {xs[len(xs) // 2] * 1e3:.2f} ms, p99 {xs[int(len(xs) * 0.99)] * 1e3:.2f} ms, max {xs[-1] * 1e3:.2f} ms"


def make_points(n: int) -> tuple[Telemetry, list[Point]]:
    tel = Telemetry(
        [PointSpec(f"IED{i // 100:02d}.r{i % 100:03d}", PointKind.ANALOG, 0.0) for i in range(n)],
        max_batch=500,
        integrity_period_s=3600,
    )
    points = [Point(spec_id, PointKind.ANALOG, quality=GOOD) for spec_id in tel.point_ids]
    return tel, points


async def offered_load(tmp: Path, port: int, tls: Any, seconds: float, n_points: int, period_ms: float) -> None:
    tel, points = make_points(n_points)
    up = make_uplink(tmp, port, "offered")
    sub = Subscriber(port, tls, seconds + 120)
    task = asyncio.create_task(up.run())
    assert await wait(lambda: up.status()["state"] == "connected", 10), up.status()
    period = period_ms / 1000.0
    window = 0.005
    cycles = int(seconds / period)
    loop = asyncio.get_running_loop()
    max_depth = 0
    publish_s: list[float] = []
    cpu0, t0 = cpu_s(), loop.time()
    next_cycle = t0
    value = 0.0
    for _ in range(cycles):
        value += 1.0
        now_wall = time.time()
        mono = loop.time()
        for p in points:  # a poll that changed every register
            p.value = value
            p.receive_time = now_wall
            tel.on_change(p, mono)
        next_cycle += period
        # the flush timer is armed by the first pending change (no wake-ups while idle)
        await asyncio.sleep(window)
        for suffix, payload in tel.flush(loop.time(), time.time()):
            t = time.perf_counter()
            up.publish(suffix, payload)  # what the caller (the event loop) waits for
            publish_s.append(time.perf_counter() - t)
        max_depth = max(max_depth, up.spool_depth)
        await asyncio.sleep(max(0.0, next_cycle - loop.time()))
    offered = cycles * n_points
    up.publish("bench/stop", {})
    assert await wait(lambda: up.status()["spool_depth"] == 0, 120), up.status()
    elapsed, cpu = loop.time() - t0, cpu_s() - cpu0

    res = sub.result()
    await up.close()
    await task
    rate = res["values"] / elapsed
    per_1000_ms = cpu / max(offered, 1) * 1000 * 1000
    print(f"offered load: {n_points} points every {period_ms:.0f} ms for {elapsed:.1f} s (TLS, QoS 1)")
    print(
        f"  values offered {offered:,}, delivered to the subscriber {res['values']:,} "
        f"({res['values'] / max(offered, 1):.1%}), {rate:,.0f} values/s in {res['messages']:,} messages"
    )
    print(
        f"  uplink CPU {cpu / elapsed:.1%} of one core; {per_1000_ms:.2f} ms CPU per 1,000 values "
        f"(open peer ≈ {PEER_CPU_PER_1000_MS:.1f} ms: {PEER_CPU_PER_1000_MS / max(per_1000_ms, 1e-9):.1f}× less)"
    )
    print(
        f"  change → subscriber latency p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
        f"max {res['max_ms']:.1f} ms (includes the {window * 1000:.0f} ms batch window)"
    )
    print(f"  time the caller waits in publish() (spool commit of ~27 kB): {percentiles_ms(publish_s)}")
    print(f"  spool depth max {max_depth}, peak RSS {rss_mib():.0f} MiB")


async def ceiling(tmp: Path, port: int, tls: Any, total_values: int) -> None:
    tel, points = make_points(2000)
    up = make_uplink(tmp, port, "ceiling")
    sub = Subscriber(port, tls, 300)
    task = asyncio.create_task(up.run())
    assert await wait(lambda: up.status()["state"] == "connected", 10), up.status()
    loop = asyncio.get_running_loop()
    cpu0, t0 = cpu_s(), loop.time()
    value = 0.0
    offered = 0
    while offered < total_values:
        value += 1.0
        now_wall = time.time()
        for p in points:
            p.value = value
            p.receive_time = now_wall
            tel.on_change(p, 0.0)
        offered += len(points)
        up.publish_many(tel.flush(0.0, now_wall))
        # keep at most a few thousand messages ahead of the broker, as a real poller would be
        while up.spool_depth > 4 * up.cfg.max_inflight:
            await asyncio.sleep(0.001)
    up.publish("bench/stop", {})
    assert await wait(lambda: up.status()["spool_depth"] == 0, 300), up.status()
    elapsed, cpu = loop.time() - t0, cpu_s() - cpu0
    res = sub.result()
    await up.close()
    await task
    print(f"ceiling: {offered:,} values offered as fast as taken, delivered {res['values']:,} in {elapsed:.1f} s")
    print(
        f"  {res['values'] / elapsed:,.0f} values/s, {res['messages'] / elapsed:,.0f} messages/s; "
        f"{cpu / offered * 1e6:.2f} ms CPU per 1,000 values"
    )


async def backlog(tmp: Path, tls: Any, total_values: int) -> None:
    port = free_port()
    tel, points = make_points(2000)
    up = make_uplink(tmp, port, "backlog")
    task = asyncio.create_task(up.run())  # the broker is down: it keeps retrying
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    offered = 0
    value = 0.0
    while offered < total_values:
        value += 1.0
        for p in points:
            p.value = value
            p.receive_time = time.time()
            tel.on_change(p, 0.0)
        offered += len(points)
        up.publish_many(tel.flush(0.0, time.time()))
    spool_s = loop.time() - t0
    depth = up.status()["spool_depth"]
    db_mib = sum(f.stat().st_size for f in tmp.glob("backlog.db*")) / 2**20
    with run_mosquitto(tmp / "backlog-broker", port, tls=tls, extra_config="") as _:
        sub = Subscriber(port, tls, 300)
        t1 = loop.time()
        up.publish("bench/stop", {})
        assert await wait(lambda: up.status()["spool_depth"] == 0, 300), up.status()
        drain_s = loop.time() - t1
        res = sub.result()
        await up.close()
        await task
    print(
        f"backlog: {offered:,} values spooled offline in {depth:,} messages in {spool_s:.2f} s "
        f"({offered / spool_s:,.0f} values/s into SQLite), spool file {db_mib:.1f} MiB"
    )
    print(
        f"  after the broker returned: {res['values']:,} values delivered in {drain_s:.1f} s "
        f"({res['values'] / drain_s:,.0f} values/s, all flagged historical), peak RSS {rss_mib():.0f} MiB"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--period-ms", type=float, default=100.0)
    parser.add_argument("--ceiling-values", type=int, default=400_000)
    parser.add_argument("--backlog-values", type=int, default=200_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as d:
        tmp = Path(d)
        tls = make_tls_files(tmp)
        (tmp / "backlog-broker").mkdir()
        print(f"machine: {os.cpu_count()} CPUs; mosquitto with TLS client certificates on 127.0.0.1")
        with run_mosquitto(tmp, tls=tls) as broker:
            await offered_load(tmp, broker.port, tls, args.seconds, args.points, args.period_ms)
            await ceiling(tmp, broker.port, tls, args.ceiling_values)
        await backlog(tmp, tls, args.backlog_values)


if __name__ == "__main__":
    asyncio.run(main())
