"""Operations outside the gateway on the real rig: the breaker agent agrees with the plant and says so.

Another Modbus master (a local panel) opens and closes CB-045 behind the gateway's back,
then closes it while the gateway holds it locked out after a permanent fault. Each time the
agent follows the measured position, records why, and SCADA gets the discrepancy alarm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pymodbus.client import ModbusTcpClient

from hil.rig import Rig
from tests.support.broker import Subscriber
from tests.support.faults import breaker, fault_site


def panel_write(rig: Rig, point_id: str) -> None:
    """Pulse a command coil of CB-045's relay directly, as a local panel would."""
    ied = next(i for i in rig.doc["ieds"] if i["id"] == "IED-CB-045")
    point = next(p for p in ied["points"] if p["id"] == point_id)
    client = ModbusTcpClient("127.0.0.1", port=ied["port"], timeout=2, retries=1)
    assert client.connect()
    try:
        assert not client.write_coil(point["address"], True, device_id=ied.get("unit_id", 1)).isError()
    finally:
        client.close()


CLOSED = ("Closed_Normal", "Closed_High_Current")


def state(rig: Rig) -> str:
    return str(rig.daemon_call("agents.show", id="CB-045")["state"])


def transition(rig: Rig, event: str, old: str | None = None) -> dict[str, Any]:
    """The latest transition of CB-045 made by `event` (from `old`)."""
    moves = rig.daemon_call("agents.show", id="CB-045")["last_transitions"]
    return dict(next(t for t in reversed(moves) if t["event"] == event and old in (None, t["old"])))


def test_operations_behind_the_gateways_back_are_discrepancies(tmp_path: Path) -> None:
    with Rig(fault_site(reclose=True, relay_poll_ms=20), tmp_path) as rig:
        assert rig.broker is not None
        base = f"stima/{rig.doc['site']['region']}/{rig.doc['site']['substation_id']}"
        sub = Subscriber(rig.broker, f"{base}/alarms").start()

        def alarms(word: str) -> list[dict[str, Any]]:
            return [
                p
                for p in sub.on("alarms")
                if p["source"] == "CB-045" and word in p["message"] and p["state"] == "raised"
            ]  # each alarm raised once (then cleared, acknowledged)

        try:
            rig.wait(
                lambda: rig.daemon_call("agents.show", id="CB-045")["attributes"]["position"] == "closed",
                "the agent reading CB-045 closed",
                30,
                0.1,
            )
            panel_write(rig, "CB-045.trip_cmd")
            rig.wait(lambda: state(rig) == "Tripped", "CB-045 tripped", 20)
            assert "uncommanded open" in transition(rig, "opened_unexpected")["cause"]
            assert sub.wait_for(lambda _m: alarms("uncommanded open"), 20)
            assert alarms("uncommanded open")[0]["severity"] == "major"

            panel_write(rig, "CB-045.close_cmd")
            rig.wait(lambda: state(rig) in CLOSED, "CB-045 followed to Closed_Normal", 20)
            assert transition(rig, "closed_unexpected", "Tripped")["new"] == "Closed_Normal"
            assert sub.wait_for(lambda _m: alarms("closed while Tripped"), 20)

            # a permanent fault locks it out; the crew clears it and closes at the panel
            rig.wait(
                lambda: rig.daemon_call("status")["protection"]["breakers"]["CB-045"]["reclose_state"] == "ready",
                "CB-045 protection ready",
                20,
            )
            rig.hil_call("fault", line="LINE-045", distance_m=2300.0, kind="3ph", transient=False)
            rig.wait(lambda: state(rig) == "Locked_Out", "lockout", 30)
            # the trips and recloses of the sequence were protection's own: no discrepancy among them
            assert len(alarms("discrepancy")) == 1 and not alarms("uncommanded")[1:]
            rig.hil_call("clear")
            panel_write(rig, "CB-045.close_cmd")
            rig.wait(lambda: breaker(rig, "CB-045") == "closed", "CB-045 closed at the panel", 20)
            rig.wait(lambda: state(rig) in CLOSED, "the agent follows the plant out of Locked_Out", 20)
            move = transition(rig, "closed_unexpected", "Locked_Out")
            assert move["new"] == "Closed_Normal" and "position discrepancy" in move["cause"]
            assert sub.wait_for(lambda _m: alarms("closed while Locked_Out"), 20)
            assert alarms("closed while Locked_Out")[0]["severity"] == "critical"
        finally:
            sub.stop()
