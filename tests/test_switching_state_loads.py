"""Section loads from the current balance are only as fresh as the currents: right after a
switching operation a current read before it still carries what flowed through the device that
moved, and a transfer back judged on it would be refused for a load that is no longer there."""

from __future__ import annotations

import pytest

from gateway.config import validate
from gateway.switching.network import SQRT3, Network
from gateway.switching.state import GridState
from hil.scenarios.predictive_maintenance import site


@pytest.fixture(scope="module")
def network() -> Network:
    return Network.from_site(validate(site()))


def feed(state: GridState, device: str, now: float, *, closed: bool | None = None, amps: float | None = None) -> None:
    if closed is not None:
        state.on_point(f"{device}.closed", closed, True, now)
    if amps is not None:
        for phase in ("ia", "ib", "ic"):
            state.on_point(f"{device}.{phase}", amps, True, now)


def kva(network: Network, section: str, amps: float) -> float:
    return SQRT3 * network.sections[section].nominal_kv * amps


def test_a_current_read_before_the_tie_opened_is_not_taken_for_the_sections_load(network: Network) -> None:
    state = GridState(network)
    # LINE-044/3 carries its own 30 A and, through the closed tie, 120 A of LINE-045
    feed(state, "SW-044-2", 0.0, closed=True, amps=150.0)
    feed(state, "TIE-044-045", 0.0, closed=True, amps=120.0)
    before = state.section_load("LINE-044/3")
    assert before is not None and abs(before.kva) == pytest.approx(kva(network, "LINE-044/3", 30.0))
    # the tie opens; the upstream switch's current has not been read since
    feed(state, "TIE-044-045", 1.0, closed=False, amps=0.0)
    stale = state.section_load("LINE-044/3")
    assert stale is None or abs(stale.kva) < kva(network, "LINE-044/3", 100.0)
    # the next poll of the upstream switch tells the load again
    feed(state, "SW-044-2", 1.2, amps=31.0)
    fresh = state.section_load("LINE-044/3")
    assert fresh is not None and abs(fresh.kva) == pytest.approx(kva(network, "LINE-044/3", 31.0))


def test_currents_read_with_the_position_in_the_same_poll_count(network: Network) -> None:
    state = GridState(network)
    feed(state, "SW-044-2", 5.0, closed=True, amps=40.0)
    feed(state, "TIE-044-045", 5.0, closed=False, amps=0.0)
    load = state.section_load("LINE-044/3")
    assert load is not None and abs(load.kva) == pytest.approx(kva(network, "LINE-044/3", 40.0))


def test_a_close_waits_for_its_far_side_voltage_read_after_the_tie_opened(network: Network) -> None:
    state = GridState(network)
    # LINE-046/3 fed through TIE-046-061 from the neighbour; SW-046-2 open, reading its far side live
    feed(state, "TIE-046-061", 0.0, closed=True)
    feed(state, "SW-046-2", 0.0, closed=False)
    state.on_point("SW-046-2.voltage_kv", 11.0, True, 0.0)
    assert not state.far_side_waiting("SW-046-2", 0.5, 3.0)  # nothing moved since it was read
    # the tie opens: the 11 kV was read before, so a close of SW-046-2 waits for a new reading...
    feed(state, "TIE-046-061", 1.0, closed=False)
    assert state.far_side_waiting("SW-046-2", 1.1, 3.0)
    # ...no longer than the limit (then the interlocks judge the old reading and refuse it)
    assert not state.far_side_waiting("SW-046-2", 4.1, 3.0)
    # a reading after the tie opened ends the wait, whatever it shows
    state.on_point("SW-046-2.voltage_kv", 0.0, True, 1.2)
    assert not state.far_side_waiting("SW-046-2", 1.3, 3.0)
    # the device's own moves do not count
    feed(state, "SW-046-2", 2.0, closed=True)
    feed(state, "SW-046-2", 2.5, closed=False)
    assert not state.far_side_waiting("SW-046-2", 2.6, 3.0)


def test_a_close_waits_after_a_move_anywhere_that_changed_its_far_sides_supply(network: Network) -> None:
    """Plan C's order: CB-045 opens at the head of its feeder, then TIE-044-045 closes at the far
    end to pick the feeder up from LINE-044. The tie's far side (LINE-045/2) is two sections from
    the breaker, and its voltage read before the breaker opened still shows 11 kV: judged on it
    the close would be refused as paralleling an unknown source."""
    state = GridState(network)
    for device in ("CB-044", "SW-044-1", "SW-044-2", "CB-045", "SW-045-1", "SW-045-2", "CB-046", "SW-046-1"):
        feed(state, device, 0.0, closed=True)
    for device in ("SW-046-2", "TIE-044-045", "TIE-045-046", "TIE-046-061"):
        feed(state, device, 0.0, closed=False)
    for device in ("CB-234P", "CB-235P"):
        feed(state, device, 0.0, closed=True)
    state.on_point("TIE-044-045.voltage_kv", 11.0, True, 0.0)
    assert not state.far_side_waiting("TIE-044-045", 0.5, 3.0)
    # a move that leaves LINE-045/2's supply as it was: no wait
    feed(state, "SW-046-2", 0.6, closed=True)
    assert not state.far_side_waiting("TIE-044-045", 0.7, 3.0)
    # the feeder breaker opens: LINE-045/2 is dead now, whatever the last reading says
    feed(state, "CB-045", 1.0, closed=False)
    assert state.far_side_waiting("TIE-044-045", 1.1, 3.0)
    state.on_point("TIE-044-045.voltage_kv", 0.0, True, 1.2)
    assert not state.far_side_waiting("TIE-044-045", 1.3, 3.0)


def test_a_fault_current_is_never_taken_for_a_load_to_estimate_with(network: Network) -> None:
    """Right after a fault is cleared the last reads still carry its current; with no load
    remembered for the section (a rig just started), the estimate must not take it for one:
    an authorised close after the repair was refused as an overload of 177 MVA."""
    state = GridState(network)
    feed(state, "SW-044-2", 0.0, closed=True, amps=9000.0)
    feed(state, "TIE-044-045", 0.0, closed=False, amps=0.0)
    live = state.section_load("LINE-044/3")
    assert live is not None and not state.plausible_load("LINE-044/3", live.kva)
    assert state.loads_for_estimate(1.0)["LINE-044/3"] == 0j
    # a load remembered from before is what the estimate takes
    feed(state, "SW-044-2", 2.0, amps=40.0)
    state.sample_loads(2.0, ["LINE-044/3"])
    feed(state, "SW-044-2", 3.0, amps=9000.0)
    assert abs(state.loads_for_estimate(3.0)["LINE-044/3"]) == pytest.approx(kva(network, "LINE-044/3", 40.0))
