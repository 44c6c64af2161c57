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



def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sim-seed", type=int, default=None,
                     help="run the Raft simulator tests for this one seed (replay a failure)")
    parser.addoption("--sim-seeds", type=int, default=None,
                     help="how many simulator seeds per scenario (default: VSTORE_SIM_SEEDS or the suite's own)")


@pytest.fixture
def sim_seed_option(request: pytest.FixtureRequest) -> int | None:
    return request.config.getoption("--sim-seed")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sim_seed" in metafunc.fixturenames:
        one = metafunc.config.getoption("--sim-seed")
        marker = metafunc.definition.get_closest_marker("sim_seeds")
        default = marker.args[0] if marker else 100
        count = metafunc.config.getoption("--sim-seeds") or int(os.environ.get("VSTORE_SIM_SEEDS", default))
        seeds = [one] if one is not None else list(range(count))
        metafunc.parametrize("sim_seed", seeds)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Remember each phase's outcome on the item, so fixtures can dump logs on failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def call_failed(node: pytest.Item) -> bool:
    """Did the test body fail (or never run)? For fixtures that save logs on failure."""
    report = getattr(node, "rep_call", None)
    return report is None or report.failed
