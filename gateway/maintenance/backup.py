"""Backup plans A, B and C for a transformer's planned outage, checked by the power flow and
validated as switching sequences before they are offered.

Taking a station transformer out means opening every device around its node (its primary
breaker, the feeder breakers on its bus) and carrying the feeders it supplied from elsewhere:

* **Plan A** uses this substation only: the adjacent transformer takes what it can, through the
  feeder ties, split at the feeders' own switches where one tie cannot carry everything.
* **Plan B** adds the tie to the neighbouring substation, for what it offers: the gap A leaves
  is asked of the neighbour (`TransferRequest`), and its answer (`TransferOffer`, or None when
  there is none) is the far side's limit. The neighbour may also take some of the adjacent
  transformer's own load (a feeder end moved onto the tie), freeing room for the rest.
* **Plan C** sheds non-critical customers, last: the sections B could not carry are picked up
  too, with just enough of their non-critical load shed (remote disconnect by the AMI head-end,
  by meter) that nothing is beyond its limit. Critical customers are never shed: a section with
  critical customers that no source can reach is reported as needing a dedicated supply.

Each plan is a configuration found by searching the positions of the devices around the
transformer's feeders (at most `max_devices` of them; the others keep their positions) for the
one that restores the most critical customers, then the most customers, then the most load, with
the fewest operations — on condition that nobody else loses supply, nothing is paralleled, no
faulted section is energised and the power-flow estimate at the window's forecast loads puts no
element beyond its limit (line ampacity, device rating, transformer rating, the neighbour's
offer, voltage 0.95-1.05 pu) that was not already there. Its switching sequence (break before
make: the transformer's feeders opened first, splits, then closes from the live side, the
transformer's primary last) is then played on the network model by `sequences.validate`, as any
other sequence; a plan whose sequence fails validation is not offered. Switching time: the
number of steps times `step_time_s` (select, operate, check-back, an operator's confirmation).
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.switching.faults import FaultBook
from gateway.switching.network import FlowEstimate, Network, Source
from gateway.switching.sequences import Sequence, Step, new_id, validate

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}$")


# --------------------------------------------------------------------------- the neighbour's answer


class MessageError(ValueError):
    """A transfer request or offer that cannot be read (names the field and what was expected)."""


def _field(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise MessageError(f"{where}.{name}: expected {getattr(kind, '__name__', kind)}, found {value!r:.60}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError(f"{where}.{name}: expected a finite number, found {value!r}")
    if isinstance(value, str) and name not in ("reason", "note") and not _ID.match(value):
        raise MessageError(f"{where}.{name}: expected an identifier, found {value!r:.60}")
    return value


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """Plan B's question to the neighbouring substation: can you carry `kva_requested` through
    `tie` from `window_start` to `window_end`?"""

    request_id: str
    from_substation: str
    tie: str
    external_source: str
    """The neighbour's feeder at the tie, by its name there ('SUB-006/LINE-061')."""
    window_start: float
    window_end: float
    kva_requested: float
    reason: str = ""

    @property
    def to_substation(self) -> str:
        return self.external_source.split("/", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "transfer_request",
            "request_id": self.request_id,
            "from_substation": self.from_substation,
            "to_substation": self.to_substation,
            "tie": self.tie,
            "external_source": self.external_source,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "kva_requested": round(self.kva_requested, 1),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TransferRequest:
        w = "transfer_request"
        if doc.get("type") != "transfer_request":
            raise MessageError(f"{w}.type: expected 'transfer_request', found {doc.get('type')!r:.40}")
        req = cls(
            request_id=_field(doc, "request_id", str, w),
            from_substation=_field(doc, "from_substation", str, w),
            tie=_field(doc, "tie", str, w),
            external_source=_field(doc, "external_source", str, w),
            window_start=float(_field(doc, "window_start", (int, float), w)),
            window_end=float(_field(doc, "window_end", (int, float), w)),
            kva_requested=float(_field(doc, "kva_requested", (int, float), w)),
            reason=str(doc.get("reason", ""))[:500],
        )
        if req.window_end <= req.window_start or req.kva_requested < 0:
            raise MessageError(f"{w}: the window must end after it starts and kva_requested be ≥ 0")
        return req


@dataclass(frozen=True, slots=True)
class TransferOffer:
    """The neighbour's answer: it can carry `kva_offered` through `tie` for the request's window."""

    request_id: str
    tie: str
    kva_offered: float
    valid_until: float
    offered_by: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "transfer_offer",
            "request_id": self.request_id,
            "tie": self.tie,
            "kva_offered": round(self.kva_offered, 1),
            "valid_until": self.valid_until,
            "offered_by": self.offered_by,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TransferOffer:
        w = "transfer_offer"
        if doc.get("type") != "transfer_offer":
            raise MessageError(f"{w}.type: expected 'transfer_offer', found {doc.get('type')!r:.40}")
        offer = cls(
            request_id=_field(doc, "request_id", str, w),
            tie=_field(doc, "tie", str, w),
            kva_offered=float(_field(doc, "kva_offered", (int, float), w)),
            valid_until=float(_field(doc, "valid_until", (int, float), w)),
            offered_by=_field(doc, "offered_by", str, w),
            note=str(doc.get("note", ""))[:500],
        )
        if offer.kva_offered < 0:
            raise MessageError(f"{w}.kva_offered: expected ≥ 0, found {offer.kva_offered}")
        return offer


AskNeighbour = Callable[[TransferRequest], TransferOffer | None]
"""Asks the neighbouring substation; returns its offer, or None when it does not answer or refuses."""


def declared_capacity(network: Network, *, offered_by: str = "site file (declared capacity)") -> AskNeighbour:
    """The neighbour as the site file declares it: the tie's `external_capacity_kva`, for any window."""

    def ask(request: TransferRequest) -> TransferOffer | None:
        source = network.sources.get(f"EXT:{request.tie}")
        if source is None or source.capacity_kva is None:
            return None
        # the whole declared capacity: moving a section onto the tie may take more than the gap
        return TransferOffer(
            request.request_id,
            request.tie,
            source.capacity_kva,
            request.window_end,
            offered_by,
            f"declared capacity {source.capacity_kva:.0f} kVA",
        )

    return ask


DECLARED = "site file (declared capacity)"
MAX_ANSWERS = 64
"""Neighbours' answers kept, one per window asked about."""


class QuotedNeighbour:
    """Plan B's neighbour asked over the exchange between substations (a quote for the window,
    gateway/switching/quote.py), with the tie's declared capacity standing in, marked as such
    (`offered_by` is the site file and the note says why), while the quote is awaited, when the
    neighbour refuses or is silent, or when coordination is off (`ask` None).

    Sans-IO and never blocking: the first call for a window sends the question and answers with
    the declared capacity at once; `on_answer` keeps the neighbour's answer and says whether a
    plan asked for it, so its owner plans again (the next call for that window gets the quote).
    """

    def __init__(
        self,
        network: Network,
        ask: Callable[[str, float, float, float], str] | None,
        *,
        off_reason: str = "coordination with the neighbour is off",
    ) -> None:
        self._declared = declared_capacity(network)
        self._ask = ask
        self.off_reason = off_reason
        self.answers: dict[tuple[str, float, float], Any] = {}
        """(tie, window start, window end) → the neighbour's answer (gateway.switching.quote.Answer)."""
        self.waiting: dict[str, tuple[str, float, float]] = {}
        """Question id → the window it asks about."""

    def __call__(self, request: TransferRequest) -> TransferOffer | None:
        key = (request.tie, request.window_start, request.window_end)
        answer = self.answers.get(key)
        if answer is not None and answer.kva is not None:
            return TransferOffer(
                request.request_id,
                request.tie,
                answer.kva,
                request.window_end,
                answer.by,
                f"quote from {answer.by} for the window (nothing reserved): {answer.note}",
            )
        if answer is not None:
            why = answer.note
        elif self._ask is None:
            why = self.off_reason
        elif key in self.waiting.values():
            why = f"waiting for {request.to_substation}'s quote"
        else:
            try:
                xid = self._ask(request.tie, request.window_start, request.window_end, max(request.kva_requested, 1.0))
            except ValueError as exc:
                why = f"{request.to_substation} not asked: {exc}"
            else:
                self.waiting[xid] = key
                why = f"waiting for {request.to_substation}'s quote"
        declared = self._declared(request)
        if declared is None:
            return None
        return replace(declared, note=f"{declared.note}; {why}"[:500])

    def on_answer(self, answer: Any) -> bool:
        """The neighbour's answer (or its silence) to a question this asked; True when it was one."""
        key = self.waiting.pop(answer.question.xid, None)
        if key is None:
            return False
        self.answers[key] = answer
        while len(self.answers) > MAX_ANSWERS:  # the oldest windows first (dicts keep insertion order)
            del self.answers[next(iter(self.answers))]
        return True


def with_capacities(network: Network, capacities: Mapping[str, float | None]) -> Network:
    """The same network with some sources' capacities replaced (an offer, or no tie at all)."""
    net = copy.copy(network)
    net.sources = {
        sid: replace(src, capacity_kva=capacities[sid]) if sid in capacities else src
        for sid, src in network.sources.items()
    }
    return net


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class BackupSettings:
    min_voltage_pu: float = 0.95
    max_voltage_pu: float = 1.05
    step_time_s: float = 90.0
    """Time per switching step (select, operate, check-back and the operator's confirmation)."""
    max_devices: int = 14
    """Devices whose positions the search varies (2^n configurations); beyond it, the nearest."""
    voltage_margin_pu: float = 0.01
    """Plans are searched this far inside the voltage band (the estimate lumps each section's load
    and takes a tap changer at the low edge of its band: a plan at the very limit would not hold);
    their sequences are validated against the band itself."""
    load_margin: float = 0.08
    """…and for this much more load than forecast (the window's load is a forecast, and the measured
    load moves a few per cent about it), so no element is planned to its very limit. At 5 % the
    predictive-maintenance scenario's plan C put XFMR-235 at 99–100.1 % of its rating in the
    simulator's own power flow (the estimate lumps each section's load and leaves out the
    transformer's own losses and the taps' voltage rise); at 8 % it runs at about 97 %."""


@dataclass(frozen=True, slots=True)
class PlanStep:
    device: str
    action: str
    purpose: str

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "action": self.action, "purpose": self.purpose}


@dataclass
class BackupPlan:
    name: str
    title: str
    transformer: str
    steps: list[PlanStep]
    restored: list[str]
    left_out: list[str]
    shed_kva: dict[str, float]
    """Section → non-critical load shed there (plan C)."""
    shed_customers: dict[str, int]
    required_kva: float
    covered_kva: float
    customers_total: int
    customers_restored: int
    critical_total: int
    critical_restored: int
    brief_interruption: list[str]
    """Sections outside the transformer's own that change supply during the switching."""
    loading: dict[str, float] = field(default_factory=dict)
    """Highest loading of each kind of element after the switching (share of its limit)."""
    window_loads_kva: dict[str, float] = field(default_factory=dict)
    """The load each of the transformer's sections is planned for (the window's forecast)."""
    min_voltage_pu: float | None = None
    validation: list[str] = field(default_factory=list)
    validated: bool = False
    switching_time_s: float = 0.0
    offer: TransferOffer | None = None
    request: TransferRequest | None = None
    notes: list[str] = field(default_factory=list)
    sequence: Sequence | None = None
    return_steps: list[PlanStep] = field(default_factory=list)
    """Back to the normal configuration after the window, validated like the plan itself."""
    return_validation: list[str] = field(default_factory=list)

    @property
    def customers_shed(self) -> int:
        return sum(self.shed_customers.values())

    @property
    def coverage(self) -> float:
        return self.covered_kva / self.required_kva if self.required_kva > 0 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.name,
            "title": self.title,
            "transformer": self.transformer,
            "steps": [s.to_dict() for s in self.steps],
            "restored_sections": list(self.restored),
            "left_out_sections": list(self.left_out),
            "shed": [
                {"section": s, "kva": round(k, 1), "customers": self.shed_customers.get(s, 0)}
                for s, k in self.shed_kva.items()
            ],
            "required_mva": round(self.required_kva / 1000.0, 3),
            "mva_covered": round(self.covered_kva / 1000.0, 3),
            "coverage": round(self.coverage, 4),
            "customers_total": self.customers_total,
            "customers_restored": self.customers_restored,
            "customers_shed": self.customers_shed,
            "critical_total": self.critical_total,
            "critical_restored": self.critical_restored,
            "brief_interruption_sections": list(self.brief_interruption),
            "highest_loading": {k: round(v, 3) for k, v in self.loading.items()},
            "window_loads_kva": {k: round(v, 1) for k, v in self.window_loads_kva.items()},
            "min_voltage_pu": None if self.min_voltage_pu is None else round(self.min_voltage_pu, 4),
            "validated": self.validated,
            "validation": list(self.validation),
            "switching_time_s": self.switching_time_s,
            "switching_time_min": round(self.switching_time_s / 60.0, 1),
            "request": None if self.request is None else self.request.to_dict(),
            "offer": None if self.offer is None else self.offer.to_dict(),
            "sequence_id": None if self.sequence is None else self.sequence.id,
            "notes": list(self.notes),
            "return_steps": [s.to_dict() for s in self.return_steps],
            "return_validated": not self.return_validation,
            "return_validation": list(self.return_validation),
        }


@dataclass(frozen=True, slots=True)
class _Choice:
    config: dict[str, bool | None]
    restored: frozenset[str]
    shed_fraction: float
    ops: int
    estimate: FlowEstimate


def plan_backup(
    network: Network,
    config: Mapping[str, bool | None],
    loads_kva: Mapping[str, complex],
    transformer: str,
    *,
    faults: FaultBook | None = None,
    ask_neighbour: AskNeighbour | None = None,
    substation: str = "",
    window: tuple[float, float] = (0.0, 0.0),
    request_id: str = "",
    settings: BackupSettings | None = None,
    unusable: Mapping[str, str] | None = None,
    created: float = 0.0,
    source_voltage_pu: Mapping[str, float] | None = None,
) -> list[BackupPlan]:
    """Plans A, B and C for taking `transformer` out of service (sans-IO)."""
    s = settings or BackupSettings()
    faults = faults or FaultBook()
    bad = dict(unusable or {})
    node = network.station_nodes.get(transformer)
    if node is None:
        return _no_switching(network, transformer, loads_kva)
    base_en = network.energise(config)
    out_devices = [d for d in network.devices_of(node)]
    isolated = dict(config)
    for d in out_devices:
        isolated[d] = False
    after = network.energise(isolated)
    interrupted = sorted(n for n in base_en.source_of if n in network.sections and n != node and not after.energised(n))
    others_live = {n for n in base_en.source_of if n in network.sections and n not in interrupted and n != node}
    required = sum(abs(loads_kva.get(n, 0j)) for n in interrupted)
    external = [d for d, dev in network.devices.items() if dev.external_source and dev.id not in out_devices]
    candidates = _candidates(network, interrupted, out_devices, bad, s.max_devices)
    base_est = network.estimate(
        config,
        loads_kva,
        min_voltage_pu=s.min_voltage_pu,
        max_voltage_pu=s.max_voltage_pu,
        source_voltage_pu=source_voltage_pu,
    )
    ctx = _Search(
        network, isolated, loads_kva, node, interrupted, others_live, candidates, faults, s, base_est, source_voltage_pu
    )

    # A: this substation only (ties to other substations stay as they are, open)
    no_tie = with_capacities(network, {f"EXT:{d}": 0.0 for d in external})
    a = ctx.search(no_tie, fixed={d: config.get(d) for d in external})
    plan_a = _plan(
        "A",
        "transfer to the adjacent transformer through this substation's ties",
        ctx,
        no_tie,
        a,
        config,
        loads_kva,
        required,
        transformer,
        faults,
        s,
        created,
        source_voltage_pu,
    )

    # B: ask the neighbour for the gap
    gap = max(0.0, required - plan_a.covered_kva)
    request = offer = None
    net_b = no_tie
    notes_b: list[str] = []
    if external and ask_neighbour is not None:
        tie = external[0]
        dev = network.devices[tie]
        request = TransferRequest(
            request_id or new_id("XFER"),
            substation,
            tie,
            str(dev.external_source),
            window[0],
            window[1],
            gap,
            f"planned outage of {transformer}",
        )
        offer = ask_neighbour(request) if gap > 0 else None
        if gap <= 0:
            notes_b.append("plan A restores everything: nothing to ask of the neighbour")
        elif offer is None:
            notes_b.append(f"{request.to_substation} made no offer for {tie}: plan B is plan A")
        else:
            net_b = with_capacities(
                network, {f"EXT:{d}": (offer.kva_offered if d == offer.tie else 0.0) for d in external}
            )
    elif not external:
        notes_b.append("no tie to another substation in this site")
    b = ctx.search(net_b, fixed={} if offer is not None else {d: config.get(d) for d in external})
    plan_b = _plan(
        "B",
        "plan A plus the tie to the neighbouring substation",
        ctx,
        net_b,
        b,
        config,
        loads_kva,
        required,
        transformer,
        faults,
        s,
        created,
        source_voltage_pu,
    )
    plan_b.request, plan_b.offer = request, offer
    plan_b.notes += notes_b

    # C: the rest picked up with non-critical load shed
    c = ctx.search(
        net_b, fixed={} if offer is not None else {d: config.get(d) for d in external}, shed_beyond=set(b.restored)
    )
    plan_c = _plan(
        "C",
        "plan B plus shedding of non-critical customers (never critical ones)",
        ctx,
        net_b,
        c,
        config,
        loads_kva,
        required,
        transformer,
        faults,
        s,
        created,
        source_voltage_pu,
        sheddable=set(c.restored) - set(b.restored),
    )
    plan_c.request, plan_c.offer = request, offer
    if not interrupted:
        idle = [
            f"{d} {'unknown' if config.get(d) is None else 'open'}"
            for d in out_devices
            if d not in upstream_of(network, node) and not config.get(d)
        ]
        for plan in (plan_a, plan_b, plan_c):
            plan.notes.append(
                f"{transformer} supplies no section in the present configuration"
                + (f" ({', '.join(idle)})" if idle else "")
                + ": nothing to back up"
            )
    for plan in (plan_a, plan_b, plan_c):
        if plan.critical_restored < plan.critical_total:
            plan.notes.append(
                f"{plan.critical_total - plan.critical_restored} critical customer(s) without supply in "
                "this plan: they need a dedicated source"
            )
    return [plan_a, plan_b, plan_c]


def upstream_of(network: Network, node: str) -> set[str]:
    """The devices that feed a station transformer's node (its primary breaker)."""
    return {d for d in network.devices_of(node) if network.devices[d].b == node}


def _no_switching(network: Network, transformer: str, loads_kva: Mapping[str, complex]) -> list[BackupPlan]:
    """A transformer tapped on a feeder: its own customers are behind it; no switching helps."""
    section = network.element_section.get(transformer)
    plans = []
    for name in ("A", "B", "C"):
        plans.append(
            BackupPlan(
                name=name,
                title="no backup through the network",
                transformer=transformer,
                steps=[],
                restored=[],
                left_out=[section] if section else [],
                shed_kva={},
                shed_customers={},
                required_kva=0.0,
                covered_kva=0.0,
                customers_total=0,
                customers_restored=0,
                critical_total=0,
                critical_restored=0,
                brief_interruption=[],
                notes=[
                    f"{transformer} feeds its customers directly: no switching restores them; "
                    "they are out for the window (or on a mobile generator)"
                ],
                validated=True,
            )
        )
    return plans


def _candidates(
    network: Network, interrupted: list[str], out_devices: list[str], bad: Mapping[str, str], limit: int
) -> list[str]:
    """Devices around the interrupted sections and one section beyond, nearest first."""
    area = set(interrupted)
    ring: list[str] = []
    for n in interrupted:
        for other, _dev in network.adjacent(n):
            if other not in area and other in network.sections and other not in ring:
                ring.append(other)
    order: list[str] = []
    for n in [*interrupted, *ring]:
        for d in network.devices_of(n):
            if d not in order and d not in out_devices and d not in bad:
                order.append(d)
    # the devices touching the interrupted sections first, then the ring's
    order.sort(key=lambda d: 0 if {network.devices[d].a, network.devices[d].b} & area else 1)
    return order[:limit]


class _Search:
    def __init__(
        self,
        network: Network,
        isolated: dict[str, bool | None],
        loads: Mapping[str, complex],
        node: str,
        interrupted: list[str],
        others_live: set[str],
        candidates: list[str],
        faults: FaultBook,
        settings: BackupSettings,
        base_est: FlowEstimate,
        voltages: Mapping[str, float] | None,
    ) -> None:
        self.network = network
        self.isolated = isolated
        self.loads = loads
        self.node = node
        self.interrupted = interrupted
        self.others_live = others_live
        self.candidates = candidates
        self.faulted = set(faults.faulted_nodes())
        self.s = settings
        self.base_est = base_est
        self.voltages = voltages

    def _loads(self, shed: Mapping[str, float]) -> dict[str, complex]:
        out = dict(self.loads)
        for sec, fraction in shed.items():
            info = self.network.sections[sec]
            share = (info.customers - info.critical_customers) / info.customers if info.customers else 1.0
            out[sec] = self.loads.get(sec, 0j) * (1.0 - fraction * share)
        return out

    def _ok(self, net: Network, config: dict[str, bool | None], loads: Mapping[str, complex]) -> FlowEstimate | None:
        margin = self.s.voltage_margin_pu
        if self.s.load_margin:
            loads = {k: v * (1.0 + self.s.load_margin) for k, v in loads.items()}
        est = net.estimate(
            config,
            loads,
            min_voltage_pu=self.s.min_voltage_pu + margin,
            max_voltage_pu=self.s.max_voltage_pu - margin,
            source_voltage_pu=self.voltages,
        )
        if est.parallel or est.worse_than(self.base_est):
            return None
        return est

    def search(self, net: Network, *, fixed: Mapping[str, bool | None], shed_beyond: set[str] | None = None) -> _Choice:
        free = [d for d in self.candidates if d not in fixed]
        best: tuple[tuple[float, ...], _Choice] | None = None
        for bits in itertools.product((False, True), repeat=len(free)):
            config = dict(self.isolated)
            config.update(fixed)
            config.update(zip(free, bits, strict=True))
            en = net.energise(config)
            if en.energised(self.node) or en.loops or any(n in self.faulted for n in en.source_of):
                continue
            if not self.others_live <= set(en.source_of):
                continue
            restored = frozenset(n for n in self.interrupted if en.energised(n))
            fraction = 0.0
            if shed_beyond is None:
                est = self._ok(net, config, self.loads)
                if est is None:
                    continue
            else:
                if not shed_beyond <= restored:
                    continue
                shed_sections = restored - shed_beyond
                found = self._min_shed(net, config, shed_sections)
                if found is None:
                    continue
                fraction, est = found
            ops = sum(1 for d in free if bool(config[d]) != bool(self.isolated.get(d))) + sum(
                1 for d, v in fixed.items() if bool(v) != bool(self.isolated.get(d))
            )
            shed = restored - (shed_beyond or restored)
            net_loads = self._loads({n: fraction for n in shed})
            served = sum(abs(net_loads.get(n, 0j)) for n in restored)
            shed_customers = sum(
                math.ceil(
                    (self.network.sections[n].customers - self.network.sections[n].critical_customers) * fraction - 1e-9
                )
                for n in shed
            )
            key = (
                float(self.network.critical_customers(restored)),
                float(self.network.customers(restored) - shed_customers),
                round(served, 3),
                -float(ops),
            )
            if best is None or key > best[0]:
                best = (key, _Choice(config, restored, fraction, ops, est))
        if best is None:  # nothing restores anything safely: the transformer's feeders stay off
            est = net.estimate(
                self.isolated,
                self.loads,
                min_voltage_pu=self.s.min_voltage_pu,
                max_voltage_pu=self.s.max_voltage_pu,
                source_voltage_pu=self.voltages,
            )
            return _Choice(dict(self.isolated), frozenset(), 0.0, 0, est)
        return best[1]

    def _min_shed(
        self, net: Network, config: dict[str, bool | None], sections: Iterable[str]
    ) -> tuple[float, FlowEstimate] | None:
        """The smallest share of non-critical load shed in `sections` that keeps every limit."""
        secs = list(sections)
        est = self._ok(net, config, self.loads)
        if est is not None:
            return 0.0, est
        if not secs:
            return None
        full = self._ok(net, config, self._loads({n: 1.0 for n in secs}))
        if full is None:
            return None
        lo, hi, best = 0.0, 1.0, full
        for _ in range(14):
            mid = (lo + hi) / 2.0
            e = self._ok(net, config, self._loads({n: mid for n in secs}))
            if e is None:
                lo = mid
            else:
                hi, best = mid, e
        return hi, best


def _plan(
    name: str,
    title: str,
    ctx: _Search,
    net: Network,
    choice: _Choice,
    config: Mapping[str, bool | None],
    loads: Mapping[str, complex],
    required: float,
    transformer: str,
    faults: FaultBook,
    s: BackupSettings,
    created: float,
    voltages: Mapping[str, float] | None,
    sheddable: set[str] | None = None,
) -> BackupPlan:
    network = ctx.network
    restored = [n for n in ctx.interrupted if n in choice.restored]
    left = [n for n in ctx.interrupted if n not in choice.restored]
    shed_sections = [n for n in restored if choice.shed_fraction > 0 and n in (sheddable or set())]
    shed_kva: dict[str, float] = {}
    shed_customers: dict[str, int] = {}
    for n in shed_sections:
        info = network.sections[n]
        noncritical = info.customers - info.critical_customers
        share = noncritical / info.customers if info.customers else 1.0
        shed_kva[n] = abs(loads.get(n, 0j)) * share * choice.shed_fraction
        shed_customers[n] = math.ceil(noncritical * choice.shed_fraction - 1e-9)
    covered = sum(abs(loads.get(n, 0j)) for n in restored) - sum(shed_kva.values())
    steps = _steps(network, config, choice.config, ctx.node)
    plan = BackupPlan(
        name=name,
        title=title,
        transformer=transformer,
        steps=steps,
        restored=restored,
        left_out=left,
        shed_kva=shed_kva,
        shed_customers=shed_customers,
        required_kva=required,
        covered_kva=covered,
        customers_total=network.customers(ctx.interrupted),
        customers_restored=network.customers(restored) - sum(shed_customers.values()),
        critical_total=network.critical_customers(ctx.interrupted),
        critical_restored=network.critical_customers(restored),
        brief_interruption=_moved(network, config, choice.config, ctx.interrupted),
        switching_time_s=len(steps) * s.step_time_s,
        window_loads_kva={n: abs(loads.get(n, 0j)) for n in ctx.interrupted},
    )
    est = choice.estimate
    plan.min_voltage_pu = min(est.voltage_pu.values()) if est.voltage_pu else None
    plan.loading = _loading(net, est)
    if left:
        plan.notes.append(f"left without supply for the window: {', '.join(left)}")
    # the sequence, validated as any other
    seq = Sequence(
        id=new_id("PM"),
        name=f"plan {name}: take {transformer} out ({title})"[:120],
        steps=tuple(Step(device=st.device, action=st.action, purpose=st.purpose) for st in steps),
        created_by="maintenance",
        created=created,
        source="maintenance",
        plan={"plan": name, "transformer": transformer},
    )
    applied = ctx._loads({n: choice.shed_fraction for n in shed_sections})
    problems = (
        validate(seq, net, dict(config), faults, applied, min_voltage_pu=s.min_voltage_pu, source_voltage_pu=voltages)
        if steps
        else []
    )
    plan.validation = problems
    plan.validated = not problems
    plan.sequence = seq
    if steps:
        plan.return_steps, plan.return_validation = _return_steps(
            network, net, choice.config, config, ctx.node, applied, faults, s, voltages
        )
    return plan


def _return_steps(
    network: Network,
    net: Network,
    plan_config: Mapping[str, bool | None],
    normal: Mapping[str, bool | None],
    node: str,
    loads: Mapping[str, complex],
    faults: FaultBook,
    s: BackupSettings,
    voltages: Mapping[str, float] | None,
) -> tuple[list[PlanStep], list[str]]:
    """The way back after the window: the transformer re-energised first (its feeders still open),
    then each transferred part in turn, its tie opened before its normal supply closes (break
    before make). The parts' order is the first that keeps every step within limits at the
    window's loads (the shed customers are reconnected once the normal configuration is back):
    parts returning to the transformer first, so the adjacent one is relieved before it takes
    its own load back. Returns the steps and the problems validation found (none when sound)."""
    around = set(network.devices_of(node))
    opens = [d for d, v in plan_config.items() if v is True and normal.get(d) is False]
    closes = [d for d, v in plan_config.items() if v is False and normal.get(d) is True]
    first = [d for d in closes if d in around and network.devices[d].b == node]
    home = network.energise(normal)
    rest = [d for d in closes if d not in first]

    def build(order: tuple[str, ...]) -> list[PlanStep]:
        trial = dict(plan_config)
        steps = []
        for d in first:
            trial[d] = True
            steps.append(PlanStep(d, "close", "re-energise the transformer"))
        pending = list(rest)
        for tie in order:
            trial[tie] = False
            steps.append(PlanStep(tie, "open", "end the transfer"))
            progress = True
            while progress:
                progress = False
                en = network.energise(trial)
                for d in pending:
                    dev = network.devices[d]
                    if en.energised(dev.a) == en.energised(dev.b):
                        continue
                    trial[d] = True
                    after = network.energise(trial)
                    # only what comes back the way it is normally fed (no back-feeding a dead
                    # section from the far side)
                    newly = [n for n in after.source_of if n not in en.source_of]
                    if after.loops or any(after.parent.get(n) != home.parent.get(n) for n in newly):
                        trial[d] = False
                        continue
                    steps.append(PlanStep(d, "close", "back to the normal supply"))
                    pending.remove(d)
                    progress = True
                    break
        steps += [PlanStep(d, "close", "back to the normal supply") for d in pending]
        return steps

    def check(steps: list[PlanStep]) -> list[str]:
        seq = Sequence(
            id="return",
            name="back to normal",
            created_by="maintenance",
            created=0.0,
            steps=tuple(Step(device=st.device, action=st.action, purpose=st.purpose) for st in steps),
        )
        return validate(
            seq, net, dict(plan_config), faults, loads, min_voltage_pu=s.min_voltage_pu, source_voltage_pu=voltages
        )

    def to_transformer(tie: str) -> int:
        """0 when opening `tie` cuts off sections whose normal supply is the transformer."""
        trial = dict(plan_config)
        trial[tie] = False
        cut = set(network.energise(plan_config).source_of) - set(network.energise(trial).source_of)
        return 0 if any(supplied_through(home, n, node) for n in cut) else 1

    orders = sorted(itertools.permutations(opens), key=lambda o: [to_transformer(t) for t in o])
    best: tuple[list[PlanStep], list[str]] | None = None
    for order in orders[:120]:
        steps = build(order)
        problems = check(steps)
        if not problems:
            return steps, []
        if best is None:
            best = (steps, problems)
    if best is None:
        return [], []
    own = network.estimate(normal, loads, min_voltage_pu=s.min_voltage_pu, source_voltage_pu=voltages).violations
    if own:
        best[1].append(
            "the normal configuration itself is beyond limits at the window's loads: "
            + "; ".join(str(v) for v in own[:3])
        )
    return best


def supplied_through(en: Any, node: str, via: str) -> bool:
    """Whether `node` is fed through `via` in the energisation `en`."""
    k, hops = node, 0
    while k in en.parent and hops < 10_000:
        k = en.parent[k][0]
        if k == via:
            return True
        hops += 1
    return False


def _steps(
    network: Network, before: Mapping[str, bool | None], after: Mapping[str, bool | None], node: str
) -> list[PlanStep]:
    """Break before make: the feeders off the transformer's bus, splits, closes from the live side
    outwards, and the transformer's own supply last."""
    around = set(network.devices_of(node))
    en = network.energise(after)
    primary = {d for d in around if en.parent.get(node, (None, None))[1] == d}
    upstream = {d for d in around if network.devices[d].a != node and network.devices[d].b == node}
    opens = [d for d, v in after.items() if v is False and before.get(d) is True]
    closes = [d for d, v in after.items() if v is True and not before.get(d)]
    feeders = [d for d in opens if d in around and d not in upstream]
    splits = [d for d in opens if d not in around]
    last = [d for d in opens if d in upstream or d in primary]
    depth: dict[str, int] = {}
    for n in en.source_of:
        k, hops = n, 0
        while k in en.parent and hops < 10_000:
            k = en.parent[k][0]
            hops += 1
        depth[n] = hops
    closes.sort(key=lambda d: min(depth.get(network.devices[d].a, 99), depth.get(network.devices[d].b, 99)))
    return (
        [PlanStep(d, "open", "isolate the transformer's feeders") for d in feeders]
        + [PlanStep(d, "open", "split") for d in splits]
        + [PlanStep(d, "close", "transfer") for d in closes]
        + [PlanStep(d, "open", "de-energise the transformer") for d in last]
    )


def _moved(
    network: Network, before: Mapping[str, bool | None], after: Mapping[str, bool | None], interrupted: list[str]
) -> list[str]:
    """Sections outside the transformer's that change their source or path (a brief interruption)."""
    a, b = network.energise(before), network.energise(after)
    out = []
    for n in network.sections:
        if n in interrupted or not a.energised(n):
            continue
        if a.source_of.get(n) != b.source_of.get(n) or _path(a, n) != _path(b, n):
            out.append(n)
    return out


def _path(en: Any, node: str) -> tuple[str, ...]:
    out = []
    k = node
    seen = 0
    while k in en.parent and seen < 10_000:
        k, dev = en.parent[k]
        out.append(str(dev))
        seen += 1
    return tuple(out)


def _loading(net: Network, est: FlowEstimate) -> dict[str, float]:
    """Highest share of its limit per kind of element (sections, transformers, devices, sources)."""
    out: dict[str, float] = {}
    for node, amps in est.node_current_a.items():
        sec = net.sections[node]
        kind = "transformer" if node in net.station_nodes else "line"
        out[kind] = max(out.get(kind, 0.0), amps / sec.ampacity_a)
    for dev_id, amps in est.device_current_a.items():
        out["device"] = max(out.get("device", 0.0), amps / net.devices[dev_id].rated_current_a)
    for src_id, kva in est.source_load_kva.items():
        source: Source = net.sources[src_id]
        if source.capacity_kva:
            kind = "neighbour" if source.external else "substation"
            out[kind] = max(out.get(kind, 0.0), kva / source.capacity_kva)
    return out


def reachable(network: Network, start: str, config: Mapping[str, bool | None]) -> set[str]:
    """Nodes joined to `start` by closed devices and fixed links (for tests and views)."""
    seen, queue = {start}, deque([start])
    while queue:
        n = queue.popleft()
        for other, d in network.adjacent(n):
            if other not in seen and (d is None or config.get(d)):
                seen.add(other)
                queue.append(other)
    return seen
