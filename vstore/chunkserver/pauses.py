"""Noticing that this process did not run for a while (SIGSTOP, a VM pause, a swap storm).

A chunkserver that was paused with orders in hand must not carry them out on waking: the
leader may have given up on them meanwhile (it forgets a silent server's copies when it goes
offline, and fences off a replica that missed a version bump), and a copy or a bump run late
leaves a replica the leader does not expect. ``PauseWatch`` is ticked by a task every
``tick_s``; a tick that comes more than ``pause_s`` after the one before marks a pause. The
order loop asks ``paused_since(t)`` before each order and before it completes a copy, with
``t`` the moment it sent the poll that brought the order: true when a pause ended after
``t``, or is going on now (the ticks have stopped: the order loop ran first on waking).
Conservative by design: an order fetched just after a pause may be refused too, which only
costs a re-plan. Pure: the caller passes the clock's readings.
"""

from __future__ import annotations

import math

#: A gap between ticks longer than this is a pause. The leader declares a silent chunkserver
#: offline after 5 s and waits 5 s for a version bump; 2 s stays well inside both.
PAUSE_S = 2.0
TICK_S = 0.25


class PauseWatch:
    def __init__(self, now: float, *, pause_s: float = PAUSE_S) -> None:
        if pause_s <= 0:
            raise ValueError("pause_s must be positive")
        self.pause_s = pause_s
        self._last_tick = now
        #: when the last pause seen by a tick ended (the tick that saw it), -inf before any
        self.last_pause_end = -math.inf
        #: the longest pause seen, in seconds (for the status log)
        self.longest_s = 0.0

    def tick(self, now: float) -> float:
        """Called every TICK_S; returns the length of the pause it ended, 0.0 if none."""
        gap = now - self._last_tick
        self._last_tick = now
        if gap > self.pause_s:
            self.last_pause_end = now
            self.longest_s = max(self.longest_s, gap)
            return gap
        return 0.0

    def paused_since(self, t: float, now: float) -> bool:
        return self.last_pause_end > t or now - self._last_tick > self.pause_s
