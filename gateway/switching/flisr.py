"""Fault location, isolation and service restoration (FLISR), planned as a switching sequence.

After protection locks a feeder out, the planner

1. **locates** the fault: the nodes the locked-out breaker fed, narrowed by the fault-passage
   indicators (a device whose indicator latched lies between the breaker and the fault, one
   whose indicator stayed reset does not), then by the distance the protection's fault current
   suggests where indicators are missing;
2. **isolates** it: opens every closed device on the boundary of that zone; a device that cannot
   be operated (local mode, unknown position, tagged, failed) widens the zone to the next one;
3. **restores upstream**: closes the locked-out breaker once the zone is isolated (when the
   fault is not in the first section);
4. **restores downstream**: the healthy sections beyond the zone are picked up through ties to
   neighbouring feeders, splitting them at their own devices where one tie cannot carry them
   all, choosing the combination that restores the most customers (critical ones first) with
   no element above its limit by the power-flow estimate, and the fewest operations.

Everything here is pure: it takes the network, the configuration, the indicators and the loads,
and returns a plan. Executing it is the sequence runner's job, through the switching authority.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.switching.network import SQRT3, Network

MAX_COMBINATIONS = 4096
"""Beyond this many split/tie combinations the restoration search turns greedy."""
DISTANCE_TOLERANCE = 0.3
"""Relative tolerance of the distance estimated from the fault current (magnitudes only)."""
MIN_DISTANCE_TOLERANCE_M = 300.0
FPI_WINDOW_S = 2.0
"""An indicator counts for a fault when it latched at most this long before the fault's first trip."""


@dataclass(frozen=True, slots=True)
class Location:
    zone: tuple[str, ...]
    method: str
    distance_m: float | None = None
    contradictions: int = 0
    """Indicators that disagree with the chosen zone (a failed indicator, or a meshed feed)."""
    distance_method: str | None = None
    """How the distance was estimated: the relay's loop impedance (takagi, reactance, ...) or the
    fault current's magnitude."""


@dataclass(frozen=True, slots=True)
class PlannedStep:
    device: str
    action: str
    purpose: str
    """isolate, restore_upstream, split, transfer."""
    note: str = ""


@dataclass
class Plan:
    breaker: str
    location: Location
    zone: tuple[str, ...]
    """The nodes left isolated (the located zone, widened where devices could not be used)."""
    steps: list[PlannedStep]
    feeder: tuple[str, ...]
    restored_upstream: tuple[str, ...]
    restored_downstream: tuple[str, ...]
    left_out: tuple[str, ...]
    customers_interrupted: int
    customers_restored: int
    critical_interrupted: int
    critical_restored: int
    estimate_ok: bool
    notes: list[str] = field(default_factory=list)

    @property
    def customers_left_out(self) -> int:
        return self.customers_interrupted - self.customers_restored

    def to_dict(self) -> dict[str, Any]:
        return {
            "breaker": self.breaker,
            "located_zone": list(self.location.zone),
            "located_by": self.location.method,
            "distance_m": self.location.distance_m,
            "distance_method": self.location.distance_method,
            "isolated_zone": list(self.zone),
            "steps": [
                {"device": s.device, "action": s.action, "purpose": s.purpose, "note": s.note} for s in self.steps
            ],
            "restored_upstream": list(self.restored_upstream),
            "restored_downstream": list(self.restored_downstream),
            "left_out": list(self.left_out),
            "customers_interrupted": self.customers_interrupted,
            "customers_restored": self.customers_restored,
            "customers_left_out": self.customers_left_out,
            "critical_interrupted": self.critical_interrupted,
            "critical_restored": self.critical_restored,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- location


def feeder_tree(
    network: Network, breaker: str, config: Mapping[str, bool | None]
) -> tuple[list[str], dict[str, tuple[str, str | None]]]:
    """The nodes `breaker` feeds in `config` (taken as closed), and each one's parent edge."""
    closed = dict(config)
    closed[breaker] = True
    dev = network.devices[breaker]
    root = dev.b
    parent: dict[str, tuple[str, str | None]] = {root: (dev.a, breaker)}
    order, queue = [root], deque([root])
    while queue:
        node = queue.popleft()
        for other, d in network.adjacent(node):
            if other in parent or other == dev.a or other in network.sources:
                continue
            if d is not None and not closed.get(d):
                continue
            parent[other] = (node, d)
            order.append(other)
            queue.append(other)
    return order, parent


def _distance_range(network: Network, node: str, root_line: str) -> tuple[float, float] | None:
    sec = network.sections.get(node)
    if sec is None or sec.line != root_line:
        return None
    return sec.from_m, sec.to_m


def estimate_distance_m(network: Network, breaker: str, current_a: float, voltage_kv: float | None) -> float | None:
    """Distance to a bolted fault from the impedance the relay saw (|V| / (√3 |I|) against the
    line's |z1| per metre); None without a during-fault voltage."""
    if voltage_kv is None or not (current_a > 0) or not math.isfinite(voltage_kv) or voltage_kv <= 0:
        return None
    first = network.sections.get(network.devices[breaker].b)
    if first is None or first.to_m <= first.from_m:
        return None
    z_per_m = abs(first.z_ohm) / (first.to_m - first.from_m)
    if z_per_m <= 0:
        return None
    z_seen = voltage_kv * 1000.0 / (SQRT3 * current_a)
    return z_seen / z_per_m


def locate(
    network: Network,
    breaker: str,
    config: Mapping[str, bool | None],
    indicators: Mapping[str, bool | None],
    *,
    distance_m: float | None = None,
) -> Location:
    """The nodes fed by `breaker` that agree best with the indicators (and the distance)."""
    order, parent = feeder_tree(network, breaker, config)
    behind: dict[str, set[str]] = {}  # device -> nodes fed through it
    for node in reversed(order):
        _, dev = parent[node]
        if dev is None or dev == breaker:
            continue
        sub = {node} | {n for n in order if _fed_through(n, node, parent)}
        behind[dev] = sub
    known = {d: v for d, v in indicators.items() if d in behind and v is not None}
    scored: dict[str, int] = {}
    for node in order:
        scored[node] = sum(1 for d, latched in known.items() if (node in behind[d]) != latched)
    best = min(scored.values(), default=0)
    zone = [n for n in order if scored[n] == best]
    method = "fault-passage indicators" if known else "feeder (no indicators)"
    if distance_m is not None:
        root_line = (
            network.sections[network.devices[breaker].b].line if network.devices[breaker].b in network.sections else ""
        )
        tol = max(MIN_DISTANCE_TOLERANCE_M, DISTANCE_TOLERANCE * distance_m)
        near = [
            n
            for n in zone
            if (r := _distance_range(network, n, root_line)) is not None and r[0] - tol <= distance_m <= r[1] + tol
        ]
        if near and len(near) < len(zone):
            zone = near
            method += " and distance from the fault current" if known else ""
            if not known:
                method = "distance from the fault current"
    return Location(zone=tuple(zone), method=method, distance_m=distance_m, contradictions=best)


def _fed_through(node: str, top: str, parent: Mapping[str, tuple[str, str | None]]) -> bool:
    seen = 0
    while node in parent and seen < 10_000:
        if node == top:
            return True
        node = parent[node][0]
        seen += 1
    return False


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True, slots=True)
class Unusable:
    device: str
    why: str


def plan(
    network: Network,
    breaker: str,
    config: Mapping[str, bool | None],
    location: Location,
    loads_kva: Mapping[str, complex],
    *,
    unusable: Mapping[str, str] | None = None,
    min_voltage_pu: float = 0.95,
    source_voltage_pu: Mapping[str, float] | None = None,
    feeder: Iterable[str] | None = None,
) -> Plan:
    """The switching that isolates `location` and restores what the network can carry.

    `config`: every device's position now (the locked-out breaker open). `loads_kva`: each
    section's load before the interruption (and the live load of the others). `unusable`:
    devices that must not be operated, with why. `feeder`: the nodes the breaker fed when it
    tripped (default: what it feeds in `config`); a plan made again after a failed step passes
    it, since its own isolating opens have cut the feeder since.
    """
    bad = dict(unusable or {})
    order = list(feeder) if feeder is not None else feeder_tree(network, breaker, config)[0]
    feeder = set(order)
    notes: list[str] = []

    # 1. isolation: widen the zone across devices that cannot be opened
    zone = set(location.zone)
    while True:
        boundary = _boundary(network, zone, config)
        blocked = [d for d in boundary if d != breaker and config.get(d) is not False and d in bad]
        if not blocked:
            break
        for d in blocked:
            dev = network.devices[d]
            outside = dev.b if dev.a in zone else dev.a
            if outside in network.sources:
                continue
            notes.append(f"{d} cannot be used ({bad[d]}): the isolated zone takes in {outside}")
            zone.add(outside)
    to_open = sorted(d for d in _boundary(network, zone, config) if d != breaker and config.get(d) is not False)
    steps = [PlannedStep(d, "open", "isolate", "bound the faulted zone") for d in to_open]
    after = dict(config)
    for d in to_open:
        after[d] = False

    # 2. upstream: the locked-out breaker, if the fault is beyond its first section
    upstream: set[str] = set()
    root = network.devices[breaker].b
    if root not in zone and breaker not in bad:
        after[breaker] = True
        en = network.energise(after)
        upstream = {n for n in feeder if en.energised(n)} - zone
        steps.append(PlannedStep(breaker, "close", "restore_upstream", "the fault is isolated beyond it"))
    elif root not in zone:
        notes.append(f"{breaker} cannot be used ({bad[breaker]}): nothing upstream of the fault is restored")

    # 3. downstream islands through ties (or other open devices with a live far side)
    dead = feeder - zone - upstream
    islands = _components(network, dead, after)
    best_steps, restored, ok = _restore_islands(
        network, islands, zone, after, loads_kva, bad, min_voltage_pu, source_voltage_pu or {}
    )
    steps += best_steps
    restored_down = set(restored)
    served = upstream | restored_down
    interrupted = [n for n in order if n in network.sections]
    return Plan(
        breaker=breaker,
        location=location,
        zone=tuple(n for n in order if n in zone),
        steps=steps,
        feeder=tuple(order),
        restored_upstream=tuple(n for n in order if n in upstream),
        restored_downstream=tuple(n for n in order if n in restored_down),
        left_out=tuple(n for n in order if n not in served),
        customers_interrupted=network.customers(interrupted),
        customers_restored=network.customers(served),
        critical_interrupted=network.critical_customers(interrupted),
        critical_restored=network.critical_customers(served),
        estimate_ok=ok,
        notes=notes,
    )


def _boundary(network: Network, zone: set[str], config: Mapping[str, bool | None]) -> list[str]:
    out = []
    for node in zone:
        for other, d in network.adjacent(node):
            if d is not None and other not in zone and d not in out:
                out.append(d)
    return out


def _components(network: Network, nodes: set[str], config: Mapping[str, bool | None]) -> list[set[str]]:
    """Groups of `nodes` joined by closed devices or fixed links."""
    left, out = set(nodes), []
    while left:
        start = left.pop()
        comp, queue = {start}, deque([start])
        while queue:
            node = queue.popleft()
            for other, d in network.adjacent(node):
                if other in left and (d is None or config.get(d)):
                    left.discard(other)
                    comp.add(other)
                    queue.append(other)
        out.append(comp)
    return out


def _restore_islands(
    network: Network,
    islands: list[set[str]],
    zone: set[str],
    config: Mapping[str, bool | None],
    loads_kva: Mapping[str, complex],
    bad: Mapping[str, str],
    min_voltage_pu: float,
    voltages: Mapping[str, float],
) -> tuple[list[PlannedStep], set[str], bool]:
    """Choose splits and ties for every island at once (they may lean on the same neighbour)."""
    options: list[list[tuple[tuple[str, ...], tuple[str, ...]]]] = []  # per island: (devices to open, ties to close)
    for island in islands:
        internal = sorted(
            {
                d
                for n in island
                for o, d in network.adjacent(n)
                if d is not None and o in island and config.get(d) and d not in bad
            }
        )
        feeders = sorted(
            {
                d
                for n in island
                for o, d in network.adjacent(n)
                if d is not None and o not in island and o not in zone and config.get(d) is False and d not in bad
            }
        )
        choices: list[tuple[tuple[str, ...], tuple[str, ...]]] = [((), ())]
        for k in range(len(internal) + 1):
            for opened in itertools.combinations(internal, k):
                for n_ties in range(1, min(len(feeders), k + 1) + 1):
                    for ties in itertools.combinations(feeders, n_ties):
                        choices.append((opened, ties))
        options.append(choices)
    base = network.estimate(config, loads_kva, min_voltage_pu=min_voltage_pu, source_voltage_pu=voltages)
    total = math.prod(len(o) for o in options) if options else 1
    best: tuple[tuple[int, int, int], list[tuple[tuple[str, ...], tuple[str, ...]]], set[str]] | None = None
    if total <= MAX_COMBINATIONS:
        candidates: Iterable[tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = itertools.product(*options)
    else:
        candidates = _greedy(options)
    for combo in candidates:
        trial = dict(config)
        for opened, ties in combo:
            for d in opened:
                trial[d] = False
            for d in ties:
                trial[d] = True
        est = network.estimate(trial, loads_kva, min_voltage_pu=min_voltage_pu, source_voltage_pu=voltages)
        if est.parallel or est.worse_than(base):
            continue
        restored = {n for island in islands for n in island if n in est.voltage_pu}
        if restored & zone:
            continue
        ops = sum(len(o) + len(t) for o, t in combo)
        score = (network.critical_customers(restored), network.customers(restored), -ops)
        if best is None or score > best[0]:
            best = (score, list(combo), restored)
    if best is None:
        return [], set(), False
    steps: list[PlannedStep] = []
    for opened, ties in best[1]:
        steps += [PlannedStep(d, "open", "split", "carry the island by parts") for d in opened]
        steps += [PlannedStep(d, "close", "transfer", "pick up healthy sections from a neighbour") for d in ties]
    return steps, best[2], True


def _greedy(options: list[list[tuple[tuple[str, ...], tuple[str, ...]]]]):  # type: ignore[no-untyped-def]
    """One island at a time varies while the others keep no action (a bounded search)."""
    base = [o[0] for o in options]
    yield tuple(base)
    for k, choices in enumerate(options):
        for choice in choices[1:]:
            trial = list(base)
            trial[k] = choice
            yield tuple(trial)


# --------------------------------------------------------------------------- the controller


FLISR_MODES = ("automatic", "advisory", "off")
LOCKOUT_ROWS = frozenset({"protection_lockout", "agent_locked_out"})


@dataclass(frozen=True, slots=True)
class FlisrSettings:
    mode: str = "advisory"
    """automatic: the plan runs at once; advisory: it is published and runs on approval; off."""
    settle_s: float = 1.0
    """After a lockout, wait this long for indicators and positions to arrive before planning."""
    step_timeout_s: float = 10.0
    min_voltage_pu: float = 0.95
    max_replans: int = 2
    """After a step fails, plan again (without that device) this many times at most."""


class FlisrController:
    """Turns lockouts into FLISR sequences; re-plans around a device that failed. Sans-IO."""

    def __init__(self, network: Network, state: Any, faults: Any, settings: FlisrSettings, unusable: Any) -> None:
        self.network = network
        self.state = state
        self.faults = faults
        self.settings = settings
        self._unusable = unusable
        """Callable: device id → why it must not be operated now, or None."""
        self._due: dict[str, tuple[str, float]] = {}
        self._attempts: dict[str, int] = {}
        self._failed: dict[str, set[str]] = {}
        self.plans: dict[str, Plan] = {}
        self.decision_times_s: list[float] = []

    def on_lockout(self, breaker: str, now: float, wall: float = 0.0) -> str | None:
        """Plan for this lockout after the settle time. A breaker that locks out again after FLISR
        restored through it means the location was wrong: the zone becomes the whole feeder, no
        further automatic action, and the returned text says so (for an alarm)."""
        if self.settings.mode == "off" or breaker not in self.network.devices:
            return None
        record = self.faults.active_for(breaker)
        if record is None:
            return None
        if record.id in self.plans:
            self._due.pop(breaker, None)
            self.faults.locate(
                record.id,
                record.feeder,
                "FLISR's restoration tripped again: the whole feeder",
                wall,
                distance_m=record.distance_m,
            )
            return (
                f"{breaker} tripped again after FLISR restored through it: the fault was not where it was "
                f"located; automatic restoration stops, the whole feeder is taken as faulted"
            )
        self._due[breaker] = (record.id, now + self.settings.settle_s)
        return None

    def next_deadline(self) -> float | None:
        return min((t for _, t in self._due.values()), default=None)

    def tick(self, now: float, wall: float, clock: Any = None) -> list[Any]:
        """Sequences planned now (FLISR's; the caller adds and, in automatic mode, starts them)."""
        from gateway.switching.sequences import Sequence, Step, new_id

        out = []
        for breaker, (record_id, due) in list(self._due.items()):
            if now < due:
                continue
            del self._due[breaker]
            started = clock() if clock is not None else None
            made = self._plan(breaker, record_id, now, wall)
            if started is not None:
                self.decision_times_s.append(clock() - started)
            if made is None:
                continue
            plan_, steps = made
            seq = Sequence(
                id=new_id("FLISR"),
                name=f"FLISR {breaker}: isolate {', '.join(plan_.zone)}",
                steps=tuple(
                    Step(
                        device=s.device,
                        action=s.action,
                        timeout_s=self.settings.step_timeout_s,
                        purpose=s.purpose,
                        override_reason=steps.get(k),
                    )
                    for k, s in enumerate(plan_.steps)
                ),
                created_by="flisr",
                created=wall,
                source="flisr",
                fault=record_id,
                plan=plan_.to_dict(),
            )
            out.append(seq)
        return out

    def on_failed(self, breaker: str, record_id: str, device: str, now: float) -> None:
        """A step of a FLISR sequence failed on `device`: plan again without it, if allowed."""
        attempts = self._attempts.get(record_id, 0)
        self._failed.setdefault(record_id, set()).add(device)
        if attempts >= self.settings.max_replans:
            return
        self._attempts[record_id] = attempts + 1
        self._due[breaker] = (record_id, now)

    def _plan(self, breaker: str, record_id: str, now: float, wall: float) -> tuple[Plan, dict[int, str]] | None:
        try:
            record = self.faults.get(record_id)
        except KeyError:
            return None
        if not record.active:
            return None
        config = self.state.configuration()
        config[breaker] = False
        feeder_nodes = list(record.feeder)  # what the breaker fed when it tripped
        # an indicator latched well before this fault's first trip tells of an earlier event
        indicators = {d: self.state.fpi_since(d, record.started - FPI_WINDOW_S) for d in self.network.devices}
        measured = record.location or {}
        distance: float | None
        distance_method: str | None
        if isinstance(measured.get("distance_m"), int | float):
            # the relay's loop impedance (gateway.fault_location), better than the current's magnitude
            distance, distance_method = float(measured["distance_m"]), f"{measured.get('method')} (relay)"
        else:
            distance = estimate_distance_m(self.network, breaker, record.current_a, record.voltage_kv)
            distance_method = None if distance is None else "fault current magnitude"
        if record.located_by is None:
            location = locate(self.network, breaker, config, indicators, distance_m=distance)
            if location.contradictions:
                location = Location(
                    zone=tuple(feeder_nodes),
                    method=f"indicators disagree ({location.contradictions}): the whole feeder",
                    distance_m=distance,
                    contradictions=location.contradictions,
                )
            location = replace(location, distance_method=distance_method)
            self.faults.locate(record_id, location.zone, location.method, wall, distance_m=distance)
        else:
            location = Location(
                zone=record.zone,
                method=record.located_by,
                distance_m=record.distance_m,
                distance_method=distance_method,
            )
        unusable = {d: why for d in self.network.devices if (why := self._unusable(d))}
        for d in self._failed.get(record_id, ()):
            unusable[d] = "a FLISR step on it failed"
        loads = {}
        for sec in self.network.sections:
            before = self.state.load_before(sec, record.started - 0.2)
            if sec in feeder_nodes:
                loads[sec] = before.kva if before is not None else 0j
            else:
                live = self.state.section_load(sec)
                loads[sec] = live.kva if live is not None else (before.kva if before is not None else 0j)
        unknown = [
            s
            for s in feeder_nodes
            if s in self.network.sections
            and self.state.load_before(s, record.started - 0.2) is None
            and self.network.sections[s].customers
        ]
        for s in unknown:
            unusable_note = f"no load remembered for {s} before the fault"
            for d in self.network.devices_of(s):
                if self.network.devices[d].tie and d not in unusable:
                    unusable[d] = unusable_note
        result = plan(
            self.network,
            breaker,
            config,
            location,
            loads,
            unusable=unusable,
            min_voltage_pu=self.settings.min_voltage_pu,
            source_voltage_pu=self.state.source_voltages(),
            feeder=record.feeder,
        )
        self.plans[record_id] = result
        if not result.steps:
            return result, {}
        reasons = {
            k: f"FLISR: fault {record_id} isolated in {', '.join(result.zone)}"
            for k, s in enumerate(result.steps)
            if s.purpose == "restore_upstream"
        }
        return result, reasons
