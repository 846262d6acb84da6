"""Use case scenario 3, predictive maintenance, on the example substation SUB-003 with its two
station transformers modelled: XFMR-234 (ageing) feeds LINE-045, XFMR-235 (its healthy twin)
feeds LINE-044 and LINE-046.
"""

from __future__ import annotations

import copy
from typing import Any

from hil.rig import example_document

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
    return {"id": f"IED-{dev}", "description": f"{dev} station transformer primary breaker",
            "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit_id": 1, "poll_period_ms": 200,
            "timeout_ms": 300, "retries": 1, "points": points}


def _monitor_ied(xfmr: str, port: int) -> dict[str, Any]:
    points: list[dict[str, Any]] = [
        {"id": f"{xfmr}.load_kw", "address": 0, "function": "input", "type": "float32", "unit": "kW", "deadband": 5.0},
        {"id": f"{xfmr}.load_kvar", "address": 2, "function": "input", "type": "float32", "unit": "kvar",
         "deadband": 5.0},
        {"id": f"{xfmr}.primary_power_kw", "address": 4, "function": "input", "type": "float32", "unit": "kW",
         "deadband": 5.0},
        {"id": f"{xfmr}.top_oil_temp_c", "address": 6, "function": "input", "type": "int16", "scale": 0.1,
         "unit": "degC", "deadband": 0.2, "valid_range": [-40.0, 200.0]},
        {"id": f"{xfmr}.ambient_temp_c", "address": 7, "function": "input", "type": "int16", "scale": 0.1,
         "unit": "degC", "deadband": 0.2, "valid_range": [-50.0, 70.0]},
        {"id": f"{xfmr}.operating_hours", "address": 8, "function": "input", "type": "uint32", "kind": "counter"},
        {"id": f"{xfmr}.secondary_voltage_v", "address": 10, "function": "input", "type": "float32", "unit": "V",
         "deadband": 10.0},
        {"id": f"{xfmr}.tap_position", "address": 12, "function": "input", "type": "int16", "deadband": 0.5,
         "valid_range": [-16.0, 16.0]},
        {"id": f"{xfmr}.fans_running", "address": 0, "function": "discrete", "type": "bool"},
        {"id": f"{xfmr}.tap_setpoint", "address": 100, "function": "holding", "type": "int16", "writable": True,
         "valid_range": [-16.0, 16.0]},
    ]
    return {"id": f"IED-{xfmr}", "description": f"{xfmr} monitor: temperatures, fans, powers, hour counter",
            "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit_id": 1, "poll_period_ms": 1000,
            "timeout_ms": 500, "points": points}


def _dga_ied(xfmr: str, port: int) -> dict[str, Any]:
    points = [{"id": f"{xfmr}.{g}_ppm", "address": 2 * k, "function": "input", "type": "float32", "unit": "ppm",
               "deadband": 0.1, "valid_range": [0.0, 100000.0]} for k, g in enumerate(GASES)]
    return {"id": f"IED-DGA-{xfmr[5:]}", "description": f"online DGA monitor on {xfmr} (seven gases, µL/L)",
            "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit_id": 1, "poll_period_ms": 2000,
            "timeout_ms": 500, "points": points}


def _station_transformer(xfmr: str, feeds: tuple[str, ...], *, installed: str) -> dict[str, Any]:
    names = ["load_kw", "load_kvar", "primary_power_kw", "top_oil_temp_c", "ambient_temp_c", "operating_hours",
             "fans_running", "secondary_voltage_v", "tap_position", "tap_setpoint"] + [f"{g}_ppm" for g in GASES]
    return {"id": xfmr, "type": "transformer",
            "attributes": {"transformer_type": "substation", "primary_voltage": 66.0, "secondary_voltage": 11000.0,
                           "rated_capacity": 6000.0, "impedance_percent": 8.0, "cooling_type": "ONAF",
                           "rated_top_oil_rise_c": 50.0, "rated_hot_spot_rise_c": 20.0, "loss_ratio": 5.0,
                           "regulation_enabled": True, "voltage_setpoint_v": 122.0, "bandwidth_v": 1.5,
                           "time_delay_s": 10.0, "inter_tap_delay_s": 2.0, "maintenance_interval_h": 90_000.0,
                           "normal_top_oil_max_c": 62.0,
                           "oil_preservation": "sealed", "prior_loss_of_life_percent": 25.0,
                           "installation_date": installed, "high_load_percent": 95.0,
                           "capacity_notice_percent": 100.0, "location": "SUB-003 transformer bay"},
            "points": {n: f"{xfmr}.{n}" for n in names},
            "connection_rules": [{"target_id": f, "canonical_type": "supply"} for f in feeds]}


def site() -> dict[str, Any]:
    """The example with its station transformers, their monitors and DGA, and a small pole-mounted
    transformer with a dozen meters for the revenue-protection check."""
    doc = copy.deepcopy(example_document())
    agents = doc["agents"]
    sub = next(a for a in agents if a["id"] == "SUB-003")
    sub["connection_rules"] = [{"target_id": PRIMARY[AGED], "canonical_type": "supply"},
                               {"target_id": PRIMARY[TWIN], "canonical_type": "supply"}]
    for xfmr, dev in PRIMARY.items():
        agents.append({"id": dev, "type": "circuit_breaker",
                       "attributes": {"breaker_type": "SF6", "rated_voltage": 72.5, "rated_current": 630.0,
                                      "interrupting_capacity": 31.5, "operating_mechanism": "spring",
                                      "location": f"{xfmr} 66 kV bay"},
                       "points": {n: f"{dev}.{n}" for n in ("ia", "ib", "ic", "closed", "trip_cmd", "close_cmd")},
                       "connection_rules": [{"target_id": xfmr, "canonical_type": "supply"}]})
    agents.append(_station_transformer(AGED, FEEDERS[AGED], installed="2006-03-01"))
    agents.append(_station_transformer(TWIN, FEEDERS[TWIN], installed="2006-03-01"))
    for a in agents:
        if a["id"] == "TIE-046-061":
            a["attributes"]["external_capacity_kva"] = 1000.0
        if a["id"] == "LINE-046":
            a["connection_rules"].append({"target_id": REVENUE_XFMR, "canonical_type": "supply"})
    agents.append({"id": REVENUE_XFMR, "type": "transformer",
                   "attributes": {"transformer_type": "pole_mounted", "primary_voltage": 11.0, "secondary_voltage": 415.0,
                                  "rated_capacity": 100.0, "impedance_percent": 4.0, "cooling_type": "ONAN",
                                  "regulation_enabled": False},
                   "points": {"load_kw": f"{REVENUE_XFMR}.load_kw", "load_kvar": f"{REVENUE_XFMR}.load_kvar"},
                   "connection_rules": [{"target_id": "LINE-046", "canonical_type": "depends_on", "position_m": 1000.0}]})
    doc["meter_groups"].append({"id": REVENUE_GROUP, "prefix": "MTR-164", "count": 12,
                                "connected_transformer": REVENUE_XFMR, "meter_type": "residential"})
    port = 15230
    for xfmr, dev in PRIMARY.items():
        doc["ieds"] += [_breaker_ied(dev, port), _monitor_ied(xfmr, port + 1), _dga_ied(xfmr, port + 2)]
        port += 3
    doc["ieds"].append({"id": f"IED-{REVENUE_XFMR}", "description": "pole-mounted transformer 164 energy meter",
                        "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit_id": 1,
                        "poll_period_ms": 1000, "timeout_ms": 500,
                        "points": [{"id": f"{REVENUE_XFMR}.load_kw", "address": 0, "function": "input",
                                    "type": "float32", "unit": "kW", "deadband": 0.1},
                                   {"id": f"{REVENUE_XFMR}.load_kvar", "address": 2, "function": "input",
                                    "type": "float32", "unit": "kvar", "deadband": 0.1}]})
    sim = doc.setdefault("simulation", {})
    sim.update(nominal_kv=66.0, source_sc_mva=1500.0, source_x_r=15.0, transformer_x_r=8.0)
    hours_before = 87_500.0 - AGEING_MONTHS * 30.44 * 24
    sim["ageing"] = {AGED: {"profile": "scenario-3", "operating_hours": hours_before},
                     TWIN: {"profile": "healthy", "operating_hours": hours_before}}
    # LINE-045 behind XFMR-234 about 85 % of its rating at the evening peak, half at night; XFMR-235
    # about two thirds loaded at night (a process plant runs round the clock on LINE-046)
    sim.setdefault("loads", {}).update({
        AGED: {"peak_kw": 0.0}, TWIN: {"peak_kw": 0.0},
        "MTR-GRP-101": {"peak_kw": 2000.0, "power_factor": 0.95, "profile": "residential"},
        "MTR-GRP-102": {"peak_kw": 1500.0, "power_factor": 0.92, "profile": "industrial"},
        "MTR-GRP-103": {"peak_kw": 1250.0, "power_factor": 0.95, "profile": "flat"},
        "MTR-GRP-141": {"peak_kw": 500.0, "power_factor": 0.93},
        "MTR-GRP-142": {"peak_kw": 500.0, "power_factor": 0.93},
        "MTR-GRP-143": {"peak_kw": 600.0, "power_factor": 0.95},
        "MTR-GRP-161": {"peak_kw": 2200.0, "power_factor": 0.9, "profile": "flat"},
        "MTR-GRP-162": {"peak_kw": 900.0, "power_factor": 0.9, "profile": "industrial"},
        "MTR-GRP-163": {"peak_kw": 500.0, "power_factor": 0.92},
        REVENUE_GROUP: {"peak_kw": 45.0, "power_factor": 0.95},
    })
    doc["maintenance"] = {"utc_offset_h": 3.0, "evaluation_period_s": 3600.0, "window_hours": 6,
                          "critical_notice_h": 72.0, "customer_notice_h": 48.0, "step_time_s": 90.0,
                          "crew": "Team Bravo (transformer specialists)"}
    return doc
