"""Quotes between substations, for predictive maintenance's plan B: plan B at SUB-003 asks SUB-006,
over the signed exchange between the two gateways (Ed25519, each gateway's own key), what it could
carry through TIE-046-061 during the outage window; SUB-006 answers from its forecast headroom,
nothing switched, nothing reserved. Two exchange services on the real networks of both sites talk
through an in-memory broker; malformed, stale, forged and replayed questions are refused or
dropped; a silent neighbour or one that refuses leaves plan B on the declared capacity, marked."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.keys as keys
from gateway.config import validate
from gateway.maintenance import backup
from gateway.maintenance.backup import DECLARED, QuotedNeighbour
from gateway.switching.exchange import ExchangeService, headroom_from_forecast
from gateway.switching.network import Network
from gateway.switching.quote import QuoteBook
from gateway.switching.transfer import Message, TieInfo, TransferError
from hil.scenarios.predictive_maintenance import site
from protocols.mqtt import RESERVED_KEYS
from tests.support.feeder_sites import feeder_site, site_config
from tests.test_maintenance_backup import NIGHT, OUT

REGION = "stima/test"
TIE = "TIE-046-061"
WALL0 = 1.9e9
WINDOW = (WALL0 + 3 * 86400.0, WALL0 + 3 * 86400.0 + 6 * 3600.0)


@dataclass
class Net:
    """The regional broker between the gateways: it carries what each publishes to `coord/<to>`."""

    clock: list[float]
    gateways: dict[str, ExchangeService] = field(default_factory=dict)
    public: dict[str, bytes] = field(default_factory=dict)
    queue: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    silent: set[str] = field(default_factory=set)
    wall0: float = WALL0

    def verify(self, envelope: dict[str, Any], sender: str) -> dict[str, Any]:
        key = self.public.get(sender)
        if key is None:
            raise ValueError(f"{sender} is not a neighbour with a known key")
        try:
            return keys.verify({k: v for k, v in envelope.items() if k not in RESERVED_KEYS}, key)
        except keys.KeyRefused as exc:
            raise ValueError(f"{exc.reason}: {exc.message}") from None

    def gateway(self, name: str, network: Network, tmp: Path, headroom_kw: float) -> ExchangeService:
        own = keys.load_or_create_keypair(tmp / name, f"gw-{name}")
        self.public[name] = own.public

        def publish(suffix: str, payload: dict[str, Any], retain: bool = False) -> None:
            if suffix.startswith("coord/"):
                self.queue.append((f"{REGION}/{name}/{suffix}", payload))

        plant = SimpleNamespace(network=network, outcome_listeners=[])
        svc = ExchangeService(
            name,
            REGION,
            switching=plant,
            publish=publish,
            sign=own.sign,
            verify=self.verify,
            headroom=headroom_from_forecast(40_000.0, 90.0, lambda: 36_000.0 - headroom_kw),
            monotonic=lambda: self.clock[0],
            wall=lambda: self.wall0 + self.clock[0],
            alarm=lambda *_: None,
        )
        self.gateways[name] = svc
        return svc

    def deliver(self) -> None:
        while self.queue:
            topic, payload = self.queue.pop(0)
            to = topic.rsplit("/", 1)[1]
            if to in self.gateways and to not in self.silent:
                self.gateways[to].on_mqtt(topic, payload, False)


def sub006_network() -> Network:
    """SUB-006's side of the tie: a feeder whose end is the same tie, named as SUB-003 names it."""
    doc = feeder_site(1, 3, substation="SUB-006", external_tie=True, external_source="SUB-003/LINE-046")
    return Network.from_site(site_config(json.loads(json.dumps(doc).replace("TIE-EXT", TIE))))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Net, ExchangeService, ExchangeService]:
    net = Net(clock=[100.0])
    sub003 = net.gateway("SUB-003", Network.from_site(validate(site())), tmp_path, 0.0)
    sub006 = net.gateway("SUB-006", sub006_network(), tmp_path, 2200.0)
    return net, sub003, sub006


def test_a_signed_question_gets_the_neighbours_quote_for_the_window(pair: Any) -> None:
    net, sub003, sub006 = pair
    answers: list[Any] = []
    sub003.quote_listeners.append(answers.append)
    xid = sub003.ask_quote(TIE, *WINDOW, 900.0)
    ((topic, envelope),) = net.queue
    assert topic == f"{REGION}/SUB-003/coord/SUB-006" and envelope["kind"] == "quote_request"
    assert keys.verify({k: v for k, v in envelope.items() if k not in RESERVED_KEYS}, net.public["SUB-003"])
    net.deliver()
    (answer,) = answers
    assert answer.question.xid == xid and answer.by == "SUB-006" and answer.kva == pytest.approx(2200.0)
    assert "not reserved" in answer.note
    assert sub006.quotes.quoted == 1
    assert not sub006.coordinator.exchanges, "a quote is not an exchange: nothing switched or reserved"


def test_malformed_stale_and_foreign_questions_are_refused(pair: Any) -> None:
    net, sub003, sub006 = pair
    refused: list[str] = []
    bad = [
        {"tie": "TIE-XX", "window_start": WINDOW[0], "window_end": WINDOW[1], "kva": 900.0},
        {"tie": TIE, "window_start": WINDOW[1], "window_end": WINDOW[0], "kva": 900.0},
        {"tie": TIE, "window_start": WALL0 - 7200.0, "window_end": WALL0 - 3600.0, "kva": 900.0},
        {"tie": TIE, "window_start": WINDOW[0], "window_end": WINDOW[1], "kva": "lots"},
        {"tie": TIE, "window_start": WINDOW[0], "window_end": WINDOW[0] + 30 * 86400.0, "kva": 900.0},
    ]
    book = QuoteBook("SUB-006", {TIE: TieInfo(TIE, "SUB-003", True)}, headroom=lambda *_: (2200.0, "test"))
    for k, body in enumerate(bad):
        (reply,) = book.on_message(Message("quote_request", f"Q-{k}", "SUB-003", "SUB-006", body), WALL0 + 100.0)
        assert reply.message.kind == "refuse", body
        refused.append(str(reply.message.body["reason"]))
    assert "not a tie" in refused[0] and "window" in refused[1] and "over" in refused[2] and "kva" in refused[3]
    assert book.quoted == 0 and book.refused == len(bad)
    # a neighbour without headroom in the window refuses, and says why
    full = QuoteBook("SUB-006", {TIE: TieInfo(TIE, "SUB-003", True)}, headroom=lambda *_: (0.0, "peak at 97 %"))
    (reply,) = full.on_message(
        Message(
            "quote_request",
            "Q-9",
            "SUB-003",
            "SUB-006",
            {"tie": TIE, "window_start": WINDOW[0], "window_end": WINDOW[1], "kva": 900.0},
        ),
        WALL0,
    )
    assert reply.message.kind == "refuse" and "peak at 97 %" in reply.message.body["reason"]


def test_stale_replayed_and_forged_quote_messages_are_dropped(pair: Any, tmp_path: Path) -> None:
    net, sub003, sub006 = pair
    sub003.ask_quote(TIE, *WINDOW, 900.0)
    ((topic, envelope),) = net.queue
    net.deliver()
    assert sub006.quotes.quoted == 1
    signed = {k: v for k, v in envelope.items() if k not in ("sig", "key", "key_name", "signature")}
    sub006.on_mqtt(topic, envelope, False)  # replayed
    sub006.on_mqtt(topic, {**envelope, "nonce": "f" * 32}, False)  # altered after signing
    own = keys.load_or_create_keypair(tmp_path / "SUB-003", "gw-SUB-003")  # SUB-003's own key, signing
    sub006.on_mqtt(topic, own.sign({**signed, "nonce": "e" * 32, "time": WALL0 + net.clock[0] - 60.0}), False)
    assert sub006.dropped == 3 and sub006.quotes.quoted == 1
    assert not net.queue, "none of them answered"
    sub006.on_mqtt(topic, own.sign({**signed, "nonce": "d" * 32}), False)  # fresh and signed: answered
    assert sub006.quotes.quoted == 2


def test_an_answer_that_does_not_fit_the_question_is_dropped_and_the_question_times_out(pair: Any) -> None:
    net, sub003, _ = pair
    xid = sub003.ask_quote(TIE, *WINDOW, 900.0)
    net.queue.clear()
    book = sub003.quotes
    with pytest.raises(TransferError):
        book.on_message(
            Message(
                "quote",
                xid,
                "SUB-006",
                "SUB-003",
                {"tie": TIE, "window_start": WINDOW[0] + 1, "window_end": WINDOW[1], "kva": 5e3},
            ),
            WALL0,
        )
    assert xid in book.pending
    answers: list[Any] = []
    sub003.quote_listeners.append(answers.append)
    net.clock[0] += book.timeout_s
    sub003.tick()
    assert [a.kva for a in answers] == [None] and "did not answer" in answers[0].note


def plan_b(ask: backup.AskNeighbour) -> backup.BackupPlan:
    network = Network.from_site(validate(site()))
    out = backup.plan_backup(
        network,
        network.normal_configuration(),
        NIGHT,
        OUT,
        ask_neighbour=ask,
        substation="SUB-003",
        window=WINDOW,
        request_id="WO-1-B",
    )
    return next(p for p in out if p.name == "B")


def test_plan_b_is_planned_again_on_the_neighbours_quote(pair: Any) -> None:
    net, sub003, _ = pair
    neighbour = QuotedNeighbour(sub003.switching.network, sub003.ask_quote)
    replan: list[Any] = []
    sub003.quote_listeners.append(lambda a: replan.append(a) if neighbour.on_answer(a) else None)
    first = plan_b(neighbour)  # never blocks: the declared capacity stands in, marked, while SUB-006 is asked
    assert first.offer is not None and first.offer.offered_by == DECLARED
    assert "waiting for SUB-006's quote" in first.offer.note
    assert [p["kind"] for _, p in net.queue] == ["quote_request"]
    net.deliver()
    assert len(replan) == 1
    second = plan_b(neighbour)
    assert second.offer is not None and second.offer.offered_by == "SUB-006"
    assert second.offer.kva_offered == pytest.approx(2200.0)
    assert ("TIE-046-061", "close") in {(s.device, s.action) for s in second.steps}
    assert not net.queue, "the answer is kept: the same window is not asked again"


def test_a_silent_or_refusing_neighbour_leaves_the_declared_capacity_marked(pair: Any, tmp_path: Path) -> None:
    net, sub003, sub006 = pair
    net.silent.add("SUB-006")
    neighbour = QuotedNeighbour(sub003.switching.network, sub003.ask_quote)
    sub003.quote_listeners.append(neighbour.on_answer)
    plan_b(neighbour)
    net.deliver()
    net.clock[0] += sub003.quotes.timeout_s
    sub003.tick()
    after = plan_b(neighbour)
    assert after.offer is not None and after.offer.offered_by == DECLARED and "did not answer" in after.offer.note
    # refusing: SUB-006 has no headroom in the window
    net.silent.clear()
    full = Net(clock=net.clock)
    a = full.gateway("SUB-003", sub003.switching.network, tmp_path / "b", 0.0)
    full.gateway("SUB-006", sub006_network(), tmp_path / "b", 0.0)
    refusing = QuotedNeighbour(a.switching.network, a.ask_quote)
    a.quote_listeners.append(refusing.on_answer)
    plan_b(refusing)
    full.deliver()
    refused = plan_b(refusing)
    assert refused.offer is not None and refused.offer.offered_by == DECLARED
    assert "SUB-006 refused" in refused.offer.note
    # coordination off: nobody to ask
    off = plan_b(QuotedNeighbour(a.switching.network, None))
    assert off.offer is not None and off.offer.offered_by == DECLARED and "coordination" in off.offer.note


def test_the_work_order_is_planned_again_when_the_quote_comes(tmp_path: Path) -> None:
    from gateway.maintenance.coordinator import MaintenanceCoordinator
    from gateway.maintenance.service import MaintenanceService
    from tests.test_maintenance_workorder import NOW, inputs, request

    net = Net(clock=[100.0], wall0=NOW)
    sub003 = net.gateway("SUB-003", Network.from_site(validate(site())), tmp_path, 0.0)
    net.gateway("SUB-006", sub006_network(), tmp_path, 2200.0)
    s = validate(site())
    neighbour = QuotedNeighbour(sub003.switching.network, sub003.ask_quote)
    coordinator = MaintenanceCoordinator(s, s.maintenance, sub003.switching.network, neighbour)
    forecasts, grid = inputs(coordinator)
    planned = coordinator.on_request(request(), wall=NOW, forecasts=forecasts, grid=grid)
    b = next(p for p in planned.work_order.plans if p["plan"] == "B")
    assert b["offer"]["offered_by"] == DECLARED and "waiting for SUB-006" in b["offer"]["note"]
    service = SimpleNamespace(coordinator=coordinator, replans=[])
    heard: list[bool] = []
    sub003.quote_listeners.append(
        lambda a: heard.append(neighbour.on_answer(a) and MaintenanceService.on_quote(service, a))
    )  # type: ignore[arg-type]
    net.deliver()
    assert heard == [True]
    ((wo_id, why),) = service.replans
    assert wo_id == planned.work_order.id and "SUB-006 quoted" in why
    again = coordinator.replan(wo_id, why, NOW + 1.0, forecasts=forecasts, grid=grid)
    b = next(p for p in again.work_order.plans if p["plan"] == "B")
    assert b["offer"]["offered_by"] == "SUB-006" and b["offer"]["kva_offered"] == pytest.approx(2200.0)
    assert again.work_order.window == planned.work_order.window
    assert (
        again.work_order.history[-1]["event"] == "evidence" and "SUB-006 quoted" in again.work_order.history[-1]["note"]
    )


def test_an_offline_neighbour_is_not_asked_and_plan_b_says_why(pair: Any) -> None:
    net, sub003, _ = pair
    sub003.on_mqtt(f"{REGION}/SUB-006/death", {"bdSeq": 1}, False)
    with pytest.raises(TransferError, match="offline"):
        sub003.ask_quote(TIE, *WINDOW, 900.0)
    b = plan_b(QuotedNeighbour(sub003.switching.network, sub003.ask_quote))
    assert b.offer is not None and b.offer.offered_by == DECLARED and "SUB-006 not asked" in b.offer.note
    assert not net.queue


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(tie=st.one_of(st.just(TIE), _values), start=_values, end=_values, kva=_values)
def test_any_question_is_answered_with_a_quote_only_when_every_field_is_sound(
    tie: Any, start: Any, end: Any, kva: Any
) -> None:
    book = QuoteBook("SUB-006", {TIE: TieInfo(TIE, "SUB-003", True)}, headroom=lambda *_: (2200.0, "test"))
    body = {"tie": tie, "window_start": start, "window_end": end, "kva": kva}
    (reply,) = book.on_message(Message("quote_request", "Q-1", "SUB-003", "SUB-006", body), 1000.0)
    sound = (
        tie == TIE
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end, kva))
        and end > start
        and end - start <= 7 * 86400.0
        and end > 1000.0
        and kva > 0
    )
    assert reply.message.kind == ("quote" if sound else "refuse")
    assert reply.message.recipient == "SUB-003" and reply.message.xid == "Q-1"
