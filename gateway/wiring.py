"""The composition root: one site file's configuration, wired from the IEDs to the uplink.

`Gateway` builds every part of one running configuration and connects them: who feeds whom is
read top to bottom in its constructor. Nothing here decides (the parts do, with `now` passed in)
and nothing here loops (gateway/scheduling.py does); this is the one module of the gateway core
that picks the adapters and the uplink of `protocols/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__, scheduling
from gateway.contract.clock import Clock
from gateway.config import ConfigError, ConfigProblem, SiteConfig
from gateway.memory import freeze_long_lived
from gateway.contract.points import Point, PointBlock, PointKind, PointUpdate, ProcessImage
from gateway.scheduling import Periods
from gateway.storage import Store
from gateway.contract.ports import Adapter, CommandError, Priority, Sink
from protocols.base import make_adapter

if TYPE_CHECKING:
    from protocols.mqtt import MqttUplink

log = logging.getLogger("stima.daemon")

SHUTDOWN_DEADLINE_S = 10.0
GIL_SWITCH_INTERVAL_S = 0.0002
STATE_TOPICS_SNAPSHOT = "uplink.state_topics"
"""The agents whose `state/<agent>` this gateway has retained on the broker."""

AdapterFactory = Callable[[Any, Sink, Clock, logging.Logger], Adapter]
"""Makes the adapter of one IED from its settings (protocols.base.make_adapter picks the class by
the IED's protocol)."""
UplinkFactory = Callable[[SiteConfig, Store, Clock, Path], "MqttUplink"]
"""Makes the northbound uplink of a site (the MQTT uplink unless a test gives its own)."""


def _mqtt_uplink(site: SiteConfig, store: Store, clock: Clock, base_dir: Path) -> MqttUplink:
    from protocols.mqtt import MqttUplink

    return MqttUplink(
        site.uplink,
        site.site,
        store,
        clock,
        logging.getLogger("stima.uplink"),
        base_dir=base_dir,
        urgent_topics=("alarms", "events", "notices", "cmd_result"),
    )


class Gateway:
    """One configuration generation, wired: IEDs → process image → protection, agents, switching,
    telemetry → uplink, in the order the constructor below reads.

    The uplink's end is built first because every part after it publishes through it; the IED
    adapters last (`build_adapters`, no I/O), since they only feed the image through `_sink`.
    `adapter_factory` and `uplink_factory` are the seams where the transports are chosen: the
    real Modbus / IEC 61850 adapters and the MQTT uplink unless a caller (a test harness) gives
    others of the same shape.
    """

    def __init__(
        self,
        site: SiteConfig,
        *,
        base_dir: Path,
        clock: Clock,
        store: Store,
        adapter_factory: AdapterFactory = make_adapter,
        uplink_factory: UplinkFactory | None = None,
        periods: Periods = Periods(),
    ) -> None:
        self.site = site
        self.base_dir = base_dir
        self.clock = clock
        self.store = store
        self.periods = periods
        self._adapter_factory = adapter_factory
        self._uplink_factory = uplink_factory or _mqtt_uplink
        # IEDs → the process image: every point of every IED, defined once, with its source
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
        # the far end first: alarms and the uplink, which every part below publishes through;
        # the image's changes → telemetry batches → uplink
        self._build_alarms()
        self._build_uplink()
        # the image's samples → protection (C core) → trips to the adapters, events to the uplink
        self._build_protection()
        # the image and protection events → agents → notices, state, operations
        self._build_agents()
        # every road to the plant (agents, SCADA, operator, FLISR) → the one switching authority
        self._build_switching()
        # meter readings from the AMI feed → agents and demand response
        self._build_ami()
        # neighbouring substations ↔ load transfer; the peak manager on top of both
        self._build_coordination()
        self._build_peak()
        # protection events and the image → disturbance records, status-change log
        self._build_recording()
        # history → transformer health → work orders
        self._build_maintenance()
        # SCADA commands (uplink) → SBO engine → switching
        self._build_commands()
        # the image → history buckets → the state database
        self._build_history()
        # the image → IEC 104 outstation; its commands → switching
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

        self.telemetry = Telemetry.from_site(self.site)
        self.uplink = self._uplink_factory(self.site, self.store, self.clock, self.base_dir)
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
        self.telemetry_wake = asyncio.Event()
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
            engine,
            self.image,
            submit=self.submit,
            store=self.store,
            publish=self.publish,
            publish_many=self.uplink.publish_many,
            wall=self.clock.wall,
            monotonic=self.clock.monotonic,
            defer=asyncio.get_running_loop().call_soon,
        )

    def _build_agents(self) -> None:
        from gateway.agent_host import AgentHost

        self.agents = AgentHost(
            self.site,
            self.image,
            store=self.store,
            publish=self.publish,
            monotonic=self.clock.monotonic,
            wall=self.clock.wall,
            defer=asyncio.get_running_loop().call_soon,
        )
        if self.protection is not None:
            self.protection.event_listeners.append(self.agents.on_protection_event)

    def _build_switching(self) -> None:
        """The one switching authority every road to the plant goes through (gateway/switching/)."""
        from gateway.switching.flisr import FlisrSettings
        from gateway.switching.service import SwitchingService

        self.switching_wake = asyncio.Event()
        f = self.site.flisr
        self.switching = SwitchingService(
            self.site,
            image=self.image,
            store=self.store,
            publish=self.publish,
            submit=lambda point, value: self.submit(point, value, Priority.CONTROL),
            protection=self.protection,
            agents=self.agents,
            monotonic=self.clock.monotonic,
            wall=self.clock.wall,
            wake=self.switching_wake.set,
            flisr=FlisrSettings(
                mode=f.mode,
                settle_s=f.settle_s,
                step_timeout_s=f.step_timeout_s,
                min_voltage_pu=f.min_voltage_pu,
                max_replans=f.max_replans,
            ),
            select_timeout_s=self.site.uplink.commands.select_timeout_s,
        )
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

            self.ami = AmiSubscriber(
                self.site.ami,
                self.site.site.substation_id,
                self._ingest_meters,
                self.clock,
                logging.getLogger("stima.ami"),
            )

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
            log.error(
                "external ties but no neighbour's public key in [coordination] neighbours: load transfer is off",
                extra={"neighbours": sorted(neighbours)},
            )
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
            self.site.site.substation_id,
            region_base,
            switching=self.switching,
            publish=self.publish,
            sign=own.sign,
            verify=verify,
            headroom=self._headroom,
            monotonic=self.clock.monotonic,
            wall=self.clock.wall,
            alarm=self._transfer_alarm,
            max_age_s=cfg.max_age_s,
            window_headroom=self._window_headroom,
        )
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
                log.error(
                    "[coordination] neighbour key unusable: load transfer with it is off",
                    extra={"neighbour": name, "error": str(exc)},
                )
        return out

    def _headroom(self, tie: str, kw: float) -> tuple[float, str]:
        if self.peak is None:
            return 0.0, "this substation does not manage its peak ([peak] is off): no headroom known"
        headroom: tuple[float, str] = self.peak.headroom(tie, kw)
        return headroom

    def _window_headroom(self, tie: str, kva: float, start: float, end: float) -> tuple[float, str]:
        if self.peak is None:
            return 0.0, "this substation does not manage its peak ([peak] is off): no headroom known"
        headroom: tuple[float, str] = self.peak.window_headroom(tie, kva, start, end)
        return headroom

    def _transfer_alarm(self, xid: str, severity: str, message: str) -> None:
        self.store.append_event(
            self.clock.wall(), f"transfer:{xid}", "alert", {"severity": severity, "message": message}
        )
        self.publish(
            "alarms", {"time": self.clock.wall(), "source": f"transfer:{xid}", "severity": severity, "message": message}
        )

    def _build_peak(self) -> None:
        self.peak: Any = None
        if not self.site.peak.enabled:
            return
        from gateway.peak_service import PeakService

        self.peak = PeakService(
            self.site,
            switching=self.switching,
            agents=self.agents,
            image=self.image,
            store=self.store,
            publish=self.publish,
            monotonic=self.clock.monotonic,
            wall=self.clock.wall,
            exchange=self.exchange,
            ami=self.ami,
        )

    def _build_recording(self) -> None:
        """Disturbance records (COMTRADE) and the status-change log (gateway/recording.py)."""
        from gateway.recording import Recording

        self.recording = Recording(
            self.site,
            image=self.image,
            network=self.switching.network,
            store=self.store,
            publish=self.publish,
            monotonic=self.clock.monotonic,
            wall=self.clock.wall,
        )
        if self.protection is not None:  # first: a trip's fault location is ready when its fault record opens
            self.protection.event_listeners.insert(0, self.recording.on_protection_event)
        self.switching.fault_locator = self.recording.latest_estimate

    def _build_maintenance(self) -> None:
        """Predictive maintenance: health from the history, work orders, backup plans (gateway/maintenance/)."""
        from gateway.maintenance.service import MaintenanceService

        self.maintenance_wake = asyncio.Event()
        self.maintenance_service: Any = None
        if self.site.maintenance.enabled:
            from gateway.maintenance.backup import QuotedNeighbour

            exchange = getattr(self, "exchange", None)
            neighbour = QuotedNeighbour(self.switching.network, exchange.ask_quote if exchange is not None else None)
            self.maintenance_service = MaintenanceService(
                self.site,
                store=self.store,
                agents=self.agents,
                switching=self.switching,
                publish=self.publish,
                wall=self.clock.wall,
                monotonic=self.clock.monotonic,
                ask_neighbour=neighbour,
            )
            if exchange is not None:

                def heard(answer: Any) -> None:
                    if neighbour.on_answer(answer) and self.maintenance_service.on_quote(answer):
                        self.maintenance_wake.set()

                exchange.quote_listeners.append(heard)
            self.agents.message_listeners.append(self._maintenance_heard)

    def _maintenance_heard(self, message: Any) -> None:
        if message.kind == "maintenance_request":
            self.maintenance_wake.set()

    async def maintenance_evaluate(self, only: str | None = None) -> list[dict[str, Any]]:
        """Evaluate the monitored transformers now (the history read and the numbers off the loop)."""
        svc = self.maintenance_service
        if svc is None:
            raise RuntimeError("maintenance is off in the site file ([maintenance] enabled = false)")
        targets = [only] if only is not None else sorted(svc.monitored)
        unknown = [t for t in targets if t not in svc.monitored]
        if unknown:
            raise KeyError(
                f"not a monitored transformer: {', '.join(unknown)} (monitored: "
                f"{', '.join(sorted(svc.monitored)) or 'none'})"
            )
        out = []
        for xfmr in targets:
            evaluation = await asyncio.to_thread(svc.evaluate, xfmr, self.clock.wall())
            svc.apply(evaluation)
            memory = self.agents.runtime.memory[xfmr]
            out.append(
                {
                    "transformer": xfmr,
                    "seconds": round(evaluation.seconds, 4),
                    **(getattr(memory, "health", None) or {}),
                }
            )
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
            log.error(
                "the key book could not be read: no Ed25519 key is trusted until it is repaired",
                extra={"error": str(exc)},
            )
            self.keys = KeyBook()
        if cfg.enabled and cfg.scheme == "hmac" and path is not None:
            try:
                key = read_key(path)
            except ValueError as exc:
                raise ConfigError(str(path), [ConfigProblem("uplink.commands.key_file", str(exc))]) from None
        self.commands = CommandService(
            cfg,
            key=key,
            substation=self.site.site.substation_id,
            nonces=self.store,
            plant=self,
            publish=lambda suffix, payload: self.uplink.publish(suffix, payload, qos=1, retain=False),
            audit=self.store.append_event,
            wall=self.clock.wall,
            monotonic=self.clock.monotonic,
            keys=self.keys,
        )
        self.uplink.on_command(self.commands.on_mqtt)
        if cfg.enabled and cfg.scheme == "hmac":
            log.warning(
                "remote commands use the shared-secret (hmac) compatibility scheme: whoever reads the "
                "key file can sign commands; prefer Ed25519 keys (scheme = 'ed25519', stima keys add)"
            )
        if not cfg.enabled:
            log.info("remote commands are disabled in the site file (uplink.commands.enabled)")

    def _build_history(self) -> None:
        from gateway.history import HistoryAggregator

        cfg = self.site.history
        self.history = HistoryAggregator(cfg.interval_s) if cfg.enabled else None
        if self.history is not None:
            self.image.subscribe_blocks(self.history.on_block, self.history.on_point)

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
        handler = CommandHandler(
            point_map,
            self,
            Role.parse(cfg.role),
            position_point=lambda d: devices[d].points.get("closed") if d in devices else None,
            on_return=lambda p: self.iec104.expect_return(p),
            max_delay_s=cfg.command_max_delay_s,
        )
        self.iec104 = Iec104Outstation(
            cfg,
            point_map,
            self.image,
            handler,
            reporter,
            self.clock,
            logging.getLogger("stima.iec104"),
            base_dir=self.base_dir,
        )
        self.iec104.audit = self.store.append_event

    # ------------------------------------------------------------------ messages out, samples in

    def publish(self, suffix: str, payload: dict[str, Any], retain: bool = False) -> None:
        if suffix == "alarms":  # every alarm, whoever raises it, goes through the alarm book
            self.alarms.raise_alarm(
                str(payload.get("source", "gateway")),
                str(payload.get("severity", "major")),
                str(payload.get("message", "")),
                float(payload.get("time", self.clock.wall())),
            )
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
            self.uplink.publish_many(
                [("alarms", {"time": self.clock.wall(), "state": state, **alarm.as_dict()}) for state, alarm in changes]
            )
            self.uplink.publish(
                "alarms/active",
                {"time": self.clock.wall(), "alarms": [a.as_dict() for a in self.alarms.active()]},
                retain=True,
            )
            self.store.save_snapshot(SNAPSHOT_KEY, self.alarms.snapshot(), self.clock.wall())
        except Exception:
            log.exception("alarms could not be published")

    def acknowledge_alarm(self, alarm_id: str, origin: Any) -> dict[str, Any]:
        """An operator acknowledged an alarm (SCADA command, control socket, or the HMI's user
        name as `hmi:<user>`); audited."""
        who = origin if isinstance(origin, str) else origin.who
        alarm = self.alarms.acknowledge(alarm_id, who, self.clock.wall())
        self.store.append_event(
            self.clock.wall(),
            alarm.source,
            "alarm.acknowledged",
            {"id": alarm.id, "origin": who, "message": alarm.message},
        )
        self._flush_alarms()
        return alarm.as_dict()

    def _on_point_for_uplink(self, point: Point, update: PointUpdate) -> None:
        self.updates_applied += 1
        if self.telemetry.on_change(point, update.receive_monotonic) or self.telemetry.pending == 1:
            self.telemetry_wake.set()

    def _on_block_for_uplink(self, points: Sequence[Point], block: PointBlock) -> None:
        self.updates_applied += len(points)
        telemetry = self.telemetry
        was_idle = telemetry.pending == 0
        if telemetry.on_points(points, block.receive_monotonic) or (was_idle and telemetry.pending):
            self.telemetry_wake.set()

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

    # ------------------------------------------------------------------ this configuration's lifetime

    async def start(self, *, freeze: bool = True) -> None:
        """Start this configuration: adapters built (unless handed over), every loop running
        (gateway/scheduling.py). A reload passes `freeze=False` and freezes once the old
        configuration is dropped (gateway.memory.after_reload)."""
        # Everything built so far lives as long as this configuration: keep it out of the
        # cyclic collector's way so collections stay short on the protection path.
        if freeze:
            freeze_long_lived()
        # The uplink's network thread must not hold the interpreter for the default 5 ms
        # when the event loop has a trip to send.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self._clear_removed_states()
        self.build_adapters()
        await scheduling.start(self)

    def build_adapters(self) -> None:
        """Construct the adapter of every enabled IED (no I/O yet) unless already there (handed over)."""
        enabled = [ied for ied in self.site.ieds if ied.enabled]
        for n, ied in enumerate(enabled):
            if ied.id not in self.adapters:
                adapter = self._adapter_factory(ied, self._sink, self.clock, logging.getLogger("stima.ied"))
                adapter.poll_phase = n / len(enabled)
                self.adapters[ied.id] = adapter

    def _publish_states(self) -> None:
        """Every agent's current state and the active alarms, retained, after each birth (a broker
        that lost its retained messages has them again)."""
        try:
            self.uplink.publish_many(self.agents.current_states(), retain=True)
            self.uplink.publish(
                "alarms/active",
                {"time": self.clock.wall(), "alarms": [a.as_dict() for a in self.alarms.active()]},
                retain=True,
            )
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
        self.telemetry_wake.set()

    def flush_telemetry(self) -> None:
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
                return str(agent.type)
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
            "telemetry": {
                "changes_seen": self.telemetry.changes_seen,
                "changes_reported": self.telemetry.changes_reported,
            },
            "uplink": self.uplink.status(),
            "protection": None
            if self.protection is None
            else {
                "backend": self.protection.engine.backend_name,
                "commands_sent": self.protection.commands_sent,
                "command_failures": self.protection.command_failures,
                "breakers": {b: self.protection.engine.status(b) for b in sorted(self._protected_breakers)},
            },
            "agents": {
                "count": len(self.site.agents),
                "meters": sum(g.count for g in self.site.meter_groups),
                "actions": self.agents.actions_done,
                "control_refused": self.agents.control_refused,
                "notices": self.agents.notices_published,
            },
            "ami": None if self.ami is None else self.ami.status(),
            "commands": self.commands.status(),
            "switching": self.switching.status(),
            "peak": None if self.peak is None else self.peak.status(),
            "transfer": None if self.exchange is None else self.exchange.status(),
            "records": self.recording.status(),
            "iec104": None if self.iec104 is None else self.iec104.status(),
            "own_key": None
            if self.own_key is None
            else {"name": self.own_key.name, "public_key": self.own_key.public.hex()},
            "maintenance": None if self.maintenance_service is None else self.maintenance_service.status(),
        }
