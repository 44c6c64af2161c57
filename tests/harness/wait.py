"""Wait on conditions, not on time (STYLE.md §7)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_for(pred: Callable[[], Any | Awaitable[Any]], *, timeout_s: float, what: str | Callable[[], str],
                   interval_s: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; return that. On timeout fail with
    ``what`` we were waiting for (a callable is asked then, to describe the state at that
    moment) and the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = pred()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {described}; last seen: {last!r}")
        await asyncio.sleep(interval_s)


def wait_until(pred: Callable[[], Any], *, timeout_s: float, what: str | Callable[[], str],
               interval_s: float = 0.2) -> Any:
    """``wait_for`` for threads and synchronous tests (the nemesis rows drive real processes
    and FUSE syscalls, which block): poll ``pred`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {described}; last seen: {last!r}")
        time.sleep(interval_s)
