"""Any sequence of readings, protection events and requests keeps every agent in a legal state.

Agents must not crash on odd inputs (zero, negative, huge, missing); a bad request is refused
with ValueError naming what was expected, never anything else.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import example, HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.agents.runtime import AgentRuntime
from gateway.config import load

SITE = load(Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml")
AGENTS = [(a.id, name) for a in SITE.agents for name in a.points]
BREAKERS = [a.id for a in SITE.agents if a.type == "circuit_breaker"]
REQUESTS = ["open", "close", "reset", "maintenance", "curtail", "cvr", "fault", "return_to_service", "shed", "bogus"]

values = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.just(0.0),
    st.just(-273.0),
    st.floats(allow_nan=True, allow_infinity=True),
)
step = st.one_of(
    st.tuples(st.just("point"), st.sampled_from(AGENTS), values, st.booleans()),
    st.tuples(
        st.just("protection"),
        st.sampled_from(["pickup", "dropout", "trip", "reclose", "lockout", "reset"]),
        st.sampled_from(BREAKERS),
        st.floats(0, 50_000),
    ),
    st.tuples(
        st.just("request"),
        st.sampled_from([a.id for a in SITE.agents]),
        st.sampled_from(REQUESTS),
        st.dictionaries(st.sampled_from(["on", "pct"]), st.one_of(st.booleans(), st.floats(0, 100)), max_size=2),
    ),
    st.tuples(st.just("tick"), st.floats(0.1, 400)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60))
@example([("point", ("CB-044", "operations"), 1.8446744073709552e19, True), ("tick", 1.0)])
@example([("point", ("XFMR-101", "current_a"), -273.0, True), ("tick", 1.0), ("tick", 1.0)])
@example([("point", ("XFMR-102", "load_kw"), 4.562440617622083e195, True), ("tick", 1.0), ("tick", 1.0)])
@example([("point", ("LINE-045", "current_a"), 1.3407807929942597e154, True), ("tick", 1.0)])
def test_random_sequences_keep_agents_legal(sequence: list[tuple[Any, ...]]) -> None:
    rt = AgentRuntime(SITE, now=0.0, meter_period_s=1.0)
    now = 0.0
    for item in sequence:
        kind = item[0]
        if kind == "point":
            (agent_id, name), value, good = item[1], item[2], item[3]
            rt.on_point(agent_id, name, value, good, now)
        elif kind == "protection":
            rt.on_protection_event(item[1], item[2], "51", "A", item[3], now)
        elif kind == "request":
            try:
                rt.request(item[1], item[2], now, **item[3])
            except ValueError as exc:
                assert str(exc)  # refused with a reason
        else:
            now += item[1]
            rt.tick(now, wall=1.79e9 + now)
    for agent_id, memory in rt.memory.items():
        table = rt.agents[agent_id].TABLE
        assert memory.state in set(table.states)
        assert all(f.name for f in fields(memory))
    assert not rt.failed, f"agents failed: {rt.failed}"
    snap = msgpack.unpackb(msgpack.packb(rt.snapshot(), use_bin_type=True), raw=False, strict_map_key=False)
    again = AgentRuntime(SITE, now=now)
    again.restore(snap)
    assert {a: m.state for a, m in again.memory.items()} == {a: m.state for a, m in rt.memory.items()}


NASTY = [
    0.0,
    -1.0,
    -273.0,
    -1e9,
    1e9,
    -1e11,
    1e11,
    1e200,
    -1e200,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
    None,
]


def test_every_point_with_every_nasty_value() -> None:
    for value in NASTY:
        rt = AgentRuntime(SITE, now=0.0, meter_period_s=1.0)
        for agent_id, name in AGENTS:
            rt.on_point(agent_id, name, value, True, 0.0)
        for t in (0.0, 1.0, 100.0, 5000.0):
            rt.tick(t, wall=1.79e9 + t)
        assert not rt.failed, f"{value!r}: agents failed: {rt.failed}"


def test_each_point_alone_with_every_nasty_value() -> None:
    """One odd reading on its own, with no other input to mask it, never breaks an agent."""
    for agent_id, name in AGENTS:
        for value in NASTY:
            rt = AgentRuntime(SITE, now=0.0, meter_period_s=1.0)
            rt.on_point(agent_id, name, value, True, 0.0)
            for t in (1.0, 2.0, 400.0):
                rt.tick(t, wall=1.79e9 + t)
            assert not rt.failed, f"{agent_id}.{name} = {value!r}: agents failed: {rt.failed}"
