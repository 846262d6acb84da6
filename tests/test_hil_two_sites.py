"""Two substations in one simulated network: SUB-006 and SUB-007 joined by their tie TIE-67."""

from __future__ import annotations

import asyncio
import logging
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pymodbus.client import AsyncModbusTcpClient

from gateway import config
from gateway.config import SiteConfig
from hil.grid.model import GridModel
from hil.grid.multisite import MergeError, merge_sites
from hil.rig import localise_ieds
from hil.runtime import HilRuntime, RuntimeOptions

ROOT = Path(__file__).resolve().parents[1]
SUB_006 = ROOT / "deploy/examples/sub-006.toml"
SUB_007 = ROOT / "deploy/examples/sub-007.toml"


def _pair() -> tuple[list[SiteConfig], SiteConfig]:
    sites = [config.load(SUB_006), config.load(SUB_007)]
    merged, _ = merge_sites(sites)
    return sites, merged


@pytest.fixture(scope="module")
def pair() -> tuple[list[SiteConfig], SiteConfig]:
    return _pair()


def _model(merged: SiteConfig) -> GridModel:
    return GridModel.from_site(merged, seed=3)


def test_the_shared_tie_is_joined_and_owned_by_sub_006(pair: tuple[list[SiteConfig], SiteConfig]) -> None:
    sites, merged = pair
    _, joined = merge_sites(sites)
    assert [(t.device, t.ends, t.owner) for t in joined] == [
        ("TIE-67", (("SUB-006", "LINE-063"), ("SUB-007", "LINE-073")), "SUB-006")
    ]
    tie = merged.agent("TIE-67")
    assert "external_source" not in tie.attributes
    assert sorted(r.target_id for r in tie.connection_rules) == ["LINE-063", "LINE-073"]
    # one RTU, polled by both: the union of its points, the command coils from the owner's file
    rtu = merged.ied("IED-TIE-67")
    ids = {p.id for p in rtu.points}
    assert {"TIE-67.close_cmd", "TIE-67.trip_cmd", "TIE-67.closed"} <= ids
    assert not any(p.id.endswith("_cmd") for p in sites[1].ied("IED-TIE-67").points)
    model = _model(merged)
    assert model.substation_ids == ["SUB-006", "SUB-007"]
    assert model.device_state("TIE-67")["role"] == "tie"


def test_each_file_alone_keeps_the_tie_external() -> None:
    for path in (SUB_006, SUB_007):
        model = GridModel.from_site(config.load(path))
        state = model.device_state("TIE-67")
        assert state["role"] == "external_tie" and not state["closed"]
        assert len(model.substation_ids) == 1


def test_each_substation_carries_its_own_load(pair: tuple[list[SiteConfig], SiteConfig]) -> None:
    sites, merged = pair
    together = _model(merged)
    for site in sites:
        alone = GridModel.from_site(site, seed=3)
        sid = site.site.substation_id
        both_kw = together.agent_values(sid)["total_load_kw"]
        # the same loads; a little apart where the other substation's 66 kV grid is not the same
        assert both_kw == pytest.approx(alone.agent_values(sid)["total_load_kw"], rel=0.01)
    assert together.agent_values("SUB-007")["total_load_kw"] == pytest.approx(28_500, rel=0.06)
    assert together.agent_values("SUB-006")["total_load_kw"] == pytest.approx(22_000, rel=0.06)


def test_closing_the_tie_with_both_sides_live_is_parallel(
    pair: tuple[list[SiteConfig], SiteConfig], caplog: pytest.LogCaptureFixture
) -> None:
    _, merged = pair
    model = _model(merged)
    before = {sid: model.agent_values(sid)["total_load_kw"] for sid in model.substation_ids}
    with caplog.at_level(logging.WARNING, "hil.grid.model"):
        model.set_tie("TIE-67", True, 1.0)
    assert model.parallel
    loop = next(lp for lp in model.parallel_loops if lp["closing"] == "TIE-67")
    assert loop["energised"] and {"CB-063", "CB-073"} <= set(loop["devices"])
    assert model.device_state("TIE-67")["current_a"] == 0.0
    for sid, kw in before.items():
        assert model.agent_values(sid)["total_load_kw"] == pytest.approx(kw, rel=0.01)
    assert any("TIE-67" in r.getMessage() and "loop" in r.getMessage() for r in caplog.records)


def _section_load_kw(model: GridModel, groups: tuple[str, ...]) -> float:
    return sum(ld.kw for ld in model._loads if ld.id in groups)


def test_a_section_isolated_from_sub_007_is_fed_from_sub_006(pair: tuple[list[SiteConfig], SiteConfig]) -> None:
    _, merged = pair
    model = _model(merged)
    before_006 = model.agent_values("SUB-006")["total_load_kw"]
    before_007 = model.agent_values("SUB-007")["total_load_kw"]
    model.operate_breaker("SW-073-2", False, 1.0)  # break: LINE-073/3 dead
    sections = model.section_states()
    assert not sections["LINE-073/3"]["energised"]
    load_dead_kw = before_007 - model.agent_values("SUB-007")["total_load_kw"]
    model.set_tie("TIE-67", True, 2.0)  # make: fed from SUB-006 through the tie
    assert not model.parallel
    sections = model.section_states()
    assert sections["LINE-073/3"]["energised"] and sections["LINE-073/3"]["source"] == "SUB-006"
    assert sections["LINE-073/3"]["fed_through"] == "TIE-67"
    assert sections["LINE-073/2"]["source"] == "SUB-007"
    tie = model.device_state("TIE-67")
    section_kw = _section_load_kw(model, ("MTR-GRP-733", "MTR-GRP-734"))
    assert section_kw > 2_000
    # the tie carries the section's load and its own losses, from LINE-063 towards LINE-073
    assert tie["direction"] == "forward"
    assert section_kw < tie["active_power_kw"] < 1.03 * section_kw
    # SUB-006 now carries it (and the longer path's losses); SUB-007 no longer does
    gained = model.agent_values("SUB-006")["total_load_kw"] - before_006
    assert tie["active_power_kw"] < gained < 1.1 * tie["active_power_kw"]
    assert load_dead_kw == pytest.approx(section_kw, rel=0.1)
    # voltages fall along the way from SUB-006's bus to the far end of the transferred section
    v_bus = model.device_state("CB-063")["voltage_kv"]
    v_sw = model.device_state("SW-063-1")["voltage_kv"]
    v_tie = model.device_state("TIE-67")["side_voltage_kv"]
    v_end = model.device_state("SW-073-2")["side_voltage_kv"][1]
    assert v_bus > v_sw > v_tie[0] > v_tie[1] - 1e-9 > v_end
    assert v_end / 11.0 > 0.93
    # the hand calculation of the last step: ΔV ≈ (R·P + X·Q) / V over 400 m of LINE-073 is small
    assert v_tie[0] == pytest.approx(v_tie[1], abs=1e-6)  # a closed switch has no drop


def test_merge_refuses_a_tie_the_other_file_does_not_have(pair: tuple[list[SiteConfig], SiteConfig]) -> None:
    sites, _ = pair
    doc = tomllib.loads(SUB_007.read_text())
    for agent in doc["agents"]:
        if agent["id"] == "TIE-67":
            agent["id"] = "TIE-67B"
            agent["points"] = {}
    other = config.validate(doc, "sub-007-renamed.toml")
    with pytest.raises(MergeError, match="has no tie TIE-67"):
        merge_sites([sites[0], other], ["sub-006.toml", "sub-007-renamed.toml"])
    with pytest.raises(MergeError, match="same substation"):
        merge_sites([sites[0], sites[0]])


def test_one_runtime_serves_both_substations(tmp_path: Path) -> None:
    docs = localise_ieds([tomllib.loads(SUB_006.read_text()), tomllib.loads(SUB_007.read_text())], tmp_path)
    paths = []
    for name, doc in zip(("sub-006.toml", "sub-007.toml"), docs, strict=True):
        path = tmp_path / name
        path.write_text(tomli_w.dumps(doc))
        paths.append(path)
    sites = [config.load(p) for p in paths]
    merged, _ = merge_sites(sites)
    port = {i["id"]: i["port"] for doc in docs for i in doc["ieds"]}
    assert [i["port"] for i in docs[0]["ieds"] if i["id"] == "IED-TIE-67"] == [
        i["port"] for i in docs[1]["ieds"] if i["id"] == "IED-TIE-67"
    ]

    async def run() -> dict[str, Any]:
        runtime = HilRuntime(
            merged,
            GridModel.from_site(merged),
            RuntimeOptions(speed=0, ami=False),
            site_path=paths[0],
            sites=list(zip(sites, paths, strict=True)),
        )
        await runtime.start()
        clients = []
        try:
            for ied in ("IED-SUB-006", "IED-SUB-007", "IED-TIE-67", "IED-SW-073-2"):
                client = AsyncModbusTcpClient("127.0.0.1", port=port[ied], timeout=2, retries=1)
                assert await client.connect()
                clients.append(client)
            sub6, sub7, tie, sw = clients
            loads = []
            for client in (sub6, sub7):
                regs = (await client.read_input_registers(0, count=4, device_id=1)).registers
                loads.append(client.convert_from_registers(regs[2:4], client.DATATYPE.FLOAT32))
            # SUB-007 isolates LINE-073/3, then SUB-006 closes its tie (the coil only its file gives)
            assert not (await sw.write_coil(0, True, device_id=1)).isError()
            await runtime.run_steps(0.05)
            assert not (await tie.write_coil(1, True, device_id=1)).isError()
            await runtime.run_steps(0.05)
            closed = (await tie.read_discrete_inputs(0, count=1, device_id=1)).bits[0]
            power = tie.convert_from_registers(
                (await tie.read_holding_registers(12, count=2, device_id=1)).registers, tie.DATATYPE.FLOAT32
            )
            return {"loads": loads, "closed": closed, "tie_kw": power, "status": runtime.status()}
        finally:
            for client in clients:
                client.close()
            await runtime.stop()

    out = asyncio.run(run())
    assert out["loads"][0] == pytest.approx(22_000, rel=0.08) and out["loads"][1] == pytest.approx(28_500, rel=0.08)
    assert out["closed"] is True and out["tie_kw"] > 2_000
    status = out["status"]
    assert status["substation_ids"] == ["SUB-006", "SUB-007"]
    assert status["sections"]["LINE-073/3"]["source"] == "SUB-006" and not status["parallel"]
    assert math.isfinite(status["devices"]["TIE-67"]["active_power_kw"])
