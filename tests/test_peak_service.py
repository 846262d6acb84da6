"""Each peak action's controller on the example substation SUB-007, in process: the agents, the
switching authority and the process image are the daemon's own; the plant is a recorder of the
writes that reach it (what would go to the IEDs) and of what goes to the AMI broker."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.agent_host import AgentHost
from gateway.config import validate
from gateway.contract.clock import SimClock
from gateway.contract.settings import AmiConfig
from gateway.peak_service import PeakService, irradiance_at, parse_weather
from gateway.contract.points import PointKind, PointUpdate, ProcessImage
from gateway.storage import Store
from gateway.switching.peak import Start
from gateway.switching.service import SwitchingService
from gateway.contract.demand_response import DrConfirmation
from protocols.ami import AmiSubscriber
from protocols.demand_response import decode_event, encode_confirmation

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0


class Done:
    def add_done_callback(self, cb: Any) -> None:
        cb(self)

    def cancelled(self) -> bool:
        return False

    def exception(self) -> None:
        return None


class Ami(AmiSubscriber):
    """The AMI adapter's demand-response side (events encoded, confirmations decoded) over a
    broker that records what is published and hands the test each topic's handler."""

    def __init__(self, cfg: AmiConfig | None) -> None:
        assert cfg is not None
        super().__init__(cfg, "SUB-007", sink=lambda *_: None, clock=SimClock())
        self.connected = True
        self.sent: list[tuple[str, bytes]] = []
        self.handlers: dict[str, Any] = {}

    def on_topic(self, topic_filter: str, callback: Any) -> None:
        self.handlers[topic_filter] = callback

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> bool:
        if self.connected:
            self.sent.append((topic, payload))
        return self.connected


class Substation:
    """SUB-007 in process at 28.5 MW, 13.6 Mvar; every device closed but the tie. Its protection
    schemes are left out (the authority then writes the breakers' trip commands itself)."""

    def __init__(self, tmp: Path, peak: dict[str, Any] | None = None) -> None:
        doc = tomllib.loads((ROOT / "deploy/examples/sub-007.toml").read_text())
        doc.pop("protection", None)
        doc["peak"] = {"enabled": True, "settle_s": 10.0, **(peak or {})}
        doc["ami"]["weather_topic"] = "weather/SUB-007/forecast"
        self.site = validate(doc, "sub-007.toml")
        self.now = [100.0]
        self.image = ProcessImage()
        for ied in self.site.ieds:
            for p in ied.points:
                self.image.define(p.id, PointKind(p.point_kind.value), source=ied.id)
        self.store = Store(tmp / "stima.db")
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.writes: list[tuple[str, Any]] = []
        self.agents = AgentHost(
            self.site,
            self.image,
            store=self.store,
            publish=self._publish,
            monotonic=lambda: self.now[0],
            wall=lambda: T0 + self.now[0],
            defer=lambda f, *a: f(*a),
        )
        self.switching = SwitchingService(
            self.site,
            image=self.image,
            store=self.store,
            publish=self._publish,
            submit=self._submit,
            protection=None,
            agents=self.agents,
            monotonic=lambda: self.now[0],
            wall=lambda: T0 + self.now[0],
        )
        self.agents.operate = self.switching.operate
        self.ami = Ami(self.site.ami)
        self.peak = PeakService(
            self.site,
            switching=self.switching,
            agents=self.agents,
            image=self.image,
            store=self.store,
            publish=self._publish,
            monotonic=lambda: self.now[0],
            wall=lambda: T0 + self.now[0],
            ami=self.ami,
        )
        for dev in self.switching.network.devices.values():
            self.set(f"{dev.id}.closed", not dev.normally_open)
            self.set(f"{dev.id}.local", False)
            self.set(f"{dev.id}.voltage_kv", 11.0)
            self.set(f"{dev.id}.active_power_kw", 5_000.0 if dev.id.startswith("CB-") else 2_000.0)
        self.set("SUB-007.total_load_kw", 28_500.0)
        self.set("SUB-007.total_load_kvar", 13_600.0)
        self.set("XFMR-701.tap_position", 5)
        self.set("BESS-701.soc_pct", 80.0)
        self.set("CAP-071.steps_active", 2)
        self.set("CAP-072.steps_active", 0)

    def set(self, point: str, value: Any) -> None:
        if point in self.image:
            self.image.apply(
                PointUpdate(point_id=point, value=value, receive_monotonic=self.now[0], receive_time=T0 + self.now[0])
            )

    def _publish(self, suffix: str, payload: dict[str, Any], retain: bool = False) -> None:
        self.published.append((suffix, payload))

    def _submit(self, point: str, value: Any) -> Done:
        self.writes.append((point, value))
        return Done()

    def start(self, action: str, need_kw: float = 2_000.0) -> str | None:
        result: str | None = getattr(self.peak, f"_start_{action}")(Start(action, need_kw, need_kw))
        return result


def test_cvr_asks_the_tap_changer_which_lowers_its_taps_through_the_authority(tmp_path: Path) -> None:
    sub = Substation(tmp_path)
    assert sub.start("cvr") is None
    assert sub.agents.runtime.memory["XFMR-701"].cvr_active  # type: ignore[attr-defined]
    # the tap changer sees its secondary above the reduced set point and, after its delay, lowers a tap
    sub.set("XFMR-701.secondary_voltage_v", 11_270.0)
    for _ in range(60):
        sub.now[0] += 1.0
        sub.agents.tick()
    taps = [v for p, v in sub.writes if p == "XFMR-701.tap_setpoint"]
    assert taps and taps[0] < 5
    assert any(e["kind"] == "switching.operation" or "tap" in str(e) for e in sub.store.events(0.0, limit=500))
    assert sub.start("cvr") == "XFMR-701: CVR already in force"


def test_capacitors_asked_for_var_support_and_skipped_when_every_step_is_in(tmp_path: Path) -> None:
    sub = Substation(tmp_path)
    assert sub.start("capacitors") is None
    assert all(sub.agents.runtime.memory[c].var_support for c in ("CAP-071", "CAP-072"))  # type: ignore[attr-defined]
    sub.set("CAP-071.steps_active", 4)
    sub.set("CAP-072.steps_active", 3)
    assert "every step in" in str(sub.start("capacitors"))


def test_demand_response_events_to_enrolled_groups_only_in_force_on_a_confirmation(tmp_path: Path) -> None:
    sub = Substation(tmp_path)
    fleet = sub.agents.runtime.fleet
    fleet.demand_kw[:] = 2.0
    assert sub.start("demand_response", 5_000.0) == "waiting"
    events = [decode_event(p) for _, p in sub.ami.sent]
    groups = {e.concentrator_id for e in events}
    assert groups and "MTR-GRP-722" not in groups  # the hospital campus is never asked
    enrolled = {g.id for g in sub.site.meter_groups if g.dr_programs}
    assert groups <= enrolled
    assert all(
        t == f"ami/SUB-007/{e.concentrator_id}/dr/events" for (t, _), e in zip(sub.ami.sent, events, strict=True)
    )
    handler = sub.ami.handlers[sub.site.ami.dr_confirm_topic]
    sub.peak.manager.current = "demand_response"
    from gateway.switching.peak import PeakPhase

    sub.peak.manager.phase = PeakPhase.WAITING
    ev = events[0]
    conf = DrConfirmation(
        event_id=ev.event_id,
        substation_id="SUB-007",
        concentrator_id=ev.concentrator_id,
        time=T0,
        meters=("M-1", "M-2"),
        answers=("accepted", "not_enrolled"),
        demand_kw=(3.0, 1.0),
    )
    handler("ami/SUB-007/x/dr/confirmations", encode_confirmation(conf), False)
    assert sub.peak.manager.phase is PeakPhase.SETTLING
    handler("ami/SUB-007/x/dr/confirmations", b"\x00garbage", False)  # dropped, counted
    assert sub.peak.bad_inputs == 1


def test_demand_response_without_the_ami_broker_brings_nothing(tmp_path: Path) -> None:
    sub = Substation(tmp_path)
    sub.agents.runtime.fleet.demand_kw[:] = 2.0
    sub.ami.connected = False
    assert sub.start("demand_response") == "the AMI broker is not connected"


def test_der_discharges_the_battery_within_its_charge_and_rating(tmp_path: Path) -> None:
    sub = Substation(tmp_path, {"window_s": 7200.0})
    assert sub.start("der", 2_000.0) is None
    # 80 % charge, 10 % minimum, 1000 kWh: 700 kWh over 2 h is 350 kW, below the 500 kW rating
    assert sub.writes[-1] == ("BESS-701.p_setpoint_kw", 350.0)
    sub.set("BESS-701.soc_pct", 10.0)
    assert "no DER to dispatch" in str(sub.start("der"))


def test_shedding_advisory_publishes_the_plan_and_opens_nothing(tmp_path: Path) -> None:
    sub = Substation(tmp_path)
    assert sub.start("shed", 3_000.0) == "advisory: shedding plan published for the operator"
    assert not sub.writes
    [(_, plan)] = [(s, p) for s, p in sub.published if s == "notices/load_shedding_plan"]
    assert plan["plan"] and all(f["critical_customers"] == 0 for f in plan["plan"])


def test_automatic_shedding_opens_through_the_authority_never_the_hospital_first(tmp_path: Path) -> None:
    sub = Substation(tmp_path, {"shed": "automatic"})
    assert sub.start("shed", 3_000.0) is None
    opened = [p for p, v in sub.writes if p.endswith(".trip_cmd") and v]
    assert len(opened) == 1 and opened[0] != "CB-072.trip_cmd"  # LINE-072 feeds the hospital
    assert sub.peak.customers_shed > 0


def test_the_transfer_part_is_the_smallest_that_covers_the_need(tmp_path: Path) -> None:
    sub = Substation(tmp_path)
    sub.now[0] += 1.0
    sub.switching.tick()
    part = sub.peak.transfer_part  # without an exchange there is no tie list: use the network directly
    assert sub.start("transfer") == "no neighbouring substation to coordinate with"
    assert callable(part)


def test_weather_forecast_parsed_and_interpolated() -> None:
    payload = (
        b'{"v": 1, "substation_id": "SUB-007", "issued_at": 0, "step_s": 900, "forecast": '
        b'[{"time": 0, "irradiance_w_m2": 400, "temperature_c": 30}, {"time": 900, "irradiance_w_m2": 0}]}'
    )
    weather = parse_weather(payload, "SUB-007")
    assert irradiance_at(weather, 450.0) == pytest.approx(200.0)
    assert irradiance_at(weather, 1000.0) is None
    for bad, why in (
        (b"{", "not JSON"),
        (b'{"v": 2}', "v = 1"),
        (payload.replace(b"SUB-007", b"SUB-006"), "not this"),
        (payload.replace(b"400", b"4000"), "irradiance"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_weather(bad, "SUB-007")


def test_the_forecast_counts_on_what_the_sun_will_give(tmp_path: Path) -> None:
    """PV making 400 kW now, the weather says nothing in an hour: the forecast peak rises by 400 kW."""
    from gateway.agents.forecast import Forecast

    sub = Substation(tmp_path)
    sub.set("SOLAR-701.active_power_kw", 400.0)
    wall = T0 + sub.now[0]
    handler = sub.ami.handlers["weather/SUB-007/forecast"]
    handler(
        "weather/SUB-007/forecast",
        (
            '{"v": 1, "substation_id": "SUB-007", "issued_at": %f, "step_s": 1800, "forecast": ['
            '{"time": %f, "irradiance_w_m2": 500}, {"time": %f, "irradiance_w_m2": 0}]}' % (wall, wall, wall + 3600.0)
        ).encode(),
        True,
    )
    fc = Forecast(
        made_at=wall,
        times=(wall + 1800.0, wall + 3600.0),
        values_kw=(28_000.0, 28_000.0),
        method="test",
        level_kw=28_000.0,
        slope_kw_per_h=0.0,
        limit_kw=None,
        crossing_s=None,
        peak_kw=28_000.0,
        peak_at=wall + 1800.0,
    )
    assert sub.peak.corrected_peak_kw(fc) == pytest.approx(28_400.0)


def test_a_quote_for_a_window_days_ahead_uses_the_daily_shape_at_its_times_of_day(tmp_path: Path) -> None:
    """Night windows have room for a neighbour's load; the evening peak has none; without a daily
    shape the quote falls back to the present forecast peak, and says so."""
    from dataclasses import replace

    from gateway.agents.forecast import Forecast

    sub = Substation(tmp_path)
    for _ in range(5):
        sub.now[0] += 1.0
        sub.peak.sample()
    wall = T0 + sub.now[0]
    day = tuple(12_000.0 if 0 <= k < 24 else 29_000.0 if 72 <= k < 84 else 20_000.0 for k in range(96))
    fc = Forecast(
        made_at=wall,
        times=(wall + 1800.0,),
        values_kw=(28_000.0,),
        method="test",
        level_kw=0.0,
        slope_kw_per_h=0.0,
        limit_kw=None,
        crossing_s=None,
        peak_kw=28_000.0,
        peak_at=wall + 1800.0,
        daily_kw=day,
    )
    sub.peak.forecast = fc
    midnight = wall - wall % 86_400.0 + 3 * 86_400.0
    night, why = sub.peak.window_headroom("TIE-EXT", 2_000.0, midnight + 3600.0, midnight + 5 * 3600.0)
    evening, _ = sub.peak.window_headroom("TIE-EXT", 2_000.0, midnight + 18 * 3600.0, midnight + 20 * 3600.0)
    day_room, _ = sub.peak.window_headroom("TIE-EXT", 2_000.0, midnight + 10 * 3600.0, midnight + 12 * 3600.0)
    assert night > day_room > 0.0 == evening
    assert "daily shape" in why
    sub.peak.forecast = replace(fc, daily_kw=())
    sub.peak.forecast_peak_kw = 28_000.0
    _, why = sub.peak.window_headroom("TIE-EXT", 2_000.0, midnight + 3600.0, midnight + 5 * 3600.0)
    assert "present forecast peak" in why
