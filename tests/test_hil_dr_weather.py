"""The AMI broker side of the peak-demand scenario: the weather forecast, demand-response events to
the concentrators and their confirmations, the meters' readings showing the reduction, and the ramp."""

from __future__ import annotations

import asyncio
import json
import threading
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion

from gateway import config
from hil.__main__ import build_request, _parser
from hil.broker import run_mosquitto
from hil.control import UnitError
from hil.grid.model import GridModel
from hil.rig import localise_ieds
from hil.runtime import HilRuntime, RuntimeOptions
from protocols.ami import decode_batch
from protocols.demand_response import decode_confirmation, encode_event
from gateway.contract.demand_response import DrEvent

ROOT = Path(__file__).resolve().parents[1]
SUB_007 = ROOT / "deploy/examples/sub-007.toml"


class _Listener:
    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-listener")
        self.client.on_message = lambda _c, _u, m: self._add(m.topic, m.payload)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("weather/#", 1), ("ami/SUB-007/+/dr/confirmations", 1), ("ami/SUB-007/+/readings", 1)])
        self.client.loop_start()

    def _add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append((topic, payload))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def send_event(self, event: DrEvent) -> None:
        self.client.publish(
            f"ami/SUB-007/{event.concentrator_id}/dr/events", encode_event(event), qos=1
        ).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _group_demand(listener: _Listener, group: str) -> list[float]:
    """Total demand of a concentrator's meters, per reading."""
    out = []
    for payload in listener.on(f"{group}/readings"):
        batch = decode_batch(payload)
        out.append(float(np.sum(batch.columns["demand_kw"])))
    return out


def test_weather_dr_and_ramp_over_the_ami_broker(tmp_path: Path) -> None:
    with run_mosquitto(tmp_path) as broker:
        (doc,) = localise_ieds([tomllib.loads(SUB_007.read_text())], tmp_path)
        doc["ami"]["broker_port"] = broker.port
        path = tmp_path / "sub-007.toml"
        path.write_text(tomli_w.dumps(doc))
        site = config.load(path)
        model = GridModel.from_site(site, seed=2)
        listener = _Listener(broker.port)

        async def run() -> dict[str, Any]:
            runtime = HilRuntime(
                site,
                model,
                RuntimeOptions(speed=0, step_s=0.5, ami_interval_s=60.0, ami_first_reading_s=1.0, iec61850=False),
                site_path=path,
            )
            await runtime.start()
            try:

                async def until(predicate: Any, what: str, sim_s: float = 600.0) -> None:
                    for _ in range(int(sim_s / 0.5)):
                        if predicate():
                            return
                        await runtime.step()
                        await asyncio.sleep(0)
                    raise AssertionError(f"no {what}")

                await until(lambda: listener.on("/forecast"), "forecast")
                ramp = runtime.load_ramp("SUB-007", 500.0, start_kw=28_500.0, ambient_c=35.0)
                await until(lambda: len(_group_demand(listener, "MTR-GRP-721")) >= 2, "readings")
                before = _group_demand(listener, "MTR-GRP-721")[-1]
                before_critical = _group_demand(listener, "MTR-GRP-722")[-1]
                wall = runtime.clock.wall()
                for group, program in (
                    ("MTR-GRP-721", "DR-HVAC"),
                    ("MTR-GRP-722", "DR-HVAC"),
                    ("MTR-GRP-742", "DR-SHIFT"),
                    ("MTR-GRP-721", "NO-SUCH"),
                ):
                    listener.send_event(
                        DrEvent(
                            event_id=f"E-{group}-{program}",
                            program=program,
                            concentrator_id=group,
                            start=wall + 30.0,
                            duration_s=3600.0,
                            issued_at=wall,
                        )
                    )
                await until(lambda: len(listener.on("/dr/confirmations")) >= 4, "confirmations", 120.0)
                n_readings = len(_group_demand(listener, "MTR-GRP-721"))
                await until(lambda: len(_group_demand(listener, "MTR-GRP-721")) >= n_readings + 2, "readings after")
                after = _group_demand(listener, "MTR-GRP-721")[-1]
                after_critical = _group_demand(listener, "MTR-GRP-722")[-1]
                load_now = model.agent_values("SUB-007")["total_load_kw"]
                return {
                    "ramp": ramp,
                    "before": before,
                    "after": after,
                    "before_critical": before_critical,
                    "after_critical": after_critical,
                    "load_now": load_now,
                    "now_s": runtime.clock.monotonic(),
                    "status": runtime.status(),
                }
            finally:
                await runtime.stop()

        try:
            out = asyncio.run(run())
        finally:
            listener.close()
    # the weather feed: six hours in fifteen-minute steps, what the PV will see, and the held 35 degC
    forecasts = [json.loads(p) for p in listener.on("/forecast")]
    first = forecasts[0]
    assert first["substation_id"] == "SUB-007" and len(first["forecast"]) == 25
    assert all(0 <= f["irradiance_w_m2"] <= 950 for f in first["forecast"])
    assert first["forecast"][8]["irradiance_w_m2"] == 0.0  # 20:00, after sunset
    assert forecasts[-1]["forecast"][0]["temperature_c"] == pytest.approx(35.0)
    # the confirmations: enrolled meters accept (a seeded tenth stays silent), the hospital never,
    # meters of a group not enrolled say so, an unknown program is refused as a whole
    confs = {c.event_id: c for c in (decode_confirmation(p) for p in listener.on("/dr/confirmations"))}
    hvac = Counter(confs["E-MTR-GRP-721-DR-HVAC"].answers)
    assert set(hvac) == {"accepted"} and 200 <= hvac["accepted"] < 250
    assert set(confs["E-MTR-GRP-722-DR-HVAC"].answers) == {"critical"}
    shift = Counter(confs["E-MTR-GRP-742-DR-SHIFT"].answers)
    assert shift["critical"] == 1 and shift["not_enrolled"] == 999
    assert "unknown demand-response program" in confs["E-MTR-GRP-721-NO-SUCH"].error
    assert not confs["E-MTR-GRP-721-NO-SUCH"].meters
    # the readings show the reduction: 15 % of the accepting meters' demand; the hospital's not
    reduction = 1 - out["after"] / out["before"]
    assert 0.10 < reduction < 0.16
    assert out["after_critical"] == pytest.approx(out["before_critical"], rel=0.05)
    # the ramp: from 28.5 MW, +0.5 MW/h, less what the event takes
    assert out["ramp"]["total_load_kw"] == pytest.approx(28_500, rel=0.01)
    assert out["status"]["ami_feeds"]["SUB-007"]["dr_events"] == 4


def test_ramp_request_from_the_command_line() -> None:
    args = _parser().parse_args(
        ["inject", "ramp", "SUB-007", "--rate", "0.5MW/h", "--from", "28.5MW", "--ambient", "35"]
    )
    assert build_request(args) == {
        "op": "ramp",
        "substation": "SUB-007",
        "rate_kw_per_h": 500.0,
        "start_kw": 28_500.0,
        "ambient_c": 35.0,
    }
    with pytest.raises(UnitError, match="power per hour"):
        build_request(_parser().parse_args(["inject", "ramp", "SUB-007", "--rate", "0.5MW"]))
