"""Decisions leave the box: every kind of agent message is handled, published as a notice, or both.

The table (gateway/agents/notices.py) is checked three ways: against the agents' code (every
`kind="..."` they can emit), against their behaviour (each agent type driven until it has said
every kind it can, each payload carrying the table's fields), and against docs/mqtt.md. Notices
reach a real mosquitto with the documented payload; handled kinds change what the agent does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from gateway.agent_host import AgentHost
from gateway.agents.actions import Alert, BusMessage, ControlRequest, Topic
from gateway.agents.base import Links
from gateway.agents.elements.capacitor_bank import CapacitorBankAgent, CapacitorInputs
from gateway.agents.elements.circuit_breaker import BreakerInputs, BreakerState, CircuitBreakerAgent
from gateway.agents.notices import BY_KIND, KINDS, Disposition, notices
from gateway.agents.elements.power_line import LineInputs, PowerLineAgent
from gateway.agents.elements.renewable import DerInputs, RenewableEnergyAgent
from gateway.agents.runtime import AgentRuntime
from gateway.agents.schema import (
    CapacitorBankAttributes,
    CircuitBreakerAttributes,
    PowerLineAttributes,
    RenewableEnergyAttributes,
    TransformerAttributes,
)
from gateway.agents.elements.transformer import TransformerAgent, TransformerInputs
from gateway.contract.clock import SystemClock
from gateway.config import load
from gateway.contract.settings import SiteIdentity, UplinkConfig
from gateway.contract.points import ProcessImage
from gateway.protection.engine import ProtectionEvent
from gateway.storage import Store
from protocols.mqtt import MqttUplink
from tests.support.broker import run_mosquitto, subscriber

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"
ENVELOPE = ("time", "source", "kind", "targets")


@pytest.fixture(scope="module")
def site():  # type: ignore[no-untyped-def]
    return load(SITE)


def bus(actions: list[Any]) -> list[BusMessage]:
    return [a for a in actions if isinstance(a, BusMessage)]


# --------------------------------------------------------------------------- every agent, every kind


def breaker_messages() -> list[BusMessage]:
    cb = CircuitBreakerAgent(
        "CB-1",
        CircuitBreakerAttributes(contact_wear_limit_ka2s=10, max_trips_in_period=1),
        Links(upstream_breaker="CB-0", substation="SUB", lines=("L-1",)),
        fault_level_a=1600,
    )
    out: list[Any] = []
    m = cb.initial_memory(0)
    for t in (1.0, 2.0):
        m, a = cb.on_protection_event(m, "trip", "50P", "A", 12_000, t)  # worn at once, locked out at the second
        out += a
        m, a = cb.on_protection_event(m, "reclose", "79", "", 0, t + 0.5)
        out += a
    return bus(out)


def line_messages() -> list[BusMessage]:
    links = Links(
        upstream_breaker="CB-1",
        breakers=("CB-1",),
        transformers=("X-1", "X-2"),
        substation="SUB",
        adjacent_lines=("L-2",),
        transfer_options=({"tie": ["L-2", "L-1"], "via": "L-2"},),
        customers_downstream=1250,
    )
    line = PowerLineAgent("L-1", PowerLineAttributes(ampacity=400, emergency_percent=160), links)
    out: list[Any] = []
    m = line.initial_memory(0)
    for t in range(0, 301):  # overloaded after five minutes
        m, a = line.step(m, LineInputs(current_a=450, voltage_kv=11, breaker_closed=True), float(t))
        out += a
    m, a = line.step(m, LineInputs(current_a=700, voltage_kv=11, breaker_closed=True), 301)  # emergency
    out += a
    m, a = line.step(
        m,
        LineInputs(
            current_a=0,
            breaker_closed=False,
            fault_reported=True,
            trip_cause="ground_fault",
            breaker_trip="ground fault (51N, 300 A)",
        ),
        302,
    )
    out += a
    m, a = line.step(m, LineInputs(current_a=200, voltage_kv=11, breaker_closed=True), 340)
    out += a
    m, a = line.request(m, "maintenance", {"on": True}, 400)
    return bus(out + a)


def transformer_messages() -> list[BusMessage]:
    x = TransformerAgent(
        "X-1",
        TransformerAttributes(
            rated_capacity=1000,
            secondary_voltage=120,
            tap_min=-1,
            tap_max=1,
            time_delay_s=0,
            inter_tap_delay_s=0,
            hot_spot_critical_c=140,
            hot_spot_alarm_c=130,
            aging_alarm_factor=1.0,
        ),
        Links(substation="SUB", adjacent_transformers=("X-2",), customers_downstream=1250),
    )
    out: list[Any] = []
    m = x.initial_memory(0)
    for t in range(0, 24 * 3600 + 1, 600):  # a day hot and full: capacity, critical hot spot, aging; taps at the limit
        m, a = x.step(
            m,
            TransformerInputs(load_kw=950, load_kvar=0, top_oil_temp_c=120, ambient_temp_c=30, secondary_voltage_v=100),
            float(t),
        )
        out += a
    return bus(out)


def capacitor_messages() -> list[BusMessage]:
    cap = CapacitorBankAgent(
        "CAP-1",
        CapacitorBankAttributes(
            voltage_level=12.0,
            num_steps=3,
            voltage_setpoint_v=121,
            bandwidth_v=6,
            on_delay_s=0,
            off_delay_s=0,
            discharge_time_s=0,
            max_daily_operations=100,
            excessive_switching_count=3,
        ),
    )
    out: list[Any] = []
    m = cap.initial_memory(0)
    steps, t = 0, 0.0
    for i in range(6):  # hunting until the deadband widens
        m, a = cap.step(m, CapacitorInputs(bus_voltage_kv=(116 if i % 2 == 0 else 126) / 10, steps_active=steps), t)
        steps = next((int(c.value) for c in a if isinstance(c, ControlRequest)), steps)
        out += a
        m, a = cap.step(m, CapacitorInputs(bus_voltage_kv=12.1, steps_active=steps), t + 1)  # feedback
        out += a
        t += 10
    m, a = cap.step(m, CapacitorInputs(bus_voltage_kv=12.1, steps_active=steps), t + 7200)  # quiet again
    return bus(out + a)


def der_messages() -> list[BusMessage]:
    der = RenewableEnergyAgent("PV-1", RenewableEnergyAttributes(rated_capacity=500))
    out: list[Any] = []
    m = der.initial_memory(0)
    m, a = der.step(m, DerInputs(connected=True, voltage_pu=1.0, active_power_kw=300), 0)
    out += a
    for t in (1.0, 2.0):  # high voltage: volt-watt limits output, said once
        m, a = der.step(m, DerInputs(connected=True, voltage_pu=1.08, active_power_kw=300), t)
        out += a
    m, a = der.step(m, DerInputs(connected=True, voltage_pu=1.0, grid_available=False), 3)
    return bus(out + a)


def runtime_messages(site) -> list[BusMessage]:  # type: ignore[no-untyped-def]
    """The example site: a fault with its outage and restoration, low voltage, then the evening peak."""
    rt = AgentRuntime(site, now=0.0, meter_period_s=1.0)
    ids = rt.fleet.ids
    out: list[Any] = []
    for cb in ("CB-044", "CB-045", "CB-046"):
        rt.on_point(cb, "closed", True, True, 0.0)
    rt.ingest_meter_batch(ids, {"voltage_v": np.full(len(ids), 230.0)}, 0.0)
    out += rt.tick(0.0)
    out += rt.on_protection_event("trip", "CB-045", "51P", "A", 3000.0, 10.0)
    out += rt.on_point("CB-045", "closed", False, True, 10.1)
    out += rt.tick(11.0) + rt.tick(12.0)
    rt.on_switching("CB-045", "close", "local:alice", 20.0)
    out += rt.on_point("CB-045", "closed", True, True, 20.1)
    rt.ingest_meter_batch(ids, {"voltage_v": np.full(len(ids), 230.0)}, 21.0)
    out += rt.tick(22.0) + rt.tick(23.0)
    rt.ingest_meter_batch(ids[:5], {"voltage_v": np.full(5, 200.0)}, 24.0)
    out += rt.tick(25.0)
    rt.on_point("SUB-003", "total_load_kw", 19_500.0, True, 30.0)
    for line, kw in (("LINE-044", 5000.0), ("LINE-045", 9500.0), ("LINE-046", 5000.0)):
        rt.on_point(line, "active_power_kw", kw, True, 30.0)
    out += rt.tick(30.0) + rt.tick(100.0)
    return bus(out)


def revenue_messages(site) -> list[BusMessage]:  # type: ignore[no-untyped-def]
    """XFMR-101 delivers 500 kW; its meters register all of it, then only 80 %."""
    revenue = site.maintenance.revenue.model_copy(update={"window_s": 60.0, "persistence": 1})
    site = site.model_copy(update={"maintenance": site.maintenance.model_copy(update={"revenue": revenue})})
    rt = AgentRuntime(site, now=0.0, meter_period_s=1.0)
    sl = rt.fleet.group_slice("MTR-GRP-101")
    ids = rt.fleet.ids[sl]
    out: list[Any] = []
    energy = np.zeros(len(ids))
    for t in range(0, 301, 5):
        registered = 1.0 if t < 120 else 0.8
        energy += registered * 500.0 / len(ids) * 5 / 3600
        rt.on_point("XFMR-101", "load_kw", 500.0, True, float(t))
        rt.ingest_meter_batch(ids, {"energy_kwh": energy.copy(), "voltage_v": np.full(len(ids), 230.0)}, float(t))
        out += rt.tick(float(t))
    return bus(out)


def all_messages(site) -> list[BusMessage]:  # type: ignore[no-untyped-def]
    return (
        breaker_messages()
        + line_messages()
        + transformer_messages()
        + capacitor_messages()
        + der_messages()
        + runtime_messages(site)
        + revenue_messages(site)
    )


def kinds_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "gateway" / "agents").rglob("*.py"):
        found |= set(re.findall(r'\bkind="([a-z_]+)"', path.read_text()))
    return found


def test_the_table_covers_every_kind_in_the_agents_code_and_no_other() -> None:
    assert kinds_in_code() == set(BY_KIND), "gateway/agents/notices.py and the agents' code disagree"
    assert len(BY_KIND) == len(KINDS)
    for spec in KINDS:
        assert (spec.disposition is Disposition.NOTICE) == (not spec.handler), spec.kind  # handled kinds say how
        assert spec.published == bool(spec.fields), spec.kind
        assert not set(spec.fields) & set(ENVELOPE), spec.kind


def test_every_agent_says_every_kind_with_the_tables_fields(site) -> None:  # type: ignore[no-untyped-def]
    messages = all_messages(site)
    said = {m.kind for m in messages}
    assert said == kinds_in_code(), f"not exercised: {kinds_in_code() - said}"
    for message in messages:
        spec = BY_KIND[message.kind]
        missing = set(spec.fields) - set(message.payload)
        assert not missing, f"{message.source} {message.kind}: payload lacks {missing}"
    published, unknown = notices(messages, 1.79e9)
    assert not unknown
    for _, payload in published:
        assert list(payload) == [*ENVELOPE, *BY_KIND[payload["kind"]].fields]
        msgpack.packb(payload, use_bin_type=True)  # everything is plain data


def test_one_decision_to_several_agents_is_one_notice() -> None:
    to = [
        BusMessage(
            source="LINE-045",
            target=t,
            kind="prepare_for_power_loss",
            urgent=True,
            payload={
                "line": "LINE-045",
                "transformers": ["XFMR-101", "XFMR-102"],
                "customers": 2000,
                "description": "phase fault",
                "extra": 1,
            },
        )
        for t in ("XFMR-101", "XFMR-102")
    ]
    handled = BusMessage(source="SUB-003", target="XFMR-101", kind="optimize_taps", payload={"cvr": True})
    (notice,), unknown = notices([*to, handled], 1.79e9)
    assert notice == (
        "notices/prepare_for_power_loss",
        {
            "time": 1.79e9,
            "source": "LINE-045",
            "kind": "prepare_for_power_loss",
            "targets": ["XFMR-101", "XFMR-102"],
            "line": "LINE-045",
            "transformers": ["XFMR-101", "XFMR-102"],
            "description": "phase fault",
            "customers": 2000,
        },
    )
    assert unknown == []
    stray = BusMessage(source="X", topic=Topic.LOAD_CHANGES, kind="not_in_the_table", payload={"a": np.float32(1.5)})
    published, unknown = notices([stray], 1.0)
    assert unknown == ["not_in_the_table"] and published[0][1]["a"] == 1.5  # never dropped


def test_docs_list_every_notice_with_its_payload_and_every_handled_kind() -> None:
    text = (ROOT / "docs" / "mqtt.md").read_text()
    section = text[text.index("## Notices") :]
    section = section[: section.index("\n## ", 10)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(?:notices/)?([a-z_]+)`", cells[0]) if len(cells) >= 3 else None
        if match:
            rows[match.group(1)] = cells
    assert set(rows) == set(BY_KIND)
    for spec in KINDS:
        cells = rows[spec.kind]
        if spec.published:
            assert cells[0] == f"`notices/{spec.kind}`"
            assert re.findall(r"`([a-z_0-9]+)`", cells[-1]) == list(spec.fields), spec.kind
        assert spec.disposition.value in cells[1], spec.kind
    assert "| `…/notices/<kind>` |" in text  # the topic table


# --------------------------------------------------------------------------- handled kinds act


def test_low_voltage_at_customers_stops_cvr_and_the_tap_moves(site) -> None:  # type: ignore[no-untyped-def]
    rt = AgentRuntime(site, now=0.0, meter_period_s=1.0)
    ids = rt.fleet.ids
    rt.ingest_meter_batch(ids, {"voltage_v": np.full(len(ids), 230.0)}, 0.0)
    rt.request("XFMR-101", "cvr", 0.0, on=True)  # regulating to 117 V on the 120 V base
    controls: list[Any] = []
    for t in range(0, 60):
        rt.on_point("XFMR-101", "secondary_voltage_v", 117.0 / 120.0 * 415.0, True, float(t))
        controls += [a for a in rt.tick(float(t)) if isinstance(a, ControlRequest) and a.agent_id == "XFMR-101"]
    assert controls == []  # in band for conservation voltage reduction
    rt.ingest_meter_batch(ids[:12], {"voltage_v": np.full(12, 200.0)}, 60.0)  # customers of XFMR-101 below range
    actions: list[Any] = []
    for t in range(60, 100):
        rt.on_point("XFMR-101", "secondary_voltage_v", 117.0 / 120.0 * 415.0, True, float(t))
        actions += rt.tick(float(t))
    assert rt.show("XFMR-101")["attributes"]["cvr_active"] is False
    assert any(
        isinstance(a, Alert) and a.agent_id == "XFMR-101" and "conservation voltage reduction off" in a.message
        for a in actions
    )
    taps = [a.value for a in actions if isinstance(a, ControlRequest) and a.agent_id == "XFMR-101"]
    assert taps and taps[0] == 1.0  # raised back towards 120 V after its time delay


def test_fault_cleared_downstream_drops_the_upstream_pickup() -> None:
    up = CircuitBreakerAgent("CB-0", CircuitBreakerAttributes())
    m, _ = up.step(up.initial_memory(0), BreakerInputs(closed=True, ia=100), 0)
    m, _ = up.on_protection_event(m, "pickup", "51P", "A", 3000, 1)  # the through-fault current
    m, _ = up.step(m, BreakerInputs(closed=True, ia=100), 1.2)
    assert m.state is BreakerState.CLOSED_HIGH_CURRENT
    cleared = BusMessage(source="CB-1", target="CB-0", kind="fault_cleared_downstream", payload={"breaker": "CB-1"})
    m, _ = up.on_message(m, cleared, 1.3)
    m, _ = up.step(m, BreakerInputs(closed=True, ia=100), 2)
    assert m.state is BreakerState.CLOSED_NORMAL


# --------------------------------------------------------------------------- a real broker


def test_a_feeder_trip_reaches_scada_as_notices_with_the_documented_payloads(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = f"stima/{site.site.region}/{site.site.substation_id}"

    async def main() -> None:
        with run_mosquitto(tmp_path) as broker, subscriber(broker, f"{base}/#") as sub:
            store = Store(tmp_path / "state.db")
            cfg = UplinkConfig(broker_host="127.0.0.1", broker_port=broker.port, transport="tcp")
            uplink = MqttUplink(
                cfg,
                SiteIdentity(region=site.site.region, substation_id=site.site.substation_id),
                store,
                SystemClock(),
                logging.getLogger("test.uplink"),
                base_dir=tmp_path,
                backoff_min_s=0.05,
                backoff_max_s=0.5,
                urgent_topics=("alarms", "notices"),
            )
            uplink.set_birth([])
            task = asyncio.create_task(uplink.run())
            clock = SystemClock()
            host = AgentHost(
                site, ProcessImage(), store=store, publish=uplink.publish, monotonic=clock.monotonic, wall=clock.wall
            )
            host.tick()
            now = clock.monotonic()
            host.on_protection_event(
                ProtectionEvent(kind="trip", breaker="CB-045", element="51N", phase="N", time=now, current_a=420.0)
            )
            expected = {
                "breaker_trip",
                "line_fault",
                "prepare_for_power_loss",
                "standby_for_load_transfer",
                "reroute_plan",
                "customer_impact",
            }
            assert await sub.until(lambda _m: expected <= {p["kind"] for p in sub.on_prefix("notices/")}, 20)
            got = {p["kind"]: p for p in sub.on_prefix("notices/")}
            for kind in expected:
                assert [k for k in got[kind] if k not in ("timestamp", "seq", "historical", "msg_id")] == [
                    *ENVELOPE,
                    *BY_KIND[kind].fields,
                ], kind
            assert got["breaker_trip"]["cause"] == "ground_fault" and got["breaker_trip"]["customers"] == 2500
            assert got["line_fault"]["description"] == "ground fault (51N, 420 A), tripped by CB-045"
            assert got["prepare_for_power_loss"]["targets"] == ["XFMR-102", "XFMR-103", "XFMR-101"]  # along the feeder
            assert got["reroute_plan"]["critical_customers_affected"] == 3
            impact = got["customer_impact"]
            assert (impact["event"], impact["customers"], impact["critical_customers"]) == ("supply_lost", 2500, 3)
            assert impact["critical_meters"] == ["MTR-101-00420", "MTR-102-00017", "MTR-102-00018"]
            assert not any(retained for topic, _, retained in sub.messages if "/notices/" in topic)
            alarms = [p["message"] for p in sub.on("alarms")]
            assert "LINE-045 fault: ground fault (51N, 420 A), tripped by CB-045" in alarms
            logged = {e["kind"] for e in store.events(since=0.0, limit=1000)}
            assert {f"notice.{k}" for k in expected} <= logged
            await uplink.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            store.close()

    asyncio.run(asyncio.wait_for(main(), 60))
