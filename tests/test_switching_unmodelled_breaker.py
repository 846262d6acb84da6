"""A protected breaker the site's feeder model does not contain (a site with protection and no
feeder topology): the switching loop keeps running through a fault's pickup instead of failing
on every tick."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.config import validate
from gateway.contract.points import PointKind, ProcessImage
from gateway.storage import Store
from gateway.switching.service import SwitchingService

T0 = 1_800_000_000.0


def _site() -> Any:
    return validate(
        {
            "site": {"region": "test", "substation_id": "SUB-F"},
            "uplink": {"broker_host": "127.0.0.1", "broker_port": 1883, "transport": "tcp"},
            "ieds": [
                {
                    "id": "IED-CB-045",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": 1502,
                    "points": [
                        {"id": "CB-045.trip_cmd", "address": 0, "function": "coil", "type": "bool", "writable": True},
                        {"id": "CB-045.close_cmd", "address": 1, "function": "coil", "type": "bool", "writable": True},
                        {"id": "CB-045.closed", "address": 0, "function": "discrete", "type": "bool"},
                    ]
                    + [
                        {"id": f"CB-045.{n}", "address": a, "type": "float32", "unit": "A"}
                        for a, n in ((0, "ia"), (2, "ib"), (4, "ic"), (6, "in"))
                    ],
                }
            ],
            "agents": [
                {
                    "id": "CB-045",
                    "type": "circuit_breaker",
                    "points": {
                        "ia": "CB-045.ia",
                        "ib": "CB-045.ib",
                        "ic": "CB-045.ic",
                        "in": "CB-045.in",
                        "closed": "CB-045.closed",
                        "trip_cmd": "CB-045.trip_cmd",
                        "close_cmd": "CB-045.close_cmd",
                    },
                }
            ],
            "protection": [
                {
                    "breaker": "CB-045",
                    "trip": {"point": "CB-045.trip_cmd", "value": True},
                    "close": {"point": "CB-045.close_cmd", "value": True},
                    "reclose": {"shots": 1, "dead_times_s": [0.5]},
                    "elements": {"50P": {"pickup_a": 3000.0, "delay_s": 0.0}},
                }
            ],
        },
        "minimal.toml",
    )


class _Engine:
    def status(self, breaker: str) -> dict[str, Any]:
        return {"pickups": ["50P"]}  # a fault in progress on CB-045


class _Protection:
    engine = _Engine()


def test_a_pickup_on_a_breaker_outside_the_feeder_model_does_not_stop_the_loop(tmp_path: Path) -> None:
    site = _site()
    image = ProcessImage()
    for ied in site.ieds:
        for p in ied.points:
            image.define(p.id, PointKind(p.point_kind.value), source=ied.id)
    now = [100.0]
    published: list[tuple[str, Any]] = []
    service = SwitchingService(
        site,
        image=image,
        store=Store(tmp_path / "stima.db"),
        publish=lambda topic, payload: published.append((topic, payload)),
        submit=lambda *a, **k: None,
        protection=_Protection(),
        agents=None,
        monotonic=lambda: now[0],
        wall=lambda: T0 + now[0],
    )
    assert "CB-045" not in service.network.devices
    for _ in range(5):
        now[0] += 2.0
        service.tick()  # raised KeyError('CB-045') on every load sample before
    assert service._picked_up() == []
