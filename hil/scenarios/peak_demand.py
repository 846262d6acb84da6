"""Use case scenario 2, peak demand: SUB-007's evening peak, with its neighbour SUB-006.

Two real daemons (SUB-006 and SUB-007, each with its own state, key pair, certificate and client
id) run against one simulator serving both substations over Modbus TCP, IEC 61850 and SunSpec,
with the regional broker (TLS client certificates, ACL) between them and the AMI broker beside.
At SUB-007 the demand ramps from 28.5 MW by 0.5 MW an hour at 35 °C. The simulator runs 30 times
faster than real time (`SPEED`); the gateways run on the real clock, so their time settings are
divided by the same factor (forecast period, horizon and trend window, history interval, the
agents' delays, the peak manager's settling time), and the simulator maps the times in the
messages between them (docs/hil.md, "Time"). Figures in simulated minutes are real seconds ×
SPEED / 60.

SUB-007's peak manager acts on its forecast crossing: CVR, capacitors, demand response through
the smart meters, DER (battery discharge, solar at maximum), and a transfer of LINE-073's last
section to SUB-006 through TIE-67 — asked, offered from SUB-006's own forecast headroom, accepted,
switched break-before-make through both switching authorities and confirmed by both. No feeder is
shed because the others suffice.

The failure variants follow on the same rig, each started by an operator's transfer request:
SUB-006 refusing (more load than its headroom), SUB-006 offline (its daemon stopped: its death
message), and the regional broker stopped while SUB-007 is isolating the part. Each must end with
the tie open, the part fed from its own feeder, and no two substations in parallel.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from hil.rig import TwoRig, two_site_documents
from hil.scenarios import Recorder

SPEED = 30.0
STEP = "500ms"
REQUESTER, PROVIDER = "SUB-007", "SUB-006"
TIE, PART = "TIE-67", "SW-073-2"
START_KW, RAMP_KW_PER_H, AMBIENT_C = 28_500.0, 500.0, 35.0
TARGET_PERCENT = 90.0
CAPACITY_KVA = 30_000.0
ACTIONS = ("cvr", "capacitors", "demand_response", "der", "transfer", "shed")
SETTLE_S = 12.0
SUB_006_SETTLED_KW = 23_000.0
"""SUB-006's own evening load is about 22 MW: above this its forecast still remembers the part it fed."""


def _scaled(attrs: dict[str, Any], **keys: float) -> None:
    for key, value in keys.items():
        attrs[key] = value


def documents(speed: float = SPEED) -> list[dict[str, Any]]:
    """The example neighbours with their time settings divided by `speed`."""
    docs = two_site_documents()
    for doc in docs:
        doc["history"] = {"interval_s": 2.0}
        doc["forecast"] = {
            "period_s": 2.0,
            "horizon_s": max(300.0, 4 * 3600.0 / speed),
            "history_days": 1,
            "step_s": max(1.0, 300.0 / speed),
            "trend_window_s": max(60.0, 3600.0 / speed),
            "trend_fade_s": 6 * 3600.0 / speed,
        }
        doc["peak"] = {
            "enabled": True,
            "target_percent": TARGET_PERCENT,
            "settle_s": SETTLE_S,
            "window_s": max(60.0, 2 * 3600.0 / speed),
            "shed": "automatic",
        }
        for agent in doc["agents"]:
            a = agent.setdefault("attributes", {})
            if agent["type"] == "transformer" and "tap_setpoint" in agent.get("points", {}):
                _scaled(a, time_delay_s=3.0, inter_tap_delay_s=1.0)
            elif agent["type"] == "capacitor_bank":
                _scaled(a, on_delay_s=2.0, off_delay_s=2.0, discharge_time_s=10.0)
            elif agent["type"] == "substation":
                _scaled(a, load_persistence_s=2.0, forecast_lead_s=3600.0 / speed, forecast_window_s=120.0)
    return docs


def _if(value: Any, condition: Any) -> Any:
    """`value` when `condition(value)` holds, else None (for `rig.wait`)."""
    return value if condition(value) else None


def _peak(rig: TwoRig, sub: str = REQUESTER) -> dict[str, Any]:
    return rig.daemon_call(sub, "peak.status")


def _exchanges(rig: TwoRig, sub: str) -> list[dict[str, Any]]:
    return rig.daemon_call(sub, "transfer.status")["exchanges"]


def _load_percent(hil: dict[str, Any], sub: str = REQUESTER) -> float:
    v = hil["substations"][sub]
    return 100.0 * float((v["total_load_kw"] ** 2 + v.get("total_load_kvar", 0.0) ** 2) ** 0.5) / CAPACITY_KVA


def _safe(rig: TwoRig) -> tuple[bool, str]:
    """The tie open, the part's switch closed and its section fed from its own substation, no parallel."""
    hil = rig.hil_call("status")
    devices, sections = hil["devices"], hil["sections"]
    tie_open = not devices[TIE]["closed"]
    part_closed = devices[PART]["closed"]
    fed = [s for s in sections.values() if s.get("fed_through") == PART or s.get("upstream_device") == PART]
    own = all(s["energised"] and s.get("source") == REQUESTER for s in fed)
    ok = tie_open and part_closed and own and not hil["parallel"]
    return ok, (
        f"{TIE} {'open' if tie_open else 'CLOSED'}, {PART} {'closed' if part_closed else 'OPEN'}, "
        f"part fed from {sorted({str(s.get('source')) for s in fed})}, parallel {hil['parallel']}"
    )


def _wait_final(rig: TwoRig, sub: str, xid: str, timeout_s: float) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        for ex in _exchanges(rig, sub):
            if ex["xid"] == xid and ex["phase"] in ("done", "aborted", "refused", "unconfirmed"):
                return ex
        return None

    return rig.wait(final, f"exchange {xid} at {sub} to end", timeout_s, 0.05)


def _main_run(rig: TwoRig, rec: Recorder) -> None:
    rig.wait(lambda: _peak(rig)["forecast_peak_kw"] is not None, "SUB-007's first load forecast", 180.0, 0.5)
    rig.wait(lambda: _peak(rig, PROVIDER)["forecast_peak_kw"] is not None, "SUB-006's first load forecast", 60.0, 0.2)
    ramp = rig.hil_call(
        "ramp", substation=REQUESTER, rate_kw_per_h=RAMP_KW_PER_H, start_kw=START_KW, ambient_c=AMBIENT_C
    )
    t_ramp = time.time()
    rec.note(
        "hil",
        f"ramp at {REQUESTER}: {ramp['total_load_kw'] / 1000:.2f} MW rising "
        f"{RAMP_KW_PER_H / 1000:g} MW/h (simulated), ambient {AMBIENT_C:g} °C",
    )
    started = rig.wait(
        lambda: _if(_peak(rig), lambda p: p["phase"] != "idle"), "the peak manager acting on the forecast", 120.0, 0.2
    )
    t_cross = time.time()
    peak_before = float(started["peak_before_percent"])
    rec.note(
        REQUESTER,
        f"forecast peak {peak_before:.1f} % of capacity above the {TARGET_PERCENT:g} % target: "
        f"acting ({t_cross - t_ramp:.1f} s after the ramp)",
    )
    seen: set[str] = set()
    seen_at: dict[str, float] = {}

    def holding() -> dict[str, Any] | None:
        p = _peak(rig)
        for row in p["timeline"]:
            if row["text"] not in seen:
                seen.add(row["text"])
                seen_at[row["text"]] = time.time()
                rec.note(f"{REQUESTER} peak", row["text"])
        return p if p["phase"] == "holding" else None

    final = rig.wait(holding, "the peak manager to meet its target", 400.0, 0.25)
    t_met = time.time()
    below = rig.wait(
        lambda: _if(rig.hil_call("status"), lambda h: _load_percent(h) < TARGET_PERCENT),
        "SUB-007's measured load below the target",
        60.0,
        0.25,
    )
    t_below = time.time()
    final_pct = _load_percent(below)
    hil = rig.hil_call("status")
    contributions = final["contributions"]
    used = [a for a in ACTIONS if a in contributions]
    skipped = final.get("skipped", {})
    rec.figures.update(
        {
            "speed": SPEED,
            "peak_load_pct_before": round(peak_before, 2),
            "final_load_pct": round(final_pct, 2),
            "basis": final["basis"],
            "reduction_mw": {a: contributions.get(a, {}).get("mw", 0.0) for a in ACTIONS},
            "reduction_mvar": {a: contributions.get(a, {}).get("mvar", 0.0) for a in ACTIONS},
            "reduction_mva_counted": {
                a: round(contributions.get(a, {}).get("counted", 0.0) / 1000.0, 3) for a in ACTIONS
            },
            "power_factor": {a: [contributions[a]["pf_before"], contributions[a]["pf_after"]] for a in used},
            "customers_shed": final["customers_shed"],
            "tie_closed": bool(hil["devices"][TIE]["closed"]),
            "crossing_to_target_met_sim_min": round((t_met - t_cross) * SPEED / 60.0, 1),
            "crossing_to_below_target_sim_min": round((t_below - t_cross) * SPEED / 60.0, 1),
            "crossing_to_below_target_wall_s": round(t_below - t_cross, 1),
        }
    )
    # the checks of the main run
    starts = [row["text"].split()[1] for row in final["timeline"] if row["text"].startswith("start ")]
    rec.check(
        "acted on the forecast crossing",
        bool(starts) and starts[0] == "cvr",
        f"first action {starts[0] if starts else None}, forecast peak {peak_before:.1f} %",
    )
    rec.check(
        "actions in order of least customer impact", starts == sorted(starts, key=ACTIONS.index), " → ".join(starts)
    )
    for action in ("cvr", "capacitors", "demand_response", "der", "transfer"):
        c = contributions.get(action)
        rec.check(
            f"{action} measured",
            c is not None and action not in skipped and c["counted"] > 0,
            "not used"
            if c is None
            else (
                f"nothing: {skipped[action]}"
                if action in skipped
                else f"{c['mw']:.3f} MW, {c['mvar']:.3f} Mvar, counted {c['counted'] / 1000:.3f} MVA"
            ),
        )
    dr = final.get("demand_response") or {}
    events = dr.get("events", [])
    accepted = sum(e["accepted"] for e in events)
    critical_asked = [e["group"] for e in events if e["group"] == "MTR-GRP-722"]
    rec.check(
        "demand response confirmed by the meters, the hospital never asked",
        accepted > 0 and not critical_asked,
        f"{len(events)} events, {accepted} meters accepted, {sum(e['non_responders'] for e in events)} silent so far",
    )
    rec.figures["demand_response"] = {
        "events": len(events),
        "accepted": accepted,
        "groups": sorted({e["group"] for e in events}),
    }
    ex7 = [e for e in _exchanges(rig, REQUESTER) if e["phase"] == "done"]
    ex6 = [e for e in _exchanges(rig, PROVIDER) if e["phase"] == "done"]
    both = (
        bool(ex7)
        and bool(ex6)
        and ex7[0]["xid"] == ex6[0]["xid"]
        and ex7[0]["confirmed_by_them"]
        and ex7[0]["confirmed_by_us"]
    )
    rec.check(
        "transfer confirmed by both substations",
        both,
        f"{REQUESTER} {[e['phase'] for e in _exchanges(rig, REQUESTER)]}, "
        f"{PROVIDER} {[e['phase'] for e in _exchanges(rig, PROVIDER)]}",
    )
    if ex7:
        history = ex7[0]["history"]
        rec.figures["transfer_round_trip_ms"] = round(1000.0 * (history[-1][0] - history[0][0]), 1)
        rec.figures["transfer_kw"] = ex7[0]["load_kw"]
        done_wall = seen_at.get("transfer in force", t_met)
        for t, text in history:  # the requester's monotonic times, placed on this clock
            rec.note(f"{REQUESTER} transfer", text, at_wall=done_wall - (history[-1][0] - t))
    sections = {k: v for k, v in hil["sections"].items() if v.get("fed_through") == TIE}
    rec.check(
        "the part is fed from SUB-006 through the tie, never in parallel",
        bool(hil["devices"][TIE]["closed"])
        and not hil["devices"][PART]["closed"]
        and not hil["parallel"]
        and all(s.get("source") == PROVIDER for s in sections.values()),
        f"{TIE} closed {hil['devices'][TIE]['closed']}, {PART} closed {hil['devices'][PART]['closed']}, "
        f"sections through the tie {sorted(sections)}",
    )
    rec.check("final load below 90 % of capacity", final_pct < TARGET_PERCENT, f"{final_pct:.1f} %")
    rec.check(
        "no customer shed when the other actions suffice",
        final["customers_shed"] == 0 and "shed" not in contributions,
        f"{final['customers_shed']} customers shed",
    )


def _give_back(rig: TwoRig) -> None:
    """Back to the normal configuration between variants: the tie open, the part on its feeder."""
    hil = rig.hil_call("status")
    if hil["devices"][TIE]["closed"]:
        rig.hil_call("operate", device=TIE, action="open")
        rig.wait(lambda: not rig.hil_call("status")["devices"][TIE]["closed"], "the tie open", 10.0, 0.05)
    if not rig.hil_call("status")["devices"][PART]["closed"]:
        rig.hil_call("operate", device=PART, action="close")
    rig.wait(lambda: _safe(rig)[0], "the normal configuration", 20.0, 0.1)
    rig.wait(
        lambda: all(
            e["phase"] in ("done", "aborted", "refused", "unconfirmed")
            for sub in rig.subs
            for e in _exchanges(rig, sub)
        ),
        "every exchange ended",
        60.0,
        0.2,
    )


def _variant_refuses(rig: TwoRig, rec: Recorder) -> None:
    asked = rig.daemon_call(REQUESTER, "transfer.request", tie=TIE, part=PART, load_kw=25_000.0)
    ex = _wait_final(rig, REQUESTER, asked["xid"], 30.0)
    ok, detail = _safe(rig)
    rec.note("variant", f"SUB-006 asked for 25 MW: {ex['phase']} ({ex['reason']})")
    rec.check(
        "neighbour refuses: nothing operated, the part stays on its feeder",
        ex["phase"] == "refused" and ok and not ex["isolated"],
        f"{ex['phase']}: {ex['reason']}; {detail}",
    )


def _variant_offline(rig: TwoRig, rec: Recorder) -> None:
    proc = rig.daemons[PROVIDER]
    proc.terminate()
    proc.wait(30)
    time.sleep(1.0)  # its death message reaches SUB-007
    try:
        asked = rig.daemon_call(REQUESTER, "transfer.request", tie=TIE, part=PART)
        ex = _wait_final(rig, REQUESTER, asked["xid"], 40.0)
        outcome = f"{ex['phase']} ({ex['reason']})"
        isolated = ex["isolated"]
    except Exception as exc:  # refused at once: the neighbour is known to be offline
        outcome, isolated = f"refused at once: {exc}", False
    ok, detail = _safe(rig)
    rec.note("variant", f"SUB-006 offline: {outcome}")
    rec.check(
        "neighbour offline: no tie operated, the part stays on its feeder", ok and not isolated, f"{outcome}; {detail}"
    )
    rig.restart_daemon(PROVIDER)
    # its forecast again, settled after the load it carried for a while went back (headroom for the part)
    rig.wait(
        lambda: (_peak(rig, PROVIDER)["forecast_peak_kw"] or 1e9) < SUB_006_SETTLED_KW,
        "SUB-006's forecast after its restart",
        180.0,
        0.5,
    )


def _variant_broker_outage(rig: TwoRig, rec: Recorder) -> None:
    # the part's switch opens slowly (a motor drive), so the broker can be stopped while SUB-007 is
    # isolating the part: its EXECUTE cannot reach SUB-006
    rig.hil_call("failure", device=PART, mode="slow", delay_s=60.0 * SPEED / 30.0)
    asked = rig.daemon_call(REQUESTER, "transfer.request", tie=TIE, part=PART)
    xid = asked["xid"]
    phase = rig.wait(
        lambda: next(
            (e["phase"] for e in _exchanges(rig, REQUESTER) if e["xid"] == xid and e["phase"] not in ("requested",)),
            None,
        ),
        "SUB-007 accepting an offer",
        20.0,
        0.01,
    )
    if phase != "preparing":
        rig.hil_call("failure", device=PART, mode="none")
        ex = _wait_final(rig, REQUESTER, xid, 60.0)
        rec.check(
            "broker outage mid-exchange ends in a safe state",
            False,
            f"the exchange did not reach the isolation step ({ex['phase']}: {ex['reason']})",
        )
        return
    broker = rig.brokers["regional"]
    broker.stop()
    rec.note("variant", "regional broker stopped while SUB-007 isolates the part")
    try:
        ex = _wait_final(rig, REQUESTER, xid, 90.0)
    finally:
        rig.hil_call("failure", device=PART, mode="none")
        broker.start()
    ok, detail = rig.wait(lambda: _if(_safe(rig), lambda r: r[0]), "a safe state", 60.0, 0.2)
    rec.note("variant", f"broker outage: SUB-007 {ex['phase']} ({ex['reason']})")
    rec.check(
        "broker outage mid-exchange ends in a safe state",
        ex["phase"] == "aborted" and ok,
        f"{ex['phase']}: {ex['reason']}; {detail}",
    )


def run(rec: Recorder, *, variants: bool = True) -> None:
    tmp = tempfile.mkdtemp(prefix="stima-peak-")
    finished = False
    try:
        _run(rec, Path(tmp), variants)
        finished = True
    finally:
        if finished and rec.passed:
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # the logs of both daemons, the simulator and the brokers, for whoever looks into it
            rec.figures["rig_directory"] = tmp


def _run(rec: Recorder, tmp: Path, variants: bool) -> None:
    rig = TwoRig(documents(), tmp, hil_args=("--speed", f"{SPEED:g}", "--step", STEP, "--seed", str(rec.seed)))
    with rig:
        rec.note("rig", f"{REQUESTER} and {PROVIDER} up, simulator at {SPEED:g}× real time")
        _main_run(rig, rec)
        if not variants:
            return
        # the evening is over: the demand falls well below the target, so the variants' own
        # transfers are all the switching there is
        rig.hil_call("ramp", substation=REQUESTER, rate_kw_per_h=0.0, start_kw=20_000.0)
        _give_back(rig)
        _variant_refuses(rig, rec)
        _give_back(rig)
        _variant_offline(rig, rec)
        _give_back(rig)
        _variant_broker_outage(rig, rec)
