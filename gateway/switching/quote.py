"""Quotes between substations: "could you carry this much through our tie in that window?"

A planner (predictive maintenance's plan B) asks a neighbour, days ahead, what it could carry
through a tie between them during a future window. The neighbour answers from its own forecast
headroom for that window: a `quote` (kVA it could carry, for that window) or a `refuse` (why
not). A quote is not an offer: nothing is switched, nothing is reserved, and the load transfer
itself (gateway/switching/transfer.py) is asked for again when the window comes.

    requester                                          provider
    QUOTE_REQUEST {tie, window_start, window_end, kva} →
                                                   ←   QUOTE {tie, window_start, window_end, kva, note}
                                                       | REFUSE {reason}

The messages travel as the exchange's do (signed by the sender's key, time and nonce checked by
gateway/switching/exchange.py before they reach this book). A request is refused when its tie is
not a tie between the two, its window is malformed or already over, or its kVA is not a positive
number; an answer that does not match the question (another tie or window, a malformed kVA) is
dropped and the question stays unanswered until its timeout.

Sans-IO: `now` is monotonic seconds, `wall` the wall time the window is compared with; outgoing
messages are `Send` actions, answers are collected for the planner with `take_answered`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from gateway.switching.transfer import Message, Send, TieInfo, TransferError

QUOTE_KINDS = ("quote_request", "quote")
"""Kinds only quotes use; a `refuse` is a quote's when its id is a pending quote's."""
QUOTE_TIMEOUT_S = 10.0
"""A question unanswered this long is answered by the declared capacity."""
MAX_WINDOW_S = 7 * 86400.0

WindowHeadroom = Callable[[str, float, float, float], tuple[float, str]]
"""(tie, kVA asked, window start, window end as wall times) → (kVA this substation could carry, why)."""


@dataclass(frozen=True, slots=True)
class Question:
    xid: str
    tie: str
    neighbour: str
    window_start: float
    window_end: float
    kva: float
    deadline: float


@dataclass(frozen=True, slots=True)
class Answer:
    """The neighbour's answer to a question: `kva` None when it refused or was silent."""

    question: Question
    kva: float | None
    by: str
    """Who answered: the neighbour's substation id, or "" when nobody did (timeout)."""
    note: str


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class QuoteBook:
    """One gateway's quotes, as the one asking and as the one answering."""

    def __init__(
        self,
        substation: str,
        ties: Mapping[str, TieInfo],
        *,
        headroom: WindowHeadroom,
        timeout_s: float = QUOTE_TIMEOUT_S,
        new_xid: Callable[[], str] | None = None,
    ) -> None:
        self.substation = substation
        self.ties = dict(ties)
        self._headroom = headroom
        self.timeout_s = timeout_s
        self._new_xid = new_xid or (lambda: "Q-" + secrets.token_hex(6))
        self.pending: dict[str, Question] = {}
        self.answered: list[Answer] = []
        self.quoted = 0
        self.refused = 0

    # ------------------------------------------------------------------ asking

    def ask(self, tie: str, window_start: float, window_end: float, kva: float, now: float) -> tuple[str, list[Send]]:
        """Ask the neighbour beyond `tie` for a quote; (question id, messages). The same question
        already pending is not asked twice."""
        info = self.ties.get(tie)
        if info is None:
            raise TransferError(f"{tie} is not a tie to a neighbouring substation")
        if not (_number(window_start) and _number(window_end) and window_end > window_start):
            raise TransferError("the window must end after it starts")
        if not (_number(kva) and kva > 0):
            raise TransferError(f"kva must be a positive number, found {kva!r}")
        for q in self.pending.values():
            if (q.tie, q.window_start, q.window_end) == (tie, window_start, window_end):
                return q.xid, []
        q = Question(
            self._new_xid(),
            tie,
            info.neighbour,
            float(window_start),
            float(window_end),
            float(kva),
            now + self.timeout_s,
        )
        self.pending[q.xid] = q
        return q.xid, [
            Send(
                Message(
                    kind="quote_request",
                    xid=q.xid,
                    sender=self.substation,
                    recipient=q.neighbour,
                    body={"tie": tie, "window_start": q.window_start, "window_end": q.window_end, "kva": q.kva},
                )
            )
        ]

    def tick(self, now: float) -> None:
        for q in [q for q in self.pending.values() if now >= q.deadline]:
            del self.pending[q.xid]
            self.answered.append(Answer(q, None, "", f"{q.neighbour} did not answer within {self.timeout_s:g} s"))

    def next_deadline(self) -> float | None:
        return min((q.deadline for q in self.pending.values()), default=None)

    def take_answered(self) -> list[Answer]:
        out, self.answered = self.answered, []
        return out

    def handles(self, msg: Message) -> bool:
        """A message for this book (a quote's kind, or a refusal of a pending question)."""
        return msg.kind in QUOTE_KINDS or (msg.kind == "refuse" and msg.xid in self.pending)

    # ------------------------------------------------------------------ messages

    def on_message(self, msg: Message, wall: float) -> list[Send]:
        """A verified message from a neighbour; the answer to send, if any."""
        if msg.kind == "quote_request":
            return [self._answer(msg, wall)]
        q = self.pending.get(msg.xid)
        if q is None or msg.sender != q.neighbour:
            return []
        if msg.kind == "refuse":
            del self.pending[q.xid]
            self.answered.append(
                Answer(q, None, msg.sender, f"{msg.sender} refused: {str(msg.body.get('reason', ''))[:200]}")
            )
            return []
        body = msg.body
        kva = body.get("kva")
        if (
            body.get("tie") != q.tie
            or body.get("window_start") != q.window_start
            or body.get("window_end") != q.window_end
            or not _number(kva)
            or kva < 0
        ):
            raise TransferError(f"quote {q.xid} does not answer the question asked (tie, window, kva ≥ 0)")
        del self.pending[q.xid]
        self.answered.append(Answer(q, float(kva), msg.sender, str(body.get("note", ""))[:300]))
        return []

    def _answer(self, msg: Message, wall: float) -> Send:
        body = msg.body
        tie, start, end, kva = body.get("tie"), body.get("window_start"), body.get("window_end"), body.get("kva")

        def refuse(reason: str) -> Send:
            self.refused += 1
            return Send(
                Message(
                    kind="refuse", xid=msg.xid, sender=self.substation, recipient=msg.sender, body={"reason": reason}
                )
            )

        info = self.ties.get(tie) if isinstance(tie, str) else None
        if info is None or info.neighbour != msg.sender:
            return refuse(f"{tie!r} is not a tie of {self.substation} to {msg.sender}")
        if not (_number(start) and _number(end) and end > start and end - start <= MAX_WINDOW_S):
            return refuse(
                f"window_start/window_end: expected a window of at most {MAX_WINDOW_S / 3600:g} h, "
                f"found {start!r}..{end!r}"
            )
        if end <= wall:
            return refuse("the window is over")
        if not (_number(kva) and kva > 0):
            return refuse(f"kva: expected a positive number, found {kva!r}")
        room, why = self._headroom(info.tie, float(kva), float(start), float(end))
        if not (_number(room) and room > 0):
            return refuse(f"no headroom in that window: {why}")
        self.quoted += 1
        return Send(
            Message(
                kind="quote",
                xid=msg.xid,
                sender=self.substation,
                recipient=msg.sender,
                body={
                    "tie": info.tie,
                    "window_start": start,
                    "window_end": end,
                    "kva": round(float(room), 1),
                    "note": f"quote, not reserved: {why}"[:300],
                },
            )
        )
