"""The daemon's side of load transfer between substations: the exchange state machine
(gateway/switching/transfer.py) wired to the broker and to this gateway's switching authority.

Topics (docs/mqtt.md, "Between substations"): a gateway publishes its messages to a neighbour
in its own subtree, `<base>/coord/<neighbour>`, and reads `<prefix>/<region>/+/coord/<itself>`
and its neighbours' `death` topics, so a broker ACL can confine each gateway to writing its own
subtree. Every message is signed by the sender's own key (`sign` / `verify`, injected), carries
its time and a nonce; a message older than `max_age_s`, replayed, retained, or not for this
gateway is dropped and logged. Operations on this gateway's own devices go through the switching
authority with origin `transfer:<xid>`; their check-backs come back to the exchange.

Nothing here opens a socket or reads a clock: publishing, signing and time are injected.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from typing import Any

from gateway.switching.authority import Outcome, Refused
from gateway.switching.model import Kind, Operation, Origin, Via
from gateway.switching.quote import Answer, QuoteBook, WindowHeadroom
from gateway.switching.transfer import (
    Message,
    Notice,
    Operate,
    Send,
    TieInfo,
    TransferCoordinator,
    TransferError,
)

log = logging.getLogger("stima.transfer")

MAX_AGE_S = 30.0
SWITCH_POINTS = ("position_cmd", "trip_cmd", "close_cmd")
LIVE_FRACTION, DEAD_FRACTION = 0.5, 0.1

Sign = Callable[[dict[str, Any]], dict[str, Any]]
"""Adds the sender's signature (and key id) to an envelope."""
Verify = Callable[[dict[str, Any], str], dict[str, Any]]
"""(envelope, claimed sender substation) → the checked envelope, or ValueError saying why not."""


def neighbour_ties(switching: Any) -> dict[str, TieInfo]:
    """This site's ties to other substations (external ties), with who operates each."""
    out = {}
    for dev in switching.network.devices.values():
        if dev.external_source:
            neighbour = dev.external_source.split("/", 1)[0]
            owned = dev.protected or any(p in dev.points for p in SWITCH_POINTS)
            out[dev.id] = TieInfo(dev.id, neighbour, owned)
    return out


class ExchangeService:
    def __init__(
        self,
        substation: str,
        region_base: str,
        *,
        switching: Any,
        publish: Callable[..., None],
        sign: Sign,
        verify: Verify,
        headroom: Callable[[str, float], tuple[float, str]],
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        alarm: Callable[[str, str, str], None],
        max_age_s: float = MAX_AGE_S,
        window_headroom: WindowHeadroom | None = None,
    ) -> None:
        self.substation = substation
        self.region_base = region_base
        """`<prefix>/<region>`: the neighbours' bases are `<region_base>/<substation>`."""
        self.switching = switching
        self._publish = publish
        self._sign = sign
        self._verify = verify
        self._monotonic = monotonic
        self._wall = wall
        self._alarm = alarm
        self.max_age_s = max_age_s
        self._nonces: dict[str, float] = {}
        self._ops: dict[str, tuple[str, str, str]] = {}
        """op id → (xid, device, action)."""
        self.coordinator = TransferCoordinator(
            substation, neighbour_ties(switching), headroom=headroom, far_side_dead=self._far_side_dead
        )
        self.quotes = QuoteBook(substation, self.coordinator.ties, headroom=window_headroom or _peak_headroom(headroom))
        self.quote_answers: list[dict[str, Any]] = []
        """The last answers to this gateway's quotes (at most 20), for the status."""
        self.quote_listeners: list[Callable[[Answer], None]] = []
        """Called with each answer to a quote this gateway asked for (or its timeout)."""
        self.dropped = 0
        self.listeners: list[Callable[[Any], None]] = []
        """Called with each exchange that changed (gateway/peak_service.py follows its own)."""
        switching.outcome_listeners.append(self._on_outcome)

    # ------------------------------------------------------------------ topics

    @property
    def inbox_filter(self) -> str:
        return f"{self.region_base}/+/coord/{self.substation}"

    def death_topics(self) -> list[str]:
        """The neighbours' deaths and births (a birth after a death: the neighbour is back)."""
        return sorted(
            {
                f"{self.region_base}/{t.neighbour}/{kind}"
                for t in self.coordinator.ties.values()
                for kind in ("death", "birth")
            }
        )

    # ------------------------------------------------------------------ inputs

    def on_mqtt(self, topic: str, payload: Any, retained: bool) -> None:
        now = self._monotonic()
        if topic.endswith("/death") or topic.endswith("/birth"):
            neighbour = topic[len(self.region_base) + 1 :].split("/", 1)[0]
            if topic.endswith("/birth"):
                self.coordinator.on_neighbour_birth(neighbour)
            elif not retained:  # a retained death is a stale one left on the broker; the live one counts
                self._act(self.coordinator.on_neighbour_death(neighbour, now))
            return
        try:
            message = self._check(topic, payload, retained)
        except (ValueError, TypeError, TransferError) as exc:
            self.dropped += 1
            log.warning("coordination message dropped", extra={"topic": topic, "error": str(exc)})
            return
        if self.quotes.handles(message):
            try:
                self._act(self.quotes.on_message(message, self._wall()))
            except TransferError as exc:
                self.dropped += 1
                log.warning("quote dropped", extra={"topic": topic, "error": str(exc)})
            self._answered()
            return
        self._act(self.coordinator.on_message(message, now))

    def _check(self, topic: str, payload: Any, retained: bool) -> Message:
        if retained:
            raise ValueError("a retained coordination message is never acted on")
        if not isinstance(payload, dict):
            raise ValueError(f"expected a msgpack map, found {type(payload).__name__}")
        sender = topic[len(self.region_base) + 1 :].split("/", 1)[0]
        checked = self._verify(payload, sender)
        sent, nonce = checked.get("time"), checked.get("nonce")
        if not isinstance(sent, int | float) or not math.isfinite(sent) or abs(self._wall() - sent) > self.max_age_s:
            raise ValueError(f"time {sent!r} is not within {self.max_age_s:g} s of this gateway's clock")
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise ValueError("nonce: expected 16-128 characters")
        now = self._wall()
        self._nonces = {n: t for n, t in self._nonces.items() if t > now}
        if nonce in self._nonces:
            raise ValueError(f"nonce {nonce[:12]}… already seen: replayed")
        self._nonces[nonce] = now + 2 * self.max_age_s
        if checked.get("from") != sender or checked.get("to") != self.substation:
            raise ValueError(
                f"addressed from {checked.get('from')!r} to {checked.get('to')!r}, "
                f"published by {sender} for {self.substation}"
            )
        body = checked.get("body", {})
        if not isinstance(body, dict):
            raise ValueError("body: expected a map")
        return Message(
            kind=str(checked.get("kind")),
            xid=str(checked.get("xid")),
            sender=sender,
            recipient=self.substation,
            body=body,
        )

    def _on_outcome(self, outcome: Outcome) -> None:
        entry = self._ops.pop(outcome.op_id, None)
        if entry is None:
            return
        xid, device, action = entry
        self._act(self.coordinator.on_outcome(xid, device, action, outcome.ok, outcome.message, self._monotonic()))

    def tick(self) -> None:
        self._act(self.coordinator.tick(self._monotonic()))
        self.quotes.tick(self._monotonic())
        self._answered()

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.coordinator.next_deadline(), self.quotes.next_deadline()) if d is not None]
        return min(deadlines, default=None)

    def ask_quote(self, tie: str, window_start: float, window_end: float, kva: float) -> str:
        """Ask the neighbour beyond `tie` what it could carry in a future window (nothing switched
        or reserved); the answer comes to `quote_listeners`. The question's id."""
        info = self.coordinator.ties.get(tie)
        if info is not None and self.coordinator.offline(info.neighbour):
            raise TransferError(f"{info.neighbour} is offline (its death message was seen)")
        xid, actions = self.quotes.ask(tie, window_start, window_end, kva, self._monotonic())
        self._act(list(actions))
        return xid

    def _answered(self) -> None:
        for answer in self.quotes.take_answered():
            q = answer.question
            self.quote_answers = [
                *self.quote_answers[-19:],
                {
                    "xid": q.xid,
                    "tie": q.tie,
                    "neighbour": q.neighbour,
                    "window_start": q.window_start,
                    "window_end": q.window_end,
                    "kva_asked": q.kva,
                    "kva": answer.kva,
                    "by": answer.by,
                    "note": answer.note,
                },
            ]
            for listener in self.quote_listeners:
                try:
                    listener(answer)
                except Exception:
                    log.exception("quote listener failed", extra={"xid": answer.question.xid})

    def request(self, tie: str, part: str, load_kw: float, window_s: float = 3600.0) -> str:
        """Ask the neighbour beyond `tie` to take the part beyond `part`; the exchange id."""
        actions = self.coordinator.request(tie, part, load_kw, self._monotonic(), window_s=window_s)
        xid = next(a.message.xid for a in actions if isinstance(a, Send))
        self._act(actions)
        return xid

    # ------------------------------------------------------------------ outputs

    def _act(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.message)
            elif isinstance(action, Operate):
                self._operate(action)
            elif isinstance(action, Notice):
                if action.severity in ("major", "critical"):
                    self._alarm(action.xid, action.severity, action.text)
                else:
                    log.info("load transfer", extra={"xid": action.xid, "text": action.text})
        for ex in self.coordinator.take_changed():
            self._publish("transfer", {"time": self._wall(), "substation": self.substation, **ex.to_dict()})
            for listener in self.listeners:
                try:
                    listener(ex)
                except Exception:
                    log.exception("load-transfer listener failed", extra={"xid": ex.xid})

    def _send(self, message: Message) -> None:
        wall = self._wall()
        # `timestamp` (ms) as every uplink message carries it, so the uplink adds nothing to what is
        # signed but its per-message fields (seq, msg_id, historical), which the receiver strips
        envelope = {
            "kind": message.kind,
            "xid": message.xid,
            "from": message.sender,
            "to": message.recipient,
            "time": wall,
            "timestamp": round(wall * 1000.0),
            "nonce": secrets.token_hex(16),
            "body": dict(message.body),
        }
        self._publish(f"coord/{message.recipient}", self._sign(envelope))

    def _operate(self, action: Operate) -> None:
        op = Operation(
            kind=Kind.CLOSE if action.action == "close" else Kind.OPEN,
            target=action.device,
            origin=Origin(via=Via.TRANSFER, who=f"transfer:{action.xid}"),
            reason=f"load transfer {action.xid}: {action.purpose}",
        )
        try:
            accepted = self.switching.operate(op)
        except Refused as exc:
            self._act(
                self.coordinator.on_outcome(
                    action.xid,
                    action.device,
                    action.action,
                    False,
                    f"refused ({exc.interlock or exc.reason}): {exc.message}",
                    self._monotonic(),
                )
            )
            return
        if accepted.expect_closed is None:  # nothing to check back: take it as done
            self._act(
                self.coordinator.on_outcome(action.xid, action.device, action.action, True, "sent", self._monotonic())
            )
            return
        self._ops[accepted.op_id] = (action.xid, action.device, action.action)

    def _far_side_dead(self, device: str) -> bool | None:
        """An open device's far side from its voltage point (no point, or not good: unknown)."""
        state = self.switching.state
        if state.position(device) is not False:
            return None
        kv = state.value(device, "voltage_kv")
        dev = self.switching.network.devices.get(device)
        if not isinstance(kv, int | float) or dev is None:
            return None
        far = dev.b if dev.b in self.switching.network.sections else dev.a
        nominal = self.switching.network.sections[far].nominal_kv if far in self.switching.network.sections else 11.0
        if kv < DEAD_FRACTION * nominal:
            return True
        if kv > LIVE_FRACTION * nominal:
            return False
        return None

    def status(self) -> dict[str, Any]:
        return {
            "ties": {t: {"neighbour": i.neighbour, "owned": i.owned} for t, i in self.coordinator.ties.items()},
            "exchanges": [ex.to_dict() for ex in self.coordinator.exchanges.values()],
            "dropped": self.dropped,
            "quotes": {
                "asked": [vars_of(q) for q in self.quotes.pending.values()],
                "answered": self.quote_answers,
                "quoted_for_neighbours": self.quotes.quoted,
                "refused_to_neighbours": self.quotes.refused,
            },
        }


def vars_of(q: Any) -> dict[str, Any]:
    return {
        "xid": q.xid,
        "tie": q.tie,
        "neighbour": q.neighbour,
        "window_start": q.window_start,
        "window_end": q.window_end,
        "kva_asked": q.kva,
    }


def _peak_headroom(headroom: Callable[[str, float], tuple[float, str]]) -> WindowHeadroom:
    """A window's headroom from the provider's present forecast peak (the same for any window)."""

    def at(tie: str, kva: float, _start: float, _end: float) -> tuple[float, str]:
        room, why = headroom(tie, kva)
        return room, f"{why} (by the present forecast peak)"

    return at


def part_load_kw(switching: Any, part: str) -> float:
    """The load (kW) of the part of the network `part` feeds now, from the sections' measured loads."""
    state = switching.state
    closed = state.configuration()
    total = 0.0
    for node in switching.network.downstream(part, closed):
        sample = state.section_load(node)
        total += sample.kva.real if sample is not None else 0.0
    return total


def headroom_from_forecast(
    capacity_kw: float, target_percent: float, peak: Callable[[], float | None]
) -> Callable[[str, float], tuple[float, str]]:
    """Headroom a provider can offer: its target less its own forecast peak (unknown: nothing)."""

    def headroom(_tie: str, _kw: float) -> tuple[float, str]:
        forecast_peak = peak()
        if forecast_peak is None:
            return 0.0, "no load forecast yet"
        room = target_percent / 100.0 * capacity_kw - forecast_peak
        return max(0.0, room), f"forecast peak {forecast_peak:.0f} kW of a {target_percent:g} % target"

    return headroom
