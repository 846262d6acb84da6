"""Use case scenario 3, predictive maintenance, on the example substation SUB-003 with its two
station transformers modelled: XFMR-234 (ageing) feeds LINE-045, XFMR-235 (its healthy twin)
feeds LINE-044 and LINE-046; both have a monitor (temperatures, fans, powers, hour counter) and
an online DGA monitor over Modbus.

The real daemon runs against the simulator. The simulator ages both transformers six months in
seconds (the ageing one's oil drifts up, its efficiency falls, its fans end up running all the
time, acetylene appears; the twin stays sound) and writes what their monitors logged; the daemon
imports that log into its history (as it would another historian's export) and reads the live
values over Modbus. The health evaluation then finds the trend, predicts the probability of
failure, and the ageing transformer's agent asks for maintenance; the gateway makes the work
order with its window, backup plans A/B/C and customer notices, publishes them, and SCADA
accepts the order with a signed command. The recommended plan is run on the simulated
substation at the window's forecast loads and checked against the simulator's own power flow,
then the plant goes back to normal. A bypassed meter behind the small pole-mounted transformer
XFMR-164 is found by the energy balance. The healthy twin must raise nothing, throughout.

Plan B asks the neighbouring substation through `TransferRequest`/`TransferOffer`; until the two
gateways talk over the broker, the offer comes from the capacity the site file declares for the
example's external tie (TIE-046-061 to SUB-006/LINE-061, `external_capacity_kva`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from gateway.control import call as control_call
from hil.rig import Rig, example_document
from hil.scenarios import Recorder

AGED, TWIN = "XFMR-234", "XFMR-235"
PRIMARY = {AGED: "CB-234P", TWIN: "CB-235P"}
FEEDERS = {AGED: ("CB-045",), TWIN: ("CB-044", "CB-046")}
REVENUE_XFMR, REVENUE_GROUP = "XFMR-164", "MTR-GRP-164"
GASES = ("h2", "ch4", "c2h6", "c2h4", "c2h2", "co", "co2")
AGEING_MONTHS = 6.0


def _breaker_ied(dev: str, port: int) -> dict[str, Any]:
    points: list[dict[str, Any]] = [
        {"id": f"{dev}.ia", "address": 0, "type": "float32", "unit": "A", "deadband": 2.0},
        {"id": f"{dev}.ib", "address": 2, "type": "float32", "unit": "A", "deadband": 2.0},
        {"id": f"{dev}.ic", "address": 4, "type": "float32", "unit": "A", "deadband": 2.0},
        {"id": f"{dev}.active_power_kw", "address": 12, "type": "float32", "unit": "kW", "deadband": 20.0},
        {"id": f"{dev}.closed", "address": 0, "function": "discrete", "type": "bool"},
        {"id": f"{dev}.trip_cmd", "address": 0, "function": "coil", "type": "bool", "writable": True},
        {"id": f"{dev}.close_cmd", "address": 1, "function": "coil", "type": "bool", "writable": True},
    ]
    return {
        "id": f"IED-{dev}",
        "description": f"{dev} station transformer primary breaker",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit_id": 1,
        "poll_period_ms": 200,
        "timeout_ms": 300,
        "retries": 1,
        "points": points,
    }


def _monitor_ied(xfmr: str, port: int) -> dict[str, Any]:
    points: list[dict[str, Any]] = [
        {"id": f"{xfmr}.load_kw", "address": 0, "function": "input", "type": "float32", "unit": "kW", "deadband": 5.0},
        {
            "id": f"{xfmr}.load_kvar",
            "address": 2,
            "function": "input",
            "type": "float32",
            "unit": "kvar",
            "deadband": 5.0,
        },
        {
            "id": f"{xfmr}.primary_power_kw",
            "address": 4,
            "function": "input",
            "type": "float32",
            "unit": "kW",
            "deadband": 5.0,
        },
        {
            "id": f"{xfmr}.top_oil_temp_c",
            "address": 6,
            "function": "input",
            "type": "int16",
            "scale": 0.1,
            "unit": "degC",
            "deadband": 0.2,
            "valid_range": [-40.0, 200.0],
        },
        {
            "id": f"{xfmr}.ambient_temp_c",
            "address": 7,
            "function": "input",
            "type": "int16",
            "scale": 0.1,
            "unit": "degC",
            "deadband": 0.2,
            "valid_range": [-50.0, 70.0],
        },
        {"id": f"{xfmr}.operating_hours", "address": 8, "function": "input", "type": "uint32", "kind": "counter"},
        {
            "id": f"{xfmr}.secondary_voltage_v",
            "address": 10,
            "function": "input",
            "type": "float32",
            "unit": "V",
            "deadband": 10.0,
        },
        {
            "id": f"{xfmr}.tap_position",
            "address": 12,
            "function": "input",
            "type": "int16",
            "deadband": 0.5,
            "valid_range": [-16.0, 16.0],
        },
        {"id": f"{xfmr}.fans_running", "address": 0, "function": "discrete", "type": "bool"},
        {
            "id": f"{xfmr}.tap_setpoint",
            "address": 100,
            "function": "holding",
            "type": "int16",
            "writable": True,
            "valid_range": [-16.0, 16.0],
        },
    ]
    return {
        "id": f"IED-{xfmr}",
        "description": f"{xfmr} monitor: temperatures, fans, powers, hour counter",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit_id": 1,
        "poll_period_ms": 1000,
        "timeout_ms": 500,
        "points": points,
    }


def _dga_ied(xfmr: str, port: int) -> dict[str, Any]:
    points = [
        {
            "id": f"{xfmr}.{g}_ppm",
            "address": 2 * k,
            "function": "input",
            "type": "float32",
            "unit": "ppm",
            "deadband": 0.1,
            "valid_range": [0.0, 100000.0],
        }
        for k, g in enumerate(GASES)
    ]
    return {
        "id": f"IED-DGA-{xfmr[5:]}",
        "description": f"online DGA monitor on {xfmr} (seven gases, µL/L)",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit_id": 1,
        "poll_period_ms": 2000,
        "timeout_ms": 500,
        "points": points,
    }


def _station_transformer(xfmr: str, feeds: tuple[str, ...], *, installed: str) -> dict[str, Any]:
    names = [
        "load_kw",
        "load_kvar",
        "primary_power_kw",
        "top_oil_temp_c",
        "ambient_temp_c",
        "operating_hours",
        "fans_running",
        "secondary_voltage_v",
        "tap_position",
        "tap_setpoint",
    ] + [f"{g}_ppm" for g in GASES]
    return {
        "id": xfmr,
        "type": "transformer",
        "attributes": {
            "transformer_type": "substation",
            "primary_voltage": 66.0,
            "secondary_voltage": 11000.0,
            "rated_capacity": 6000.0,
            "impedance_percent": 8.0,
            "cooling_type": "ONAF",
            "rated_top_oil_rise_c": 50.0,
            "rated_hot_spot_rise_c": 20.0,
            "loss_ratio": 5.0,
            "regulation_enabled": True,
            "voltage_setpoint_v": 122.0,
            "bandwidth_v": 1.5,
            "time_delay_s": 10.0,
            "inter_tap_delay_s": 2.0,
            "maintenance_interval_h": 90_000.0,
            "normal_top_oil_max_c": 62.0,
            "oil_preservation": "sealed",
            "prior_loss_of_life_percent": 25.0,
            "installation_date": installed,
            "high_load_percent": 95.0,
            "capacity_notice_percent": 100.0,
            "location": "SUB-003 transformer bay",
        },
        "points": {n: f"{xfmr}.{n}" for n in names},
        "connection_rules": [{"target_id": f, "canonical_type": "supply"} for f in feeds],
    }


def site() -> dict[str, Any]:
    """The example with its station transformers, their monitors and DGA, and a small pole-mounted
    transformer with a dozen meters for the revenue-protection check."""
    doc = copy.deepcopy(example_document())
    agents = doc["agents"]
    sub = next(a for a in agents if a["id"] == "SUB-003")
    sub["connection_rules"] = [
        {"target_id": PRIMARY[AGED], "canonical_type": "supply"},
        {"target_id": PRIMARY[TWIN], "canonical_type": "supply"},
    ]
    for xfmr, dev in PRIMARY.items():
        agents.append(
            {
                "id": dev,
                "type": "circuit_breaker",
                "attributes": {
                    "breaker_type": "SF6",
                    "rated_voltage": 72.5,
                    "rated_current": 630.0,
                    "interrupting_capacity": 31.5,
                    "operating_mechanism": "spring",
                    "location": f"{xfmr} 66 kV bay",
                },
                "points": {n: f"{dev}.{n}" for n in ("ia", "ib", "ic", "closed", "trip_cmd", "close_cmd")},
                "connection_rules": [{"target_id": xfmr, "canonical_type": "supply"}],
            }
        )
    agents.append(_station_transformer(AGED, FEEDERS[AGED], installed="2006-03-01"))
    agents.append(_station_transformer(TWIN, FEEDERS[TWIN], installed="2006-03-01"))
    for a in agents:
        if a["id"] == "TIE-046-061":
            a["attributes"]["external_capacity_kva"] = 1000.0
        if a["id"] == "LINE-046":
            a["connection_rules"].append({"target_id": REVENUE_XFMR, "canonical_type": "supply"})
    agents.append(
        {
            "id": REVENUE_XFMR,
            "type": "transformer",
            "attributes": {
                "transformer_type": "pole_mounted",
                "primary_voltage": 11.0,
                "secondary_voltage": 415.0,
                "rated_capacity": 100.0,
                "impedance_percent": 4.0,
                "cooling_type": "ONAN",
                "regulation_enabled": False,
            },
            "points": {"load_kw": f"{REVENUE_XFMR}.load_kw", "load_kvar": f"{REVENUE_XFMR}.load_kvar"},
            "connection_rules": [{"target_id": "LINE-046", "canonical_type": "depends_on", "position_m": 1000.0}],
        }
    )
    doc["meter_groups"].append(
        {
            "id": REVENUE_GROUP,
            "prefix": "MTR-164",
            "count": 12,
            "connected_transformer": REVENUE_XFMR,
            "meter_type": "residential",
        }
    )
    port = 15230
    for xfmr, dev in PRIMARY.items():
        doc["ieds"] += [_breaker_ied(dev, port), _monitor_ied(xfmr, port + 1), _dga_ied(xfmr, port + 2)]
        port += 3
    doc["ieds"].append(
        {
            "id": f"IED-{REVENUE_XFMR}",
            "description": "pole-mounted transformer 164 energy meter",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "port": port,
            "unit_id": 1,
            "poll_period_ms": 1000,
            "timeout_ms": 500,
            "points": [
                {
                    "id": f"{REVENUE_XFMR}.load_kw",
                    "address": 0,
                    "function": "input",
                    "type": "float32",
                    "unit": "kW",
                    "deadband": 0.1,
                },
                {
                    "id": f"{REVENUE_XFMR}.load_kvar",
                    "address": 2,
                    "function": "input",
                    "type": "float32",
                    "unit": "kvar",
                    "deadband": 0.1,
                },
            ],
        }
    )
    sim = doc.setdefault("simulation", {})
    sim.update(nominal_kv=66.0, source_sc_mva=1500.0, source_x_r=15.0, transformer_x_r=8.0)
    hours_before = 87_500.0 - AGEING_MONTHS * 30.44 * 24
    sim["ageing"] = {
        AGED: {"profile": "scenario-3", "operating_hours": hours_before},
        TWIN: {"profile": "healthy", "operating_hours": hours_before},
    }
    # XFMR-234 carries LINE-045 (a residential area, the hospital's commercial district, a works
    # running round the clock); XFMR-235 carries LINE-044 and LINE-046, where a process plant runs
    # day and night, so even on a Sunday night it has about 1.2 MVA to spare: less than LINE-045
    # needs, so the backup plans need the neighbour and, at the last, some shedding
    sim.setdefault("loads", {}).update(
        {
            AGED: {"peak_kw": 0.0},
            TWIN: {"peak_kw": 0.0},
            "MTR-GRP-101": {"peak_kw": 900.0, "power_factor": 0.95, "profile": "residential"},
            "MTR-GRP-102": {"peak_kw": 1500.0, "power_factor": 0.92, "profile": "industrial"},
            "MTR-GRP-103": {"peak_kw": 1500.0, "power_factor": 0.95, "profile": "flat"},
            "MTR-GRP-141": {"peak_kw": 300.0, "power_factor": 0.93},
            "MTR-GRP-142": {"peak_kw": 300.0, "power_factor": 0.93},
            "MTR-GRP-143": {"peak_kw": 300.0, "power_factor": 0.95},
            "MTR-GRP-161": {"peak_kw": 2800.0, "power_factor": 0.9, "profile": "flat"},
            "MTR-GRP-162": {"peak_kw": 600.0, "power_factor": 0.9, "profile": "industrial"},
            "MTR-GRP-163": {"peak_kw": 500.0, "power_factor": 0.92},
            REVENUE_GROUP: {"peak_kw": 45.0, "power_factor": 0.95},
        }
    )
    doc["maintenance"] = {
        "utc_offset_h": 3.0,
        "evaluation_period_s": 3600.0,
        "window_hours": 6,
        "critical_notice_h": 72.0,
        "customer_notice_h": 48.0,
        "step_time_s": 90.0,
        "crew": "Team Bravo (transformer specialists)",
    }
    return doc


# --------------------------------------------------------------------------- the run

EVENING_PEAK_H = 19.0
HEALTHY_LIMIT = 0.02
"""The twin's probability of failure must stay below this (and it must ask for nothing)."""
WINDOW_MIN_VOLTAGE_PU = 0.95
NOMINAL_KV = 11.0


def scenario_site(workdir: Path) -> dict[str, Any]:
    """The site as the scenario runs it: live history every 10 s, kept a year; short revenue
    windows; signed SCADA commands on; the simulator at the evening peak."""
    doc = site()
    # the simulator at the evening peak, whenever the scenario runs (the months of history it writes
    # for the monitors follow the wall clock and the site's local time)
    doc["simulation"]["start_hour"] = EVENING_PEAK_H
    doc["history"] = {"interval_s": 10.0, "retention_days": 400.0}
    doc["maintenance"]["revenue"] = {
        "window_s": 20.0,
        "persistence": 2,
        "threshold_percent": 5.0,
        "technical_loss_percent": 0.0,
        "baseline_windows": 3,
    }
    doc["uplink"]["commands"] = {**doc["uplink"].get("commands", {}), "enabled": True, "scheme": "ed25519"}
    return doc


class _Listener:
    """What a SCADA host, the asset system and the customer system see on the broker."""

    def __init__(self, rig: Rig) -> None:
        import paho.mqtt.client as mqtt

        self.base = (
            f"{rig.doc['uplink']['topic_prefix']}/{rig.doc['site']['region']}/{rig.doc['site']['substation_id']}"
        )
        self.messages: list[tuple[str, Any, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="scenario-asset-system", protocol=mqtt.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(rig.tls.ca_file), certfile=str(rig.tls.client_cert), keyfile=str(rig.tls.client_key)
        )
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(f"{self.base}/maintenance/#", 1), (f"{self.base}/notices/#", 1), (f"{self.base}/cmd_result/#", 1)]
        )
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", rig.tls_port)
        self.client.loop_start()
        if not subscribed.wait(15):
            raise RuntimeError("the scenario's MQTT client did not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            payload = msgpack.unpackb(msg.payload, raw=False, strict_map_key=False)
        except Exception:
            payload = None
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))

    def on(self, below: str) -> list[Any]:
        with self._lock:
            return [p for t, p, _ in self.messages if t.startswith(f"{self.base}/{below}")]

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        self.client.publish(f"{self.base}/{topic}", msgpack.packb(payload, use_bin_type=True), qos=1)

    def stop(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


def _call(rig: Rig, op: str, timeout: float = 60.0, **args: Any) -> Any:
    return control_call(rig.runtime_dir, op, timeout=timeout, **args)


def _hil(rig: Rig) -> dict[str, Any]:
    return rig.hil_call("status")


def _limits(rig: Rig, status: dict[str, Any]) -> list[str]:
    """Elements the simulator's own power flow puts beyond their ratings or below 0.95 pu."""
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
            and dev_id not in PRIMARY.values()
            and kv < WINDOW_MIN_VOLTAGE_PU * NOMINAL_KV
        ):
            out.append(f"{dev_id} {kv:.2f} kV < {WINDOW_MIN_VOLTAGE_PU:.2f} pu")
    for sec_id, sec in status["sections"].items():
        through = sec.get("fed_through")
        if not sec["energised"] or through not in status["devices"]:
            continue
        ampacity = float(agents[sec["line"]]["attributes"].get("ampacity", 400.0))
        amps = status["devices"][through].get("current_a", 0.0)
        if amps > ampacity:
            out.append(f"{sec_id} {amps:.0f} A > {ampacity:.0f} A")
    return out


def _kva(rig: Rig, xfmr: str) -> float:
    values = {p["id"]: p["value"] for p in rig.daemon_call("points.read", ids=[f"{xfmr}.load_kw", f"{xfmr}.load_kvar"])}
    return math.hypot(float(values[f"{xfmr}.load_kw"] or 0.0), float(values[f"{xfmr}.load_kvar"] or 0.0))


ASSET_SYSTEM = "scenario-maximo"
"""The asset-management system's key name: it signs with its own Ed25519 key (operator role)."""


def _sign(key: Any, command: str, args: dict[str, Any], substation: str) -> dict[str, Any]:
    from gateway.commands import sign_command

    return sign_command(key, command, args, ASSET_SYSTEM, time.time(), substation=substation, key_name=ASSET_SYSTEM)


def _age_and_import(rig: Rig, rec: Recorder, workdir: Path) -> dict[str, Any]:
    out = {}
    for xfmr in (AGED, TWIN):
        path = workdir / f"{xfmr}-monitor.csv"
        started = time.monotonic()
        aged = rig.hil_call("age", transformer=xfmr, months=AGEING_MONTHS, path=str(path), seed=rec.seed)
        took = time.monotonic() - started
        rec.note(
            "simulator",
            f"{xfmr} aged {aged['months']:g} months in {took:.1f} s: oil drift "
            f"{aged['drift_c']:+.1f} °C, efficiency {aged['efficiency_pct']:.2f} %, fans "
            f"{'on' if aged['fans_on'] else 'cycling'}, C2H2 {aged['gases_ppm']['c2h2']:.1f} µL/L",
        )
        imported = _call(rig, "history.import", path=str(path))
        rec.note(
            "gatewayd",
            f"{xfmr}: {imported['rows']} hourly rows of {len(imported['points'])} points imported (the monitors' log)",
        )
        out[xfmr] = {"aged": aged, "seconds": round(took, 2), "rows": imported["rows"]}
    return out


def _validate_on_the_rig(rig: Rig, rec: Recorder, order: dict[str, Any], sequence_id: str) -> dict[str, Any]:
    """Run the recommended plan on the simulated substation at the window's loads (the AMI
    head-end's disconnection of the shed customers stood in for by their load), check the
    simulator's own power flow, and go back to the normal configuration."""
    plan = next(p for p in order["plans"] if p["plan"] == order["recommended_plan"])
    factors = order["window"]["load_factors"]
    before_kw = _station_kw(rig)
    for xfmr, factor in factors.items():
        rig.hil_call("loadstep", target=xfmr, factor=factor)
    section_groups = {s["id"]: s for s in rig.daemon_call("switching.network")["sections"]}
    groups = {g["id"]: g for g in rig.doc["meter_groups"]}
    for shed in plan["shed"]:
        load = plan["window_loads_kva"].get(shed["section"], 0.0)
        keep = max(0.0, 1.0 - shed["kva"] / load) if load > 0 else 1.0
        for element in section_groups[shed["section"]]["elements"]:
            for gid, g in groups.items():
                if g["connected_transformer"] == element:
                    rig.hil_call("loadstep", target=gid, factor=factors.get(AGED, 1.0) * keep)
    rec.note(
        "simulator",
        f"loads set to the window's forecast ({', '.join(f'{x} ×{f:.2f}' for x, f in factors.items())})"
        + (f"; {plan['customers_shed']} customers' load taken off as the AMI head-end would" if plan["shed"] else ""),
    )
    _window_loads_seen(rig, before_kw, factors)
    _positions_known(rig, [st["device"] for st in plan["steps"]])
    started = time.time()
    rig.daemon_call("switching.approve", id=sequence_id)
    done = rig.wait(
        lambda: (
            (s := rig.daemon_call("switching.show", id=sequence_id))["status"]
            in ("done", "failed", "aborted", "invalid")
            and s
        ),
        "the backup plan's sequence",
        60,
        0.2,
    )
    rec.note(
        "switching",
        f"plan {plan['plan']}: {len(done['steps'])} steps {done['status']} in "
        f"{(done.get('finished') or time.time()) - started:.1f} s",
        done.get("finished"),
    )
    _settle_taps(rig)
    status = _hil(rig)
    over = _limits(rig, status)
    twin_kva = _kva(rig, TWIN)
    sections = status["sections"]
    out = {
        "status": done["status"],
        "steps": len(done["steps"]),
        "seconds": round((done.get("finished") or 0) - started, 2),
        "overloaded": over,
        "twin_kva": round(twin_kva, 1),
        "aged_deenergised": not status["devices"][PRIMARY[AGED]]["closed"],
        "restored_energised": all(sections[s]["energised"] for s in plan["restored_sections"]),
        "tie_kva": None,
    }
    if done["status"] != "done":
        out["detail"] = [r for r in done.get("results", []) if not r.get("ok")] or done.get("validation") or done
    tie = status["devices"].get("TIE-046-061", {})
    if tie.get("closed"):
        out["tie_kva"] = round(math.sqrt(3) * NOMINAL_KV * float(tie.get("current_a", 0.0)), 1)
    # back to normal by the plan's own way back (validated with it): the transformer first, then
    # each transferred part, its tie opened before its normal supply closes
    steps = [{"device": st["device"], "action": st["action"]} for st in plan["return_steps"]]
    _positions_known(rig, [st["device"] for st in steps])
    back = rig.daemon_call(
        "switching.submit",
        text=json.dumps({"name": "maintenance over: back to normal", "steps": steps}),
        name="back.json",
        run=True,
    )
    back_done = rig.wait(
        lambda: (
            (s := rig.daemon_call("switching.show", id=back["id"]))["status"]
            in ("done", "failed", "aborted", "invalid")
            and s
        ),
        "the sequence back to normal",
        60,
        0.2,
    )
    out["back_to_normal"] = back_done["status"]
    normal = {d["id"]: not d["normally_open"] for d in rig.daemon_call("switching.network")["devices"]}
    final = _hil(rig)["devices"]
    out["not_normal"] = sorted(d for d, closed in normal.items() if d in final and bool(final[d]["closed"]) != closed)
    if back_done["status"] != "done":
        out["back_to_normal_detail"] = (
            [r for r in back_done.get("results", []) if not r.get("ok")] or back_done.get("validation") or back_done
        )
    for target in (AGED, TWIN, *groups):
        with contextlib.suppress(Exception):
            rig.hil_call("loadstep", target=target, factor=1.0)
    rec.note("switching", f"back to normal ({len(steps)} steps): {back_done['status']}", back_done.get("finished"))
    return out


def _station_kw(rig: Rig) -> dict[str, float]:
    return {
        p["id"].split(".")[0]: abs(float(p["value"] or 0.0))
        for p in rig.daemon_call("points.read", ids=[f"{x}.load_kw" for x in (AGED, TWIN)])
    }


def _window_loads_seen(rig: Rig, before_kw: dict[str, float], factors: dict[str, float]) -> None:
    """The sequence is validated again on the loads the gateway measures when it starts: wait
    until the station transformers read the window's loads (within 5 % of the step) and the
    sections' loads, from the devices' currents, add up to no more than they carry."""

    def seen() -> bool:
        now_kw = _station_kw(rig)
        for x, factor in factors.items():
            if now_kw[x] > before_kw[x] * (factor + 0.05) + 20.0:
                return False
        sections = [
            s
            for s in rig.daemon_call("switching.network")["sections"]
            if s["energised"] and s["id"] not in (AGED, TWIN)
        ]
        total = sum(abs(float(s.get("load_kw") or s.get("remembered_kw") or 0.0)) for s in sections)
        return total <= 1.05 * sum(now_kw.values()) + 50.0

    rig.wait(seen, "the window's loads measured by the gateway", 60, 0.5)
    time.sleep(1.0)  # one more poll of every device's current


def _positions_known(rig: Rig, devices: list[str]) -> None:
    """A sequence is validated on the positions the gateway knows when it starts: wait until the
    polls of its devices are good (a poll that timed out leaves a position unknown, and the
    sequence is rightly refused)."""
    rig.wait(
        lambda: all(
            d["position"] != "unknown" for d in rig.daemon_call("switching.network")["devices"] if d["id"] in devices
        ),
        f"the positions of {', '.join(devices)} known",
        30,
        0.2,
    )


def _settle_taps(rig: Rig, timeout_s: float = 60.0) -> None:
    """The station transformers' tap changers bring their buses back into band after a transfer
    (their 10 s delay, then a tap every 2 s): wait out the delay, then until neither is regulating,
    three reads running."""
    time.sleep(12.0)
    quiet = 0
    deadline = time.monotonic() + timeout_s
    while quiet < 3 and time.monotonic() < deadline:
        states = [rig.daemon_call("agents.show", id=x)["state"] for x in (AGED, TWIN)]
        quiet = quiet + 1 if "Voltage_Regulation" not in states else 0
        time.sleep(1.0)


def _revenue(rig: Rig, rec: Recorder, started: float) -> dict[str, Any]:
    """Bypass the largest meter behind the pole-mounted transformer; the energy balance finds it."""
    group = next(g for g in rig.doc["meter_groups"] if g["id"] == REVENUE_GROUP)
    ids = [f"{group['prefix']}-{n:05d}" for n in range(group.get("first", 1), group.get("first", 1) + group["count"])]
    demand = {m: float(rig.daemon_call("agents.show", id=m)["attributes"].get("current_demand") or 0.0) for m in ids}
    meter = max(demand, key=lambda m: demand[m])
    rig.hil_call("bypass", meter=meter, registered=0.0)
    at = time.time()
    rec.note(
        "simulator",
        f"{meter} bypassed (registers nothing; {demand[meter]:.2f} kW typical, the largest of "
        f"{REVENUE_XFMR}'s {len(ids)} meters)",
    )

    def found() -> dict[str, Any] | None:
        for e in rig.daemon_call("events", since=at - 1, limit=2000):
            if e["kind"] == "notice.revenue_protection" and e["source"] == REVENUE_XFMR:
                return e
        return None

    notice = rig.wait(found, "the revenue-protection notice", 120, 0.5)
    rig.hil_call("bypass", meter=meter, registered=1.0)
    rec.note(
        REVENUE_XFMR,
        f"revenue protection: {notice['gap_percent']:+.1f} % of the energy unexplained over "
        f"{notice['windows_over']} windows; first suspect {notice['suspects'][0]['meter']}",
        notice["time"],
    )
    return {"meter": meter, "notice": notice, "seconds_to_notice": round(notice["time"] - at, 1)}


def run(rec: Recorder) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="stima-maintenance-"))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.keys import public_bytes

    asset_key = Ed25519PrivateKey.generate()
    doc = scenario_site(workdir)
    with Rig(doc, workdir, hil_args=("--seed", str(rec.seed), "--ami-interval", "2s")) as rig:
        rec.note("rig", "daemon, simulator (XFMR-234 ageing, XFMR-235 its healthy twin) and broker up")
        listener = _Listener(rig)
        try:
            rig.daemon_call(
                "keys.add", name=ASSET_SYSTEM, public_key=public_bytes(asset_key.public_key()).hex(), role="operator"
            )
            _scenario(rig, rec, workdir, asset_key, listener)
        finally:
            listener.stop()


def _scenario(rig: Rig, rec: Recorder, workdir: Path, asset_key: Any, listener: _Listener) -> None:
    ageing = _age_and_import(rig, rec, workdir)
    rig.wait(
        lambda: all(
            p["quality"] == "good"
            for p in rig.daemon_call("points.read", ids=[f"{x}.{g}_ppm" for x in (AGED, TWIN) for g in GASES])
        ),
        "the DGA monitors read",
        30,
        0.2,
    )
    rig.wait(lambda: rig.daemon_call("status")["ami"]["readings"] >= 3682, "a full AMI reading", 60, 0.5)
    # the plans are made on the plant as the gateway sees it: every position known, every section's load
    rig.wait(
        lambda: (
            (n := rig.daemon_call("switching.network"))
            and all(d["position"] != "unknown" for d in n["devices"])
            and all(s.get("load_kw") is not None or s.get("remembered_kw") is not None for s in n["sections"])
        ),
        "every device position and section load known",
        60,
        0.5,
    )
    since = time.time()
    started = time.monotonic()
    evaluations = _call(rig, "maintenance.evaluate", timeout=120)
    evaluate_s = time.monotonic() - started
    by = {e["transformer"]: e for e in evaluations}
    aged, twin = by[AGED], by[TWIN]
    trend = aged["inputs"]["top_oil_trend"] or {}
    p = aged["prediction"]
    at = float(aged["inputs"]["time"])
    rec.note(
        AGED,
        f"trend detected: top oil {trend.get('slope_c_per_month', 0):+.2f} °C/month at comparable load "
        f"(95 % interval ±{trend.get('ci95_c_per_month', 0):.2f}, {trend.get('days')} days)",
        at,
    )
    rec.note(
        AGED,
        f"{p['probability']:.0%} chance of failure within {p['horizon_days']:g} days: {p['failure_mode']}; "
        f"maintenance within {p['recommended_within_days']:.0f} days",
        at,
    )
    rec.note(
        TWIN,
        f"healthy: {twin['prediction']['probability']:.2%} within {p['horizon_days']:g} days, no trend, "
        f"DGA status {(twin['inputs']['dga'] or {}).get('status')}",
        at,
    )
    events = rig.daemon_call("events", since=since - 1, limit=5000)
    requests = [e for e in events if e["kind"] == "notice.maintenance_request"]
    for e in requests:
        rec.note(e["source"], f"maintenance request: {e['reason']}", e["time"])
    orders = rig.daemon_call("maintenance.list")
    order = next((o for o in orders if o["asset"] == AGED), None)
    checks_health(rec, aged, twin, requests, events, orders)
    trips = [
        f"{e['source']} {e['kind']} {e.get('element') or e.get('message') or ''} at {e['time'] - since:+.1f} s"
        for b in FEEDERS[AGED] + FEEDERS[TWIN] + tuple(PRIMARY.values())
        for e in rig.daemon_call("events", since=0, source=b, limit=10_000)
        if e["kind"] in ("protection.trip", "protection.lockout", "switching.operation", "position_change")
        or "open" in str(e.get("message", ""))
    ]
    rec.check(
        "nothing tripped before the work order (the plans start from the normal configuration)",
        not trips,
        "; ".join(trips) or "no trip",
    )
    if order is None:
        rec.check("work order made", False, "no work order for XFMR-234")
        return
    order = rig.daemon_call("maintenance.show", id=order["id"])
    rec.note(
        "gatewayd", f"work order {order['id']} {order['priority']}: window {order['window']['label']}", order["created"]
    )
    for plan in order["plans"]:
        rec.note(
            "SUB-003",
            f"plan {plan['plan']}: {plan['mva_covered']:.2f} of {plan['required_mva']:.2f} MVA, "
            f"{plan['customers_shed']} customers shed, {len(plan['steps'])} steps "
            f"(~{plan['switching_time_min']:g} min), "
            f"{'validated' if plan['validated'] else 'NOT valid: ' + '; '.join(plan['validation'][:2])}",
        )
    notes = order["notifications"]
    rec.note(
        "gatewayd",
        f"customer notices: {notes['critical_notified']} critical ({_lead(notes['critical'])} h ahead), "
        f"{notes['customers_notified'] - notes['critical_notified']} others "
        f"({_lead(notes['customers'])} h ahead)",
    )
    checks_work_order(rec, order, listener)
    # SCADA (the asset system) accepts the order with a signed command
    envelope = _sign(
        asset_key,
        "maintenance/accept",
        {"work_order": order["id"], "external_id": "MX-88231"},
        rig.doc["site"]["substation_id"],
    )
    listener.publish("cmd/maintenance/accept", envelope)
    rig.wait(
        lambda: any(isinstance(r, dict) and r.get("id") == envelope["id"] for r in listener.on("cmd_result/")),
        "the command result",
        20,
        0.1,
    )
    result = next(r for r in listener.on("cmd_result/") if isinstance(r, dict) and r.get("id") == envelope["id"])
    accepted = rig.daemon_call("maintenance.show", id=order["id"])
    rec.check(
        "SCADA accepts the work order with a signed command",
        bool(result.get("ok")) and accepted["status"] == "accepted" and accepted["external_id"] == "MX-88231",
        f"result ok={result.get('ok')} {result.get('error') or ''}; status {accepted['status']}",
    )
    rec.note("scada", f"work order accepted as {accepted['external_id']} (signed command)")
    retained = [w for w in listener.on(f"maintenance/work_orders/{order['id']}") if isinstance(w, dict)]
    rec.check(
        "the asset system sees the order's new state on its retained topic",
        bool(retained) and retained[-1]["status"] == "accepted",
        f"{len(retained)} message(s)",
    )
    # the recommended plan run on the simulated substation at the window's loads
    sim = _validate_on_the_rig(rig, rec, order, order["backup_sequence"])
    checks_simulation(rec, order, sim)
    revenue = _revenue(rig, rec, since)
    suspect = revenue["notice"]["suspects"][0]["meter"]
    rec.check(
        "revenue protection: the bypassed meter is found and ranked first",
        suspect == revenue["meter"],
        f"gap {revenue['notice']['gap_percent']:+.1f} %, suspects "
        f"{[s['meter'] for s in revenue['notice']['suspects'][:3]]}",
    )
    twin_alerts = [
        e
        for e in rig.daemon_call("events", since=since - 1, limit=5000)
        if e["source"] == TWIN and e["kind"] in ("alert", "notice.maintenance_request")
    ]
    rec.check(
        "the healthy twin raised nothing, start to end",
        not twin_alerts and not any(o["asset"] == TWIN for o in rig.daemon_call("maintenance.list")),
        f"{len(twin_alerts)} alert(s)",
    )
    rec.figures.update(
        {
            "failure_probability": round(p["probability"], 4),
            "horizon_days": p["horizon_days"],
            "failure_probabilities": p["probabilities"],
            "failure_mode": p["failure_mode"],
            "contributions": [
                {"factor": c["factor"], "share": c["share"], "value": c["value"]} for c in p["contributions"]
            ],
            "top_oil_trend_c_per_month": trend.get("slope_c_per_month"),
            "top_oil_trend_ci95_c_per_month": trend.get("ci95_c_per_month"),
            "efficiency_pct": aged["inputs"]["efficiency"],
            "cooling_duty": aged["inputs"]["cooling_duty"],
            "dga_status": aged["inputs"]["dga"]["status"],
            "duval_zone": (aged["inputs"]["dga"]["duval"] or {}).get("zone"),
            "twin_failure_probability": round(twin["prediction"]["probability"], 5),
            "work_order": {
                k: order[k]
                for k in (
                    "id",
                    "asset",
                    "status",
                    "priority",
                    "reason",
                    "tasks",
                    "crew",
                    "crew_skill",
                    "duration_h",
                    "success_criteria",
                    "recommended_plan",
                    "backup_sequence",
                )
            }
            | {
                "window": {k: order["window"].get(k) for k in ("start", "end", "label", "reasons", "lead_time_days")},
                "parts": order["parts"],
            },
            "plans": {
                pl["plan"]: {
                    "mva_covered": pl["mva_covered"],
                    "required_mva": pl["required_mva"],
                    "validated": pl["validated"],
                    "validation": pl["validation"],
                    "customers_shed": pl["customers_shed"],
                    "critical_restored": pl["critical_restored"],
                    "critical_total": pl["critical_total"],
                    "switching_time_min": pl["switching_time_min"],
                    "steps": len(pl["steps"]),
                    "sequence": [f"{st['action']} {st['device']}" for st in pl["steps"]],
                    "way_back": [f"{st['action']} {st['device']}" for st in pl["return_steps"]],
                    "way_back_validated": pl["return_validated"],
                    "neighbour_offer_kva": (pl["offer"] or {}).get("kva_offered"),
                }
                for pl in order["plans"]
            },
            "customers_notified": notes["customers_notified"],
            "critical_notified": notes["critical_notified"],
            "simulation": sim,
            "evaluation_s": round(evaluate_s, 3),
            "ageing": {x: {"seconds": a["seconds"], "rows": a["rows"]} for x, a in ageing.items()},
            "revenue": {
                "meter": revenue["meter"],
                "gap_percent": revenue["notice"]["gap_percent"],
                "suspect": suspect,
                "seconds_to_notice": revenue["seconds_to_notice"],
            },
        }
    )


def _lead(rows: list[dict[str, Any]]) -> str:
    return "/".join(sorted({f"{r['lead_h']:g}" for r in rows})) or "-"


def checks_health(
    rec: Recorder,
    aged: dict[str, Any],
    twin: dict[str, Any],
    requests: list[dict[str, Any]],
    events: list[dict[str, Any]],
    orders: list[dict[str, Any]],
) -> None:
    ia, pa = aged["inputs"], aged["prediction"]
    trend = ia["top_oil_trend"] or {}
    rec.check(
        "XFMR-234: top-oil trend found at comparable load, about 2 °C a month",
        bool(trend.get("detected")) and 1.5 <= trend.get("slope_c_per_month", 0) <= 2.5,
        f"{trend.get('slope_c_per_month')} ± {trend.get('ci95_c_per_month')} °C/month",
    )
    eff = ia["efficiency"] or {}
    rec.check(
        "XFMR-234: efficiency from measured losses fell about 0.7 point",
        0.4 <= float(eff.get("drop_pct_points", 0)) <= 1.0,
        f"{eff}",
    )
    duty = ia["cooling_duty"] or {}
    rec.check(
        "XFMR-234: fans that cycled now run constantly",
        duty.get("baseline", 1) < 0.8 < duty.get("recent", 0),
        f"{duty}",
    )
    dga = ia["dga"] or {}
    rec.check(
        "XFMR-234: DGA status 3 (C57.104-2019) with acetylene, Duval zone D2",
        dga.get("status") == 3 and (dga.get("duval") or {}).get("zone") == "D2",
        f"status {dga.get('status')}, zone {(dga.get('duval') or {}).get('zone')}",
    )
    rec.check(
        "XFMR-234: operating hours near the maintenance interval",
        85_000 <= (ia["operating_hours"] or 0) <= 90_000,
        f"{ia['operating_hours']} of {ia['maintenance_interval_h']}",
    )
    rec.check(
        "XFMR-234: probability of failure in 60 days near the use case's 45 %",
        0.35 <= pa["probability"] <= 0.55 and pa["horizon_days"] == 60,
        f"{pa['probability']:.1%} ({pa['failure_mode']})",
    )
    rec.check(
        "XFMR-234: most likely failure mode winding insulation breakdown",
        pa["failure_mode"] == "winding insulation breakdown",
        pa["failure_mode"],
    )
    rec.check(
        "XFMR-234: one maintenance request",
        [e["source"] for e in requests] == [AGED],
        f"{[e['source'] for e in requests]}",
    )
    rec.check("XFMR-234: work order made", any(o["asset"] == AGED for o in orders), f"{len(orders)} order(s)")
    it, pt = twin["inputs"], twin["prediction"]
    rec.check(
        "XFMR-235 (healthy twin): no trend, DGA status 1, probability below 2 %",
        not (it["top_oil_trend"] or {}).get("detected")
        and (it["dga"] or {}).get("status") == 1
        and pt["probability"] < HEALTHY_LIMIT,
        f"{pt['probability']:.3%}",
    )
    alerts = [e for e in events if e["source"] == TWIN and e["kind"] == "alert"]
    rec.check(
        "XFMR-235 (healthy twin): no alert, no request",
        not alerts and AGED in [e["source"] for e in requests] and TWIN not in [e["source"] for e in requests],
        f"{len(alerts)} alert(s)",
    )


def checks_work_order(rec: Recorder, order: dict[str, Any], listener: _Listener) -> None:
    w = order["window"]
    start = float(w["start"])
    rec.check(
        "work order: id, priority HIGH, tasks, parts, crew, duration and success criteria",
        order["id"].startswith("PM-")
        and order["id"].endswith("-234")
        and order["priority"] == "HIGH"
        and any("tap changer" in t for t in order["tasks"])
        and any("oil" in x["item"] for x in order["parts"])
        and order["crew"].startswith("Team Bravo")
        and order["duration_h"] == 6
        and order["success_criteria"],
        f"{order['id']} {order['priority']}",
    )
    rec.check(
        "window: after the critical customers' 72 h notice, inside the recommended lead time, the lowest load",
        start >= order["created"] + 72 * 3600 - 1
        and float(w["end"]) <= order["created"] + float(w["lead_time_days"]) * 86400 + 1
        and w["forecast_peak_kw"] <= w["median_candidate_peak_kw"],
        f"{w['label']}: {w['reasons'][0]}",
    )
    plans = {p["plan"]: p for p in order["plans"]}
    rec.check(
        "plans A, B, C each checked by the power flow and validated as a sequence, and their ways back",
        set(plans) == {"A", "B", "C"} and all(p["validated"] and p["return_validated"] for p in plans.values()),
        "; ".join(
            f"{k}: {'ok' if p['validated'] else p['validation'][:1]}, way back "
            f"{'ok' if p['return_validated'] else p['return_validation'][:1]}"
            for k, p in sorted(plans.items())
        ),
    )
    a, b, c = plans["A"], plans["B"], plans["C"]
    rec.check(
        "plan A: the adjacent transformer takes what it can, within its rating",
        0 < a["mva_covered"] <= a["required_mva"]
        and a["highest_loading"].get("transformer", 0) <= 1.0
        and not any(s["device"] == "TIE-046-061" for s in a["steps"]),
        f"{a['mva_covered']} MVA, XFMR-235 at {a['highest_loading'].get('transformer', 0):.0%}"
        + ("" if a["mva_covered"] > 0 else f"; notes {a['notes']}; window loads {a['window_loads_kva']}"),
    )
    gap_kva = 1000.0 * (a["required_mva"] - a["mva_covered"])
    asked = b["request"] is not None and abs(b["request"]["kva_requested"] - gap_kva) <= 1.0
    rec.check(
        "plan B: the neighbouring substation asked for the gap A leaves, its offer never exceeded",
        b["mva_covered"] >= a["mva_covered"]
        and (gap_kva < 1.0 or (asked and b["offer"] is not None))
        and b["highest_loading"].get("neighbour", 0.0) <= 1.0 + 1e-6,
        f"{b['mva_covered']} MVA; asked {(b['request'] or {}).get('kva_requested')} kVA, offered "
        f"{(b['offer'] or {}).get('kva_offered')} kVA, used {b['highest_loading'].get('neighbour', 0):.0%}",
    )
    rec.check(
        "plan C: every critical customer kept, only non-critical customers shed",
        c["critical_restored"] == c["critical_total"] > 0 and c["mva_covered"] >= b["mva_covered"],
        f"{c['critical_restored']}/{c['critical_total']} critical, {c['customers_shed']} shed",
    )
    notes = order["notifications"]
    rec.check(
        "customer notices: critical customers first with 72 h, others 48 h",
        notes["critical_notified"] == 3
        and all(r["lead_h"] == 72 for r in notes["critical"])
        and all(r["lead_h"] == 48 for r in notes["customers"])
        and notes["customers_notified"] >= 2500,
        f"{notes['critical_notified']} critical, {notes['customers_notified']} in all",
    )
    published = listener.on(f"maintenance/work_orders/{order['id']}")
    notices = listener.on(f"maintenance/notifications/{order['id']}")
    rec.check(
        "work order and notices published on their documented topics",
        bool(published)
        and bool(notices)
        and published[-1]["window"]["label"] == w["label"]
        and notices[-1]["critical_notified"] == 3,
        f"{len(published)} order, {len(notices)} notice message(s)"
        + (
            ""
            if not published or published[-1]["window"]["label"] == w["label"]
            else f"; the last published window {published[-1]['window']['label']!r} (history "
            f"{[h.get('event') for h in published[-1].get('history', [])]}) is not {w['label']!r}"
        ),
    )


def checks_simulation(rec: Recorder, order: dict[str, Any], sim: dict[str, Any]) -> None:
    plan = next(p for p in order["plans"] if p["plan"] == order["recommended_plan"])
    rec.check(
        f"plan {plan['plan']} runs on the simulated substation: XFMR-234 de-energised, its customers supplied",
        sim["status"] == "done" and sim["aged_deenergised"] and sim["restored_energised"],
        f"{sim['status']} in {sim['seconds']} s" + (f": {sim['detail']}" if sim.get("detail") else ""),
    )
    rec.check(
        "in simulation nothing beyond its limit: lines, devices, XFMR-235's rating, 0.95 pu",
        not sim["overloaded"] and sim["twin_kva"] <= 6000.0,
        "; ".join(sim["overloaded"]) or f"XFMR-235 at {sim['twin_kva']:.0f} kVA",
    )
    if sim["tie_kva"] is not None:
        offer = (plan.get("offer") or {}).get("kva_offered") or 0
        rec.check(
            "in simulation the neighbour carries no more than it offered",
            sim["tie_kva"] <= offer * 1.05,
            f"{sim['tie_kva']:.0f} kVA through TIE-046-061 of {offer:.0f} kVA offered",
        )
    rec.check(
        "back to the normal configuration after the window by the plan's validated way back, every device "
        "in its normal position",
        sim["back_to_normal"] == "done" and not sim["not_normal"],
        f"{sim['back_to_normal']}; not in normal position: {sim['not_normal'] or 'none'}"
        if sim["back_to_normal"] == "done"
        else f"{sim['back_to_normal']}: {sim.get('back_to_normal_detail')}",
    )
