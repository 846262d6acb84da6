"""What becomes of every kind of message the agents put on the internal bus.

One table, as data. Each kind is `handled` (an agent acts on it: a tap setting, a capacitor
step, a flag that changes what the agent does), a `notice` (published on MQTT at
`<base>/notices/<kind>` for the control centre and the outage and asset systems), or `both`.
A kind missing from the table is a bug: tests/test_notices.py drives every agent type through
its behaviours and fails on a kind it does not find here, and checks docs/mqtt.md against it.

A notice's payload is stable: the envelope fields (`time`, `source`, `kind`, `targets`) and then
exactly the fields listed for its kind, null where an element has nothing to say for one.
Messages with the same source, kind and payload in one batch (one decision told to several
agents, e.g. "prepare for power loss" to each transformer of a line) make one notice, with the
recipients in `targets`.

Notices are events, never retained: a retained message is one per topic, so a retained
`notices/breaker_lockout` would show only the last breaker's. Standing conditions are in the
retained `state/<agent_id>` topics (Locked_Out, Maintenance, Overloaded, Feeder_Fault …).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.agents.actions import BusMessage


class Disposition(enum.Enum):
    HANDLED = "handled"
    NOTICE = "notice"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class MessageKind:
    kind: str
    disposition: Disposition
    emitted_by: tuple[str, ...]
    """Agent types (AgentType values) that send it; `runtime` for the runtime's own summaries."""
    fields: tuple[str, ...]
    """The notice's payload fields after the envelope (empty for a kind that is only handled)."""
    what: str
    """What it says, for people."""
    handler: str = ""
    """Who acts on it and how (handled kinds)."""

    @property
    def published(self) -> bool:
        return self.disposition is not Disposition.HANDLED


_H, _N, _B = Disposition.HANDLED, Disposition.NOTICE, Disposition.BOTH
_LOAD = ("current_a", "ampacity", "loading_percent", "thermal_level", "customers")

KINDS: tuple[MessageKind, ...] = (
    # circuit breaker
    MessageKind(
        "breaker_trip",
        _N,
        ("circuit_breaker",),
        (
            "breaker",
            "line",
            "cause",
            "element",
            "phase",
            "fault_current_a",
            "trip_count",
            "sequence_trips",
            "customers",
        ),
        "a protection trip and what it says happened (cause: phase_fault, ground_fault, overload, "
        "thermal_overload, breaker_failure, undervoltage, overvoltage, underfrequency, overfrequency)",
    ),
    MessageKind(
        "breaker_lockout",
        _N,
        ("circuit_breaker",),
        ("breaker", "line", "trips", "cause", "last_trip", "trip_count", "customers"),
        "locked out after `trips` trips: manual intervention required",
    ),
    MessageKind(
        "fault_cleared_downstream",
        _H,
        ("circuit_breaker",),
        (),
        "a breaker cleared a fault whose through-current the breaker upstream of it saw",
        "the upstream breaker agent drops its protection pickup and returns to Closed_Normal",
    ),
    MessageKind(
        "maintenance_due",
        _N,
        ("circuit_breaker",),
        (
            "element",
            "element_type",
            "reason",
            "contact_wear_ka2s",
            "contact_wear_limit_ka2s",
            "operations",
            "maintenance_operations",
            "customers",
        ),
        "contact wear or operations count calls for maintenance (for the asset system)",
    ),
    # power line
    MessageKind(
        "reduce_load",
        _H,
        ("power_line",),
        (),
        "an overloaded line asks its transformers to reduce load",
        "each transformer turns conservation voltage reduction on",
    ),
    MessageKind(
        "prepare_for_trip",
        _N,
        ("power_line",),
        ("line", "state", "breakers", *_LOAD),
        "an overloaded or emergency line warns that its breaker(s) may trip",
    ),
    MessageKind(
        "line_overload",
        _N,
        ("power_line",),
        ("line", *_LOAD, "transfer_options"),
        "a line above ampacity for its persistence time, with the ties that could take load",
    ),
    MessageKind(
        "line_emergency", _N, ("power_line",), ("line", *_LOAD), "a line at its emergency loading or thermal limit"
    ),
    MessageKind(
        "line_fault",
        _N,
        ("power_line",),
        ("line", "breaker", "cause", "description", "current_a", "peak_current_a", "customers", "transfer_options"),
        "a fault on the line (cause: the breaker's trip cause, or fault_current when the line saw it)",
    ),
    MessageKind(
        "prepare_for_power_loss",
        _N,
        ("power_line",),
        ("line", "transformers", "description", "customers"),
        "a faulted line tells its transformers that they lose supply",
    ),
    MessageKind(
        "standby_for_load_transfer",
        _N,
        ("power_line",),
        ("line", "adjacent_lines", "transfer_options", "customers"),
        "a faulted line asks its neighbours to stand by to take its load",
    ),
    MessageKind(
        "line_fault_cleared",
        _N,
        ("power_line",),
        ("line", "cause", "description", "fault_duration_s"),
        "the line's breaker is closed again with normal current",
    ),
    MessageKind(
        "line_maintenance",
        _N,
        ("power_line",),
        ("line", "customers", "transfer_options"),
        "a line taken out for maintenance: the customers of a planned outage",
    ),
    # substation
    MessageKind(
        "load_transfer_request",
        _N,
        ("substation", "transformer"),
        ("element", "element_type", "load_percent", "available_kva", "time_to_capacity_s", "transfer_options"),
        "a substation near capacity (or a transformer above its notice level) asks for load to be moved",
    ),
    MessageKind(
        "load_shedding_plan",
        _N,
        ("substation",),
        ("substation", "state", "load_percent", "target_percent", "plan", "customers", "critical_customers"),
        "feeders to open, least critical first, until the load is under target (run by the `shed` request)",
    ),
    MessageKind(
        "optimize_taps",
        _H,
        ("substation",),
        (),
        "the substation asks its transformers to optimise taps",
        "each transformer turns conservation voltage reduction on (cvr true) or off",
    ),
    MessageKind(
        "maximize_var_support",
        _H,
        ("substation",),
        (),
        "the substation asks its capacitor banks for maximum reactive support",
        "each bank keeps its steps in and closes more up to its voltage set point (on) or stops (off)",
    ),
    MessageKind(
        "reroute_plan",
        _N,
        ("substation",),
        (
            "feeder",
            "isolate_with",
            "description",
            "customers_affected",
            "critical_customers_affected",
            "reroute_options",
        ),
        "a feeder fault: what isolates it, who is affected, the ties that could feed it",
    ),
    MessageKind(
        "customer_impact",
        _N,
        ("runtime",),
        (
            "event",
            "breakers",
            "customers",
            "critical_customers",
            "critical_meters",
            "by_line",
            "by_transformer",
            "interruption_s",
            "reclose_pending",
        ),
        "customers that lost (event supply_lost) or got back (supply_restored) supply, from the breakers' "
        "positions, by line section and transformer",
    ),
    # transformer
    MessageKind(
        "tap_limit",
        _N,
        ("transformer",),
        ("transformer", "tap_position", "control_voltage_v", "regulated_voltage_v"),
        "the tap changer is at its limit and the voltage is still out of band",
    ),
    MessageKind(
        "emergency_load_reduction",
        _N,
        ("transformer",),
        ("transformer", "hot_spot_c", "hot_spot_critical_c", "load_percent", "customers"),
        "hot spot above critical: the transformer's load must come down",
    ),
    MessageKind(
        "maintenance_request",
        _B,
        ("transformer",),
        (
            "element",
            "element_type",
            "reason",
            "hot_spot_c",
            "top_oil_c",
            "loss_of_life_percent",
            "equivalent_aging_factor",
            "loss_of_life_percent_day",
            "failure_probability",
            "horizon_days",
            "failure_mode",
            "failure_mode_key",
            "recommended_within_days",
            "contributions",
            "dga_status",
            "duval_zone",
            "health",
            "customers",
            "critical_customers",
        ),
        "a transformer asks for maintenance: its probability of failure within the horizon reached the site's "
        "threshold, its dissolved gases are at C57.104 status 3, its hot spot is above critical, or its "
        "insulation aged fast",
        "the gateway's maintenance coordinator makes a work order of it (window, backup plans, customer "
        "notices; docs/maintenance.md)",
    ),
    MessageKind(
        "capacity_constraint",
        _N,
        ("transformer",),
        ("transformer", "load_percent", "available_kva", "customers"),
        "a transformer above its capacity notice level",
    ),
    # capacitor bank
    MessageKind(
        "excessive_switching",
        _N,
        ("capacitor_bank",),
        ("capacitor", "operations", "bandwidth_v"),
        "too many operations in the window: the bank widened its deadband",
    ),
    MessageKind(
        "deadband_restored",
        _N,
        ("capacitor_bank",),
        ("capacitor", "bandwidth_v"),
        "the switching window is quiet again: normal deadband",
    ),
    # renewable energy
    MessageKind(
        "der_disconnected",
        _N,
        ("renewable_energy",),
        ("der", "reason", "generation_kw"),
        "a DER disconnected (anti-islanding on loss of grid)",
    ),
    MessageKind(
        "voltage_support",
        _N,
        ("renewable_energy",),
        ("der", "voltage_pu", "p_limit_pct", "q_kvar"),
        "a DER limits its output against high voltage (volt-watt); once per episode",
    ),
    # smart meters
    MessageKind(
        "meter_outage",
        _N,
        ("smart_meter",),
        ("group", "transformer", "meters", "critical_meters"),
        "meters report no power (the meters' own view of an outage)",
    ),
    MessageKind(
        "service_restored",
        _N,
        ("smart_meter",),
        ("group", "transformer", "meters", "critical_meters", "mean_outage_s"),
        "meters report power again after an outage",
    ),
    MessageKind(
        "revenue_protection",
        _N,
        ("runtime",),
        (
            "transformer",
            "groups",
            "finding",
            "window_s",
            "transformer_kwh",
            "metered_kwh",
            "losses_kwh",
            "gap_kwh",
            "gap_percent",
            "threshold_percent",
            "windows_over",
            "suspects",
        ),
        "a transformer's energy and its meters' disagree beyond the threshold for several windows: "
        "unexplained energy (theft, a bypassed meter) or over-registration (a faulty meter), with the "
        "suspected meters ranked",
    ),
    MessageKind(
        "low_voltage_at_customer",
        _B,
        ("smart_meter",),
        ("group", "transformer", "meters", "critical_meters", "lowest_voltage_v", "nominal_voltage_v"),
        "customers below the voltage range",
        "their transformer turns conservation voltage reduction off",
    ),
)

BY_KIND: dict[str, MessageKind] = {k.kind: k for k in KINDS}
NOTICE_TOPIC = "notices"


def notices(messages: Iterable[BusMessage], wall: float) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(topic suffix, payload) for the published kinds among `messages`, one per decision, and
    the kinds missing from the table (published with their whole payload, never dropped)."""
    out: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
    unknown: list[str] = []
    for message in messages:
        spec = BY_KIND.get(message.kind)
        if spec is not None and not spec.published:
            continue
        if spec is None:
            unknown.append(message.kind)
            fields = {str(k): plain(v) for k, v in message.payload.items()}
        else:
            fields = {name: plain(message.payload.get(name)) for name in spec.fields}
        key = (message.source, message.kind, repr(fields))
        if key in out:
            if message.target is not None:
                out[key][1]["targets"].append(message.target)
            continue
        payload = {
            "time": wall,
            "source": message.source,
            "kind": message.kind,
            "targets": [message.target] if message.target is not None else [],
            **fields,
        }
        out[key] = (f"{NOTICE_TOPIC}/{message.kind}", payload)
    return list(out.values()), unknown


def plain(value: Any) -> Any:
    """A payload value msgpack can carry: numpy scalars to Python, tuples to lists, NaN to null."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table_rows() -> Sequence[dict[str, Any]]:
    """The table as plain rows (for docs and tools)."""
    return [
        {
            "kind": k.kind,
            "disposition": k.disposition.value,
            "emitted_by": list(k.emitted_by),
            "fields": list(k.fields),
            "what": k.what,
            "handler": k.handler,
        }
        for k in KINDS
    ]
