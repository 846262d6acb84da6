"""Soak: 24 hours of simulated time with 100,000 meters, faults, reconnects and reloads."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from gateway.agents.runtime import AgentRuntime, restore_from_store, save_to_store
from gateway.contract.clock import SimClock
from gateway.config import load
from gateway.contract.settings import SiteIdentity, UplinkConfig
from gateway.history import HistoryAggregator
from gateway.memory import after_reload, freeze_long_lived
from gateway.protection.engine import BreakerCommand, ProtectionEngine, ProtectionEvent
from gateway.storage import Store
from hil.broker import Broker, free_port, make_tls_files
from protocols.mqtt import MqttUplink
from tests.reliability.common import Report, part_main
from tests.reliability.part_broker import Relay

TITLE = "Soak: 24 h simulated, 100,000 meters"
BUDGET_S = 1500
SIM_S = 24 * 3600
WARM_S = 2 * 3600
"""When the baseline is taken: after one of each (fault, link cut and backfill, reload)."""
METERS = 100_000
METHOD = f"""
The gateway's deciding core in simulated time (`SimClock`), with its real storage and uplink:
the example site's agents plus {METERS:,} smart meters in 40 groups (`AgentRuntime`), the
protection engine on the C core with every scheme of the site, point history, the SQLite state
database (WAL), and the MQTT uplink with its spool to a real mosquitto through a relay. Every
simulated second the infrastructure agents step, protection is evaluated with the feeders'
currents and history takes every bound point; every 15 minutes an AMI batch for all meters
arrives; agents' snapshots are saved every minute, closed history buckets written every minute
and telemetry published every 10 s. Every hour a fault on LINE-045 trips CB-045 through the
engine (the breaker opens, recloses after its dead time); every 2 hours the broker link is cut
for 10 simulated minutes (reconnect, backfill); every 6 hours a reload builds new agents and a
new protection engine that take over from the old ones, as SIGHUP does, and the old ones are
given back as the daemon gives them back (`gateway.memory`: unfreeze, collect, freeze the new
configuration, `malloc_trim`). RSS, open file
descriptors, the database's size and row counts are taken after two simulated hours (warm: one
fault, one link cut with its backfill and one reload behind it) and at the end. Goals: RSS growth ≤ 5 % from warm to end, no descriptor growth, the spool
empty once drained, the stores within what their retention allows. The adapters' I/O loops (the
polling itself) are not in this loop: they hold no state that grows with time besides what is
measured here, and they run for real in the other parts.
"""


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _socket_kinds() -> dict[str, str]:
    """Socket inode → "unix" or "tcp <local port>-><remote port>" (from /proc/net)."""
    kinds: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 7:
                kinds[fields[6]] = "unix"
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) >= 10:
                    local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
                    kinds[fields[9]] = f"tcp {local}->{remote}"
    return kinds


def _fd_targets() -> list[str]:
    """What each open descriptor is (a file's path, a socket's kind and ports, pipe:[inode]), to
    name growth."""
    kinds = _socket_kinds()
    out = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                target = f"socket:[{kinds.get(target[8:-1], 'other')}]"
            out.append(target)
    return out


def _kinds(targets: list[str]) -> Counter[str]:
    return Counter(t.split(":")[0] if ":[" in t else t for t in targets)


def _db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def _rows(store: Store) -> dict[str, int]:
    with store._lock:
        return {
            t: int(store._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("events", "spool", "history", "snapshots", "command_nonces")
        }


async def _soak(report: Report, workdir: Path, quick: bool) -> None:
    base = load(Path(__file__).resolve().parents[2] / "deploy" / "examples" / "sub-003.toml")
    groups = [
        {
            "id": f"MTR-GRP-{i:03d}",
            "prefix": f"MTR-{i:03d}",
            "count": METERS // 40,
            "connected_transformer": "XFMR-101" if i % 2 else "XFMR-102",
        }
        for i in range(40)
    ]
    site = base.model_copy(update={"meter_groups": [type(base.meter_groups[0]).model_validate(g) for g in groups]})
    sim_s = 4 * 3600 if quick else SIM_S
    clock = SimClock(start_monotonic=10.0)
    tls = make_tls_files(workdir)
    (workdir / "broker").mkdir(exist_ok=True)
    broker_port = free_port()
    broker = Broker(workdir / "broker", broker_port, tls)
    broker.start()
    relay = Relay(broker_port)
    await relay.start()
    for old in workdir.glob("stima.db*"):  # a fresh database: a previous run's rows would count as growth
        old.unlink()
    store = Store(workdir / "stima.db")
    cfg = UplinkConfig(
        broker_host="127.0.0.1",
        broker_port=relay.port,
        transport="tls",
        ca_file=str(tls.ca_file),
        cert_file=str(tls.client_cert),
        key_file=str(tls.client_key),
    )
    uplink = MqttUplink(
        cfg,
        SiteIdentity(region="rel", substation_id="SUB-003"),
        store,
        clock,
        logging.getLogger("soak.uplink"),
        base_dir=workdir,
        backoff_min_s=0.05,
        backoff_max_s=0.5,
    )
    uplink_task = asyncio.create_task(uplink.run())
    runtime = AgentRuntime(site, now=clock.monotonic())
    engine = ProtectionEngine(site.protection)
    history = HistoryAggregator(60.0)
    rng = np.random.default_rng(4)
    ids = runtime.fleet.ids
    n = len(ids)
    schemes = {s.breaker: s for s in site.protection}
    normal_a = {b: 180.0 + 20 * k for k, b in enumerate(schemes)}
    currents = dict(normal_a)
    closed = {b: True for b in schemes}
    counts = {"trips": 0, "recloses": 0, "reloads": 0, "cuts": 0, "ami_batches": 0, "events": 0, "commands": 0}
    rss_by_h: list[float] = []
    reload_s: list[int] = []
    warm: dict[str, Any] = {}
    fault_until = -1.0
    freeze_long_lived()  # as the daemon does once a configuration has started

    def samples(now: float) -> list[Any]:
        actions: list[Any] = []
        for b, scheme in schemes.items():
            amps = currents[b] if closed[b] else 0.0
            for ph in ("ia", "ib", "ic"):
                actions += engine.on_sample(scheme.point(ph), amps, True, now)
                history.add(scheme.point(ph), amps, True, clock.wall())
            actions += engine.on_sample(scheme.point("closed"), closed[b], True, now)
        return actions

    def carry_out(actions: list[Any], now: float) -> None:
        rows = []
        for a in actions:
            if isinstance(a, BreakerCommand):
                counts["commands"] += 1
                closed[a.breaker] = a.reason in ("reclose", "close")  # the breaker does as told
            elif isinstance(a, ProtectionEvent):
                counts["events"] += 1
                if a.kind == "trip":
                    counts["trips"] += 1
                elif a.kind == "reclose":
                    counts["recloses"] += 1
                rows.append((clock.wall(), a.breaker, f"protection.{a.kind}", {"element": a.element}))
                for out in runtime.on_protection_event(a.kind, a.breaker, a.element, a.phase, a.current_a, now):
                    rows.append((clock.wall(), getattr(out, "agent_id", "?"), type(out).__name__, {}))
        if rows:
            store.append_events(rows)
            uplink.publish_many([("events", {"source": r[1], "kind": r[2]}) for r in rows])

    t_real0 = time.monotonic()
    step = 1.0
    while clock.monotonic() < sim_s:
        clock.advance(step)
        now, wall = clock.monotonic(), clock.wall()
        sec = int(now)
        # an hourly fault on LINE-045, cleared after 0.3 s (the breaker opens well before)
        if sec % 3600 == 1800:
            currents["CB-045"] = 9000.0
            fault_until = now + 0.3
            for _ in range(30):  # the fault at 10 ms resolution
                clock.advance(0.01)
                carry_out(samples(clock.monotonic()), clock.monotonic())
                if not closed["CB-045"]:
                    break
        if fault_until > 0 and now >= fault_until:
            currents["CB-045"] = normal_a["CB-045"]
            fault_until = -1.0
        carry_out(samples(now), now)
        carry_out(engine.step(now), now)
        actions = runtime.tick(now, wall=wall)
        if actions:
            store.append_events(
                [
                    (wall, getattr(a, "agent_id", getattr(a, "group_id", "?")), type(a).__name__, {})
                    for a in actions[:200]
                ]
            )
        if sec % 900 == 0:
            runtime.ingest_meter_batch(
                ids,
                {
                    "voltage_v": rng.normal(230, 4, n).astype(np.float32),
                    "demand_kw": rng.uniform(0.2, 4, n).astype(np.float32),
                    "energy_kwh": rng.uniform(0, 1e4, n),
                },
                now,
            )
            runtime.fleet.evaluate(now)
            counts["ami_batches"] += 1
        if sec % 10 == 0:
            uplink.publish("telemetry", {"values": [{"p": f"{b}.ia", "v": currents[b]} for b in schemes]})
        if sec % 60 == 0:
            save_to_store(store, runtime, wall)
            store.save_snapshot("protection", engine.snapshot(), wall)
            store.append_history(history.take_closed(wall))
            store.prune_history(wall - site.history.retention_days * 86400.0)
            await asyncio.sleep(0)  # the uplink's loop
        if sec % 7200 == 3600:
            relay.cut()
            counts["cuts"] += 1
        if sec % 7200 == 4200:
            relay.restore()
        if sec % (6 * 3600) == 5400:
            # a reload: new agents restored from the state database, a new engine taking over
            save_to_store(store, runtime, wall)
            fresh = AgentRuntime(site, now=now)
            restore_from_store(store, fresh)
            runtime = fresh
            new_engine = ProtectionEngine(site.protection)
            new_engine.take_over(engine)
            engine = new_engine
            del fresh, new_engine
            after_reload()  # as the daemon does once the old configuration is dropped
            counts["reloads"] += 1
            reload_s.append(sec)
        if sec == WARM_S:
            gc.collect()
            await asyncio.sleep(0.5)
            warm = {
                "rss_mb": _rss_mb(),
                "fds": _fds(),
                "fd_targets": _fd_targets(),
                "db_bytes": _db_bytes(store.path),
                "rows": _rows(store),
                "real_s": time.monotonic() - t_real0,
            }
            print(f"warm at {WARM_S // 3600} h simulated: {warm}", flush=True)
        if sec % 3600 == 0:
            rss_by_h.append(_rss_mb())
            print(
                f"{sec // 3600} h simulated, {time.monotonic() - t_real0:.0f} s real, RSS {_rss_mb():.0f} MB, {counts}",
                flush=True,
            )
            await asyncio.sleep(0)
    real_s = time.monotonic() - t_real0
    relay.restore()
    end_wait = time.monotonic() + 120
    while (uplink.status()["spool_depth"] or uplink.status()["inflight"]) and time.monotonic() < end_wait:
        await asyncio.sleep(0.1)
    gc.collect()
    end = {
        "rss_mb": _rss_mb(),
        "fds": _fds(),
        "fd_targets": _fd_targets(),
        "db_bytes": _db_bytes(store.path),
        "rows": _rows(store),
    }
    await uplink.close()
    uplink_task.cancel()
    with contextlib.suppress(BaseException):
        await uplink_task
    await relay.close()
    broker.stop()

    growth = (end["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"] * 100.0
    report.check(
        "simulated time, wall time",
        f"{sim_s / 3600:.0f} h in {real_s / 60:.1f} min ({sim_s / real_s:,.0f}× real time)",
        "well under an hour",
        real_s < 3600,
    )
    report.check(
        "meters, faults (trips / recloses), reconnects, reloads, AMI batches",
        f"{n:,}, {counts['trips']} / {counts['recloses']}, {counts['cuts']}, {counts['reloads']}, "
        f"{counts['ami_batches']}",
        "a trip and a reclose every hour",
        counts["trips"] >= sim_s // 3600 - 1 and counts["recloses"] >= sim_s // 3600 - 1,
    )
    report.check(
        "RSS at 2 h → end",
        f"{warm['rss_mb']:.0f} MB → {end['rss_mb']:.0f} MB ({growth:+.1f} %)",
        "≤ +5 %",
        growth <= 5.0,
    )
    report.row(
        "RSS at each simulated hour (MB); reloads at",
        f"{' '.join(f'{v:.0f}' for v in rss_by_h)}; reloads at {', '.join(f'{t / 3600:.1f} h' for t in reload_s)}",
    )
    last_reload_h = int(reload_s[-1] // 3600) + 1 if reload_s else 0
    if reload_s and last_reload_h < len(rss_by_h):
        since = rss_by_h[last_reload_h - 1]
        report.row(
            f"RSS after the last reload ({last_reload_h} h) → end",
            f"{since:.0f} MB → {end['rss_mb']:.0f} MB ({(end['rss_mb'] - since) / since * 100:+.1f} %)",
        )
    report.check(
        "open file descriptors at 2 h → end", f"{warm['fds']} → {end['fds']}", "no growth", end["fds"] <= warm["fds"]
    )
    if end["fds"] != warm["fds"]:
        more, fewer = (
            _kinds(end["fd_targets"]) - _kinds(warm["fd_targets"]),
            _kinds(warm["fd_targets"]) - _kinds(end["fd_targets"]),
        )
        report.note(
            f"Descriptors at the end and not at 2 h: {dict(more) or 'none'}; at 2 h and not at the end: "
            f"{dict(fewer) or 'none'} (sockets are the uplink's and the relay's connections, which the "
            "link cuts close and open again)."
        )
    report.check("spool rows at the end (after the backfill)", end["rows"]["spool"], "0", end["rows"]["spool"] == 0)
    per_day = len(history.take_all()) or 0
    bound = end["rows"]["history"]
    report.row("state database at 2 h → end", f"{warm['db_bytes'] / 1e6:.1f} MB → {end['db_bytes'] / 1e6:.1f} MB")
    report.row("rows at 2 h → end", f"{warm['rows']} → {end['rows']}")
    points = len(schemes) * 3
    expected_hist = points * int(sim_s / 60)
    report.check(
        "history rows",
        f"{bound:,} for {points} points",
        f"≤ points × buckets in the retention "
        f"({site.history.retention_days:g} days): {points * int(site.history.retention_days * 1440):,}",
        bound <= points * int(site.history.retention_days * 1440) + points,
    )
    report.note(
        f"History keeps one bucket per point per minute for `retention_days` ({site.history.retention_days:g} "
        f"days here); at this run's {bound / max(1, expected_hist) * 100:.0f} % of a day's buckets it grows "
        "linearly until the retention is reached, then pruning holds it. The event log is kept without a "
        f"time limit: {end['rows']['events'] - warm['rows']['events']:,} rows in 22 simulated hours "
        f"({(end['db_bytes'] - warm['db_bytes']) / 1e6:.1f} MB of database growth with history)."
    )
    _ = per_day
    report.headline = (
        f"{sim_s / 3600:.0f} h in {real_s / 60:.0f} min: RSS {growth:+.1f} %, fds {warm['fds']}→"
        f"{end['fds']}, {counts['trips']} faults, {counts['cuts']} link cuts, {counts['reloads']} reloads"
    )
    report.data = {"warm": warm, "end": end, "counts": counts, "rss_by_h": rss_by_h, "reload_s": reload_s}


def run(report: Report, workdir: Path, quick: bool) -> None:
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_soak(report, workdir, quick))


if __name__ == "__main__":
    part_main("soak", TITLE, run)
