"""The daemon's side of disturbance recording and of the status-change log (the I/O around
`gateway.records`): bay recorders fed from the process image and the protection bridge, records
written as COMTRADE files under the retention bound, announced on MQTT (`…/records`) and in the
event log, listed and fetched over the control socket. Binary points' changes are logged with
the IED's own time stamp for the sequence-of-events export.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import comtrade
from gateway.agents.schema import PowerLineAttributes
from gateway.config import SiteConfig
from gateway.contract.settings import Iec61850Ied, ModbusRtuIed, ModbusTcpIed
from gateway.fault_location import FaultEstimate, LineImpedance
from gateway.contract.points import Point, PointKind, PointUpdate, ProcessImage
from gateway.records import (
    ANALOG_CHANNELS,
    BayChannels,
    BayRecorder,
    DisturbanceRecord,
    RecorderSettings,
    header_text,
    record_id,
)

log = logging.getLogger("stima.records")

SUFFIXES = (".cfg", ".dat", ".hdr", ".json")
MAX_GET_BYTES = 32 * 1024 * 1024
_FORMAT = {"binary": "BINARY", "ascii": "ASCII", "float32": "FLOAT32"}
SCHEME_INPUTS = ("ia", "ib", "ic", "in", "voltage_kv", "frequency_hz")


def bay_channels(site: SiteConfig, image: ProcessImage, network: Any) -> list[BayChannels]:
    """Every protected breaker's channels: the scheme's inputs, the breaker agent's measurements
    and the points named `<breaker>.<channel>`, where the process image has them."""
    agents = {a.id: a for a in site.agents}
    out = []
    for scheme in site.protection:
        breaker = scheme.breaker
        agent_points = agents[breaker].points if breaker in agents else {}
        analog: dict[str, str] = {}
        for name, _, _ in ANALOG_CHANNELS:
            candidates = [scheme.point(name)] if name in SCHEME_INPUTS else []
            candidates += [agent_points.get(name, ""), f"{breaker}.{name}"]
            point = next((p for p in candidates if p and p in image), None)
            if point is not None and image[point].kind is not PointKind.BINARY:
                analog[name] = point
        closed = scheme.point("closed")
        line, sections = _line_of(site, network, breaker, agents)
        out.append(
            BayChannels(
                breaker=breaker,
                analog=analog,
                closed_point=closed if closed in image else None,
                elements=tuple(name for name, _, _ in scheme.configured_elements()),
                line=line,
                sections=sections,
            )
        )
    return out


def _line_of(
    site: SiteConfig, network: Any, breaker: str, agents: dict[str, Any]
) -> tuple[LineImpedance | None, tuple[tuple[str, float, float], ...]]:
    """The line the breaker feeds (its impedance, from the site file) and that line's sections."""
    device = network.devices.get(breaker) if network is not None else None
    first = network.sections.get(device.b) if device is not None else None
    if first is None or first.line not in agents:
        return None, ()
    attrs = PowerLineAttributes.model_validate(agents[first.line].attributes)
    z = attrs.impedance
    line = LineImpedance(
        complex(z.r_ohm_per_km, z.x_ohm_per_km), complex(z.r0_ohm_per_km, z.x0_ohm_per_km), attrs.length
    )
    sections = tuple((s.id, s.from_m, s.to_m) for s in network.sections.values() if s.line == first.line)
    return line, sections


def sampling_notes(site: SiteConfig, channels: BayChannels, image: ProcessImage) -> list[str]:
    ieds = {image[p].source for p in channels.analog.values()}
    notes = []
    for ied_id in sorted(ieds):
        try:
            ied = site.ied(ied_id)
        except KeyError:
            continue
        if isinstance(ied, Iec61850Ied):
            how = (
                f"IEC 61850 reports ({', '.join(ied.report_control_blocks)}), integrity {ied.poll_period_ms} ms"
                if ied.report_control_blocks
                else f"IEC 61850 reads every {ied.poll_period_ms} ms"
            )
        elif isinstance(ied, ModbusTcpIed | ModbusRtuIed):
            how = f"{'Modbus TCP' if isinstance(ied, ModbusTcpIed) else 'Modbus RTU'} polled every {ied.poll_period_ms} ms"
        else:
            how = "as received"
        notes.append(f"{ied_id}: {how}")
    return notes


class Recording:
    """Wired by the daemon's Gateway; `run()` is its task."""

    def __init__(
        self,
        site: SiteConfig,
        *,
        image: ProcessImage,
        network: Any,
        store: Any,
        publish: Callable[[str, dict[str, Any]], None],
        monotonic: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        cfg = site.records
        self.site = site
        self.cfg = cfg
        self.image = image
        self.store = store
        self._publish = publish
        self._monotonic = monotonic
        self._wall = wall
        self.directory = Path(cfg.directory) if cfg.directory else Path(site.site.state_dir) / "records"
        self._seq = 0
        self._wake = asyncio.Event()
        self.recorders: dict[str, BayRecorder] = {}
        self.written = 0
        self.write_failures = 0
        settings = RecorderSettings(
            pre_fault_s=cfg.pre_fault_s, post_fault_s=cfg.post_fault_s, max_record_s=cfg.max_record_s
        )
        if cfg.enabled:
            for channels in bay_channels(site, image, network):
                recorder = BayRecorder(channels, settings, self._new_id)
                self.recorders[channels.breaker] = recorder
                for point in recorder.points:
                    image.subscribe(point, self._on_point)
        self._point_bays: dict[str, list[BayRecorder]] = {}
        for recorder in self.recorders.values():
            for point in recorder.points:
                self._point_bays.setdefault(point, []).append(recorder)
        self._last_status: dict[str, Any] = {}
        if cfg.log_status_changes:
            image.subscribe_all(self._on_any_point)

    def _new_id(self, breaker: str, wall: float) -> str:
        self._seq += 1
        return record_id(breaker, wall, self._seq)

    # ------------------------------------------------------------------ inputs

    def _on_point(self, point: Point, update: PointUpdate) -> None:
        for recorder in self._point_bays.get(point.point_id, ()):
            recorder.on_point(
                point.point_id, update.value, update.quality.good, update.receive_monotonic, update.receive_time
            )

    def on_protection_event(self, event: Any) -> None:
        """A protection event (the bridge's listener; runs before the switching service's, so a
        trip's fault location is there when the fault record opens)."""
        recorder = self.recorders.get(event.breaker)
        if recorder is None:
            return
        wall = self._wall() - max(0.0, self._monotonic() - event.time)
        recorder.on_decision(event.kind, event.element, event.phase, event.current_a, event.time, wall)
        if event.kind in ("trip", "dropout"):  # a record opens, or its end moves
            self._wake.set()

    def latest_estimate(self, breaker: str) -> dict[str, Any] | None:
        """The fault location of the breaker's latest trip (for the fault record and FLISR)."""
        recorder = self.recorders.get(breaker)
        estimate: FaultEstimate | None = recorder.last_estimate if recorder is not None else None
        return None if estimate is None else estimate.to_dict()

    def _on_any_point(self, point: Point, update: PointUpdate) -> None:
        """A binary point's change → the event log, with the IED's time stamp when it gives one."""
        if point.kind is not PointKind.BINARY or not update.quality.good or update.value is None:
            return
        value = bool(update.value)
        previous = self._last_status.get(point.point_id)
        self._last_status[point.point_id] = value
        if previous is None or previous == value:
            return  # the first value is no change
        payload = {
            "point": point.point_id,
            "value": value,
            "previous": previous,
            "ied": point.source,
            "source_time": update.source_time,
            "receive_time": update.receive_time,
        }
        try:
            self.store.append_event(update.receive_time, point.point_id.split(".")[0], "status.change", payload)
        except Exception:
            log.exception("status change not logged", extra={"point": point.point_id})

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Write finished records; asleep until a trip, then until its window ends."""
        if not self.recorders:
            return
        await asyncio.to_thread(self._enforce_retention)
        while True:
            deadlines = [d for r in self.recorders.values() if (d := r.next_deadline()) is not None]
            delay = None if not deadlines else max(0.0, min(deadlines) - self._monotonic()) + 0.01
            self._wake.clear()
            try:
                async with asyncio.timeout(delay if delay is not None else 3600.0):
                    await self._wake.wait()
            except TimeoutError:
                pass
            await self.flush(self._monotonic())

    async def flush(self, now: float) -> list[dict[str, Any]]:
        written = []
        for recorder in self.recorders.values():
            for record in recorder.poll(now):
                try:
                    summary = await asyncio.to_thread(self._write, record)
                except Exception as exc:
                    self.write_failures += 1
                    log.exception("disturbance record not written", extra={"record": record.record_id})
                    self._publish(
                        "alarms",
                        {
                            "time": self._wall(),
                            "source": record.breaker,
                            "severity": "warning",
                            "message": f"disturbance record {record.record_id} not written: {exc}",
                        },
                    )
                    continue
                self.written += 1
                written.append(summary)
                self._publish("records", {"time": self._wall(), **summary})
                try:
                    self.store.append_event(self._wall(), record.breaker, "record.written", summary)
                except Exception:
                    log.exception("record event not logged")
        return written

    async def stop(self) -> None:
        """Write what is being recorded now (a shutdown during a disturbance keeps its record)."""
        for recorder in self.recorders.values():
            recorder._until = min(recorder._until, self._monotonic())  # noqa: SLF001 - ends the window
        await self.flush(self._monotonic())

    # ------------------------------------------------------------------ files

    def _write(self, record: DisturbanceRecord) -> dict[str, Any]:
        scheme = next(s for s in self.site.protection if s.breaker == record.breaker)
        channels = record.channels
        names = record.analog_names
        units = {name: (unit, phase) for name, unit, phase in ANALOG_CHANNELS}
        analog = [
            comtrade.AnalogChannel(name=n, unit=units[n][0], phase=units[n][1], circuit=record.breaker) for n in names
        ]
        digital = [comtrade.DigitalChannel(name=d, circuit=record.breaker) for d in channels.digital_names]
        rows = record.rows or []
        station = self.site.site.substation_id
        header = header_text(
            record,
            scheme.model_dump(mode="json", by_alias=True, exclude_none=True),
            station,
            sampling_notes(self.site, channels, self.image),
        )
        data = comtrade.Record(
            station=station,
            device=f"stima {record.breaker}",
            analog=analog,
            digital=digital,
            times=[r.wall for r in rows],
            analog_values=[r.analog for r in rows],
            digital_values=[r.digital for r in rows],
            trigger_time=record.trigger_wall,
            line_frequency_hz=_frequency(self.site),
            header=header,
        )
        fmt = _FORMAT[self.cfg.format]
        cfg, dat, hdr = comtrade.write(data, fmt)  # type: ignore[arg-type]
        self.directory.mkdir(parents=True, exist_ok=True)
        base = self.directory / record.record_id
        summary = {
            **record.summary(),
            "format": fmt.lower(),
            "channels": {"analog": names, "digital": channels.digital_names},
            "files": [f"{record.record_id}{s}" for s in SUFFIXES],
            "bytes": len(cfg) + len(dat) + len(hdr),
        }
        for suffix, content in (
            (".cfg", cfg),
            (".dat", dat),
            (".hdr", hdr),
            (".json", json.dumps(summary, indent=2, default=str).encode()),
        ):
            tmp = base.with_name(base.name + suffix + ".tmp")
            tmp.write_bytes(content)
            os.replace(tmp, base.with_name(base.name + suffix))
        self._enforce_retention()
        log.info("disturbance record written", extra={"record": record.record_id, "samples": len(rows)})
        return summary

    def _enforce_retention(self) -> None:
        """Oldest first, until the count and the total size are within the site's bounds."""
        entries = self.list()
        total = sum(self._size(e["record_id"]) for e in entries)
        limit = self.cfg.max_total_mb * 1024 * 1024
        while entries and (len(entries) > self.cfg.max_records or total > limit):
            oldest = entries.pop(0)
            total -= self._size(oldest["record_id"])
            for suffix in SUFFIXES:
                (self.directory / f"{oldest['record_id']}{suffix}").unlink(missing_ok=True)
            log.info("disturbance record removed (retention)", extra={"record": oldest["record_id"]})

    def _size(self, rid: str) -> int:
        total = 0
        for suffix in SUFFIXES:
            path = self.directory / f"{rid}{suffix}"
            if path.exists():
                total += path.stat().st_size
        return total

    def list(self, breaker: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Summaries of the records on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        out = []
        for path in self.directory.glob("*.json"):
            try:
                summary = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(summary, dict) or "record_id" not in summary:
                continue
            if breaker is not None and summary.get("breaker") != breaker:
                continue
            if since is not None and float(summary.get("trigger_time", 0.0)) < since:
                continue
            out.append(summary)
        out.sort(key=lambda s: (float(s.get("trigger_time", 0.0)), str(s["record_id"])))
        return out

    def get(self, record_id: str) -> dict[str, Any]:
        """A record's files, base64 (the CLI may not read the state directory itself)."""
        if not record_id or any(c in record_id for c in "/\\") or record_id.startswith("."):
            raise ValueError(f"{record_id!r} is not a record id")
        summary_path = self.directory / f"{record_id}.json"
        if not summary_path.exists():
            raise KeyError(f"no record {record_id!r} (see `stima records list`)")
        files = {}
        total = 0
        for suffix in SUFFIXES:
            path = self.directory / f"{record_id}{suffix}"
            if path.exists():
                content = path.read_bytes()
                total += len(content)
                if total > MAX_GET_BYTES:
                    raise ValueError(
                        f"record {record_id} is larger than {MAX_GET_BYTES} bytes: copy it from {self.directory}"
                    )
                files[path.name] = base64.b64encode(content).decode()
        return {"summary": json.loads(summary_path.read_text()), "files": files}

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.cfg.enabled,
            "bays": sorted(self.recorders),
            "written": self.written,
            "write_failures": self.write_failures,
            "directory": str(self.directory),
            "recording": sorted(b for b, r in self.recorders.items() if r.next_deadline() is not None),
        }


def _frequency(site: SiteConfig) -> float:
    """The system frequency: 60 Hz where a frequency element is set about 60 Hz, else 50 Hz."""
    for scheme in site.protection:
        for element in (scheme.elements.uf81, scheme.elements.of81):
            if element is not None:
                return 60.0 if element.pickup_hz > 55.0 else 50.0
    return 50.0
