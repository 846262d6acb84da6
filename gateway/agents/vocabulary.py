"""The point names each agent type reads or writes, with the kind and unit each must have.

An agent's `points` table in the site file maps these names to point ids of the process image.
A name outside this vocabulary would be read by nobody, so a typo is a site-file error; a
measurement mapped to a point of the wrong kind or unit, or a command mapped to a point the
gateway cannot write, is one too. The site file's validation (`gateway.site`) checks every
agent against this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.agents.schema import AgentType


@dataclass(frozen=True, slots=True)
class PointName:
    kinds: frozenset[str]
    """Point kinds accepted (analog, binary, counter)."""
    units: frozenset[str] = frozenset()
    """Units accepted when the point states one (an empty unit is not checked); empty: any."""
    command: bool = False
    """Written by the gateway: the point must be writable (Modbus) or a control (IEC 61850)."""

    def describe(self) -> str:
        kinds = " or ".join(sorted(self.kinds))
        unit = f" in {' or '.join(sorted(self.units))}" if self.units else ""
        what = f"{'writable ' if self.command else ''}{kinds} point{unit}"
        return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


_ANALOG = frozenset({"analog"})
_BINARY = frozenset({"binary"})
_COUNT = frozenset({"analog", "counter"})


def _a(*units: str) -> PointName:
    return PointName(_ANALOG, frozenset(units))


_KV, _KW, _KVAR, _AMP = _a("kV"), _a("kW"), _a("kvar", "kVAr", "kVAR"), _a("A")
_TEMP = _a("degC", "°C", "C")
_HZ = _a("Hz")
_BIT = PointName(_BINARY)
_BIT_CMD = PointName(_BINARY, command=True)
_SETPOINT = PointName(_ANALOG, command=True)
_PHASORS = {f"v{p}_kv": _KV for p in "abc"} | {f"{q}{p}_deg": _a("deg", "°") for q in "vi" for p in "abc"}
_GASES = {f"{gas}_ppm": _a("ppm") for gas in ("h2", "ch4", "c2h6", "c2h4", "c2h2", "co", "co2")}

POINT_NAMES: dict[AgentType, dict[str, PointName]] = {
    AgentType.SUBSTATION: {"bus_voltage_kv": _KV, "total_load_kw": _KW, "total_load_kvar": _KVAR,
                           "frequency_hz": _HZ},
    AgentType.CIRCUIT_BREAKER: {
        "ia": _AMP, "ib": _AMP, "ic": _AMP, "in": _AMP, "closed": _BIT, "operations": PointName(_COUNT),
        "voltage_kv": _KV, "frequency_hz": _HZ, "active_power_kw": _KW, "reactive_power_kvar": _KVAR,
        "fpi": _BIT, "local": _BIT,
        "trip_cmd": _BIT_CMD, "close_cmd": _BIT_CMD, "position_cmd": _BIT_CMD, "fpi_reset": _BIT_CMD,
        **_PHASORS,
    },
    AgentType.POWER_LINE: {"current_a": _AMP, "voltage_kv": _KV, "active_power_kw": _KW,
                           "reactive_power_kvar": _KVAR, "end_voltage_kv": _KV},
    AgentType.TRANSFORMER: {
        "load_kw": _KW, "load_kvar": _KVAR, "primary_power_kw": _KW, "top_oil_temp_c": _TEMP,
        "ambient_temp_c": _TEMP, "secondary_voltage_v": _a("V"), "current_a": _AMP,
        "tap_position": PointName(_COUNT), "fans_running": PointName(_COUNT | _BINARY),
        "operating_hours": PointName(_COUNT, frozenset({"h"})),
        "tap_setpoint": _SETPOINT, **_GASES,
    },
    AgentType.CAPACITOR_BANK: {"bus_voltage_kv": _KV, "reactive_power_kvar": _KVAR,
                               "source_reactive_power_kvar": _KVAR, "ambient_temp_c": _TEMP,
                               "steps_active": PointName(_COUNT), "steps_cmd": _SETPOINT},
    AgentType.RENEWABLE_ENERGY: {
        "active_power_kw": _KW, "reactive_power_kvar": _KVAR, "voltage_pu": _a("pu"),
        "irradiance_w_m2": _a("W/m2", "W/m²"), "connected": _BIT, "soc_pct": _a("%"),
        "energy_available_kwh": _a("kWh"), "energy_kwh": PointName(_COUNT, frozenset({"kWh"})),
        "ambient_temp_c": _TEMP,
        "p_limit_pct": PointName(_ANALOG, frozenset({"%"}), command=True), "p_setpoint_kw":
            PointName(_ANALOG, frozenset({"kW"}), command=True),
        "q_setpoint_kvar": PointName(_ANALOG, frozenset({"kvar", "kVAr", "kVAR"}), command=True),
        "connect_cmd": _BIT_CMD,
    },
    AgentType.SMART_METER: {},
}
"""Agent type → point name → what the point must be."""
