"""Reloading the site file without a gap in protection.

On SIGHUP the daemon (`gateway.server.Server`) replaces one running `Gateway` by another, in
three steps, so that an error at any step leaves the running configuration untouched and
protection keeps evaluating throughout:

1. `build()`: load and check the site file, construct the whole new gateway (process image,
   uplink with its TLS files read, protection engine, agents, commands, history, every IED
   adapter) while the old one runs. Nothing here opens a socket or a serial port; any
   exception refuses the reload.
2. `retire()`: stop the parts of the old gateway that the new one replaces (adapters of IEDs
   whose settings changed, AMI, agents, telemetry, the uplink, which drains within its
   deadline). The old protection, and the adapters of unchanged IEDs, keep running meanwhile;
   protection events of that window are kept and published by the new uplink.
3. `hand_over()`: in one go, without yielding to the event loop: stop the old protection
   clock, move the unchanged IEDs' adapters (link, queued writes and all) to the new gateway,
   carry the protection engine's live state over for every breaker whose scheme is unchanged
   (`ProtectionEngine.take_over`) and re-read the agents' state from the store; then the
   daemon re-reads the uplink's spool position (`MqttUplink.resync_spool`) and starts the new
   gateway. SBO selects pending at the reload are not carried over (the operator selects again).

The longest interval between two protection evaluations from the reload's start until
GAP_WINDOW_S after the hand-over is reported in `status` as `last_reload.protection_longest_gap_s`;
tests/bench/bench_reload.py measures it on a rig.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.contract.clock import Clock
from gateway.config import SiteConfig
from gateway.site import load_site
from gateway.storage import Store

if TYPE_CHECKING:
    from gateway.wiring import Gateway

log = logging.getLogger("stima.reload")

RETIRE_DEADLINE_S = 10.0
GAP_WINDOW_S = 5.0


@dataclass(slots=True)
class ReloadReport:
    """What one reload did (the `last_reload` of the daemon's status)."""

    ok: bool = False
    stage: str = "load"
    error: str = ""
    started_wall: float = 0.0
    duration_s: float | None = None
    ieds_kept_running: list[str] = field(default_factory=list)
    ieds_restarted: list[str] = field(default_factory=list)
    breakers_handed_over: list[str] = field(default_factory=list)
    breakers_restored: list[str] = field(default_factory=list)
    protection_events_relayed: int = 0
    build_s: float | None = None
    """Time the event loop spent building the new configuration (the old one evaluates between samples only)."""
    hand_over_s: float | None = None
    """Time from the old protection's clock stopping to the new gateway started (no evaluation then)."""
    protection_longest_gap_s: float | None = None
    """Longest interval between two protection evaluations from the reload's start until
    GAP_WINDOW_S after the new configuration started (None until then)."""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def build(config_path: Path, *, clock: Clock, store: Store, gateway_class: type[Gateway]) -> Gateway:
    """The new configuration, built and checked completely, nothing started.

    Raises ConfigError for an invalid file, and any other exception a constructor raises for
    a file that validates but cannot be built.
    """
    site: SiteConfig = load_site(config_path)
    new = gateway_class(site, base_dir=config_path.parent, clock=clock, store=store)
    new.uplink.check()
    new.build_adapters()
    return new


def unchanged_ieds(old: Gateway, new: Gateway) -> set[str]:
    """IEDs whose settings (and so points, addresses, links) are identical in both configurations."""
    before = {ied.id: ied for ied in old.site.ieds if ied.enabled}
    return {ied.id for ied in new.site.ieds if ied.enabled and before.get(ied.id) == ied and ied.id in old.adapters}


async def retire(
    old: Gateway, keep: set[str], relay: list[tuple[str, dict[str, Any]]], deadline_s: float = RETIRE_DEADLINE_S
) -> None:
    """Stop what the new configuration replaces; leave protection and the adapters in `keep` running.

    Protection messages published from here on are appended to `relay` (the old uplink is
    closing); the event log and protection snapshots are still written as they happen.
    """
    end = time.monotonic() + deadline_s
    if old.protection is not None:
        old.protection._publish = lambda suffix, payload, retain=False: relay.append((suffix, payload))
        old.protection._publish_many = relay.extend
    running = {f"ied-{i}" for i in keep} | {"protection"}
    for task in old._tasks:  # agents stop deciding first: their writes would go to closing links
        if task.get_name() in ("agents", "telemetry", "history"):
            task.cancel()
    with contextlib.suppress(Exception):
        old.agents.snapshot()
    if old.ami is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.ami.close(), 2.0)
    if old.iec104 is not None:  # the new outstation listens on the same port
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.iec104.close(), max(end - time.monotonic(), 0.1))
    for ied_id, adapter in old.adapters.items():
        if ied_id not in keep:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(adapter.close(), max(end - time.monotonic(), 0.1))
    with contextlib.suppress(Exception):
        old.uplink.publish_many(old.telemetry.flush(old.clock.monotonic(), old.clock.wall()))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(old.uplink.close(), max(end - time.monotonic(), 0.1))
    ending = [t for t in old._tasks if t.get_name() not in running]
    for task in ending:
        task.cancel()
    await asyncio.gather(*ending, return_exceptions=True)
    old._tasks = [t for t in old._tasks if t.get_name() in running]
    if old.history is not None:
        try:
            old.store.append_history(old.history.take_all())
        except Exception:
            log.exception("history flush at reload failed")


def hand_over(old: Gateway, new: Gateway, keep: set[str], report: ReloadReport) -> None:
    """Move running adapters and live protection state from `old` to `new` (no await: no gap)."""
    for task in old._tasks:
        if task.get_name() == "protection":
            task.cancel()
    old._tasks = [t for t in old._tasks if t.get_name() != "protection"]
    for ied_id in sorted(keep):
        adapter = old.adapters.pop(ied_id)
        adapter.set_sink(new._sink)
        new.adapters[ied_id] = adapter
        new.running_adapters.add(ied_id)
        task = next(t for t in old._tasks if t.get_name() == f"ied-{ied_id}")
        old._tasks.remove(task)
        new._tasks.append(task)
    # what the kept IEDs last said (an IED reporting by exception may not say it again)
    carried = [p for p in old.image.points.values() if p.source in keep and new.image.carry(p)]
    new.switching.resync()
    new.switching.take_over(old.switching)
    new.agents.resync(carried)
    new.alarms = old.alarms  # the live list, with what was raised or acknowledged since its last save
    report.ieds_kept_running = sorted(keep)
    report.ieds_restarted = sorted(set(new.adapters) - keep)
    from gateway.agents.runtime import restore_from_store
    from gateway.protection.bridge import SNAPSHOT_KEY

    try:  # the old agents' last snapshot was written after the new ones were built
        restore_from_store(new.store, new.agents.runtime)
    except Exception:
        log.exception("agent state could not be carried over; the new agents keep the state they were built with")
    if new.protection is not None:
        engine = new.protection.engine
        saved = new.store.load_snapshot(SNAPSHOT_KEY)
        if saved:
            try:
                engine.restore(saved)
            except ValueError:
                log.exception("protection snapshot could not be restored")
        if old.protection is not None:
            report.breakers_handed_over = engine.take_over(old.protection.engine)
        report.breakers_restored = sorted(set(engine.schemes) - set(report.breakers_handed_over))
        new.protection.save_snapshot()
