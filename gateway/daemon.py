"""stima-gatewayd: the substation gateway daemon.

`Server` owns start-up, the main loop, signals and a graceful shutdown; `Gateway` is one running
configuration (process image, adapters, protection, agents, uplink). SIGHUP builds a new
`Gateway` from a re-read site file and swaps it in only when the file is valid; an invalid file
is refused with its errors logged and the running configuration kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__, logs
from gateway.contract.clock import Clock, SystemClock
from gateway.config import ConfigError, ConfigProblem, SiteConfig
from gateway import control, reload
from gateway.control import ControlServer
from gateway.contract.points import Point, PointBlock, PointKind, PointUpdate, ProcessImage
from gateway.sdnotify import Notifier
from gateway.site import load_site
from gateway.storage import Store
from gateway.switching.model import Origin, Via
from gateway.contract.ports import Adapter, CommandError, Priority
from protocols.base import make_adapter

log = logging.getLogger("stima.daemon")

SHUTDOWN_DEADLINE_S = 10.0
PROTECTION_STEP_S = 0.005
AGENT_TICK_S = 1.0
AGENT_SNAPSHOT_S = 60.0
GIL_SWITCH_INTERVAL_S = 0.0002
AGENT_DIRTY_SNAPSHOT_S = 2.0
HISTORY_FLUSH_DELAY_S = 0.25
"""After a history bucket's end, wait this long for its last samples before writing it."""
HISTORY_PRUNE_PERIOD_S = 3600.0
HISTORY_WRITE_CHUNK = 200
"""History rows per transaction (written or pruned): a protection snapshot never waits long for
the store's lock (about a millisecond; see tests/bench/bench_history.py)."""
HISTORY_PRUNE_MAX_CHUNKS = 10_000
"""Agent state changes reach the state database within this (protection state: at once)."""
STATE_TOPICS_SNAPSHOT = "uplink.state_topics"
"""The agents whose `state/<agent>` this gateway has retained on the broker."""


class Gateway:
    """One configuration generation, wired: IEDs → process image → protection/agents/uplink."""

    def __init__(self, site: SiteConfig, *, base_dir: Path, clock: Clock, store: Store) -> None:
        self.site = site
        self.base_dir = base_dir
        self.clock = clock
        self.store = store
        self.image = ProcessImage()
        for ied in site.ieds:
            for p in ied.points:
                self.image.define(p.id, PointKind(p.point_kind.value), unit=p.unit, source=ied.id)
        self.adapters: dict[str, Adapter] = {}
        self.running_adapters: set[str] = set()
        """Adapters already polling when handed over by the configuration this one replaces."""
        self._tasks: list[asyncio.Task[Any]] = []
        self.started_at = clock.wall()
        self.updates_applied = 0
        self._build_alarms()
        self._build_uplink()
        self._build_protection()
        self._build_agents()
        self._build_switching()
        self._build_ami()
        self._build_coordination()
        self._build_peak()
        self._build_recording()
        self._build_maintenance()
        self._build_commands()
        self._build_history()
        self._build_iec104()

    # ------------------------------------------------------------------ wiring

    def _build_alarms(self) -> None:
        from gateway.alarms import SNAPSHOT_KEY, AlarmBook

        self.alarms = AlarmBook(a.id for a in self.site.agents)
        try:
            self.alarms.restore(self.store.load_snapshot(SNAPSHOT_KEY))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("active alarms could not be restored", extra={"error": str(exc)})

    def _build_uplink(self) -> None:
        from gateway.telemetry import Telemetry
        from protocols.mqtt import MqttUplink

        self.telemetry = Telemetry.from_site(self.site)
        self.uplink = MqttUplink(
            self.site.uplink,
            self.site.site,
            self.store,
            self.clock,
            logging.getLogger("stima.uplink"),
            base_dir=self.base_dir,
            urgent_topics=("alarms", "events", "notices", "cmd_result"),
        )
        from gateway.agents.notices import KINDS, Disposition
        from gateway.config import COMMAND_NAMES

        self.uplink.set_birth(
            [
                {"id": p.point_id, "i": n, "kind": p.kind.value, "unit": p.unit, "source": p.source}
                for n, p in enumerate(self.image.points.values())
            ],
            # what the gateway's records may fill, declared in a Sparkplug NBIRTH
            node_metrics=[f"Agents/{a.id}/State" for a in self.site.agents]
            + [f"Notices/{k.kind}" for k in KINDS if k.disposition is not Disposition.HANDLED]
            + [f"Command Results/{c}" for c in COMMAND_NAMES],
        )
        self.telemetry.set_index({point_id: n for n, point_id in enumerate(self.image.points)})
        self._telemetry_wake = asyncio.Event()
        self.uplink.on_birth(self._request_integrity)
        self.uplink.on_birth(self._publish_states)
        self.image.subscribe_blocks(self._on_block_for_uplink, self._on_point_for_uplink)

    def _build_protection(self) -> None:
        self.protection: Any = None
        self._protected_breakers = {s.breaker for s in self.site.protection}
        if not self.site.protection:
            return
        from gateway.protection.bridge import ProtectionBridge
        from gateway.protection.engine import ProtectionEngine

        require = self.site.site.require_native_protection
        engine = ProtectionEngine(self.site.protection, backend="native" if require else "auto")
        if engine.backend_name != "native":
            log.error(
                "PROTECTION IS RUNNING ON THE PYTHON REFERENCE, NOT THE NATIVE CORE",
                extra={"backend": engine.backend_name},
            )
        self.protection = ProtectionBridge(
            engine, self.image, submit=self.submit, store=self.store, publish=self._publish,
            publish_many=self.uplink.publish_many,
            wall=self.clock.wall, monotonic=self.clock.monotonic, defer=asyncio.get_running_loop().call_soon,
        )

    def _build_agents(self) -> None:
        from gateway.agent_host import AgentHost

        self.agents = AgentHost(
            self.site, self.image, store=self.store, publish=self._publish,
            monotonic=self.clock.monotonic, wall=self.clock.wall, defer=asyncio.get_running_loop().call_soon,
        )
        if self.protection is not None:
            self.protection.event_listeners.append(self.agents.on_protection_event)

    def _build_switching(self) -> None:
        """The one switching authority every road to the plant goes through (gateway/switching/)."""
        from gateway.switching.flisr import FlisrSettings
        from gateway.switching.service import SwitchingService

        self._switching_wake = asyncio.Event()
        f = self.site.flisr
        self.switching = SwitchingService(
            self.site, image=self.image, store=self.store, publish=self._publish,
            submit=lambda point, value: self.submit(point, value, Priority.CONTROL),
            protection=self.protection, agents=self.agents, monotonic=self.clock.monotonic, wall=self.clock.wall,
            wake=self._switching_wake.set,
            flisr=FlisrSettings(mode=f.mode, settle_s=f.settle_s, step_timeout_s=f.step_timeout_s,
                                min_voltage_pu=f.min_voltage_pu, max_replans=f.max_replans),
            select_timeout_s=self.site.uplink.commands.select_timeout_s)
        self.agents.operate = self.switching.operate
        if self.protection is not None:
            self.protection.event_listeners.append(self.switching.on_protection_event)
            self.protection.command_listeners.append(self.switching.on_protection_command)

    def _build_ami(self) -> None:
        """The AMI feed's client (connects in `start`): readings to the agents (and to demand
        response's tallies), demand-response events out, confirmations and weather in."""
        self.ami: Any = None
        if self.site.ami is not None and self.site.meter_groups:
            from protocols.ami import AmiSubscriber

            self.ami = AmiSubscriber(self.site.ami, self.site.site.substation_id, self._ingest_meters,
                                     self.clock, logging.getLogger("stima.ami"))

    def _ingest_meters(self, meter_ids: Sequence[str], columns: Any, reading_time: float) -> None:
        self.agents.ingest_meters(meter_ids, columns, reading_time)
        if self.peak is not None:
            self.peak.on_readings(meter_ids, columns, reading_time)

    def _build_coordination(self) -> None:
        """Load transfer with the neighbouring substations over the regional broker, signed with
        this gateway's own key (gateway/switching/exchange.py)."""
        from gateway.switching.exchange import ExchangeService, neighbour_ties

        self.exchange: Any = None
        cfg = self.site.coordination
        ties = neighbour_ties(self.switching)
        if not cfg.enabled or not ties:
            return
        neighbours = {t.neighbour for t in ties.values()}
        public = self._neighbour_keys(neighbours)
        if not public:
            log.error("external ties but no neighbour's public key in [coordination] neighbours: "
                      "load transfer is off", extra={"neighbours": sorted(neighbours)})
            return
        import gateway.keys as keys

        own = keys.load_or_create_keypair(self.store.path.parent, f"gw-{self.site.site.substation_id}")

        from protocols.mqtt import RESERVED_KEYS

        def verify(envelope: dict[str, Any], sender: str) -> dict[str, Any]:
            key = public.get(sender)
            if key is None:
                raise ValueError(f"{sender} is not a neighbour with a known key")
            # the sender's uplink adds its per-message fields (seq, msg_id...) after signing
            signed = {k: v for k, v in envelope.items() if k not in RESERVED_KEYS}
            try:
                return keys.verify(signed, key)
            except keys.KeyRefused as exc:
                raise ValueError(f"{exc.reason}: {exc.message}") from None

        up = self.site.uplink
        region_base = f"{up.topic_prefix}/{self.site.site.region}"
        self.exchange = ExchangeService(
            self.site.site.substation_id, region_base, switching=self.switching, publish=self._publish,
            sign=own.sign, verify=verify, headroom=self._headroom, monotonic=self.clock.monotonic,
            wall=self.clock.wall, alarm=self._transfer_alarm, max_age_s=cfg.max_age_s,
            window_headroom=self._window_headroom)
        self.uplink.on_external(self.exchange.inbox_filter, self.exchange.on_mqtt)
        for topic in self.exchange.death_topics():
            self.uplink.on_external(topic, self.exchange.on_mqtt)

    def _neighbour_keys(self, neighbours: set[str]) -> dict[str, bytes]:
        import gateway.keys as keys

        out = {}
        for name, text in self.site.coordination.neighbours.items():
            if name not in neighbours:
                log.warning("[coordination] neighbour without a tie to it", extra={"neighbour": name})
            try:
                try:
                    out[name] = keys.parse_public_key(text)
                except ValueError:
                    path = self.base_dir / text
                    if not path.is_file():
                        raise
                    out[name] = keys.parse_public_key(path.read_text().strip())
            except (OSError, ValueError) as exc:
                log.error("[coordination] neighbour key unusable: load transfer with it is off",
                          extra={"neighbour": name, "error": str(exc)})
        return out

    def _headroom(self, tie: str, kw: float) -> tuple[float, str]:
        if self.peak is None:
            return 0.0, "this substation does not manage its peak ([peak] is off): no headroom known"
        return self.peak.headroom(tie, kw)

    def _window_headroom(self, tie: str, kva: float, start: float, end: float) -> tuple[float, str]:
        if self.peak is None:
            return 0.0, "this substation does not manage its peak ([peak] is off): no headroom known"
        return self.peak.window_headroom(tie, kva, start, end)

    def _transfer_alarm(self, xid: str, severity: str, message: str) -> None:
        self.store.append_event(self.clock.wall(), f"transfer:{xid}", "alert", {"severity": severity,
                                                                                "message": message})
        self._publish("alarms", {"time": self.clock.wall(), "source": f"transfer:{xid}", "severity": severity,
                                 "message": message})

    def _build_peak(self) -> None:
        self.peak: Any = None
        if not self.site.peak.enabled:
            return
        from gateway.peak_service import PeakService

        self.peak = PeakService(self.site, switching=self.switching, agents=self.agents, image=self.image,
                                store=self.store, publish=self._publish, monotonic=self.clock.monotonic,
                                wall=self.clock.wall, exchange=self.exchange, ami=self.ami)

    async def _peak_loop(self) -> None:
        """The peak manager, once a second, and the load-transfer exchanges' timers (five times a
        second while an exchange is under way: a tie owner waits for its far side to go dead)."""
        last_peak = self.clock.monotonic()
        while True:
            busy = self.exchange is not None and self.exchange.next_deadline() is not None
            await asyncio.sleep(0.2 if busy else 1.0)
            try:
                if self.exchange is not None:
                    self.exchange.tick()
                if self.peak is not None and self.clock.monotonic() - last_peak >= 0.95:
                    last_peak = self.clock.monotonic()
                    self.peak.tick()
            except Exception:
                log.exception("peak step failed")

    def _build_recording(self) -> None:
        """Disturbance records (COMTRADE) and the status-change log (gateway/recording.py)."""
        from gateway.recording import Recording

        self.recording = Recording(self.site, image=self.image, network=self.switching.network, store=self.store,
                                   publish=self._publish, monotonic=self.clock.monotonic, wall=self.clock.wall)
        if self.protection is not None:  # first: a trip's fault location is ready when its fault record opens
            self.protection.event_listeners.insert(0, self.recording.on_protection_event)
        self.switching.fault_locator = self.recording.latest_estimate

    async def _forecast_loop(self) -> None:
        """The substation's load forecast from the point history, once a period: to the substation
        agent (it acts on a forecast crossing of its high-load level) and on `…/forecast/<id>`."""
        from gateway.agents.forecast import ForecastSettings, forecast
        from gateway.agents.schema import SubstationAttributes

        cfg = self.site.forecast
        settings = ForecastSettings(horizon_s=cfg.horizon_s, step_s=min(cfg.step_s, cfg.horizon_s), days=cfg.history_days, utc_offset_h=cfg.utc_offset_h,
                                    trend_window_s=cfg.trend_window_s, trend_fade_s=cfg.trend_fade_s)
        subs = [(a.id, a.points.get("total_load_kw"), SubstationAttributes.model_validate(a.attributes))
                for a in self.site.agents if a.type.value == "substation"]
        while True:
            await asyncio.sleep(cfg.period_s)
            for sub_id, point, attrs in subs:
                if not point or point not in self.image:
                    continue
                try:
                    now = self.clock.wall()
                    rows = await asyncio.to_thread(self.store.history, point, now - cfg.history_days * 86400.0,
                                                   float("inf"), 200_000)
                    history = [(r["bucket_start"] + r["interval_s"] / 2.0, r["mean"]) for r in rows
                               if r["mean"] is not None]
                    live = self.image[point]
                    if live.quality.good and isinstance(live.value, int | float):
                        history.append((now, float(live.value)))
                    if len(history) < 5 or now - history[0][0] < cfg.trend_window_s / 2.0:
                        continue  # not enough history for a trend: no forecast rather than a wild one
                    limit_kw = attrs.high_load_percent / 100.0 * attrs.rated_capacity * 1000.0
                    made = forecast(history, now, limit_kw=limit_kw, settings=settings)
                    self.agents.runtime.on_forecast(sub_id, made.crossing_s, made.peak_kw, self.clock.monotonic())
                    if self.peak is not None and sub_id == self.peak.sub.id:
                        self.peak.on_forecast(made)
                    self._publish(f"forecast/{sub_id}", {"time": now, "substation": sub_id, **made.to_dict()},
                                  retain=True)
                except Exception:
                    log.exception("load forecast failed", extra={"substation": sub_id})

    async def _switching_loop(self) -> None:
        """Check-backs, sequence steps, FLISR and load samples: woken by position changes and
        requests, and at the next deadline (once a second at least)."""
        wake = self._switching_wake
        while True:
            due = self.switching.next_deadline()
            delay = 1.0 if due is None else min(1.0, max(0.0, due - self.clock.monotonic()))
            wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()
            try:
                self.switching.tick()
            except Exception:
                log.exception("switching step failed")

    def _build_maintenance(self) -> None:
        """Predictive maintenance: health from the history, work orders, backup plans (gateway/maintenance/)."""
        from gateway.maintenance.service import MaintenanceService

        self._maintenance_wake = asyncio.Event()
        self.maintenance_service: Any = None
        if self.site.maintenance.enabled:
            from gateway.maintenance.backup import QuotedNeighbour

            exchange = getattr(self, "exchange", None)
            neighbour = QuotedNeighbour(self.switching.network, exchange.ask_quote if exchange is not None else None)
            self.maintenance_service = MaintenanceService(
                self.site, store=self.store, agents=self.agents, switching=self.switching, publish=self._publish,
                wall=self.clock.wall, monotonic=self.clock.monotonic, ask_neighbour=neighbour)
            if exchange is not None:
                def heard(answer: Any) -> None:
                    if neighbour.on_answer(answer) and self.maintenance_service.on_quote(answer):
                        self._maintenance_wake.set()
                exchange.quote_listeners.append(heard)
            self.agents.message_listeners.append(self._maintenance_heard)

    def _maintenance_heard(self, message: Any) -> None:
        if message.kind == "maintenance_request":
            self._maintenance_wake.set()

    async def _maintenance_loop(self) -> None:
        """Health evaluations every evaluation_period_s (the first a minute after start, once the
        history has its first buckets), and the maintenance requests as they come."""
        period = self.site.maintenance.evaluation_period_s
        next_evaluation = self.clock.monotonic() + min(60.0, period)
        while True:
            delay = max(0.0, next_evaluation - self.clock.monotonic())
            self._maintenance_wake.clear()
            if not (self.maintenance_service.pending or self.maintenance_service.replans):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._maintenance_wake.wait()
            try:
                if self.clock.monotonic() >= next_evaluation:
                    next_evaluation = self.clock.monotonic() + period
                    await self.maintenance_evaluate()
                await self.maintenance_requests()
            except Exception:
                self.maintenance_service.stats.errors += 1
                log.exception("maintenance step failed")

    async def maintenance_evaluate(self, only: str | None = None) -> list[dict[str, Any]]:
        """Evaluate the monitored transformers now (the history read and the numbers off the loop)."""
        svc = self.maintenance_service
        if svc is None:
            raise RuntimeError("maintenance is off in the site file ([maintenance] enabled = false)")
        targets = [only] if only is not None else sorted(svc.monitored)
        unknown = [t for t in targets if t not in svc.monitored]
        if unknown:
            raise KeyError(f"not a monitored transformer: {', '.join(unknown)} (monitored: "
                           f"{', '.join(sorted(svc.monitored)) or 'none'})")
        out = []
        for xfmr in targets:
            evaluation = await asyncio.to_thread(svc.evaluate, xfmr, self.clock.wall())
            svc.apply(evaluation)
            memory = self.agents.runtime.memory[xfmr]
            out.append({"transformer": xfmr, "seconds": round(evaluation.seconds, 4),
                        **(getattr(memory, "health", None) or {})})
        await self.maintenance_requests()
        return out

    async def maintenance_requests(self) -> list[dict[str, Any]]:
        from gateway.maintenance.workorder import WorkOrderError

        svc = self.maintenance_service
        done = []
        while svc.pending:
            request = svc.pending.pop(0)  # taken before the await: another caller may be draining too
            forecasts = await asyncio.to_thread(svc.forecasts, self.clock.wall())
            planned = svc.process(request, forecasts)
            done.append(planned.work_order.to_dict())
        while svc.replans:
            wo, why = svc.replans.pop(0)
            forecasts = await asyncio.to_thread(svc.forecasts, self.clock.wall())
            try:
                done.append(svc.replan(wo, why, forecasts).work_order.to_dict())
            except WorkOrderError as exc:
                log.info("work order not planned again", extra={"work_order": wo, "error": str(exc)})
        return done

    def _build_commands(self) -> None:
        """SCADA commands from the uplink and the operator's breaker commands: one SBO engine."""
        from gateway.commands import CommandService, key_path, read_key

        from gateway.keys import SNAPSHOT_KEY, KeyBook, load_or_create_keypair

        self.own_key: Any = None
        """The gateway's own Ed25519 key pair (its messages to neighbouring gateways), in the state directory."""
        if str(self.store.path) != ":memory:":
            try:
                self.own_key = load_or_create_keypair(self.store.path.parent, f"gw-{self.site.site.substation_id}")
            except (ValueError, OSError) as exc:
                log.error("the gateway's own key pair could not be read or made", extra={"error": str(exc)})
        cfg = self.site.uplink.commands
        path = key_path(cfg, self.base_dir)
        key = None
        try:
            self.keys = KeyBook.restore(self.store.load_snapshot(SNAPSHOT_KEY))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("the key book could not be read: no Ed25519 key is trusted until it is repaired",
                      extra={"error": str(exc)})
            self.keys = KeyBook()
        if cfg.enabled and cfg.scheme == "hmac" and path is not None:
            try:
                key = read_key(path)
            except ValueError as exc:
                raise ConfigError(str(path), [ConfigProblem("uplink.commands.key_file", str(exc))]) from None
        self.commands = CommandService(
            cfg, key=key, substation=self.site.site.substation_id, nonces=self.store, plant=self,
            publish=lambda suffix, payload: self.uplink.publish(suffix, payload, qos=1, retain=False),
            audit=self.store.append_event, wall=self.clock.wall, monotonic=self.clock.monotonic, keys=self.keys,
        )
        self.uplink.on_command(self.commands.on_mqtt)
        if cfg.enabled and cfg.scheme == "hmac":
            log.warning("remote commands use the shared-secret (hmac) compatibility scheme: whoever reads the "
                        "key file can sign commands; prefer Ed25519 keys (scheme = 'ed25519', stima keys add)")
        if not cfg.enabled:
            log.info("remote commands are disabled in the site file (uplink.commands.enabled)")

    def _build_iec104(self) -> None:
        """The IEC 60870-5-104 outstation: the same image, commands through the same authority."""
        self.iec104: Any = None
        cfg = self.site.iec104
        if not cfg.enabled:
            return
        from gateway.iec104 import CommandHandler, MapError, Reporter, build_map
        from gateway.switching.model import Role
        from protocols.iec104 import Iec104Outstation

        try:
            point_map = build_map(self.site, self.switching.network)
        except MapError as exc:
            raise ConfigError("site file", [ConfigProblem("iec104", str(exc))]) from None
        devices = self.switching.network.devices
        reporter = Reporter(point_map)
        handler = CommandHandler(point_map, self, Role.parse(cfg.role),
                                 position_point=lambda d: devices[d].points.get("closed") if d in devices else None,
                                 on_return=lambda p: self.iec104.expect_return(p),
                                 max_delay_s=cfg.command_max_delay_s)
        self.iec104 = Iec104Outstation(cfg, point_map, self.image, handler, reporter, self.clock,
                                       logging.getLogger("stima.iec104"), base_dir=self.base_dir)
        self.iec104.audit = self.store.append_event

    def _build_history(self) -> None:
        from gateway.history import HistoryAggregator

        cfg = self.site.history
        self.history = HistoryAggregator(cfg.interval_s) if cfg.enabled else None
        if self.history is not None:
            self.image.subscribe_blocks(self.history.on_block, self.history.on_point)

    async def _history_loop(self) -> None:
        """Write the buckets that closed once per interval, off the event loop, in short transactions."""
        assert self.history is not None
        hist, retention_s = self.history, self.site.history.retention_days * 86400.0
        last_prune = -math.inf
        while True:
            now = self.clock.wall()
            await asyncio.sleep(hist.bucket_start(now) + hist.interval_s - now + HISTORY_FLUSH_DELAY_S)
            try:
                rows = hist.take_closed(self.clock.wall())
                for i in range(0, len(rows), HISTORY_WRITE_CHUNK):  # the store's lock held a ms or two at a time
                    await asyncio.to_thread(self.store.append_history, rows[i:i + HISTORY_WRITE_CHUNK])
                if self.clock.monotonic() - last_prune >= HISTORY_PRUNE_PERIOD_S:
                    last_prune = self.clock.monotonic()
                    before = self.clock.wall() - retention_s
                    for _ in range(HISTORY_PRUNE_MAX_CHUNKS):
                        if await asyncio.to_thread(self.store.prune_history, before, HISTORY_WRITE_CHUNK) \
                                < HISTORY_WRITE_CHUNK:
                            break
            except Exception:
                log.exception("history flush failed")

    def _publish(self, suffix: str, payload: dict[str, Any], retain: bool = False) -> None:
        if suffix == "alarms":  # every alarm, whoever raises it, goes through the alarm book
            self.alarms.raise_alarm(str(payload.get("source", "gateway")), str(payload.get("severity", "major")),
                                    str(payload.get("message", "")), float(payload.get("time", self.clock.wall())))
            self._flush_alarms()
            return
        self.uplink.publish(suffix, payload, retain=retain)
        if suffix.startswith("state/") and isinstance(payload.get("new"), str):
            if self.alarms.on_state(str(payload.get("agent")), payload["new"], self.clock.wall()):
                self._flush_alarms()

    def _flush_alarms(self) -> None:
        """Each change of an alarm on `alarms`, then the retained list of active alarms on
        `alarms/active`; the list is kept in the state database."""
        from gateway.alarms import SNAPSHOT_KEY

        changes = self.alarms.take_changes()
        if not changes:
            return
        try:
            self.uplink.publish_many([("alarms", {"time": self.clock.wall(), "state": state, **alarm.as_dict()})
                                      for state, alarm in changes])
            self.uplink.publish("alarms/active", {"time": self.clock.wall(),
                                                  "alarms": [a.as_dict() for a in self.alarms.active()]}, retain=True)
            self.store.save_snapshot(SNAPSHOT_KEY, self.alarms.snapshot(), self.clock.wall())
        except Exception:
            log.exception("alarms could not be published")

    def acknowledge_alarm(self, alarm_id: str, origin: Any) -> dict[str, Any]:
        """An operator acknowledged an alarm (SCADA command, control socket, or the HMI's user
        name as `hmi:<user>`); audited."""
        who = origin if isinstance(origin, str) else origin.who
        alarm = self.alarms.acknowledge(alarm_id, who, self.clock.wall())
        self.store.append_event(self.clock.wall(), alarm.source, "alarm.acknowledged",
                                {"id": alarm.id, "origin": who, "message": alarm.message})
        self._flush_alarms()
        return alarm.as_dict()

    def _on_point_for_uplink(self, point: Point, update: PointUpdate) -> None:
        self.updates_applied += 1
        if self.telemetry.on_change(point, update.receive_monotonic) or self.telemetry.pending == 1:
            self._telemetry_wake.set()

    def _on_block_for_uplink(self, points: Sequence[Point], block: PointBlock) -> None:
        self.updates_applied += len(points)
        telemetry = self.telemetry
        was_idle = telemetry.pending == 0
        if telemetry.on_points(points, block.receive_monotonic) or (was_idle and telemetry.pending):
            self._telemetry_wake.set()

    def _sink(self, updates: Sequence[PointUpdate] | PointBlock) -> None:
        if type(updates) is PointBlock:
            try:
                self.image.apply_block(updates)
            except Exception:
                log.exception("point block update failed", extra={"points": len(updates)})
            return
        apply = self.image.apply
        for update in updates:
            try:
                apply(update)
            except Exception:
                log.exception("point update failed", extra={"point": update.point_id})

    async def start(self) -> None:
        # Everything built so far lives as long as this configuration: keep it out of the
        # cyclic collector's way so collections stay short on the protection path.
        gc.collect()
        gc.freeze()
        # The uplink's network thread must not hold the interpreter for the default 5 ms
        # when the event loop has a trip to send.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self._clear_removed_states()
        self.build_adapters()
        for ied_id, adapter in self.adapters.items():
            if ied_id not in self.running_adapters:
                self._tasks.append(asyncio.create_task(adapter.run(), name=f"ied-{ied_id}"))
        self._tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
        self._tasks.append(asyncio.create_task(self._telemetry_loop(), name="telemetry"))
        if self.protection is not None:
            self._tasks.append(asyncio.create_task(self._protection_clock(), name="protection"))
        self._tasks.append(asyncio.create_task(self._agent_loop(), name="agents"))
        self._tasks.append(asyncio.create_task(self._switching_loop(), name="switching"))
        self._tasks.append(asyncio.create_task(self.recording.run(), name="records"))
        if self.site.forecast.enabled:
            self._tasks.append(asyncio.create_task(self._forecast_loop(), name="forecast"))
        if self.maintenance_service is not None:
            self._tasks.append(asyncio.create_task(self._maintenance_loop(), name="maintenance"))
        if self.history is not None:
            self._tasks.append(asyncio.create_task(self._history_loop(), name="history"))
        if self.iec104 is not None:
            await self.iec104.start()
        if self.ami is not None:
            self._tasks.append(asyncio.create_task(self.ami.run(), name="ami"))
        if self.exchange is not None or self.peak is not None:
            self._tasks.append(asyncio.create_task(self._peak_loop(), name="peak"))

    def build_adapters(self) -> None:
        """Construct the adapter of every enabled IED (no I/O yet) unless already there (handed over)."""
        enabled = [ied for ied in self.site.ieds if ied.enabled]
        for n, ied in enumerate(enabled):
            if ied.id not in self.adapters:
                adapter = make_adapter(ied, self._sink, self.clock, logging.getLogger("stima.ied"))
                adapter.poll_phase = n / len(enabled)
                self.adapters[ied.id] = adapter

    async def _protection_clock(self) -> None:
        """Advance protection timers (reclose dead times, 50BF, reset) between samples."""
        assert self.protection is not None
        while True:
            await asyncio.sleep(PROTECTION_STEP_S)
            try:
                self.protection.step(self.clock.monotonic())
            except Exception:
                log.exception("protection step failed")

    async def _agent_loop(self) -> None:
        last_snapshot = self.clock.monotonic()
        while True:
            await asyncio.sleep(AGENT_TICK_S)
            try:
                self.agents.tick()
                since = self.clock.monotonic() - last_snapshot
                if (self.agents.dirty and since >= AGENT_DIRTY_SNAPSHOT_S) or since > AGENT_SNAPSHOT_S:
                    self.agents.snapshot()
                    last_snapshot = self.clock.monotonic()
            except Exception:
                log.exception("agent step failed")

    def _publish_states(self) -> None:
        """Every agent's current state and the active alarms, retained, after each birth (a broker
        that lost its retained messages has them again)."""
        try:
            self.uplink.publish_many(self.agents.current_states(), retain=True)
            self.uplink.publish("alarms/active", {"time": self.clock.wall(),
                                                  "alarms": [a.as_dict() for a in self.alarms.active()]}, retain=True)
        except Exception:
            log.exception("agent states could not be published")

    def _clear_removed_states(self) -> None:
        """The retained `state/<agent>` of agents no longer in the site file are cleared (an empty
        retained message each), once, when this configuration starts."""
        current = sorted(a.id for a in self.site.agents)
        try:
            known = self.store.load_snapshot(STATE_TOPICS_SNAPSHOT) or []
            gone = sorted(set(known) - set(current))
            if gone:
                self.uplink.clear_retained([f"state/{a}" for a in gone])
                log.warning("retained states of agents removed from the site file cleared", extra={"agents": gone})
            self.store.save_snapshot(STATE_TOPICS_SNAPSHOT, current, self.clock.wall())
        except Exception:
            log.exception("retained agent states could not be checked against the site file")

    def _request_integrity(self) -> None:
        self.telemetry.request_integrity()
        self._telemetry_wake.set()

    async def _telemetry_loop(self) -> None:
        """Flush report-by-exception batches and integrity reports; asleep while nothing changes."""
        window = self.site.uplink.batch_window_ms / 1000.0
        wake = self._telemetry_wake
        self._flush_telemetry()  # schedules the first integrity report
        while True:
            due = self.telemetry.next_flush_at(window)
            delay = None if due is None else due - self.clock.monotonic()
            if delay is None or delay > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()
                continue
            self._flush_telemetry()

    def _flush_telemetry(self) -> None:
        messages = self.telemetry.flush(self.clock.monotonic(), self.clock.wall())
        if messages:
            self.uplink.publish_many(messages)

    async def stop(self, deadline_s: float = SHUTDOWN_DEADLINE_S) -> None:
        """Stop polling, let the uplink drain within the deadline, then cancel what is left."""
        end = time.monotonic() + deadline_s
        with contextlib.suppress(Exception):
            self.agents.snapshot()
        if self.ami is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ami.close(), 2.0)
        if self.iec104 is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.iec104.close(), max(end - time.monotonic(), 0.1))
        for adapter in self.adapters.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(adapter.close(), max(end - time.monotonic(), 0.1))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.recording.stop(), max(min(end - time.monotonic(), 5.0), 0.1))
        with contextlib.suppress(Exception):
            self.uplink.publish_many(self.telemetry.flush(self.clock.monotonic(), self.clock.wall()))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.uplink.close(), max(end - time.monotonic(), 0.1))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.history is not None:
            try:
                self.store.append_history(self.history.take_all())
            except Exception:
                log.exception("history flush at stop failed")

    # ------------------------------------------------------------------ commands

    def submit(self, point_id: str, value: float | int | bool, priority: Priority) -> asyncio.Future[Any]:
        """Hand a write to the adapter of the point's IED (raises CommandError at once if impossible)."""
        if point_id not in self.image:
            raise CommandError(f"no point {point_id!r}")
        ied_id = self.image[point_id].source
        adapter = self.adapters.get(ied_id)
        if adapter is None:
            raise CommandError(f"IED {ied_id} is disabled")
        return adapter.submit_write(point_id, value, priority)

    # ------------------------------------------------------------------ the plant (gateway.commands.Plant)

    def select(self, op: Any) -> Any:
        return self.switching.select(op)

    def operate(self, op: Any) -> Any:
        return self.switching.operate(op)

    def cancel(self, select_id: str, origin: Any) -> Any:
        return self.switching.cancel(select_id, origin)

    def device_status(self, device: str) -> dict[str, Any]:
        state = self.switching.device_status(device)
        if self.protection is not None and device in self._protected_breakers:
            state["protection"] = self.protection.engine.status(device)
        return state

    def approve(self, sequence: str, origin: Any) -> Any:
        return self.switching.approve(sequence, origin)

    def abort(self, sequence: str, origin: Any) -> Any:
        return self.switching.abort(sequence, origin)

    def agent_type(self, agent_id: str) -> str | None:
        for agent in self.site.agents:
            if agent.id == agent_id:
                return str(agent.type.value)
        for group in self.site.meter_groups:
            if group.id == agent_id:
                return "smart_meter"
        return None

    def agent_request(self, agent_id: str, request: str, args: dict[str, Any], origin: Any) -> list[dict[str, Any]]:
        return self.agents.request(agent_id, request, origin=origin, **args)

    def maintenance(self, action: str, args: dict[str, Any], origin: Any) -> dict[str, Any]:
        if self.maintenance_service is None:
            raise ValueError("maintenance is off in the site file ([maintenance] enabled = false)")
        return dict(self.maintenance_service.command(action, args, origin.who).to_dict())

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "substation_id": self.site.site.substation_id,
            "region": self.site.site.region,
            "started_at": self.started_at,
            "uptime_s": self.clock.wall() - self.started_at,
            "ieds": [a.status.as_dict() for a in self.adapters.values()],
            "points": {"total": len(self.image), **self.image.counts_by_quality()},
            "updates_applied": self.updates_applied,
            "telemetry": {"changes_seen": self.telemetry.changes_seen,
                          "changes_reported": self.telemetry.changes_reported},
            "uplink": self.uplink.status(),
            "protection": None if self.protection is None else {
                "backend": self.protection.engine.backend_name,
                "commands_sent": self.protection.commands_sent,
                "command_failures": self.protection.command_failures,
                "breakers": {b: self.protection.engine.status(b) for b in sorted(self._protected_breakers)},
            },
            "agents": {"count": len(self.site.agents), "meters": sum(g.count for g in self.site.meter_groups),
                       "actions": self.agents.actions_done, "control_refused": self.agents.control_refused,
                       "notices": self.agents.notices_published},
            "ami": None if self.ami is None else self.ami.status(),
            "commands": self.commands.status(),
            "switching": self.switching.status(),
            "peak": None if self.peak is None else self.peak.status(),
            "transfer": None if self.exchange is None else self.exchange.status(),
            "records": self.recording.status(),
            "iec104": None if self.iec104 is None else self.iec104.status(),
            "own_key": None if self.own_key is None else {"name": self.own_key.name,
                                                          "public_key": self.own_key.public.hex()},
            "maintenance": None if self.maintenance_service is None else self.maintenance_service.status(),
        }


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
            print(f"stima-gatewayd: state directory {state_dir} is unusable: {problem}; lockouts, command nonces "
                  "and the uplink spool must survive a restart, so the daemon does not run without it",
                  file=sys.stderr)
            return 1
        self.store = Store(state_dir / "stima.db")
        self.control = ControlServer(runtime_dir, site.control.socket_group,
                                     access=control.AccessPolicy.from_config(site.control))
        self._register_ops()
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

        hmi = Hmi(site.hmi, base_dir=self.config_path.parent, gateway=lambda: self.gateway, store=self.store,
                  monotonic=self.clock.monotonic, wall=self.clock.wall)
        try:
            await hmi.start()
        except Exception as exc:
            log.error("the HMI could not start; the gateway runs without it",
                      extra={"address": site.hmi.address, "port": site.hmi.port, "error": f"{type(exc).__name__}: {exc}"})
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
            self._reload_refused(report, "validate", f"{len(exc.problems)} problem(s) in {exc.source}: "
                                 + "; ".join(str(p) for p in exc.problems[:3]))
            return
        except Exception as exc:
            log.exception("reload refused: the new configuration could not be built",
                          extra={"file": str(self.config_path)})
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
        await new.start()
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
        log.info("site file reloaded", extra={"file": str(self.config_path), "points": len(new.image),
                                              "ieds_kept_running": len(keep),
                                              "breakers_handed_over": len(report.breakers_handed_over)})
        self.notifier.ready(self._status_line())

    def _reload_refused(self, report: reload.ReloadReport, stage: str, error: str) -> None:
        self.reload_failures += 1
        gw = self.gateway
        if gw is not None and gw.protection is not None:
            gw.protection.engine.watch_gaps(False)
        report.stage, report.error = stage, error
        log.error("reload refused; the running configuration is kept",
                  extra={"file": str(self.config_path), "stage": stage, "error": error})
        self.notifier.ready(f"reload refused ({stage}): {error[:200]}; running the previous configuration")

    def _reload_status(self) -> dict[str, Any] | None:
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

    # ------------------------------------------------------------------ control operations

    def _register_ops(self) -> None:
        """Every operation with the role it needs: viewers read, operators switch, engineers
        change settings (no settings operation on the socket yet)."""
        c, viewer, operator, engineer = self.control, control.Role.VIEWER, control.Role.OPERATOR, control.Role.ENGINEER
        c.register("status", self._op_status, viewer)
        c.register("points.list", self._op_points_list, viewer)
        c.register("points.read", self._op_points_read, viewer)
        c.register_stream("points.watch", self._op_points_watch, viewer)
        c.register("agents.list", lambda: self._gw().agents.runtime.list_agents(), viewer)
        c.register("agents.show", lambda id: self._gw().agents.runtime.show(id), viewer)
        c.register("agents.request", lambda id, request, **args: self._switching_refusal(
            lambda: self._gw().agents.request(id, request, origin=_local_origin(), **args)), operator)
        c.register("reliability", self._op_reliability, viewer)
        c.register("events", self._op_events, viewer)
        c.register("points.history", self._op_points_history, viewer)
        c.register("protection.latency", self._op_protection_latency, viewer)
        c.register("protection.gaps", self._op_protection_gaps, viewer)
        c.register("protection.settings", self._op_protection_settings, viewer)
        c.register("breaker.operate", self._op_breaker_operate, operator)
        c.register("breaker.select", self._op_breaker_select, operator)
        c.register("breaker.operate_selected", self._op_breaker_operate_selected, operator)
        c.register("breaker.cancel", self._op_breaker_cancel, operator)
        c.register("breaker.status", self._op_breaker_status, viewer)
        c.register("switching.list", lambda: self._gw().switching.sequences(), viewer)
        c.register("switching.show", self._op_switching_show, viewer)
        c.register("switching.validate", self._op_switching_validate, viewer)
        c.register("switching.network", lambda: self._gw().switching.network_view(), viewer)
        c.register("switching.submit", self._op_switching_submit, operator)
        c.register("switching.approve", lambda id: self._switching_call("approve", id), operator)
        c.register("switching.abort", lambda id: self._switching_call("abort", id), operator)
        c.register("faults.list", lambda: self._gw().switching.fault_records(), viewer)
        c.register("faults.clear", self._op_faults_clear, operator)
        c.register("tags.add", self._op_tags_add, operator)
        c.register("tags.remove", self._op_tags_remove, operator)
        c.register("peak.status", lambda: None if self._gw().peak is None else self._gw().peak.status(), viewer)
        c.register("transfer.status",
                   lambda: None if self._gw().exchange is None else self._gw().exchange.status(), viewer)
        c.register("transfer.request", self._op_transfer_request, operator)
        c.register("transfer.quote", self._op_transfer_quote, operator)
        c.register("events.page", lambda since=0.0, until=None, after_seq=0, limit=1000: self.store.events_page(
            float(since), float("inf") if until is None else float(until), int(after_seq), min(int(limit), 10_000)),
            viewer)
        c.register("records.list", lambda breaker=None, since=None: self._gw().recording.list(breaker, since), viewer)
        c.register("records.get", lambda id: self._gw().recording.get(str(id)), viewer)
        c.register("iec104.map", self._op_iec104_map, viewer)
        c.register("alarms.list", lambda: [a.as_dict() for a in self._gw().alarms.active()], viewer)
        c.register("alarms.ack", lambda id: self._gw().acknowledge_alarm(str(id), _local_origin()), operator)
        c.register("keys.list", self._op_keys_list, viewer)
        c.register("keys.add", self._op_keys_add, control.Role.ENGINEER)
        c.register("keys.revoke", self._op_keys_revoke, control.Role.ENGINEER)
        c.register("maintenance.list", lambda: self._maintenance().work_orders(), viewer)
        c.register("maintenance.show", lambda id: self._maintenance().show(str(id)), viewer)
        c.register("maintenance.evaluate", self._op_maintenance_evaluate, operator)
        c.register("maintenance.accept", lambda id, external_id=None: self._maintenance_command(
            "accept", work_order=id, **({"external_id": external_id} if external_id else {})), operator)
        c.register("maintenance.reschedule", lambda id, start: self._maintenance_command(
            "reschedule", work_order=id, start=float(start)), operator)
        c.register("maintenance.close", lambda id, note="": self._maintenance_command(
            "close", work_order=id, note=str(note)[:500]), operator)
        c.register("history.import", self._op_history_import, engineer)

    def _op_keys_list(self) -> list[dict[str, Any]]:
        now = self.clock.wall()
        out = []
        for entry in self._gw().keys.entries():
            row = entry.as_dict()
            row["state"] = ("revoked" if entry.revoked is not None else
                            "expired" if entry.expires is not None and now >= entry.expires else "valid")
            out.append(row)
        return out

    def _op_keys_add(self, name: str, public_key: str, role: str, expires: float | None = None) -> dict[str, Any]:
        """Trust a SCADA host's or an operator's Ed25519 public key with a role (engineer only; audited)."""
        from gateway.keys import parse_public_key
        from gateway.switching.model import Role as SwitchingRole

        gw = self._gw()
        entry = gw.keys.add(str(name), parse_public_key(str(public_key)), SwitchingRole.parse(str(role)),
                            expires=None if expires is None else float(expires), who=_local_origin().who,
                            now=self.clock.wall())
        self._save_keys(gw)
        return entry.as_dict()

    def _op_keys_revoke(self, name: str, reason: str) -> dict[str, Any]:
        gw = self._gw()
        entry = gw.keys.revoke(str(name), who=_local_origin().who, reason=str(reason), now=self.clock.wall())
        self._save_keys(gw)
        return entry.as_dict()

    def _save_keys(self, gw: Gateway) -> None:
        from gateway.keys import SNAPSHOT_KEY

        now = self.clock.wall()
        self.store.save_snapshot(SNAPSHOT_KEY, gw.keys.snapshot(), now)
        for kind, record in gw.keys.take_audit():
            self.store.append_event(now, "keys", kind, record)
            log.warning(kind.replace(".", " "), extra={"key": record.get("key"), "origin": record.get("origin")})

    def _op_iec104_map(self) -> list[dict[str, Any]]:
        """The IEC 104 information object addresses of this site (as the outstation serves them)."""
        gw = self._gw()
        if gw.iec104 is None:
            raise KeyError("the IEC 104 outstation is not enabled in the site file (iec104.enabled)")
        return gw.iec104.map.describe()

    def _maintenance(self) -> Any:
        svc = self._gw().maintenance_service
        if svc is None:
            raise RuntimeError("maintenance is off in the site file ([maintenance] enabled = false)")
        return svc

    async def _op_maintenance_evaluate(self, transformer: str | None = None) -> list[dict[str, Any]]:
        """Evaluate the monitored transformers' health now (and make work orders of what they ask)."""
        return await self._gw().maintenance_evaluate(transformer)

    def _maintenance_command(self, action: str, **args: Any) -> dict[str, Any]:
        from gateway.maintenance.workorder import WorkOrderError

        try:
            return dict(self._maintenance().command(action, args, _local_origin().who).to_dict())
        except WorkOrderError as exc:
            raise ValueError(str(exc)) from None

    async def _op_history_import(self, path: str) -> dict[str, Any]:
        """Buckets of another historian (or an IED's own log) into the history, from a CSV file on
        this machine: point_id, bucket_start, interval_s, mean[, min, max, last, n]."""
        gw = self._gw()
        svc = gw.maintenance_service
        known = set(gw.image.points)
        if svc is not None:
            return dict(await asyncio.to_thread(svc.import_history, str(path), known))
        from gateway.history import parse_import

        rows = await asyncio.to_thread(lambda: parse_import(Path(path).read_text(encoding="utf-8"), str(path), known))
        await asyncio.to_thread(self.store.append_history, rows)
        return {"rows": len(rows), "points": sorted({r.point_id for r in rows})}

    def _gw(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the gateway is starting")
        return self.gateway

    def _op_status(self) -> dict[str, Any]:
        status = self._gw().status()
        status["hmi"] = None if self.hmi is None else {"address": self.hmi.cfg.address, "port": self.hmi.port,
                                                        "https": self.hmi.cfg.https,
                                                        "sessions": len(self.hmi.sessions),
                                                        "streams": len(self.hmi.stream.clients)}
        status.update({"state": "running", "pid": os.getpid(), "config": str(self.config_path),
                       "reloads": self.reloads, "reload_failures": self.reload_failures,
                       "last_reload": self._reload_status()})
        return status

    def _op_reliability(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """IEEE 1366 indices for a wall-clock period (default: since the daemon started)."""
        offset = self.clock.wall() - self.clock.monotonic()
        result = dict(self._gw().agents.runtime.reliability(
            None if since is None else since - offset, None if until is None else until - offset))
        for key in ("since", "until"):
            if isinstance(result.get(key), float):
                result[key] += offset
        return result

    def _op_events(self, since: float = 0.0, source: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self.store.events(since=since, source=source, limit=min(int(limit), 10_000))

    def _op_protection_latency(self) -> dict[str, list[float]]:
        bridge = self._gw().protection
        if bridge is None:
            return {"queue": [], "wire": []}
        return {"queue": list(bridge.queue_latencies_s), "wire": list(bridge.wire_latencies_s)}

    def _op_protection_settings(self) -> dict[str, Any]:
        """The protection settings the running engine holds (after any reload), in full."""
        from gateway.protection.settings_files import digest, dump

        bridge = self._gw().protection
        schemes = list(bridge.engine.schemes.values()) if bridge is not None else []
        return {"site": self._gw().site.site.substation_id, "config": str(self.config_path),
                "backend": bridge.engine.backend_name if bridge is not None else None,
                "schemes": [dump(s) for s in schemes], "digest": digest(schemes)}

    async def _op_protection_gaps(self, window_s: float = 5.0) -> dict[str, Any]:
        """The longest interval between two protection evaluations over the next `window_s`
        (1-60 s) of normal running: the yardstick for a reload's gap (status.last_reload)."""
        window_s = min(max(float(window_s), 1.0), 60.0)
        bridge = self._gw().protection
        if bridge is None:
            raise KeyError("no protection scheme in the site file")
        engine = bridge.engine
        engine.watch_gaps()
        try:
            await asyncio.sleep(window_s)
        finally:
            engine.watch_gaps(False)
        return {"window_s": window_s, "longest_gap_s": engine.longest_gap_s}

    def _op_breaker_operate(self, breaker: str, action: str, authorised: bool = False, reason: str | None = None,
                            override: Any = None) -> dict[str, Any]:
        """Select and operate in one request (commissioning, tests): the same authority, interlocks
        and audit as any other road."""
        args: dict[str, Any] = {"breaker": breaker, "action": action, "authorised": authorised}
        if reason is not None:
            args["reason"] = reason
        if override is not None:
            args["override"] = override
        origin = _local_origin()
        selected = self._gw().commands.local("breaker/select", args, origin)
        return self._gw().commands.local("breaker/operate", {**args, "select_id": selected["select_id"]}, origin)

    # The origin of a local command is the unix user on the other end of the control socket,
    # from its peer credentials: a client cannot claim another operator's select.

    def _op_breaker_select(self, breaker: str, action: str, authorised: bool = False, reason: str | None = None,
                           override: Any = None) -> dict[str, Any]:
        return self._gw().commands.local("breaker/select", _args(breaker=breaker, action=action, authorised=authorised,
                                                                 reason=reason, override=override), _local_origin())

    def _op_breaker_operate_selected(self, breaker: str, action: str, select_id: str, authorised: bool = False,
                                     reason: str | None = None, override: Any = None) -> dict[str, Any]:
        return self._gw().commands.local("breaker/operate", _args(breaker=breaker, action=action, select_id=select_id,
                                                                  authorised=authorised, reason=reason,
                                                                  override=override), _local_origin())

    def _op_breaker_cancel(self, select_id: str) -> dict[str, Any]:
        return self._gw().commands.local("breaker/cancel", {"select_id": select_id}, _local_origin())

    def _op_breaker_status(self, breaker: str) -> dict[str, Any]:
        return self._gw().commands.breaker_status(breaker)

    def _op_transfer_request(self, tie: str, part: str, load_kw: float | None = None,
                             window_s: float = 3600.0) -> dict[str, Any]:
        """An operator asks the neighbour beyond `tie` to take the part beyond `part` (its
        measured load unless given); the exchange then runs as the peak manager's would."""
        from gateway.switching.exchange import part_load_kw
        from gateway.switching.transfer import TransferError

        gw = self._gw()
        if gw.exchange is None:
            raise ValueError("no load transfer with neighbours here (no external tie, or no neighbour key in "
                             "[coordination])")
        if part not in gw.switching.network.devices:
            raise ValueError(f"{part!r} is not a switching device of this site")
        kw = part_load_kw(gw.switching, part) if load_kw is None else float(load_kw)
        try:
            xid = gw.exchange.request(str(tie), part, kw, window_s=float(window_s))
        except TransferError as exc:
            raise ValueError(f"refused: {exc}") from None
        who = _local_origin().who
        self.store.append_event(self.clock.wall(), f"transfer:{xid}", "transfer.request",
                                {"tie": tie, "part": part, "load_kw": kw, "by": who})
        return {"xid": xid, "tie": tie, "part": part, "load_kw": round(kw, 1)}

    def _op_transfer_quote(self, tie: str, window_start: float, window_end: float, kva: float) -> dict[str, Any]:
        """Ask the neighbour beyond `tie` what it could carry in a future window (a quote: nothing
        switched, nothing reserved); its answer shows in `transfer.status` under `quotes`."""
        from gateway.switching.transfer import TransferError

        gw = self._gw()
        if gw.exchange is None:
            raise ValueError("no coordination with neighbours here (no external tie, or no neighbour key in "
                             "[coordination])")
        try:
            xid = gw.exchange.ask_quote(str(tie), float(window_start), float(window_end), float(kva))
        except TransferError as exc:
            raise ValueError(f"refused: {exc}") from None
        return {"xid": xid, "tie": tie, "window_start": float(window_start), "window_end": float(window_end),
                "kva": float(kva)}

    def _op_switching_show(self, id: str) -> dict[str, Any]:
        return self._gw().switching.runner.get(id).to_dict()

    def _parse_sequence(self, text: str, name: str) -> Any:
        from gateway.switching.sequences import parse

        if not isinstance(text, str) or len(text) > 256 * 1024:
            raise ValueError("a sequence document is text of 256 KiB at most")
        return parse(text, str(name)[:200], created_by=_local_origin().who, now_wall=self.clock.wall())

    def _op_switching_validate(self, text: str, name: str = "sequence") -> dict[str, Any]:
        seq = self._parse_sequence(text, name)
        problems = self._gw().switching.validate_sequence(seq)
        return {"name": seq.name, "valid": not problems, "problems": problems,
                "steps": [s.to_dict() for s in seq.steps]}

    def _op_switching_submit(self, text: str, name: str = "sequence", run: bool = False) -> dict[str, Any]:
        seq = self._parse_sequence(text, name)
        return self._switching_refusal(lambda: self._gw().switching.submit_sequence(seq, _local_origin(),
                                                                                    run=bool(run)).to_dict())

    def _switching_call(self, what: str, seq_id: str) -> dict[str, Any]:
        gw = self._gw()
        fn = gw.switching.approve if what == "approve" else gw.switching.abort
        return self._switching_refusal(lambda: fn(seq_id, _local_origin()).to_dict())

    def _op_faults_clear(self, id: str, reason: str) -> dict[str, Any]:
        return self._switching_refusal(lambda: self._gw().switching.clear_fault(id, _local_origin(), str(reason))
                                       .to_dict())

    def _op_tags_add(self, target: str, reason: str) -> dict[str, Any]:
        gw = self._gw()

        def add() -> dict[str, Any]:
            tag = gw.switching.authority.add_tag(target, _local_origin(), str(reason), self.clock.monotonic())
            gw.switching.tick()
            return {"target": tag.target, "who": tag.who, "reason": tag.reason, "time": tag.time}
        return self._switching_refusal(add)

    def _op_tags_remove(self, target: str, reason: str) -> dict[str, Any]:
        gw = self._gw()

        def remove() -> dict[str, Any]:
            n = gw.switching.authority.remove_tags(target, _local_origin(), str(reason))
            gw.switching.tick()
            return {"target": target, "removed": n}
        return self._switching_refusal(remove)

    @staticmethod
    def _switching_refusal(fn: Callable[[], Any]) -> Any:
        """Refusals of the switching authority go back as errors that name their reason code."""
        from gateway.switching.authority import Refused

        try:
            return fn()
        except Refused as exc:
            raise PermissionError(f"refused ({exc.interlock or exc.reason}): {exc.message}") from None

    def _op_points_list(self, pattern: str = "*", source: str | None = None) -> list[dict[str, Any]]:
        import fnmatch

        return [
            p.as_dict()
            for p in self._gw().image.points.values()
            if fnmatch.fnmatchcase(p.point_id, pattern) and (source is None or p.source == source)
        ]

    def _op_points_history(self, id: str, since: float = 0.0, until: float | None = None,
                           limit: int = 10_000) -> list[dict[str, Any]]:
        rows = self.store.history(id, since=float(since), until=math.inf if until is None else float(until),
                                  limit=min(int(limit), 100_000))
        if not rows and id not in self._gw().image:
            raise KeyError(f"no such point: {id}")
        return rows

    def _op_points_read(self, ids: list[str]) -> list[dict[str, Any]]:
        image = self._gw().image
        missing = [i for i in ids if i not in image]
        if missing:
            raise KeyError(f"no such point(s): {', '.join(missing)}")
        return [image[i].as_dict() for i in ids]

    async def _op_points_watch(self, pattern: str = "*", max_rate_hz: float = 10.0) -> AsyncIterator[dict[str, Any]]:
        import fnmatch

        gw = self._gw()
        changed: dict[str, Point] = {}
        wake = asyncio.Event()

        def listener(point: Point, _update: PointUpdate) -> None:
            if fnmatch.fnmatchcase(point.point_id, pattern):
                changed[point.point_id] = point
                wake.set()

        gw.image.subscribe_all(listener)
        try:
            for point in gw.image.points.values():
                if fnmatch.fnmatchcase(point.point_id, pattern):
                    yield point.as_dict()
            while gw is self.gateway:
                await wake.wait()
                wake.clear()
                batch, changed = list(changed.values()), {}
                for point in batch:
                    yield point.as_dict()
                await asyncio.sleep(1.0 / max(max_rate_hz, 0.1))
        finally:
            gw.image.unsubscribe_all(listener)


def _local_origin() -> Origin:
    """Who is calling on the control socket: the peer's unix user, with the role of its groups."""
    user = control.peer_user()
    who = "local:" + ("".join(c for c in user if c.isalnum() or c in "._-")[:64] or "unknown")
    return Origin(via=Via.LOCAL, who=who, role=control.peer_identity().role)


def _args(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stima-gatewayd", description="Stima substation gateway daemon")
    parser.add_argument("--config", "-c", type=Path, default=Path("/etc/stima/site.toml"), help="site file (TOML)")
    parser.add_argument("--log-level", default=os.environ.get("STIMA_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"stima-gatewayd {__version__}")
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        site = load_site(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("invalid site file", extra={"file": exc.source, "problem": str(problem)})
        print(str(exc), file=sys.stderr)
        return 2
    server = Server(args.config)
    try:
        return asyncio.run(server.serve(site))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
