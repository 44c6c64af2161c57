"""Dashboard sessions, CSRF tokens and the login rate limit, on a fake clock; and the pure
health classification the dashboard adds (urgent) and its chunk counts."""

from __future__ import annotations

from vstore.admin.auth import LoginLimiter, Sessions, csrf_ok
from vstore.admin.model import banner, chunk_health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_when_idle_and_absolutely_and_on_logout() -> None:
    clock = Clock()
    sessions = Sessions(clock=clock, idle_s=60, absolute_s=300)
    sid, session = sessions.create()
    assert sessions.get(sid) is session and sessions.get("forged") is None and sessions.get(None) is None
    clock.now += 59
    assert sessions.get(sid) is session  # seen: the idle clock restarts
    clock.now += 59
    assert sessions.get(sid) is session
    clock.now += 61
    assert sessions.get(sid) is None  # idle too long
    sid, session = sessions.create()
    for _ in range(7):
        clock.now += 50
        sessions.get(sid)
    assert sessions.get(sid) is None  # 300 s after login, however busy
    sid, _ = sessions.create()
    sessions.drop(sid)
    assert sessions.get(sid) is None


def test_csrf_tokens_are_per_session_and_compared_whole() -> None:
    sessions = Sessions()
    _, one = sessions.create()
    _, two = sessions.create()
    assert one.csrf != two.csrf and len(one.csrf) >= 40
    assert csrf_ok(one, one.csrf) and not csrf_ok(one, two.csrf)
    assert not csrf_ok(one, None) and not csrf_ok(one, "") and not csrf_ok(one, one.csrf[:-1])


def test_login_limiter_counts_failures_per_address_in_a_window() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock=clock, attempts=3, window_s=60)
    for _ in range(3):
        assert limiter.wait_s("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
        clock.now += 1
    assert 55 < limiter.wait_s("10.0.0.1") <= 58  # until the first failure leaves the window
    assert limiter.wait_s("10.0.0.2") == 0        # another address is not punished
    clock.now += 58
    assert limiter.wait_s("10.0.0.1") == 0
    limiter.failed("10.0.0.1")
    limiter.succeeded("10.0.0.1")
    assert limiter.wait_s("10.0.0.1") == 0


def test_banner_and_chunk_health() -> None:
    summary = {"chunks_total": 10, "backlog_last_copy": 1, "backlog_below_target": 2, "lost": 0, "rebuilding": 1}
    assert chunk_health(summary) == {"total": 10, "healthy": 7, "degraded": 2, "urgent": 1, "lost": 0,
                                     "rebuilding": 1}
    assert banner("degraded", summary) == "urgent"
    assert banner("degraded", {"backlog_below_target": 2}) == "degraded"
    assert banner("degraded", {"lost": 1}) == "urgent" and banner("degraded", {"storm_brake": 1}) == "urgent"
    assert banner("healthy", {}) == "healthy" and banner("unavailable", {"lost": 3}) == "unavailable"
