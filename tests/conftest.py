"""Shared test plumbing.

* Every test fails if vstore logs an unexpected WARNING or worse (s3ql's checklogs): a test
  that provokes one on purpose says so with ``expect_log("event.name")``, and then the event
  must actually have been logged, so the test also proves the operator would see it.
* Under ``CI=true`` a test may not skip for lack of a tool (tests/harness/skips.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import pytest


class _LogChecker(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _check_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    checker = _LogChecker()
    logger = logging.getLogger("vstore")
    logger.addHandler(checker)
    old_level = logger.level
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.INFO)
    request.node._vstore_expected_logs = {}
    yield
    logger.removeHandler(checker)
    logger.setLevel(old_level)
    if getattr(request.node, "_vstore_skip_log_check", False):
        return
    expected: dict[str, int] = request.node._vstore_expected_logs
    seen: dict[str, int] = {}
    unexpected = []
    for record in checker.records:
        event = record.getMessage()
        seen[event] = seen.get(event, 0) + 1
        if event not in expected:
            unexpected.append(f"{record.levelname} {record.name} {event} "
                              f"{ {k: v for k, v in record.__dict__.items() if k in ('reason', 'peer', 'error')} }")
    if unexpected:
        pytest.fail("unexpected warnings logged:\n  " + "\n  ".join(unexpected), pytrace=False)
    missing = [event for event, minimum in expected.items() if seen.get(event, 0) < minimum]
    if missing:
        pytest.fail(f"expected log events never logged: {missing}", pytrace=False)


@pytest.fixture
def expect_log(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``expect_log("net.connection_refused")``: this WARNING is intended and must appear
    (at least ``count`` times; count=0 permits it without requiring it)."""

    def expect(event: str, count: int = 1) -> None:
        request.node._vstore_expected_logs[event] = count

    return expect

