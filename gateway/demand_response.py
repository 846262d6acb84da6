"""Demand response through the smart meters: events to enrolled meter groups, their confirmations,
the non-responders, and each meter's incentive credit.

The substation's peak manager asks for a reduction (kW); the coordinator picks the meter groups
enrolled in a program (`[[meter_groups]] dr_programs`), most reduction per customer first, until
the expected reduction covers it, and sends one event per group to its data concentrator on the
AMI feed (protocols/demand_response.py, docs/ami.md#demand-response). Critical groups (a
hospital) are never asked, and critical meters of an enrolled group are left out of its event by
the concentrator, which answers `critical` for them.

The concentrator answers per meter: `accepted`, `not_enrolled`, `critical`; an enrolled meter
that does not answer within `confirm_timeout_s` is a non-responder. While the event lasts the
meters' readings are compared with the demand each had when it answered (its baseline); when the
event ends each accepting meter is credited `incentive_per_kwh` × the energy it did not draw, and
the ledger entry is kept in the event log (`dr.credit`, one record per event with the meters'
credits) and published.

Sans-IO: wall time in, events and records out; the wiring publishes them on the AMI broker.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.contract.demand_response import DrConfirmation, DrEvent

CONFIRM_TIMEOUT_S = 120.0
MAX_READING_GAP_S = 3600.0
"""A meter silent longer than this between two readings is not credited for the gap."""


@dataclass(frozen=True, slots=True)
class Program:
    id: str
    kind: str
    reduction_pct: float
    max_duration_s: float
    incentive_per_kwh: float
    notice_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    meters: int
    programs: tuple[str, ...]
    critical: bool = False
    critical_meters: int = 0


@dataclass
class MeterTally:
    baseline_kw: float
    reduced_kwh: float = 0.0
    last_time: float | None = None


@dataclass
class Event:
    event: DrEvent
    program: Program
    group: Group
    sent_at: float
    expected_kw: float
    answered: bool = False
    error: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    tallies: dict[str, MeterTally] = field(default_factory=dict)
    answered_meters: set[str] = field(default_factory=set)
    non_responders: int = 0
    ended_at: float | None = None
    credits: dict[str, float] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.event.start + self.event.duration_s

    def summary(self) -> dict[str, Any]:
        return {
            "event_id": self.event.event_id,
            "program": self.program.id,
            "group": self.group.id,
            "start": self.event.start,
            "duration_s": self.event.duration_s,
            "sent_at": self.sent_at,
            "expected_kw": round(self.expected_kw, 1),
            "answered": self.answered,
            "error": self.error,
            "accepted": self.counts.get("accepted", 0),
            "not_enrolled": self.counts.get("not_enrolled", 0),
            "critical": self.counts.get("critical", 0),
            "non_responders": self.non_responders,
            "reduced_kwh": round(sum(t.reduced_kwh for t in self.tallies.values()), 3),
            "credits_total": round(sum(self.credits.values()), 4),
            "ended_at": self.ended_at,
        }


class DrCoordinator:
    def __init__(
        self,
        substation: str,
        programs: Sequence[Program],
        groups: Sequence[Group],
        *,
        confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.substation = substation
        self.programs = {p.id: p for p in programs}
        self.groups = {g.id: g for g in groups}
        self.confirm_timeout_s = confirm_timeout_s
        self._new_id = new_id or (lambda: "DR-" + secrets.token_hex(5))
        self.events: dict[str, Event] = {}
        self.bad_confirmations = 0

    # ------------------------------------------------------------------ planning

    def candidates(self) -> list[tuple[Group, Program]]:
        """Enrolled, non-critical groups with the program that asks the most of them."""
        out = []
        for g in self.groups.values():
            if g.critical:
                continue
            programs = [self.programs[p] for p in g.programs if p in self.programs]
            if programs:
                out.append((g, max(programs, key=lambda p: p.reduction_pct)))
        return out

    def plan(
        self, need_kw: float, group_demand_kw: Mapping[str, float], now: float, duration_s: float
    ) -> list[DrEvent]:
        """Events covering `need_kw` by the groups' present demand, most kW per customer first;
        each within its program's longest event and after its notice."""
        busy = {e.group.id for e in self.events.values() if e.ended_at is None and not e.error}
        ranked = []
        for g, p in self.candidates():
            if g.id in busy:
                continue
            expected = group_demand_kw.get(g.id, 0.0) * p.reduction_pct / 100.0
            if expected > 0:
                ranked.append((expected / max(1, g.meters - g.critical_meters), expected, g, p))
        ranked.sort(key=lambda r: -r[0])
        out: list[DrEvent] = []
        found = 0.0
        for _per_meter, expected, g, p in ranked:
            if found >= need_kw:
                break
            start = now + p.notice_s
            event = DrEvent(
                event_id=self._new_id(),
                program=p.id,
                concentrator_id=g.id,
                start=start,
                duration_s=min(duration_s, p.max_duration_s),
                issued_at=now,
            )
            self.events[event.event_id] = Event(event, p, g, now, expected)
            out.append(event)
            found += expected
        return out

    # ------------------------------------------------------------------ inputs

    def on_confirmation(self, conf: DrConfirmation, now: float) -> Event | None:
        """A concentrator's answer; None when it is for no event of ours (logged by the wiring)."""
        ev = self.events.get(conf.event_id)
        if ev is None or conf.concentrator_id != ev.group.id or conf.substation_id != self.substation:
            self.bad_confirmations += 1
            return None
        ev.answered = True
        ev.error = conf.error
        for meter, answer, demand in zip(conf.meters, conf.answers, conf.demand_kw, strict=True):
            if meter in ev.answered_meters or answer not in ("accepted", "not_enrolled", "critical"):
                continue  # a repeated answer counts once
            ev.answered_meters.add(meter)
            ev.counts[answer] = ev.counts.get(answer, 0) + 1
            if answer == "accepted" and math.isfinite(demand) and demand >= 0:
                ev.tallies[meter] = MeterTally(baseline_kw=float(demand))
        return ev

    def on_readings(self, meter_ids: Sequence[str], demand_kw: Any, reading_time: float) -> None:
        """A concentrator's readings: accepting meters' reduction during their event."""
        live = [
            e
            for e in self.events.values()
            if e.tallies and e.ended_at is None and e.event.start <= reading_time <= e.end + MAX_READING_GAP_S
        ]
        if not live:
            return
        demand = np.asarray(demand_kw, dtype=np.float64)
        for ev in live:
            for k, meter in enumerate(meter_ids):
                tally = ev.tallies.get(meter)
                if tally is None or k >= len(demand) or not math.isfinite(demand[k]):
                    continue
                t = min(reading_time, ev.end)
                if tally.last_time is not None and t <= tally.last_time:
                    continue  # a reading out of order or repeated
                if tally.last_time is not None and t - tally.last_time <= MAX_READING_GAP_S:
                    tally.reduced_kwh += max(0.0, tally.baseline_kw - float(demand[k])) * (t - tally.last_time) / 3600.0
                tally.last_time = max(t, ev.event.start)

    def tick(self, now: float) -> list[Event]:
        """Events whose confirmations are overdue (non-responders counted) or that have ended
        (credited): each returned once when it ends."""
        ended = []
        for ev in self.events.values():
            if ev.ended_at is not None:
                continue
            if now >= ev.end or (ev.error and ev.answered):
                ended.append(self._close(ev, now))
            elif not ev.answered and now - ev.sent_at > self.confirm_timeout_s:
                ev.error = f"no confirmation from {ev.group.id} within {self.confirm_timeout_s:g} s"
                ended.append(self._close(ev, now))
        return ended

    def end_all(self, now: float) -> list[Event]:
        """The peak has passed: every running event ends now (credited up to now)."""
        return [self._close(ev, now) for ev in self.events.values() if ev.ended_at is None]

    def _close(self, ev: Event, now: float) -> Event:
        ev.ended_at = now
        enrolled = ev.group.meters - ev.counts.get("not_enrolled", 0) - ev.counts.get("critical", 0)
        ev.non_responders = 0 if ev.error else max(0, enrolled - ev.counts.get("accepted", 0))
        ev.credits = {
            m: round(t.reduced_kwh * ev.program.incentive_per_kwh, 6)
            for m, t in ev.tallies.items()
            if t.reduced_kwh > 0
        }
        return ev

    def active(self) -> list[Event]:
        return [e for e in self.events.values() if e.ended_at is None]

    def status(self) -> dict[str, Any]:
        return {
            "events": [e.summary() for e in list(self.events.values())[-20:]],
            "bad_confirmations": self.bad_confirmations,
        }


def from_site(site: Any) -> DrCoordinator | None:
    """The coordinator of a site with demand-response programs and enrolled meter groups."""
    dr = getattr(site, "demand_response", None)
    if dr is None or not dr.programs:
        return None
    programs = [
        Program(p.id, p.kind, p.reduction_pct, p.max_duration_s, p.incentive_per_kwh, p.notice_s) for p in dr.programs
    ]
    groups = [Group(g.id, g.count, tuple(g.dr_programs), g.critical, len(g.critical_meters)) for g in site.meter_groups]
    if not any(g.programs for g in groups):
        return None
    return DrCoordinator(site.site.substation_id, programs, groups)
