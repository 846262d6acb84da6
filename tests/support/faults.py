"""Site variants and helpers for injecting faults through a whole rig (hil.rig.Rig)."""

from __future__ import annotations

import time
from typing import Any

from gateway.control import ControlError

from hil.rig import Rig, example_document


def fault_site(*, reclose: bool, relay_poll_ms: int = 10, instantaneous: bool = False) -> dict[str, Any]:
    """The example site with CB-045's relay polled every `relay_poll_ms` over Modbus TCP.

    reclose=True keeps a short reclose sequence (two shots, 0.2 s and 0.3 s dead times) so a
    permanent fault ends in lockout within a second or two; False drops auto-reclose, so every
    fault is a first trip, for timing.
    """
    doc = example_document()
    for ied in doc["ieds"]:
        if ied["id"] == "IED-CB-045":
            ied["poll_period_ms"] = relay_poll_ms
            ied["timeout_ms"] = max(100, 10 * relay_poll_ms)
    for scheme in doc["protection"]:
        if scheme["breaker"] not in ("CB-045", "CB-046"):
            continue
        if reclose:
            scheme["reclose"] = {
                "shots": 2,
                "dead_times_s": [0.2, 0.3],
                "trip_curves": ["fast", "delayed", "delayed"],
                "reclaim_s": 5.0,
            }
        else:
            scheme.pop("reclose", None)
        if instantaneous:
            # every trip here is a first trip: 50P acts on it whatever the fuse-saving setting
            scheme["elements"]["50P"]["delay_s"] = 0.0
            scheme["elements"]["50P"].pop("fast_only", None)
            # hundreds of faults back to back heat the thermal replica (49) until it trips on
            # every close, as it should; timing runs leave it out
            scheme["elements"].pop("49", None)
    return doc


def breaker(rig: Rig, breaker_id: str) -> str:
    return str(rig.hil_call("status")["breakers"][breaker_id])


def clear_faults(rig: Rig, breaker_id: str) -> None:
    """The crew repaired the line: the operator declares the breaker's fault records cleared."""
    for record in rig.daemon_call("faults.list"):
        if record["breaker"] == breaker_id and record["status"] in ("tripped", "permanent"):
            rig.daemon_call("faults.clear", id=record["id"], reason="crew repaired the line")


def _close(rig: Rig, breaker_id: str, timeout_s: float) -> Any:
    """The authorised close, asked again (as an operator would) while the daemon refuses it because
    the position went stale for a moment on a loaded machine; any other refusal is raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return rig.daemon_call(
                "breaker.operate",
                breaker=breaker_id,
                action="close",
                authorised=True,
                reason="fault cleared by the crew, line patrolled",
            )
        except ControlError as exc:
            if "position_unknown" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _diagnosis(rig: Rig, breaker_id: str) -> str:
    """What a wait that ran out saw last: the breaker's protection, the simulator's last commands
    and the daemon's last events about the breaker."""
    events = [
        (round(e["time"], 2), e["kind"], e.get("value") or e.get("message", ""))
        for e in rig.daemon_call("events", source=breaker_id, limit=15)
    ]
    return (
        f"now: {rig.daemon_call('status')['protection']['breakers'][breaker_id]}; "
        f"simulator: {rig.hil_call('status')['last_commands'][-4:]}; events: {events}"
    )


def close_and_settle(rig: Rig, breaker_id: str, timeout_s: float = 20.0) -> None:
    """Operator close through the daemon after the crew cleared the fault (authorised: re-arms
    after lockout), then wait for it."""
    position = f"{breaker_id}.closed"
    rig.hil_call("clear")  # the crew repaired the line: no fault left in the simulator
    rig.wait(
        lambda: not [s for s in rig.daemon_call("switching.list") if s["status"] == "running"],
        "switching sequences (FLISR's after the last fault) to finish",
        timeout_s,
    )
    rig.wait(
        lambda: rig.daemon_call("points.read", ids=[position])[0]["value"] is False,
        f"the daemon to see {breaker_id} open",
        timeout_s,
    )
    clear_faults(rig, breaker_id)
    state = _close(rig, breaker_id, timeout_s)
    try:
        rig.wait(lambda: breaker(rig, breaker_id) == "closed", f"{breaker_id} closed", timeout_s)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; protection after the close: {state}; {_diagnosis(rig, breaker_id)}") from None
    # protection must have seen the healthy current again before the next fault
    rig.wait(
        lambda: (
            not [
                p
                for p in rig.daemon_call("status")["protection"]["breakers"][breaker_id]["pickups"]
                if p.startswith(("50", "51"))
            ]
        ),
        f"{breaker_id} overcurrent pickups to drop out",
        timeout_s,
    )
    # and the reclaim time after the close has run out: a fault now is a new first trip,
    # not a close onto a fault
    try:
        rig.wait(
            lambda: rig.daemon_call("status")["protection"]["breakers"][breaker_id]["reclose_state"] == "ready",
            f"{breaker_id} reclaim to run out",
            timeout_s,
        )
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; {_diagnosis(rig, breaker_id)}") from None
