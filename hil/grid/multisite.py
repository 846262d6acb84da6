"""Several site files as one simulated network: neighbouring substations joined by their ties.

Each gateway has its own site file, and a tie between two substations appears in both: in each
as an *external tie* (`attributes.external_source = "<other substation>/<its feeder>"`), since
from either side the far end is someone else's feeder. Served together, the simulator needs one
network in which closing that tie really couples the two: `merge_sites` builds one `SiteConfig`
holding every substation, in which each such pair of external ties becomes one tie between the
two feeders (route rules to both lines, at the positions each file gives). A tie whose
`external_source` names a substation that is not loaded stays external (an ideal source behind
its fault level, as when one file is served alone).

What may appear in more than one file, and how it is joined:

- an IED with the same id (the tie's RTU that both gateways poll): the same endpoint (protocol,
  host, port, unit id); its points are the union, a point in both at the same register;
- an agent with the same id: only such a tie; the joined tie keeps the attributes of the file
  that commands it (gives it command points), the union of the points;
- `[simulation]`: keys holding per-element tables (`loads`, `positions_m`, `external_sources`,
  `capacitor_steps`, `sunspec`, `storage`, `load_models`) are joined; the grid behind each
  substation (`nominal_kv`, `source_*`) goes to `sources.<substation>`; every other key (time of
  day, weather, noise, device timings) is taken from the first file, and a different value in
  another file is reported.

Everything else (IED, point, agent, meter group ids; protection schemes) must be unique across
the files; a clash is an error naming both files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.agents.schema import AgentType
from gateway.config import AgentConfig, CanonicalType, ConnectionRule, SiteConfig

log = logging.getLogger(__name__)

SOURCE_KEYS = ("nominal_kv", "source_sc_mva", "source_x_r", "source_z0_z1", "source_voltage_pu")
TABLE_KEYS = ("loads", "positions_m", "external_sources", "capacitor_steps", "sunspec", "storage", "load_models")
COMMAND_NAMES = frozenset({"trip_cmd", "close_cmd", "position_cmd"})


class MergeError(ValueError):
    """The site files cannot be served as one network; the message names the files and ids."""


@dataclass(frozen=True, slots=True)
class JoinedTie:
    device: str
    ends: tuple[tuple[str, str], ...]
    """(substation, line) of each side."""
    owner: str
    """The substation whose file commands the tie (or the first, when none does)."""


def _substation(site: SiteConfig) -> str:
    return site.site.substation_id


def _external_source(agent: AgentConfig) -> str | None:
    value = agent.attributes.get("external_source")
    return value if isinstance(value, str) else None


def _routes(agent: AgentConfig) -> list[ConnectionRule]:
    return [r for r in agent.connection_rules if r.canonical_type is CanonicalType.ROUTE]


def merge_sites(sites: Sequence[SiteConfig], names: Sequence[str] | None = None) -> tuple[SiteConfig, list[JoinedTie]]:
    """One site holding every substation of `sites`, their shared ties joined; and those ties."""
    if not sites:
        raise MergeError("no site file given")
    labels = list(names) if names is not None else [_substation(s) for s in sites]
    if len(sites) == 1:
        return sites[0], []
    subs = [_substation(s) for s in sites]
    if len(set(subs)) != len(subs):
        raise MergeError(f"two site files describe the same substation: {', '.join(subs)}")
    label_of = dict(zip(subs, labels, strict=True))

    # ties named in more than one file
    agents_by_id: dict[str, list[tuple[str, AgentConfig]]] = {}
    for site in sites:
        for agent in site.agents:
            agents_by_id.setdefault(agent.id, []).append((_substation(site), agent))
    joined: list[JoinedTie] = []
    merged_agents: dict[str, AgentConfig] = {}
    for agent_id, copies in agents_by_id.items():
        if len(copies) == 1:
            sub, agent = copies[0]
            ext = _external_source(agent)
            if ext is not None and ext.split("/", 1)[0] in subs:
                raise MergeError(
                    f"{label_of[sub]}: {agent_id} is an external tie to {ext}, but "
                    f"{label_of[ext.split('/', 1)[0]]} has no tie {agent_id}: give the tie the same id "
                    "in both files"
                )
            merged_agents[agent_id] = agent
            continue
        merged_agents[agent_id] = _join_tie(agent_id, copies, label_of, joined)

    # IEDs: the same id only for the same device
    ieds: dict[str, Any] = {}
    ied_site: dict[str, str] = {}
    for site in sites:
        for ied in site.ieds:
            have = ieds.get(ied.id)
            if have is None:
                ieds[ied.id], ied_site[ied.id] = ied, _substation(site)
                continue
            ieds[ied.id] = _join_ied(have, ied, f"{label_of[ied_site[ied.id]]} and {label_of[_substation(site)]}")
    point_owner: dict[str, str] = {}
    for ied in ieds.values():
        for point in ied.points:
            if point.id in point_owner:
                raise MergeError(f"point {point.id} is in IEDs {point_owner[point.id]} and {ied.id}")
            point_owner[point.id] = ied.id

    groups: dict[str, Any] = {}
    for site in sites:
        for group in site.meter_groups:
            if group.id in groups or group.id in merged_agents:
                raise MergeError(f"{label_of[_substation(site)]}: meter group id {group.id} is used by another file")
            groups[group.id] = group
    breakers: set[str] = set()
    protection = []
    for site in sites:
        for scheme in site.protection:
            if scheme.breaker in breakers:
                raise MergeError(
                    f"{label_of[_substation(site)]}: breaker {scheme.breaker} has a protection scheme "
                    "in another file too"
                )
            breakers.add(scheme.breaker)
            protection.append(scheme)
    simulation = merge_simulation(sites, labels, {t.device for t in joined})
    first = sites[0]
    merged = first.model_copy(
        update={
            "ieds": list(ieds.values()),
            "agents": list(merged_agents.values()),
            "meter_groups": list(groups.values()),
            "protection": protection,
            "simulation": simulation,
            "demand_response": first.demand_response.model_copy(update={"programs": _programs(sites, label_of)}),
        }
    )
    return merged, joined


def _programs(sites: Sequence[SiteConfig], label_of: dict[str, str]) -> list[Any]:
    out: dict[str, Any] = {}
    for site in sites:
        for program in site.demand_response.programs:
            have = out.get(program.id)
            if have is not None and have != program:
                raise MergeError(
                    f"{label_of[_substation(site)]}: demand-response program {program.id} differs from "
                    "the one of that id in another file"
                )
            out[program.id] = program
    return list(out.values())


def _join_tie(
    agent_id: str, copies: list[tuple[str, AgentConfig]], label_of: dict[str, str], joined: list[JoinedTie]
) -> AgentConfig:
    where = " and ".join(label_of[s] for s, _ in copies)
    if len(copies) != 2:
        raise MergeError(
            f"agent {agent_id} is in {len(copies)} files ({where}); only a tie between two substations may be in two"
        )
    ends: list[tuple[str, str, ConnectionRule]] = []
    for sub, agent in copies:
        ext = _external_source(agent)
        routes = _routes(agent)
        if agent.type != AgentType.CIRCUIT_BREAKER or ext is None or len(routes) != 1:
            raise MergeError(
                f"agent {agent_id} is in {where}: only an external tie (a circuit_breaker with one route "
                "rule and attributes.external_source) may be in two files"
            )
        ends.append((sub, routes[0].target_id, routes[0]))
    (sub_a, line_a, _), (sub_b, line_b, _) = ends
    for (sub, _line, _), (other_sub, other_line, _) in ((ends[0], ends[1]), (ends[1], ends[0])):
        agent = dict(copies)[sub]
        expected = f"{other_sub}/{other_line}"
        if _external_source(agent) != expected:
            raise MergeError(
                f"{label_of[sub]}: {agent_id}.attributes.external_source is {_external_source(agent)!r}, "
                f"but the tie's other side is {expected!r} (in {label_of[other_sub]})"
            )
    commanding = [sub for sub, agent in copies if COMMAND_NAMES & set(agent.points)]
    if len(commanding) > 1:
        raise MergeError(f"{agent_id}: both {where} give it command points; one substation owns a tie")
    owner = commanding[0] if commanding else copies[0][0]
    base = dict(copies)[owner]
    points: dict[str, str] = {}
    for _sub, agent in copies:
        for name, pid in agent.points.items():
            if points.setdefault(name, pid) != pid:
                raise MergeError(f"{agent_id}.points.{name}: {points[name]} in one file, {pid} in the other")
    attributes = {k: v for k, v in base.attributes.items() if k != "external_source"}
    rules = [r for r in base.connection_rules if r.canonical_type is not CanonicalType.ROUTE]
    rules += [rule for _s, _l, rule in ends]
    joined.append(JoinedTie(agent_id, ((sub_a, line_a), (sub_b, line_b)), owner))
    return base.model_copy(update={"attributes": attributes, "points": points, "connection_rules": rules})


def _join_ied(a: Any, b: Any, where: str) -> Any:
    key = ("protocol", "host", "port", "unit_id", "serial_port")
    if any(getattr(a, k, None) != getattr(b, k, None) for k in key):
        raise MergeError(f"IED {a.id} is in {where} with different endpoints: one IED id, one device")
    points = {p.id: p for p in a.points}
    for point in b.points:
        have = points.get(point.id)
        if have is None:
            points[point.id] = point
            continue
        same = have.model_dump(exclude={"writable", "deadband", "valid_range", "unit"}) == point.model_dump(
            exclude={"writable", "deadband", "valid_range", "unit"}
        )
        if not same:
            raise MergeError(f"IED {a.id} point {point.id}: a different register in {where}")
        if point.writable and not have.writable:
            points[point.id] = point
    return a.model_copy(update={"points": list(points.values())})


def merge_simulation(sites: Sequence[SiteConfig], labels: Sequence[str], joined_ties: set[str]) -> dict[str, Any]:
    """The `[simulation]` tables of several files as one (see the module docstring)."""
    out: dict[str, Any] = {}
    sources: dict[str, dict[str, Any]] = {}
    for n, site in enumerate(sites):
        sim = dict(site.simulation or {})
        sources[_substation(site)] = {k: sim.pop(k) for k in SOURCE_KEYS if k in sim}
        given_sources = sim.pop("sources", None)
        if given_sources:
            raise MergeError(
                f"{labels[n]}: simulation.sources is filled from each file's own source keys; "
                "give nominal_kv and source_* at the top of [simulation] instead"
            )
        for key in TABLE_KEYS:
            table = sim.pop(key, None)
            if table is None:
                continue
            target = out.setdefault(key, {})
            for element, value in table.items():
                if key == "external_sources" and element in joined_ties:
                    continue  # no longer external: the other substation is in the model
                if element in target and target[element] != value:
                    if key == "load_models":
                        log.warning(
                            "%s: simulation.load_models.%s differs from the first file's; the first is kept",
                            labels[n],
                            element,
                        )
                        continue
                    raise MergeError(f"{labels[n]}: simulation.{key}.{element} is given differently in another file")
                target[element] = value
        for key, value in sim.items():
            if key not in out:
                out[key] = value
            elif out[key] != value:
                log.warning(
                    "%s: simulation.%s = %r differs from the first file's %r; the first is kept (one "
                    "clock and one sky for every substation)",
                    labels[n],
                    key,
                    value,
                    out[key],
                )
    out["sources"] = sources
    return out


def load_sites(paths: Sequence[str | Path]) -> tuple[list[SiteConfig], SiteConfig, list[JoinedTie]]:
    """Load and validate each site file, then merge them (ConfigError / MergeError on problems)."""
    from gateway import config

    sites = [config.load(p) for p in paths]
    merged, joined = merge_sites(sites, [str(p) for p in paths])
    return sites, merged, joined
