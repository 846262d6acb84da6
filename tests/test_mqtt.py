"""The MQTT uplink against a real mosquitto: birth/death, telemetry, TLS, outages, commands, bounds."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract.clock import SystemClock
from gateway.contract.settings import SiteIdentity, UplinkConfig
from gateway.contract.points import GOOD, Point, PointKind
from gateway.storage import Store
from gateway.telemetry import PointSpec, Telemetry
from protocols.mqtt import MqttUplink, backoff_delay, envelope
from tests.support.broker import Broker, free_port, make_tls_files, run_mosquitto, subscriber

SITE = SiteIdentity(region="test-region", substation_id="SUB-T")
BASE = "stima/test-region/SUB-T"
TEST_TIMEOUT_S = 60.0


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), TEST_TIMEOUT_S)

    return asyncio.run(bounded())


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Wait (bounded) for a condition changed by the uplink or the broker."""
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def uplink_config(broker: Broker | None, port: int | None = None, **overrides: Any) -> UplinkConfig:
    port = port or (broker.port if broker else free_port())
    fields: dict[str, Any] = {"broker_host": "127.0.0.1", "broker_port": port}
    if broker is not None and broker.tls is not None:
        # relative paths, resolved against base_dir as the site file's are
        fields |= {
            "transport": "tls",
            "ca_file": "tls/ca.crt",
            "cert_file": "tls/client.crt",
            "key_file": "tls/client.key",
        }
    else:
        fields["transport"] = "tcp"
    return UplinkConfig(**(fields | overrides))


def make_uplink(tmp_path: Path, cfg: UplinkConfig, store: Store | None = None, **kwargs: Any) -> MqttUplink:
    return MqttUplink(
        cfg,
        SITE,
        store or Store(tmp_path / "state.db"),
        SystemClock(),
        logging.getLogger("test.uplink"),
        base_dir=tmp_path,
        backoff_min_s=0.05,
        backoff_max_s=0.5,
        **kwargs,
    )


def data(messages: list[Any]) -> list[dict[str, Any]]:
    return [p for p in messages if isinstance(p, dict)]


# --------------------------------------------------------------------------- envelope

keys = st.text(min_size=1, max_size=8).filter(lambda k: k not in ("seq", "historical", "msg_id"))
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.integers(-1000, 1000), max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(
    body=st.dictionaries(keys, values, max_size=40),
    seq=st.integers(0, 255),
    historical=st.booleans(),
    msg_id=st.integers(1, 2**62),
)
def test_envelope_adds_its_fields_to_any_encoded_map(
    body: dict[str, Any], seq: int, historical: bool, msg_id: int
) -> None:
    wire = envelope(msgpack.packb(body, use_bin_type=True), seq, historical, msg_id)
    assert msgpack.unpackb(wire, raw=False) == body | {"seq": seq, "historical": historical, "msg_id": msg_id}


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(0, 10_000), min_s=st.floats(0.01, 5.0), max_s=st.floats(0.01, 600.0), seed=st.integers(0, 2**32)
)
def test_backoff_is_jittered_exponential_and_capped(attempt: int, min_s: float, max_s: float, seed: int) -> None:
    import random

    max_s = max(max_s, min_s)
    ceiling = min(max_s, min_s * 2.0 ** min(attempt, 60))
    delay = backoff_delay(attempt, min_s, max_s, random.Random(seed))
    assert ceiling / 2.0 <= delay <= ceiling <= max_s


def test_publish_refuses_bad_input_with_the_reason(tmp_path: Path) -> None:
    up = make_uplink(tmp_path, uplink_config(None))
    with pytest.raises(ValueError, match="wildcards"):
        up.publish("telemetry/#", {})
    with pytest.raises(ValueError, match="reserved"):
        up.publish("telemetry", {"seq": 3})
    with pytest.raises(TypeError, match="dict"):
        up.publish("telemetry", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qos"):
        up.publish("telemetry", {}, qos=2)
    assert up.status()["spool_depth"] == 0


# --------------------------------------------------------------------------- birth, telemetry, death


def test_birth_telemetry_and_death_over_tls(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)

    async def main() -> None:
        with run_mosquitto(tmp_path, tls=tls) as broker, subscriber(broker, f"{BASE}/#") as sub:
            up = make_uplink(tmp_path, uplink_config(broker))
            metrics = [
                {"id": "CB-044.ia", "kind": "analog", "unit": "A"},
                {"id": "CB-044.pos", "kind": "binary", "unit": ""},
            ]
            up.set_birth(metrics)
            task = asyncio.create_task(up.run())
            assert await sub.until(lambda m: any(t.endswith("/birth") for t, _, _ in m), 20)
            (birth,) = sub.on("birth")
            assert birth["metrics"] == metrics and birth["seq"] == 0
            assert birth["bdSeq"] == up.status()["bdseq"]
            assert await until(lambda: up.status()["state"] == "connected")

            tel = Telemetry(
                [PointSpec("CB-044.ia", PointKind.ANALOG, 2.0), PointSpec("CB-044.pos", PointKind.BINARY)],
                max_batch=500,
            )
            for n, (ia, pos) in enumerate([(100.0, False), (101.0, False), (103.0, True)]):
                tel.on_change(Point("CB-044.ia", PointKind.ANALOG, value=ia, quality=GOOD, receive_time=10.0 + n), n)
                tel.on_change(Point("CB-044.pos", PointKind.BINARY, value=pos, quality=GOOD, receive_time=10.0 + n), n)
                for suffix, payload in tel.flush(float(n), 20.0 + n):
                    up.publish(suffix, payload)
            assert await sub.until(lambda m: len(sub.on("telemetry")) == 2, 20)
            batches = sub.on("telemetry")
            # 101 A is inside the 2 A deadband and the breaker did not move: nothing at n=1
            assert [[(s["id"], s["v"]) for s in b["metrics"]] for b in batches] == [
                [("CB-044.ia", 100.0), ("CB-044.pos", False)],
                [("CB-044.ia", 103.0), ("CB-044.pos", True)],
            ]
            assert [b["seq"] for b in batches] == [1, 2]
            assert [b["historical"] for b in batches] == [False, False]
            assert batches[0]["timestamp"] == 20_000
            assert batches[0]["metrics"][0] == {"id": "CB-044.ia", "v": 100.0, "q": "good", "t": 10_000}
            assert len({b["msg_id"] for b in batches}) == 2

            # a host that joins late gets the retained birth
            with subscriber(broker, f"{BASE}/birth") as late:
                assert await late.until(lambda m: len(m) == 1, 20)
                assert late.messages[0][2] is True and late.messages[0][1]["bdSeq"] == birth["bdSeq"]

            assert await until(lambda: up.status()["spool_depth"] == 0)
            await up.close()
            await asyncio.wait_for(task, 10)
            assert await sub.until(lambda m: any(t.endswith("/death") for t, _, _ in m), 20)
            (death,) = sub.on("death")
            assert death["bdSeq"] == birth["bdSeq"]
            status = up.status()
            assert status["state"] == "closed" and status["acked"] == 2 and status["published"] == 2

    run(main)


def test_tls_client_without_certificate_is_refused(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    other = make_tls_files(tmp_path / "other", client_cn="intruder")

    async def main() -> None:
        with run_mosquitto(tmp_path, tls=tls) as broker:
            # no client certificate at all
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.tls_set(ca_certs=str(tls.ca_file))
            connected: list[bool] = []
            client.on_connect = lambda c, u, f, rc, p: connected.append(not rc.is_failure)
            try:
                client.connect("127.0.0.1", broker.port, 30)
                client.loop_start()
                await until(lambda: bool(connected) or not client.is_connected(), 5)
                await asyncio.sleep(0.3)
                assert connected == [] and not client.is_connected()
            except (ssl.SSLError, OSError):
                pass  # refused during the handshake
            finally:
                client.loop_stop()
            assert "peer did not return a certificate" in broker.log()

            # a certificate from another CA: the uplink stays disconnected and says why
            cfg = uplink_config(broker, ca_file=tls.ca_file, cert_file=other.client_cert, key_file=other.client_key)
            up = make_uplink(tmp_path, cfg)
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["last_error"] != "", 20)
            await asyncio.sleep(0.3)
            assert up.status()["state"] != "connected" and up.status()["sessions"] == 0
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


def test_plain_tcp_logs_a_warning_at_every_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with run_mosquitto(tmp_path) as broker:
            store = Store(tmp_path / "state.db")
            for _ in range(2):
                up = make_uplink(tmp_path, uplink_config(broker), store)
                task = asyncio.create_task(up.run())
                assert await until(lambda: up.status()["state"] == "connected")  # noqa: B023
                await up.close()
                await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.WARNING, logger="test.uplink"):
        run(main)
    warnings = [r for r in caplog.records if "plain TCP" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)


# --------------------------------------------------------------------------- outage


def _sessions(messages: list[tuple[str, Any, bool]]) -> list[list[dict[str, Any]]]:
    """Split what a host saw into sessions, each starting with a live birth.

    A broker may deliver a message twice (QoS 1 is at least once; mosquitto re-sends from its
    database after a restart); a host recognises the copy by its identical (msg_id, seq).
    """
    sessions: list[list[dict[str, Any]]] = []
    seen: set[tuple[Any, ...]] = set()
    for topic, payload, retained in messages:
        key = (topic, payload.get("msg_id"), payload.get("seq"), payload.get("bdSeq"), payload.get("timestamp"))
        if key in seen:
            continue
        seen.add(key)
        if topic.endswith("/birth"):
            if not retained:
                sessions.append([])
        elif topic.endswith("/telemetry") and sessions:
            sessions[-1].append(payload)
    return sessions


def test_broker_outage_loses_nothing_and_marks_backfill_historical(tmp_path: Path) -> None:
    async def main() -> None:
        with (
            run_mosquitto(tmp_path, persistent=True) as broker,
            subscriber(broker, f"{BASE}/#", client_id="scada-host", session_expiry_s=3600) as sub,
        ):
            up = make_uplink(tmp_path, uplink_config(broker))
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")
            for n in range(20):
                up.publish("telemetry", {"n": n})
            assert await sub.until(lambda m: len(sub.on("telemetry")) >= 20, 20)

            broker.stop()
            assert await until(lambda: up.status()["state"] != "connected")
            for n in range(20, 320, 10):  # while the broker is away
                up.publish_many([("telemetry", {"n": k}) for k in range(n, n + 10)])
            assert up.status()["spool_depth"] == 300
            await asyncio.sleep(0.5)  # several reconnect attempts fail meanwhile
            broker.start()

            assert await sub.until(lambda m: {p["n"] for p in sub.on("telemetry")} >= set(range(320)), 30)
            assert await until(lambda: up.status()["spool_depth"] == 0)
            received = sub.on("telemetry")
            by_n: dict[int, list[dict[str, Any]]] = {}
            for p in received:
                by_n.setdefault(p["n"], []).append(p)
            assert sorted(by_n) == list(range(320))
            assert all(p["historical"] for n in range(20, 320) for p in by_n[n])
            assert all(not by_n[n][0]["historical"] for n in range(20))
            # within each session the sequence numbers run without a gap from 1 after the birth
            sessions = _sessions(sub.messages)
            assert len(sessions) >= 2
            for session in sessions:
                assert [p["seq"] for p in session] == [(k + 1) % 256 for k in range(len(session))]
            status = up.status()
            assert status["sessions"] >= 2 and status["bdseq"] is not None
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


# --------------------------------------------------------------------------- commands and rebirth


def test_commands_are_decoded_and_rebirth_resends_the_birth(tmp_path: Path) -> None:
    async def main() -> None:
        with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{BASE}/#") as sub:
            host = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            host.connect("127.0.0.1", broker.port, 30)
            host.loop_start()
            try:
                # a stale retained command waiting on the broker must never run at connect
                host.publish(
                    f"{BASE}/cmd/operate/CB-046", msgpack.packb({"value": "close"}), qos=1, retain=True
                ).wait_for_publish(5)
                up = make_uplink(tmp_path, uplink_config(broker))
                up.set_birth([{"id": "P", "kind": "analog", "unit": "kV"}])
                births: list[int] = []
                up.on_birth(lambda: births.append(1))
                got: list[tuple[str, Any, bool]] = []
                up.on_command(lambda command, payload, retained=False: got.append((command, payload, retained)))
                task = asyncio.create_task(up.run())
                assert await until(lambda: up.status()["state"] == "connected")
                assert await sub.until(lambda m: len(sub.on("birth")) == 1, 20)
                up.publish("telemetry", {"n": 1})
                assert await sub.until(lambda m: len(sub.on("telemetry")) == 1, 20)

                host.publish(f"{BASE}/cmd/operate/CB-044", msgpack.packb({"value": "open", "nonce": 7}), qos=1)
                host.publish(f"{BASE}/cmd/operate/CB-045", b"\xc1 not msgpack", qos=1)
                host.publish(f"{BASE}/cmd/operate/CB-047", msgpack.packb([1, 2]), qos=1)
                # published retained while the gateway is connected: it arrives flagged, to be refused
                host.publish(
                    f"{BASE}/cmd/operate/CB-048", msgpack.packb({"value": "open"}), qos=1, retain=True
                ).wait_for_publish(5)
                host.publish(f"{BASE}/cmd/rebirth", b"", qos=1).wait_for_publish(5)
                assert await sub.until(lambda m: len(sub.on("birth")) == 2, 20)
                assert await until(lambda: len(got) >= 5 and len(births) == 2)
                # the messages that clear retained commands are dropped quietly
                for dev in ("CB-046", "CB-048"):
                    host.publish(f"{BASE}/cmd/operate/{dev}", b"", qos=1, retain=True).wait_for_publish(5)
                host.publish(f"{BASE}/cmd/operate/CB-049", msgpack.packb([3]), qos=1).wait_for_publish(5)
                assert await until(lambda: len(got) >= 6)
            finally:
                host.publish(f"{BASE}/cmd/operate/CB-046", b"", qos=1, retain=True).wait_for_publish(5)
                host.disconnect()
                host.loop_stop()
            # the retained ones reached the handler flagged (the one waiting at connect, and the one
            # published retained meanwhile), for it to refuse; the garbage and the non-map as they came
            assert got[0] == ("operate/CB-046", {"value": "close"}, True)
            assert got[1:] == [
                ("operate/CB-044", {"value": "open", "nonce": 7}, False),
                ("operate/CB-045", b"\xc1 not msgpack", False),
                ("operate/CB-047", [1, 2], False),
                ("operate/CB-048", {"value": "open"}, True),
                ("operate/CB-049", [3], False),
            ]
            assert up.status()["commands"] == 6
            first, second = sub.on("birth")
            assert second["bdSeq"] == first["bdSeq"] and second["seq"] == 0
            up.publish("telemetry", {"n": 2})
            assert await sub.until(lambda m: len(sub.on("telemetry")) == 2, 20)
            assert sub.on("telemetry")[-1]["seq"] == 1  # counting restarts after a birth
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


# --------------------------------------------------------------------------- bounds


def test_spool_is_bounded_dropping_the_oldest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()

    async def main() -> None:
        up = make_uplink(tmp_path, uplink_config(None, port, spool_max_messages=1000))
        with caplog.at_level(logging.ERROR, logger="test.uplink"):
            up.publish_many([("telemetry", {"n": n}) for n in range(1500)])
        status = up.status()
        assert status["spool_depth"] == 1000 and status["dropped"] == 500
        assert any("spool full" in r.getMessage() and getattr(r, "dropped", 0) == 500 for r in caplog.records)
        with run_mosquitto(tmp_path, port) as broker, subscriber(broker, f"{BASE}/telemetry") as sub:
            task = asyncio.create_task(up.run())
            assert await sub.until(lambda m: len(m) >= 1000, 30)
            assert await until(lambda: up.status()["spool_depth"] == 0)
            assert [p["n"] for p in sub.on("telemetry")] == list(range(500, 1500))
            assert all(p["historical"] for p in sub.on("telemetry"))
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


def test_in_flight_window_is_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{BASE}/telemetry") as sub:
            up = make_uplink(tmp_path, uplink_config(broker, max_inflight=5), memory_window=64)
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")
            up.publish_many([("telemetry", {"n": n}) for n in range(2000)])
            peak = peak_memory = 0
            for _ in range(6000):
                peak = max(peak, up.status()["inflight"])
                peak_memory = max(peak_memory, up.status()["in_memory"])
                if up.status()["spool_depth"] == 0:
                    break
                await asyncio.sleep(0.005)
            assert up.status()["spool_depth"] == 0
            assert 1 <= peak <= 5
            assert 1 <= peak_memory <= 64  # the backlog stays on disk, not in memory
            assert await sub.until(lambda m: len(m) == 2000, 20)
            assert [p["n"] for p in sub.on("telemetry")] == list(range(2000))
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


# --------------------------------------------------------------------------- spool


def test_spool_methods_keep_order_ids_and_counts(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    assert store.spool_append([]) == [] and store.spool_last_id() == 0
    ids = store.spool_append([("t", bytes([n]), 1, 0.0) for n in range(10)])
    assert ids == list(range(1, 11)) and store.spool_last_id() == 10
    assert [row[2] for row in store.spool_peek(0, 100)] == [bytes([n]) for n in range(10)]
    assert store.spool_remove([1, 2, 99]) == 2
    assert store.spool_drop_oldest(3) == (3, 5)
    assert [row[0] for row in store.spool_peek(0, 100)] == [6, 7, 8, 9, 10]
    assert store.spool_drop_oldest(100) == (5, 10) and store.spool_depth() == 0
    assert store.spool_append([("t", b"x", 1, 0.0)]) == [11]  # ids are never reused


def test_a_failing_spool_write_is_counted_not_raised(tmp_path: Path) -> None:
    class FullDisk(Store):
        def spool_append(self, rows: list[tuple[str, bytes, int, float]]) -> list[int]:
            raise sqlite3.OperationalError("database or disk is full")

    up = make_uplink(tmp_path, uplink_config(None), FullDisk(tmp_path / "s.db"))
    up.publish_many([("telemetry", {"n": 1}), ("telemetry", {"n": 2})])
    status = up.status()
    assert status["lost"] == 2 and status["published"] == 0 and "disk is full" in status["last_error"]


def test_missing_tls_files_are_reported_and_retried(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = UplinkConfig(
            broker_host="127.0.0.1",
            broker_port=free_port(),
            transport="tls",
            ca_file=Path("tls/missing-ca.crt"),
            cert_file=Path("tls/gw.crt"),
            key_file=Path("tls/gw.key"),
        )
        up = make_uplink(tmp_path, cfg)
        task = asyncio.create_task(up.run())
        assert await until(lambda: "TLS set-up failed" in up.status()["last_error"])
        first = up.status()["bdseq"]
        assert await until(lambda: up.status()["bdseq"] != first)  # it keeps trying
        assert not task.done()
        await up.close()
        await asyncio.wait_for(task, 10)
        assert up.status()["state"] == "closed"

    run(main)


def test_payload_values_from_enums_numpy_and_sets_are_encoded(tmp_path: Path) -> None:
    import enum

    import numpy as np

    class Severity(enum.Enum):
        CRITICAL = "critical"

    store = Store(tmp_path / "s.db")
    up = make_uplink(tmp_path, uplink_config(None), store)
    up.publish(
        "alarms",
        {
            "severity": Severity.CRITICAL,
            "current_a": np.float32(1.5),
            "n": np.int64(3),
            "phases": np.array([1, 2]),
            "tags": {"b"},
            "timestamp": 5,
        },
    )
    ((_, topic, blob, _),) = store.spool_peek(0, 10)
    assert topic == "alarms"
    assert msgpack.unpackb(blob, raw=False) == {
        "severity": "critical",
        "current_a": 1.5,
        "n": 3,
        "phases": [1, 2],
        "tags": ["b"],
        "timestamp": 5,
    }
    with pytest.raises(TypeError, match="'alarms' cannot be encoded"):
        up.publish("alarms", {"x": object()})
    assert store.spool_depth() == 1


def test_live_alarms_overtake_a_backlog_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    async def main() -> None:
        with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{BASE}/#") as sub:
            up = make_uplink(tmp_path, uplink_config(broker, max_inflight=1), memory_window=50)
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")
            up.publish_many([("telemetry", {"n": n}) for n in range(1000)])  # a backlog
            up.publish("alarms", {"message": "CB-044 failed to open"})
            up.publish("state/CB-044", {"new": "OPEN"}, retain=True)  # retained: keeps its place
            up.publish("telemetry", {"n": 1000})
            assert await sub.until(lambda m: len(sub.on("telemetry")) == 1001, 30)
            assert await until(lambda: up.status()["spool_depth"] == 0)
            topics = [t.rsplit("/", 1)[-1] for t, _, _ in sub.messages if not t.endswith("/birth")]
            order = [p.get("n", t) for (t, p, _) in sub.messages if not t.endswith("/birth")]
            assert topics.index("alarms") < order.index(10)
            assert order.index(999) < topics.index("CB-044") < order.index(1000)
            payloads = [p for t, p, _ in sub.messages if not t.endswith("/birth")]
            assert len({p["msg_id"] for p in payloads}) == len(payloads) == 1003  # none twice
            assert [p["seq"] for p in payloads] == [(k + 1) % 256 for k in range(1003)]
            assert not any(p["historical"] for p in payloads)
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


def test_qos_0_messages_also_leave_the_spool_once_written(tmp_path: Path) -> None:
    async def main() -> None:
        with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{BASE}/telemetry") as sub:
            up = make_uplink(tmp_path, uplink_config(broker, qos=0))
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")
            up.publish_many([("telemetry", {"n": n}) for n in range(50)])
            assert await sub.until(lambda m: len(m) == 50, 20)
            assert await until(lambda: up.status()["spool_depth"] == 0)
            assert [p["n"] for p in sub.on("telemetry")] == list(range(50))
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


def test_repeated_outages_while_publishing_lose_nothing(tmp_path: Path) -> None:
    import random

    rng = random.Random(61850)

    async def main() -> None:
        with (
            run_mosquitto(tmp_path, persistent=True) as broker,
            subscriber(broker, f"{BASE}/#", client_id="scada-host", session_expiry_s=3600) as sub,
        ):
            up = make_uplink(tmp_path, uplink_config(broker, max_inflight=20))
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")
            published = 0
            stop = asyncio.Event()

            async def publisher() -> None:
                nonlocal published
                while not stop.is_set() and published < 5000:
                    up.publish("telemetry", {"n": published})
                    published += 1
                    await asyncio.sleep(0.002)

            pub = asyncio.create_task(publisher())
            for _ in range(3):
                await asyncio.sleep(rng.uniform(0.2, 0.4))
                broker.stop()
                await asyncio.sleep(rng.uniform(0.2, 0.4))
                broker.start()
            await asyncio.sleep(0.2)
            stop.set()
            await pub
            assert await sub.until(lambda m: {p["n"] for p in sub.on("telemetry")} >= set(range(published)), 40)
            assert await until(lambda: up.status()["spool_depth"] == 0)
            sessions = _sessions(sub.messages)
            assert up.status()["sessions"] >= 2 and len(sessions) >= 2
            for session in sessions:
                assert [p["seq"] for p in session] == [(k + 1) % 256 for k in range(len(session))]
                flags = [p["historical"] for p in session]
                assert flags == sorted(flags, reverse=True)  # the backlog first, then live data
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


def test_publish_from_another_thread_is_spooled_and_sent(tmp_path: Path) -> None:
    import threading

    async def main() -> None:
        with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{BASE}/telemetry") as sub:
            up = make_uplink(tmp_path, uplink_config(broker))
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")

            def work(k: int) -> None:
                for n in range(100):
                    up.publish("telemetry", {"w": k, "n": n})

            workers = [threading.Thread(target=work, args=(k,)) for k in range(3)]
            for w in workers:
                w.start()
            for w in workers:
                await asyncio.to_thread(w.join, 10)
            assert await sub.until(lambda m: len(m) == 300, 20)
            assert await until(lambda: up.status()["spool_depth"] == 0 and up.status()["published"] == 300)
            got = {(p["w"], p["n"]) for p in sub.on("telemetry")}
            assert got == {(k, n) for k in range(3) for n in range(100)}
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


def test_publish_from_a_thread_and_the_loop_at_once_sends_each_message_once(tmp_path: Path) -> None:
    import threading

    async def main() -> None:
        with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{BASE}/telemetry") as sub:
            up = make_uplink(tmp_path, uplink_config(broker))
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")

            def work() -> None:
                for n in range(300):
                    up.publish("telemetry", {"src": "thread", "n": n})

            worker = threading.Thread(target=work)
            worker.start()
            for n in range(300):
                up.publish("telemetry", {"src": "loop", "n": n})
                if n % 10 == 0:
                    await asyncio.sleep(0)
            await asyncio.to_thread(worker.join, 10)
            assert await sub.until(lambda m: len(m) >= 600, 20)
            assert await until(lambda: up.status()["spool_depth"] == 0)
            await asyncio.sleep(0.2)
            got = [(p["src"], p["n"]) for p in sub.on("telemetry")]
            assert sorted(got) == sorted([("thread", n) for n in range(300)] + [("loop", n) for n in range(300)])
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)


def test_a_publish_the_broker_refuses_is_counted_logged_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(
        f"topic readwrite {BASE}/birth\ntopic readwrite {BASE}/death\n"
        f"topic readwrite {BASE}/events\ntopic read {BASE}/cmd/#\n"
    )

    async def main() -> None:
        with run_mosquitto(tmp_path, extra_config=f"acl_file {acl}") as broker:
            up = make_uplink(tmp_path, uplink_config(broker))
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")
            up.publish("telemetry", {"n": 1})  # not allowed by the ACL
            up.publish("events", {"n": 2})
            assert await until(lambda: up.status()["spool_depth"] == 0)
            status = up.status()
            assert status["rejected"] == 1 and status["acked"] == 1 and status["sessions"] == 1
            await up.close()
            await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.ERROR, logger="test.uplink"):
        run(main)
    assert any(
        "refused a message" in r.getMessage() and "authori" in str(getattr(r, "reason", "")).lower()
        for r in caplog.records
    )
