"""Disturbance records, fault location and the sequence-of-events export on the real rig: a
permanent fault on the simulated feeder, the real daemon trips, recloses and locks out; the
record is written as COMTRADE (read back with the `comtrade` package, which we did not write),
listed and fetched with `stima records`, announced on MQTT; the distance to the fault reaches
the fault record, the FLISR decision, the MQTT fault event and the record's header; `stima
events export` lists the decisions and the breaker's position changes in time order."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import comtrade
import pytest

from hil.rig import Rig
from tests.support.broker import subscriber
from tests.support.faults import close_and_settle, fault_site

ROOT = Path(__file__).resolve().parents[1]
FAULT_M = 2700.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir: Path = tmp_path_factory.mktemp("records")
    doc = fault_site(reclose=True, relay_poll_ms=100)
    doc["flisr"] = {"mode": "advisory", "settle_s": 0.5}
    doc["records"] = {"format": "binary", "pre_fault_s": 1.5, "post_fault_s": 2.0, "max_records": 3}
    with Rig(doc, workdir, hil_args=("--no-ami",)) as r:
        time.sleep(2.0)  # pre-fault samples in the ring buffers
        yield r


def stima(rig: Rig, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv, "--runtime-dir", str(rig.runtime_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def _messages(sub: Any, suffix: str) -> list[dict[str, Any]]:
    return list(sub.on(suffix))


def test_a_permanent_fault_gives_a_comtrade_record_and_a_located_fault(rig: Rig, tmp_path: Path) -> None:
    assert rig.broker is not None
    base = f"stima/{rig.doc['site']['region']}/{rig.doc['site']['substation_id']}"
    with subscriber(rig.broker, f"{base}/#") as sub:
        start = time.time()
        rig.hil_call("fault", line="LINE-045", distance_m=FAULT_M, kind="slg", transient=False)
        rig.wait(lambda: rig.daemon_call("status")["protection"]["breakers"]["CB-045"]["locked_out"], "lockout", 30)
        rec = rig.wait(
            lambda: next(
                (
                    r
                    for r in rig.daemon_call("records.list")
                    if r["breaker"] == "CB-045" and r["trigger_time"] >= start - 1
                ),
                None,
            ),
            "a disturbance record",
            30,
        )
        assert rec["trips"] >= 3 and rec["lockout"], rec
        # the fault record and the fault event on MQTT carry the distance from the relay's phasors
        fault = rig.wait(
            lambda: next(
                (
                    f
                    for f in rig.daemon_call("faults.list")
                    if f["breaker"] == "CB-045" and f["started_wall"] >= start - 1 and f.get("location")
                ),
                None,
            ),
            "a located fault record",
            20,
        )
        loc = fault["location"]
        assert loc["method"] == "takagi" and loc["fault_type"] == "slg" and loc["loop"] == "AG"
        assert abs(loc["distance_m"] - FAULT_M) <= 250.0, loc
        assert loc["section"] == "LINE-045/2"
        assert sub.wait_for(lambda _m: any(f.get("location") for f in _messages(sub, "faults")), 20)
        assert sub.wait_for(
            lambda _m: any(m.get("record_id") == rec["record_id"] for m in _messages(sub, "records")), 20
        )
        # the FLISR decision used it
        plan = rig.wait(
            lambda: next(
                (
                    s["plan"]
                    for s in rig.daemon_call("switching.list")
                    if s["source"] == "flisr" and s["created"] >= start
                ),
                None,
            ),
            "a FLISR plan",
            20,
        )
        assert plan["distance_method"] == "takagi (relay)"
        assert abs(plan["distance_m"] - loc["distance_m"]) < 1e-6

    # listed and fetched with the CLI, read back by an independent reader
    listed = stima(rig, "records", "list", "--breaker", "CB-045", "--json")
    assert listed.returncode == 0 and rec["record_id"] in listed.stdout, listed.stderr
    human = stima(rig, "records", "list")
    assert rec["record_id"] in human.stdout and "LINE-045/2" in human.stdout
    got = stima(rig, "records", "get", rec["record_id"], "--out", str(tmp_path))
    assert got.returncode == 0, got.stderr
    data = comtrade.load(str(tmp_path / f"{rec['record_id']}.cfg"), str(tmp_path / f"{rec['record_id']}.dat"))
    assert data.rev_year == "2013" and data.cfg.timestamp_critical  # irregular samples, each time-stamped
    ids = data.analog_channel_ids
    assert {"ia", "ib", "ic", "in", "va_kv", "ia_deg", "voltage_kv"} <= set(ids)
    ia = data.analog[ids.index("ia")]
    assert max(ia) > 1000.0 and min(ia) < 1.0  # fault current, then the open breaker's zero
    status = data.status_channel_ids
    trip = data.status[status.index("trip")]
    closed = data.status[status.index("breaker closed")]
    assert "51P pickup" in status and max(trip) == 1 and max(data.status[status.index("lockout")]) == 1
    assert closed[0] == 1 and closed[-1] == 0
    # pre-fault samples before the trigger, the trigger inside the record
    assert data.time[0] < data.trigger_time - 1.0 < data.time[-1]
    header = (tmp_path / f"{rec['record_id']}.hdr").read_text()
    assert "method takagi" in header and "LINE-045/2" in header and '"51P"' in header
    assert "polled every 100 ms" in header


def test_events_export_lists_decisions_and_position_changes_in_time_order(rig: Rig, tmp_path: Path) -> None:
    out = tmp_path / "soe.csv"
    r = stima(rig, "events", "export", "--since", "10m", "--format", "csv", "--source", "CB-045", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    kinds = [row["kind"] for row in rows]
    assert "protection.trip" in kinds and "status.change" in kinds
    times = [float(row["time"]) for row in rows]
    assert times == sorted(times)
    decisions = [row for row in rows if row["kind"].startswith("protection.")]
    assert all(row["time_source"] == "decision" for row in decisions)
    positions = [row for row in rows if row["kind"] == "status.change" and row["value"].startswith("CB-045.closed")]
    assert positions and all(row["time_source"] == "receive" for row in positions)  # Modbus has no time stamps
    assert all(len(row["time_utc"]) == len("2026-12-02T07:42:44.123Z") for row in rows)
    # the first trip comes before the breaker is seen open
    first_trip = next(float(row["time"]) for row in rows if row["kind"] == "protection.trip")
    first_open = next(float(row["time"]) for row in positions if row["value"].endswith("=0"))
    assert first_trip <= first_open
    as_json = stima(rig, "events", "export", "--since", "10m", "--format", "json", "--kind", "protection.trip")
    assert as_json.returncode == 0
    trips = json.loads(as_json.stdout)
    assert trips and all(t["kind"] == "protection.trip" for t in trips)


def test_status_changes_of_an_iec61850_ied_carry_its_time_stamp(rig: Rig) -> None:
    """CB-046's position arrives by IEC 61850 report with the IED's `t`: the SOE row says 'ied'."""
    start = time.time()
    rig.hil_call("operate", device="CB-046", action="open")
    rig.wait(
        lambda: any(
            e["kind"] == "status.change" and e["point"] == "CB-046.closed"
            for e in rig.daemon_call("events", since=start, source="CB-046", limit=100)
        ),
        "CB-046's position change logged",
        20,
    )
    r = stima(rig, "events", "export", "--since", "1m", "--format", "json", "--kind", "status.")
    rows = [row for row in json.loads(r.stdout) if row["value"].startswith("CB-046.closed")]
    assert rows and rows[-1]["time_source"] == "ied"
    rig.hil_call("operate", device="CB-046", action="close")


def test_retention_keeps_the_newest_records(rig: Rig) -> None:
    for _ in range(3):
        close_and_settle(rig, "CB-045")
        start = time.time()
        rig.hil_call("fault", line="LINE-045", distance_m=900.0, kind="3ph", transient=False)
        rig.wait(lambda: rig.daemon_call("status")["protection"]["breakers"]["CB-045"]["locked_out"], "lockout", 30)
        rig.wait(
            lambda t=start: any(r["trigger_time"] >= t - 1 for r in rig.daemon_call("records.list")), "its record", 30
        )
        rig.hil_call("clear")
    records = rig.daemon_call("records.list")
    assert len(records) == 3  # max_records
    files = list((Path(rig.doc["site"]["state_dir"]) / "records").iterdir())
    assert len(files) == 3 * 4
    close_and_settle(rig, "CB-045")
