"""The engine the daemon calls: reclose sequences, lockout, 50BF, 27/59/81, quality,
snapshot/restore, and the site-file schema, on both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.config import load
from gateway.protection.engine import (
    BreakerCommand,
    BreakerLockedOut,
    ProtectionEngine,
    ProtectionEvent,
)
from gateway.protection.settings import ProtectionScheme

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "deploy" / "examples" / "sub-003.toml"

try:
    import gateway.protection._native  # noqa: F401

    BACKENDS = ["reference", "native"]
except ImportError:  # pragma: no cover
    BACKENDS = ["reference"]


@pytest.fixture(scope="module")
def site():
    return load(SITE)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def scheme(**overrides: Any) -> ProtectionScheme:
    data: dict[str, Any] = {
        "breaker": "CB-1",
        "elements": {
            "51P": {"curve": "iec_si", "pickup_a": 400.0, "tms": 0.1, "fast_curve": "iec_si", "fast_tms": 0.05},
            "50P": {"pickup_a": 3000.0, "fast_only": True},
        },
        "reclose": {
            "shots": 3,
            "dead_times_s": [0.5, 15.0, 30.0],
            "reclaim_s": 30.0,
            "high_current_lockout_a": 10000.0,
        },
        "breaker_failure": {"current_a": 100.0, "retrip_s": 0.05, "backup_s": 0.15},
    }
    data.update(overrides)
    return ProtectionScheme.model_validate(data)


class Feeder:
    """One breaker that opens on trip commands and closes on close commands, feeding the engine
    with a fault current while closed (or always, if the breaker `stuck`)."""

    def __init__(self, engine: ProtectionEngine, breaker: str = "CB-1", load_a: float = 100.0) -> None:
        self.engine, self.breaker, self.load_a = engine, breaker, load_a
        self.closed = True
        self.fault_a = 0.0
        self.stuck = False
        self.voltage_kv = 11.0
        self.frequency_hz = 50.0
        self.good = True
        self.t = 0.0
        self.actions: list[Any] = []

    def current(self) -> float:
        if not self.closed and not self.stuck:
            return 0.0
        return self.fault_a or self.load_a

    def run(self, until: float, dt: float = 0.01) -> list[Any]:
        start = len(self.actions)
        while self.t < until - 1e-9:
            self.t = round(self.t + dt, 9)
            i = self.current()
            b = self.breaker
            for name, value in (
                ("ia", i),
                ("ib", i),
                ("ic", i),
                ("in", 0.0),
                ("voltage_kv", self.voltage_kv),
                ("frequency_hz", self.frequency_hz),
                ("closed", self.closed),
            ):
                self.apply(self.engine.on_sample(f"{b}.{name}", value, self.good, self.t))
        return self.actions[start:]

    def apply(self, actions: list[Any]) -> None:
        self.actions += actions
        for a in actions:
            if isinstance(a, BreakerCommand) and a.breaker == self.breaker:
                if a.reason in ("trip", "retrip", "backup_trip"):
                    self.closed = False if not self.stuck else self.closed
                elif a.reason in ("reclose", "close"):
                    self.closed = True


def commands(actions: list[Any]) -> list[BreakerCommand]:
    return [a for a in actions if isinstance(a, BreakerCommand)]


def events(actions: list[Any], kind: str) -> list[ProtectionEvent]:
    return [a for a in actions if isinstance(a, ProtectionEvent) and a.kind == kind]


# ------------------------------------------------------------------ the 79 sequence


def test_permanent_fault_runs_fast_then_delayed_to_lockout(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.run(1.0)
    feeder.fault_a = 2000.0  # M = 5
    actions = feeder.run(120.0)
    cmds = [(round(c.time, 2), c.reason) for c in commands(actions)]
    trips = [t for t, r in cmds if r == "trip"]
    recloses = [t for t, r in cmds if r == "reclose"]
    assert len(trips) == 4 and len(recloses) == 3
    fast, delayed = 0.05 * 4.27972, 0.1 * 4.27972  # IEC SI at M = 5
    assert trips[0] - 1.0 == pytest.approx(fast, abs=0.011)
    assert recloses[0] - trips[0] == pytest.approx(0.5, abs=0.011)
    # After a reclose, timing starts on the first fresh sample (one sample period later).
    assert delayed <= trips[1] - recloses[0] <= delayed + 0.021
    assert recloses[1] - trips[1] == pytest.approx(15.0, abs=0.011)
    assert recloses[2] - trips[2] == pytest.approx(30.0, abs=0.011)
    lockouts = events(actions, "lockout")
    assert len(lockouts) == 1 and lockouts[0].time == pytest.approx(trips[3])
    status = engine.status("CB-1")
    assert status["locked_out"] and status["reclose_state"] == "lockout" and status["shot"] == 4
    # Locked out: nothing more happens, however long we wait.
    assert not commands(feeder.run(200.0, dt=0.5))


def test_transient_fault_recloses_and_resets_after_reclaim(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.fault_a = 2000.0
    feeder.run(0.5)
    feeder.fault_a = 0.0  # cleared by the dead time
    feeder.run(40.0)
    actions = feeder.actions
    assert [c.reason for c in commands(actions)] == ["trip", "reclose"]
    assert len(events(actions, "reset")) == 1
    assert engine.status("CB-1")["shot"] == 0
    assert engine.status("CB-1")["reclose_state"] == "ready"


def test_permanent_fault_with_a_reclaim_shorter_than_the_trip_locks_out(backend: str) -> None:
    """reclaim_s 0.2 s, delayed trips 0.43 s: while the 51 is picked up after a reclose the
    reclaim time is held at its full value, so the sequence goes on to lockout after
    shots + 1 trips instead of starting over on every trip."""
    engine = ProtectionEngine(
        [scheme(reclose={"shots": 2, "dead_times_s": [0.5, 1.0], "reclaim_s": 0.2})], backend=backend
    )
    feeder = Feeder(engine)
    feeder.run(1.0)
    feeder.fault_a = 2000.0  # M = 5: fast 0.214 s, delayed 0.428 s
    first = feeder.run(2.0)
    assert [c.reason for c in commands(first)] == ["trip", "reclose"]
    reclose_t = commands(first)[1].time
    assert feeder.t - reclose_t > 0.2  # past the reclaim time, the fault still there
    status = engine.status("CB-1")
    assert status["reclose_state"] == "reclaim" and status["shot"] == 1
    assert status["timer_remaining_s"] == pytest.approx(0.2)
    actions = first + feeder.run(30.0)
    assert [c.reason for c in commands(actions)] == ["trip", "reclose", "trip", "reclose", "trip"]
    assert len(events(actions, "lockout")) == 1 and not events(actions, "reset")
    status = engine.status("CB-1")
    assert status["locked_out"] and status["shot"] == 3


def test_fast_only_instantaneous_on_first_trip_only(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.fault_a = 5000.0
    actions = feeder.run(3.0)
    trips = [a for a in events(actions, "trip")]
    assert trips[0].element == "50P" and trips[0].time == pytest.approx(0.01)
    later = [a.element for a in trips[1:]]
    assert later and "50P" not in later


def test_high_current_locks_out_at_once(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.fault_a = 12000.0
    actions = feeder.run(5.0)
    assert [c.reason for c in commands(actions)] == ["trip"]
    assert len(events(actions, "lockout")) == 1


def test_lockout_needs_an_authorised_close(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.fault_a = 12000.0
    feeder.run(1.0)
    with pytest.raises(BreakerLockedOut, match="CB-1 is locked out"):
        engine.manual_close("CB-1", feeder.t, authorised=False)
    assert engine.status("CB-1")["locked_out"]
    actions = engine.manual_close("CB-1", feeder.t, authorised=True)
    assert [c.reason for c in commands(actions)] == ["close"]
    assert commands(actions)[0].point_id == "CB-1.close_cmd"
    assert len(events(actions, "reset")) == 1
    assert engine.status("CB-1")["reclose_state"] == "ready"


def test_close_onto_fault_goes_straight_to_lockout(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.apply(engine.manual_trip("CB-1", 0.0))
    feeder.run(5.0)
    feeder.fault_a = 2000.0
    feeder.apply(engine.manual_close("CB-1", feeder.t, authorised=False))
    actions = feeder.run(60.0)
    assert [c.reason for c in commands(actions)] == ["trip"]
    assert len(events(actions, "lockout")) == 1


def test_manual_trip_blocks_reclosing(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.fault_a = 2000.0
    feeder.run(0.3)  # tripped on the fast curve, dead time running
    assert engine.status("CB-1")["reclose_state"] == "dead_time"
    actions = engine.manual_trip("CB-1", feeder.t)
    assert commands(actions)[0].reason == "trip" and commands(actions)[0].element == "manual"
    feeder.apply(actions)
    assert not commands(feeder.run(60.0))
    assert engine.status("CB-1")["reclose_state"] == "open"
    assert not engine.status("CB-1")["locked_out"]


def test_breaker_failure_retrips_then_backs_up_and_blocks_reclose(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.stuck = True
    feeder.fault_a = 2000.0
    actions = feeder.run(30.0)
    reasons = [(c.reason, round(c.time, 3)) for c in commands(actions)]
    trip_time = reasons[0][1]
    assert reasons[0][0] == "trip"
    assert ("retrip", round(trip_time + 0.05, 3)) in reasons
    assert ("backup_trip", round(trip_time + 0.15, 3)) in reasons
    assert not [r for r, _ in reasons if r == "reclose"]
    assert engine.status("CB-1")["locked_out"]
    assert any(e.element == "50BF" for e in events(actions, "trip"))


def test_breaker_that_opens_does_not_start_breaker_failure(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.fault_a = 2000.0
    actions = feeder.run(0.45)
    assert [c.reason for c in commands(actions)] == ["trip"]


# ------------------------------------------------------------------ other elements


def test_undervoltage_trips_after_its_delay_and_does_not_reclose(site, backend: str) -> None:
    engine = ProtectionEngine(site.protection, backend=backend)
    feeder = Feeder(engine, breaker="CB-045")
    feeder.run(1.0)
    feeder.voltage_kv = 0.7 * 11.0
    actions = feeder.run(10.0)
    trips = events(actions, "trip")
    assert trips and trips[0].element == "27"
    # Picked up on the first low sample (1.01 s); trips within one sample after the 2 s delay.
    assert 2.0 <= trips[0].time - 1.01 <= 2.0 + 0.0101
    assert trips[0].measured == pytest.approx(7.7)
    assert len(events(actions, "lockout")) == 1
    assert not [c for c in commands(actions) if c.reason == "reclose"]


def test_underfrequency_trips_and_is_blocked_at_low_voltage(site, backend: str) -> None:
    engine = ProtectionEngine(site.protection, backend=backend)
    feeder = Feeder(engine, breaker="CB-045")
    feeder.voltage_kv = 0.3 * 11.0  # blocks 81 (and would trip 27 only after 2 s)
    feeder.frequency_hz = 47.0
    assert not [e for e in events(feeder.run(1.5), "trip") if e.element == "81U"]
    feeder.voltage_kv = 11.0
    actions = feeder.run(3.0)
    trips = events(actions, "trip")
    assert trips and trips[0].element == "81U"


def test_overvoltage_trips(site, backend: str) -> None:
    engine = ProtectionEngine(site.protection, backend=backend)
    feeder = Feeder(engine, breaker="CB-045")
    feeder.voltage_kv = 1.15 * 11.0
    trips = events(feeder.run(3.0), "trip")
    assert trips and trips[0].element == "59"


def test_thermal_overload_trips_and_is_persisted(site, backend: str) -> None:
    engine = ProtectionEngine(site.protection, backend=backend)
    feeder = Feeder(engine, breaker="CB-045", load_a=530.0)  # above k I_B = 472.5 A, below 51P
    actions = feeder.run(2000.0, dt=1.0)
    trips = events(actions, "trip")
    assert trips and trips[0].element == "49"
    # Cold curve: t = tau ln(I^2 / (I^2 - (k I_B)^2)) = 900 s x 1.5837
    assert trips[0].time == pytest.approx(900.0 * 1.5834, rel=0.01)
    snap = engine.snapshot()
    theta = snap["breakers"]["CB-045"]["thermal"]["49"]
    assert 0.0 < theta[0] < 1.0  # cooling since the trip
    fresh = ProtectionEngine(site.protection, backend=backend)
    fresh.restore(msgpack.unpackb(msgpack.packb(snap)))
    assert fresh.status("CB-045")["thermal_theta"]["A"] == pytest.approx(theta[0])


def test_sample_that_is_not_good_never_trips(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.good = False
    feeder.fault_a = 5000.0
    assert not commands(feeder.run(5.0))
    feeder.good = True
    assert commands(feeder.run(6.0))


def test_cb046_trips_through_its_61850_position_point(site, backend: str) -> None:
    engine = ProtectionEngine(site.protection, backend=backend)
    feeder = Feeder(engine, breaker="CB-046")
    feeder.fault_a = 5000.0
    actions = feeder.run(1.0)
    cmd = commands(actions)[0]
    assert (cmd.point_id, cmd.value, cmd.reason) == ("CB-046.position_cmd", False, "trip")
    assert events(actions, "lockout")  # cable feeder: no reclosing
    close = commands(engine.manual_close("CB-046", feeder.t, authorised=True))[0]
    assert (close.point_id, close.value) == ("CB-046.position_cmd", True)


def test_unbound_point_is_ignored(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    assert engine.on_sample("XFMR-101.load_kw", 1e9, True, 0.0) == []
    assert "CB-1.ia" in engine.bound_points and "CB-1.voltage_kv" not in engine.bound_points


def test_backend_choice() -> None:
    with pytest.raises(ValueError, match="backend"):
        ProtectionEngine([scheme()], backend="fpga")
    assert ProtectionEngine([scheme()], backend="reference").backend_name == "reference"
    if "native" in BACKENDS:
        assert ProtectionEngine([scheme()]).backend_name == "native"


# ------------------------------------------------------------------ persistence


def test_lockout_survives_a_restart(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.fault_a = 12000.0
    feeder.run(1.0)
    blob = msgpack.packb(engine.snapshot())
    fresh = ProtectionEngine([scheme()], backend=backend)
    fresh.restore(msgpack.unpackb(blob))
    assert fresh.status("CB-1")["locked_out"]
    with pytest.raises(BreakerLockedOut):
        fresh.manual_close("CB-1", 0.0, authorised=False)


def test_restart_in_dead_time_locks_out_and_reclaim_continues(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    feeder = Feeder(engine)
    feeder.fault_a = 2000.0
    feeder.run(0.3)
    assert engine.status("CB-1")["reclose_state"] == "dead_time"
    fresh = ProtectionEngine([scheme()], backend=backend)
    fresh.restore(engine.snapshot())
    assert fresh.status("CB-1")["locked_out"]

    feeder.fault_a = 0.0
    feeder.run(5.0)  # reclosed, reclaim running (30 s from ~0.72 s)
    snap = engine.snapshot()
    assert snap["breakers"]["CB-1"]["state"] == "reclaim"
    remaining = snap["breakers"]["CB-1"]["timer_remaining_s"]
    assert 20.0 < remaining < 30.0
    fresh = ProtectionEngine([scheme()], backend=backend)
    fresh.restore(snap)
    assert fresh.status("CB-1")["reclose_state"] == "reclaim"
    # The monotonic clock of a new process starts elsewhere: timers are re-based.
    assert not fresh.step(5000.0)
    resets = events(fresh.step(5000.0 + remaining + 0.01), "reset")
    assert len(resets) == 1


def test_restore_rejects_garbage_with_a_clear_message() -> None:
    engine = ProtectionEngine([scheme()], backend="reference")
    with pytest.raises(ValueError, match="version"):
        engine.restore({"breakers": {}})
    with pytest.raises(ValueError, match="breakers.CB-1.state"):
        engine.restore({"version": 1, "breakers": {"CB-1": {"state": "sideways"}}})
    engine.restore({"version": 1, "breakers": {"CB-9": {"state": "lockout"}}})  # unknown: ignored
    assert not engine.status("CB-1")["locked_out"]


# ------------------------------------------------------------------ schema


def test_example_site_schemes(site) -> None:
    assert [s.breaker for s in site.protection] == ["CB-044", "CB-045", "CB-046"]
    known = {p.id for ied in site.ieds for p in ied.points}
    for s in site.protection:
        points = list(s.referenced_points())
        assert points and set(points) <= known
        assert len(points) == len(set(points))
    cb045 = site.protection[1]
    assert {"CB-045.voltage_kv", "CB-045.frequency_hz", "CB-045.trip_cmd"} <= set(cb045.referenced_points())


@pytest.mark.parametrize(
    ("patch", "where", "message"),
    [
        ({"reclose": {"shots": 2, "dead_times_s": [0.5]}}, ("reclose",), "one per shot"),
        (
            {"elements": {"51P": {"curve": "iec_si", "pickup_a": 400, "tms": 0.1, "reset": "dependent"}}},
            ("elements", "51P"),
            "needs an IEEE curve",
        ),
        ({"elements": {}}, (), "has no element"),
        (
            {"elements": {"51P": {"curve": "iec_xx", "pickup_a": 400, "tms": 0.1}}},
            ("elements", "51P", "curve"),
            "iec_si",
        ),
        ({"elements": {"50P": {"pickup_a": -1}}}, ("elements", "50P", "pickup_a"), "greater than 0"),
        (
            {"breaker_failure": {"current_a": 100, "retrip_s": 0.2, "backup_s": 0.1}},
            ("breaker_failure",),
            "must exceed retrip_s",
        ),
        ({"tripp": {"point": "x"}}, ("tripp",), "Extra inputs"),
        ({"elements": {"50P": {"pickup_a": 3000, "fast_only": True}}}, (), "needs a 'reclose' section"),
        ({"elements": {"50P": {"pickup_a": float("inf")}}}, ("elements", "50P", "pickup_a"), "finite number"),
    ],
)
def test_schema_errors_name_the_key(patch: dict[str, Any], where: tuple[str, ...], message: str) -> None:
    data: dict[str, Any] = {"breaker": "CB-1", "elements": {"51P": {"curve": "iec_si", "pickup_a": 400.0, "tms": 0.1}}}
    data.update(patch)
    with pytest.raises(ValidationError) as info:
        ProtectionScheme.model_validate(data)
    errors = info.value.errors()
    assert any(tuple(str(p) for p in e["loc"])[: len(where)] == where and message in e["msg"] for e in errors), errors


def test_close_right_after_lockout_does_not_trip_on_measurements_from_before(backend: str) -> None:
    """The operator closes before the open breaker's zero currents have been polled: the fault
    currents still in the image predate the close and must not trip the breaker again."""
    engine = ProtectionEngine([scheme()], backend=backend)
    for n in ("ia", "ib", "ic"):
        engine.on_sample(f"CB-1.{n}", 12000.0, True, 0.0)  # high-current lockout
    engine.on_sample("CB-1.closed", True, True, 0.0)
    assert engine.status("CB-1")["locked_out"]
    actions = engine.manual_close("CB-1", 0.008, authorised=True)
    assert [c.reason for c in commands(actions)] == ["close"]
    # The breaker's position is polled first: still the stale fault currents in the arrays.
    assert not commands(engine.on_sample("CB-1.closed", True, True, 0.02))
    # Fresh samples: the fault is gone.
    for n in ("ia", "ib", "ic"):
        assert not commands(engine.on_sample(f"CB-1.{n}", 50.0, True, 0.03))
    assert not commands(engine.step(2.0))
    assert engine.status("CB-1")["reclose_state"] == "ready"


def test_stale_hold_expires_for_ieds_that_report_only_changes(backend: str) -> None:
    engine = ProtectionEngine([scheme()], backend=backend)
    for n in ("ia", "ib", "ic"):
        engine.on_sample(f"CB-1.{n}", 12000.0, True, 0.0)
    engine.manual_close("CB-1", 0.01, authorised=True)
    assert not commands(engine.step(0.3))
    # No fresh report within the hold: the (unchanged) values count again, and the close was
    # onto a fault.
    actions = engine.step(0.6)
    assert [c.reason for c in commands(actions)] == ["trip"]
    assert events(actions, "lockout")


_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 50),
    st.floats(-10, 1e5),
    st.just(float("nan")),
    st.just(float("inf")),
    st.text(max_size=8),
    st.lists(st.floats(-1, 100), max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(
    reclose=st.dictionaries(
        st.sampled_from(["shots", "dead_times_s", "trip_curves", "reclaim_s", "high_current_lockout_a", "bogus"]), _ANY
    ),
    p51=st.dictionaries(
        st.sampled_from(["curve", "pickup_a", "tms", "reset", "m_max", "start_factor"]),
        st.one_of(_ANY, st.sampled_from(["iec_si", "ieee_vi", "dependent", "instant"])),
    ),
)
def test_any_scheme_either_validates_and_builds_or_is_refused_clearly(reclose, p51) -> None:
    data = {"breaker": "CB-1", "elements": {"51P": p51}, "reclose": reclose}
    try:
        s = ProtectionScheme.model_validate(data)
    except ValidationError as exc:
        assert exc.errors()
        return
    engine = ProtectionEngine([s], backend="native" if "native" in BACKENDS else "reference")
    assert engine.status("CB-1")["reclose_state"] == "ready"


def test_reload_hand_over_continues_the_dead_time_and_keeps_changed_schemes_apart(backend: str) -> None:
    """A live hand-over (same clock), unlike a restart: the dead time in progress ends in its
    reclose on time; a breaker whose scheme changed is not taken over; the gap is measured."""
    two = [scheme(), scheme(breaker="CB-2")]
    engine = ProtectionEngine(two, backend=backend)
    engine.watch_gaps()
    feeder = Feeder(engine)
    feeder.fault_a = 2000.0
    feeder.run(0.3)
    assert engine.status("CB-1")["reclose_state"] == "dead_time"
    remaining = engine.status("CB-1")["timer_remaining_s"]
    changed = [scheme(), scheme(breaker="CB-2", reclose={"shots": 1, "dead_times_s": [1.0], "reclaim_s": 10.0})]
    new = ProtectionEngine(changed, backend=backend)
    assert new.take_over(engine) == ["CB-1"]
    assert new.status("CB-1")["reclose_state"] == "dead_time" and new.status("CB-1")["shot"] == 1
    assert new.status("CB-2")["reclose_state"] == "ready"
    feeder.engine, feeder.fault_a = new, 0.0
    actions = feeder.run(0.3 + remaining + 0.05)
    assert [c.reason for c in commands(actions)] == ["reclose"]
    assert feeder.closed and new.status("CB-1")["reclose_state"] == "reclaim"
    assert new.longest_gap_s == pytest.approx(0.01, abs=1e-6)  # one sample period: no gap of its own


def test_voltage_and_frequency_trips_carry_what_they_measured_in_the_event_record(site, backend: str) -> None:
    """The events topic and the event log say which voltage or frequency a 27/59/81 acted on."""
    from gateway.protection.bridge import event_record

    engine = ProtectionEngine(site.protection, backend=backend)
    feeder = Feeder(engine, breaker="CB-045")
    feeder.run(1.0)
    feeder.voltage_kv = 0.7 * 11.0
    [trip] = events(feeder.run(10.0), "trip")
    record = event_record(trip)
    assert record["element"] == "27" and record["voltage_kv"] == pytest.approx(7.7) and "frequency_hz" not in record
    engine = ProtectionEngine(site.protection, backend=backend)
    feeder = Feeder(engine, breaker="CB-045")
    feeder.run(1.0)
    feeder.frequency_hz = 47.0
    trips = [e for e in events(feeder.run(3.0), "trip") if e.element == "81U"]
    assert trips and event_record(trips[0])["frequency_hz"] == pytest.approx(47.0)
    overcurrent = ProtectionEngine([scheme()], backend=backend)
    fault = Feeder(overcurrent)
    fault.fault_a = 2000.0
    [first, *_] = events(fault.run(0.45), "trip")
    assert event_record(first)["current_a"] == pytest.approx(2000.0, rel=0.05)
    assert "voltage_kv" not in event_record(first)
