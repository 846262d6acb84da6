"""Revenue protection: a transformer's energy against its meters', windows, persistence, suspects."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.maintenance.revenue import RevenueGuard, RevenueSettings

IDS = [f"MTR-164-{k:05d}" for k in range(1, 13)]
SHARES = np.array([0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.1, 0.06, 0.05, 0.12, 0.14, 0.08])


class Feeder:
    """A transformer and its twelve meters; `registered` says what share each meter records."""

    def __init__(self, kw: float = 30.0) -> None:
        self.kw = kw
        self.energy = np.zeros(12)
        self.registered = np.ones(12)
        self.read = np.zeros(12)
        self.t = 0.0

    def run(self, guard: RevenueGuard, seconds: float, step: float = 30.0) -> list:
        out = []
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.t += step
            self.energy += SHARES * self.registered * self.kw * step / 3600.0
            self.read[:] = self.t
            guard.on_load("X", self.kw * (1 + 0.01 * np.sin(self.t / 300)), self.t)
            out += guard.evaluate(self.t, self.energy, self.read)
        return out


def guard(**kw: float) -> RevenueGuard:
    settings = RevenueSettings(
        **{
            "window_s": 600.0,
            "threshold_percent": 5.0,
            "technical_loss_percent": 0.0,
            "persistence": 2,
            "baseline_windows": 6,
            **kw,
        }
    )  # type: ignore[arg-type]
    return RevenueGuard({"X": (("MTR-GRP-164",), np.arange(12), IDS)}, settings)


def test_a_balanced_feeder_raises_nothing() -> None:
    g, f = guard(), Feeder()
    assert f.run(g, 6 * 3600) == []


def test_a_bypassed_meter_is_found_and_ranked_first_once_per_episode() -> None:
    g, f = guard(), Feeder()
    assert f.run(g, 3600) == []
    f.registered[10] = 0.0  # the largest customer's meter bypassed
    findings = f.run(g, 3600)
    assert len(findings) == 1  # reported once, after two windows over the threshold
    finding = findings[0]
    assert finding.kind == "unexplained_energy" and finding.windows_over == 2
    assert finding.gap_percent == pytest.approx(100 * SHARES[10], abs=1.0)
    assert finding.suspects[0].meter == IDS[10]
    assert finding.suspects[0].missing_kwh == pytest.approx(finding.gap_kwh, rel=0.05)
    assert "registered nothing" in finding.suspects[0].reason
    f.registered[10] = 1.0  # repaired: the episode ends, a new one would be reported again
    assert f.run(g, 1800) == []
    f.registered[3] = 0.2
    again = f.run(g, 1800)
    assert len(again) == 1 and again[0].suspects[0].meter == IDS[3]


def test_losses_are_allowed_for_and_a_small_gap_is_not_theft() -> None:
    g, f = guard(technical_loss_percent=3.0), Feeder()
    f.registered[:] = 0.97  # 3 % lost on the way: exactly the modelled losses
    assert f.run(g, 3 * 3600) == []


def test_meters_registering_more_than_delivered_is_a_malfunction() -> None:
    g, f = guard(), Feeder()
    f.run(g, 3600)
    f.registered[2] = 3.0
    findings = f.run(g, 1800)
    assert len(findings) == 1 and findings[0].kind == "over_registration" and findings[0].gap_kwh < 0
    assert findings[0].suspects[0].meter == IDS[2]


def test_a_window_with_silent_meters_or_no_supply_is_not_judged() -> None:
    g, f = guard(persistence=1), Feeder()
    f.run(g, 1200)
    f.registered[0] = 0.0
    out = []
    t_end = f.t + 1200
    while f.t < t_end:  # meter 5 stops reporting: no balance can be drawn
        f.t += 10
        f.energy += SHARES * f.registered * f.kw * 10 / 3600
        f.read[np.arange(12) != 5] = f.t
        g.on_load("X", f.kw, f.t)
        out += g.evaluate(f.t, f.energy, f.read)
    assert out == []
    g.on_load("X", None, f.t + 1)  # transformer not supplied
    assert g.evaluate(f.t + 700, f.energy, f.read + 700) == []
