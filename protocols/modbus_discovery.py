"""Finding what a Modbus TCP device (or gateway) holds, without writing anything.

Only the read function codes are sent (1 coils, 2 discrete inputs, 3 holding registers, 4 input
registers) and 43/14 (read device identification). Requests go one at a time, paced to a rate
limit, each bounded by a timeout, the whole scan by a deadline and a request budget.

Per unit id: a probe (FC 3 at address 0) tells a device that answers — with data or with an
exception — from one that is absent (no answer, or a gateway's exception 10/11). Per table:
address 0 tells whether the function code is supported (exception 1 says not); readable
addresses are then sampled every `stride` addresses up to `max_address`, and each readable
sample is grown into the run of addresses around it with block reads (doubling, then
bisecting at the edge). A run shorter than the stride between two samples can be missed:
`stride = 1` samples every address. `read_map` reads the values of every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

TABLES = (("coil", 1, 2000), ("discrete", 2, 2000), ("holding", 3, 125), ("input", 4, 125))
"""(table, read function code, most items one request may read)."""
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
GATEWAY_ABSENT = frozenset({10, 11})


class DiscoveryError(Exception):
    """The scan could not start (no connection) or its arguments are unusable."""


@dataclass(frozen=True, slots=True)
class ModbusScanSettings:
    units: Sequence[int] = (1,)
    timeout_s: float = 0.5
    rate_per_s: float = 50.0
    """Requests per second at most (a busy RTU gateway or a slow device deserves less)."""
    max_address: int = 999
    stride: int = 8
    deadline_s: float = 120.0
    max_requests: int = 20_000
    read_map: bool = False

    def __post_init__(self) -> None:
        if not self.units or any(not 0 <= u <= 255 for u in self.units):
            raise DiscoveryError("unit ids are 0..255")
        if not 0 < self.timeout_s <= 30 or not 0 < self.rate_per_s <= 10_000:
            raise DiscoveryError("timeout 0..30 s and rate 0..10000 requests/s")
        if not 0 <= self.max_address <= 65535 or not 1 <= self.stride <= 2000:
            raise DiscoveryError("max address 0..65535 and stride 1..2000")
        if not 0 < self.deadline_s <= 3600 or not 1 <= self.max_requests <= 1_000_000:
            raise DiscoveryError("deadline up to an hour, request budget 1..1000000")


@dataclass
class TableResult:
    table: str
    function_code: int
    supported: bool | None = None
    ranges: list[tuple[int, int]] = field(default_factory=list)
    """Readable runs, [start, end) each."""
    exceptions: dict[int, int] = field(default_factory=dict)
    """Exception code → times answered."""
    values: dict[int, int | bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "function_code": self.function_code,
            "supported": self.supported,
            "ranges": [[a, b - 1] for a, b in self.ranges],
            "exceptions": {f"{c} ({EXCEPTION_NAMES.get(c, '?')})": n for c, n in sorted(self.exceptions.items())},
            **({"values": {str(k): v for k, v in sorted(self.values.items())}} if self.values else {}),
        }


@dataclass
class UnitResult:
    unit_id: int
    alive: bool
    answer: str
    tables: list[TableResult] = field(default_factory=list)
    identification: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit_id": self.unit_id,
            "alive": self.alive,
            "answer": self.answer,
            "identification": self.identification,
            "tables": [t.to_dict() for t in self.tables],
        }


@dataclass
class ModbusScan:
    host: str
    port: int
    settings: ModbusScanSettings
    units: list[UnitResult] = field(default_factory=list)
    requests: int = 0
    duration_s: float = 0.0
    stopped: str | None = None
    """Why the scan ended early (deadline, request budget, connection lost), None when complete."""

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "host": self.host,
            "port": self.port,
            "requests": self.requests,
            "duration_s": self.duration_s,
            "stopped": self.stopped,
            "rate_per_s": s.rate_per_s,
            "stride": s.stride,
            "max_address": s.max_address,
            "units_probed": list(s.units),
            "live_units": [u.unit_id for u in self.units if u.alive],
            "units": [u.to_dict() for u in self.units],
        }


class _Stop(Exception):
    pass


class _Answer:
    """One request's outcome: data, an exception code, or nothing (timeout)."""

    __slots__ = ("data", "exception")

    def __init__(self, data: list[Any] | None = None, exception: int | None = None) -> None:
        self.data = data
        self.exception = exception

    @property
    def ok(self) -> bool:
        return self.data is not None


class ModbusScanner:
    """One scan over one TCP connection (`run()`); every request passes `_request`."""

    def __init__(
        self, host: str, port: int, settings: ModbusScanSettings, progress: Callable[[str], None] | None = None
    ) -> None:
        self.result = ModbusScan(host, port, settings)
        self.settings = settings
        self._progress = progress or (lambda _m: None)
        self._client: AsyncModbusTcpClient | None = None
        self._last = -1e9
        self._deadline = 0.0

    async def run(self) -> ModbusScan:
        started = time.monotonic()
        self._deadline = started + self.settings.deadline_s
        self._client = AsyncModbusTcpClient(
            self.result.host, port=self.result.port, timeout=self.settings.timeout_s, retries=0, reconnect_delay=0
        )
        try:
            async with asyncio.timeout(min(self.settings.timeout_s * 4, 10.0)):
                connected = await self._client.connect()
        except TimeoutError:
            connected = False
        if not connected:
            self._client.close()
            raise DiscoveryError(f"cannot connect to {self.result.host}:{self.result.port}")
        try:
            for unit in self.settings.units:
                self._progress(f"unit {unit}")
                await self._scan_unit(unit)
        except _Stop as exc:
            self.result.stopped = str(exc)
        finally:
            self._client.close()
            self.result.duration_s = time.monotonic() - started
        return self.result

    # ------------------------------------------------------------------ requests

    async def _request(self, make: Callable[[], Awaitable[Any]], count: int, bits: bool = False) -> _Answer:
        if time.monotonic() > self._deadline:
            raise _Stop(f"deadline of {self.settings.deadline_s:g} s reached")
        if self.result.requests >= self.settings.max_requests:
            raise _Stop(f"request budget of {self.settings.max_requests} used")
        gap = 1.0 / self.settings.rate_per_s - (time.monotonic() - self._last)
        if gap > 0:
            await asyncio.sleep(gap)
        self._last = time.monotonic()
        self.result.requests += 1
        assert self._client is not None
        try:
            async with asyncio.timeout(self.settings.timeout_s + 0.5):
                response = await make()
        except (TimeoutError, ModbusException, OSError):
            if not self._client.connected:
                with contextlib.suppress(TimeoutError, ModbusException, OSError):
                    async with asyncio.timeout(min(self.settings.timeout_s * 4, 10.0)):
                        await self._client.connect()
                if not self._client.connected:
                    raise _Stop("connection lost") from None
            return _Answer()
        if response.isError():
            return _Answer(exception=int(getattr(response, "exception_code", 0) or 0))
        data = getattr(response, "bits" if bits else "registers", None) or []
        return _Answer(data=list(data)[:count])

    def _read(self, fc: int, unit: int, address: int, count: int) -> Callable[[], Awaitable[Any]]:
        client = self._client
        assert client is not None
        read = {
            1: client.read_coils,
            2: client.read_discrete_inputs,
            3: client.read_holding_registers,
            4: client.read_input_registers,
        }[fc]
        return lambda: read(address, count=count, device_id=unit)

    async def _readable(self, table: TableResult, unit: int, address: int, count: int) -> bool:
        if count <= 0 or address < 0 or address + count - 1 > 65535:
            return False
        answer = await self._request(
            self._read(table.function_code, unit, address, count), count, table.function_code in (1, 2)
        )
        if answer.exception is not None:
            table.exceptions[answer.exception] = table.exceptions.get(answer.exception, 0) + 1
        return answer.ok

    # ------------------------------------------------------------------ per unit

    async def _scan_unit(self, unit: int) -> None:
        probe = await self._request(self._read(3, unit, 0, 1), 1)
        if probe.ok:
            result = UnitResult(unit, True, "data")
        elif probe.exception in GATEWAY_ABSENT:
            self.result.units.append(
                UnitResult(unit, False, f"exception {probe.exception} ({EXCEPTION_NAMES[probe.exception]})")
            )
            return
        elif probe.exception is not None:
            result = UnitResult(
                unit, True, f"exception {probe.exception} ({EXCEPTION_NAMES.get(probe.exception, 'unknown')})"
            )
        else:
            self.result.units.append(UnitResult(unit, False, "no answer"))
            return
        self.result.units.append(result)
        for name, fc, max_count in TABLES:
            table = TableResult(name, fc)
            result.tables.append(table)
            await self._scan_table(table, unit, max_count)
        if not any(t.ranges for t in result.tables) and all(set(t.exceptions) == {4} for t in result.tables):
            # what a gateway (or pymodbus's server) answers for a unit id it has no device for
            result.alive = False
            result.answer = "device failure (exception 4) to every request: no device behind this unit id?"
            return
        result.identification = await self._identification(unit)

    async def _scan_table(self, table: TableResult, unit: int, max_count: int) -> None:
        first = await self._request(self._read(table.function_code, unit, 0, 1), 1, table.function_code in (1, 2))
        if first.exception is not None:
            table.exceptions[first.exception] = table.exceptions.get(first.exception, 0) + 1
        if first.exception == 1:
            table.supported = False
            return
        if not first.ok and first.exception is None:
            table.supported = None  # no answer to this function code
            return
        table.supported = True
        top = self.settings.max_address
        address = 0
        ranges: list[tuple[int, int]] = []
        steps = 0
        while address <= top and steps <= 65536:
            steps += 1
            if ranges and address < ranges[-1][1]:
                address = ranges[-1][1]
                continue
            readable = first.ok if address == 0 else await self._readable(table, unit, address, 1)
            if not readable:
                address += self.settings.stride
                continue
            floor = ranges[-1][1] if ranges else 0
            start = await self._grow_down(table, unit, address, floor, max_count)
            end = await self._grow_up(table, unit, address, top, max_count)
            if ranges and start <= ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
            # `end` is unreadable (or past the top): sampling resumes on the stride's grid after it
            address = (end // self.settings.stride + 1) * self.settings.stride
        table.ranges = ranges
        if self.settings.read_map:
            for start, end in ranges:
                a = start
                while a < end:
                    n = min(max_count, end - a)
                    answer = await self._request(
                        self._read(table.function_code, unit, a, n), n, table.function_code in (1, 2)
                    )
                    if answer.ok and answer.data is not None:
                        for k, v in enumerate(answer.data[:n]):
                            table.values[a + k] = bool(v) if table.function_code in (1, 2) else int(v)
                    a += n

    async def _grow_up(self, table: TableResult, unit: int, start: int, top: int, max_count: int) -> int:
        """The end (exclusive) of the readable run from `start`, within `top`."""
        base = start
        while base <= top:
            room = min(max_count, top - base + 1)
            good, n = 1, 1  # read(base, good) is known readable
            bad: int | None = None
            while n < room:
                n = min(n * 2, room)
                if await self._readable(table, unit, base, n):
                    good = n
                else:
                    bad = n
                    break
            if bad is None:
                if good < max_count or base + good > top:
                    return base + good
                base += good  # a whole request's worth readable: the run may go on
                if not await self._readable(table, unit, base, 1):
                    return base
                continue
            lo, hi = good, bad  # readable count lo, unreadable count hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if await self._readable(table, unit, base, mid):
                    lo = mid
                else:
                    hi = mid
            return base + lo
        return top + 1

    async def _grow_down(self, table: TableResult, unit: int, sample: int, floor: int, max_count: int) -> int:
        """The first address of the readable run that holds `sample` (not below `floor`)."""
        lo = max(floor, sample - self.settings.stride + 1, sample - max_count + 1)
        hi = sample  # read(hi .. sample) is readable
        if lo >= hi:
            return hi
        if await self._readable(table, unit, lo, sample - lo + 1):
            return lo
        lo += 1
        while lo < hi:  # the smallest s in [lo, hi] with read(s .. sample) readable
            mid = (lo + hi) // 2
            if await self._readable(table, unit, mid, sample - mid + 1):
                hi = mid
            else:
                lo = mid + 1
        return hi

    async def _identification(self, unit: int) -> dict[str, str] | None:
        assert self._client is not None
        client = self._client
        answer_holder: dict[str, Any] = {}

        async def ask() -> Any:
            response = await client.read_device_information(read_code=1, object_id=0, device_id=unit)
            answer_holder["r"] = response
            return response

        answer = await self._request(ask, 0)
        response = answer_holder.get("r")
        if not answer.ok or response is None or response.isError():
            return None
        names = {
            0: "vendor",
            1: "product_code",
            2: "revision",
            3: "vendor_url",
            4: "product_name",
            5: "model_name",
            6: "application_name",
        }
        info = getattr(response, "information", {}) or {}
        return {
            names.get(k, f"object_{k}"): (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
            for k, v in info.items()
        }


def parse_units(text: str) -> list[int]:
    """'1-247', '1,2,5-7' → unit ids (0..255)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise DiscoveryError(f"units: expected ids or ranges like 1-247 or 1,3,5-7, found {part!r}") from None
        if not 0 <= lo <= hi <= 255:
            raise DiscoveryError(f"units: {part!r} is outside 0..255 or reversed")
        out.extend(range(lo, hi + 1))
    if not out:
        raise DiscoveryError("units: none given")
    return sorted(set(out))


def scan(
    host: str, port: int, settings: ModbusScanSettings, progress: Callable[[str], None] | None = None
) -> ModbusScan:
    """Run a scan to its end (synchronous, for the command line)."""
    return asyncio.run(ModbusScanner(host, port, settings, progress).run())
