"""Dashboard logins: the admin password, sessions, CSRF tokens and the login rate limit.

* The password is checked against the scrypt hash ``vstore mkfs`` stored in the replicated
  state (vstore/metadata/passwords.py), read through the cluster like everything else.
* A session is a random 32-byte id in a cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure``
  under TLS, ``Path=/``) that names a server-side entry: an idle expiry, an absolute one,
  and the session's CSRF token. Server-side rather than a signed cookie (aiohttp-session's
  encrypted storage) because logging out, or restarting the MDS, must end a session for
  good, and the store is a dict of a few entries.
* Every state-changing request carries the session's CSRF token in ``X-CSRF-Token``
  (compared in constant time) and an ``Origin``, when the browser sends one, of this very
  host (app.py).
* Login attempts: at most ``LOGIN_ATTEMPTS`` failures per client address per
  ``LOGIN_WINDOW_S``; beyond that, 429 with the seconds to wait, right or wrong password.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "vstore_session"
IDLE_S = 30 * 60
ABSOLUTE_S = 12 * 3600
LOGIN_ATTEMPTS = 5
LOGIN_WINDOW_S = 60.0
SESSIONS_MAX = 1000


@dataclass
class Session:
    csrf: str
    created_s: float
    seen_s: float


class Sessions:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, idle_s: float = IDLE_S,
                 absolute_s: float = ABSOLUTE_S) -> None:
        self._clock = clock
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._by_id: dict[str, Session] = {}

    def create(self) -> tuple[str, Session]:
        now = self._clock()
        self._expire(now)
        if len(self._by_id) >= SESSIONS_MAX:  # the oldest goes: a flood of logins cannot grow memory
            del self._by_id[min(self._by_id, key=lambda k: self._by_id[k].seen_s)]
        sid = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), created_s=now, seen_s=now)
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session named by the cookie (its idle clock restarted), or None."""
        if not sid:
            return None
        session = self._by_id.get(sid)
        now = self._clock()
        if session is None:
            return None
        if now - session.seen_s > self.idle_s or now - session.created_s > self.absolute_s:
            del self._by_id[sid]
            return None
        session.seen_s = now
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def expires_in(self, session: Session) -> int:
        now = self._clock()
        return int(max(0.0, min(session.seen_s + self.idle_s, session.created_s + self.absolute_s) - now))

    def _expire(self, now: float) -> None:
        for sid in [k for k, s in self._by_id.items()
                    if now - s.seen_s > self.idle_s or now - s.created_s > self.absolute_s]:
            del self._by_id[sid]


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), str(token).encode())


class LoginLimiter:
    """Failed logins per client address in a sliding window."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, attempts: int = LOGIN_ATTEMPTS,
                 window_s: float = LOGIN_WINDOW_S) -> None:
        self._clock = clock
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def wait_s(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = self._clock()
        failures = self._failures.get(client)
        if not failures:
            return 0.0
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0.0
        return max(0.0, failures[0] + self.window_s - now) if len(failures) >= self.attempts else 0.0

    def failed(self, client: str) -> None:
        if len(self._failures) > 10_000:  # many addresses: forget the quiet ones
            for key in [k for k, v in self._failures.items() if not v or self._clock() - v[-1] > self.window_s]:
                del self._failures[key]
        self._failures.setdefault(client, deque(maxlen=self.attempts * 2)).append(self._clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
