"""Table-driven transition tests: the moves the use case describes, written out independently."""

from __future__ import annotations

import pytest

from gateway.agents.elements import capacitor_bank as cap
from gateway.agents.elements import circuit_breaker as cb
from gateway.agents.elements import power_line as pl
from gateway.agents.elements import renewable as der
from gateway.agents.elements import smart_meter as sm
from gateway.agents.elements import substation as sub
from gateway.agents.elements import transformer as xf

CASES = [
    # power line
    (pl.TABLE, "Operational", "HEAVY_LOAD", "Loaded"),
    (pl.TABLE, "Loaded", "OVERLOAD_PERSISTED", "Overloaded"),
    (pl.TABLE, "Overloaded", "HEAVY_LOAD", "Loaded"),
    (pl.TABLE, "Overloaded", "EMERGENCY_LOAD", "Emergency"),
    (pl.TABLE, "Operational", "FAULT_DETECTED", "Faulted"),
    (pl.TABLE, "Faulted", "DEENERGIZED", "Faulted"),
    (pl.TABLE, "Faulted", "FAULT_CLEARED", "Operational"),
    (pl.TABLE, "De-energized", "ENERGIZED", "Operational"),
    (pl.TABLE, "De-energized", "HEAVY_LOAD", "De-energized"),
    # transformer
    (xf.TABLE, "Normal_Operation", "LOAD_HIGH", "High_Load"),
    (xf.TABLE, "High_Load", "LOAD_OVER", "Overloaded"),
    (xf.TABLE, "Overloaded", "TEMPERATURE_HIGH", "Overheating"),
    (xf.TABLE, "Overheating", "LOAD_NORMAL", "Overheating"),
    (xf.TABLE, "Overheating", "TEMPERATURE_NORMAL", "Normal_Operation"),
    (xf.TABLE, "Normal_Operation", "TAP_CHANGE_STARTED", "Voltage_Regulation"),
    (xf.TABLE, "Voltage_Regulation", "VOLTAGE_IN_BAND", "Normal_Operation"),
    (xf.TABLE, "Normal_Operation", "INTERNAL_FAULT", "Faulted"),
    (xf.TABLE, "Faulted", "TAKEN_OFFLINE", "Faulted"),
    (xf.TABLE, "Offline", "RETURNED_TO_SERVICE", "Normal_Operation"),
    # smart meter
    (sm.TABLE, "Active", "VOLTAGE_LOW", "Low_Voltage"),
    (sm.TABLE, "Active", "NO_POWER", "Outage"),
    (sm.TABLE, "Outage", "READINGS_STOPPED", "Outage"),
    (sm.TABLE, "Outage", "READING_NORMAL", "Active"),
    (sm.TABLE, "Active", "READINGS_STOPPED", "Communication_Loss"),
    (sm.TABLE, "Communication_Loss", "READING_NORMAL", "Active"),
    (sm.TABLE, "Tampered", "READING_NORMAL", "Tampered"),
    (sm.TABLE, "Tampered", "TAMPER_CLEARED", "Active"),
    (sm.TABLE, "Active", "POWER_QUALITY", "Power_Quality_Issue"),
    (sm.TABLE, "Active", "HIGH_DEMAND", "High_Consumption"),
    # circuit breaker
    (cb.TABLE, "Closed_Normal", "HIGH_CURRENT", "Closed_High_Current"),
    (cb.TABLE, "Closed_High_Current", "PROTECTION_TRIP", "Tripped"),
    (cb.TABLE, "Tripped", "RECLOSE_STARTED", "Reclosing"),
    (cb.TABLE, "Reclosing", "CLOSED", "Closed_Normal"),
    (cb.TABLE, "Reclosing", "PROTECTION_TRIP", "Tripped"),
    (cb.TABLE, "Tripped", "LOCKOUT", "Locked_Out"),
    (cb.TABLE, "Locked_Out", "CLOSED", "Closed_Normal"),
    (cb.TABLE, "Locked_Out", "CLOSED_UNEXPECTED", "Closed_Normal"),
    (cb.TABLE, "Open_Manual", "CLOSED_UNEXPECTED", "Closed_Normal"),
    (cb.TABLE, "Tripped", "CLOSED_UNEXPECTED", "Closed_Normal"),
    (cb.TABLE, "Closed_Normal", "OPENED_UNEXPECTED", "Tripped"),
    (cb.TABLE, "Closed_High_Current", "OPENED_UNEXPECTED", "Tripped"),
    (cb.TABLE, "Maintenance", "CLOSED_UNEXPECTED", "Maintenance"),
    (cb.TABLE, "Locked_Out", "RESET", "Open_Manual"),
    (cb.TABLE, "Closed_Normal", "OPENED", "Open_Manual"),
    (cb.TABLE, "Closed_Normal", "MAINTENANCE_START", "Closed_Normal"),
    (cb.TABLE, "Open_Manual", "MAINTENANCE_START", "Maintenance"),
    (cb.TABLE, "Maintenance", "CLOSED", "Maintenance"),
    (cb.TABLE, "Maintenance", "MAINTENANCE_END", "Open_Manual"),
    # substation
    (sub.TABLE, "Normal_Operation", "HIGH_LOAD", "High_Load"),
    (sub.TABLE, "High_Load", "EMERGENCY", "Emergency_Mode"),
    (sub.TABLE, "Normal_Operation", "FEEDER_FAULT", "Feeder_Fault"),
    (sub.TABLE, "Feeder_Fault", "ALL_NORMAL", "Normal_Operation"),
    (sub.TABLE, "Normal_Operation", "TRANSFORMER_FAULT", "Transformer_Fault"),
    (sub.TABLE, "Normal_Operation", "REGULATING", "Voltage_Regulation_Active"),
    (sub.TABLE, "Maintenance_Mode", "FEEDER_FAULT", "Maintenance_Mode"),
    (sub.TABLE, "Maintenance_Mode", "MAINTENANCE_END", "Normal_Operation"),
    # capacitor bank
    (cap.TABLE, "All_Steps_Off", "STEP_COMMANDED", "Switching"),
    (cap.TABLE, "Switching", "SOME_STEPS_ON", "Partial_Energization"),
    (cap.TABLE, "Switching", "ALL_STEPS_ON", "Fully_Energized"),
    (cap.TABLE, "Switching", "STEP_COMMANDED", "Switching"),
    (cap.TABLE, "Switching", "SWITCH_FAILED", "Locked_Out"),
    (cap.TABLE, "Locked_Out", "STEP_COMMANDED", "Locked_Out"),
    (cap.TABLE, "Locked_Out", "RESET", "All_Steps_Off"),
    (cap.TABLE, "Fully_Energized", "MAINTENANCE_START", "Maintenance"),
    # renewable energy
    (der.TABLE, "Offline", "RECONNECTED", "Standby"),
    (der.TABLE, "Standby", "PRODUCING", "Generating"),
    (der.TABLE, "Generating", "CURTAILMENT_ACTIVE", "Curtailed"),
    (der.TABLE, "Curtailed", "PRODUCING", "Generating"),
    (der.TABLE, "Generating", "GRID_LOST", "Islanded"),
    (der.TABLE, "Islanded", "PRODUCING", "Islanded"),
    (der.TABLE, "Islanded", "DISCONNECTED", "Offline"),
    (der.TABLE, "Offline", "PRODUCING", "Offline"),
    (der.TABLE, "Generating", "INVERTER_FAULT", "Faulted"),
    (der.TABLE, "Faulted", "FAULT_CLEARED", "Offline"),
    (der.TABLE, "Maintenance", "MAINTENANCE_END", "Offline"),
]


@pytest.mark.parametrize(
    ("table", "state", "event", "expected"), CASES, ids=[f"{t.states.__name__}:{s}+{e.lower()}" for t, s, e, _ in CASES]
)
def test_transition(table, state: str, event: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    assert table.next(table.states(state), table.events[event]).value == expected
