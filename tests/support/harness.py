"""The whole gateway in one process on virtual time, with the IEDs and the broker in memory.

`GatewayHarness` builds a real `Gateway` (gateway/wiring.py) from a site file, with two seams
filled: every IED's adapter is a `MemoryAdapter` on one `MemoryTransport` (values the test sets,
writes the gateway makes), and the uplink is a `MemoryUplink` that keeps every message. Protection,
agents, switching, telemetry, history and the rest are the real ones.

The event loop is a `VirtualTimeLoop`: when nothing is ready it jumps to its next timer instead
of waiting, so every `asyncio.sleep` and timeout of the gateway's loops takes no real time. The
gateway's clock reads that loop's time, so an hour of gateway time runs in about a second. Work
handed to a thread (`asyncio.to_thread`: history writes, records) is waited for in real time and
takes no virtual time.
"""

from __future__ import annotations

import asyncio
import selectors
import tomllib
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple, Unpack, cast

from gateway.config import SiteConfig, validate
from gateway.contract.points import GOOD, PointUpdate
from gateway.scheduling import Periods
from gateway.storage import Store
from gateway.wiring import Gateway
from gateway.contract.ports import AdapterStatus, LinkState, Priority, Sink

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
START_WALL = 1_767_225_600.0
"""Wall time at virtual time 0 (2026-01-01T00:00:00Z)."""
THREAD_WAIT_S = 30.0
"""A thread's work (real time) the loop waits for before it looks again."""


class _VirtualSelector(selectors.DefaultSelector):
    """Sees real readiness (the loop's self-pipe, threads' results); never waits for a timer."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        loop = self.loop
        if ready or timeout == 0 or loop is None:
            return ready
        if loop.threads_running or timeout is None:  # a thread's work takes real time, no virtual time
            waited: list[tuple[selectors.SelectorKey, int]] = super().select(THREAD_WAIT_S)
            return waited
        loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves to the next timer whenever nothing else is ready."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_s = 0.0
        self.threads_running = 0

    def time(self) -> float:
        return self._virtual_s

    def advance(self, seconds: float) -> None:
        self._virtual_s += max(seconds, 0.0)

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[Unpack[Ts]], T], *args: Unpack[Ts]
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_running += 1

        def done(_: asyncio.Future[T]) -> None:
            self.threads_running -= 1

        future.add_done_callback(done)
        return future


class VirtualClock:
    """The gateway's clock on a virtual-time loop: monotonic is the loop's time."""

    def __init__(self, loop: VirtualTimeLoop, start_wall: float = START_WALL) -> None:
        self._loop = loop
        self._start_wall = start_wall

    def monotonic(self) -> float:
        return self._loop.time()

    def wall(self) -> float:
        return self._start_wall + self._loop.time()


@dataclass(frozen=True, slots=True)
class Write:
    """One write the gateway made to an IED."""

    time_s: float
    ied_id: str
    point_id: str
    value: float | int | bool
    priority: Priority


@dataclass
class MemoryTransport:
    """The IEDs' side of every link: point values set by the test, writes recorded.

    A value set is reported to the gateway by its IED's adapter at once (report by exception,
    as an IEC 61850 report would); `reactions` let the test play the plant (a trip command opens
    the breaker's position, say).
    """

    clock: VirtualClock
    values: dict[str, float | int | bool] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    reactions: dict[tuple[str, float | int | bool], dict[str, float | int | bool]] = field(default_factory=dict)
    """(point, value written) → the values the plant then reports."""
    refused: set[str] = field(default_factory=set)
    """Points whose writes the IED refuses."""
    adapters: dict[str, MemoryAdapter] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)

    def set(self, values: dict[str, float | int | bool]) -> None:
        for point_id, value in values.items():
            ied_id = self.owner.get(point_id)
            if ied_id is None:
                raise KeyError(f"no IED reports {point_id!r}")
            self.values[point_id] = value
            adapter = self.adapters.get(ied_id)
            if adapter is not None:
                adapter.changed(point_id)

    def write(self, ied_id: str, point_id: str, value: float | int | bool, priority: Priority) -> None:
        self.writes.append(Write(self.clock.monotonic(), ied_id, point_id, value, priority))
        if point_id in self.refused:
            raise PermissionError(f"{point_id} refused the write")
        reaction = self.reactions.get((point_id, value))
        if reaction:
            self.set(reaction)


class MemoryAdapter:
    """One IED's adapter on the in-memory transport (the shape of protocols.base.Adapter)."""

    def __init__(self, ied: Any, sink: Sink, clock: VirtualClock, transport: MemoryTransport) -> None:
        self.ied_id: str = ied.id
        self.status = AdapterStatus(ied.id, "memory", f"memory:{ied.id}")
        self.poll_phase = 0.0
        self.point_ids = [p.id for p in ied.points]
        self._sink = sink
        self._clock = clock
        self._transport = transport
        self._changed: set[str] = set(p for p in self.point_ids if p in transport.values)
        self._wake = asyncio.Event()
        for point_id in self.point_ids:
            transport.owner[point_id] = ied.id
        transport.adapters[ied.id] = self

    def changed(self, point_id: str) -> None:
        self._changed.add(point_id)
        self._wake.set()

    async def run(self) -> None:
        self.status.state = LinkState.ONLINE
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            changed, self._changed = sorted(self._changed), set()
            if not changed:
                continue
            now, wall = self._clock.monotonic(), self._clock.wall()
            self.status.polls += 1
            self.status.last_poll_time = self.status.last_ok_time = wall
            self._sink(
                [
                    PointUpdate(
                        point_id=p,
                        value=self._transport.values[p],
                        quality=GOOD,
                        receive_monotonic=now,
                        receive_time=wall,
                    )
                    for p in changed
                ]
            )

    def submit_write(
        self, point_id: str, value: float | int | bool, priority: Priority = Priority.CONTROL
    ) -> asyncio.Future[float | None]:
        future: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self.status.writes += 1
        try:
            self._transport.write(self.ied_id, point_id, value, priority)
        except PermissionError as exc:
            from gateway.contract.ports import CommandError

            self.status.write_errors += 1
            future.set_exception(CommandError(str(exc)))
        else:
            future.set_result(self._clock.monotonic())
        return future

    async def close(self) -> None:
        self.status.state = LinkState.STOPPED

    def set_sink(self, sink: Sink) -> None:
        self._sink = sink


@dataclass(frozen=True, slots=True)
class Message:
    """One message the gateway handed to its uplink."""

    time_s: float
    suffix: str
    payload: dict[str, Any]
    retain: bool


class MemoryUplink:
    """The uplink's shape (protocols.mqtt.MqttUplink's methods the gateway calls), keeping every
    message in `messages` instead of sending it; connected from `run` on."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.messages: list[Message] = []
        self.cleared: list[str] = []
        self.birth: list[dict[str, Any]] = []
        self.node_metrics: list[str] = []
        self._birth_listeners: list[Callable[[], None]] = []
        self.command_callbacks: list[Any] = []
        self.external: list[tuple[str, Callable[[str, Any, bool], None]]] = []
        self.connected = False
        self.closed = False

    def check(self) -> None:
        pass

    def resync_spool(self) -> None:
        pass

    def set_birth(self, metrics: list[dict[str, Any]], node_metrics: Iterable[str] = ()) -> None:
        self.birth, self.node_metrics = list(metrics), list(node_metrics)

    def on_birth(self, listener: Callable[[], None]) -> None:
        self._birth_listeners.append(listener)

    def on_command(self, callback: Any) -> None:
        self.command_callbacks.append(callback)

    def on_external(self, topic_filter: str, callback: Callable[[str, Any, bool], None]) -> None:
        self.external.append((topic_filter, callback))

    def publish(
        self, topic_suffix: str, payload: dict[str, Any], *, qos: int | None = None, retain: bool = False
    ) -> None:
        self.publish_many([(topic_suffix, payload)], qos=qos, retain=retain)

    def publish_many(
        self, messages: Iterable[tuple[str, dict[str, Any]]], *, qos: int | None = None, retain: bool = False
    ) -> None:
        if self.closed:
            raise RuntimeError("the uplink is closed")
        now = self.clock.monotonic()
        self.messages.extend(Message(now, suffix, payload, retain) for suffix, payload in messages)

    def clear_retained(self, topic_suffixes: Iterable[str]) -> None:
        self.cleared.extend(topic_suffixes)

    def status(self) -> dict[str, Any]:
        return {
            "state": "online" if self.connected else "offline",
            "published": len(self.messages),
            "in_memory": 0,
            "spool_depth": 0,
        }

    async def run(self) -> None:
        self.connected = True
        for listener in self._birth_listeners:
            listener()
        await asyncio.Event().wait()

    async def close(self, timeout_s: float = 5.0) -> None:
        self.connected, self.closed = False, True

    def on(self, suffix: str) -> list[Message]:
        """The messages on one topic suffix, oldest first."""
        return [m for m in self.messages if m.suffix == suffix]


def example_site(name: str, workdir: Path, *, drop: Sequence[str] = ("ami",), **changes: Any) -> SiteConfig:
    """An example site file (deploy/examples/<name>), its state kept under `workdir`, without the
    sections in `drop` (the AMI feed's broker is not in memory), with top-level `changes`."""
    doc = tomllib.loads((EXAMPLES / name).read_text())
    doc["site"] = {**doc["site"], "state_dir": str(workdir / "state"), "runtime_dir": str(workdir / "run")}
    for section in drop:
        doc.pop(section, None)
    for key, value in changes.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return validate(doc, str(EXAMPLES / name))


HOUR_IN_A_SECOND = Periods(protection_step_s=1.0, agent_tick_s=60.0, switching_idle_s=60.0)
"""Coarser fixed periods for runs of an hour or more: the agents' tick (about 20 ms of real time
for an example site's two dozen agents) and the switching loop's idle check then run once a
minute, protection timers advance once a second. Samples are still evaluated as they arrive,
and everything woken by an event still wakes at once."""


class GatewayHarness:
    """A running gateway on virtual time: `run_for` advances it, `transport` and `uplink` are its
    two ends. Use as a context manager (the gateway is stopped and the loop closed at the end)."""

    def __init__(self, site: SiteConfig, workdir: Path, *, periods: Periods = Periods()) -> None:
        self.loop = VirtualTimeLoop()
        self.clock = VirtualClock(self.loop)
        self.transport = MemoryTransport(self.clock)
        self.uplink = MemoryUplink(self.clock)
        (workdir / "state").mkdir(parents=True, exist_ok=True)
        self.store = Store(workdir / "state" / "stima.db")
        self.site = site
        self.workdir = workdir
        self.periods = periods
        self.gateway: Gateway | None = None
        self._control: Any = None

    def _adapter(self, ied: Any, sink: Sink, clock: Any, _logger: Any) -> MemoryAdapter:
        return MemoryAdapter(ied, sink, self.clock, self.transport)

    def start(self) -> Gateway:
        async def build() -> Gateway:
            gw = Gateway(
                self.site,
                base_dir=self.workdir,
                clock=self.clock,
                store=self.store,
                adapter_factory=self._adapter,
                uplink_factory=lambda *_: cast(Any, self.uplink),
                periods=self.periods,
            )
            await gw.start()
            return gw

        self.gateway = self.run(build())
        return self.gateway

    @property
    def gw(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the harness's gateway is not started")
        return self.gateway

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the virtual-time loop (the gateway's loops run meanwhile)."""
        return self.loop.run_until_complete(coro)

    def run_for(self, seconds: float) -> None:
        """Let `seconds` of gateway time pass."""
        self.run(asyncio.sleep(seconds))

    def set(self, values: dict[str, float | int | bool]) -> None:
        """The IEDs report these values (delivered when the gateway next runs)."""
        self.transport.set(values)

    def serve_control(self) -> Path:
        """The control socket's operations (gateway/operations.py) on a real unix socket under the
        work directory, as the daemon serves them; returns the runtime directory for `call`."""
        from gateway.control import AccessPolicy, ControlServer
        from gateway.operations import ControlOperations
        from gateway.server import Server

        server = Server(self.workdir / "site.toml", clock=self.clock, environ={})
        server.store, server.gateway = self.store, self.gw
        runtime_dir = self.workdir / "run"
        self._control = ControlServer(runtime_dir, access=AccessPolicy())
        ControlOperations(server).register(self._control)
        self.run(self._control.start())
        return runtime_dir

    def call(self, op: str, **args: Any) -> Any:
        """One operation on the control socket (from a thread, the gateway running meanwhile)."""
        from gateway import control

        if self._control is None:
            raise RuntimeError("serve_control() first")
        runtime_dir = self._control.path.parent
        return self.run(asyncio.to_thread(lambda: control.call(runtime_dir, op, **args)))

    def pending_timers(self) -> int:
        """Timers scheduled on the loop (a leak of callbacks shows here)."""
        return len(self.loop._scheduled)  # type: ignore[attr-defined]

    def close(self) -> None:
        try:
            if self._control is not None:
                self.run(self._control.close())
            if self.gateway is not None:
                self.run(self.gateway.stop())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            self.store.close()

    def __enter__(self) -> GatewayHarness:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
