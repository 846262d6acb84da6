"""Sessions, CSRF tokens, login rate limits and security headers of the HMI (sans-IO).

Every decision takes `now` (monotonic seconds) as an argument; the web layer owns the clock.

- A session starts at a successful login and ends at logout, after `idle_s` without a request,
  or `max_s` after the login, whichever comes first. Its id travels in an HttpOnly,
  SameSite=Strict cookie; its CSRF token only in the page's memory and the `X-CSRF-Token`
  header of every write, compared in constant time.
- The login itself is a write: it needs the token of a pre-login cookie (double submit), so a
  page on another site cannot log a browser in under another account.
- Failed logins are counted per client address and per user name over a sliding window; past
  the limit, login answers 429 with the seconds to wait, for a right password too.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.switching.model import Role

MAX_SESSIONS = 1000
"""Sessions held at once; the oldest is dropped beyond this."""
MAX_TRACKED_KEYS = 10_000
"""Addresses and user names whose failed logins are remembered; the least recent forgotten first."""


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    user: str
    role: Role
    created: float
    last_seen: float


class SessionBook:
    def __init__(self, idle_s: float, max_s: float, *, new_token: Callable[[], str] | None = None) -> None:
        if idle_s <= 0 or max_s <= 0:
            raise ValueError("session lifetimes must be positive")
        self.idle_s = idle_s
        self.max_s = max_s
        self._new_token = new_token or (lambda: secrets.token_urlsafe(32))
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str, role: Role, now: float) -> Session:
        session = Session(
            id=self._new_token(), csrf=self._new_token(), user=user, role=role, created=now, last_seen=now
        )
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None, now: float, *, touch: bool = True) -> Session | None:
        """The live session with this id (its idle time restarts when `touch`), or None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self.expired(session, now):
            del self._sessions[session_id]
            return None
        if touch:
            session.last_seen = now
        return session

    def expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen >= self.idle_s or now - session.created >= self.max_s

    def expires_at(self, session: Session) -> float:
        return min(session.last_seen + self.idle_s, session.created + self.max_s)

    def end(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def end_user(self, user: str) -> int:
        """End every session of `user` (removed, or role changed, in the users file)."""
        ids = [s.id for s in self._sessions.values() if s.user == user]
        for sid in ids:
            del self._sessions[sid]
        return len(ids)

    def users(self) -> set[str]:
        return {s.user for s in self._sessions.values()}

    def roles_of(self, user: str) -> set[Role]:
        return {s.role for s in self._sessions.values() if s.user == user}

    def prune(self, now: float) -> int:
        dead = [s.id for s in self._sessions.values() if self.expired(s, now)]
        for sid in dead:
            del self._sessions[sid]
        return len(dead)


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token (False for a missing one)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class LoginLimiter:
    """Sliding-window count of failed logins per client address and per user name."""

    def __init__(self, failures: int, window_s: float) -> None:
        if failures < 1 or window_s <= 0:
            raise ValueError("login limits must be positive")
        self.failures = failures
        self.window_s = window_s
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def _times(self, key: str, now: float) -> deque[float]:
        times = self._seen.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._seen[key]
        return times

    def retry_after(self, address: str, user: str, now: float) -> float:
        """Seconds until a login from `address` for `user` may be tried again (0: now)."""
        wait = 0.0
        for key in (f"addr:{address}", f"user:{user.lower()}"):
            times = self._times(key, now)
            if len(times) >= self.failures:
                wait = max(wait, times[-self.failures] + self.window_s - now)
        return max(wait, 0.0)

    def failed(self, address: str, user: str, now: float) -> None:
        for key in (f"addr:{address}", f"user:{user.lower()}"):
            times = self._seen.setdefault(key, deque(maxlen=self.failures))
            times.append(now)
            self._seen.move_to_end(key)
        while len(self._seen) > MAX_TRACKED_KEYS:
            self._seen.popitem(last=False)

    def succeeded(self, address: str, user: str) -> None:
        """A right password within the limit clears that user's count (not the address's)."""
        self._seen.pop(f"user:{user.lower()}", None)


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def security_headers(https: bool) -> dict[str, str]:
    """Headers on every answer: nothing from elsewhere runs or frames the HMI, nothing is cached."""
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        "Cache-Control": "no-store",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers
