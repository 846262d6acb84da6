"""Revenue protection: each metered distribution transformer's energy against its meters'.

Over each window of `window_s`, the energy the transformer delivered (its measured kW at the
secondary, integrated by the trapezoid rule) is set against the energy its meters registered
(each meter's register at the window's end minus at its start) and the modelled losses of the
low-voltage network between them (`technical_loss_percent` of the transformer's energy):

    gap = E_transformer − Σ E_meters − losses          gap % = 100 · gap / E_transformer

A gap above `threshold_percent` for `persistence` windows in a row is unexplained energy: a
bypassed or tampered meter, or an illegal connection (positive gap); a gap below minus the
threshold is meters registering more than was delivered: a meter malfunction or a meter
associated with the wrong transformer. Either is reported once per episode, with the meters
ranked by how far their consumption fell from their own pattern: each meter's expected energy
is its share of the transformer's energy over the previous `baseline_windows` windows, applied
to this window; the meters registering least against their expectation come first (a bypass
shows as a meter that suddenly registers a fraction of what it used to).

A window in which the transformer was not supplied, or with a meter that did not report at its
start or end, is skipped: a balance needs every term.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MIN_TRANSFORMER_KWH = 0.01
"""Below this a window's balance is noise (a transformer with no load)."""
SUSPECTS = 5


@dataclass(frozen=True, slots=True)
class RevenueSettings:
    window_s: float = 3600.0
    threshold_percent: float = 5.0
    technical_loss_percent: float = 2.0
    persistence: int = 2
    baseline_windows: int = 6


@dataclass(frozen=True, slots=True)
class Suspect:
    meter: str
    registered_kwh: float
    expected_kwh: float | None
    missing_kwh: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "registered_kwh": round(self.registered_kwh, 4),
            "expected_kwh": None if self.expected_kwh is None else round(self.expected_kwh, 4),
            "missing_kwh": round(self.missing_kwh, 4),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    transformer: str
    groups: tuple[str, ...]
    kind: str
    """unexplained_energy (theft, bypass) or over_registration (meter malfunction)."""
    window_start: float
    window_end: float
    transformer_kwh: float
    metered_kwh: float
    losses_kwh: float
    gap_kwh: float
    gap_percent: float
    threshold_percent: float
    windows_over: int
    suspects: tuple[Suspect, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "transformer": self.transformer,
            "groups": list(self.groups),
            "finding": self.kind,
            "window_s": round(self.window_end - self.window_start, 1),
            "transformer_kwh": round(self.transformer_kwh, 4),
            "metered_kwh": round(self.metered_kwh, 4),
            "losses_kwh": round(self.losses_kwh, 4),
            "gap_kwh": round(self.gap_kwh, 4),
            "gap_percent": round(self.gap_percent, 2),
            "threshold_percent": self.threshold_percent,
            "windows_over": self.windows_over,
            "suspects": [s.to_dict() for s in self.suspects],
        }


class _Balance:
    """One transformer's running window."""

    def __init__(self, index: npt.NDArray[np.int64], ids: Sequence[str], keep: int) -> None:
        self.index = index
        self.ids = list(ids)
        self.start: float | None = None
        self.start_energy: npt.NDArray[np.float64] | None = None
        self.start_read: npt.NDArray[np.float64] | None = None
        self.energy_kwh = 0.0
        self.last: tuple[float, float] | None = None
        self.dead = False
        self.over = 0
        self.reported = False
        self.history: deque[tuple[npt.NDArray[np.float64], float]] = deque(maxlen=keep)
        """(per-meter kWh, transformer kWh) of the previous windows."""


class RevenueGuard:
    """Energy balances of the transformers whose load is measured and whose meters are known."""

    def __init__(
        self,
        meters: Mapping[str, tuple[tuple[str, ...], npt.NDArray[np.int64], Sequence[str]]],
        settings: RevenueSettings | None = None,
    ) -> None:
        """`meters`: transformer → (its meter groups, the meters' indices in the fleet, their ids)."""
        self.settings = settings or RevenueSettings()
        self.groups = {x: g for x, (g, _, _) in meters.items()}
        self._balances = {x: _Balance(idx, ids, self.settings.baseline_windows) for x, (_, idx, ids) in meters.items()}

    @property
    def transformers(self) -> list[str]:
        return list(self._balances)

    def on_load(self, transformer: str, kw: float | None, now: float) -> None:
        """The transformer's measured load at `now` (None: unknown or not supplied)."""
        b = self._balances.get(transformer)
        if b is None:
            return
        if kw is None or not math.isfinite(kw):
            b.dead = True
            b.last = None
            return
        if b.last is not None and now > b.last[0]:
            b.energy_kwh += 0.5 * (b.last[1] + kw) * (now - b.last[0]) / 3600.0
        b.last = (now, kw)

    def evaluate(
        self,
        now: float,
        energy_kwh: npt.NDArray[np.float64],
        last_reading: npt.NDArray[np.float64],
        known: npt.NDArray[np.bool_] | None = None,
        supplied: Mapping[str, bool] | None = None,
    ) -> list[Finding]:
        """Close the windows that are due; the findings to report (at most one per episode).

        `known`: meters whose energy register has been read at least once (a window opens only
        when all of a transformer's meters are known)."""
        out = []
        s = self.settings
        for xfmr, b in self._balances.items():
            if supplied is not None and not supplied.get(xfmr, True):
                b.dead = True
            if b.start is None:
                if known is None or bool(known[b.index].all()):
                    self._open(b, now, energy_kwh, last_reading)
                continue
            if now - b.start < s.window_s:
                continue
            finding = self._close(xfmr, b, now, energy_kwh, last_reading)
            if finding is not None:
                out.append(finding)
            self._open(b, now, energy_kwh, last_reading)
        return out

    def _open(
        self, b: _Balance, now: float, energy: npt.NDArray[np.float64], last_reading: npt.NDArray[np.float64]
    ) -> None:
        b.start = now
        b.start_energy = energy[b.index].astype(np.float64).copy()
        b.start_read = last_reading[b.index].astype(np.float64).copy()
        b.energy_kwh = 0.0
        b.dead = b.last is None
        if b.last is not None:
            b.last = (now, b.last[1])

    def _close(
        self, xfmr: str, b: _Balance, now: float, energy: npt.NDArray[np.float64], last_reading: npt.NDArray[np.float64]
    ) -> Finding | None:
        s = self.settings
        assert b.start is not None and b.start_energy is not None and b.start_read is not None
        fresh = last_reading[b.index] > b.start_read
        e_xfmr = b.energy_kwh
        if b.dead or not fresh.all() or e_xfmr < MIN_TRANSFORMER_KWH:
            return None
        per_meter = energy[b.index] - b.start_energy
        if (per_meter < -1e-6).any():  # a register that went backwards: a replaced or reset meter
            return None
        metered = float(per_meter.sum())
        losses = s.technical_loss_percent / 100.0 * e_xfmr
        gap = e_xfmr - metered - losses
        pct = 100.0 * gap / e_xfmr
        history = list(b.history)
        b.history.append((per_meter.copy(), e_xfmr))
        if abs(pct) <= s.threshold_percent:
            b.over = 0
            b.reported = False
            return None
        b.over += 1
        if b.over < s.persistence or b.reported:
            return None
        b.reported = True
        return Finding(
            transformer=xfmr,
            groups=self.groups[xfmr],
            kind="unexplained_energy" if gap > 0 else "over_registration",
            window_start=b.start,
            window_end=now,
            transformer_kwh=e_xfmr,
            metered_kwh=metered,
            losses_kwh=losses,
            gap_kwh=gap,
            gap_percent=pct,
            threshold_percent=s.threshold_percent,
            windows_over=b.over,
            suspects=self._suspects(b, per_meter, e_xfmr, history, gap > 0),
        )

    def _suspects(
        self,
        b: _Balance,
        per_meter: npt.NDArray[np.float64],
        e_xfmr: float,
        history: list[tuple[npt.NDArray[np.float64], float]],
        missing: bool,
    ) -> tuple[Suspect, ...]:
        baseline = [(m, e) for m, e in history if e > MIN_TRANSFORMER_KWH]
        # windows before the trouble started are the pattern; the windows already over the threshold are not
        baseline = baseline[: max(0, len(baseline) - (b.over - 1))]
        if baseline:
            shares = np.mean([m / e for m, e in baseline], axis=0)
            expected = shares * e_xfmr
            short = expected - per_meter
        else:
            expected = None
            short = -per_meter  # no pattern yet: the meters registering least first
        order = np.argsort(-short if missing else short, kind="stable")[:SUSPECTS]
        out = []
        for k in order:
            reg = float(per_meter[k])
            exp = None if expected is None else float(expected[k])
            miss = float(short[k])
            if exp is None:
                reason = "registered the least energy of the transformer's meters (no pattern yet)"
            elif missing:
                drop = 100.0 * (1.0 - reg / exp) if exp > 0 else 0.0
                reason = (
                    f"registered {reg:.3g} kWh where its own pattern gives {exp:.3g} kWh ({drop:.0f} % less)"
                    if reg > 1e-9
                    else f"registered nothing where its own pattern gives {exp:.3g} kWh"
                )
            else:
                reason = f"registered {reg:.3g} kWh where its own pattern gives {exp:.3g} kWh (more than expected)"
            out.append(Suspect(b.ids[k], reg, exp, miss if missing else -miss, reason))
        return tuple(out)
