"""IED faults: a device that goes silent, answers late, answers garbage or exceptions, resets
the connection mid-poll, or sits on a noisy RS-485 line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Any

import tomli_w

from hil.broker import free_port
from hil.rig import Rig, example_document
from tests.reliability.common import Report, median, part_main

TITLE = "IED faults"
BUDGET_S = 600
TCP_IED = "IED-XFMR-101"
RTU_IED = "IED-CAP-301"
WATCHED = ["XFMR-102.load_kw", "CB-044.ia", "SOLAR-201.active_power_kw", "SUB-003.bus_voltage_kv"]
EXCEPTION_CODES = (1, 2, 3, 4, 5, 6, 8, 10, 11)
METHOD = f"""
The whole rig with the example site; the daemon reaches {TCP_IED} (Modbus TCP, polled every
second, 500 ms timeout) through a relay that can misbehave as a device does, and {RTU_IED}
(Modbus RTU on an RS-485 line, a pty pair) through a relay on the line. One fault at a time:
**silent** (requests swallowed), **slow** (every answer 0.8 s late, after the timeout), **garbage**
(random bytes instead of an answer), **exception N** for every Modbus exception code
{", ".join(map(str, EXCEPTION_CODES))} (the answer rewritten into that exception), **reset** (the connection
reset as soon as a request arrives); on the RTU line **noise** (one bit in about every twentieth
byte flipped, both ways) and a unit that falls **silent** (the simulator answers nothing for it, as
an absent unit on RS-485 does: no exception 4); and a tap set-point out of the transformer's
range written straight to the simulated IED, which must answer exception 3 and keep its
set-point (as a real controller does, never clamping). For each: the time from the fault to every point of the IED invalid, with
the reason the daemon gives; that points of other IEDs stay good and keep updating (never
anything but good, each read afresh within two of its IED's poll periods + 1 s); and the time
from the fault's end to every point good again, with no action from anyone. Goal: invalid within
two poll periods (2 s) of the fault, the reason right (communication failure for silence, late
answers and resets; device exception for exception answers; a malformed answer may also read as
a communication failure, as the frame is dropped), recovery automatic.
"""


class TcpFaultRelay:
    """Between the daemon and one Modbus TCP IED: passes frames, or misbehaves as told."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "pass"
        self._writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._rng = random.Random(3)

    def start(self) -> TcpFaultRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return self

    async def _listen(self) -> None:
        await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode == "reset":
            self.loop.call_soon_threadsafe(self._reset_all)

    def _reset_all(self) -> None:
        for w in list(self._writers):
            _reset(w)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                mode = self.mode
                if mode == "reset":
                    _reset(writer)
                    return
                if mode == "silent":
                    continue
                up_writer.write(header + pdu)
                await up_writer.drain()
                answer_head = await up_reader.readexactly(7)
                a_tid, a_proto, a_len, a_unit = struct.unpack(">HHHB", answer_head)
                answer = await up_reader.readexactly(a_len - 1)
                if mode == "slow":
                    await asyncio.sleep(0.8)
                elif mode == "garbage":
                    junk = self._rng.randbytes(self._rng.randrange(3, 40))
                    writer.write(junk)
                    await writer.drain()
                    continue
                elif mode.startswith("exception"):
                    code = int(mode.split()[1])
                    answer = bytes([pdu[0] | 0x80, code])
                    answer_head = struct.pack(">HHHB", a_tid, a_proto, len(answer) + 1, a_unit)
                writer.write(answer_head + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            up_writer.close()
            with contextlib.suppress(Exception):
                writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RtuNoiseRelay:
    """On an RS-485 line (pty pairs): copies bytes both ways, flipping bits when noisy."""

    def __init__(self, device_side: str, workdir: Path) -> None:
        self.gateway_end = workdir / "ttyNOISY"
        self._relay_end = workdir / "ttyNOISY.relay"
        self._socat = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.gateway_end}", f"pty,raw,echo=0,link={self._relay_end}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 5
        while not self._relay_end.exists():
            if time.monotonic() > end:
                raise TimeoutError("socat did not make the pty pair")
            time.sleep(0.02)
        self.noisy = False
        self.flips = 0
        self._rng = random.Random(5)
        self._a = os.open(str(self._relay_end), os.O_RDWR | os.O_NOCTTY)
        self._b = os.open(device_side, os.O_RDWR | os.O_NOCTTY)
        for fd in (self._a, self._b):
            with contextlib.suppress(termios.error):
                tty.setraw(fd)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._copy, args=(self._a, self._b), daemon=True),
            threading.Thread(target=self._copy, args=(self._b, self._a), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _copy(self, src: int, dst: int) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([src], [], [], 0.2)
            if not ready:
                continue
            try:
                data = bytearray(os.read(src, 4096))
            except OSError:
                return
            if self.noisy:
                for i in range(len(data)):
                    if self._rng.random() < 1 / 20:
                        data[i] ^= 1 << self._rng.randrange(8)
                        self.flips += 1
            with contextlib.suppress(OSError):
                os.write(dst, bytes(data))

    def stop(self) -> None:
        self._stop.set()
        for fd in (self._a, self._b):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._socat.terminate()


async def _write_out_of_range(port: int) -> tuple[int | None, int | None]:
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    try:
        answer = await client.write_register(100, 99, device_id=1)
        back = await client.read_holding_registers(100, count=1, device_id=1)
        code = answer.exception_code if answer.isError() else None
        value = None if back.isError() else back.registers[0]
        return code, value
    finally:
        client.close()


class FaultRig(Rig):
    """A rig whose daemon reads its own copy of the site file (two IEDs behind relays)."""

    daemon_site: Path | None = None

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        if name == "gatewayd" and self.daemon_site is not None:
            argv = [a if a != str(self.site_path) else str(self.daemon_site) for a in argv]
        return super()._spawn(name, argv)


def _points_of(rig: Rig, ied_id: str) -> list[str]:
    return [p["id"] for ied in rig.doc["ieds"] if ied["id"] == ied_id for p in ied["points"]]


def _read(rig: Rig, ids: list[str]) -> list[dict[str, Any]]:
    return list(rig.daemon_call("points.read", ids=ids))


def _watch(rig: Rig, ids: list[str], want_good: bool, timeout_s: float) -> tuple[float | None, set[str]]:
    """Seconds until every point is good (or every one invalid), and the reasons seen."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        points = _read(rig, ids)
        good = [p["quality"] == "good" for p in points]
        if all(good) if want_good else not any(good):
            return time.monotonic() - t0, {p["reason"] for p in points}
        time.sleep(0.05)
    return None, {p["reason"] for p in _read(rig, ids)}


def _others_fine(rig: Rig, before: dict[str, float], deadline: float) -> bool:
    """Every watched point of the other IEDs read afresh and good by `deadline` (monotonic),
    and none of them anything but good on the way.

    A fault detected faster than the slowest watched IED's poll period (a reset is seen at
    once) must not count that IED as affected merely because it has not been polled since."""
    while True:
        now = {p["id"]: p for p in _read(rig, WATCHED)}
        if any(p["quality"] != "good" for p in now.values()):
            return False
        if all((p["receive_time"] or 0) > before.get(i, 0) for i, p in now.items()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def run(report: Report, workdir: Path, quick: bool) -> None:
    doc = example_document()
    rig = FaultRig(doc, workdir)
    tcp_cfg = next(i for i in rig.doc["ieds"] if i["id"] == TCP_IED)
    rtu_cfg = next(i for i in rig.doc["ieds"] if i["id"] == RTU_IED)
    relay = TcpFaultRelay(int(tcp_cfg["port"])).start()
    daemon_doc = tomli_w.dumps(rig.doc)
    import tomllib

    daemon_doc_d = tomllib.loads(daemon_doc)
    for ied in daemon_doc_d["ieds"]:
        if ied["id"] == TCP_IED:
            ied["port"] = relay.port
    rtu_relay: RtuNoiseRelay | None = None
    rig.daemon_site = workdir / "site-daemon.toml"
    rig.daemon_site.write_text(tomli_w.dumps(daemon_doc_d))
    period_s = float(tcp_cfg.get("poll_period_ms", 1000)) / 1000.0
    watched_period_s = max(
        float(ied.get("poll_period_ms", 1000)) / 1000.0
        for ied in rig.doc["ieds"]
        if any(p["id"] in WATCHED for p in ied["points"])
    )
    # how long after a fault every watched point of the other IEDs must have been read afresh
    others_bound_s = 2 * watched_period_s + 1.0
    with rig:
        # the RTU relay needs the simulator's pty, which exists once the rig is up
        rtu_relay = RtuNoiseRelay(str(rtu_cfg["serial_port"]), workdir)
        for ied in daemon_doc_d["ieds"]:
            if ied["id"] == RTU_IED:
                ied["serial_port"] = str(rtu_relay.gateway_end)
        rig.daemon_site.write_text(tomli_w.dumps(daemon_doc_d))
        rig.restart_daemon()
        tcp_points = _points_of(rig, TCP_IED)
        rtu_points = _points_of(rig, RTU_IED)
        rig.wait(
            lambda: all(p["quality"] == "good" for p in _read(rig, tcp_points + rtu_points + WATCHED)),
            "every watched point good",
            60,
        )
        modes = ["silent", "slow", "garbage", *(f"exception {c}" for c in EXCEPTION_CODES), "reset"]
        if quick:
            modes = ["silent", "garbage", "exception 2", "reset"]
        invalid_times: list[float] = []
        recover_times: list[float] = []
        for mode in modes:
            before = {p["id"]: p["receive_time"] or 0 for p in _read(rig, WATCHED)}
            relay.set(mode)
            fault_at = time.monotonic()
            took, reasons = _watch(rig, tcp_points, want_good=False, timeout_s=15)
            others = _others_fine(rig, before, fault_at + others_bound_s)
            relay.set("pass")
            back, _ = _watch(rig, tcp_points, want_good=True, timeout_s=60)
            expected = (
                {"device_exception"}
                if mode.startswith("exception")
                else (
                    {"communication_failure", "malformed_response"} if mode == "garbage" else {"communication_failure"}
                )
            )
            ok = took is not None and took <= 2 * period_s + 0.3 and reasons <= expected and others and back is not None
            report.check(
                f"{TCP_IED} {mode}",
                f"invalid in {took:.2f} s ({', '.join(sorted(reasons))}); others good: {others}; "
                f"good again {back:.2f} s after"
                if took is not None and back is not None
                else f"invalid: {took}, reasons {sorted(reasons)}, others good: {others}, recovered: {back}",
                f"≤ {2 * period_s:.1f} s (+0.3 s reading), {'/'.join(sorted(expected))}, recovers",
                ok,
            )
            if took is not None:
                invalid_times.append(took)
            if back is not None:
                recover_times.append(back)
            time.sleep(1.0)
        # RS-485 line noise
        before = {p["id"]: p["receive_time"] or 0 for p in _read(rig, WATCHED)}
        rtu_relay.noisy = True
        noise_s = 10 if quick else 30
        bad_seen: dict[str, int] = {}
        wrong_values = 0
        t0 = time.monotonic()
        truth = {p["id"]: p["value"] for p in _read(rig, rtu_points)}
        while time.monotonic() - t0 < noise_s:
            for p in _read(rig, rtu_points):
                if p["quality"] != "good":
                    bad_seen[p["reason"]] = bad_seen.get(p["reason"], 0) + 1
                elif isinstance(p["value"], int | float) and isinstance(truth.get(p["id"]), int | float):
                    ref = truth[p["id"]]
                    if abs(p["value"] - ref) > max(0.2 * abs(ref), 1.0):
                        wrong_values += 1
            time.sleep(0.1)
        others = _others_fine(rig, before, time.monotonic() + others_bound_s)
        rtu_relay.noisy = False
        back, _ = _watch(rig, rtu_points, want_good=True, timeout_s=60)
        report.check(
            f"{RTU_IED} RS-485 noise for {noise_s} s ({rtu_relay.flips} bits flipped)",
            f"readings invalid while noisy: {bad_seen or 'none'}; good readings far from the true "
            f"value: {wrong_values}; others good: {others}; good again {back if back is None else round(back, 2)} s after",
            "no corrupted value accepted (CRC), others unaffected, recovers",
            wrong_values == 0 and others and back is not None,
        )
        # a unit that stops answering on the RS-485 line (the simulator silences it as an absent unit is)
        before = {p["id"]: p["receive_time"] or 0 for p in _read(rig, WATCHED)}
        rig.hil_call("commloss", ied=RTU_IED, duration_s=6.0)
        fault_at = time.monotonic()
        rtu_period_s = float(rtu_cfg.get("poll_period_ms", 1000)) / 1000.0
        took, reasons = _watch(rig, rtu_points, want_good=False, timeout_s=15)
        others = _others_fine(rig, before, fault_at + others_bound_s)
        back, _ = _watch(rig, rtu_points, want_good=True, timeout_s=60)
        report.check(
            f"{RTU_IED} silent on the RS-485 line for 6 s",
            f"invalid in {took:.2f} s ({', '.join(sorted(reasons))}); others good: {others}; good again "
            f"{back:.2f} s later (the silence lasts 6 s)"
            if took is not None and back is not None
            else f"invalid: {took}, reasons {sorted(reasons)}, others: {others}, recovered: {back}",
            f"≤ {2 * rtu_period_s:.1f} s (+0.3 s), communication_failure, recovers",
            took is not None
            and took <= 2 * rtu_period_s + 0.3
            and reasons == {"communication_failure"}
            and others
            and back is not None,
        )
        # an out-of-range set-point written straight to the simulated transformer: refused, not clamped
        refused, tap_after = asyncio.run(_write_out_of_range(int(tcp_cfg["port"])))
        report.check(
            f"{TCP_IED}: tap set-point 99 written directly (range -16..16)",
            f"answer: exception {refused}; set-point read back {tap_after}",
            "exception 3, unchanged",
            refused == 3 and tap_after != 99,
        )
        report.headline = (
            f"{len(modes) + 2} faults: points invalid in median {median(invalid_times):.1f} s with "
            f"the reason, good again in median {median(recover_times):.1f} s; noise: "
            f"{wrong_values} corrupted values accepted"
        )
        report.row(
            "median time to invalid / to good again (TCP faults)",
            f"{median(invalid_times):.2f} s / {median(recover_times):.2f} s",
        )
        report.note(
            "Exception codes are answered per block read: only the points of the blocks that got one go "
            "invalid (here every block of the IED, as every answer was rewritten)."
        )
        rtu_relay.stop()
    relay.stop()


if __name__ == "__main__":
    part_main("ied_faults", TITLE, run)
    _ = sys
