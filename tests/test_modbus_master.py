"""The Modbus masters against real pymodbus servers (TCP on loopback, RTU over a socat pty pair)."""

from __future__ import annotations

import asyncio
import socket
import logging
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.contract.clock import SystemClock
from gateway.contract.settings import ModbusRtuIed, ModbusTcpIed
from gateway.contract.points import PointUpdate, QualityReason
from gateway.contract.ports import CommandError, Priority
from protocols.base import WriteQueue
from protocols.modbus import ModbusRtuMaster, ModbusTcpMaster, encode_value

from tests.support.modbus_server import ModbusTestServer, free_port, modbus_server

log = logging.getLogger("test")


def tcp_ied(port: int, **kw: object) -> ModbusTcpIed:
    points = [
        {"id": "ia", "address": 0, "type": "float32", "unit": "A"},
        {"id": "kv", "address": 2, "type": "uint16", "scale": 0.01, "unit": "kV", "valid_range": [0, 40]},
        {"id": "temp", "address": 3, "type": "int16", "scale": 0.1, "offset": -40.0},
        {"id": "ops", "address": 10, "type": "uint32", "word_order": "little", "kind": "counter"},
        {"id": "far", "address": 1500, "type": "uint16"},
        {"id": "closed", "address": 0, "function": "discrete", "type": "bool"},
        {"id": "trip", "address": 0, "function": "coil", "type": "bool", "writable": True},
        {"id": "tap", "address": 100, "type": "int16", "writable": True},
    ]
    data = {
        "id": "IED-T",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "poll_period_ms": 50,
        "timeout_ms": 200,
        "retries": 0,
        "points": points,
        **kw,
    }
    return ModbusTcpIed.model_validate(data)


class Collector:
    def __init__(self) -> None:
        self.latest: dict[str, PointUpdate] = {}
        self.history: list[PointUpdate] = []

    def __call__(self, updates: list[PointUpdate]) -> None:
        for u in updates:
            self.latest[u.point_id] = u
            self.history.append(u)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture()
def server() -> Iterator[ModbusTestServer]:
    with modbus_server() as srv:
        yield srv


def test_values_are_decoded_scaled_and_qualified(server: ModbusTestServer) -> None:
    cfg = tcp_ied(server.port)
    pts = {p.id: p for p in cfg.points}
    server.set(
        "holding", 0, encode_value(412.5, pts["ia"]) + encode_value(11.05, pts["kv"]) + encode_value(25.3, pts["temp"])
    )
    server.set("holding", 10, encode_value(123456, pts["ops"]))
    server.set("discrete", 0, [True])
    got = Collector()

    async def main() -> None:
        master = ModbusTcpMaster(cfg, got, SystemClock(), log)
        task = asyncio.create_task(master.run())
        await until(lambda: {"ia", "kv", "temp", "ops", "closed", "far"} <= got.latest.keys())
        await master.close()
        task.cancel()

    asyncio.run(main())
    assert got.latest["ia"].value == pytest.approx(412.5) and got.latest["ia"].quality.good
    assert got.latest["kv"].value == pytest.approx(11.05)
    assert got.latest["temp"].value == pytest.approx(25.3)
    assert got.latest["ops"].value == 123456
    assert got.latest["closed"].value is True
    # the server holds 1,000 registers: reading 1500 answers with an exception, marked so,
    # and it never stopped the other points from being polled
    assert got.latest["far"].quality.reason is QualityReason.DEVICE_EXCEPTION


def test_out_of_range_value_is_marked(server: ModbusTestServer) -> None:
    cfg = tcp_ied(server.port)
    server.set("holding", 2, [9999])  # 99.99 kV, outside [0, 40]
    got = Collector()

    async def main() -> None:
        master = ModbusTcpMaster(cfg, got, SystemClock(), log)
        task = asyncio.create_task(master.run())
        await until(lambda: "kv" in got.latest)
        await master.close()
        task.cancel()

    asyncio.run(main())
    assert got.latest["kv"].quality.reason is QualityReason.OUT_OF_RANGE
    assert got.latest["kv"].value == pytest.approx(99.99)


def test_comm_loss_marks_points_invalid_and_recovers(server: ModbusTestServer) -> None:
    cfg = tcp_ied(server.port)
    server.set("holding", 0, encode_value(100.0, cfg.points[0]))
    got = Collector()

    async def main() -> None:
        master = ModbusTcpMaster(cfg, got, SystemClock(), log)
        task = asyncio.create_task(master.run())
        await until(lambda: "ia" in got.latest and got.latest["ia"].quality.good)
        await asyncio.to_thread(server.stop)
        await until(lambda: got.latest["ia"].quality.reason is QualityReason.COMMUNICATION_FAILURE)
        assert master.status.state.value in ("offline", "connecting")
        await asyncio.to_thread(server.start)
        server.set("holding", 0, encode_value(200.0, cfg.points[0]))
        await until(lambda: got.latest["ia"].quality.good and got.latest["ia"].value == 200.0, timeout=15)
        assert master.status.state.value == "online"
        await master.close()
        task.cancel()

    asyncio.run(main())
    invalid = [u for u in got.history if u.point_id == "ia" and not u.quality.good]
    assert invalid and all(u.value is None for u in invalid)


def test_writes_reach_the_device_and_bad_writes_are_refused(server: ModbusTestServer) -> None:
    cfg = tcp_ied(server.port)
    got = Collector()
    errors: list[str] = []

    async def main() -> None:
        master = ModbusTcpMaster(cfg, got, SystemClock(), log)
        task = asyncio.create_task(master.run())
        await until(lambda: master.status.state.value == "online")
        await master.submit_write("trip", True, Priority.PROTECTION)
        await master.submit_write("tap", -3, Priority.SETPOINT)
        for pid, value in (("ia", 1.0), ("nope", 1), ("tap", 40000)):
            try:
                await master.submit_write(pid, value)
            except CommandError as exc:
                errors.append(str(exc))
        await master.close()
        task.cancel()

    asyncio.run(main())
    assert server.get("coil", 0) == [True]
    assert server.get("holding", 100) == [0xFFFD]
    assert len(errors) == 3
    assert "not writable" in errors[0] and "not a point" in errors[1] and "outside int16" in errors[2]


def test_write_queue_orders_by_priority_then_arrival() -> None:
    async def main() -> list[str]:
        queue = WriteQueue()
        queue.put("setpoint-1", 1, Priority.SETPOINT, 0.0)
        queue.put("control-1", 1, Priority.CONTROL, 0.0)
        queue.put("trip-1", True, Priority.PROTECTION, 0.0)
        queue.put("control-2", 1, Priority.CONTROL, 0.0)
        queue.put("trip-2", True, Priority.PROTECTION, 0.0)
        order = []
        while (item := queue.pop()) is not None:
            order.append(item.point_id)
        return order

    assert asyncio.run(main()) == ["trip-1", "trip-2", "control-1", "control-2", "setpoint-1"]


# ----------------------------------------------------------------------------- RTU


@pytest.fixture()
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("socat") is None:
        pytest.fail("socat is required (make test installs it)")
    a, b = tmp_path / "ttyGW", tmp_path / "ttyIED"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 5
    while not (a.exists() and b.exists()):
        assert time.monotonic() < end, "socat did not create the pty pair"
        time.sleep(0.02)
    yield str(a), str(b)
    proc.terminate()
    proc.wait(5)


def test_rtu_two_devices_share_one_line(pty_pair: tuple[str, str]) -> None:
    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusSerialServer

    gw_end, ied_end = pty_pair

    def ied(uid: int) -> ModbusRtuIed:
        return ModbusRtuIed.model_validate(
            {
                "id": f"IED-RTU-{uid}",
                "protocol": "modbus_rtu",
                "serial_port": gw_end,
                "unit_id": uid,
                "poll_period_ms": 50,
                "timeout_ms": 300,
                "inter_request_delay_ms": 2,
                "parity": "N",
                "stopbits": 2,
                "points": [
                    {"id": f"v{uid}", "address": 0, "function": "input", "type": "uint16", "scale": 0.001},
                    {"id": f"cmd{uid}", "address": 10, "type": "uint16", "writable": True},
                ],
            }
        )

    got = Collector()

    async def main() -> tuple[list[int], list[int]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            devices = {
                uid: ModbusDeviceContext(
                    ir=ModbusSequentialDataBlock(1, [11000 + uid] * 20), hr=ModbusSequentialDataBlock(1, [0] * 20)
                )
                for uid in (1, 2)
            }
            server = ModbusSerialServer(
                ModbusServerContext(devices=devices, single=False), port=ied_end, baudrate=19200, parity="N", stopbits=2
            )
        await server.serve_forever(background=True)
        masters = [ModbusRtuMaster(ied(uid), got, SystemClock(), log) for uid in (1, 2)]
        tasks = [asyncio.create_task(m.run()) for m in masters]
        await until(lambda: {"v1", "v2"} <= got.latest.keys() and all(got.latest[k].quality.good for k in ("v1", "v2")))
        await asyncio.gather(masters[0].submit_write("cmd1", 3), masters[1].submit_write("cmd2", 4))
        polls = [m.status.polls for m in masters]
        await until(lambda: all(m.status.polls >= p + 5 for m, p in zip(masters, polls, strict=True)))
        errors = [m.status.poll_errors for m in masters]
        for m in masters:
            await m.close()
        for t in tasks:
            t.cancel()
        c1 = await server.context.async_getValues(1, 3, 10, 1)
        c2 = await server.context.async_getValues(2, 3, 10, 1)
        await server.shutdown()
        assert errors == [0, 0], "requests collided on the shared line"
        return list(c1), list(c2)

    c1, c2 = asyncio.run(main())
    assert got.latest["v1"].value == pytest.approx(11.001)
    assert got.latest["v2"].value == pytest.approx(11.002)
    assert (c1, c2) == ([3], [4])


def test_writes_use_the_command_link_and_fall_back_when_it_fails(server: ModbusTestServer) -> None:
    cfg = tcp_ied(server.port)

    async def main() -> tuple[bool, bool, bool, bool]:
        master = ModbusTcpMaster(cfg, Collector(), SystemClock(), log)
        master.COMMAND_LINK_RETRY_S = 0.5
        task = asyncio.create_task(master.run())
        await until(lambda: master.status.state.value == "online" and master.status.extra.get("command_link"))
        await master.submit_write("trip", True, Priority.PROTECTION)
        on_link = bool(master.status.extra["command_link"])
        # the command connection breaks for good (its peer is gone): the write must still
        # reach the device, over the polling link
        assert master._cmd is not None
        master._cmd._sock.shutdown(socket.SHUT_RDWR)
        await asyncio.wait_for(master.submit_write("tap", 7, Priority.CONTROL), 10)
        fell_back = master.status.extra["command_link"] is False
        # some time later the command link is opened again, and writes take it
        await until(lambda: master._cmd is not None and master.status.extra["command_link"] is True)
        assert master._cmd is not None
        reopened = master._cmd
        await master.submit_write("trip", False, Priority.PROTECTION)
        back_on_link = master._cmd is reopened and reopened.alive
        await master.close()
        task.cancel()
        return on_link, fell_back, back_on_link, master.status.write_errors == 0

    on_link, fell_back, back_on_link, no_errors = asyncio.run(main())
    assert on_link and fell_back and back_on_link and no_errors
    assert server.get("holding", 100) == [7]
    assert server.get("coil", 0) == [False]


def _peer_requests(peer: socket.socket, timeout: float = 0.3) -> list[bytes]:
    """The Modbus TCP frames the command link sent to its peer so far."""
    peer.settimeout(timeout)
    frames: list[bytes] = []
    data = b""
    try:
        while True:
            chunk = peer.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    while len(data) >= 7:
        size = 6 + int.from_bytes(data[4:6], "big")
        frames.append(data[:size])
        data = data[size:]
    return frames


def _answer(peer: socket.socket, request: bytes) -> None:
    """Echo a write request's PDU back, as an IED confirms a single write."""
    peer.sendall(request)


def test_command_link_keeps_one_write_in_flight_and_sends_the_most_urgent_next() -> None:
    from protocols.modbus import _CommandLink

    async def main() -> tuple[list[bytes], list[bytes], list[bytes], bool]:
        master = ModbusTcpMaster(tcp_ied(free_port(), timeout_ms=5000), Collector(), SystemClock(), log)
        mine, peer = socket.socketpair()
        link = _CommandLink(master, mine, asyncio.get_running_loop(), SystemClock(), master.cfg.timeout_ms / 1000.0)
        try:
            first = master._writes.new_item("tap", 1, Priority.CONTROL, 0.0)
            second = master._writes.new_item("tap", 2, Priority.CONTROL, 0.0)
            trip = master._writes.new_item("trip", True, Priority.PROTECTION, 0.0)
            assert link.put(first) and link.put(second) and link.put(trip)
            sent_first = await asyncio.to_thread(_peer_requests, peer)
            _answer(peer, sent_first[0])
            await asyncio.wait_for(first.future, 5)
            sent_next = await asyncio.to_thread(_peer_requests, peer)
            _answer(peer, sent_next[0])
            await asyncio.wait_for(trip.future, 5)
            sent_last = await asyncio.to_thread(_peer_requests, peer)
            _answer(peer, sent_last[0])
            await asyncio.wait_for(second.future, 5)
            return sent_first, sent_next, sent_last, link.alive
        finally:
            link.close()
            peer.close()

    sent_first, sent_next, sent_last, alive = asyncio.run(main())
    # one write on the wire at a time; the trip queued last goes before the tap change queued before it
    assert [len(f) for f in (sent_first, sent_next, sent_last)] == [1, 1, 1]
    assert sent_first[0][7] == 0x06 and sent_first[0][-2:] == (1).to_bytes(2, "big")
    assert sent_next[0][7] == 0x05 and sent_next[0][10:12] == b"\xff\x00"
    assert sent_last[0][7] == 0x06 and sent_last[0][-2:] == (2).to_bytes(2, "big")
    assert alive


def test_command_link_hands_writes_back_when_the_ied_does_not_answer() -> None:
    from protocols.modbus import _CommandLink

    async def main() -> tuple[list[str], bool, bool]:
        master = ModbusTcpMaster(tcp_ied(free_port()), Collector(), SystemClock(), log)
        mine, peer = socket.socketpair()
        master._cmd = _CommandLink(
            master, mine, asyncio.get_running_loop(), SystemClock(), master.cfg.timeout_ms / 1000.0
        )
        try:
            trip = master._writes.new_item("trip", True, Priority.PROTECTION, 0.0)
            tap = master._writes.new_item("tap", 3, Priority.CONTROL, 0.0)
            assert master._cmd.put(trip) and master._cmd.put(tap)
            await until(lambda: master._cmd is None, timeout=5)  # 200 ms timeout, then handed back
            handed_back = []
            while (item := master._writes.pop()) is not None:
                handed_back.append(item.point_id)
            return handed_back, trip.future.done(), master.status.extra["command_link"]
        finally:
            peer.close()

    handed_back, answered, link_up = asyncio.run(main())
    assert handed_back == ["trip", "tap"]  # to the polling link, most urgent first, futures still open
    assert not answered and link_up is False


def test_command_link_reports_a_refused_write_and_carries_on() -> None:
    from protocols.modbus import _CommandLink

    async def main() -> tuple[str, float, bool]:
        master = ModbusTcpMaster(tcp_ied(free_port(), timeout_ms=5000), Collector(), SystemClock(), log)
        mine, peer = socket.socketpair()
        link = _CommandLink(master, mine, asyncio.get_running_loop(), SystemClock(), master.cfg.timeout_ms / 1000.0)
        try:
            tap = master._writes.new_item("tap", 4, Priority.CONTROL, 0.0)
            assert link.put(tap)
            request = (await asyncio.to_thread(_peer_requests, peer))[0]
            # exception response: function code | 0x80, code 2 (illegal data address)
            peer.sendall(request[:4] + b"\x00\x03" + request[6:7] + bytes([request[7] | 0x80, 2]))
            with pytest.raises(CommandError) as refused:
                await asyncio.wait_for(tap.future, 5)
            again = master._writes.new_item("tap", 5, Priority.CONTROL, 0.0)
            assert link.put(again)
            _answer(peer, (await asyncio.to_thread(_peer_requests, peer))[0])
            sent = await asyncio.wait_for(again.future, 5)
            return str(refused.value), sent, link.alive
        finally:
            link.close()
            peer.close()

    refused, sent, alive = asyncio.run(main())
    assert "refused write to tap: exception code 2" in refused
    assert sent > 0 and alive


def test_the_polling_link_takes_only_the_answer_to_the_request_in_flight() -> None:
    """A late answer (another transaction id) is passed over; an answer of another function is
    refused, not read as registers."""
    import struct

    from pymodbus.exceptions import ModbusException

    from protocols.modbus import _PollLink

    answers: list[Callable[[int], bytes]] = [
        lambda tid: (
            struct.pack(">HHHBBB2H", tid - 1 or 0xFFFF, 0, 7, 1, 3, 4, 11, 12)  # stale
            + struct.pack(">HHHBBB2H", tid, 0, 7, 1, 3, 4, 21, 22)
        ),
        lambda tid: struct.pack(">HHHBBB2H", tid, 0, 7, 1, 4, 4, 31, 32),  # input registers
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            request = await reader.readexactly(12)
            writer.write(answer(struct.unpack(">H", request[:2])[0]))
            await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        link = await _PollLink.open("127.0.0.1", port)
        try:
            async with asyncio.timeout(5):
                first = await link.read_holding_registers(0, count=2, device_id=1)
            assert first.registers == [21, 22]
            with pytest.raises(ModbusException, match="function code 4"):
                async with asyncio.timeout(5):
                    await link.read_holding_registers(0, count=2, device_id=1)
        finally:
            link.close()
            srv.close()
            await srv.wait_closed()

    asyncio.run(main())
