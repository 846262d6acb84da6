"""`stima-hil` command line: units people type, requests built from them, and clear refusals."""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.__main__ import _parser, build_request, main
from hil.control import (
    ControlServer,
    UnitError,
    parse_distance_m,
    parse_duration_s,
    parse_factor,
    parse_temperature_delta_c,
)
from hil.runtime import HilRuntime, RuntimeOptions
from tests.support.stub_grid import StubModel
from tests.test_hil_runtime import make_site


@pytest.mark.parametrize(
    ("text", "metres"),
    [
        ("2300m", 2300.0),
        ("2.3km", 2300.0),
        ("2300", 2300.0),
        (" 150 m ", 150.0),
        ("0.5KM", 500.0),
        ("1e3m", 1000.0),
    ],
)
def test_distances(text: str, metres: float) -> None:
    assert parse_distance_m(text) == pytest.approx(metres)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5min", 300.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("30", 30.0),
        ("1.5 min", 90.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("fn", "text", "message"),
    [
        (parse_distance_m, "2300ft", "unit 'ft' is not one of m, km"),
        (parse_distance_m, "far", "expected a number with a unit"),
        (parse_distance_m, "-5m", "must not be negative"),
        (parse_distance_m, "", "expected a number"),
        (parse_duration_s, "30m", "unit 'm' is not one of"),  # metres or minutes? refuse
        (parse_duration_s, "0s", "greater than zero"),
        (parse_duration_s, "soon", "expected a number"),
        (parse_factor, "0", "greater than zero"),
        (parse_factor, "lots", "expected a number"),
        (parse_factor, "inf", "finite"),
        (parse_temperature_delta_c, "25F", "unit 'f'"),
    ],
)
def test_bad_units_are_refused(fn: object, text: str, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        fn(text)  # type: ignore[operator]


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_distance_round_trip(metres: float) -> None:
    assert parse_distance_m(f"{metres!r}m") == metres
    assert parse_distance_m(f"{metres / 1000!r}km") == pytest.approx(metres, rel=1e-12, abs=1e-9)


@given(st.text(max_size=12))
def test_distance_parser_never_fails_otherwise(text: str) -> None:
    try:
        value = parse_distance_m(text)
    except UnitError:
        return
    assert value >= 0


def test_factors() -> None:
    assert parse_factor("1.3") == 1.3 and parse_factor("130%") == pytest.approx(1.3)
    assert parse_factor("x0.5") == 0.5


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


def test_requests_from_the_command_line() -> None:
    assert build_request(
        _args("inject", "fault", "LINE-045", "--distance", "2.3km", "--type", "3ph", "--transient")
    ) == {
        "op": "fault",
        "line": "LINE-045",
        "distance_m": 2300.0,
        "kind": "3ph",
        "transient": True,
        "impedance_ohm": 0.0,
    }
    assert build_request(_args("inject", "commloss", "IED-CB-045", "--for", "30s")) == {
        "op": "commloss",
        "ied": "IED-CB-045",
        "duration_s": 30.0,
    }
    assert build_request(_args("inject", "loadstep", "XFMR-101", "--factor", "1.3")) == {
        "op": "loadstep",
        "target": "XFMR-101",
        "factor": 1.3,
    }
    assert build_request(_args("inject", "temp", "XFMR-101", "--delta", "25", "--over", "600s")) == {
        "op": "temp",
        "transformer": "XFMR-101",
        "delta_c": 25.0,
        "duration_s": 600.0,
    }
    assert build_request(_args("inject", "clear")) == {"op": "clear"}
    args = _args("inject", "--control", "/x/y.sock", "fault", "L", "--distance", "1m")
    assert args.control == Path("/x/y.sock")
    assert _args("serve", "--config", "s.toml", "--control", "/a.sock").control == Path("/a.sock")


def test_cli_refuses_bad_input_before_sending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "none.sock"
    assert main(["inject", "--control", str(sock), "fault", "LINE-045", "--distance", "2300ft"]) == 2
    assert "unit 'ft'" in capsys.readouterr().err
    assert main(["inject", "--control", str(sock), "commloss", "IED-CB-045", "--for=-3s"]) == 2
    assert main(["inject", "--control", str(sock), "fault", "L", "--distance", "1m", "--impedance=-1"]) == 2
    assert main(["status", "--control", str(sock)]) == 1
    assert "is `stima-hil serve` running?" in capsys.readouterr().err


def test_cli_against_a_running_simulator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path)
    model = StubModel.from_site(site)
    sock = tmp_path / "hil.sock"
    ready = threading.Event()
    done = threading.Event()

    async def serve() -> None:
        runtime = HilRuntime(site, model, RuntimeOptions(speed=0, ami=False, iec61850=False))
        control = ControlServer(runtime, sock)
        await control.start()
        await runtime.step()
        ready.set()
        try:
            while not done.is_set():
                await asyncio.sleep(0.01)
        finally:
            await control.close()

    thread = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(serve(), 60)), daemon=True)
    thread.start()
    try:
        assert ready.wait(20)
        assert (
            main(
                [
                    "inject",
                    "--control",
                    str(sock),
                    "fault",
                    "LINE-045",
                    "--distance",
                    "2300m",
                    "--type",
                    "3ph",
                    "--transient",
                ]
            )
            == 0
        )
        assert model.active_faults[-1] == {"line": "LINE-045", "distance_m": 2300.0, "kind": "3ph", "transient": True}
        assert main(["inject", "--control", str(sock), "fault", "LINE-404", "--distance", "1m"]) == 1
        assert "unknown power_line 'LINE-404'" in capsys.readouterr().err
        assert main(["inject", "--control", str(sock), "loadstep", "XFMR-101", "--factor", "1.3"]) == 0
        assert main(["inject", "--control", str(sock), "temp", "XFMR-101", "--delta", "25", "--over", "10min"]) == 0
        assert model.ramps == [("XFMR-101", 25.0, 600.0)]
        capsys.readouterr()
        assert main(["status", "--control", str(sock)]) == 0
        out = capsys.readouterr().out
        assert "breaker CB-045" in out and "closed" in out and "LINE-045" in out
    finally:
        done.set()
        thread.join(20)


def test_switching_device_requests_from_the_command_line() -> None:
    assert build_request(_args("inject", "failure", "SW-045-1", "--mode", "stuck")) == {
        "op": "failure",
        "device": "SW-045-1",
        "mode": "stuck",
        "delay_s": 0.0,
    }
    assert build_request(_args("inject", "failure", "SW-045-1", "--mode", "slow", "--delay", "5s")) == {
        "op": "failure",
        "device": "SW-045-1",
        "mode": "slow",
        "delay_s": 5.0,
    }
    assert build_request(_args("inject", "local", "SW-046-1")) == {"op": "local", "device": "SW-046-1", "on": True}
    assert build_request(_args("inject", "local", "SW-046-1", "--remote")) == {
        "op": "local",
        "device": "SW-046-1",
        "on": False,
    }
    assert build_request(_args("inject", "operate", "TIE-044-045", "close")) == {
        "op": "operate",
        "device": "TIE-044-045",
        "action": "close",
    }
    assert build_request(_args("inject", "external", "TIE-046-061", "--dead")) == {
        "op": "external",
        "tie": "TIE-046-061",
        "live": False,
    }
    with pytest.raises(UnitError, match="--mode slow needs --delay"):
        build_request(_args("inject", "failure", "SW-045-1", "--mode", "slow"))
    with pytest.raises(UnitError, match="only for --mode slow"):
        build_request(_args("inject", "failure", "SW-045-1", "--mode", "stuck", "--delay", "5s"))
    with pytest.raises(SystemExit):
        _args("inject", "failure", "SW-045-1", "--mode", "jammed")


def test_cli_operates_switching_devices_of_the_real_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hil.runtime import build_model

    site = make_site(tmp_path)
    sock = tmp_path / "hil.sock"
    ready = threading.Event()
    done = threading.Event()
    holder: dict[str, HilRuntime] = {}

    async def serve() -> None:
        runtime = HilRuntime(site, build_model(site), RuntimeOptions(speed=0, ami=False, iec61850=False))
        holder["rt"] = runtime
        control = ControlServer(runtime, sock)
        await control.start()
        await runtime.step()
        ready.set()
        try:
            while not done.is_set():
                await asyncio.sleep(0.01)
        finally:
            await control.close()

    thread = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(serve(), 60)), daemon=True)
    thread.start()
    try:
        assert ready.wait(20)
        model = holder["rt"].model
        assert main(["inject", "--control", str(sock), "local", "SW-045-1"]) == 0
        assert model.device_state("SW-045-1")["local"] is True
        assert main(["inject", "--control", str(sock), "failure", "SW-045-2", "--mode", "slow", "--delay", "3s"]) == 0
        assert model.device_state("SW-045-2")["failure"] == {"mode": "slow", "delay_s": 3.0}
        assert main(["inject", "--control", str(sock), "operate", "SW-045-1", "open"]) == 0
        assert model.device_state("SW-045-1")["closed"] is False
        assert main(["inject", "--control", str(sock), "operate", "TIE-044-045", "close"]) == 0
        assert main(["inject", "--control", str(sock), "failure", "XFMR-101", "--mode", "stuck"]) == 1
        assert "unknown circuit_breaker 'XFMR-101'" in capsys.readouterr().err
        assert main(["status", "--control", str(sock)]) == 0
        out = capsys.readouterr().out
        assert "breaker SW-045-1     open    local" in out
        assert "failure=slow" in out and "section LINE-045/2" in out and "through TIE-044-045" in out
    finally:
        done.set()
        thread.join(20)
