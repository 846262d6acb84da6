"""The simulator runtime: the electrical model on a simulated clock, behind real IED servers.

One asyncio loop owns everything: the model is advanced in fixed steps of simulated time
(default 10 ms) paced at `speed` times real time (0 = as fast as possible), and after each
step the model's point values are written into the IED servers. Gateway writes arrive from the
servers' request handlers on the same loop and go to `model.apply_command` at once, so no lock
is needed and a trip command reaches the model within the request that carried it.

IEDs are served as the site file describes them: Modbus TCP on their host:port, Modbus RTU on
a socat pty pair whose gateway-side end is linked at the IED's `serial_port`, IEC 61850 by a
child process (`python -m hil.iec61850_server`) fed with JSON lines.

Injections (faults, lost links, load steps, temperature ramps, switching-device failures and
local control) are methods here; the control socket (`hil.control`) and scenario scripts call
them. A device in local control refuses gateway commands: the Modbus server answers exception
01, the IEC 61850 server refuses the control (told by a `{"local": ...}` line).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import inspect
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.agents.schema import AgentType
from gateway.contract.clock import SimClock, SystemClock
from gateway.config import SiteConfig
from gateway.contract.settings import Iec61850Ied
from hil.grid.switching import CommandRefused
from hil.injection import QUANTITIES, SecondaryInjection, check_states
from hil.modbus_servers import ModbusEndpoint, group_endpoints, wait_listening

log = logging.getLogger(__name__)

FAULT_KINDS = ("3ph", "ll", "llg", "slg")
"""Fault types accepted by `inject_fault`: three-phase, line-line, line-line-ground, single line-ground."""
FAULT_KIND_ALIASES = {
    "3ph": "3ph",
    "3p": "3ph",
    "abc": "3ph",
    "three_phase": "3ph",
    "ll": "ll",
    "2ph": "ll",
    "ph-ph": "ll",
    "line_line": "ll",
    "phase_phase": "ll",
    "llg": "llg",
    "2ph-g": "llg",
    "2phg": "llg",
    "slg": "slg",
    "1ph": "slg",
    "lg": "slg",
    "ph-g": "slg",
    "phase_ground": "slg",
}


class InjectionError(ValueError):
    """An injection request that names something unknown or carries a bad value."""


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    step_s: float = 0.01
    """Simulated time per model step."""
    speed: float = 1.0
    """Simulated seconds per real second; 0 runs as fast as the machine allows."""
    seed: int = 0
    meters: int | None = None
    """Smart meters in the AMI feed; None keeps the site's meter groups."""
    ami_interval_s: float = 900.0
    """Simulated seconds between two readings of every meter."""
    ami_batch_size: int = 1000
    """Meters per AMI message at most."""
    ami_first_reading_s: float = 5.0
    """Simulated seconds from start to the first reading (subscribers connect meanwhile)."""
    ami_messages_per_step: int = 4
    """AMI messages encoded and sent per model step at most (100 messages: 25 steps)."""
    ami: bool = True
    weather_interval_s: float = 900.0
    """Simulated seconds between two weather forecasts on the AMI broker (0: none)."""
    weather_horizon_s: float = 6 * 3600.0
    weather_step_s: float = 900.0
    bind_host: str | None = None
    """Listen on this address instead of each TCP IED's configured host (e.g. 0.0.0.0 on a rig)."""
    iec61850: bool = True
    max_lag_s: float = 1.0
    """Behind real time by more than this, the pacing gives up catching up and starts afresh."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_s) and 0 < self.step_s <= 10):
            raise ValueError(f"step_s must be in (0, 10] seconds, found {self.step_s!r}")
        if not (math.isfinite(self.speed) and self.speed >= 0):
            raise ValueError(f"speed must be >= 0 (0 = as fast as possible), found {self.speed!r}")
        if self.meters is not None and not 0 <= self.meters <= 1_000_000:
            raise ValueError(f"meters must be in [0, 1000000], found {self.meters!r}")
        if not (math.isfinite(self.ami_first_reading_s) and self.ami_first_reading_s >= 0):
            raise ValueError(f"ami_first_reading_s must be >= 0, found {self.ami_first_reading_s!r}")
        if not (math.isfinite(self.ami_interval_s) and self.ami_interval_s > 0):
            raise ValueError(f"ami_interval_s must be > 0, found {self.ami_interval_s!r}")
        if self.ami_batch_size < 1:
            raise ValueError(f"ami_batch_size must be >= 1, found {self.ami_batch_size!r}")


def build_model(site: SiteConfig, seed: int = 0, meters: int | None = None) -> Any:
    """The electrical model of `hil.grid.model` for this site."""
    from hil.grid.model import GridModel

    kwargs: dict[str, Any] = {"seed": seed}
    if meters is not None and "meters" in inspect.signature(GridModel.from_site).parameters:
        kwargs["meters"] = meters
    return GridModel.from_site(site, **kwargs)


class SerialLine:
    """A socat pty pair standing in for one RS-485 line: the gateway opens `gateway_path`."""

    def __init__(self, gateway_path: str) -> None:
        self.gateway_path = Path(gateway_path)
        self.sim_path = self.gateway_path.with_name(self.gateway_path.name + ".sim")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = 5.0) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat is not installed (Debian package 'socat'); RTU IEDs need it")
        self.gateway_path.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.gateway_path, self.sim_path):
            if path.is_symlink() or path.exists():
                path.unlink()
        self.process = await asyncio.create_subprocess_exec(
            socat,
            "-d",
            "-d",
            f"PTY,raw,echo=0,link={self.gateway_path}",
            f"PTY,raw,echo=0,link={self.sim_path}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not (self.gateway_path.exists() and self.sim_path.exists()):
            if self.process.returncode is not None or loop.time() > deadline:
                err = b""
                if self.process.stderr is not None and self.process.returncode is not None:
                    err = await self.process.stderr.read()
                await self.stop()
                raise RuntimeError(f"socat did not create {self.gateway_path}: {err.decode(errors='replace')[-300:]}")
            await asyncio.sleep(0.01)
        if self.process.stderr is not None:  # keep socat's stderr drained
            asyncio.get_running_loop().create_task(self._drain(self.process.stderr))

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await stream.readline():
                pass

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        for path in (self.gateway_path, self.sim_path):
            with contextlib.suppress(OSError):
                if path.is_symlink():
                    path.unlink()


class Iec61850Child:
    """One IEC 61850 IED served by `python -m hil.iec61850_server` in its own process.

    A separate process because libiec61850's Python bindings hold the GIL while waiting on the
    network; values go in as JSON lines on stdin, operated controls come back on stdout.
    """

    def __init__(self, ied: Iec61850Ied, site_path: Path, port: int, on_command: Callable[[str, Any], None]) -> None:
        self.ied = ied
        self.site_path = site_path
        self.port = port
        self.on_command = on_command
        self.point_ids = [p.id for p in ied.points]
        self.control_ids = {p.id for p in ied.points if p.control}
        self.process: asyncio.subprocess.Process | None = None
        self._last: dict[str, Any] = {}
        self._local: dict[str, bool] = {}
        self._reader: asyncio.Task[None] | None = None
        self.commands = 0
        self.silent = False

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hil.iec61850_server",
            "--config",
            str(self.site_path),
            "--ied",
            self.ied.id,
            "--port",
            str(self.port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._last.clear()
        self._local.clear()
        self._reader = asyncio.get_running_loop().create_task(self._read_commands())
        log.info("serving %s (IEC 61850) on port %d, pid %d", self.ied.id, self.port, self.process.pid)

    async def _read_commands(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        while True:
            line = await stdout.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
                cmd = msg["command"]
                point_id, value = str(cmd["point_id"]), cmd["value"]
            except (ValueError, KeyError, TypeError):
                log.debug("%s: ignoring a line from the server: %r", self.ied.id, line[:200])
                continue
            self.commands += 1
            try:
                self.on_command(point_id, value)
            except Exception:
                log.exception("%s: command %s=%r failed in the model", self.ied.id, point_id, value)
        process = self.process
        if process is not None:
            await process.wait()
            log.warning("%s: IEC 61850 server process ended (exit code %s)", self.ied.id, process.returncode)

    def set_local(self, flags: dict[str, bool]) -> None:
        """Tell the server which of its controls belong to a device in local control (it refuses
        them itself); written before the next values, so a client that reads the device's `Loc`
        as true will be refused."""
        process = self.process
        if process is None or process.stdin is None or process.returncode is not None:
            return
        for pid in sorted(self.control_ids & flags.keys()):
            if self._local.get(pid, False) != flags[pid]:
                self._local[pid] = flags[pid]
                try:
                    process.stdin.write((json.dumps({"local": {"point_id": pid, "on": flags[pid]}}) + "\n").encode())
                except (ConnectionError, BrokenPipeError):
                    log.warning("%s: IEC 61850 server process is gone", self.ied.id)
                    return

    async def update(self, values: dict[str, Any]) -> None:
        process = self.process
        if process is None or process.stdin is None or process.returncode is not None:
            return
        changed = {}
        for pid in self.point_ids:
            value = values.get(pid)
            if value is not None and self._last.get(pid) != value:
                changed[pid] = value
        if not changed:
            return
        self._last.update(changed)
        try:
            process.stdin.write((json.dumps({"values": changed}) + "\n").encode())
            await process.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            log.warning("%s: IEC 61850 server process is gone", self.ied.id)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None

    def status(self) -> dict[str, Any]:
        running = self.process is not None and self.process.returncode is None
        return {"ied": self.ied.id, "port": self.port, "running": running, "commands": self.commands}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and type(value).__module__ != "builtins" and hasattr(type(value), "__members__"):
        return value.value  # an Enum
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()  # a numpy scalar
    return str(value)


class HilRuntime:
    """The simulated substation: model, clock, IED servers, AMI feed and injections."""

    def __init__(
        self,
        site: SiteConfig,
        model: Any,
        options: RuntimeOptions = RuntimeOptions(),
        *,
        site_path: str | Path | None = None,
        clock: SimClock | None = None,
        sites: Sequence[tuple[SiteConfig, str | Path | None]] | None = None,
    ) -> None:
        self.site = site
        self.model = model
        self.options = options
        self.site_path = Path(site_path) if site_path is not None else None
        self.sites: list[tuple[SiteConfig, Path | None]] = (
            [(s, Path(p) if p is not None else None) for s, p in sites] if sites else [(site, self.site_path)]
        )
        """Each substation's own site file (several when one model serves neighbouring substations;
        `site` is then their merge): its AMI feed and the path its IEC 61850 servers load."""
        self.amis: list[Any] = []
        self.clock = clock or SimClock()
        self.steps = 0
        self.endpoints: list[ModbusEndpoint] = []
        self.serial_lines: list[SerialLine] = []
        self.iec_children: list[Iec61850Child] = []
        self.ami: Any = None
        self._endpoint_of: dict[str, ModbusEndpoint] = {}
        self._commloss_until: dict[str, float] = {}
        self._lose_tasks: dict[str, asyncio.Task[Any]] = {}
        self._stopping = asyncio.Event()
        self._started = False
        self.ready = False
        """Every IED server listening (status `ready`): a daemon started now finds them all."""
        self._pending: set[asyncio.Task[Any]] = set()
        self._next_ami_s: float | None = None
        self._next_weather_s: float | None = None
        self._origin_s: float | None = None
        self.lag_resets = 0
        self.step_time_s = 0.0
        self.max_step_s = 0.0
        """Real seconds spent in model steps and server updates, in total."""
        self.commands: list[tuple[float, str, Any]] = []
        """(sim time, point id, value) of the last gateway commands, most recent last."""
        self.refusals: list[dict[str, Any]] = []
        """Gateway commands a device refused (local control), most recent last (the last 100)."""
        self._agents = {a.id: a for a in site.agents}
        self._ieds = {i.id: i for i in site.ieds}
        self._real = SystemClock()
        """Real time, only to measure how fast the gateway clears an injected fault."""
        self._fault_started: tuple[str, float, dict[str, bool]] | None = None
        self.command_counts: dict[str, int] = {}
        """Every write or operate the model accepted, per point, since the simulator started."""
        self.clearings: list[dict[str, Any]] = []
        """Injected fault → first breaker opening, in real seconds (the last 10,000)."""
        self.injection: SecondaryInjection | None = None
        """The relay test set's sequence, playing or played last."""

    # ------------------------------------------------------------------ commands from IEDs

    def _apply_command(self, point_id: str, value: Any) -> None:
        """A write or operate from the gateway: straight into the model, now."""
        now_s = self.clock.monotonic()
        try:
            self.model.apply_command(point_id, value, now_s)
        except CommandRefused as exc:
            self.refusals.append(
                {"sim_time_s": now_s, "point": point_id, "value": value, "device": exc.device_id, "reason": exc.reason}
            )
            del self.refusals[:-100]
            log.warning("command %s=%r refused at sim %.3f s: %s", point_id, value, now_s, exc)
            raise
        if self._fault_started is not None:
            self._note_clearing()
        self.command_counts[point_id] = self.command_counts.get(point_id, 0) + 1
        if self.injection is not None:  # timed in real seconds, as a test set's own clock does
            self.injection.on_command(self._real.monotonic(), point_id, value)
        self.commands.append((now_s, point_id, value))
        del self.commands[:-100]
        log.info("command %s=%r at sim %.3f s", point_id, value, now_s)

    def _note_clearing(self) -> None:
        """Record the first breaker that opened since the fault was injected."""
        assert self._fault_started is not None
        line_id, started, closed_before = self._fault_started
        for breaker, state in self.breakers().items():
            if state == "open" and closed_before.get(breaker):
                self.clearings.append(
                    {"line": line_id, "breaker": breaker, "clearing_s": self._real.monotonic() - started}
                )
                del self.clearings[:-10_000]
                self._fault_started = None
                return

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Open every IED server and the AMI feed, with the model's initial values in place."""
        if self._started:
            return
        self._started = True
        self.model.advance(self.clock.monotonic())
        values = self.model.point_values()
        tcp, rtu = group_endpoints(self.site.ieds)
        special: dict[str, Any] = {}
        if (self.site.simulation or {}).get("sunspec"):
            from hil.sunspec import sunspec_maps

            special = sunspec_maps(self.site, self.model)
        for (host, port), ieds in tcp.items():
            endpoint = ModbusEndpoint(ieds, self._apply_command, bind_host=self.options.bind_host, special_maps=special)
            await endpoint.start()
            await endpoint.update(values)
            self._add_endpoint(endpoint)
            await wait_listening(self.options.bind_host or host, port)
        for serial_port, line_ieds in rtu.items():
            line = SerialLine(serial_port)
            await line.start()
            self.serial_lines.append(line)
            endpoint = ModbusEndpoint(line_ieds, self._apply_command, serial_path=str(line.sim_path))
            await endpoint.start()
            await endpoint.update(values)
            self._add_endpoint(endpoint)
        await self._start_iec61850()
        local = self._local_flags()
        for child in self.iec_children:
            child.set_local(local)
            await child.update(values)
        for child in self.iec_children:
            try:
                await wait_listening("127.0.0.1", child.port, timeout_s=30.0)
            except OSError as exc:
                log.warning("%s: IEC 61850 server not listening on port %d: %s", child.ied.id, child.port, exc)
        if self.options.ami and any(site.ami is not None for site, _ in self.sites):
            await self._start_ami()
        self.ready = True
        log.info(
            "simulator running: %d Modbus endpoint(s), %d IEC 61850 IED(s), speed %s, step %.3f s",
            len(self.endpoints),
            len(self.iec_children),
            self.options.speed or "max",
            self.options.step_s,
        )

    def _add_endpoint(self, endpoint: ModbusEndpoint) -> None:
        self.endpoints.append(endpoint)
        for ied in endpoint.ieds:
            self._endpoint_of[ied.id] = endpoint

    async def _start_iec61850(self) -> None:
        ieds = [i for i in self.site.ieds if isinstance(i, Iec61850Ied) and i.enabled]
        if not ieds or not self.options.iec61850:
            return
        if importlib.util.find_spec("hil.iec61850_server") is None:
            log.warning(
                "hil.iec61850_server is not available: IEC 61850 IEDs %s are not served", ", ".join(i.id for i in ieds)
            )
            return
        path_of = {i.id: p for site, p in self.sites for i in site.ieds if p is not None}
        missing = [i.id for i in ieds if i.id not in path_of]
        if missing:
            log.warning("no site file path given: IEC 61850 IEDs %s are not served", ", ".join(missing))
        for ied in ieds:
            if ied.id not in path_of:
                continue
            child = Iec61850Child(ied, path_of[ied.id], ied.port, self._apply_command)
            await child.start()
            self.iec_children.append(child)

    async def _start_ami(self) -> None:
        from hil.ami import AmiPublisher

        readings = self.model.meter_readings(self.clock.monotonic())
        for site, _ in self.sites:
            if site.ami is None:
                continue
            publisher = AmiPublisher(
                site,
                batch_size=self.options.ami_batch_size,
                interval_s=self.options.ami_interval_s,
                meters=self.options.meters,
            )
            if hasattr(self.model, "dr_event"):
                publisher.on_dr_event = lambda event, p=publisher: self._demand_response(p, event)
            await publisher.start()
            publisher.prepare(readings.ids, getattr(readings, "group_ids", None))
            self.amis.append(publisher)
        self.ami = self.amis[0] if self.amis else None
        self._next_weather_s = self.clock.monotonic() + min(self.options.ami_first_reading_s, 1.0)
        self._next_ami_s = self.clock.monotonic() + min(self.options.ami_first_reading_s, self.options.ami_interval_s)

    async def stop(self) -> None:
        self._stopping.set()
        for task in list(self._pending):
            task.cancel()
        for endpoint in self.endpoints:
            await endpoint.stop()
        for line in self.serial_lines:
            await line.stop()
        for child in self.iec_children:
            await child.stop()
        for publisher in self.amis:
            await publisher.close()
        self.amis.clear()
        self.endpoints.clear()
        self.serial_lines.clear()
        self.iec_children.clear()
        self._endpoint_of.clear()
        self.ami = None
        self._started = False
        self.ready = False

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self, duration_s: float | None = None) -> None:
        """Start, step until stopped (or until `duration_s` of simulated time), then stop."""
        try:
            await self.start()
            await self.run_steps(duration_s)
        finally:
            await self.stop()

    async def run_steps(self, duration_s: float | None = None) -> None:
        """Step the model, paced by `speed`, until `request_stop` or `duration_s` simulated."""
        loop = asyncio.get_running_loop()
        speed = self.options.speed
        start_sim = self.clock.monotonic()
        base_real, base_sim = loop.time(), start_sim
        while not self._stopping.is_set():
            if duration_s is not None and self.clock.monotonic() - start_sim >= duration_s - 1e-9:
                return
            await self.step()
            if speed <= 0:
                await asyncio.sleep(0)
                continue
            due = base_real + (self.clock.monotonic() - base_sim) / speed
            delay = due - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            else:
                if -delay > self.options.max_lag_s:
                    self.lag_resets += 1
                    log.warning("simulator %.2f s behind real time: pacing restarts from now", -delay)
                    base_real, base_sim = loop.time(), self.clock.monotonic()
                await asyncio.sleep(0)

    async def step(self) -> None:
        """One step: advance time and model, lift expired injections, refresh every server."""
        t0 = time.perf_counter()
        if self._origin_s is None:
            self._origin_s = self.clock.monotonic() - self.steps * self.options.step_s
        self.steps += 1
        # from the origin, not by repeated addition, so that 0.01 s steps stay on the grid
        target = self._origin_s + self.steps * self.options.step_s
        self.clock.advance(max(0.0, target - self.clock.monotonic()))
        now_s = self.clock.monotonic()
        self.model.advance(now_s)
        for ied_id, until in list(self._commloss_until.items()):
            if now_s >= until:
                del self._commloss_until[ied_id]
                await self._restore_link(ied_id)
        values = self.model.point_values()
        if self.injection is not None and self.injection.running:
            self.injection.serve(
                self._real.monotonic(), values, self.breakers().get(self.injection.breaker) == "closed"
            )
        for endpoint in self.endpoints:
            await endpoint.update(values)
        local = self._local_flags() if self.iec_children else {}
        for child in self.iec_children:
            child.set_local(local)
            await child.update(values)
        if self.ami is not None and self._next_ami_s is not None and now_s >= self._next_ami_s:
            self._next_ami_s += self.options.ami_interval_s
            if self._next_ami_s <= now_s:  # far behind (huge step): skip, do not burst
                self._next_ami_s = now_s + self.options.ami_interval_s
            readings = self.model.meter_readings(now_s)
            for publisher in self.amis:
                publisher.publish(readings, self.gateway_wall(), spread=True)
        for publisher in self.amis:
            if publisher.pending:
                publisher.pump(self.options.ami_messages_per_step)
        if (
            self.amis
            and self.options.weather_interval_s > 0
            and self._next_weather_s is not None
            and now_s >= self._next_weather_s
            and hasattr(self.model, "weather_forecast")
        ):
            self._next_weather_s = now_s + self.options.weather_interval_s
            for publisher in self.amis:
                self.publish_weather(publisher)
        took = time.perf_counter() - t0
        self.step_time_s += took
        self.max_step_s = max(self.max_step_s, took)

    # ------------------------------------------------------------------ weather and demand response

    # The gateways run on the real clock. When the simulator is paced (speed > 0), the times it puts
    # in messages to them (readings, weather, confirmations) are in their clock, and the times they
    # send (demand-response events) are brought back to the simulated clock: a simulated span of
    # `speed` seconds is one second to them. Unpaced (speed 0, tests driving the model) both are
    # the simulated clock.

    def gateway_wall(self, sim_wall: float | None = None) -> float:
        """A simulated wall time as the gateways' clocks see it."""
        sim = self.clock.wall() if sim_wall is None else sim_wall
        if self.options.speed <= 0:
            return sim
        return time.time() + (sim - self.clock.wall()) / self.options.speed

    def sim_wall(self, gateway_wall: float) -> float:
        """A gateway's wall time on the simulated clock."""
        if self.options.speed <= 0:
            return gateway_wall
        return self.clock.wall() + (gateway_wall - time.time()) * self.options.speed

    def sim_span_s(self, gateway_span_s: float) -> float:
        return gateway_span_s * self.options.speed if self.options.speed > 0 else gateway_span_s

    def weather_payload(self, substation_id: str) -> dict[str, Any]:
        """The forecast of the sky and the air over the next hours (docs/hil.md#weather-feed)."""
        now_s = self.clock.monotonic()
        wall = self.clock.wall()
        points = self.model.weather_forecast(
            now_s, self.options.weather_horizon_s, self.options.weather_step_s, substation_id
        )
        at = self.gateway_wall
        return {
            "v": 1,
            "substation_id": substation_id,
            "issued_at": at(wall),
            "step_s": self.options.weather_step_s,
            "forecast": [
                {"time": at(wall + dt), "irradiance_w_m2": round(g, 2), "temperature_c": round(t, 2)}
                for dt, g, t in points
            ],
        }

    def publish_weather(self, publisher: Any) -> None:
        payload = self.weather_payload(publisher.substation_id)
        publisher.publish_raw(f"weather/{publisher.substation_id}/forecast", json.dumps(payload).encode(), retain=True)

    def _demand_response(self, publisher: Any, event: Any) -> None:
        """A DR event a concentrator received: the meters answer, and the concentrator confirms."""
        from protocols.demand_response import encode_confirmation, topic_for
        from gateway.contract.demand_response import DrConfirmation

        now_s = self.clock.monotonic()
        start_s = now_s + (self.sim_wall(event.start) - self.clock.wall())
        publisher.dr_events += 1
        try:
            result = self.model.dr_event(
                event.event_id,
                event.program,
                now_s,
                group_id=event.concentrator_id,
                meter_ids=list(event.meters) if event.meters is not None else None,
                start_s=start_s,
                duration_s=self.sim_span_s(event.duration_s),
                reduction_pct=event.reduction_pct,
            )
            answered = [
                (m, a, d)
                for m, a, d in zip(result["meters"], result["answers"], result["demand_kw"], strict=True)
                if a != "silent"
            ]
            conf = DrConfirmation(
                event_id=event.event_id,
                substation_id=publisher.substation_id,
                concentrator_id=event.concentrator_id,
                time=self.gateway_wall(),
                meters=tuple(m for m, _, _ in answered),
                answers=tuple(a for _, a, _ in answered),
                demand_kw=tuple(round(d, 4) for _, _, d in answered),
            )
            log.info(
                "demand response %s (%s) at %s: %d meters, %d accepted",
                event.event_id,
                event.program,
                event.concentrator_id,
                len(result["meters"]),
                sum(a == "accepted" for a in result["answers"]),
            )
        except (KeyError, ValueError) as exc:
            publisher.dr_rejected += 1
            log.warning("demand response %s refused: %s", event.event_id, exc)
            conf = DrConfirmation(
                event_id=event.event_id,
                substation_id=publisher.substation_id,
                concentrator_id=event.concentrator_id,
                time=self.gateway_wall(),
                meters=(),
                answers=(),
                demand_kw=(),
                error=str(exc).strip("'\""),
            )
        publisher.publish_raw(
            topic_for(publisher.cfg.dr_confirm_topic, event.concentrator_id), encode_confirmation(conf)
        )

    def load_ramp(
        self, substation_id: str, rate_kw_per_h: float, *, start_kw: float | None = None, ambient_c: float | None = None
    ) -> dict[str, Any]:
        """The evening ramp: the demand behind a substation rises at `rate_kw_per_h` (simulated time)."""
        rate = self._finite("rate_kw_per_h", rate_kw_per_h)
        start = None if start_kw is None else self._finite("start_kw", start_kw, low=0.0, low_open=True)
        ambient = None if ambient_c is None else self._finite("ambient_c", ambient_c)
        now_s = self.clock.monotonic()
        result = self._model_call(
            f"ramp on {substation_id}",
            lambda: self.model.load_ramp(substation_id, rate, now_s, start_kw=start, ambient_c=ambient),
        )
        log.warning(
            "load ramp on %s: %+.0f kW/h from %.0f kW%s, sim %.3f s",
            substation_id,
            rate,
            result["total_load_kw"],
            f", ambient {ambient:g} C" if ambient is not None else "",
            now_s,
        )
        if ambient is not None:
            for publisher in self.amis:
                self.publish_weather(publisher)
        return {"substation": substation_id, **result, "sim_time_s": now_s}

    def _local_flags(self) -> dict[str, bool]:
        flags = getattr(self.model, "local_command_points", None)
        return flags() if callable(flags) else {}

    # ------------------------------------------------------------------ injections

    def _agent(self, agent_id: str, *types: AgentType) -> Any:
        agent = self._agents.get(agent_id)
        if agent is None or (types and agent.type not in types):
            kinds = " or ".join(t.value for t in types) or "agent"
            known = sorted(a.id for a in self.site.agents if not types or a.type in types)
            raise InjectionError(f"unknown {kinds} {agent_id!r}; known: {', '.join(known) or 'none'}")
        return agent

    @staticmethod
    def _finite(name: str, value: Any, *, low: float | None = None, low_open: bool = False) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InjectionError(f"{name} must be a number, found {value!r}") from None
        if not math.isfinite(number):
            raise InjectionError(f"{name} must be finite, found {value!r}")
        if low is not None and (number < low or (low_open and number == low)):
            raise InjectionError(f"{name} must be {'>' if low_open else '>='} {low:g}, found {value!r}")
        return number

    def _model_call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (KeyError, ValueError) as exc:
            raise InjectionError(f"{what}: {exc}") from None

    def inject_fault(
        self, line_id: str, distance_m: float, kind: str = "3ph", transient: bool = False, impedance_ohm: float = 0.0
    ) -> dict[str, Any]:
        """A short circuit on `line_id`, `distance_m` from its breaker."""
        agent = self._agent(line_id, AgentType.POWER_LINE)
        distance = self._finite("distance_m", distance_m, low=0.0)
        length_m = float(agent.attributes.get("length", 5000.0))
        if distance > length_m:
            raise InjectionError(f"distance {distance:g} m is beyond the end of {line_id} ({length_m:g} m long)")
        canonical = FAULT_KIND_ALIASES.get(str(kind).lower())
        if canonical is None:
            raise InjectionError(
                f"unknown fault type {kind!r}; expected one of {', '.join(FAULT_KINDS)} (or 2ph, 2ph-g, 1ph)"
            )
        impedance = self._finite("impedance_ohm", impedance_ohm, low=0.0)
        now_s = self.clock.monotonic()
        result = self._model_call(
            f"fault on {line_id}",
            lambda: self.model.inject_fault(
                line_id, distance, canonical, impedance_ohm=impedance, transient=bool(transient), now_s=now_s
            ),
        )
        self._fault_started = (
            line_id,
            self._real.monotonic(),
            {b: st == "closed" for b, st in self.breakers().items()},
        )
        log.warning(
            "injected %s%s fault on %s at %.0f m (%.2f ohm), sim %.3f s",
            canonical,
            " transient" if transient else "",
            line_id,
            distance,
            impedance,
            now_s,
        )
        return {
            "line": line_id,
            "distance_m": distance,
            "kind": canonical,
            "transient": bool(transient),
            "impedance_ohm": impedance,
            "sim_time_s": now_s,
            "fault": _jsonable(result),
        }

    def secondary_injection(self, breaker: str, states: Any) -> dict[str, Any]:
        """A relay test set on `breaker`'s measurement inputs plays `states` from the next step."""
        self._agent(breaker, AgentType.CIRCUIT_BREAKER)
        scheme = next((p for p in self.site.protection if p.breaker == breaker), None)
        if scheme is None:
            raise InjectionError(f"{breaker} has no protection scheme in the site file: nothing to test")
        if self.injection is not None and self.injection.running:
            raise InjectionError(f"a sequence is already playing on {self.injection.breaker}")
        checked = check_states(states)
        points = {q: scheme.point(q) for q in QUANTITIES}
        trip, close = scheme.trip_target(), scheme.close_target()
        self.injection = SecondaryInjection(
            breaker, points, (trip.point, trip.value), (close.point, close.value), checked
        )
        log.warning("secondary injection on %s: %d state(s), %.3f s", breaker, len(checked), self.injection.duration_s)
        return self.injection.status()

    def injection_status(self, stop: bool = False) -> dict[str, Any]:
        """The sequence's progress and the commands timed so far; `stop` ends it now."""
        if self.injection is None:
            raise InjectionError("no sequence has been played")
        if stop:
            self.injection.stop(self._real.monotonic())
            log.warning("secondary injection on %s stopped", self.injection.breaker)
        return self.injection.status()

    def clear_faults(self) -> dict[str, Any]:
        now_s = self.clock.monotonic()
        self.model.clear_faults(now_s)
        log.warning("faults cleared, sim %.3f s", now_s)
        return {"sim_time_s": now_s}

    def load_step(self, target: str, factor: float) -> dict[str, Any]:
        """Scale the load behind `target` (a transformer, line, substation or meter group)."""
        if target not in self._agents and target not in {g.id for g in self.site.meter_groups}:
            raise InjectionError(f"unknown load step target {target!r}; expected an agent or meter group id")
        value = self._finite("factor", factor, low=0.0, low_open=True)
        now_s = self.clock.monotonic()
        self._model_call(f"load step on {target}", lambda: self.model.load_step(target, value, now_s))
        log.warning("load step x%.3f on %s, sim %.3f s", value, target, now_s)
        return {"target": target, "factor": value, "sim_time_s": now_s}

    def temperature_ramp(self, xfmr: str, delta_c: float, duration_s: float) -> dict[str, Any]:
        """Raise (or lower) a transformer's temperature by `delta_c` over `duration_s`."""
        self._agent(xfmr, AgentType.TRANSFORMER)
        delta = self._finite("delta_c", delta_c)
        duration = self._finite("duration_s", duration_s, low=0.0)
        now_s = self.clock.monotonic()
        self._model_call(
            f"temperature ramp on {xfmr}", lambda: self.model.temperature_ramp(xfmr, delta, duration, now_s)
        )
        log.warning("temperature ramp %+.1f C over %.0f s on %s, sim %.3f s", delta, duration, xfmr, now_s)
        return {"transformer": xfmr, "delta_c": delta, "duration_s": duration, "sim_time_s": now_s}

    async def age(self, xfmr: str, months: float, path: str, seed: int | None = None) -> dict[str, Any]:
        """Run a transformer with a condition through `months` of hourly operation ending now (the
        real wall clock, whole hours) and write what its monitors logged to `path` (CSV, for
        `stima history import`); the transformer carries on from the aged condition."""
        import copy

        from gateway.agents.schema import TransformerAttributes
        from hil.grid.ageing import Climate, monitor_log, write_csv

        agent = self._agent(xfmr, AgentType.TRANSFORMER)
        condition = getattr(self.model, "conditions", {}).get(xfmr)
        if condition is None:
            raise InjectionError(f"{xfmr} has no condition to age: name it in [simulation.ageing]")
        span = self._finite("months", months, low=0.0, low_open=True)
        if span > 120:
            raise InjectionError(f"months must be at most 120, found {span:g}")
        attrs = TransformerAttributes.model_validate(agent.attributes)
        settings = self.model.settings
        trial = copy.deepcopy(condition)
        loads = self.model.loads_behind(xfmr)
        end_wall = self._real.wall()

        def run() -> tuple[int, list[dict[str, Any]]]:
            rows = monitor_log(
                trial,
                loads,
                rated_kva=attrs.rated_capacity,
                rated_rise_c=attrs.rated_top_oil_rise_c,
                loss_ratio=attrs.loss_ratio,
                cooling_type=attrs.cooling_type,
                tau_min=attrs.top_oil_time_constant_min,
                months=span,
                end_wall=end_wall,
                utc_offset_h=self.site.maintenance.utc_offset_h,
                climate=Climate(mean_c=settings.ambient_temp_c, swing_c=settings.ambient_swing_c),
                seed=self.model.seed if seed is None else int(seed),
            )
            return write_csv(rows, path), rows[-14:]

        n, last = await asyncio.to_thread(run)
        condition.age_months, condition.operating_hours = trial.age_months, trial.operating_hours
        condition.fans_on = trial.fans_on
        log.warning("%s aged %.1f months (%d rows logged to %s)", xfmr, span, n, path)
        return {
            "transformer": xfmr,
            "months": span,
            "rows": n,
            "path": str(path),
            "age_months": round(condition.age_months, 3),
            "end_wall": end_wall,
            "efficiency_pct": round(condition.efficiency_pct(), 3),
            "drift_c": round(condition.drift_c(), 2),
            "fans_on": condition.fans_on,
            "gases_ppm": {k: round(v, 2) for k, v in condition.gases_ppm().items()},
            "last_logged": {r["point_id"].split(".", 1)[1]: r["mean"] for r in last},
        }

    def bypass_meter(self, meter: str, registered: float = 0.0) -> dict[str, Any]:
        """A meter bypassed (or tampered) so it registers `registered` (0..1) of its consumption."""
        share = self._finite("registered", registered, low=0.0)
        if share > 1.0:
            raise InjectionError(f"registered must be a share in 0..1, found {registered!r}")
        ids = self.model.meter_readings(self.clock.monotonic()).ids
        try:
            index = ids.index(meter)
        except ValueError:
            raise InjectionError(f"{meter!r} is not a simulated meter") from None
        self.model.bypass.set(index, share)
        log.warning("meter %s bypassed: registers %.0f %% of its consumption", meter, 100 * share)
        return {"meter": meter, "registered": share, "sim_time_s": self.clock.monotonic()}

    def _device_id(self, device_id: str) -> str:
        self._agent(device_id, AgentType.CIRCUIT_BREAKER)
        return device_id

    def inject_device_failure(self, device_id: str, mode: str, delay_s: float = 0.0) -> dict[str, Any]:
        """A switching device fails to operate: 'stuck' (never moves on a command), 'slow' (moves
        `delay_s` after it), 'none' (healthy again)."""
        self._device_id(device_id)
        delay = self._finite("delay_s", delay_s, low=0.0)
        self._model_call(f"failure of {device_id}", lambda: self.model.set_device_failure(device_id, mode, delay))
        log.warning(
            "device %s failure %s%s, sim %.3f s",
            device_id,
            mode,
            f" ({delay:g} s)" if delay else "",
            self.clock.monotonic(),
        )
        return {"device": device_id, **self.model.device_state(device_id), "sim_time_s": self.clock.monotonic()}

    def set_local(self, device_id: str, on: bool) -> dict[str, Any]:
        """Put a switching device in local control (it refuses remote commands) or back in remote."""
        self._device_id(device_id)
        if not isinstance(on, bool):
            raise InjectionError(f"on must be true or false, found {on!r}")
        self._model_call(f"local control of {device_id}", lambda: self.model.set_local(device_id, on))
        local = self._local_flags()
        for child in self.iec_children:
            child.set_local(local)
        return {"device": device_id, "local": on, "sim_time_s": self.clock.monotonic()}

    def operate_device(self, device_id: str, action: str) -> dict[str, Any]:
        """An operator at the device opens or closes it (allowed in local control; a failed
        device still fails)."""
        self._device_id(device_id)
        if action not in ("open", "close"):
            raise InjectionError(f"action must be 'open' or 'close', found {action!r}")
        now_s = self.clock.monotonic()
        self._model_call(
            f"operate {device_id}", lambda: self.model.operate_breaker(device_id, action == "close", now_s)
        )
        log.warning("device %s operated locally: %s, sim %.3f s", device_id, action, now_s)
        return {"device": device_id, "action": action, **self.model.device_state(device_id), "sim_time_s": now_s}

    def set_external_source(self, tie_id: str, live: bool) -> dict[str, Any]:
        """The neighbouring substation's feeder behind an external tie goes dead, or comes back."""
        self._device_id(tie_id)
        if not isinstance(live, bool):
            raise InjectionError(f"live must be true or false, found {live!r}")
        now_s = self.clock.monotonic()
        self._model_call(f"external source of {tie_id}", lambda: self.model.set_external_source(tie_id, live, now_s))
        log.warning("external source behind %s %s, sim %.3f s", tie_id, "live" if live else "dead", now_s)
        return {"tie": tie_id, "live": live, "sim_time_s": now_s}

    def inject_commloss(self, ied_id: str, duration_s: float) -> dict[str, Any]:
        """The IED stops answering for `duration_s` of simulated time, then comes back.

        A Modbus TCP IED alone on its port closes its listener and connections (a device that
        is off); an IED sharing a serial line or port ignores requests (a device that hangs).
        """
        ied = self._ieds.get(ied_id)
        if ied is None or not ied.enabled:
            raise InjectionError(f"unknown IED {ied_id!r}; known: {', '.join(sorted(self._ieds))}")
        duration = self._finite("duration_s", duration_s, low=0.0, low_open=True)
        now_s = self.clock.monotonic()
        already = ied_id in self._commloss_until
        self._commloss_until[ied_id] = max(self._commloss_until.get(ied_id, 0.0), now_s + duration)
        if not already:
            endpoint = self._endpoint_of.get(ied_id)
            if endpoint is not None:
                endpoint.silent.add(ied_id)  # from this very moment
            self._lose_tasks[ied_id] = self._spawn(self._lose_link(ied_id))
        log.warning("IED %s silent for %.1f s, sim %.3f s", ied_id, duration, now_s)
        return {"ied": ied_id, "duration_s": duration, "until_sim_time_s": self._commloss_until[ied_id]}

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _lose_link(self, ied_id: str) -> None:
        endpoint = self._endpoint_of.get(ied_id)
        if endpoint is not None:
            endpoint.silent.add(ied_id)
            if not endpoint.serial and len(endpoint.ieds) == 1:
                await endpoint.stop()
            return
        for child in self.iec_children:
            if child.ied.id == ied_id:
                child.silent = True
                await child.stop()

    async def _restore_link(self, ied_id: str) -> None:
        losing = self._lose_tasks.pop(ied_id, None)
        if losing is not None and not losing.done():
            with contextlib.suppress(Exception):
                await losing  # a very short loss: let the device go down before it comes back
        log.warning("IED %s answers again, sim %.3f s", ied_id, self.clock.monotonic())
        endpoint = self._endpoint_of.get(ied_id)
        if endpoint is not None:
            endpoint.silent.discard(ied_id)
            if endpoint.server is None:
                try:
                    await endpoint.start()
                except OSError as exc:
                    log.error("IED %s: cannot listen again: %s", ied_id, exc)
            return
        for child in self.iec_children:
            if child.ied.id == ied_id and child.silent:
                child.silent = False
                await child.start()

    # ------------------------------------------------------------------ status

    def breakers(self) -> dict[str, str]:
        out = {}
        for agent in self.site.agents:
            if agent.type == AgentType.CIRCUIT_BREAKER:
                try:
                    out[agent.id] = "closed" if self.model.breaker_closed(agent.id) else "open"
                except (KeyError, ValueError):
                    out[agent.id] = "unknown"
        return out

    def _substation_loads(self) -> dict[str, dict[str, Any]]:
        """Each substation's measured values as the model computes them (its load, voltage)."""
        out = {}
        for site, _ in self.sites:
            sub = site.site.substation_id
            try:
                out[sub] = _jsonable(self.model.agent_values(sub))
            except (KeyError, AttributeError):
                continue
        return out

    def _switching_status(self) -> dict[str, Any]:
        """Switching devices, sections, the energised map and closed loops (when the model has them)."""
        model = self.model
        if not hasattr(model, "device_states"):
            return {}
        loops = model.parallel_loops
        return {
            "devices": _jsonable(model.device_states()),
            "sections": _jsonable(model.section_states()),
            "energised": model.energised_elements(),
            "parallel": any(lp["energised"] for lp in loops),
            "parallel_loops": _jsonable(loops),
        }

    def status(self) -> dict[str, Any]:
        now_s = self.clock.monotonic()
        faults = getattr(self.model, "active_faults", [])
        if callable(faults):
            faults = faults()
        return {
            "substation_id": self.site.site.substation_id,
            "substation_ids": [site.site.substation_id for site, _ in self.sites],
            "ready": self.ready,
            "sim_time_s": round(now_s, 6),
            "sim_wall_time": self.clock.wall(),
            "speed": self.options.speed,
            "step_s": self.options.step_s,
            "steps": self.steps,
            "mean_step_ms": round(1e3 * self.step_time_s / self.steps, 4) if self.steps else None,
            "max_step_ms": round(1e3 * self.max_step_s, 3),
            "lag_resets": self.lag_resets,
            "breakers": self.breakers(),
            "substations": self._substation_loads(),
            **self._switching_status(),
            "faults": _jsonable(list(faults) if not isinstance(faults, dict) else faults),
            "commloss": {k: round(v - now_s, 3) for k, v in self._commloss_until.items()},
            "endpoints": [e.status() for e in self.endpoints],
            "iec61850": [c.status() for c in self.iec_children],
            "ami": self.ami.status() if self.ami is not None else None,
            "ami_feeds": {p.substation_id: p.status() for p in self.amis},
            "clearings": len(self.clearings),
            "last_clearing": self.clearings[-1] if self.clearings else None,
            "last_commands": [{"sim_time_s": t, "point": p, "value": _jsonable(v)} for t, p, v in self.commands[-10:]],
            "last_refusals": _jsonable(self.refusals[-10:]),
            "command_counts": dict(self.command_counts),
            "pid": os.getpid(),
        }
