"""Two gateways' exchange services, each on a real switching service, talking through an
in-memory broker with signed, time-stamped, nonce-carrying envelopes: a transfer goes through,
the requester's part is fed through the tie the provider owns; replays, stale, misaddressed and
unsigned messages are dropped; a dead neighbour ends the exchange safely."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gateway.contract.points import PointKind, PointUpdate, ProcessImage
from gateway.storage import Store
from gateway.switching.exchange import ExchangeService, headroom_from_forecast
from gateway.switching.service import SwitchingService
from gateway.switching.transfer import Phase
from tests.support.feeder_sites import feeder_site, site_config

REGION = "stima/test"


class Done:
    def __init__(self) -> None:
        self._callbacks: list[Any] = []

    def add_done_callback(self, cb: Any) -> None:
        cb(self)

    def cancelled(self) -> bool:
        return False

    def exception(self) -> None:
        return None


@dataclass
class Gateway:
    """One substation: its process image, switching service and exchange service; writes to its
    devices move them at once (the plant), and an open switch measures its far side."""

    name: str
    doc: dict[str, Any]
    tmp: Path
    broker: Broker
    clock: list[float]
    image: ProcessImage = field(default_factory=ProcessImage)
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.site = site_config(self.doc)
        for ied in self.site.ieds:
            for p in ied.points:
                self.image.define(p.id, PointKind(p.point_kind.value), source=ied.id)
        self.store = Store(self.tmp / f"{self.name}.db")
        self.switching = SwitchingService(
            self.site,
            image=self.image,
            store=self.store,
            publish=self._pub,
            submit=self._submit,
            protection=None,
            agents=None,
            monotonic=lambda: self.clock[0],
            wall=lambda: 1e9 + self.clock[0],
        )
        self.exchange = ExchangeService(
            self.name,
            REGION,
            switching=self.switching,
            publish=self._pub,
            sign=self.broker.sign(self.name),
            verify=self.broker.verify,
            headroom=headroom_from_forecast(40_000.0, 90.0, lambda: 20_000.0),
            monotonic=lambda: self.clock[0],
            wall=lambda: 1e9 + self.clock[0],
            alarm=lambda s, sev, text: self.alarms.append(text),
        )
        self.broker.attach(self)
        for dev in self.switching.network.devices.values():
            self.set(f"{dev.id}.closed", not dev.normally_open)
            if "local" in dev.points:
                self.set(dev.points["local"], False)

    def set(self, point: str, value: Any) -> None:
        if point in self.image:
            self.image.apply(
                PointUpdate(
                    point_id=point, value=value, receive_monotonic=self.clock[0], receive_time=1e9 + self.clock[0]
                )
            )

    def _pub(self, suffix: str, payload: dict[str, Any], retain: bool = False) -> None:
        self.published.append((suffix, payload))
        if suffix.startswith("coord/"):
            self.broker.route(f"{REGION}/{self.name}/{suffix}", payload)

    def _submit(self, point: str, value: Any) -> Done:
        device, name = point.rsplit(".", 1)
        self.broker.operated.append((self.name, device, name))
        self.broker.plant_write(self, device, name)
        return Done()


@dataclass
class Broker:
    """The regional broker and the tie's physics: TIE-EXT at each site is the same tie; the
    requester's boundary switch SW-1-2 (at SUB-7) cuts off LINE-1/3, the part to transfer."""

    gateways: dict[str, Gateway] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict)
    drop_to: set[str] = field(default_factory=set)
    operated: list[tuple[str, str, str]] = field(default_factory=list)
    queue: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def attach(self, gw: Gateway) -> None:
        self.gateways[gw.name] = gw

    def sign(self, name: str):  # type: ignore[no-untyped-def]
        self.keys[name] = hashlib.sha256(name.encode()).digest()

        def sign(envelope: dict[str, Any]) -> dict[str, Any]:
            mac = hmac.new(self.keys[name], msgpack.packb(envelope, use_bin_type=True), "sha256").digest()
            return {**envelope, "sig": mac}

        return sign

    def verify(self, envelope: dict[str, Any], sender: str) -> dict[str, Any]:
        body = {k: v for k, v in envelope.items() if k != "sig"}
        key = self.keys.get(sender)
        if key is None or not hmac.compare_digest(
            hmac.new(key, msgpack.packb(body, use_bin_type=True), "sha256").digest(), envelope.get("sig", b"")
        ):
            raise ValueError("bad signature")
        return body

    def route(self, topic: str, payload: dict[str, Any]) -> None:
        self.queue.append((topic, payload))

    def deliver(self) -> None:
        while self.queue:
            topic, payload = self.queue.pop(0)
            recipient = topic.rsplit("/", 1)[1]
            if recipient in self.drop_to or recipient not in self.gateways:
                continue
            self.gateways[recipient].exchange.on_mqtt(topic, payload, False)

    def plant_write(self, gw: Gateway, device: str, name: str) -> None:
        closed = name == "close_cmd"
        gw.set(f"{device}.closed", closed)
        if device == "TIE-EXT":  # the tie is one device seen by both sites
            for other in self.gateways.values():
                other.set("TIE-EXT.closed", closed)
        self.physics()

    def physics(self) -> None:
        if not {"SUB-7", "SUB-6"} <= set(self.gateways):
            return
        r, p = self.gateways["SUB-7"], self.gateways["SUB-6"]
        tie = p.image["TIE-EXT.closed"].value
        sw = r.image["SW-1-2.closed"].value
        # SW-1-2 open: its far side (LINE-1/3) is live only when the tie feeds it
        r.set("SW-1-2.voltage_kv", 11.0 if (sw or tie) else 0.0)
        # the tie open: its far side (the other site's part) is live when SW-1-2 is closed
        p.set("TIE-EXT.voltage_kv", 11.0 if sw else 0.0)
        r.set("TIE-EXT.voltage_kv", 11.0)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Broker, Gateway, Gateway, list[float]]:
    clock = [100.0]
    broker = Broker()
    requester = Gateway(
        "SUB-7",
        feeder_site(
            1, 3, substation="SUB-7", external_tie=True, external_source="SUB-6/LINE-1", external_tie_points=False
        ),
        tmp_path,
        broker,
        clock,
    )
    provider = Gateway(
        "SUB-6",
        feeder_site(1, 3, substation="SUB-6", external_tie=True, external_source="SUB-7/LINE-1"),
        tmp_path,
        broker,
        clock,
    )
    broker.physics()
    return broker, requester, provider, clock


def run(broker: Broker, gws: list[Gateway], clock: list[float], seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        clock[0] += 0.1
        for gw in gws:
            gw.switching.tick()
            gw.exchange.tick()
        broker.deliver()


def test_a_transfer_through_a_tie_the_provider_owns(pair: Any) -> None:
    broker, requester, provider, clock = pair
    assert requester.exchange.coordinator.ties["TIE-EXT"].owned is False
    assert provider.exchange.coordinator.ties["TIE-EXT"].owned is True
    xid = requester.exchange.request("TIE-EXT", "SW-1-2", 1500.0)
    run(broker, [requester, provider], clock, 5)
    assert requester.exchange.coordinator.exchanges[xid].phase is Phase.DONE
    assert provider.exchange.coordinator.exchanges[xid].phase is Phase.DONE
    assert ("SUB-7", "SW-1-2", "trip_cmd") in broker.operated and ("SUB-6", "TIE-EXT", "close_cmd") in broker.operated
    assert broker.operated.index(("SUB-7", "SW-1-2", "trip_cmd")) < broker.operated.index(
        ("SUB-6", "TIE-EXT", "close_cmd")
    )
    # both sides' switching authorities audited their own operation, with the exchange as origin
    accepted = [r for _, _, kind, r in _events(provider) if kind == "switching.accepted"]
    assert any(r["target"] == "TIE-EXT" and r["origin"] == f"transfer:{xid}" for r in accepted)
    assert [p for s, p in requester.published if s == "transfer"][-1]["phase"] == "done"


def test_forged_replayed_stale_and_misaddressed_messages_are_dropped(pair: Any) -> None:
    broker, requester, provider, clock = pair
    xid = requester.exchange.request("TIE-EXT", "SW-1-2", 1500.0)
    topic, request = broker.queue[0]
    broker.deliver()
    assert xid in provider.exchange.coordinator.exchanges
    before = provider.exchange.dropped
    sent = len([s for s, _ in provider.published if s.startswith("coord/")])
    provider.exchange.on_mqtt(topic, request, False)  # a replay
    provider.exchange.on_mqtt(topic, {**request, "sig": b"x" * 32}, False)  # forged
    provider.exchange.on_mqtt(topic, request, True)  # retained
    stale = broker.sign("SUB-7")(
        {**{k: v for k, v in request.items() if k != "sig"}, "time": 1e9 - 3600.0, "nonce": "n" * 32}
    )
    provider.exchange.on_mqtt(topic, stale, False)
    other = broker.sign("SUB-7")({**{k: v for k, v in request.items() if k != "sig"}, "to": "SUB-9", "nonce": "m" * 32})
    provider.exchange.on_mqtt(topic, other, False)
    assert provider.exchange.dropped == before + 5
    assert len([s for s, _ in provider.published if s.startswith("coord/")]) == sent  # none answered


def test_a_dead_provider_before_the_tie_closed_leaves_the_part_on_its_own_feeder(pair: Any) -> None:
    broker, requester, provider, clock = pair
    xid = requester.exchange.request("TIE-EXT", "SW-1-2", 1500.0)
    run(broker, [requester, provider], clock, 0.15)  # request and offer crossed; accept on its way
    broker.drop_to.add("SUB-6")
    run(broker, [requester, provider], clock, 1)
    requester.exchange.on_mqtt(f"{REGION}/SUB-6/death", {"bdSeq": 1}, False)
    run(broker, [requester], clock, 15)
    # the execute went out before the death: the requester cannot know the provider never got it,
    # so its switch stays open until the provider could no longer have closed the tie
    assert requester.exchange.coordinator.exchanges[xid].phase is Phase.SETTLING
    assert requester.image["SW-1-2.closed"].value is False
    run(broker, [requester], clock, 45)
    ex = requester.exchange.coordinator.exchanges[xid]
    assert ex.phase is Phase.ABORTED
    assert requester.image["SW-1-2.closed"].value is True, "the part is back on its own feeder"
    assert provider.image["TIE-EXT.closed"].value is False


def _events(gw: Gateway) -> list[tuple[float, str, str, dict[str, Any]]]:
    return [(e["time"], e["source"], e["kind"], e) for e in gw.store.events(since=0.0, limit=1000)]


def test_a_reload_carries_a_running_sequence_over(tmp_path: Path) -> None:
    from gateway.switching.model import Origin, Role, Via
    from gateway.switching.sequences import parse

    clock = [100.0]
    broker = Broker()
    old = Gateway("SUB-7", feeder_site(1, 3, substation="SUB-7"), tmp_path, broker, clock)
    broker.operated.clear()
    seq = parse(
        'name = "two"\n[[steps]]\ndevice = "SW-1-2"\naction = "open"\n[[steps]]\ndevice = "SW-1-1"\naction = "open"\n',
        "two.toml",
        created_by="local:op",
        now_wall=1e9,
    )
    origin = Origin(via=Via.LOCAL, who="local:op", role=Role.OPERATOR)
    old.switching.submit_sequence(seq, origin, run=True)
    old.switching.tick()  # step 1 goes out (the plant moves it at once); its check-back is pending
    assert ("SUB-7", "SW-1-2", "trip_cmd") in broker.operated
    # the reloaded configuration, on the same image and store
    new = SwitchingService(
        old.site,
        image=old.image,
        store=old.store,
        publish=old._pub,
        submit=old._submit,
        protection=None,
        agents=None,
        monotonic=lambda: clock[0],
        wall=lambda: 1e9 + clock[0],
    )
    new.take_over(old.switching)
    for _ in range(5):
        clock[0] += 0.2
        new.tick()
    done = new.runner.get(seq.id)
    assert done.status.value == "done", done.results
    assert ("SUB-7", "SW-1-1", "trip_cmd") in broker.operated
