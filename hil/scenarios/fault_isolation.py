"""Use case scenario 1, fault detection and isolation, on the example substation SUB-003.

The real daemon (FLISR automatic) runs against the simulated substation over Modbus TCP, IEC
61850 and the TLS broker. First a transient fault on LINE-045: CB-045 trips, recloses after
0.5 s and holds; the customers see a momentary interruption. Then a permanent fault in each
section of LINE-045 in turn: trips, recloses, lockout; FLISR locates the faulted section from
the fault-passage indicators, opens the switches around it, closes CB-045 again for the sections
before it and picks up the sections after it through a tie. After each, the crew clears the
fault, the operator declares it cleared and runs a sequence back to the normal configuration.

The reclose sequence is shortened (dead times 0.5 s and 1 s) so a run takes about a minute; the
FLISR logic does not depend on it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hil.rig import Rig, example_document
from hil.scenarios import Recorder

FEEDER = "LINE-045"
BREAKER = "CB-045"
NOMINAL_KV = 11.0
MIN_VOLTAGE_PU = 0.95
RESTORE_AIM_S = 10.0
RECLAIM_S = 3.0


def site() -> dict[str, Any]:
    doc = example_document()
    doc["flisr"] = {"mode": "automatic", "settle_s": 0.5}
    for scheme in doc["protection"]:
        if scheme["breaker"] == BREAKER:
            scheme["reclose"] = {
                "shots": 2,
                "dead_times_s": [0.5, 1.0],
                "trip_curves": ["fast", "delayed", "delayed"],
                "reclaim_s": RECLAIM_S,
            }
    return doc


def _wait(rig: Rig, predicate: Any, what: str, timeout_s: float = 30.0) -> Any:
    return rig.wait(predicate, what, timeout_s, 0.05)


def _hil(rig: Rig) -> dict[str, Any]:
    return rig.hil_call("status")


def _protection(rig: Rig) -> dict[str, Any]:
    return rig.daemon_call("status")["protection"]["breakers"][BREAKER]


def _normal(rig: Rig, normal: dict[str, bool]) -> bool:
    status = _hil(rig)
    devices = status["devices"]
    return (
        all(devices[d]["closed"] == closed for d, closed in normal.items())
        and not any(d.get("fpi") for d in devices.values())
        and all(s["energised"] for s in status["sections"].values())
        and _protection(rig)["reclose_state"] == "ready"
    )


def _overloaded(rig: Rig, status: dict[str, Any]) -> list[str]:
    """Elements the simulator's own power flow puts beyond their ratings (from the site file)."""
    agents = {a["id"]: a for a in rig.doc["agents"]}
    out = []
    for dev_id, dev in status["devices"].items():
        rated = float(agents[dev_id]["attributes"].get("rated_current", 630.0))
        if dev.get("closed") and dev.get("current_a", 0.0) > rated:
            out.append(f"{dev_id} {dev['current_a']:.0f} A > {rated:.0f} A")
        kv = dev.get("voltage_kv")
        if (
            dev.get("closed")
            and any(dev.get("side_energised", []))
            and kv is not None
            and kv < MIN_VOLTAGE_PU * NOMINAL_KV
        ):
            out.append(f"{dev_id} {kv:.2f} kV < {MIN_VOLTAGE_PU:.2f} pu")
    for sec_id, sec in status["sections"].items():
        through = sec.get("fed_through")
        if not sec["energised"] or through not in status["devices"]:
            continue
        ampacity = float(agents[sec["line"]]["attributes"].get("ampacity", 400.0))
        amps = status["devices"][through].get("current_a", 0.0)
        if amps > ampacity:
            out.append(f"{sec_id} {amps:.0f} A > {ampacity:.0f} A")
    return out


def _events(rig: Rig, since_wall: float) -> list[dict[str, Any]]:
    return [e for e in rig.daemon_call("events", since=since_wall, limit=5000)]


def _transient(rig: Rig, rec: Recorder, normal: dict[str, bool]) -> None:
    before = rig.daemon_call("reliability")
    start = time.time()
    rig.hil_call("fault", line=FEEDER, distance_m=2700.0, kind="3ph", transient=True)
    rec.note("simulator", f"transient 3-phase fault on {FEEDER} at 2700 m")
    _wait(rig, lambda: any(e["kind"] == "protection.reclose" for e in _events(rig, start)), "the reclose")
    _wait(
        rig,
        lambda: _hil(rig)["breakers"][BREAKER] == "closed" and _protection(rig)["reclose_state"] == "ready",
        "CB-045 closed and its reclaim over",
    )
    events = _events(rig, start)
    trips = [e for e in events if e["kind"] == "protection.trip" and e["source"] == BREAKER]
    records = [e for e in events if e["kind"].startswith("fault.") and e["source"] == BREAKER]
    after = rig.daemon_call("reliability")
    momentary = after["momentary_interruptions"] - before["momentary_interruptions"]
    customers = sum(s["customers"] for s in rig.daemon_call("switching.network")["sections"] if s["line"] == FEEDER)
    rec.check(
        "transient: one trip and a reclose that held",
        len(trips) == 1 and not any(e["kind"] == "protection.lockout" for e in events),
        f"{len(trips)} trip(s)",
    )
    rec.check(
        "transient: fault record ends transient",
        any(e["kind"] == "fault.transient" for e in records),
        ", ".join(e["kind"] for e in records),
    )
    rec.check(
        "transient: every customer of the feeder saw a momentary interruption",
        momentary >= customers,
        f"{momentary} momentary interruptions for {customers} customers",
    )
    rec.check("transient: no FLISR sequence", not any(e["kind"] == "switching.sequence" for e in events))
    rec.figures["transient_momentary_interruptions"] = momentary
    _settle(rig, normal)


def _permanent(
    rig: Rig, rec: Recorder, section: dict[str, Any], normal: dict[str, bool], totals: dict[str, Any]
) -> None:
    sec_id = section["id"]
    distance = (section["from_m"] + section["to_m"]) / 2.0
    start = time.time()
    rig.hil_call("fault", line=FEEDER, distance_m=distance, kind="3ph", transient=False)
    rec.note("simulator", f"permanent 3-phase fault on {FEEDER} at {distance:.0f} m ({sec_id})")
    lockout = _wait(
        rig,
        lambda: next((e for e in _events(rig, start) if e["kind"] == "protection.lockout"), None),
        f"{BREAKER} lockout (its event)",
    )
    rec.note(BREAKER, "locked out", lockout["time"])

    def flisr_done() -> dict[str, Any] | None:
        for seq in rig.daemon_call("switching.list"):
            if (
                seq["source"] == "flisr"
                and seq["created"] >= start - 1
                and seq["status"] in ("done", "failed", "invalid")
            ):
                return seq
        return None

    seq = _wait(rig, flisr_done, f"the FLISR sequence for {sec_id}", 40.0)
    plan = seq["plan"]
    for r in seq["results"]:
        step = seq["steps"][r["step"]]
        rec.note("flisr", f"{step['action']} {step['device']} ({step['purpose']}): {r['message']}", r["time"])
    restored_at = seq["finished"]
    seconds = restored_at - lockout["time"]
    status = _wait(
        rig,
        lambda: (
            (s := _hil(rig))
            and all(s["sections"][n]["energised"] for n in plan["restored_upstream"] + plan["restored_downstream"])
            and s
        ),
        "restored sections energised in the simulator",
        15.0,
    )
    sections = status["sections"]
    feeder_sections = [s for s in sections if sections[s]["line"] == FEEDER]
    trips_after = [e for e in _events(rig, lockout["time"] + 1e-3) if e["kind"] == "protection.trip"]
    overloaded = _overloaded(rig, status)
    ties = [s["device"] for s in seq["steps"] if s["purpose"] == "transfer"]
    rec.check(f"{sec_id}: FLISR sequence done", seq["status"] == "done", seq["status"])
    rec.check(f"{sec_id}: located", plan["located_zone"] == [sec_id], f"{plan['located_zone']} by {plan['located_by']}")
    rec.check(f"{sec_id}: faulted section isolated (dead in the simulator)", not sections[sec_id]["energised"])
    upstream = [s for s in feeder_sections if sections[s]["to_m"] <= section["from_m"]]
    downstream = [s for s in feeder_sections if sections[s]["from_m"] >= section["to_m"]]
    rec.check(
        f"{sec_id}: sections before it restored by {BREAKER}",
        all(sections[s]["energised"] for s in upstream),
        ", ".join(upstream) or "none before it",
    )
    rec.check(
        f"{sec_id}: sections after it restored through a tie",
        all(sections[s]["energised"] for s in downstream) and (bool(ties) or not downstream),
        (", ".join(downstream) + f" via {', '.join(ties)}") if downstream else "none after it",
    )
    rec.check(
        f"{sec_id}: nothing closed onto the fault",
        not trips_after,
        f"{len(trips_after)} trip(s) after the lockout"
        + "".join(
            f"; {e.get('source')} {e.get('element')} {e.get('current_a')} A at +{e['time'] - lockout['time']:.3f} s"
            for e in trips_after
        ),
    )
    rec.check(
        f"{sec_id}: no element beyond its limit",
        not overloaded and not status["parallel"],
        "; ".join(overloaded) or "none",
    )
    rec.check(
        f"{sec_id}: restored within {RESTORE_AIM_S:g} s of the lockout", seconds <= RESTORE_AIM_S, f"{seconds:.2f} s"
    )
    rec.check(
        f"{sec_id}: only the faulted section's customers left out",
        plan["customers_left_out"] == section["customers"],
        f"{plan['customers_restored']} of {plan['customers_interrupted']} restored, "
        f"{plan['customers_left_out']} left out ({section['customers']} on {sec_id})",
    )
    totals["customers_interrupted"] += plan["customers_interrupted"]
    totals["customers_restored"] += plan["customers_restored"]
    totals["customers_left_out"] += plan["customers_left_out"]
    totals["closed_onto_fault"] += len(trips_after)
    totals["overloaded_elements"] += overloaded
    totals["seconds_lockout_to_restored"][sec_id] = round(seconds, 3)

    # the crew repairs the line; the operator clears the record and goes back to normal
    rig.hil_call("clear")
    rec.note("crew", f"fault on {sec_id} repaired")
    [record] = [f for f in rig.daemon_call("faults.list") if f["status"] == "permanent"]
    rig.daemon_call("faults.clear", id=record["id"], reason="crew repaired the line")
    devices = _hil(rig)["devices"]
    steps: list[dict[str, Any]] = [
        {"device": d, "action": "open"} for d, closed in normal.items() if not closed and devices[d]["closed"]
    ]
    steps += [
        {"device": d, "action": "close"}
        for d, closed in normal.items()
        if closed and not devices[d]["closed"] and d != BREAKER
    ]
    if not devices[BREAKER]["closed"]:  # still locked out: the operator's authorised close, with its reason
        steps.append(
            {
                "device": BREAKER,
                "action": "close",
                "override": ["protection_lockout", "agent_locked_out"],
                "reason": "fault repaired and cleared; feeder back to normal",
            }
        )
    back = rig.daemon_call(
        "switching.submit",
        text=json.dumps({"name": f"back to normal after {sec_id}", "steps": steps}),
        name="back-to-normal.json",
        run=True,
    )
    rec.check(
        f"{sec_id}: operator sequence back to normal accepted",
        back["status"] == "running",
        "; ".join(back.get("validation", [])) or back["status"],
    )
    done = _wait(
        rig,
        lambda: (s := rig.daemon_call("switching.show", id=back["id"]))["status"] in ("done", "failed") and s,
        "the sequence back to normal",
    )
    rec.check(
        f"{sec_id}: back to normal",
        done["status"] == "done",
        "; ".join(r["message"] for r in done["results"] if not r["ok"]) or f"{len(done['results'])} steps",
    )
    rec.note("operator", f"back to normal ({len(steps)} steps)", done["finished"])
    _settle(rig, normal)


def _settle(rig: Rig, normal: dict[str, bool]) -> None:
    """Back to normal, indicators reset (they reset by themselves after voltage returns), and the
    breaker's switch-onto-fault window after its last close over."""
    _wait(rig, lambda: _normal(rig, normal), "the normal configuration, indicators reset and protection ready", 40.0)
    time.sleep(RECLAIM_S + 0.5)


def run(rec: Recorder) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="stima-fault-isolation-"))
    with Rig(site(), workdir, hil_args=("--seed", str(rec.seed), "--no-ami")) as rig:
        rec.note("rig", "daemon, simulator and broker up; FLISR automatic")
        network = rig.daemon_call("switching.network")
        normal = {d["id"]: not d["normally_open"] for d in network["devices"]}
        _wait(rig, lambda: _normal(rig, normal), "the normal configuration")
        _transient(rig, rec, normal)
        totals: dict[str, Any] = {
            "customers_interrupted": 0,
            "customers_restored": 0,
            "customers_left_out": 0,
            "seconds_lockout_to_restored": {},
            "closed_onto_fault": 0,
            "overloaded_elements": [],
        }
        for section in [s for s in network["sections"] if s["line"] == FEEDER]:
            _permanent(rig, rec, section, normal, totals)
        rec.figures.update(totals)
        times = list(totals["seconds_lockout_to_restored"].values())
        rec.figures["max_seconds_lockout_to_restored"] = max(times) if times else None
        for event in _events(rig, rec.started):
            if event["kind"] in (
                "protection.trip",
                "protection.reclose",
                "protection.lockout",
                "fault.permanent",
                "fault.transient",
                "fault.cleared",
            ):
                rec.note(event["source"], event["kind"], event["time"])
