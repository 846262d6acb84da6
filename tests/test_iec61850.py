"""IEC 61850: the gateway's MMS client against the simulated bay server in its own process.

Every test talks MMS over loopback to `python -m hil.iec61850_server` on a port it picks.
Waits are bounded by generous deadlines and say what they waited for; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.contract.clock import SystemClock
from gateway.config import load
from gateway.contract.settings import Iec61850Ied
from gateway.contract.points import PointUpdate, QualityReason, Validity
from hil.iec61850_server import BayServerProcess
from hil.ports import reserve_port as free_port
from protocols import _iec61850_ffi as c
from gateway.contract.ports import CommandError, LinkState
from protocols.iec61850 import Iec61850Client

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"
IED = "IED-BAY-046"
CMD = "CB-046.position_cmd"
MEASUREMENTS = {
    "CB-046.ia": 101.5,
    "CB-046.ib": 99.25,
    "CB-046.ic": 100.0,
    "CB-046.in": 2.5,
    "CB-046.voltage_kv": 11.05,
    "CB-046.frequency_hz": 49.98,
    "CB-046.active_power_kw": 1890.0,
    "CB-046.closed": True,
    CMD: True,
}
WAIT_S = 15.0


@pytest.fixture(scope="module")
def ied_config() -> Iec61850Ied:
    ied = load(SITE).ied(IED)
    assert isinstance(ied, Iec61850Ied)
    return ied


@pytest.fixture
def bay(tmp_path: Path) -> Iterator[BayServerProcess]:
    server = BayServerProcess(str(SITE), IED, free_port(), log_path=str(tmp_path / "bay.log"))
    try:
        server.wait_listening()
        yield server
    finally:
        server.close()


class Recorder:
    """A sink that keeps every update and wakes waiters."""

    def __init__(self) -> None:
        self.updates: list[PointUpdate] = []
        self.latest: dict[str, PointUpdate] = {}
        self._changed = asyncio.Event()

    def __call__(self, updates: Sequence[PointUpdate]) -> None:
        self.updates.extend(updates)
        for update in updates:
            self.latest[update.point_id] = update
        self._changed.set()

    async def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.2))
            except TimeoutError:
                pass

    def value_is(self, point_id: str, value: Any) -> bool:
        update = self.latest.get(point_id)
        return update is not None and update.quality.good and update.value == value


def run_client(
    cfg: Iec61850Ied,
    body: Callable[[Iec61850Client, Recorder], Awaitable[None]],
    timeout_s: float = 60.0,
) -> None:
    async def main() -> None:
        sink = Recorder()
        client = Iec61850Client(cfg, sink, SystemClock(), logging.getLogger("test.iec61850"))
        task = asyncio.create_task(client.run())
        try:
            await sink.wait(lambda: client.status.state is LinkState.ONLINE or task.done(), "link up")
            await asyncio.wait_for(body(client, sink), timeout=timeout_s)
        finally:
            await client.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


def reports_after(client: Iec61850Client, seen: int) -> bool:
    return int(client.status.extra["reports"]) > seen


def configure(ied: Iec61850Ied, bay: BayServerProcess, **changes: Any) -> Iec61850Ied:
    return ied.model_copy(update={"port": bay.port, **changes})


# --------------------------------------------------------------------------- reading


def test_polled_reads_use_the_right_fc_and_carry_quality(ied_config: Iec61850Ied, bay: BayServerProcess) -> None:
    """Without reports every point is polled: MX values read with FC=MX, quality and time kept."""
    cfg = configure(ied_config, bay, report_control_blocks=[], poll_period_ms=100)
    values: dict[str, float | bool | None] = dict(MEASUREMENTS)
    values["CB-046.in"] = None  # the bay says: neutral current not valid
    bay.set_values(values)

    async def body(client: Iec61850Client, sink: Recorder) -> None:
        await sink.wait(lambda: sink.value_is("CB-046.ia", 101.5) and "CB-046.in" in sink.latest, "first poll")
        assert client.status.extra["polled_points"] == len(MEASUREMENTS)
        assert client.status.extra["reports"] == 0
        for point_id, value in MEASUREMENTS.items():
            update = sink.latest[point_id]
            if point_id == "CB-046.in":
                assert update.quality.validity is Validity.INVALID
                continue
            assert update.quality.good, point_id
            assert update.value == pytest.approx(value, rel=1e-6), point_id
            assert update.source_time is not None and abs(update.source_time - time.time()) < 600
        assert sink.latest["CB-046.closed"].value is True
        assert sink.latest[CMD].value is True
        bay.set_values({"CB-046.in": 3.0, "CB-046.closed": False})
        await sink.wait(
            lambda: sink.value_is("CB-046.in", 3.0) and sink.value_is("CB-046.closed", False),
            "polled change",
        )

    run_client(cfg, body)


def test_reports_update_the_sink_without_polling(ied_config: Iec61850Ied, bay: BayServerProcess) -> None:
    """With the buffered RCB enabled, changes arrive by report; the slow poll never reads them."""
    cfg = configure(ied_config, bay, poll_period_ms=60_000)
    bay.set_values(MEASUREMENTS)

    async def body(client: Iec61850Client, sink: Recorder) -> None:
        await sink.wait(lambda: sink.value_is("CB-046.ia", 101.5), "general interrogation")
        assert client.status.extra["rcbs_enabled"] == 1
        assert client.status.extra["report_points"] == len(MEASUREMENTS)
        assert client.status.extra["polled_points"] == 0
        polls_before = client.status.polls
        for n in range(1, 21):
            bay.set_values({"CB-046.ia": 200.0 + n, "CB-046.frequency_hz": 50.0 + n / 100})
            await sink.wait(functools.partial(sink.value_is, "CB-046.ia", 200.0 + n), f"report {n}")
        assert sink.latest["CB-046.frequency_hz"].value == pytest.approx(50.20, abs=1e-4)
        bay.set_values({"CB-046.voltage_kv": None})
        await sink.wait(
            lambda: sink.latest["CB-046.voltage_kv"].quality.validity is Validity.INVALID,
            "invalid by report",
        )
        assert client.status.polls == polls_before  # no poll ran: everything came by report
        assert client.status.extra["reports"] >= 21

    run_client(cfg, body)


# --------------------------------------------------------------------------- controls


def test_operate_with_sbo_opens_the_breaker(ied_config: Iec61850Ied, bay: BayServerProcess) -> None:
    cfg = configure(ied_config, bay)
    bay.set_values(MEASUREMENTS)

    async def body(client: Iec61850Client, sink: Recorder) -> None:
        await sink.wait(lambda: sink.value_is(CMD, True), "breaker closed")
        await asyncio.wait_for(client.submit_write(CMD, False), timeout=WAIT_S)
        command = await asyncio.to_thread(bay.commands.get, True, WAIT_S)
        assert command == {"point_id": CMD, "value": False}
        await sink.wait(lambda: sink.value_is(CMD, False), "CSWI position reported open")
        assert client.status.writes == 1 and client.status.write_errors == 0

    run_client(cfg, body)


def test_check_handler_refuses_a_close_while_blocked(ied_config: Iec61850Ied, bay: BayServerProcess) -> None:
    cfg = configure(ied_config, bay)
    bay.set_values({**MEASUREMENTS, CMD: False, "CB-046.closed": False})
    bay.interlock(CMD, True, "earth fault on feeder 046")

    async def body(client: Iec61850Client, sink: Recorder) -> None:
        await sink.wait(lambda: sink.value_is(CMD, False), "breaker open")
        with pytest.raises(CommandError, match="blocked-by-interlocking") as refused:
            await asyncio.wait_for(client.submit_write(CMD, True), timeout=WAIT_S)
        assert "AddCause 10" in str(refused.value)
        await asyncio.wait_for(client.submit_write(CMD, False), timeout=WAIT_S)  # opening stays allowed
        assert (await asyncio.to_thread(bay.commands.get, True, WAIT_S))["value"] is False
        bay.interlock(CMD, False)
        bay.set_values({"CB-046.ia": 7.0})  # lines are read in order: once this is reported,
        await sink.wait(lambda: sink.value_is("CB-046.ia", 7.0), "interlock line read")  # it is clear
        await asyncio.wait_for(client.submit_write(CMD, True), timeout=WAIT_S)
        assert (await asyncio.to_thread(bay.commands.get, True, WAIT_S)) == {
            "point_id": CMD,
            "value": True,
        }
        assert bay.commands.empty()

    run_client(cfg, body)


def test_operate_without_select_is_refused(bay: BayServerProcess) -> None:
    """A client that skips the select gets 'object-not-selected' and nothing moves."""
    ffi, lib = c.ffi, c.lib
    con = lib.IedConnection_create()
    error = ffi.new("int*")
    try:
        lib.IedConnection_setRequestTimeout(con, 5000)
        lib.IedConnection_connect(con, error, b"127.0.0.1", bay.port)
        assert error[0] == c.IED_ERROR_OK
        ctl = lib.ControlObjectClient_create(b"BAY046LD0/CSWI1.Pos", con)
        assert ctl != ffi.NULL
        assert lib.ControlObjectClient_getControlModel(ctl) == c.CDC_CTL_MODEL_SBO_ENHANCED
        value = lib.MmsValue_newBoolean(False)
        assert not lib.ControlObjectClient_operate(ctl, value, 0)
        assert lib.ControlObjectClient_getLastApplError(ctl).addCause == c.ADD_CAUSE_OBJECT_NOT_SELECTED
        lib.MmsValue_delete(value)
        lib.ControlObjectClient_destroy(ctl)
    finally:
        lib.IedConnection_close(con)
        lib.IedConnection_destroy(con)
    assert bay.commands.empty()


def test_submit_write_rejects_points_that_are_not_controls(ied_config: Iec61850Ied) -> None:
    async def main() -> None:
        client = Iec61850Client(ied_config, lambda _u: None, SystemClock(), logging.getLogger("t"))
        with pytest.raises(CommandError, match="not a control"):
            await client.submit_write("CB-046.ia", 1.0)
        with pytest.raises(CommandError, match="not a point"):
            await client.submit_write("CB-999.x", 1.0)
        with pytest.raises(CommandError, match="connecting"):
            await client.submit_write(CMD, False)

    asyncio.run(main())


# --------------------------------------------------------------------------- link loss


def test_killed_server_marks_points_invalid_and_a_restart_is_picked_up(ied_config: Iec61850Ied, tmp_path: Path) -> None:
    port = free_port()
    cfg = ied_config.model_copy(update={"port": port, "poll_period_ms": 200, "timeout_ms": 500, "backoff_max_s": 0.5})
    first = BayServerProcess(str(SITE), IED, port, log_path=str(tmp_path / "bay1.log"))
    first.wait_listening()
    first.set_values(MEASUREMENTS)
    second: list[BayServerProcess] = []

    async def body(client: Iec61850Client, sink: Recorder) -> None:
        await sink.wait(lambda: sink.value_is("CB-046.ia", 101.5), "first server's values")
        first.kill()
        await sink.wait(
            lambda: all(sink.latest[p].quality.reason is QualityReason.COMMUNICATION_FAILURE for p in MEASUREMENTS),
            "every point invalid (communication failure)",
        )
        assert client.status.state is not LinkState.ONLINE
        with pytest.raises(CommandError):
            await client.submit_write(CMD, False)
        restarted = BayServerProcess(str(SITE), IED, port, log_path=str(tmp_path / "bay2.log"))
        second.append(restarted)
        await asyncio.to_thread(restarted.wait_listening)
        restarted.set_values({**MEASUREMENTS, "CB-046.ia": 123.0})
        await sink.wait(lambda: sink.value_is("CB-046.ia", 123.0), "values from the restarted server")
        await sink.wait(lambda: client.status.state is LinkState.ONLINE, "link up again")
        await asyncio.wait_for(client.submit_write(CMD, False), timeout=WAIT_S)
        assert (await asyncio.to_thread(restarted.commands.get, True, WAIT_S))["value"] is False

    try:
        run_client(cfg, body)
    finally:
        if first.proc.poll() is None:
            first.close()
        for server in second:
            server.close()


# --------------------------------------------------------------------------- load


def test_soak_reports_at_high_rate_while_operating(ied_config: Iec61850Ied, bay: BayServerProcess) -> None:
    """Reports at a few hundred per second and a back-to-back stream of SBO operates for ~10 s:
    no operate may time out and reports must keep arriving between operates."""
    cfg = configure(ied_config, bay, poll_period_ms=500)
    bay.set_values(MEASUREMENTS)
    stop = threading.Event()
    sent = [0]

    def feed() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            n += 1
            bay.set_values({"CB-046.ia": 100.0 + n % 1000, "CB-046.active_power_kw": float(n)})
            sent[0] = n
            time.sleep(0.002)

    feeder = threading.Thread(target=feed, daemon=True)

    async def body(client: Iec61850Client, sink: Recorder) -> None:
        await sink.wait(lambda: sink.value_is("CB-046.ia", 101.5), "general interrogation")
        feeder.start()
        operates, value = 0, False
        deadline = time.monotonic() + 10.0
        reports_at_checkpoint = client.status.extra["reports"]
        while time.monotonic() < deadline and operates < 30_000:
            try:
                await asyncio.wait_for(client.submit_write(CMD, value), timeout=5.0)
            except TimeoutError:
                raise AssertionError(f"operate {operates + 1} timed out with reports active") from None
            operates += 1
            value = not value
            if operates % 25 == 0:
                reports = client.status.extra["reports"]
                if reports == reports_at_checkpoint:
                    # Give reports one chance to show up; a stall fails here.
                    await sink.wait(
                        functools.partial(reports_after, client, reports),
                        "reports while operating",
                    )
                reports_at_checkpoint = client.status.extra["reports"]
        stop.set()
        await asyncio.to_thread(feeder.join, 10)
        last = sent[0]
        await sink.wait(lambda: sink.value_is("CB-046.active_power_kw", float(last)), "the last report")
        assert operates >= 50, f"only {operates} operates in 10 s"
        assert client.status.write_errors == 0
        assert client.status.extra["reports"] > operates / 25
        commands = 0
        while not bay.commands.empty():
            bay.commands.get_nowait()
            commands += 1
        assert commands == operates

    try:
        run_client(cfg, body, timeout_s=90.0)
    finally:
        stop.set()


# --------------------------------------------------------------------------- server process


def test_server_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = BayServerProcess(str(SITE), IED, free_port(), log_path=str(tmp_path / "bay.log"))
    server.wait_listening()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    server.close()


def test_server_refuses_an_ied_that_is_not_iec61850(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hil.iec61850_server",
            "--config",
            str(SITE),
            "--ied",
            "IED-CB-044",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "expected 'iec61850'" in result.stderr


def test_a_frozen_server_times_out_and_is_recovered(ied_config: Iec61850Ied, bay: BayServerProcess) -> None:
    """SIGSTOP: the socket stays open but nothing answers. Requests time out (no stall of the
    loop, no deadlock with the report thread), points go invalid, and SIGCONT brings them back."""
    cfg = configure(ied_config, bay, poll_period_ms=200, timeout_ms=300, backoff_max_s=0.5)
    bay.set_values(MEASUREMENTS)

    async def body(client: Iec61850Client, sink: Recorder) -> None:
        await sink.wait(lambda: sink.value_is("CB-046.ia", 101.5), "values")
        bay.proc.send_signal(signal.SIGSTOP)
        try:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            tick_task = asyncio.create_task(ticker())
            await sink.wait(
                lambda: sink.latest["CB-046.ia"].quality.reason is QualityReason.COMMUNICATION_FAILURE,
                "points invalid while the server is frozen",
            )
            tick_task.cancel()
            assert ticks > 0  # the loop kept running while the worker waited on the network
        finally:
            bay.proc.send_signal(signal.SIGCONT)
        bay.set_values({"CB-046.ia": 55.0})
        await sink.wait(lambda: sink.value_is("CB-046.ia", 55.0), "values after the server thaws")
        await sink.wait(lambda: client.status.state is LinkState.ONLINE, "link up again")
        await asyncio.wait_for(client.submit_write(CMD, False), timeout=WAIT_S)

    run_client(cfg, body)


def test_two_ieds_with_the_same_rcb_reference_in_one_process(ied_config: Iec61850Ied, tmp_path: Path) -> None:
    """Report handlers belong to each connection: equal RCB references on two IEDs do not mix."""
    bays = [BayServerProcess(str(SITE), IED, free_port(), log_path=str(tmp_path / f"bay{n}.log")) for n in range(2)]

    async def main() -> None:
        sinks = [Recorder(), Recorder()]
        clients = [
            Iec61850Client(
                ied_config.model_copy(update={"id": f"IED-BAY-{n}", "port": bay.port}),
                sink,
                SystemClock(),
                logging.getLogger("test.iec61850"),
            )
            for n, (bay, sink) in enumerate(zip(bays, sinks, strict=True))
        ]
        tasks = [asyncio.create_task(client.run()) for client in clients]
        try:
            for n, bay in enumerate(bays):
                bay.set_values({"CB-046.ia": 10.0 + n})
            for n, sink in enumerate(sinks):
                await sink.wait(functools.partial(sink.value_is, "CB-046.ia", 10.0 + n), f"IED {n}")
            for k in range(1, 11):
                for n, bay in enumerate(bays):
                    bay.set_values({"CB-046.ia": 1000.0 * (n + 1) + k})
                for n, sink in enumerate(sinks):
                    await sink.wait(
                        functools.partial(sink.value_is, "CB-046.ia", 1000.0 * (n + 1) + k),
                        f"IED {n} report {k}",
                    )
            for n, sink in enumerate(sinks):
                values = {u.value for u in sink.updates if u.point_id == "CB-046.ia"}
                other = 1000.0 * (2 - n)
                assert not any(other < v < other + 100 for v in values if isinstance(v, float))
        finally:
            for client, task in zip(clients, tasks, strict=True):
                await client.close()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    try:
        for bay in bays:
            bay.wait_listening()
        asyncio.run(main())
    finally:
        for bay in bays:
            bay.close()
