"""Demand response at the meters: which meters follow an event, and by how much their demand moves.

Sans-IO and column-wise (one entry per meter, as the model holds meters). An event names a
program, a set of meters (a meter group, or a list), a start, a duration and the reduction asked
for. Each meter answers once, at dispatch:

- `accepted`: enrolled in the program (its group is), not critical, and a responder: its demand
  is scaled by (1 − r) during the event; for a `shift` program the deferred demand comes back
  `shift_h` later, (1 + r) for as long as the event lasted (the process runs later, not less);
- `not_enrolled`: its group is not enrolled in the program;
- `critical`: a critical meter (or a meter of a critical group): never curtailed;
- no answer at all: a non-responder (a customer who overrides, a device offline): enrolled but
  neither confirms nor reduces. Which meters are non-responders is drawn once from the seed
  (`[simulation.demand_response] responders_pct`), so a run replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

ACCEPTED, NOT_ENROLLED, CRITICAL, SILENT = "accepted", "not_enrolled", "critical", "silent"


@dataclass(frozen=True, slots=True)
class ProgramTerms:
    id: str
    kind: str
    """curtail or shift"""
    shift_s: float = 0.0


@dataclass(slots=True)
class _Active:
    event_id: str
    meters: npt.NDArray[np.int64]
    start_s: float
    duration_s: float
    reduction: float
    shift_s: float


@dataclass(slots=True)
class DemandResponse:
    """Every meter's enrolment, and the events under way."""

    group_of_meter: npt.NDArray[np.int64]
    """Index of each meter's group in `group_programs`."""
    group_programs: list[frozenset[str]]
    critical: npt.NDArray[np.bool_]
    """Per meter: never curtailed."""
    responder: npt.NDArray[np.bool_]
    """Per meter: follows the events it accepts (drawn from the seed)."""
    events: list[_Active] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        group_of_meter: npt.NDArray[np.int64],
        group_programs: list[frozenset[str]],
        critical: npt.NDArray[np.bool_],
        responders_pct: float,
        seed: int,
    ) -> DemandResponse:
        rng = np.random.default_rng([seed, 5])
        responder = rng.random(len(group_of_meter)) < responders_pct / 100.0
        return cls(group_of_meter, group_programs, critical, responder)

    def dispatch(
        self,
        event_id: str,
        program: ProgramTerms,
        meters: npt.NDArray[np.int64],
        start_s: float,
        duration_s: float,
        reduction_pct: float,
    ) -> list[str]:
        """Register an event for `meters` (indices); each meter's answer, in their order. An event id
        seen before is not applied twice (a duplicated message): the answers are repeated."""
        enrolled = np.array([program.id in self.group_programs[g] for g in self.group_of_meter[meters]], dtype=bool)
        critical = self.critical[meters]
        responds = self.responder[meters]
        answers = np.where(critical, CRITICAL, np.where(~enrolled, NOT_ENROLLED, np.where(responds, ACCEPTED, SILENT)))
        if event_id not in self.seen:
            self.seen.add(event_id)
            taking = meters[answers == ACCEPTED]
            if taking.size:
                self.events.append(
                    _Active(
                        event_id,
                        taking,
                        start_s,
                        duration_s,
                        reduction_pct / 100.0,
                        program.shift_s if program.kind == "shift" else 0.0,
                    )
                )
        return [str(a) for a in answers]

    def factors(self, now_s: float) -> npt.NDArray[np.float64]:
        """Each meter's demand multiplier at `now_s` (1 where no event acts)."""
        out = np.ones(len(self.group_of_meter))
        keep = []
        for ev in self.events:
            end = ev.start_s + ev.duration_s
            if ev.start_s <= now_s < end:
                out[ev.meters] *= 1.0 - ev.reduction
            if ev.shift_s > 0 and ev.start_s + ev.shift_s <= now_s < end + ev.shift_s:
                out[ev.meters] *= 1.0 + ev.reduction
            if now_s < end + ev.shift_s:
                keep.append(ev)
        self.events = keep
        return out

    def active(self, now_s: float) -> list[str]:
        return [ev.event_id for ev in self.events if ev.start_s <= now_s < ev.start_s + ev.duration_s]
