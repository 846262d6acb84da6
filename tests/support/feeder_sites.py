"""Generated substations with sectionalised feeders, for switching, FLISR tests and benchmarks.

`feeder_site(n)` builds a site document: one substation, `n` feeders (a protected breaker and a
line each), `sections - 1` mid-line switching devices per feeder with fault-passage indicators,
a transformer with a meter group in every section, and normally-open ties joining feeder `k`'s
far end to feeder `k+1`'s (a chain). Every device has a Modbus TCP IED with its position, its
commands, its indicator, its current and its local/remote switch.
"""

from __future__ import annotations

from typing import Any

from gateway.config import SiteConfig, validate


def _ied(dev: str, port: int, *, breaker: bool) -> dict[str, Any]:
    points: list[dict[str, Any]] = [
        {"id": f"{dev}.ia", "address": 0, "type": "float32", "unit": "A"},
        {"id": f"{dev}.ib", "address": 2, "type": "float32", "unit": "A"},
        {"id": f"{dev}.ic", "address": 4, "type": "float32", "unit": "A"},
        {"id": f"{dev}.voltage_kv", "address": 8, "type": "float32", "unit": "kV"},
        {"id": f"{dev}.closed", "address": 0, "function": "discrete", "type": "bool"},
        {"id": f"{dev}.trip_cmd", "address": 0, "function": "coil", "type": "bool", "writable": True},
        {"id": f"{dev}.close_cmd", "address": 1, "function": "coil", "type": "bool", "writable": True},
    ]
    if not breaker:
        points += [
            {"id": f"{dev}.fpi", "address": 1, "function": "discrete", "type": "bool"},
            {"id": f"{dev}.local", "address": 2, "function": "discrete", "type": "bool"},
            {"id": f"{dev}.fpi_reset", "address": 2, "function": "coil", "type": "bool", "writable": True},
        ]
    return {
        "id": f"IED-{dev}",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit_id": 1,
        "poll_period_ms": 100,
        "points": points,
    }


def _device_points(dev: str, *, breaker: bool) -> dict[str, str]:
    names = ["ia", "ib", "ic", "closed", "trip_cmd", "close_cmd"]
    if not breaker:
        names += ["fpi", "local", "fpi_reset", "voltage_kv"]
    return {n: f"{dev}.{n}" for n in names}


def feeder_site(
    n_feeders: int = 3,
    sections: int = 3,
    *,
    line_length_m: float = 4000.0,
    ampacity_a: float = 400.0,
    section_load_kw: float | list[list[float]] = 900.0,
    customers: int = 200,
    function: str = "load_break_switch",
    ties: str = "chain",
    critical: dict[str, int] | None = None,
    external_tie: bool = False,
    port_base: int = 20000,
    substation: str = "SUB-1",
    external_source: str = "SUB-9/LINE-91",
    external_tie_points: bool = True,
) -> dict[str, Any]:
    """A site document (validate with `site_config`). Ids: `CB-<k>`, `LINE-<k>`, `SW-<k>-<s>`
    (before section s+1), `XFMR-<k>-<s>`, `MTR-<k>-<s>`, `TIE-<k>-<k+1>`; k from 1."""
    ieds: list[dict[str, Any]] = []
    agents: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    protection: list[dict[str, Any]] = []
    sim_loads: dict[str, Any] = {}
    port = port_base
    agents.append(
        {
            "id": substation,
            "type": "substation",
            "attributes": {
                "rated_capacity": max(40.0, 4.0 * n_feeders),
                "secondary_voltage": 11.0,
                "num_feeders": n_feeders,
            },
            "connection_rules": [{"target_id": f"CB-{k}", "canonical_type": "supply"} for k in range(1, n_feeders + 1)],
        }
    )
    step = line_length_m / sections
    for k in range(1, n_feeders + 1):
        cb, line = f"CB-{k}", f"LINE-{k}"
        ieds.append(_ied(cb, port, breaker=True))
        port += 1
        agents.append(
            {
                "id": cb,
                "type": "circuit_breaker",
                "attributes": {"rated_current": 630.0},
                "points": _device_points(cb, breaker=True),
                "connection_rules": [{"target_id": line, "canonical_type": "supply"}],
            }
        )
        protection.append(
            {
                "breaker": cb,
                "elements": {"51P": {"curve": "iec_si", "pickup_a": 480.0, "tms": 0.1}},
                "reclose": {"shots": 2, "dead_times_s": [0.5, 5.0], "reclaim_s": 10.0},
            }
        )
        agents.append(
            {
                "id": line,
                "type": "power_line",
                "attributes": {"length": line_length_m, "ampacity": ampacity_a},
                "connection_rules": [{"target_id": cb, "canonical_type": "depends_on"}],
            }
        )
        for s in range(1, sections + 1):
            if s < sections:
                sw = f"SW-{k}-{s}"
                ieds.append(_ied(sw, port, breaker=False))
                port += 1
                agents.append(
                    {
                        "id": sw,
                        "type": "circuit_breaker",
                        "attributes": {"function": function, "rated_current": 630.0, "fpi_pickup_a": 600.0},
                        "points": _device_points(sw, breaker=False),
                        "connection_rules": [
                            {"target_id": line, "canonical_type": "depends_on", "position_m": s * step}
                        ],
                    }
                )
            xf = f"XFMR-{k}-{s}"
            ieds.append(
                {
                    "id": f"IED-{xf}",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "unit_id": 1,
                    "points": [
                        {"id": f"{xf}.load_kw", "address": 0, "type": "float32", "unit": "kW"},
                        {"id": f"{xf}.load_kvar", "address": 2, "type": "float32", "unit": "kvar"},
                    ],
                }
            )
            port += 1
            agents.append(
                {
                    "id": xf,
                    "type": "transformer",
                    "attributes": {"rated_capacity": 2500.0, "primary_voltage": 11.0},
                    "points": {"load_kw": f"{xf}.load_kw", "load_kvar": f"{xf}.load_kvar"},
                    "connection_rules": [
                        {"target_id": line, "canonical_type": "depends_on", "position_m": (s - 0.5) * step}
                    ],
                }
            )
            group = {"id": f"MTR-{k}-{s}", "prefix": f"M{k}{s}", "count": customers, "connected_transformer": xf}
            if critical and group["id"] in critical:
                group["critical_meters"] = [f"M{k}{s}-{n:05d}" for n in range(1, critical[group["id"]] + 1)]
            groups.append(group)
            kw = section_load_kw if isinstance(section_load_kw, float | int) else section_load_kw[k - 1][s - 1]
            sim_loads[xf] = {"peak_kw": float(kw), "power_factor": 0.95}
    pairs = [(k, k + 1) for k in range(1, n_feeders)]
    if ties == "ring" and n_feeders > 2:
        pairs.append((n_feeders, 1))
    for a, b in pairs:
        tie = f"TIE-{a}-{b}"
        ieds.append(_ied(tie, port, breaker=False))
        port += 1
        agents.append(
            {
                "id": tie,
                "type": "circuit_breaker",
                "attributes": {"function": "load_break_switch", "normally_open": True, "rated_current": 630.0},
                "points": _device_points(tie, breaker=False),
                "connection_rules": [
                    {"target_id": f"LINE-{a}", "canonical_type": "route", "position_m": line_length_m},
                    {"target_id": f"LINE-{b}", "canonical_type": "route", "position_m": line_length_m},
                ],
            }
        )
    if external_tie:
        tie = "TIE-EXT"
        ieds.append(_ied(tie, port, breaker=False))
        points = _device_points(tie, breaker=False)
        if not external_tie_points:  # the neighbour operates it: this site only reads it
            points = {n: p for n, p in points.items() if n in ("closed", "voltage_kv", "ia", "ib", "ic")}
        agents.append(
            {
                "id": tie,
                "type": "circuit_breaker",
                "attributes": {
                    "function": "load_break_switch",
                    "normally_open": True,
                    "external_source": external_source,
                },
                "points": points,
                "connection_rules": [
                    {"target_id": f"LINE-{n_feeders}", "canonical_type": "route", "position_m": line_length_m}
                ],
            }
        )
    return {
        "site": {
            "region": "test",
            "substation_id": substation,
            "state_dir": "/tmp/stima-test",
            "runtime_dir": "/tmp/stima-test-run",
        },
        "uplink": {"broker_host": "127.0.0.1", "transport": "tcp"},
        "ieds": ieds,
        "agents": agents,
        "meter_groups": groups,
        "protection": protection,
        "simulation": {"loads": sim_loads},
    }


def site_config(doc: dict[str, Any]) -> SiteConfig:
    return validate(doc, "generated-site.toml")
