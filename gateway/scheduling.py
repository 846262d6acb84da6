"""The gateway's loops and their periods: what runs when, for one running configuration.

Every loop is an asyncio task named after its part (reload.py stops and hands over tasks by
these names); each step is guarded so that a failing step is logged and the loop goes on.

| task        | period                                                                 |
|-------------|------------------------------------------------------------------------|
| ied-<id>    | the adapter's own poll cycle (protocols/)                               |
| uplink      | the MQTT client's network loop                                          |
| telemetry   | woken by changes; batch window and integrity period of [uplink]         |
| protection  | `Periods.protection_step_s` (5 ms): timers between samples              |
| agents      | `Periods.agent_tick_s` (1 s); snapshot within 2 s of a change, 60 s idle |
| switching   | woken by positions, requests, its next deadline; `switching_idle_s` (1 s) |
| records     | gateway/recording.py                                                   |
| forecast    | [forecast] period_s                                                    |
| maintenance | [maintenance] evaluation_period_s, and requests as they come            |
| history     | each history bucket's end plus HISTORY_FLUSH_DELAY_S; pruning hourly     |
| ami         | the AMI feed's client                                                  |
| peak        | 1 s (0.2 s while a load-transfer exchange is under way)                 |

Time is read only from the gateway's injected clock; the waits are the event loop's, so a
loop whose time is virtual (tests/support/harness.py) runs an hour of them in a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.wiring import Gateway

log = logging.getLogger("stima.daemon")

PROTECTION_STEP_S = 0.005
AGENT_TICK_S = 1.0
SWITCHING_IDLE_S = 1.0
AGENT_SNAPSHOT_S = 60.0
AGENT_DIRTY_SNAPSHOT_S = 2.0
"""Agent state changes reach the state database within this (protection state: at once)."""
HISTORY_FLUSH_DELAY_S = 0.25
"""After a history bucket's end, wait this long for its last samples before writing it."""
HISTORY_PRUNE_PERIOD_S = 3600.0
HISTORY_WRITE_CHUNK = 200
"""History rows per transaction (written or pruned): a protection snapshot never waits long for
the store's lock (about a millisecond; see tests/bench/bench_history.py)."""
HISTORY_PRUNE_MAX_CHUNKS = 10_000


@dataclass(frozen=True, slots=True)
class Periods:
    """The fixed periods of the loops (the others come from the site file)."""

    protection_step_s: float = PROTECTION_STEP_S
    agent_tick_s: float = AGENT_TICK_S
    switching_idle_s: float = SWITCHING_IDLE_S
    """The switching loop's longest sleep when nothing wakes it and nothing falls due."""


async def start(gw: Gateway) -> None:
    """Start every loop of `gw` (adapters handed over by a reload are running already)."""
    tasks = gw._tasks

    def spawn(coro: Any, name: str) -> None:
        tasks.append(asyncio.create_task(coro, name=name))

    for ied_id, adapter in gw.adapters.items():
        if ied_id not in gw.running_adapters:
            spawn(adapter.run(), f"ied-{ied_id}")
    spawn(gw.uplink.run(), "uplink")
    spawn(telemetry_loop(gw), "telemetry")
    if gw.protection is not None:
        spawn(protection_loop(gw), "protection")
    spawn(agent_loop(gw), "agents")
    spawn(switching_loop(gw), "switching")
    spawn(gw.recording.run(), "records")
    if gw.site.forecast.enabled:
        spawn(forecast_loop(gw), "forecast")
    if gw.maintenance_service is not None:
        spawn(maintenance_loop(gw), "maintenance")
    if gw.history is not None:
        spawn(history_loop(gw), "history")
    if gw.iec104 is not None:
        await gw.iec104.start()
    if gw.ami is not None:
        spawn(gw.ami.run(), "ami")
    if gw.exchange is not None or gw.peak is not None:
        spawn(peak_loop(gw), "peak")


async def peak_loop(gw: Gateway) -> None:
    """The peak manager, once a second, and the load-transfer exchanges' timers (five times a
    second while an exchange is under way: a tie owner waits for its far side to go dead)."""
    last_peak = gw.clock.monotonic()
    while True:
        busy = gw.exchange is not None and gw.exchange.next_deadline() is not None
        await asyncio.sleep(0.2 if busy else 1.0)
        try:
            if gw.exchange is not None:
                gw.exchange.tick()
            if gw.peak is not None and gw.clock.monotonic() - last_peak >= 0.95:
                last_peak = gw.clock.monotonic()
                gw.peak.tick()
        except Exception:
            log.exception("peak step failed")


async def forecast_loop(gw: Gateway) -> None:
    """The substation's load forecast from the point history, once a period: to the substation
    agent (it acts on a forecast crossing of its high-load level) and on `…/forecast/<id>`."""
    from gateway.agents.forecast import ForecastSettings, forecast
    from gateway.agents.schema import SubstationAttributes

    cfg = gw.site.forecast
    settings = ForecastSettings(
        horizon_s=cfg.horizon_s,
        step_s=min(cfg.step_s, cfg.horizon_s),
        days=cfg.history_days,
        utc_offset_h=cfg.utc_offset_h,
        trend_window_s=cfg.trend_window_s,
        trend_fade_s=cfg.trend_fade_s,
    )
    subs = [
        (a.id, a.points.get("total_load_kw"), SubstationAttributes.model_validate(a.attributes))
        for a in gw.site.agents
        if a.type == "substation"
    ]
    while True:
        await asyncio.sleep(cfg.period_s)
        for sub_id, point, attrs in subs:
            if not point or point not in gw.image:
                continue
            try:
                now = gw.clock.wall()
                rows = await asyncio.to_thread(
                    gw.store.history, point, now - cfg.history_days * 86400.0, float("inf"), 200_000
                )
                history = [
                    (r["bucket_start"] + r["interval_s"] / 2.0, r["mean"]) for r in rows if r["mean"] is not None
                ]
                live = gw.image[point]
                if live.quality.good and isinstance(live.value, int | float):
                    history.append((now, float(live.value)))
                if len(history) < 5 or now - history[0][0] < cfg.trend_window_s / 2.0:
                    continue  # not enough history for a trend: no forecast rather than a wild one
                limit_kw = attrs.high_load_percent / 100.0 * attrs.rated_capacity * 1000.0
                made = forecast(history, now, limit_kw=limit_kw, settings=settings)
                gw.agents.runtime.on_forecast(sub_id, made.crossing_s, made.peak_kw, gw.clock.monotonic())
                if gw.peak is not None and sub_id == gw.peak.sub.id:
                    gw.peak.on_forecast(made)
                gw.publish(f"forecast/{sub_id}", {"time": now, "substation": sub_id, **made.to_dict()}, retain=True)
            except Exception:
                log.exception("load forecast failed", extra={"substation": sub_id})


async def switching_loop(gw: Gateway) -> None:
    """Check-backs, sequence steps, FLISR and load samples: woken by position changes and
    requests, and at the next deadline (once a second at least)."""
    wake = gw.switching_wake
    while True:
        due = gw.switching.next_deadline()
        idle_s = gw.periods.switching_idle_s
        delay = idle_s if due is None else min(idle_s, max(0.0, due - gw.clock.monotonic()))
        wake.clear()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
        try:
            gw.switching.tick()
        except Exception:
            log.exception("switching step failed")


async def maintenance_loop(gw: Gateway) -> None:
    """Health evaluations every evaluation_period_s (the first a minute after start, once the
    history has its first buckets), and the maintenance requests as they come."""
    period = gw.site.maintenance.evaluation_period_s
    next_evaluation = gw.clock.monotonic() + min(60.0, period)
    while True:
        delay = max(0.0, next_evaluation - gw.clock.monotonic())
        gw.maintenance_wake.clear()
        if not (gw.maintenance_service.pending or gw.maintenance_service.replans):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await gw.maintenance_wake.wait()
        try:
            if gw.clock.monotonic() >= next_evaluation:
                next_evaluation = gw.clock.monotonic() + period
                await gw.maintenance_evaluate()
            await gw.maintenance_requests()
        except Exception:
            gw.maintenance_service.stats.errors += 1
            log.exception("maintenance step failed")


async def history_loop(gw: Gateway) -> None:
    """Write the buckets that closed once per interval, off the event loop, in short transactions."""
    assert gw.history is not None
    hist, retention_s = gw.history, gw.site.history.retention_days * 86400.0
    last_prune = -math.inf
    while True:
        now = gw.clock.wall()
        await asyncio.sleep(hist.bucket_start(now) + hist.interval_s - now + HISTORY_FLUSH_DELAY_S)
        try:
            rows = hist.take_closed(gw.clock.wall())
            for i in range(0, len(rows), HISTORY_WRITE_CHUNK):  # the store's lock held a ms or two at a time
                await asyncio.to_thread(gw.store.append_history, rows[i : i + HISTORY_WRITE_CHUNK])
            if gw.clock.monotonic() - last_prune >= HISTORY_PRUNE_PERIOD_S:
                last_prune = gw.clock.monotonic()
                before = gw.clock.wall() - retention_s
                for _ in range(HISTORY_PRUNE_MAX_CHUNKS):
                    if (
                        await asyncio.to_thread(gw.store.prune_history, before, HISTORY_WRITE_CHUNK)
                        < HISTORY_WRITE_CHUNK
                    ):
                        break
        except Exception:
            log.exception("history flush failed")


async def protection_loop(gw: Gateway) -> None:
    """Advance protection timers (reclose dead times, 50BF, reset) between samples."""
    assert gw.protection is not None
    while True:
        await asyncio.sleep(gw.periods.protection_step_s)
        try:
            gw.protection.step(gw.clock.monotonic())
        except Exception:
            log.exception("protection step failed")


async def agent_loop(gw: Gateway) -> None:
    last_snapshot = gw.clock.monotonic()
    while True:
        await asyncio.sleep(gw.periods.agent_tick_s)
        try:
            gw.agents.tick()
            since = gw.clock.monotonic() - last_snapshot
            if (gw.agents.dirty and since >= AGENT_DIRTY_SNAPSHOT_S) or since > AGENT_SNAPSHOT_S:
                gw.agents.snapshot()
                last_snapshot = gw.clock.monotonic()
        except Exception:
            log.exception("agent step failed")


async def telemetry_loop(gw: Gateway) -> None:
    """Flush report-by-exception batches and integrity reports; asleep while nothing changes."""
    window = gw.site.uplink.batch_window_ms / 1000.0
    wake = gw.telemetry_wake
    gw.flush_telemetry()  # schedules the first integrity report
    while True:
        due = gw.telemetry.next_flush_at(window)
        delay = None if due is None else due - gw.clock.monotonic()
        if delay is None or delay > 0:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
            continue
        gw.flush_telemetry()
