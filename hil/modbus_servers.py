"""Simulated Modbus IEDs: pymodbus servers whose register maps come from the site file.

Each Modbus IED of the site is served as the real device would be: its points are laid out
at their configured addresses, with their type, word order, scale and offset, so the same
site file drives the gateway against the simulator and against the field. IEDs that share
an endpoint (one TCP host:port, or one RS-485 line) are served by one server answering
several unit ids.

Values flow one way from the model into the registers (`ModbusEndpoint.update`); writes from
the gateway flow the other way, synchronously, from the pymodbus request handler straight to
`on_write(point_id, value)` before the response is sent: the model sees a trip-coil write in
the same event-loop turn that received it.

Everything here runs on one asyncio loop (the simulator's); nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from gateway.contract.settings import (
    DataType,
    ModbusPoint,
    ModbusRtuIed,
    ModbusTcpIed,
    RegisterFunction,
)
from hil.grid.switching import CommandRefused

log = logging.getLogger(__name__)

WriteHandler = Callable[[str, float | int | bool], None]
"""Called with (point_id, engineering value) for every gateway write; raise ValueError to refuse
(answered "illegal value"), CommandRefused when the device's state refuses it (local control:
answered "illegal function", the server being in the wrong state for the request)."""

# Modbus function codes: reads (used by the simulator to update its own tables) and writes.
FC_READ = {
    RegisterFunction.COIL: 1,
    RegisterFunction.DISCRETE: 2,
    RegisterFunction.HOLDING: 3,
    RegisterFunction.INPUT: 4,
}
FC_WRITE_BITS = frozenset({5, 15})
FC_WRITE_REGISTERS = frozenset({6, 16, 22, 23})

_STRUCT = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.FLOAT32: ">f",
}
_INT_LIMITS = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}
_BIT_TABLES = (RegisterFunction.COIL, RegisterFunction.DISCRETE)


# --------------------------------------------------------------------------- codec


def to_registers(value: float | int | bool, point: ModbusPoint) -> list[int]:
    """Engineering value → 16-bit words as the device holds them: raw = (value - offset) / scale.

    A device saturates rather than wraps: integers beyond the type's range are clamped, and a
    non-finite value reads as 0 for integers (NaN stays NaN for float32).
    """
    raw = (float(value) - point.offset) / point.scale
    if point.type is DataType.FLOAT32:
        data = struct.pack(">f", raw)
    else:
        low, high = _INT_LIMITS[point.type]
        as_int = round(raw) if math.isfinite(raw) else 0
        data = struct.pack(_STRUCT[point.type], min(max(as_int, low), high))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if point.word_order.value == "little":
        words.reverse()
    return words


def from_registers(words: Sequence[int], point: ModbusPoint) -> float | int:
    """16-bit words → engineering value (inverse of `to_registers`)."""
    ordered = list(words)
    if point.word_order.value == "little":
        ordered.reverse()
    data = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in ordered)
    (raw,) = struct.unpack(_STRUCT[point.type], data)
    if point.scale == 1.0 and point.offset == 0.0 and isinstance(raw, int):
        return raw
    return raw * point.scale + point.offset


# --------------------------------------------------------------------------- one IED's map


@dataclass
class _Table:
    function: RegisterFunction
    size: int
    points: list[ModbusPoint] = field(default_factory=list)


class RegisterMap:
    """One IED's points laid out per table, and the cached words last written for each point."""

    def __init__(self, ied: ModbusTcpIed | ModbusRtuIed) -> None:
        self.ied = ied
        self.tables: dict[RegisterFunction, _Table] = {}
        for point in ied.points:
            width = 1 if point.function in _BIT_TABLES else point.type.registers
            table = self.tables.setdefault(point.function, _Table(point.function, 0))
            table.points.append(point)
            table.size = max(table.size, point.address + width)
        self.by_id: dict[str, ModbusPoint] = {p.id: p for p in ied.points}
        self._last: dict[str, list[int] | bool] = {}

    def sim_device(self, action: Any) -> SimDevice:
        """A pymodbus device with every table readable from address 0 to its last point.

        Gaps between points read as 0, as on most devices, so a master may span them.
        """
        blocks: list[list[SimData]] = []
        for function in (
            RegisterFunction.COIL,
            RegisterFunction.DISCRETE,
            RegisterFunction.HOLDING,
            RegisterFunction.INPUT,
        ):
            table = self.tables.get(function)
            if table is None and function in _BIT_TABLES:  # pymodbus needs one; the action refuses it
                blocks.append([SimData(0, count=1, values=False, datatype=SimType.BITS)])
            elif table is None:
                blocks.append([SimData(0, datatype=SimType.INVALID)])
            elif function in _BIT_TABLES:
                blocks.append([SimData(0, count=table.size, values=False, datatype=SimType.BITS)])
            else:
                blocks.append([SimData(0, count=table.size, values=0, datatype=SimType.REGISTERS)])
        return SimDevice(self.ied.unit_id, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]), action=action)

    def changed_words(self, values: dict[str, Any]) -> list[tuple[int, int, list[int] | list[bool]]]:
        """(read function code, address, words or bits) for each point whose value changed."""
        out: list[tuple[int, int, list[int] | list[bool]]] = []
        last = self._last
        for point_id, point in self.by_id.items():
            value = values.get(point_id)
            if value is None:
                continue
            encoded: list[int] | bool
            if point.function in _BIT_TABLES:
                encoded = bool(value)
            else:
                try:
                    encoded = to_registers(value, point)
                except (TypeError, ValueError):
                    log.warning("%s: model value %r for %s cannot be encoded", self.ied.id, value, point_id)
                    continue
            if last.get(point_id) == encoded:
                continue
            last[point_id] = encoded
            words: list[int] | list[bool] = [encoded] if isinstance(encoded, bool) else encoded
            out.append((FC_READ[point.function], point.address, words))
        return out

    def forget(self) -> None:
        """Drop the cache, so the next update rewrites every point (after a server restart)."""
        self._last.clear()

    def decode_write(
        self,
        function_code: int,
        address: int,
        written: Sequence[int] | Sequence[bool],
        current: Sequence[int],
        start_address: int,
    ) -> list[tuple[str, float | int | bool]] | ExcCodes:
        """Which writable points a write request sets, and to what; an exception code if refused."""
        count = len(written)
        if function_code in FC_WRITE_BITS:
            table = self.tables.get(RegisterFunction.COIL)
            touched = {a: bool(written[a - address]) for a in range(address, address + count)}
            hits: list[tuple[str, float | int | bool]] = []
            covered: set[int] = set()
            for point in table.points if table else []:
                if point.address in touched:
                    if not point.writable:
                        return ExcCodes.ILLEGAL_ADDRESS
                    hits.append((point.id, touched[point.address]))
                    covered.add(point.address)
            return hits if covered == set(touched) else ExcCodes.ILLEGAL_ADDRESS
        table = self.tables.get(RegisterFunction.HOLDING)
        if table is None:
            return ExcCodes.ILLEGAL_ADDRESS
        end = address + count
        hits = []
        covered = set()
        for point in table.points:
            width = point.type.registers
            if point.address + width <= address or point.address >= end:
                continue
            if not point.writable:
                return ExcCodes.ILLEGAL_ADDRESS
            words = []
            for reg in range(point.address, point.address + width):
                if address <= reg < end:
                    words.append(int(written[reg - address]))
                    covered.add(reg)
                else:  # a partial write of a 32-bit point keeps the other word
                    words.append(int(current[reg - start_address]))
            hits.append((point.id, from_registers(words, point)))
        if covered != set(range(address, end)):
            return ExcCodes.ILLEGAL_ADDRESS
        return hits


# --------------------------------------------------------------------------- endpoints


class ModbusEndpoint:
    """One listening server (a TCP host:port or one serial line) and the IEDs behind it."""

    def __init__(
        self,
        ieds: Sequence[ModbusTcpIed | ModbusRtuIed],
        on_write: WriteHandler,
        *,
        bind_host: str | None = None,
        serial_path: str | None = None,
        special_maps: dict[str, Any] | None = None,
    ) -> None:
        if not ieds:
            raise ValueError("an endpoint serves at least one IED")
        self.ieds = list(ieds)
        special = special_maps or {}
        # an IED with a register map of its own (a SunSpec inverter: `hil.sunspec.SunSpecMap`)
        self.maps: dict[int, Any] = {ied.unit_id: special.get(ied.id) or RegisterMap(ied) for ied in ieds}
        if len(self.maps) != len(self.ieds):
            ids = ", ".join(i.id for i in ieds)
            raise ValueError(f"IEDs {ids} share one endpoint and one unit id")
        self.on_write = on_write
        first = ieds[0]
        self.serial = isinstance(first, ModbusRtuIed)
        self.bind_host = bind_host
        self.serial_path = serial_path
        self.silent: set[str] = set()
        """IED ids that ignore every request (a lost link) until cleared."""
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.requests = 0
        self.writes = 0
        self.refused_writes = 0
        self.ignored = 0
        self.absent_unit_requests = 0

    @property
    def name(self) -> str:
        first = self.ieds[0]
        if isinstance(first, ModbusRtuIed):
            return first.serial_port
        return f"{self.bind_host or first.host}:{first.port}"

    def _action(self, unit_id: int) -> Any:
        regmap = self.maps[unit_id]
        ied_id = regmap.ied.id
        absent = {fc for function, fc in FC_READ.items() if function not in regmap.tables}

        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            current: list[int],
            written: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if function_code in FC_READ.values():
                if written is None:
                    self.requests += 1
                    if ied_id in self.silent:
                        self.ignored += 1
                        raise NoSuchIdException(f"{ied_id} is silent")
                    if function_code in absent:
                        return ExcCodes.ILLEGAL_ADDRESS
                return None  # the simulator updating its own tables
            self.requests += 1
            if ied_id in self.silent:
                self.ignored += 1
                raise NoSuchIdException(f"{ied_id} is silent")
            if written is None or (function_code not in FC_WRITE_BITS and function_code not in FC_WRITE_REGISTERS):
                return None
            hits = regmap.decode_write(function_code, address, written, current, start_address)
            if isinstance(hits, ExcCodes):
                self.refused_writes += 1
                log.info(
                    "%s: write fc=%d at %d x%d refused: %s", ied_id, function_code, address, len(written), hits.name
                )
                return hits
            for point_id, value in hits:
                try:
                    self.on_write(point_id, value)
                except CommandRefused as exc:
                    self.refused_writes += 1
                    log.info("%s: write %s=%r refused: %s", ied_id, point_id, value, exc)
                    return ExcCodes.ILLEGAL_FUNCTION
                except ValueError as exc:
                    self.refused_writes += 1
                    log.info("%s: write %s=%r refused by the model: %s", ied_id, point_id, value, exc)
                    return ExcCodes.ILLEGAL_VALUE
                except Exception:
                    self.refused_writes += 1
                    log.exception("%s: write %s=%r failed in the model", ied_id, point_id, value)
                    return ExcCodes.DEVICE_FAILURE
            self.writes += 1
            return None

        return action

    def _devices(self) -> list[SimDevice]:
        devices = [m.sim_device(self._action(uid)) for uid, m in self.maps.items()]
        if 0 not in self.maps:
            devices.append(self._absent_unit())
        return devices

    def _absent_unit(self) -> SimDevice:
        """What answers for a unit id no IED of this endpoint has (pymodbus hands such requests to
        device 0). On an RS-485 line no device recognises the address, so nothing answers and the
        master times out; a Modbus TCP endpoint answers as a gateway whose target did not respond
        (exception 11). Either way never exception 4, which would claim a device is there."""

        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            current: list[int],
            written: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if function_code in FC_READ.values() and written is not None:
                return None  # the simulator's own table access
            self.requests += 1
            self.absent_unit_requests += 1
            if self.serial:
                raise NoSuchIdException("no such unit on this line")
            return ExcCodes.GATEWAY_NO_RESPONSE

        blocks = (
            [SimData(0, count=1, values=False, datatype=SimType.BITS)],
            [SimData(0, count=1, values=False, datatype=SimType.BITS)],
            [SimData(0, count=1, values=0, datatype=SimType.REGISTERS)],
            [SimData(0, count=1, values=0, datatype=SimType.REGISTERS)],
        )
        return SimDevice(0, simdata=blocks, action=action)

    async def start(self) -> None:
        """Listen (TCP) or open the serial line; the tables are filled by the next `update`."""
        if self.server is not None:
            return
        for regmap in self.maps.values():
            regmap.forget()
        first = self.ieds[0]
        server: ModbusTcpServer | ModbusSerialServer
        if isinstance(first, ModbusRtuIed):
            # A pty ignores line settings but refuses some of them (even/odd parity: EINVAL),
            # so the simulator's end of a pty pair is opened 8N1; a real line keeps the site's.
            pty = self.serial_path is not None
            server = ModbusSerialServer(
                self._devices(),
                port=self.serial_path or first.serial_port,
                baudrate=first.baudrate,
                parity="N" if pty else first.parity,
                stopbits=1 if pty else first.stopbits,
                bytesize=8 if pty else first.bytesize,
                ignore_missing_devices=True,
            )
        else:
            assert isinstance(first, ModbusTcpIed)
            server = ModbusTcpServer(
                self._devices(), address=(self.bind_host or first.host, first.port), ignore_missing_devices=True
            )
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            with contextlib.suppress(Exception):
                await server.shutdown()
            ieds = ", ".join(i.id for i in self.ieds)
            hint = "" if self.serial else " (port in use, or an address not on this machine: see --bind)"
            raise RuntimeError(f"cannot serve {ieds} on {self.name}: {exc}{hint}") from None
        self.server = server
        log.info("serving %s on %s", ", ".join(f"{i.id} (unit {i.unit_id})" for i in self.ieds), self.name)

    async def stop(self) -> None:
        """Close the listener and every open connection (the device is switched off)."""
        server, self.server = self.server, None
        if server is not None:
            with contextlib.suppress(Exception):
                await server.shutdown()

    async def update(self, values: dict[str, Any]) -> int:
        """Write the model's values of this endpoint's points into the tables; returns words set."""
        server = self.server
        if server is None:
            return 0
        n = 0
        for uid, regmap in self.maps.items():
            for fc, address, words in regmap.changed_words(values):
                result = await server.context.async_setValues(uid, fc, address, words)
                if result is not None:
                    log.warning("%s: cannot set fc=%d address %d: %s", regmap.ied.id, fc, address, result)
                n += len(words)
        return n

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.name,
            "ieds": [i.id for i in self.ieds],
            "listening": self.server is not None,
            "silent": sorted(self.silent),
            "requests": self.requests,
            "writes": self.writes,
            "refused_writes": self.refused_writes,
            "ignored": self.ignored,
            "absent_unit_requests": self.absent_unit_requests,
        }


def group_endpoints(
    ieds: Sequence[Any],
) -> tuple[dict[tuple[str, int], list[ModbusTcpIed]], dict[str, list[ModbusRtuIed]]]:
    """Enabled Modbus IEDs grouped by TCP (host, port) and by serial line."""
    tcp: dict[tuple[str, int], list[ModbusTcpIed]] = {}
    rtu: dict[str, list[ModbusRtuIed]] = {}
    for ied in ieds:
        if not ied.enabled:
            continue
        if isinstance(ied, ModbusTcpIed):
            tcp.setdefault((ied.host, ied.port), []).append(ied)
        elif isinstance(ied, ModbusRtuIed):
            rtu.setdefault(ied.serial_port, []).append(ied)
    return tcp, rtu


async def wait_listening(host: str, port: int, timeout_s: float = 5.0) -> None:
    """Until a TCP connect to host:port succeeds (the server's listen is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return
