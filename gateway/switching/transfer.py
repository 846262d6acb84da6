"""Load transfer between two substations over the regional broker: the exchange as a state machine.

Each gateway decides only for its own plant. The *requester* (a substation near its capacity)
asks a neighbour, the *provider*, to take a part of one of its feeders through a tie between
them; the provider answers with what its own forecast headroom allows. The transfer is break
before make: the requester isolates the part (its boundary switch open, the part dead, checked
back), then the tie is closed by the gateway that owns it (the one whose site file gives the
tie's command points), never with both sides live.

    requester                                   provider
    REQUEST {tie, part, load_kw, window_s}  →
                                            ←   OFFER {kw, valid_s}   |  REFUSE {reason}
    ACCEPT                                  →   (reserves the headroom)
    (opens its boundary switch: part dead)
    EXECUTE {prepared}                      →
                                                (tie owner closes the tie; checked back)
                                            ←   CONFIRM {tie closed}
    CONFIRM {part fed}                      →   DONE on both sides
    ABORT {reason} either way, at any point before DONE

Deadlines keep a silent, dead or refusing neighbour (or a broker outage) from leaving a tie half
operated:

- the provider closes the tie only on an EXECUTE that arrives while its offer is valid; after
  that it refuses, and a late EXECUTE is answered with ABORT;
- the requester waits for the provider's CONFIRM until the offer's validity plus a margin; then
  it aborts and puts its part back on its own feeder (recloses its boundary switch) only when
  the part is proven dead (no voltage at the switch's far side: the tie did not close); if that
  cannot be proven it leaves the switch open and raises an alarm — customers off rather than two
  substations paralleled;
- the neighbour's death message counts as silence from that moment. It says the broker lost the
  neighbour, not that the neighbour stopped: a provider that already has the EXECUTE may still
  close the tie, and until it does the part measures dead. So a requester that sent EXECUTE and
  then aborts (death, timeout or the neighbour's ABORT) first waits, its switch open, until the tie
  can no longer close (`tie_quiet_at`), and only then judges whether the part is dead.

Sans-IO: `now` is monotonic seconds; messages come in already verified (signature, age, nonce)
and go out as `Send` actions for the wiring to sign and publish; operations on this gateway's own
devices go out as `Operate` actions for the switching authority, whose outcomes come back through
`on_outcome`. One exchange at a time per tie.
"""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

MESSAGE_KINDS = ("request", "offer", "refuse", "accept", "execute", "confirm", "abort", "quote_request", "quote")
"""The last two are quotes' (gateway/switching/quote.py); the exchange hands them to its quote book."""
REPLY_TIMEOUT_S = 10.0
"""A request or accept unanswered this long ends the exchange."""
OFFER_VALID_S = 30.0
DEAD_PROOF_S = 5.0
"""How long the tie owner waits for the far side of the tie to measure dead before it gives up."""
CONFIRM_MARGIN_S = 10.0
"""After its offer's validity, the requester waits this much longer for the provider's CONFIRM."""
PROVIDER_CLOSE_WINDOW_S = DEAD_PROOF_S + REPLY_TIMEOUT_S + DEAD_PROOF_S
"""After its offer's validity, how long a provider that owns the tie may still close it: an EXECUTE
taken at the last moment, the wait for the far side to measure dead, the close's check-back, then
the requester's own poll to show the voltage the tie brought."""


class TransferError(ValueError):
    """A message that does not fit the exchange (wrong kind, unknown exchange, bad field)."""


class Role(enum.Enum):
    REQUESTER = "requester"
    PROVIDER = "provider"


class Phase(enum.Enum):
    REQUESTED = "requested"
    """Requester: waiting for an offer. Provider: never."""
    OFFERED = "offered"
    """Provider: offer sent, waiting for accept. Requester: never (it accepts or aborts at once)."""
    PREPARING = "preparing"
    """Requester: accepted; opening its boundary switch. Provider: accepted, waiting for execute."""
    EXECUTING = "executing"
    """Requester: execute sent, waiting for confirm. Provider: closing the tie."""
    CLOSING = "closing"
    """Requester (owning the tie): closing it after the provider's ready."""
    VERIFYING = "verifying"
    """Tie owner: about to close the tie, waiting (at most DEAD_PROOF_S) for its far side to
    measure dead (the other gateway's switch has opened; this gateway's poll may not show it yet)."""
    CONFIRMING = "confirming"
    """Provider: tie closed and confirmed, waiting for the requester's confirm."""
    SETTLING = "settling"
    """Requester: aborted after its EXECUTE; its boundary switch stays open until the tie can no
    longer close, then it recloses only onto a part proven dead."""
    ROLLING_BACK = "rolling_back"
    """Requester: aborted after isolating; reclosing its boundary switch (part proven dead)."""
    DONE = "done"
    """Both confirmations exchanged: the part is fed through the tie."""
    UNCONFIRMED = "unconfirmed"
    """Provider: the tie closed and feeds the part, but the requester's confirmation never came."""
    ABORTED = "aborted"
    REFUSED = "refused"

    @property
    def final(self) -> bool:
        return self in (Phase.DONE, Phase.UNCONFIRMED, Phase.ABORTED, Phase.REFUSED)


@dataclass(frozen=True, slots=True)
class Message:
    """A verified coordination message (the wiring checked signature, age and nonce)."""

    kind: str
    xid: str
    sender: str
    """Substation id of the sender."""
    recipient: str
    body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in MESSAGE_KINDS:
            raise TransferError(f"kind: expected one of {', '.join(MESSAGE_KINDS)}, found {self.kind!r}")
        if not isinstance(self.xid, str) or not 1 <= len(self.xid) <= 64:
            raise TransferError(f"xid: expected 1-64 characters, found {self.xid!r}")


@dataclass(frozen=True, slots=True)
class Send:
    message: Message


@dataclass(frozen=True, slots=True)
class Operate:
    """Open or close one of this gateway's own devices, for exchange `xid`."""

    xid: str
    device: str
    action: str
    purpose: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Something people must hear (an alarm when `severity` is major or critical)."""

    xid: str
    severity: str
    text: str


Action = Send | Operate | Notice


@dataclass(frozen=True, slots=True)
class TieInfo:
    """A tie to a neighbouring substation, as this gateway's site describes it."""

    tie: str
    neighbour: str
    """The neighbour's substation id."""
    owned: bool
    """This gateway operates the tie (its site file has the tie's command points)."""


@dataclass(frozen=True, slots=True)
class Exchange:
    xid: str
    role: Role
    neighbour: str
    tie: str
    part: str
    """The requester's boundary switch that separates the part to transfer from its feeder."""
    load_kw: float
    phase: Phase
    started: float
    deadline: float
    """When the current phase times out."""
    offered_kw: float | None = None
    offer_until: float | None = None
    tie_owned: bool = False
    isolated: bool = False
    """Requester: its boundary switch was opened (checked back)."""
    execute_sent: bool = False
    """Requester: EXECUTE went out, so the tie may close from then on."""
    tie_closed: bool = False
    confirmed_by_us: bool = False
    confirmed_by_them: bool = False
    reason: str = ""
    history: tuple[tuple[float, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "xid": self.xid,
            "role": self.role.value,
            "neighbour": self.neighbour,
            "tie": self.tie,
            "part": self.part,
            "load_kw": self.load_kw,
            "phase": self.phase.value,
            "offered_kw": self.offered_kw,
            "isolated": self.isolated,
            "execute_sent": self.execute_sent,
            "tie_closed": self.tie_closed,
            "confirmed_by_us": self.confirmed_by_us,
            "confirmed_by_them": self.confirmed_by_them,
            "reason": self.reason,
            "history": [list(h) for h in self.history],
        }


Headroom = Callable[[str, float], tuple[float, str]]
"""(tie, requested kW) → (kW this substation can take through the tie by its forecast, why)."""
FarSideDead = Callable[[str], bool | None]
"""Device → True when its far side is proven dead (no voltage), False when live, None unknown."""


class TransferCoordinator:
    """Every load-transfer exchange of one gateway, as requester and as provider."""

    def __init__(
        self,
        substation: str,
        ties: Mapping[str, TieInfo],
        *,
        headroom: Headroom,
        far_side_dead: FarSideDead,
        new_xid: Callable[[], str] | None = None,
    ) -> None:
        self.substation = substation
        self.ties = dict(ties)
        self._headroom = headroom
        self._far_side_dead = far_side_dead
        self._new_xid = new_xid or (lambda: "X-" + secrets.token_hex(6))
        self.exchanges: dict[str, Exchange] = {}
        self.changed: list[Exchange] = []
        self._dead_neighbours: set[str] = set()

    # ------------------------------------------------------------------ the requester

    def request(self, tie: str, part: str, load_kw: float, now: float, *, window_s: float = 3600.0) -> list[Action]:
        """Ask the neighbour beyond `tie` to take the part beyond `part` (this gateway's
        boundary switch), `load_kw` by the forecast, for `window_s`."""
        info = self.ties.get(tie)
        if info is None:
            raise TransferError(f"{tie} is not a tie to a neighbouring substation")
        if not (math.isfinite(load_kw) and load_kw > 0):
            raise TransferError(f"load_kw must be a positive number, found {load_kw!r}")
        if self._busy(tie):
            raise TransferError(f"an exchange on {tie} is already under way")
        if info.neighbour in self._dead_neighbours:
            raise TransferError(f"{info.neighbour} is offline (its death message was seen)")
        xid = self._new_xid()
        ex = Exchange(
            xid=xid,
            role=Role.REQUESTER,
            neighbour=info.neighbour,
            tie=tie,
            part=part,
            load_kw=load_kw,
            phase=Phase.REQUESTED,
            started=now,
            deadline=now + REPLY_TIMEOUT_S,
            tie_owned=info.owned,
        )
        self._put(self._note(ex, now, f"request {load_kw:.0f} kW through {tie}"))
        return [self._send(ex, "request", {"tie": tie, "part": part, "load_kw": load_kw, "window_s": window_s})]

    # ------------------------------------------------------------------ inputs

    def on_message(self, msg: Message, now: float) -> list[Action]:
        """A verified message from a neighbour. Duplicates and strays are answered or ignored,
        never acted on twice."""
        if msg.recipient != self.substation:
            return []
        self._dead_neighbours.discard(msg.sender)
        ex = self.exchanges.get(msg.xid)
        if ex is None:
            if msg.kind == "request":
                return self._on_request(msg, now)
            if msg.kind in ("abort", "refuse", "confirm"):
                return []
            return [self._send_to(msg.sender, msg.xid, "abort", {"reason": f"no exchange {msg.xid} here"})]
        if msg.sender != ex.neighbour:
            return []
        if ex.phase.final:
            if msg.kind in ("execute", "accept") and ex.phase is not Phase.DONE:
                return [self._send(ex, "abort", {"reason": f"exchange {ex.xid} is {ex.phase.value}"})]
            return []
        handler = {Role.REQUESTER: self._requester_message, Role.PROVIDER: self._provider_message}[ex.role]
        return handler(ex, msg, now)

    def on_outcome(self, xid: str, device: str, action: str, ok: bool, message: str, now: float) -> list[Action]:
        """The switching authority's check-back of an operation this coordinator asked for."""
        ex = self.exchanges.get(xid)
        if ex is None:
            return []
        if ex.phase.final:
            return self._late_outcome(ex, device, action, ok, now)
        if ex.role is Role.REQUESTER:
            if ex.phase is Phase.PREPARING and device == ex.part and action == "open":
                if not ok:
                    return self._abort(ex, now, f"could not open {ex.part}: {message}", alarm="major")
                ex = replace(
                    ex,
                    isolated=True,
                    execute_sent=True,
                    phase=Phase.EXECUTING,
                    deadline=(ex.offer_until or now) + CONFIRM_MARGIN_S,
                )
                self._put(self._note(ex, now, f"{ex.part} open: part isolated"))
                return [self._send(ex, "execute", {"prepared": True})]
            if ex.phase is Phase.CLOSING and device == ex.tie and action == "close":
                if not ok:
                    return self._abort(ex, now, f"could not close {ex.tie}: {message}", alarm="major")
                ex = replace(ex, tie_closed=True, confirmed_by_us=True, phase=Phase.DONE)
                self._put(self._note(ex, now, f"{ex.tie} closed: transfer done"))
                return [
                    self._send(ex, "confirm", {"tie_closed": True}),
                    Notice(ex.xid, "info", f"{ex.part}'s part fed from {ex.neighbour} through {ex.tie}"),
                ]
            if ex.phase is Phase.SETTLING and device == ex.tie and action == "close" and ok:
                ex = replace(ex, tie_closed=True)
                self._put(self._note(ex, now, f"{ex.tie} closed after the abort: {ex.part} stays open"))
                return []
            if ex.phase is Phase.ROLLING_BACK and device == ex.part and action == "close":
                ex = replace(ex, phase=Phase.ABORTED, isolated=not ok)
                self._put(self._note(ex, now, f"{ex.part} reclosed" if ok else f"{ex.part} not reclosed: {message}"))
                if ok:
                    return [
                        Notice(
                            ex.xid,
                            "warning",
                            f"transfer through {ex.tie} aborted ({ex.reason}); "
                            f"{ex.part} reclosed, its part back on its own feeder",
                        )
                    ]
                return [
                    Notice(
                        ex.xid,
                        "critical",
                        f"transfer through {ex.tie} aborted and {ex.part} could not be "
                        f"reclosed ({message}): its part is without supply",
                    )
                ]
            return []
        if ex.phase is Phase.EXECUTING and device == ex.tie and action == "close":
            if not ok:
                return self._abort(ex, now, f"could not close {ex.tie}: {message}", alarm="major")
            ex = replace(ex, tie_closed=True, phase=Phase.CONFIRMING, deadline=now + REPLY_TIMEOUT_S)
            self._put(self._note(ex, now, f"{ex.tie} closed"))
            return [self._send(ex, "confirm", {"tie_closed": True})]
        return []

    def _late_outcome(self, ex: Exchange, device: str, action: str, ok: bool, now: float) -> list[Action]:
        """An operation that checked back after its exchange ended."""
        if not ok:
            return []
        if ex.role is Role.REQUESTER and device == ex.part and action == "open" and not ex.isolated:
            ex = replace(ex, isolated=True)
            self._put(self._note(ex, now, f"{ex.part} opened after the exchange ended"))
            return self._abort(ex, now, ex.reason or "the exchange had ended", tell=False)
        if device == ex.tie and action == "close":
            ex = replace(ex, tie_closed=True)
            self._put(self._note(ex, now, f"{ex.tie} closed after the exchange ended"))
            return [
                Notice(
                    ex.xid,
                    "major",
                    f"{ex.tie} closed after the exchange with {ex.neighbour} ended "
                    f"({ex.phase.value}): check both sides",
                )
            ]
        return []

    def on_neighbour_death(self, neighbour: str, now: float) -> list[Action]:
        """The neighbour's death message: every open exchange with it ends now, safely."""
        self._dead_neighbours.add(neighbour)
        out: list[Action] = []
        for ex in list(self.exchanges.values()):
            if ex.neighbour == neighbour and not ex.phase.final and ex.phase not in _OWN_OPERATION_PHASES:
                out += self._timeout(ex, now, f"{neighbour} went offline")
        return out

    def offline(self, neighbour: str) -> bool:
        """The neighbour's death message was seen and no birth or message since."""
        return neighbour in self._dead_neighbours

    def on_neighbour_birth(self, neighbour: str) -> None:
        """The neighbour is back (its birth message): it may be asked again."""
        self._dead_neighbours.discard(neighbour)

    def _close_if_dead(self, ex: Exchange, now: float) -> list[Action]:
        """The tie owner closes the tie once the part it feeds is proven dead (VERIFYING)."""
        device = ex.tie if ex.role is Role.PROVIDER else ex.part
        if self._far_side_dead(device) is not True:
            return []  # not yet: `tick` looks again until the deadline
        if ex.role is Role.PROVIDER:
            ex = replace(ex, phase=Phase.EXECUTING, deadline=now + REPLY_TIMEOUT_S)
            self._put(self._note(ex, now, f"closing {ex.tie}"))
            return [Operate(ex.xid, ex.tie, "close", f"feed {ex.neighbour}'s part")]
        ex = replace(ex, phase=Phase.CLOSING, deadline=now + REPLY_TIMEOUT_S)
        self._put(self._note(ex, now, f"closing {ex.tie}"))
        return [Operate(ex.xid, ex.tie, "close", "take the neighbour's supply")]

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for ex in list(self.exchanges.values()):
            if ex.phase is Phase.VERIFYING and now < ex.deadline:
                out += self._close_if_dead(ex, now)
                continue
            if ex.phase is Phase.SETTLING and now >= ex.deadline:
                out += self._settle(ex, now)
                continue
            if not ex.phase.final and now >= ex.deadline:
                out += self._timeout(ex, now, f"no answer from {ex.neighbour} in time")
        return out

    def next_deadline(self) -> float | None:
        return min((ex.deadline for ex in self.exchanges.values() if not ex.phase.final), default=None)

    # ------------------------------------------------------------------ the requester's side

    def _requester_message(self, ex: Exchange, msg: Message, now: float) -> list[Action]:
        if ex.phase in (Phase.SETTLING, Phase.ROLLING_BACK):
            if msg.kind == "confirm" and msg.body.get("tie_closed") and not ex.tie_closed:
                ex = replace(ex, tie_closed=True)
                self._put(self._note(ex, now, f"{ex.neighbour} says {ex.tie} closed after the abort"))
            return []  # aborted already: only the plant decides what happens to the part now
        if msg.kind == "refuse" and ex.phase is Phase.REQUESTED:
            ex = replace(ex, phase=Phase.REFUSED, reason=str(msg.body.get("reason", "refused")))
            self._put(self._note(ex, now, f"refused: {ex.reason}"))
            return [Notice(ex.xid, "warning", f"{ex.neighbour} refused to take load through {ex.tie}: {ex.reason}")]
        if msg.kind == "offer" and ex.phase is Phase.REQUESTED:
            kw = msg.body.get("kw")
            valid = msg.body.get("valid_s", OFFER_VALID_S)
            if not _number(kw) or not _number(valid) or kw <= 0 or valid <= 0:
                return self._abort(ex, now, f"malformed offer {dict(msg.body)!r:.80}")
            if kw < ex.load_kw:
                ex = replace(ex, offered_kw=float(kw))
                return self._abort(ex, now, f"offer of {kw:.0f} kW is below the {ex.load_kw:.0f} kW to transfer")
            until = now + min(float(valid), OFFER_VALID_S)
            ex = replace(ex, offered_kw=float(kw), offer_until=until, phase=Phase.PREPARING, deadline=until)
            self._put(self._note(ex, now, f"offer of {kw:.0f} kW accepted"))
            return [self._send(ex, "accept", {}), Operate(ex.xid, ex.part, "open", "isolate the part to transfer")]
        if msg.kind == "confirm" and ex.phase is Phase.EXECUTING:
            if ex.tie_owned:  # the provider is ready: we close the tie ourselves
                if not msg.body.get("ready"):
                    return self._abort(ex, now, "the provider's confirm did not say it is ready")
                ex = replace(ex, phase=Phase.VERIFYING, confirmed_by_them=True, deadline=now + DEAD_PROOF_S)
                self._put(
                    self._note(ex, now, f"{ex.neighbour} ready: waiting for the part beyond {ex.part} to measure dead")
                )
                return self._close_if_dead(ex, now)
            if not msg.body.get("tie_closed"):
                return self._abort(ex, now, "the provider's confirm did not say the tie is closed")
            ex = replace(ex, tie_closed=True, confirmed_by_them=True, confirmed_by_us=True, phase=Phase.DONE)
            self._put(self._note(ex, now, f"{ex.tie} closed by {ex.neighbour}: transfer done"))
            return [
                self._send(ex, "confirm", {"part_fed": True}),
                Notice(ex.xid, "info", f"{ex.part}'s part fed from {ex.neighbour} through {ex.tie}"),
            ]
        if msg.kind == "abort":
            return self._abort(ex, now, f"{ex.neighbour} aborted: {msg.body.get('reason', '')}", tell=False)
        return []

    # ------------------------------------------------------------------ the provider's side

    def _on_request(self, msg: Message, now: float) -> list[Action]:
        body = msg.body
        tie, load_kw = body.get("tie"), body.get("load_kw")
        reply = self._send_to
        info = self.ties.get(tie) if isinstance(tie, str) else None
        if not isinstance(tie, str) or info is None or info.neighbour != msg.sender:
            return [
                reply(
                    msg.sender,
                    msg.xid,
                    "refuse",
                    {"reason": f"{tie!r} is not a tie of {self.substation} to {msg.sender}"},
                )
            ]
        if not _number(load_kw) or load_kw <= 0:
            return [reply(msg.sender, msg.xid, "refuse", {"reason": "load_kw must be a positive number"})]
        if self._busy(tie):
            return [reply(msg.sender, msg.xid, "refuse", {"reason": f"an exchange on {tie} is already under way"})]
        kw, why = self._headroom(tie, float(load_kw))
        ex = Exchange(
            xid=msg.xid,
            role=Role.PROVIDER,
            neighbour=msg.sender,
            tie=tie,
            part=str(body.get("part", "")),
            load_kw=float(load_kw),
            phase=Phase.OFFERED,
            started=now,
            deadline=now + OFFER_VALID_S,
            offered_kw=kw,
            offer_until=now + OFFER_VALID_S,
            tie_owned=info.owned,
        )
        if kw < load_kw:
            ex = replace(ex, phase=Phase.REFUSED, reason=f"headroom {kw:.0f} kW < {load_kw:.0f} kW: {why}")
            self._put(self._note(ex, now, ex.reason))
            return [self._send(ex, "refuse", {"reason": ex.reason, "kw": kw})]
        self._put(self._note(ex, now, f"offer {kw:.0f} kW ({why})"))
        return [self._send(ex, "offer", {"kw": kw, "valid_s": OFFER_VALID_S})]

    def _provider_message(self, ex: Exchange, msg: Message, now: float) -> list[Action]:
        if msg.kind == "accept" and ex.phase is Phase.OFFERED:
            ex = replace(ex, phase=Phase.PREPARING)
            self._put(self._note(ex, now, "accepted"))
            return []
        if msg.kind == "execute" and ex.phase is Phase.PREPARING:
            if ex.offer_until is not None and now > ex.offer_until:
                return self._abort(ex, now, "execute after the offer expired")
            if ex.tie_owned:
                ex = replace(ex, phase=Phase.VERIFYING, deadline=now + DEAD_PROOF_S)
                self._put(self._note(ex, now, f"execute: waiting for {ex.tie}'s far side to measure dead"))
                return self._close_if_dead(ex, now)
            ex = replace(ex, phase=Phase.CONFIRMING, deadline=now + 2 * REPLY_TIMEOUT_S)
            self._put(self._note(ex, now, f"ready: {ex.neighbour} closes {ex.tie}"))
            return [self._send(ex, "confirm", {"ready": True})]
        if msg.kind == "confirm" and ex.phase is Phase.CONFIRMING:
            if not (msg.body.get("part_fed") or msg.body.get("tie_closed")):
                return []
            ex = replace(ex, phase=Phase.DONE, confirmed_by_them=True, tie_closed=True, confirmed_by_us=True)
            self._put(self._note(ex, now, "confirmed by the requester: transfer done"))
            return [Notice(ex.xid, "info", f"feeding {ex.neighbour}'s part through {ex.tie}")]
        if msg.kind == "abort":
            return self._abort(ex, now, f"{ex.neighbour} aborted: {msg.body.get('reason', '')}", tell=False)
        return []

    # ------------------------------------------------------------------ endings

    def _timeout(self, ex: Exchange, now: float, why: str) -> list[Action]:
        if ex.phase is Phase.VERIFYING:
            side = ex.tie if ex.role is Role.PROVIDER else ex.part
            why = f"{side}'s far side not proven dead within {DEAD_PROOF_S:g} s: not closing {ex.tie} onto it"
        if ex.role is Role.PROVIDER and ex.phase is Phase.CONFIRMING and ex.tie_closed:
            # the part is fed; only the requester's word is missing: leave the tie as it is
            ex = replace(ex, phase=Phase.UNCONFIRMED, reason=f"tie closed; {why}")
            self._put(self._note(ex, now, ex.reason))
            return [
                Notice(
                    ex.xid,
                    "major",
                    f"{ex.tie} closed and feeding {ex.neighbour}'s part, but {why}: check with the neighbour",
                )
            ]
        if ex.role is Role.PROVIDER and ex.phase is Phase.EXECUTING:
            # our own close did not check back in time: the authority's alarm says why
            return self._abort(ex, now, f"{ex.tie} did not close in time", alarm="major")
        if ex.phase is Phase.ROLLING_BACK:
            ex = replace(ex, phase=Phase.ABORTED)
            self._put(self._note(ex, now, f"{ex.part} reclose did not check back in time"))
            return [
                Notice(
                    ex.xid,
                    "critical",
                    f"transfer through {ex.tie} aborted and {ex.part}'s reclose did not "
                    "check back: its part may be without supply",
                )
            ]
        return self._abort(ex, now, why, alarm="major" if ex.isolated else "warning")

    def _abort(self, ex: Exchange, now: float, why: str, *, alarm: str = "warning", tell: bool = True) -> list[Action]:
        out: list[Action] = []
        if tell:
            out.append(self._send(ex, "abort", {"reason": why}))
        if ex.role is Role.REQUESTER and ex.isolated and not ex.tie_closed:
            quiet_at = self.tie_quiet_at(ex, now)
            ex = replace(ex, reason=why)
            if quiet_at > now:
                ex = replace(ex, phase=Phase.SETTLING, deadline=quiet_at)
                self._put(
                    self._note(
                        ex,
                        now,
                        f"aborted ({why}): {ex.part} stays open until {ex.tie} can no "
                        f"longer close (at {quiet_at:.1f} s)",
                    )
                )
                out.append(
                    Notice(
                        ex.xid,
                        alarm,
                        f"transfer through {ex.tie} aborted: {why}; {ex.part} stays open "
                        f"until {ex.tie} can no longer close ({quiet_at - now:.0f} s)",
                    )
                )
                return out
            return out + self._settle(ex, now, alarm=alarm)
        ex = replace(ex, phase=Phase.ABORTED, reason=why)
        self._put(self._note(ex, now, f"aborted: {why}"))
        out.append(Notice(ex.xid, alarm, f"transfer through {ex.tie} aborted: {why}"))
        return out

    def tie_quiet_at(self, ex: Exchange, now: float) -> float:
        """Requester: from when on the tie can no longer close for exchange `ex` (`now` if it never
        could). Nobody closes it before our EXECUTE; a tie we own closes only by our own operation,
        in flight only while CLOSING; a provider owning it may close it until its offer's validity
        plus PROVIDER_CLOSE_WINDOW_S (its validity ends no later than ours: it started it first)."""
        if not ex.execute_sent:
            return now
        if ex.tie_owned:
            return ex.deadline + DEAD_PROOF_S if ex.phase is Phase.CLOSING else now
        return (ex.offer_until if ex.offer_until is not None else now) + PROVIDER_CLOSE_WINDOW_S

    def _settle(self, ex: Exchange, now: float, *, alarm: str = "warning") -> list[Action]:
        """Requester, aborted, the tie quiet: reclose the boundary switch only onto a part proven
        dead; otherwise leave it open and say so loudly."""
        dead = False if ex.tie_closed else self._far_side_dead(ex.part)
        if dead is True:
            ex = replace(ex, phase=Phase.ROLLING_BACK, deadline=now + REPLY_TIMEOUT_S)
            self._put(self._note(ex, now, f"aborted ({ex.reason}): reclosing {ex.part}, its far side proven dead"))
            return [
                Operate(ex.xid, ex.part, "close", "take the part back after an aborted transfer"),
                Notice(ex.xid, alarm, f"transfer through {ex.tie} aborted: {ex.reason}"),
            ]
        ex = replace(ex, phase=Phase.ABORTED)
        self._put(self._note(ex, now, f"aborted ({ex.reason}); {ex.part} left open: its far side is not proven dead"))
        return [
            Notice(
                ex.xid,
                "critical",
                f"transfer through {ex.tie} aborted ({ex.reason}) and {ex.part} left "
                "open: the tie may be closed; check the tie before reclosing",
            )
        ]

    # ------------------------------------------------------------------ plumbing

    def _busy(self, tie: str) -> bool:
        return any(ex.tie == tie and not ex.phase.final for ex in self.exchanges.values())

    def _send(self, ex: Exchange, kind: str, body: dict[str, Any]) -> Send:
        return self._send_to(ex.neighbour, ex.xid, kind, body)

    def _send_to(self, recipient: str, xid: str, kind: str, body: dict[str, Any]) -> Send:
        return Send(Message(kind=kind, xid=xid, sender=self.substation, recipient=recipient, body=body))

    def _note(self, ex: Exchange, now: float, text: str) -> Exchange:
        return replace(ex, history=ex.history + ((now, text),))

    def _put(self, ex: Exchange) -> None:
        self.exchanges[ex.xid] = ex
        self.changed.append(ex)

    def take_changed(self) -> list[Exchange]:
        out, self.changed = self.changed, []
        return out


_OWN_OPERATION_PHASES = (Phase.CLOSING, Phase.SETTLING, Phase.ROLLING_BACK)
"""Requester phases a neighbour's death does not change: they wait on this gateway's own plant."""


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
