"""Secondary injection with sequences: the parser (text and CSV), the states played through the
C core and the Python reference (known answers from the curve formulas, the 79 sequence with the
simulated breaker, agreement of the two cores on random sequences), the command, and the
simulator's test set (sans-IO)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load
from gateway.protection.core import operate_time_s
from gateway.protection.sequence import (
    InjectionState,
    SequenceError,
    compare,
    load_sequence,
    parse_sequence,
    play,
)
from gateway.protection.settings import CURVES_BY_NAME, ProtectionScheme
from hil.injection import InjectionRefused, SecondaryInjection, check_states

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"


def _scheme(breaker: str = "CB-045") -> ProtectionScheme:
    return next(s for s in load(SITE).protection if s.breaker == breaker)


def _only(scheme: ProtectionScheme, name: str, **changes: object) -> ProtectionScheme:
    from gateway.cli.protection import _single_element_scheme

    single = _single_element_scheme(scheme, name, fast=False)
    if not changes:
        return single
    data = single.model_dump(by_alias=True)
    element = next(iter(data["elements"]))
    data["elements"][element].update(changes)
    return ProtectionScheme.model_validate(data)


# --------------------------------------------------------------------------- parsing


def test_text_states_parse_with_their_units() -> None:
    states = parse_sequence("1s 300A; 500ms 2.4kA In=120A 7.7kV 49.5Hz;2s 0.7pu; 1min 0A")
    assert states == [
        InjectionState(1.0, 300.0),
        InjectionState(0.5, 2400.0, 120.0, 7.7, None, 49.5),
        InjectionState(2.0, 0.0, voltage_pu=0.7),
        InjectionState(60.0, 0.0),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no state"),
        ("2400A 1s", "starts with its duration"),
        ("1s 300A 400A", "given twice"),
        ("1s 7kV 0.6pu", "given twice"),
        ("1s 300W", "unit 'W'"),
        ("0s 300A", "must be a number of seconds > 0"),
        ("1s -5A", "between 0"),
        ("1s In=7kV", "In= takes a current"),
        ("1s 300A; 1s banana", "state 2"),
        ("4000s 0A", "at most 3600"),
    ],
)
def test_bad_states_are_refused_naming_the_state(text: str, message: str) -> None:
    with pytest.raises(SequenceError, match=message):
        parse_sequence(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.;# \nsmAkVpuHzIn=e-+x", max_size=60))
def test_any_text_parses_or_is_refused(text: str) -> None:
    try:
        states = parse_sequence(text)
    except SequenceError:
        return
    assert states and all(s.duration_s > 0 and math.isfinite(s.duration_s) for s in states)


def test_sequence_files_in_text_and_csv(tmp_path: Path) -> None:
    text = tmp_path / "seq.txt"
    text.write_text("# pre-fault\n1s 300A\n\n2s 2400A   # fault\n1s 0A\n")
    assert [s.current_a for s in load_sequence(text)] == [300.0, 2400.0, 0.0]
    table = tmp_path / "seq.csv"
    table.write_text("duration_s,current_a,voltage_kv,frequency_hz\n1,300,,\n2,2400,7.7,49.5\n")
    states = load_sequence(table)
    assert states[1] == InjectionState(2.0, 2400.0, None, 7.7, None, 49.5)
    bad = tmp_path / "bad.csv"
    bad.write_text("duration_s,current_a\n1,300\n2,lots\n")
    with pytest.raises(SequenceError, match=r"bad.csv, line 3: current_a 'lots' is not a number"):
        load_sequence(bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("seconds,amps\n1,300\n")
    with pytest.raises(SequenceError, match="the header must have duration_s"):
        load_sequence(wrong)
    lines = tmp_path / "lines.txt"
    lines.write_text("1s 300A\n2s 24OOA\n")
    with pytest.raises(SequenceError, match=r"state 2 \(line 2\)"):
        load_sequence(lines)
    with pytest.raises(SequenceError, match="cannot read"):
        load_sequence(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_integration_over_a_current_stepping_down_follows_the_curve(backend: str) -> None:
    """51P alone, IEC SI: each state adds duration / t(M) to the integrator; a state under the
    pickup resets it; the trip comes when the sum reaches 1."""
    scheme = _only(_scheme(), "51P")
    e = scheme.elements.p51
    assert e is not None and e.curve == "iec_si"
    curve = CURVES_BY_NAME[e.curve]

    def t(i_a: float) -> float:
        return operate_time_s(curve, e.tms, i_a / e.pickup_a)

    states = parse_sequence("1s 300A; 0.2s 1200A; 0.5s 700A; 0.3s 1200A; 1s 0A; 5s 900A")
    run = play(scheme, states, backend=backend, sample_s=0.001)
    shares = [r["51P"] for r in run.integrated]
    expected = [0.0, 0.2 / t(1200), 0.2 / t(1200) + 0.5 / t(700), 0.2 / t(1200) + 0.5 / t(700) + 0.3 / t(1200), 0.0]
    assert shares[:5] == pytest.approx(expected, abs=1e-3 / t(1200))
    assert run.first("pickup", "51P") == pytest.approx(1.0)
    assert run.first("dropout", "51P") == pytest.approx(2.0)  # the 0 A state
    assert run.trip_s == pytest.approx(3.0 + t(900), abs=0.001 + 1e-9)
    assert [ev.kind for ev in run.events if ev.kind in ("trip", "breaker open")] == [
        "breaker open",
        "trip",
        "trip",
        "trip",
    ]


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_definite_time_pickup_dropout_and_trip(backend: str) -> None:
    """50P alone with a 0.3 s delay: a 0.2 s excursion picks up and drops out without a trip;
    the next one trips 0.3 s after it starts."""
    scheme = _only(_scheme(), "50P", delay_s=0.3)
    run = play(scheme, parse_sequence("0.5s 100A; 0.2s 3500A; 0.5s 100A; 1s 3500A; 0.5s 0A"), backend=backend)
    picks = [ev.time_s for ev in run.events if ev.kind == "pickup"]
    drops = [ev.time_s for ev in run.events if ev.kind == "dropout"]
    assert picks[:3] == pytest.approx([0.5, 0.5, 0.5]) and picks[3:] == pytest.approx([1.2, 1.2, 1.2])
    assert drops[:3] == pytest.approx([0.7, 0.7, 0.7])
    assert run.trip_s == pytest.approx(1.5, abs=0.001 + 1e-9)
    # the simulated breaker opened: no current, the element dropped out at once
    assert drops[3:] == pytest.approx([run.trip_s] * 3)


@pytest.mark.parametrize(
    ("element", "text", "trip_s"),
    [
        ("51N", "1s 0A; 5s 300A", None),  # to the residual input: the 51N curve
        ("51N", "1s 0A; 5s 300A In=0A", math.inf),  # phase current only: no residual, no trip
        ("27", "1s; 1s 0.7pu; 1s; 3s 7kV", 3.0 + 2.0),  # a 1 s sag resets; the next one trips after 2 s
        ("59", "1s; 3s 12.5kV", 1.0 + 2.0),
        ("81U", "1s; 0.3s 48Hz; 0.2s; 2s 48.2Hz", 1.5 + 0.5),
    ],
)
def test_residual_voltage_and_frequency_states_reach_their_elements(
    element: str, text: str, trip_s: float | None
) -> None:
    scheme = _only(_scheme(), element)
    if trip_s is None:
        e = scheme.elements.n51
        assert e is not None
        trip_s = 1.0 + operate_time_s(CURVES_BY_NAME[e.curve], e.tms, 300.0 / e.pickup_a)
    for backend in ("native", "reference"):
        run = play(scheme, parse_sequence(text), backend=backend, element=element)
        if math.isinf(trip_s):
            assert run.trip_s is None
        else:
            assert run.trip_s == pytest.approx(trip_s, abs=0.001 + 1e-9), backend


def test_a_permanent_fault_plays_the_reclose_sequence_to_lockout() -> None:
    """The whole CB-045 scheme: the first trip on the fast curve, then the delayed ones after
    each dead time, lockout after the last shot; the breaker stays open."""
    scheme = _scheme()
    assert scheme.reclose is not None and scheme.elements.p51 is not None
    e = scheme.elements.p51
    states = parse_sequence("1s 200A; 60s 1200A; 1s 0A")
    runs = [play(scheme, states, backend=b, sample_s=0.005) for b in ("native", "reference")]
    assert compare(*runs) == []
    run = runs[0]
    trips = sorted({ev.time_s for ev in run.events if ev.kind == "trip"})
    assert len(trips) == scheme.reclose.shots + 1
    fast = operate_time_s(CURVES_BY_NAME[e.fast_curve or e.curve], e.fast_tms or e.tms, 1200 / e.pickup_a)
    slow = operate_time_s(CURVES_BY_NAME[e.curve], e.tms, 1200 / e.pickup_a)
    assert trips[0] == pytest.approx(1.0 + fast, abs=0.006)
    dead = scheme.reclose.dead_times_s
    assert trips[1] == pytest.approx(trips[0] + dead[0] + slow, abs=0.011)
    kinds = [ev.kind for ev in run.events]
    assert kinds.count("reclose") == scheme.reclose.shots and "lockout" in kinds
    assert [ev.kind for ev in run.events if ev.kind.startswith("breaker")][-1] == "breaker open"


def test_a_breaker_that_does_not_open_gives_the_50bf_retrip_and_backup_trip() -> None:
    scheme = _scheme()
    bf = scheme.breaker_failure
    assert bf is not None and bf.current_a < 1200.0
    runs = [
        play(scheme, parse_sequence("1s 200A; 3s 1200A"), backend=b, breaker_fails=True)
        for b in ("native", "reference")
    ]
    assert compare(*runs) == []
    run = runs[0]
    trip = run.trip_s
    assert trip is not None
    assert not any(e.kind == "breaker open" for e in run.events)
    assert run.first("retrip") == pytest.approx(trip + bf.retrip_s, abs=0.0011)
    assert run.first("backup trip") == pytest.approx(trip + bf.backup_s, abs=0.0011)
    assert run.first("lockout") is not None


states_strategy = st.lists(
    st.builds(
        InjectionState,
        duration_s=st.floats(0.005, 1.5),
        current_a=st.one_of(st.just(0.0), st.floats(0.0, 5000.0)),
        neutral_a=st.one_of(st.none(), st.floats(0.0, 400.0)),
        voltage_pu=st.one_of(st.none(), st.floats(0.5, 1.3)),
        frequency_hz=st.one_of(st.none(), st.floats(47.0, 53.0)),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(states=states_strategy, breaker=st.sampled_from(["CB-044", "CB-045", "CB-046"]))
def test_the_c_core_and_the_reference_play_any_sequence_alike(states: list[InjectionState], breaker: str) -> None:
    scheme = _scheme(breaker)
    native = play(scheme, states, backend="native", sample_s=0.002)
    reference = play(scheme, states, backend="reference", sample_s=0.002)
    assert native.backend == "native" and reference.backend == "reference"
    assert compare(native, reference) == []
    assert len(native.integrated) == len(states)


def test_compare_names_a_difference() -> None:
    scheme = _only(_scheme(), "51P")
    a = play(scheme, parse_sequence("1s 1200A"), backend="reference")
    b = play(scheme, parse_sequence("1s 1300A"), backend="reference")
    problems = compare(a, b)
    assert any(p.startswith("trip (51P) A: reference at 0.8700 s") for p in problems)


def test_a_run_too_long_for_its_sample_period_is_refused() -> None:
    with pytest.raises(SequenceError, match="samples"):
        play(_scheme(), parse_sequence("3600s 0A"), sample_s=0.0001)


# --------------------------------------------------------------------------- the command


def _stima(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "protection", "test", *argv, "--config", str(SITE)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_the_command_shows_both_cores_side_by_side() -> None:
    r = _stima("CB-045", "--element", "51P", "--seq", "1s 300A; 0.2s 1200A; 0.5s 700A; 2s 1200A; 1s 0A")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NATIVE_S" in r.stdout and "REFERENCE_S" in r.stdout
    assert "51P pickup ABC" in r.stdout and "trip (51P) ABC" in r.stdout
    assert "the C core and the Python reference agree" in r.stdout
    as_json = _stima("CB-045", "--seq", "1s 300A; 2s 1200A", "--json")
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and data["agree"] and data["tested"].startswith("the whole scheme")
    assert [run["backend"] for run in data["runs"]] == ["native", "reference"]
    assert data["runs"][0]["trip_s"] == data["runs"][1]["trip_s"] is not None


def test_the_command_refuses_bad_input_with_the_reason(tmp_path: Path) -> None:
    r = _stima("CB-045", "--seq", "1s 300A; two seconds")
    assert r.returncode == 2 and "state 2" in r.stdout
    f = tmp_path / "s.csv"
    f.write_text("duration_s,current_a\n-1,300\n")
    r = _stima("CB-045", "--seq-file", str(f))
    assert r.returncode == 2 and "line 2" in r.stdout
    r = _stima("CB-045", "--live")
    assert r.returncode == 2 and "--seq" in r.stdout
    r = _stima("CB-045", "--element", "51P", "--seq", "1s 1200A", "--live", "--hil-socket", str(tmp_path / "none.sock"))
    assert r.returncode == 2 and "leave out --element" in r.stdout
    r = _stima(
        "CB-045",
        "--seq",
        "1s 1200A",
        "--live",
        "--hil-socket",
        str(tmp_path / "none.sock"),
        "--runtime-dir",
        str(tmp_path),
    )
    assert r.returncode == 2 and "--live needs the running daemon" in r.stdout


# --------------------------------------------------------------------------- the simulator's test set


def test_the_test_set_serves_its_states_and_times_the_commands() -> None:
    states = check_states(
        [{"duration_s": 1.0, "ia": 100.0, "voltage_kv": 11.0}, {"duration_s": 2.0, "ia": 1200.0, "voltage_kv": 10.0}]
    )
    inj = SecondaryInjection(
        "CB-1", {"ia": "CB-1.ia", "voltage_kv": "CB-1.voltage_kv"}, ("CB-1.pos", False), ("CB-1.pos", True), states
    )
    values: dict[str, object] = {"CB-1.ia": 5.0, "CB-1.voltage_kv": 11.1, "other": 1}
    inj.on_command(99.0, "CB-1.pos", False)  # before it starts: not counted
    inj.serve(100.0, values, True)
    assert values == {"CB-1.ia": 100.0, "CB-1.voltage_kv": 11.0, "other": 1}
    inj.serve(101.0, values, True)
    assert values["CB-1.ia"] == 1200.0 and inj.state_starts_s == [0.0, 1.0]
    inj.on_command(101.43, "CB-1.pos", False)
    inj.on_command(101.5, "CB-1.other", True)
    inj.serve(101.5, values, False)  # the breaker opened: no current, the voltage stays
    assert values["CB-1.ia"] == 0.0 and values["CB-1.voltage_kv"] == 10.0
    inj.on_command(101.9, "CB-1.pos", True)
    inj.serve(103.0, values, True)
    assert not inj.running
    values["CB-1.ia"] = 5.0
    inj.serve(103.1, values, True)
    assert values["CB-1.ia"] == 5.0  # finished: the bay's own values
    status = inj.status()
    assert status["trip_s"] == pytest.approx(1.43)
    assert [(c["kind"], c["state"]) for c in status["commands"]] == [("trip", 2), ("close", 2)]


def test_the_test_set_stops_on_request() -> None:
    inj = SecondaryInjection(
        "CB-1",
        {"ia": "CB-1.ia"},
        ("CB-1.trip", True),
        ("CB-1.close", True),
        check_states([{"duration_s": 60.0, "ia": 100.0}]),
    )
    values: dict[str, object] = {"CB-1.ia": 5.0}
    inj.serve(10.0, values, True)
    inj.stop(12.5)
    assert not inj.running and inj.finished_s == pytest.approx(2.5)
    values["CB-1.ia"] = 5.0
    inj.serve(12.6, values, True)
    assert values["CB-1.ia"] == 5.0


@pytest.mark.parametrize(
    "states",
    [
        [],
        {"duration_s": 1},
        [{"duration_s": 0, "ia": 1}],
        [{"duration_s": 1, "ia": -1}],
        [{"duration_s": 1, "ia": float("nan")}],
        [{"duration_s": 1, "volts": 1}],
        [{"duration_s": 1, "ia": True}],
        [{"duration_s": 4000}],
    ],
)
def test_the_test_set_refuses_bad_states(states: object) -> None:
    with pytest.raises(InjectionRefused):
        check_states(states)
