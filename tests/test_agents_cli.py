"""`stima agents ...` and `stima reliability` against a real control socket served from a runtime."""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.agents.cli import parse_time
from gateway.agents.runtime import AgentRuntime
from gateway.cli.main import main
from gateway.config import load
from gateway.control import ControlServer

SITE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sub-003.toml"
WALL0 = 1_790_000_000.0


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Path, AgentRuntime]]:
    rt = AgentRuntime(load(SITE), now=0.0, meter_period_s=1.0)
    ids = rt.fleet.ids
    rt.ingest_meter_batch(ids, {"voltage_v": np.full(len(ids), 230.0)}, 0.0)
    rt.tick(0.0, wall=WALL0)
    rt.on_protection_event("trip", "CB-045", "51", "A", 6000.0, 10.0)
    rt.tick(11.0, wall=WALL0 + 11)
    rt.on_point("CB-045", "closed", True, True, 900.0)
    rt.on_protection_event("reset", "CB-045", "79", "", 0.0, 900.0)
    rt.tick(901.0, wall=WALL0 + 901)
    rt.tick(902.0, wall=WALL0 + 902)

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # short path: unix socket names are limited
        runtime_dir = Path(tmp)
        loop = asyncio.new_event_loop()
        server = ControlServer(runtime_dir, group="nonexistent-group")
        server.register("agents.list", rt.list_agents)
        server.register("agents.show", lambda id: rt.show(id))
        server.register(
            "agents.request",
            lambda id, request, **args: [
                {
                    "action": type(a).__name__,
                    **{k: getattr(a, k) for k in ("point_name", "value", "reason") if hasattr(a, k)},
                }
                for a in rt.request(id, request, 1000.0, **args)
            ],
        )
        server.register(
            "reliability",
            lambda since=None, until=None: rt.reliability(
                None if since is None else since - WALL0, None if until is None else until - WALL0
            ),
        )
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(server.start())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert ready.wait(10)
        yield runtime_dir, rt
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_agents_list_table_and_json(served, capsys) -> None:  # type: ignore[no-untyped-def]
    runtime_dir, _ = served
    code, out = run_cli(capsys, "agents", "list", "--runtime-dir", str(runtime_dir))
    assert code == 0
    assert "Closed_Normal" in next(line for line in out.splitlines() if line.startswith("CB-045"))
    assert "MTR-GRP-101" in out and "Active 1250" in out
    code, out = run_cli(capsys, "agents", "list", "--type", "power_line", "--json", "--runtime-dir", str(runtime_dir))
    rows = json.loads(out)
    assert {r["id"] for r in rows} == {"LINE-044", "LINE-045", "LINE-046"}


def test_agents_show(served, capsys) -> None:  # type: ignore[no-untyped-def]
    runtime_dir, _ = served
    code, out = run_cli(capsys, "agents", "show", "CB-045", "--runtime-dir", str(runtime_dir))
    assert code == 0
    assert "state: Closed_Normal since" in out
    assert "trip_count" in out and "last transitions:" in out and "51 trip, phase A, 6000 A" in out
    code, out = run_cli(capsys, "agents", "show", "CB-045", "--json", "--runtime-dir", str(runtime_dir))
    data = json.loads(out)
    assert data["attributes"]["trip_count"] == 1
    assert [t["new"] for t in data["last_transitions"]] == ["Tripped", "Closed_Normal"]


def test_agents_show_unknown_is_a_clear_refusal(served, capsys) -> None:  # type: ignore[no-untyped-def]
    runtime_dir, _ = served
    code = main(["agents", "show", "NOPE", "--runtime-dir", str(runtime_dir)])
    assert code == 1
    assert "no agent or meter named 'NOPE'" in capsys.readouterr().err


def test_agents_request(served, capsys) -> None:  # type: ignore[no-untyped-def]
    runtime_dir, rt = served
    code, out = run_cli(
        capsys, "agents", "request", "SOLAR-201", "curtail", "pct=30", "--runtime-dir", str(runtime_dir)
    )
    assert code == 0
    assert rt.memory["SOLAR-201"].curtail_pct == 30.0


def test_reliability(served, capsys) -> None:  # type: ignore[no-untyped-def]
    runtime_dir, _ = served
    code, out = run_cli(
        capsys,
        "reliability",
        "--since",
        str(WALL0),
        "--until",
        str(WALL0 + 3600),
        "--json",
        "--runtime-dir",
        str(runtime_dir),
    )
    r = json.loads(out)
    site = load(SITE)
    served_total = sum(g.count for g in site.meter_groups)
    behind_045 = sum(g.count for g in site.meter_groups if g.id in ("MTR-GRP-101", "MTR-GRP-102", "MTR-GRP-103"))
    assert r["sustained_interruptions"] == behind_045 and r["customers_served"] == served_total
    assert r["saifi"] == pytest.approx(behind_045 / served_total)
    # out at 11 s, restored by the close at 901 s
    assert r["saidi_min"] == pytest.approx((901 - 11) / 60 * behind_045 / served_total)
    code, out = run_cli(
        capsys, "reliability", "--since", str(WALL0), "--until", str(WALL0 + 3600), "--runtime-dir", str(runtime_dir)
    )
    assert "SAIFI" in out and "ASAI" in out


def test_parse_time() -> None:
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time("24h", now=100_000.0) == 100_000.0 - 86400
    assert parse_time("2026-11-24T00:00:00") == parse_time("2026-11-24T00:00:00+00:00")
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        parse_time("yesterday-ish")


@pytest.mark.parametrize(
    "agent_type",
    ["power_line", "transformer", "smart_meter", "circuit_breaker", "substation", "capacitor_bank", "renewable_energy"],
)
def test_diagram_is_drawn_from_the_table(agent_type: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agents", "diagram", agent_type, "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph") and "doublecircle" in out
    assert main(["agents", "diagram", agent_type]) == 0
    assert "initial state" in capsys.readouterr().out
