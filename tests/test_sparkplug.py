"""`uplink.payload = "sparkplug_b"` on the real rig, read by a Sparkplug B host that is not ours
(pysparkplug, in a process of its own): nothing before the primary host is online, then NBIRTH
and a DBIRTH per IED, DDATA with the image's values (aliases resolved by the host), NDATA for the
gateway's records, `seq` without a gap, a rebirth on NCMD, and NDEATH with the birth's bdSeq when
the primary host goes offline. And, without the rig, values read as blocks (a Modbus block read's
columns) reach the Sparkplug codec as samples and a host reads them from DDATA."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gateway.contract.points import GOOD, PointBlock, PointKind, ProcessImage, Quality, QualityReason, Validity
from gateway.telemetry import TELEMETRY, PointSpec, Telemetry
from hil.rig import Rig
from protocols.sparkplug import BOOLEAN, DOUBLE, INT64, QUALITY_BAD, QUALITY_GOOD, SparkplugCodec
from tests.support.faults import fault_site

ROOT = Path(__file__).resolve().parents[1]
HOST_LIBS = ROOT / ".venv" / "sparkplug-host"
GROUP, NODE, HOST_ID = "nairobi-east", "SUB-003", "scada-host"


class Host:
    """The pysparkplug host process: its messages as dicts, in arrival order."""

    def __init__(self, rig: Rig) -> None:
        assert (HOST_LIBS / "pysparkplug").is_dir(), f"{HOST_LIBS} lacks pysparkplug: run make deps"
        env = {**os.environ, "PYTHONPATH": str(HOST_LIBS)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "support" / "sparkplug_host.py"),
                "127.0.0.1",
                str(rig.tls_port),
                str(rig.tls.ca_file),
                str(rig.tls.client_cert),
                str(rig.tls.client_key),
                GROUP,
                NODE,
                HOST_ID,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.messages: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait(lambda m: m["type"] == "ready", "the host ready", 20)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                message = {"type": "unreadable", "line": line[:500]}
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()

    def send(self, command: str) -> None:
        start = self.mark()
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self.wait(lambda m: m["type"] == "done" and m["command"] == command, f"the host's {command}", 20, start)

    def wait(self, predicate: Any, what: str, timeout_s: float = 30.0, start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for m in self.messages[start:]:
                    assert m["type"] != "unreadable", f"the host printed a line that is not JSON: {m['line']!r}"
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
                    raise TimeoutError(
                        f"timed out waiting for {what}; got {[x['type'] for x in self.messages][-20:]} {err[-2000:]}"
                    )
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir: Path = tmp_path_factory.mktemp("sparkplug")
    doc = fault_site(reclose=True, relay_poll_ms=50)
    doc["uplink"].update(
        payload="sparkplug_b", sparkplug={"group_id": GROUP, "edge_node_id": NODE, "primary_host_id": HOST_ID}
    )
    with Rig(doc, workdir, hil_args=("--no-ami",)) as r:
        yield r


def _metrics(msg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in msg.get("metrics", [])}


def test_an_off_the_shelf_host_reads_births_data_records_rebirth_and_death(rig: Rig) -> None:
    host = Host(rig)
    try:
        time.sleep(2.0)
        assert not [m for m in host.messages if m["type"] == "NBIRTH"], "born before the primary host was online"
        start = host.mark()
        host.send("online")
        nbirth = host.wait(lambda m: m["type"] == "NBIRTH", "NBIRTH", 30, start)
        node = _metrics(nbirth)
        assert nbirth["seq"] == 0 and nbirth["node"] == NODE and nbirth["group"] == GROUP
        assert node["Node Control/Rebirth"]["value"] is False
        bdseq = node["bdSeq"]["value"]
        assert {f"Agents/{a['id']}/State" for a in rig.doc["agents"]} <= set(node)
        ieds = {i["id"]: [p["id"] for p in i["points"]] for i in rig.doc["ieds"]}
        host.wait(
            lambda m: len([x for x in host.messages[start:] if x["type"] == "DBIRTH"]) == len(ieds),
            "a DBIRTH per IED",
            30,
            start,
        )
        dbirths = {m["device"]: m for m in host.messages[start:] if m["type"] == "DBIRTH"}
        assert set(dbirths) == set(ieds)
        assert set(_metrics(dbirths["IED-CB-045"])) == set(ieds["IED-CB-045"])
        assert _metrics(dbirths["IED-CB-045"])["CB-045.ia"]["datatype"] == 10  # Double
        assert _metrics(dbirths["IED-CB-045"])["CB-045.closed"]["datatype"] == 11  # Boolean
        # the integrity report as DDATA: names resolved from the births' aliases by the host
        ddata = host.wait(
            lambda m: (
                m["type"] == "DDATA"
                and m["device"] == "IED-CB-045"
                and _metrics(m).get("CB-045.ia", {}).get("value") is not None
            ),
            "DDATA of CB-045.ia",
            30,
            start,
        )
        [image] = rig.daemon_call("points.read", ids=["CB-045.ia"])
        assert _metrics(ddata)["CB-045.ia"]["value"] == pytest.approx(image["value"], rel=0.3, abs=5.0)
        # the gateway's records as node data
        mark = host.mark()
        rig.daemon_call("breaker.operate", breaker="CB-044", action="open")
        events = host.wait(
            lambda m: (
                m["type"] == "NDATA"
                and "Events" in _metrics(m)
                and json.loads(_metrics(m)["Events"]["value"]).get("kind") == "switching.accepted"
            ),
            "the operation in NDATA",
            30,
            mark,
        )
        assert json.loads(_metrics(events)["Events"]["value"])["source"] == "CB-044"
        host.wait(
            lambda m: m["type"] == "NDATA" and _metrics(m).get("Agents/CB-044/State", {}).get("value") == "Open_Manual",
            "CB-044's state in NDATA",
            30,
            mark,
        )
        rig.daemon_call("breaker.operate", breaker="CB-044", action="close")
        # seq: NBIRTH 0, then every message of the edge node +1 (mod 256), devices included
        seqs = [m["seq"] for m in host.messages[start:] if m["type"] in ("NBIRTH", "DBIRTH", "NDATA", "DDATA")]
        assert all((b - a) % 256 == 1 for a, b in zip(seqs, seqs[1:])), seqs[:40]
        # a rebirth asked by the host: the same bdSeq, values in the births now
        mark = host.mark()
        host.send("rebirth")
        again = host.wait(lambda m: m["type"] == "NBIRTH", "NBIRTH after NCMD", 30, mark)
        assert again["seq"] == 0 and _metrics(again)["bdSeq"]["value"] == bdseq
        reborn = host.wait(lambda m: m["type"] == "DBIRTH" and m["device"] == "IED-CB-045", "DBIRTH again", 30, mark)
        assert _metrics(reborn)["CB-045.ia"]["is_null"] is False
        # the primary host goes offline: the edge node dies with the birth's bdSeq, and is born
        # again with the next one when the host is back
        mark = host.mark()
        host.send("offline")
        death = host.wait(lambda m: m["type"] == "NDEATH", "NDEATH", 30, mark)
        assert _metrics(death)["bdSeq"]["value"] == bdseq
        host.send("online")
        back = host.wait(lambda m: m["type"] == "NBIRTH", "NBIRTH after the host came back", 60, mark)
        assert _metrics(back)["bdSeq"]["value"] == (bdseq + 1) % 256
    finally:
        host.close()


def _decode(birth: bytes, data: list[bytes]) -> dict[str, Any]:
    """A DBIRTH and DDATA payloads as pysparkplug reads them (its own process and libraries)."""
    assert (HOST_LIBS / "pysparkplug").is_dir(), f"{HOST_LIBS} lacks pysparkplug: run make deps"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "sparkplug_decode.py")],
        input=json.dumps({"birth": birth.hex(), "data": [d.hex() for d in data]}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(HOST_LIBS)},
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize("columns", [False, True], ids=["samples", "columns"])
def test_values_read_as_blocks_reach_a_sparkplug_host_as_ddata(columns: bool) -> None:
    """The daemon's path for a block read, sans-IO: the image takes the block, report-by-exception
    takes it once per block, and each flushed message goes through the codec as the uplink sends
    it (msgpack body → DDATA). A host must read every reported value, its time and its quality,
    whichever telemetry form carried them to the codec."""
    ied = "IED-A"
    points = [
        ("A.ia", PointKind.ANALOG, 1.0, "A"),
        ("A.closed", PointKind.BINARY, 0.0, ""),
        ("A.operations", PointKind.COUNTER, 0.0, ""),
    ]
    image = ProcessImage()
    for pid, kind, _deadband, unit in points:
        image.define(pid, kind, unit, source=ied)
    telemetry = Telemetry(
        [PointSpec(pid, kind, deadband, unit) for pid, kind, deadband, unit in points],
        integrity_period_s=1e9,
        columns=columns,
    )
    telemetry.set_index({pid: n for n, pid in enumerate(image.points)})
    image.subscribe_blocks(
        lambda pts, block: telemetry.on_points(pts, block.receive_monotonic),
        lambda point, update: telemetry.on_change(point, update.receive_monotonic),
    )
    codec = SparkplugCodec("nairobi-east", "SUB-003")
    codec.set_metrics(
        [
            {"id": p.point_id, "i": n, "kind": p.kind.value, "unit": p.unit, "source": p.source}
            for n, p in enumerate(image.points.values())
        ]
    )
    [_nbirth, (dbirth_topic, dbirth)] = codec.births(0, 1_700_000_000_000)
    assert dbirth_topic == codec.topic("DBIRTH", ied)
    out_of_range = Quality(Validity.INVALID, QualityReason.OUT_OF_RANGE)
    reads: list[tuple[list[Any], list[Quality]]] = [
        ([123.5, True, 7], [GOOD] * 3),
        ([123.9, True, 8], [GOOD] * 3),  # 0.4 A is inside the 1 A deadband: only the counter moved
        ([130.0, False, 8], [out_of_range, GOOD, GOOD]),
    ]
    ids = tuple(image.points)
    wall0 = 1_700_000_000.25
    seq, ddata = 0, []
    for n, (values, qualities) in enumerate(reads):
        image.apply_block(PointBlock(ids, values, qualities, float(n), wall0 + n))
        for suffix, payload in telemetry.flush(float(n), wall0 + n):
            assert suffix == TELEMETRY
            parts, seq = codec.encode_row(
                suffix, msgpack.packb(payload, use_bin_type=True), False, seq, round((wall0 + n) * 1000)
            )
            assert [topic for topic, _ in parts] == [codec.topic("DDATA", ied)]
            ddata += [wire for _, wire in parts]
    assert seq == 3
    host = _decode(dbirth, ddata)
    seen = [
        [(m["name"], m["datatype"], m["value"], m["timestamp"], m["properties"]["Quality"]) for m in d]
        for d in host["data"]
    ]
    t = [round((wall0 + n) * 1000) for n in range(3)]
    assert seen == [
        [
            ("A.ia", DOUBLE, 123.5, t[0], QUALITY_GOOD),
            ("A.closed", BOOLEAN, True, t[0], QUALITY_GOOD),
            ("A.operations", INT64, 7, t[0], QUALITY_GOOD),
        ],
        [("A.operations", INT64, 8, t[1], QUALITY_GOOD)],
        [("A.ia", DOUBLE, 130.0, t[2], QUALITY_BAD), ("A.closed", BOOLEAN, False, t[2], QUALITY_GOOD)],
    ]
    # a rebirth carries what the blocks said last
    [_nbirth, (_topic, reborn)] = codec.births(0, round((wall0 + 3) * 1000))
    last = {m["name"]: (m["value"], m["properties"]["Quality"]) for m in _decode(reborn, [])["birth"]}
    assert last == {"A.ia": (130.0, QUALITY_BAD), "A.closed": (False, QUALITY_GOOD), "A.operations": (8, QUALITY_GOOD)}
