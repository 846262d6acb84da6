"""AMI feed: the payload codec, and concentrators → real mosquitto → the gateway's subscriber."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from gateway.contract.clock import SimClock
from gateway.contract.settings import AmiConfig
from hil.ami import AmiPublisher
from hil.runtime import HilRuntime, RuntimeOptions
from protocols.ami import (
    STANDARD_COLUMNS,
    AmiPayloadError,
    AmiSubscriber,
    concentrator_from_topic,
    decode_batch,
    encode_batch,
    topic_for,
)
from tests.support.broker import run_mosquitto
from tests.support.stub_grid import StubModel
from tests.test_hil_runtime import make_site

# --------------------------------------------------------------------------- codec


def _columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "voltage_v": rng.normal(230, 3, n).astype(np.float32),
        "current_a": rng.uniform(0, 40, n).astype(np.float32),
        "demand_kw": rng.uniform(0, 9, n).astype(np.float32),
        "energy_kwh": rng.uniform(0, 1e6, n),
        "power_factor": rng.uniform(0.8, 1, n).astype(np.float32),
        "thd_pct": rng.uniform(0, 8, n).astype(np.float32),
        "powered": rng.uniform(size=n) > 0.01,
        "tamper": rng.uniform(size=n) > 0.999,
    }


def _encode(ids: list[str], columns: dict[str, np.ndarray], **kw: Any) -> bytes:
    args: dict[str, Any] = dict(
        substation_id="SUB-003", concentrator_id="MTR-GRP-101", seq=4, reading_time=1_767_225_600.0, interval_s=900.0
    )
    args.update(kw)
    return encode_batch(meter_ids=ids, columns=columns, **args)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), seed=st.integers(0, 2**16), nan_at=st.integers(0, 299))
def test_codec_round_trip(n: int, seed: int, nan_at: int) -> None:
    ids = [f"MTR-101-{i:05d}" for i in range(n)]
    columns = _columns(n, seed)
    if n:
        columns["voltage_v"][nan_at % n] = np.nan  # a meter that did not answer
    batch = decode_batch(_encode(ids, columns, part=1, parts=3))
    assert batch.meter_ids == ids and (batch.part, batch.parts, batch.seq) == (1, 3, 4)
    assert batch.concentrator_id == "MTR-GRP-101" and batch.reading_time == 1_767_225_600.0
    assert set(batch.columns) == set(STANDARD_COLUMNS)
    for name, values in columns.items():
        np.testing.assert_array_equal(batch.columns[name], values.astype(batch.columns[name].dtype))
        assert batch.columns[name].flags.writeable


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_is_rejected_cleanly(payload: bytes) -> None:
    try:
        decode_batch(payload)
    except AmiPayloadError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=8)
        | st.binary(max_size=16),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
def test_wrong_structures_are_rejected_cleanly(obj: Any) -> None:
    try:
        decode_batch(msgpack.packb(obj, use_bin_type=True))
    except AmiPayloadError:
        pass


def _mutated(**changes: Any) -> bytes:
    message = msgpack.unpackb(_encode(["A-1", "A-2"], _columns(2)), raw=False)
    for key, value in changes.items():
        if value is None:
            del message[key]
        else:
            message[key] = value
    return msgpack.packb(message, use_bin_type=True)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_mutated(v=2), "format version 2"),
        (_mutated(ids=None), "missing field 'ids'"),
        (_mutated(seq=-1), "'seq' must be >= 0"),
        (_mutated(seq=True), "'seq' must be int"),
        (_mutated(reading_time=math.inf), "'reading_time' must be finite"),
        (_mutated(part=3, parts=2), "part 3 of 2"),
        (_mutated(ids=["A-1", 7]), r"ids\[1\] must be a non-empty string"),
        (_mutated(ids=["A-1"]), "column 'voltage_v': 8 bytes for 1 meters"),
        (_mutated(columns={}), "'columns' is empty"),
        (_mutated(columns={"voltage_v": {"dtype": "<f8", "data": b"\0" * 16}}), "where <f4 is expected"),
        (_mutated(columns={"x": {"dtype": ">f4", "data": b"\0" * 8}}), "dtype '>f4' is not one of"),
        (_mutated(columns={"Bad-Name": {"dtype": "<f4", "data": b"\0" * 8}}), "not a lower-case identifier"),
        (b"\xc1", "not msgpack"),
        (msgpack.packb([1, 2]), "payload must be a map"),
    ],
)
def test_bad_payloads_say_why(payload: bytes, message: str) -> None:
    with pytest.raises(AmiPayloadError, match=message):
        decode_batch(payload)


def test_topics() -> None:
    assert topic_for("ami/SUB-003/+/readings", "DC-7") == "ami/SUB-003/DC-7/readings"
    assert topic_for("ami/SUB-003/#", "DC-7") == "ami/SUB-003/DC-7/readings"
    assert concentrator_from_topic("ami/SUB-003/+/readings", "ami/SUB-003/DC-7/readings") == "DC-7"
    assert concentrator_from_topic("ami/SUB-003/readings", "ami/SUB-003/readings") is None


# --------------------------------------------------------------------------- over a real broker


class Collector:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.columns: list[dict[str, np.ndarray]] = []
        self.times: list[float] = []
        self.event = asyncio.Event()
        self.want = 0

    def __call__(self, ids: list[str], columns: dict[str, np.ndarray], reading_time: float) -> None:
        self.ids += ids
        self.columns.append(columns)
        self.times.append(reading_time)
        if len(self.ids) >= self.want:
            self.event.set()


async def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


def test_feed_arrives_through_mosquitto_and_bad_messages_are_dropped(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    model = StubModel.from_site(site)
    with run_mosquitto(tmp_path) as broker:
        data = site.model_dump()
        data["ami"] = {"broker_host": "127.0.0.1", "broker_port": broker.port, "topic": "ami/SUB-003/+/readings"}
        from gateway.config import SiteConfig

        site = SiteConfig.model_validate(data)
        ami_cfg = site.ami
        assert isinstance(ami_cfg, AmiConfig)

        async def scenario() -> None:
            sink = Collector()
            meters = sum(g.count for g in site.meter_groups)
            batches = sum(-(-g.count // 300) for g in site.meter_groups)  # ceil(count / 300) per group
            sink.want = meters
            sub = AmiSubscriber(ami_cfg, "SUB-003", sink, SimClock(), client_id="test-ami-sub")
            task = asyncio.create_task(sub.run())
            await _until(lambda: sub.connected)
            await asyncio.sleep(0.2)  # the SUBACK
            pub = AmiPublisher(site, batch_size=300, interval_s=900.0)
            await pub.start()
            try:
                readings = model.meter_readings(0.0)
                assert pub.publish(readings, 1_767_225_600.0) == batches  # one group per message at most
                await asyncio.wait_for(sink.event.wait(), 10)
                assert sorted(sink.ids) == sorted(readings.ids)
                voltage = np.concatenate([c["voltage_v"] for c in sink.columns])
                order = {m: i for i, m in enumerate(readings.ids)}
                np.testing.assert_array_equal(voltage, readings.voltage_v[[order[m] for m in sink.ids]])
                assert set(sink.times) == {1_767_225_600.0}

                raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-ami-garbage")
                raw.connect("127.0.0.1", broker.port)
                raw.loop_start()
                for payload in (b"garbage", _encode(["X-1"], _columns(1), concentrator_id="OTHER")):
                    raw.publish("ami/SUB-003/MTR-GRP-101/readings", payload, qos=1).wait_for_publish(5)
                raw.publish(
                    "ami/SUB-003/DC-9/readings",
                    _encode(["X-1"], _columns(1), concentrator_id="DC-9", substation_id="SUB-999"),
                    qos=1,
                ).wait_for_publish(5)
                raw.disconnect()
                raw.loop_stop()
                await _until(lambda: sub.bad_messages == 3)
                pub.publish(readings, 1_767_226_500.0)
                sink.want = 2 * meters
                sink.event.clear()
                await asyncio.wait_for(sink.event.wait(), 10)
                status = sub.status()
                assert status["batches"] == 2 * batches and status["readings"] == 2 * meters
                assert status["seq_gaps"] == 0
                assert status["bad_messages"] == 3 and "SUB-999" in status["last_error"]
            finally:
                await pub.close()
                await sub.close()
                await asyncio.wait_for(task, 10)

        asyncio.run(asyncio.wait_for(scenario(), 60))


def test_runtime_publishes_every_interval(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with run_mosquitto(tmp_path) as broker:
        from gateway.config import SiteConfig

        data = site.model_dump()
        data["ami"] = {"broker_host": "127.0.0.1", "broker_port": broker.port, "topic": "ami/SUB-003/+/readings"}
        site = SiteConfig.model_validate(data)
        model = StubModel.from_site(site)
        assert site.ami is not None
        ami_cfg = site.ami

        async def scenario() -> None:
            sink = Collector()
            sink.want = 3 * 500
            sub = AmiSubscriber(ami_cfg, "SUB-003", sink, SimClock(), client_id="test-ami-sub2")
            task = asyncio.create_task(sub.run())
            await _until(lambda: sub.connected)
            await asyncio.sleep(0.2)
            options = RuntimeOptions(speed=0, iec61850=False, ami_interval_s=0.1, ami_first_reading_s=0.0, meters=500)
            runtime = HilRuntime(site, model, options)
            await runtime.start()
            try:
                for _ in range(25):  # 0.25 s simulated: readings at 0 (start), 0.1 and 0.2 s
                    await runtime.step()
                await asyncio.wait_for(sink.event.wait(), 10)
                assert len(sink.ids) == 1500 and len(set(sink.ids)) == 500
                assert len(set(sink.times)) == 3
                assert runtime.status()["ami"]["intervals"] == 3
            finally:
                await runtime.stop()
                await sub.close()
                await asyncio.wait_for(task, 10)

        asyncio.run(asyncio.wait_for(scenario(), 60))


def test_subscriber_survives_a_broker_restart_and_a_failing_sink(tmp_path: Path) -> None:
    with run_mosquitto(tmp_path) as broker:
        cfg = AmiConfig(broker_host="127.0.0.1", broker_port=broker.port, topic="ami/SUB-003/+/readings")
        got: list[str] = []
        calls = {"n": 0}

        async def sink(ids: list[str], columns: dict[str, np.ndarray], reading_time: float) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("the sink is broken once")
            got.extend(ids)

        def publish(seq: int, ids: list[str]) -> None:
            raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-dc-{seq}")
            raw.connect("127.0.0.1", broker.port)
            raw.loop_start()
            raw.publish(
                "ami/SUB-003/DC-1/readings", _encode(ids, _columns(len(ids)), concentrator_id="DC-1", seq=seq), qos=1
            ).wait_for_publish(5)
            raw.disconnect()
            raw.loop_stop()

        async def scenario() -> None:
            sub = AmiSubscriber(cfg, "SUB-003", sink, SimClock(), client_id="test-ami-restart", reconnect_max_s=1)
            task = asyncio.create_task(sub.run())
            try:
                await _until(lambda: sub.connected)
                await asyncio.sleep(0.2)
                await asyncio.to_thread(publish, 0, ["A-1"])
                await _until(lambda: sub.sink_errors == 1)
                broker.restart()
                await _until(lambda: sub.connects >= 2, 20)
                await asyncio.sleep(0.2)
                await asyncio.to_thread(publish, 3, ["A-2", "A-3"])
                await _until(lambda: got == ["A-2", "A-3"])
                assert sub.status()["seq_gaps"] == 2 and sub.status()["bad_messages"] == 0
            finally:
                await sub.close()
                await asyncio.wait_for(task, 10)
            assert not sub.connected

        asyncio.run(asyncio.wait_for(scenario(), 60))
