"""The PV inverter and the battery as SunSpec devices over Modbus TCP, read and written with
pysunspec2's own client, and with the gateway's ordinary Modbus points of the site file."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from gateway import config
from gateway.contract.settings import ModbusTcpIed
from hil.grid.model import GridModel
from hil.modbus_servers import from_registers
from hil.rig import localise_ieds
from hil.runtime import HilRuntime, RuntimeOptions
from hil.sunspec import BASE_ADDRESS, DerRatings, SunSpecImage, SunSpecWriteRefused, address
from hil.grid.storage import battery_power_kw, soc_after_pct

ROOT = Path(__file__).resolve().parents[1]
SUB_007 = ROOT / "deploy/examples/sub-007.toml"


def test_the_image_is_a_sunspec_device() -> None:
    image = SunSpecImage(DerRatings(500.0, 550.0), unit_id=3, serial="PV-1", model_name="PV-500")
    words = image.words()
    assert words[:2] == [0x5375, 0x6E53] and words[-2:] == [0xFFFF, 0]
    image.update(
        p_kw=312.3,
        q_kvar=-20.0,
        voltage_pu=1.01,
        frequency_hz=50.0,
        connected=True,
        energy_kwh=1234.0,
        limit_pct=100.0,
        throttled=False,
        ambient_c=33.0,
    )
    w = image.words()
    assert w[address(701, "W") - BASE_ADDRESS] == 3123  # 100 W units
    with pytest.raises(SunSpecWriteRefused, match="read-only"):
        image.write(address(701, "W"), [1])
    assert image.write(address(704, "WMaxLimPct"), [600]) == {(704, "WMaxLimPct"): 60.0}


def test_battery_limits() -> None:
    limits = dict(rated_kw=500.0, max_charge_kw=400.0, limit_pct=100.0, soc_min_pct=10.0, soc_max_pct=95.0)
    assert battery_power_kw(700.0, soc_pct=50.0, **limits) == 500.0  # the inverter's rating
    assert battery_power_kw(-700.0, soc_pct=50.0, **limits) == -400.0  # its charging limit
    assert battery_power_kw(300.0, soc_pct=10.0, **limits) == 0.0  # at its reserve
    assert battery_power_kw(-300.0, soc_pct=95.0, **limits) == 0.0  # full
    assert battery_power_kw(300.0, soc_pct=50.0, **{**limits, "limit_pct": 40.0}) == 200.0
    # an hour at 500 kW out of 1000 kWh with 95 % one-way efficiency: 52.63 % of the charge
    assert soc_after_pct(80.0, 500.0, 3600.0, capacity_kwh=1000.0, efficiency=0.95) == pytest.approx(
        80 - 52.6316, abs=1e-3
    )
    assert soc_after_pct(50.0, -100.0, 3600.0, capacity_kwh=1000.0, efficiency=0.95) == pytest.approx(59.5)


def _site(tmp_path: Path) -> tuple[Any, dict[str, int]]:
    (doc,) = localise_ieds([tomllib.loads(SUB_007.read_text())], tmp_path)
    path = tmp_path / "sub-007.toml"
    path.write_text(tomli_w.dumps(doc))
    return config.load(path), {i["id"]: i["port"] for i in doc["ieds"]}


def _read_point(client: SunSpecModbusClientDeviceTCP, site: Any, point_id: str) -> float:
    """A point of the site file read as the gateway's Modbus adapter does (its address, type, scale)."""
    point = next(p for ied in site.ieds if isinstance(ied, ModbusTcpIed) for p in ied.points if p.id == point_id)
    data = client.read(point.address, point.type.registers)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return float(from_registers(words, point))


def test_pysunspec2_reads_and_writes_the_simulated_inverters(tmp_path: Path) -> None:
    site, ports = _site(tmp_path)
    model = GridModel.from_site(site)

    def client_side() -> dict[str, Any]:
        out: dict[str, Any] = {}
        pv = SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=ports["IED-SOLAR-701"], timeout=5)
        bess = SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=ports["IED-BESS-701"], timeout=5)
        try:
            pv.scan()
            bess.scan()
            out["pv_models"] = sorted(k for k in pv.models if isinstance(k, int))
            out["bess_models"] = sorted(k for k in bess.models if isinstance(k, int))
            out["pv_common"] = (pv.common[0].Mn.value, pv.common[0].SN.value)
            out["pv_w"] = pv.DERMeasureAC[0].W.cvalue
            out["pv_rating_w"] = pv.DERCapacity[0].WMaxRtg.cvalue
            out["soc"] = bess.DERStorageCapacity[0].SoC.cvalue
            out["pv_w_point"] = _read_point(pv, site, "SOLAR-701.active_power_kw")
            out["soc_point"] = _read_point(bess, site, "BESS-701.soc_pct")
            # the gateway's set-points, written through pysunspec2: limit the PV, discharge the battery
            ctl = pv.DERCtlAC[0]
            ctl.WMaxLimPct.cvalue = 40.0
            ctl.write()
            bctl = bess.DERCtlAC[0]
            bctl.WSet.cvalue = 320_000
            bctl.write()
            out["limit_point"] = _read_point(pv, site, "SOLAR-701.p_limit_pct")
        finally:
            pv.close()
            bess.close()
        return out

    async def run() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        runtime = HilRuntime(site, model, RuntimeOptions(speed=0, ami=False), site_path=tmp_path / "sub-007.toml")
        await runtime.start()
        try:
            client = asyncio.create_task(asyncio.to_thread(client_side))
            while not client.done():
                await runtime.run_steps(0.01)
                await asyncio.sleep(0.001)
            out = client.result()
            await runtime.run_steps(5.0)
            return out, model.agent_values("SOLAR-701"), model.agent_values("BESS-701")
        finally:
            await runtime.stop()

    out, pv, bess = asyncio.run(run())
    assert out["pv_models"] == [1, 701, 702, 704] and out["bess_models"] == [1, 701, 702, 704, 713]
    assert out["pv_common"][0] == "Stima HIL"
    assert out["pv_rating_w"] == 500_000
    assert out["soc"] == pytest.approx(80.0, abs=0.1)
    assert out["pv_w"] == pytest.approx(out["pv_w_point"] * 1000.0, abs=100.0)
    assert out["soc_point"] == pytest.approx(out["soc"], abs=0.1)
    assert out["limit_point"] == pytest.approx(40.0)
    # the model follows the set-points: the PV limited to 40 % (of little sun at 18:00), the battery
    # discharging 320 kW and its charge going down
    assert pv["p_limit_pct"] == pytest.approx(40.0)
    assert pv["active_power_kw"] <= 200.0
    assert bess["p_setpoint_kw"] == pytest.approx(320.0) and bess["active_power_kw"] == pytest.approx(320.0)
    assert bess["soc_pct"] < 80.0
