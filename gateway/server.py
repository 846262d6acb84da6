"""The daemon's process lifetime: start-up, signals, readiness and watchdog, reload, shutdown.

`Server` opens the state database and the control socket, starts one `Gateway` (gateway/wiring.py)
and keeps it running until SIGTERM or SIGINT. SIGHUP builds a new `Gateway` from the re-read site
file beside the running one and hands over only when it is valid (gateway/reload.py); an invalid
file is refused with its errors logged and the running configuration kept. systemd hears of each
step through sd_notify (gateway/sdnotify.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from gateway import __version__, control, memory, reload
from gateway.contract.clock import Clock, SystemClock
from gateway.config import ConfigError, SiteConfig
from gateway.control import ControlServer
from gateway.operations import ControlOperations
from gateway.sdnotify import Notifier
from gateway.storage import Store
from gateway.wiring import SHUTDOWN_DEADLINE_S, Gateway

log = logging.getLogger("stima.daemon")


class Server:
    """Process lifetime: signals, readiness, watchdog, reload, shutdown."""

    def __init__(self, config_path: Path, *, clock: Clock | None = None, environ: dict[str, str] | None = None):
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.notifier = Notifier(environ)
        self.gateway: Gateway | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload: reload.ReloadReport | None = None
        self.hmi: Any = None
        self.hmi_config: Any = None

    async def serve(self, site: SiteConfig) -> int:
        env = os.environ
        state_dir = Path(env.get("STATE_DIRECTORY", "").split(":")[0] or site.site.state_dir)
        runtime_dir = Path(env.get("RUNTIME_DIRECTORY", "").split(":")[0] or site.site.runtime_dir)
        self.runtime_dir = runtime_dir
        problem = state_dir_problem(state_dir)
        if problem is not None:
            log.error("cannot start: state directory unusable", extra={"state_dir": str(state_dir), "error": problem})
            print(
                f"stima-gatewayd: state directory {state_dir} is unusable: {problem}; lockouts, command nonces "
                "and the uplink spool must survive a restart, so the daemon does not run without it",
                file=sys.stderr,
            )
            return 1
        self.store = Store(state_dir / "stima.db")
        self.control = ControlServer(
            runtime_dir, site.control.socket_group, access=control.AccessPolicy.from_config(site.control)
        )
        self.operations = ControlOperations(self)
        self.operations.register(self.control)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            self.gateway = Gateway(site, base_dir=self.config_path.parent, clock=self.clock, store=self.store)
            await self.gateway.start()
            await self.control.start()
            await self._start_hmi(site)
            log.info(
                "gateway started",
                extra={
                    "version": __version__,
                    "substation": site.site.substation_id,
                    "ieds": len(site.ieds),
                    "points": len(self.gateway.image),
                    "state_dir": str(state_dir),
                    "control_socket": str(self.control.path),
                },
            )
            self.notifier.ready(self._status_line())
            watchdog = asyncio.create_task(self._watchdog_loop(), name="watchdog")
            while not self._stop.is_set():
                stop_wait = asyncio.create_task(self._stop.wait())
                reload_wait = asyncio.create_task(self._reload.wait())
                await asyncio.wait({stop_wait, reload_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                reload_wait.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self._do_reload()
                    if self.last_reload is not None and self.last_reload.ok:
                        # once the old configuration's threads and tasks have wound down, give it
                        # back and freeze the new one
                        asyncio.get_running_loop().call_later(memory.RELEASE_AFTER_RELOAD_S, memory.after_reload)
            watchdog.cancel()
            log.info("shutting down", extra={"deadline_s": SHUTDOWN_DEADLINE_S})
            self.notifier.stopping()
        finally:
            await self._stop_hmi()
            await self.control.close()
            if self.gateway is not None:
                await self.gateway.stop()
            self.store.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped")
        return 0

    async def _start_hmi(self, site: SiteConfig) -> None:
        """The web HMI, when the site file turns it on. A failure to start it (port taken,
        certificate unreadable) is logged and the gateway runs on without it."""
        self.hmi_config = site.hmi
        if not site.hmi.enabled:
            return
        from gateway.hmi.server import Hmi

        hmi = Hmi(
            site.hmi,
            base_dir=self.config_path.parent,
            gateway=lambda: self.gateway,
            store=self.store,
            monotonic=self.clock.monotonic,
            wall=self.clock.wall,
        )
        try:
            await hmi.start()
        except Exception as exc:
            log.error(
                "the HMI could not start; the gateway runs without it",
                extra={"address": site.hmi.address, "port": site.hmi.port, "error": f"{type(exc).__name__}: {exc}"},
            )
            await hmi.close()
            return
        self.hmi = hmi

    async def _stop_hmi(self) -> None:
        if self.hmi is not None:
            with contextlib.suppress(Exception):
                await self.hmi.close()
            self.hmi = None

    async def _do_reload(self) -> None:
        """Build the new configuration beside the running one, then hand over (gateway.reload).

        Any error before the hand-over leaves the running configuration untouched; each is
        logged, counted in `reload_failures` and shown in the systemd status.
        """
        self.notifier.reloading()
        old = self.gateway
        assert old is not None
        report = reload.ReloadReport(started_wall=self.clock.wall())
        self.last_reload = report
        started = time.monotonic()
        if old.protection is not None:
            old.protection.engine.watch_gaps()
        try:
            new = reload.build(self.config_path, clock=self.clock, store=self.store, gateway_class=Gateway)
            report.build_s = time.monotonic() - started
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: invalid site file", extra={"file": exc.source, "problem": str(problem)})
            self._reload_refused(
                report,
                "validate",
                f"{len(exc.problems)} problem(s) in {exc.source}: " + "; ".join(str(p) for p in exc.problems[:3]),
            )
            return
        except Exception as exc:
            log.exception(
                "reload refused: the new configuration could not be built", extra={"file": str(self.config_path)}
            )
            self._reload_refused(report, "build", f"{type(exc).__name__}: {exc}")
            return
        report.stage = "retire"
        keep = reload.unchanged_ieds(old, new)
        relay: list[tuple[str, dict[str, Any]]] = []
        await reload.retire(old, keep, relay)
        report.stage = "hand_over"
        handing_over = time.monotonic()
        try:
            reload.hand_over(old, new, keep, report)
        except Exception as exc:  # a fault here must not end the process: start from the saved state
            log.exception("protection hand-over failed; the new configuration starts from the saved state")
            report.error = f"hand-over failed ({type(exc).__name__}: {exc}); started from the saved state"
            await reload.retire(old, set(), relay)
            for task in old._tasks:
                task.cancel()
        new.uplink.resync_spool()  # the old uplink spooled and sent until it closed
        self.gateway = new
        await new.start(freeze=False)
        report.hand_over_s = time.monotonic() - handing_over
        if relay:
            report.protection_events_relayed = len(relay)
            try:
                new.uplink.publish_many(relay)
            except Exception:
                log.exception("protection messages of the reload could not be spooled", extra={"count": len(relay)})
        report.ok, report.stage = True, "done"
        report.duration_s = time.monotonic() - started
        if new.protection is not None:
            engine = new.protection.engine

            def close_gap_window() -> None:
                report.protection_longest_gap_s = engine.longest_gap_s
                engine.watch_gaps(False)

            asyncio.get_running_loop().call_later(reload.GAP_WINDOW_S, close_gap_window)
        self.reloads += 1
        if new.site.hmi != self.hmi_config:  # the HMI's own settings changed: serve them (sessions end)
            await self._stop_hmi()
            await self._start_hmi(new.site)
        log.info(
            "site file reloaded",
            extra={
                "file": str(self.config_path),
                "points": len(new.image),
                "ieds_kept_running": len(keep),
                "breakers_handed_over": len(report.breakers_handed_over),
            },
        )
        self.notifier.ready(self._status_line())

    def _reload_refused(self, report: reload.ReloadReport, stage: str, error: str) -> None:
        self.reload_failures += 1
        gw = self.gateway
        if gw is not None and gw.protection is not None:
            gw.protection.engine.watch_gaps(False)
        report.stage, report.error = stage, error
        log.error(
            "reload refused; the running configuration is kept",
            extra={"file": str(self.config_path), "stage": stage, "error": error},
        )
        self.notifier.ready(f"reload refused ({stage}): {error[:200]}; running the previous configuration")

    def reload_status(self) -> dict[str, Any] | None:
        return None if self.last_reload is None else self.last_reload.as_dict()

    def _status_line(self) -> str:
        gw = self.gateway
        if gw is None:
            return "starting"
        online = sum(1 for a in gw.adapters.values() if a.status.state.value == "online")
        counts = gw.image.counts_by_quality()
        up = gw.uplink.status().get("state", "?")
        return f"IEDs {online}/{len(gw.adapters)} online, points good {counts['good']}/{len(gw.image)}, uplink {up}"

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval_s
        while True:
            await asyncio.sleep(interval if interval else 5.0)
            if interval:
                self.notifier.watchdog()
            self.notifier.status(self._status_line())


def state_dir_problem(state_dir: Path) -> str | None:
    """Why the state directory cannot hold the state database (missing and not creatable,
    read-only, full, or a database that will not open), or None when it can."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".stima-write-probe"
        probe.write_bytes(b"x")
        probe.unlink()
        Store(state_dir / "stima.db").close()
    except (OSError, sqlite3.Error) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None
