"""The column-wise smart-meter fleet: classification, outages, restoration, tamper, comm loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agents.elements.smart_meter import BulkStateChange, MeterFleet, MeterState
from gateway.config import MeterGroupConfig


def fleet(count: int = 10, timeout: float = 900.0) -> MeterFleet:
    groups = [
        MeterGroupConfig(id="G1", prefix="M1", count=count, connected_transformer="X-1", reading_timeout_s=timeout),
        MeterGroupConfig(id="G2", prefix="M2", count=count, connected_transformer="X-2", reading_timeout_s=timeout),
    ]
    return MeterFleet(groups, now=0.0)


def states(f: MeterFleet, ids: list[str]) -> list[str]:
    return [f.meter(i)["state"] for i in ids]


def test_readings_drive_meter_states() -> None:
    f = fleet()
    ids = [f"M1-{i:05d}" for i in range(1, 7)]
    f.ingest(
        ids,
        {
            "voltage_v": np.array([230, 200, 10, 230, 240, 230.0]),
            "thd_pct": np.array([2, 2, 2, 12, 2, 2.0]),
            "demand_kw": np.ones(6),
        },
        10,
    )
    f.ingest(ids[4:5], {"tamper": np.array([True])}, 11)
    changes, actions = f.evaluate(12)
    assert states(f, ids) == ["Active", "Low_Voltage", "Outage", "Power_Quality_Issue", "Tampered", "Active"]
    assert all(isinstance(c, BulkStateChange) and c.group_id == "G1" for c in changes)
    low = next(c for c in changes if c.new == "Low_Voltage")
    assert low.meter_ids == ("M1-00002",) and low.cause == "voltage below range" and low.time == 12
    kinds = {getattr(a, "kind", None) for a in actions}
    assert {"meter_outage", "low_voltage_at_customer"} <= kinds


def test_high_consumption_against_the_typical_pattern() -> None:
    f = fleet()
    ids = ["M1-00001"]
    for t in range(20):
        f.ingest(ids, {"voltage_v": np.array([230.0]), "demand_kw": np.array([1.0])}, t)
    f.evaluate(20)
    f.ingest(ids, {"voltage_v": np.array([230.0]), "demand_kw": np.array([4.0])}, 21)
    f.evaluate(22)
    assert states(f, ids) == ["High_Consumption"]


def test_tamper_is_latched_until_cleared() -> None:
    f = fleet()
    f.ingest(["M2-00003"], {"tamper": np.array([True]), "voltage_v": np.array([230.0])}, 1)
    f.evaluate(2)
    f.ingest(["M2-00003"], {"tamper": np.array([False]), "voltage_v": np.array([230.0])}, 3)
    f.evaluate(4)
    assert states(f, ["M2-00003"]) == ["Tampered"]
    assert f.clear_tamper(["M2-00003"]) == 1
    f.evaluate(5)
    assert states(f, ["M2-00003"]) == ["Active"]


def test_outage_and_restoration_are_recorded_for_reliability() -> None:
    f = fleet()
    sl = f.group_slice("G1")
    f.set_supply(["G1"], lost=True)
    f.evaluate(100)
    assert f.counts(sl) == {"Outage": 10}
    f.set_supply(["G1"], lost=False)
    changes, actions = f.evaluate(700)
    assert f.counts(sl) == {"Active": 10}
    restored = next(a for a in actions if getattr(a, "kind", "") == "service_restored")
    assert restored.payload["meters"] == 10 and restored.payload["mean_outage_s"] == pytest.approx(600)
    r = f.ledger.indices(0, 1000)
    assert r.sustained_interruptions == 10 and r.customers_served == 20


def test_unknown_ids_are_counted_and_bad_columns_refused() -> None:
    f = fleet()
    n = f.ingest(["M1-00001", "NOPE", "M2-00010"], {"voltage_v": np.array([230.0, 1, 231])}, 1)
    assert n == 2 and f.unknown_ids == 1
    with pytest.raises(ValueError, match="unknown meter column"):
        f.ingest(["M1-00001"], {"volts": np.array([1.0])}, 1)
    with pytest.raises(ValueError, match="has 2 values for 1 ids"):
        f.ingest(["M1-00001"], {"voltage_v": np.array([1.0, 2.0])}, 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 19), st.floats(0, 3000)), max_size=40), st.floats(60, 1800))
def test_a_meter_without_readings_for_its_timeout_is_in_communication_loss(
    readings: list[tuple[int, float]], timeout: float
) -> None:
    f = fleet(timeout=timeout)
    last = np.zeros(20)
    for idx, t in sorted(readings, key=lambda r: r[1]):
        f.ingest([f.ids[idx]], {"voltage_v": np.array([230.0])}, t)
        last[idx] = t
    now = 3000.0 + timeout + 1.0
    f.evaluate(now)
    silent = (now - last) > timeout
    got = np.array([f.meter(i)["state"] == MeterState.COMMUNICATION_LOSS.value for i in f.ids])
    assert (got == silent).all()


def test_snapshot_round_trip() -> None:
    f = fleet()
    f.set_supply(["G2"], lost=True)
    f.evaluate(5)
    g = fleet()
    assert g.restore(f.snapshot())
    assert g.counts() == f.counts()
    assert not fleet(count=3).restore(f.snapshot())


def test_critical_meters_are_carried_to_the_fleet() -> None:
    groups = [
        MeterGroupConfig(id="G1", prefix="M1", count=5, connected_transformer="X-1", critical_meters=["M1-00002"]),
        MeterGroupConfig(
            id="G2",
            prefix="M2",
            first=10,
            count=5,
            connected_transformer="X-2",
            critical_meters=["M2-00014", "M2-00010"],
        ),
    ]
    f = MeterFleet(groups, now=0.0)
    assert [f.ids[i] for i in np.flatnonzero(f.critical)] == ["M1-00002", "M2-00010", "M2-00014"]
