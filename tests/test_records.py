"""The disturbance recorder (sans-IO) and the COMTRADE writer, read back with the `comtrade`
package (an independent reader): ring buffer, windows, decisions, fault location at the trip,
and hypothesis round trips of the writer in ASCII, BINARY and FLOAT32."""

from __future__ import annotations

import math
from pathlib import Path

import comtrade as reader
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import comtrade
from gateway.fault_location import LineImpedance
from gateway.records import BayChannels, BayRecorder, RecorderSettings

CHANNELS = BayChannels(
    breaker="CB-1",
    analog={"ia": "CB-1.ia", "ib": "CB-1.ib", "ic": "CB-1.ic", "voltage_kv": "CB-1.voltage_kv"},
    closed_point="CB-1.closed",
    elements=("50P", "51P"),
)
T0 = 1_700_000_000.0


def _recorder(**kw: float) -> BayRecorder:
    n = iter(range(1, 100))
    return BayRecorder(CHANNELS, RecorderSettings(**kw), lambda b, w: f"{b}-{next(n)}")


def _poll(rec: BayRecorder, t: float, ia: float, closed: bool = True) -> None:
    for point, value in (
        ("CB-1.ia", ia),
        ("CB-1.ib", ia),
        ("CB-1.ic", ia),
        ("CB-1.voltage_kv", 11.0),
        ("CB-1.closed", closed),
    ):
        rec.on_point(point, value, True, t, T0 + t)


def test_a_trip_records_the_pre_fault_buffer_and_the_post_fault_window() -> None:
    rec = _recorder(pre_fault_s=1.0, post_fault_s=2.0, max_record_s=30.0)
    for k in range(50):  # 5 s of healthy samples at 10 Hz
        _poll(rec, k * 0.1, 100.0)
    assert rec.poll(5.0) == []
    rec.on_decision("pickup", "51P", "A", 2400.0, 5.0, T0 + 5.0)
    _poll(rec, 5.0, 2400.0)
    rec.on_decision("trip", "51P", "A", 2400.0, 5.3, T0 + 5.3)
    for k in range(1, 40):
        _poll(rec, 5.3 + k * 0.1, 0.0, closed=False)
        if k == 1:  # the breaker opened: the element drops out on the next poll
            rec.on_decision("dropout", "51P", "A", 0.0, 5.4, T0 + 5.4)
        assert not rec.poll(5.3 + k * 0.1) or k * 0.1 >= 2.1
    assert rec.next_deadline() is None  # finished
    rec2 = _recorder(pre_fault_s=1.0, post_fault_s=2.0)
    for k in range(50):
        _poll(rec2, k * 0.1, 100.0)
    rec2.on_decision("pickup", "51P", "A", 2400.0, 5.0, T0 + 5.0)
    rec2.on_decision("trip", "51P", "A", 2400.0, 5.3, T0 + 5.3)
    for k in range(1, 19):
        _poll(rec2, 5.3 + k * 0.1, 0.0, closed=False)
        if k == 1:
            rec2.on_decision("dropout", "51P", "A", 0.0, 5.4, T0 + 5.4)
    assert rec2.poll(7.3) == []
    (record,) = rec2.poll(7.41)
    times = [r.monotonic for r in record.rows]
    assert times == sorted(times)
    assert times[0] >= 4.3 - 1e-9 and times[0] <= 4.4  # one second of pre-fault samples
    assert times[-1] <= 7.4 + 1e-9
    assert [d["kind"] for d in record.decisions] == ["pickup", "trip", "dropout"]  # the pickup before is kept
    trip_row = next(r for r in record.rows if r.source.startswith("trip"))
    names = CHANNELS.digital_names
    assert trip_row.digital[names.index("trip")] == 1 and trip_row.digital[names.index("51P pickup")] == 1
    assert record.rows[-1].digital[names.index("breaker closed")] == 0


def test_recloses_extend_the_record_up_to_its_maximum() -> None:
    rec = _recorder(pre_fault_s=0.5, post_fault_s=1.0, max_record_s=3.0)
    _poll(rec, 0.0, 100.0)
    rec.on_decision("trip", "50P", "A", 5000.0, 0.1, T0 + 0.1)
    rec.on_decision("reclose", "79", "", 0.0, 0.9, T0 + 0.9)
    assert rec.next_deadline() == pytest.approx(1.9)
    rec.on_decision("trip", "50P", "A", 5000.0, 1.5, T0 + 1.5)
    rec.on_decision("reclose", "79", "", 0.0, 2.5, T0 + 2.5)
    assert rec.next_deadline() == pytest.approx(3.1)  # the maximum from the first trip
    (record,) = rec.poll(3.2)
    assert sum(1 for d in record.decisions if d["kind"] == "trip") == 2


def test_the_record_lasts_while_an_element_is_picked_up() -> None:
    """A reclose onto the fault picks up again and the next trip comes late (a slow curve, a
    slow poll): the record waits for it, and ends post_fault_s after the last dropout."""
    rec = _recorder(pre_fault_s=0.5, post_fault_s=1.0, max_record_s=20.0)
    _poll(rec, 0.0, 100.0)
    rec.on_decision("pickup", "51P", "A", 900.0, 0.1, T0 + 0.1)
    rec.on_decision("trip", "51P", "A", 900.0, 0.5, T0 + 0.5)
    rec.on_decision("dropout", "51P", "A", 0.0, 0.6, T0 + 0.6)
    rec.on_decision("reclose", "79", "", 0.0, 1.0, T0 + 1.0)
    rec.on_decision("pickup", "51P", "A", 900.0, 1.1, T0 + 1.1)
    assert rec.poll(5.0) == [] and rec.next_deadline() == pytest.approx(20.5)  # picked up: up to the maximum
    rec.on_decision("trip", "51P", "A", 900.0, 6.0, T0 + 6.0)
    rec.on_decision("dropout", "51P", "A", 0.0, 6.1, T0 + 6.1)
    assert rec.next_deadline() == pytest.approx(7.1)
    (record,) = rec.poll(7.2)
    assert [d["kind"] for d in record.decisions].count("trip") == 2
    stuck = _recorder(pre_fault_s=0.5, post_fault_s=1.0, max_record_s=3.0)
    stuck.on_decision("pickup", "51P", "A", 900.0, 0.1, T0 + 0.1)
    stuck.on_decision("trip", "51P", "A", 900.0, 0.5, T0 + 0.5)
    assert stuck.poll(3.4) == []
    assert len(stuck.poll(3.5)) == 1  # never longer than max_record_s


def test_the_trip_is_located_from_the_fault_sample_and_the_one_before_the_pickup() -> None:
    channels = BayChannels(
        breaker="CB-1",
        analog={
            n: f"CB-1.{n}"
            for n in (
                "ia",
                "ib",
                "ic",
                "va_kv",
                "vb_kv",
                "vc_kv",
                "ia_deg",
                "ib_deg",
                "ic_deg",
                "va_deg",
                "vb_deg",
                "vc_deg",
            )
        },
        closed_point=None,
        elements=("51P",),
        line=LineImpedance(complex(0.306, 0.3), complex(0.55, 1.2), 5000.0),
        sections=(("L/1", 0.0, 2000.0), ("L/2", 2000.0, 5000.0)),
    )
    rec = BayRecorder(channels, RecorderSettings(), lambda b, w: "r1")
    z = complex(0.306, 0.3) * 2.5  # a three-phase fault 2.5 km out, 1 kA (no load)
    v_fault = abs(z) * 1000.0 / 1000.0
    healthy = {
        "ia": 0.0,
        "ib": 0.0,
        "ic": 0.0,
        "va_kv": 6.35,
        "vb_kv": 6.35,
        "vc_kv": 6.35,
        "ia_deg": 0.0,
        "ib_deg": 0.0,
        "ic_deg": 0.0,
        "va_deg": 0.0,
        "vb_deg": -120.0,
        "vc_deg": 120.0,
    }
    angle = math.degrees(math.atan2(z.imag, z.real))
    faulted = {
        "ia": 1000.0,
        "ib": 1000.0,
        "ic": 1000.0,
        "va_kv": v_fault,
        "vb_kv": v_fault,
        "vc_kv": v_fault,
        "ia_deg": -angle,
        "ib_deg": -angle - 120.0,
        "ic_deg": -angle + 120.0,
        "va_deg": 0.0,
        "vb_deg": -120.0,
        "vc_deg": 120.0,
    }
    for name, value in healthy.items():
        rec.on_point(f"CB-1.{name}", value, True, 1.0, T0 + 1.0)
    for name, value in faulted.items():
        rec.on_point(f"CB-1.{name}", value, True, 1.1, T0 + 1.1)
    rec.on_decision("pickup", "51P", "A", 1000.0, 1.1, T0 + 1.1)
    rec.on_decision("trip", "51P", "A", 1000.0, 1.1, T0 + 1.1)
    estimate = rec.last_estimate
    assert estimate is not None and estimate.method == "takagi" and estimate.section == "L/2"
    assert estimate.distance_m == pytest.approx(2500.0, abs=1.0)


def test_the_ring_buffer_keeps_only_the_pre_fault_window() -> None:
    rec = _recorder(pre_fault_s=0.5)
    for k in range(1000):
        _poll(rec, k * 0.1, 100.0)
    assert 4 <= len(rec._ring) <= 7  # noqa: SLF001 - the bound is the point


# --------------------------------------------------------------------------- the writer


@st.composite
def _records(draw: st.DrawFn) -> comtrade.Record:
    n_a = draw(st.integers(0, 6))
    n_d = draw(st.integers(0, 20))
    n = draw(st.integers(1, 40))
    names = st.from_regex(r"[A-Za-z]([A-Za-z0-9 _.]{0,11}[A-Za-z0-9_.])?", fullmatch=True)
    steps = draw(st.lists(st.integers(0, 2_000_000), min_size=n - 1, max_size=n - 1))
    start = draw(st.floats(1e9, 2e9))
    times = [start]
    for dt in steps:
        times.append(times[-1] + dt / 1e6)
    value = st.one_of(st.none(), st.floats(-1e5, 1e5, allow_nan=False))
    return comtrade.Record(
        station=draw(names),
        device=draw(names),
        analog=[
            comtrade.AnalogChannel(draw(names), draw(st.sampled_from(["A", "kV", "deg", "kW"]))) for _ in range(n_a)
        ],
        digital=[comtrade.DigitalChannel(draw(names)) for _ in range(n_d)],
        times=times,
        analog_values=[[draw(value) for _ in range(n_a)] for _ in range(n)],
        digital_values=[[draw(st.integers(0, 1)) for _ in range(n_d)] for _ in range(n)],
        trigger_time=draw(st.sampled_from(times)),
    )


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(record=_records(), fmt=st.sampled_from(comtrade.FORMATS))
@example(
    record=comtrade.Record(  # 99999 is ASCII's missing-value marker: the channel is scaled
        station="A",
        device="A",
        analog=[comtrade.AnalogChannel("A", "A")],
        digital=[],
        times=[1e9, 1e9 + 0.001],
        analog_values=[[None], [99999.0]],
        digital_values=[[], []],
        trigger_time=1e9,
    ),
    fmt="ASCII",
)
def test_written_records_read_back_with_an_independent_reader(
    record: comtrade.Record, fmt: comtrade.DatFormat, tmp_path: Path
) -> None:
    cfg, dat, hdr = comtrade.write(record, fmt)
    (tmp_path / "r.cfg").write_bytes(cfg)
    (tmp_path / "r.dat").write_bytes(dat)
    back = reader.load(str(tmp_path / "r.cfg"), str(tmp_path / "r.dat"))
    assert back.rev_year == "2013" and back.cfg.timestamp_critical
    assert back.analog_channel_ids == [c.name for c in record.analog]
    assert back.status_channel_ids == [c.name for c in record.digital]
    assert back.total_samples == len(record.times)
    for k, t in enumerate(record.times):
        assert back.time[k] == pytest.approx(t - record.times[0], abs=2e-6 + 1e-7 * (t - record.times[0]))
    for i in range(len(record.analog)):
        column = [row[i] for row in record.analog_values]
        present = [v for v in column if v is not None]
        span = (max(present) - min(present)) if present else 0.0
        step = span / (2 * comtrade.INT16_SPAN) if fmt == "BINARY" else 0.0
        for k, v in enumerate(column):
            got = back.analog[i][k]
            if v is None:
                assert math.isnan(got)
            else:
                assert got == pytest.approx(v, abs=step + 1e-6 * max(1.0, abs(v)), rel=1e-6)
    for i in range(len(record.digital)):
        assert list(back.status[i]) == [row[i] for row in record.digital_values]
    assert back.trigger_time == pytest.approx(record.trigger_time - record.times[0], abs=2e-6)


@pytest.mark.parametrize(
    "bad",
    [
        {"times": []},
        {"times": [2.0, 1.0], "analog_values": [[], []], "digital_values": [[], []]},
        {"analog_values": [[math.inf]]},
        {"digital_values": [[2]]},
        {"station": "A,B"},
        {"analog": [comtrade.AnalogChannel("ia ", "A")]},
        {"times": [0.0, 5000.0], "analog_values": [[1.0], [1.0]], "digital_values": [[0], [0]]},
    ],
)
def test_records_the_writer_cannot_write_are_refused(bad: dict[str, object]) -> None:
    base: dict[str, object] = {
        "station": "S",
        "device": "D",
        "analog": [comtrade.AnalogChannel("ia", "A")],
        "digital": [comtrade.DigitalChannel("trip")],
        "times": [0.0],
        "analog_values": [[1.0]],
        "digital_values": [[0]],
        "trigger_time": 0.0,
    }
    base.update(bad)
    with pytest.raises(comtrade.ComtradeError):
        comtrade.write(comtrade.Record(**base))  # type: ignore[arg-type]
