"""Demand-response events and confirmations: what the gateway and the concentrators exchange.

The demand-response coordinator (`gateway.demand_response`) plans `DrEvent`s and counts
`DrConfirmation`s; the AMI adapter (`protocols.ami`, with `protocols.demand_response` its wire
format, docs/ami.md#demand-response) carries them. Each checks its own fields when made: a value
that does not fit raises `DrPayloadError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_METERS = 100_000
ANSWERS = ("accepted", "not_enrolled", "critical")
"""What a meter answers; an enrolled meter that does not follow the event does not answer at all."""


class DrPayloadError(ValueError):
    """Not a valid demand-response event or confirmation; the message says which field and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DrEvent:
    event_id: str
    program: str
    concentrator_id: str
    """The meter group the event is for (its concentrator)."""
    start: float
    """POSIX seconds (UTC) when the reduction begins."""
    duration_s: float
    reduction_pct: float | None = None
    """Asked reduction, % of each meter's demand (None: the program's own)."""
    meters: tuple[str, ...] | None = None
    """Only these meters of the group (None: every meter of the group)."""
    issued_at: float = 0.0

    def __post_init__(self) -> None:
        for name in ("event_id", "program", "concentrator_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= 128:
                raise DrPayloadError(f"{name} must be a non-empty string of at most 128 characters, found {value!r}")
        if not _finite(self.start) or self.start < 0:
            raise DrPayloadError(f"start must be POSIX seconds, found {self.start!r}")
        if not _finite(self.duration_s) or not 0 < self.duration_s <= 86_400:
            raise DrPayloadError(f"duration_s must be in (0, 86400], found {self.duration_s!r}")
        if self.reduction_pct is not None and (not _finite(self.reduction_pct) or not 0 < self.reduction_pct <= 100):
            raise DrPayloadError(f"reduction_pct must be in (0, 100], found {self.reduction_pct!r}")
        if self.meters is not None:
            if len(self.meters) > MAX_METERS or not all(isinstance(m, str) and m for m in self.meters):
                raise DrPayloadError(f"meters must be at most {MAX_METERS} meter ids")


@dataclass(frozen=True, slots=True, kw_only=True)
class DrConfirmation:
    event_id: str
    substation_id: str
    concentrator_id: str
    time: float
    meters: tuple[str, ...]
    answers: tuple[str, ...]
    """One of ANSWERS per meter, in the order of `meters`."""
    demand_kw: tuple[float, ...]
    """Each meter's demand when it answered (the baseline its reduction is counted from)."""
    error: str = ""
    """Set when the whole event was refused (unknown program, too long...); `meters` is then empty."""

    def __post_init__(self) -> None:
        if not (len(self.meters) == len(self.answers) == len(self.demand_kw)):
            raise DrPayloadError("meters, answers and demand_kw must have the same length")
        bad = sorted(set(self.answers) - set(ANSWERS))
        if bad:
            raise DrPayloadError(f"answers must be among {', '.join(ANSWERS)}, found {', '.join(bad)}")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
