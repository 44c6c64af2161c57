"""vstore.failpoints: the spec grammar, the evaluation of terms hit by hit (counts, chains,
seeded probabilities), the refusal rules of ``configure`` and the three actions.

The grammar and the evaluation are pure (PointState takes its random.Random), so they are
checked directly; the actions are checked with ``os._exit`` and the sleeps replaced.
"""

from __future__ import annotations

import asyncio
import errno
import random
import re
from collections.abc import Callable, Iterator

import pytest

from vstore import failpoints as fp
from vstore.errors import UsageError
from vstore.failpoints import FailpointSpecError, PointState, Term, parse_spec


@pytest.fixture(autouse=True)
def _all_off() -> Iterator[None]:
    fp.disable()
    yield
    fp.disable()


def outcomes(spec: str, hits: int, seed: int = 0) -> list[str]:
    """What each of ``hits`` hits of the point in a one-point spec does: the action taken
    (without its count or percentage), "-" for nothing."""
    [(name, terms)] = parse_spec(spec).items()
    state = PointState(name, terms, fp.point_rng(seed, name))
    return [str(Term(t.action, t.arg)) if (t := state.evaluate()) is not None else "-" for _ in range(hits)]


# ---- grammar ------------------------------------------------------------------------------------


def test_a_spec_names_points_with_their_actions() -> None:
    spec = parse_spec("raft.before_persist=panic; cs.fsync=2*error(EIO) ;cs.write=sleep(200);")
    assert spec == {"raft.before_persist": (Term("panic"),),
                    "cs.fsync": (Term("error", errno.EIO, count=2),),
                    "cs.write": (Term("sleep", 200),)}


def test_terms_chain_with_arrows_and_take_a_percentage_and_a_count() -> None:
    spec = parse_spec("cs.read=40*off->12.5%3*error(ENOSPC)->panic")
    assert spec["cs.read"] == (Term("off", count=40), Term("error", errno.ENOSPC, count=3, percent=12.5),
                               Term("panic"))
    assert "->".join(map(str, spec["cs.read"])) == "40*off->12.5%3*error(ENOSPC)->panic"


def test_an_empty_spec_enables_nothing() -> None:
    assert parse_spec("") == {} and parse_spec(" ; ;") == {}


def test_an_unknown_point_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(FailpointSpecError) as info:
        parse_spec("raft.before_persits=panic")
    assert "unknown failpoint 'raft.before_persits'" in str(info.value)
    for name in fp.POINTS:
        assert name in str(info.value)


@pytest.mark.parametrize("spec, problem", [
    ("cs.fsync", "expected POINT=ACTION"),
    ("=panic", "expected POINT=ACTION"),
    ("cs.fsync=explode", "expected [P%][N*]"),
    ("cs.fsync=error", "errno name"),
    ("cs.fsync=error(EWHAT)", "errno name"),
    ("cs.fsync=error(5)", "errno name"),
    ("cs.fsync=sleep(1.5)", "whole milliseconds"),
    ("cs.fsync=sleep(600001)", "whole milliseconds"),
    ("cs.fsync=sleep", "whole milliseconds"),
    ("cs.fsync=panic(3)", "takes no argument"),
    ("cs.fsync=0*panic", "at least 1"),
    ("cs.fsync=0%panic", "(0, 100]"),
    ("cs.fsync=101%panic", "(0, 100]"),
    ("cs.fsync=2*50%panic", "expected [P%][N*]"),
    ("cs.fsync=panic->", "expected [P%][N*]"),
    ("cs.fsync=panic;cs.fsync=off", "given twice"),
])
def test_a_bad_spec_is_refused_saying_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(FailpointSpecError, match=re.escape(problem)):
        parse_spec(spec)


# ---- evaluation ---------------------------------------------------------------------------------


def test_an_action_without_a_count_acts_on_every_hit() -> None:
    assert outcomes("cs.fsync=error(EIO)", 4) == ["error(EIO)"] * 4


def test_a_count_limits_a_term_to_its_first_hits_then_the_point_is_off() -> None:
    assert outcomes("cs.fsync=2*error(EIO)", 5) == ["error(EIO)", "error(EIO)", "-", "-", "-"]


def test_counted_off_lets_hits_pass_before_the_next_term_acts() -> None:
    assert outcomes("raft.before_persist=3*off->1*panic", 6) == ["-", "-", "-", "panic", "-", "-"]
    assert outcomes("cs.write=1*sleep(5)->error(EIO)", 3) == ["sleep(5)", "error(EIO)", "error(EIO)"]


def test_a_percentage_acts_on_about_that_share_of_hits() -> None:
    hits = outcomes("cs.read=25%error(EIO)", 4000)
    assert 850 < hits.count("error(EIO)") < 1150


def test_a_missed_percentage_falls_through_to_the_next_term() -> None:
    hits = outcomes("cs.read=50%panic->error(EIO)", 200)
    assert set(hits) == {"panic", "error(EIO)"}, "every hit takes one of the two terms"


def test_a_count_under_a_percentage_counts_only_the_hits_that_acted() -> None:
    hits = outcomes("cs.read=10%3*error(EIO)", 2000)
    acted = [n for n, hit in enumerate(hits) if hit != "-"]
    assert len(acted) == 3 and acted[-1] > 3, acted


def test_probabilities_replay_exactly_from_the_seed_and_differ_between_seeds() -> None:
    one = outcomes("cs.read=30%error(EIO)", 300, seed=7)
    assert one == outcomes("cs.read=30%error(EIO)", 300, seed=7)
    assert one != outcomes("cs.read=30%error(EIO)", 300, seed=8)


def test_each_point_has_its_own_random_stream() -> None:
    """A point's outcomes do not depend on how often the others were hit in between."""
    spec = parse_spec("cs.read=30%error(EIO);cs.write=30%error(EIO)")
    alone = PointState("cs.read", spec["cs.read"], fp.point_rng(3, "cs.read"))
    mixed = PointState("cs.read", spec["cs.read"], fp.point_rng(3, "cs.read"))
    other = PointState("cs.write", spec["cs.write"], fp.point_rng(3, "cs.write"))
    got_alone = [alone.evaluate() for _ in range(100)]
    got_mixed = []
    for n in range(100):
        for _ in range(n % 3):
            other.evaluate()
        got_mixed.append(mixed.evaluate())
    assert got_alone == got_mixed
    assert fp.point_rng(3, "cs.read").random() == random.Random("3:cs.read").random()


def test_hits_and_firings_are_counted() -> None:
    state = PointState("cs.fsync", parse_spec("cs.fsync=2*off->1*error(EIO)")["cs.fsync"], random.Random(0))
    for _ in range(5):
        state.evaluate()
    assert (state.hits, state.fired) == (5, 1)


# ---- configure: both the variable and the config ----------------------------------------------


def test_without_the_variable_nothing_is_enabled_whatever_the_config_says() -> None:
    assert fp.configure(allowed=True, environ={}) is False
    assert fp.configure(allowed=False, environ={fp.ENV_VAR: "  "}) is False
    assert fp.active() == {}
    fp.failpoint("cs.fsync")  # off: returns


def test_the_variable_without_the_config_refuses_the_start_in_one_line() -> None:
    with pytest.raises(UsageError) as info:
        fp.configure(allowed=False, environ={fp.ENV_VAR: "cs.fsync=error(EIO)"})
    message = info.value.message
    assert "\n" not in message and info.value.exit_code == 2
    assert fp.ENV_VAR in message and "[node] failpoints = false" in message and "refusing to start" in message
    assert fp.active() == {}


def test_a_bad_spec_or_seed_refuses_the_start() -> None:
    with pytest.raises(UsageError, match="unknown failpoint 'nope' .known: raft.before_persist, "):
        fp.configure(allowed=True, environ={fp.ENV_VAR: "nope=panic"})
    with pytest.raises(UsageError, match=f"{fp.SEED_ENV_VAR}='x'"):
        fp.configure(allowed=True, environ={fp.ENV_VAR: "cs.fsync=panic", fp.SEED_ENV_VAR: "x"})
    assert fp.active() == {}


def test_a_point_of_the_other_role_is_refused_since_it_could_never_fire() -> None:
    with pytest.raises(UsageError, match="cs.fsync not on a mds node .its failpoints: raft.before_persist"):
        fp.configure(allowed=True, role="mds", environ={fp.ENV_VAR: "cs.fsync=error(EIO)"})


def test_an_allowed_spec_enables_its_points_and_says_so(expect_log: Callable[..., None]) -> None:
    expect_log("failpoints.enabled")
    assert fp.configure(allowed=True, role="cs", environ={fp.ENV_VAR: "cs.fsync=1*error(EIO)"})
    assert fp.active() == {"cs.fsync": (0, 0)}
    with pytest.raises(OSError) as info:
        fp.failpoint("cs.fsync")
    assert info.value.errno == errno.EIO and "failpoint cs.fsync" in str(info.value)
    fp.failpoint("cs.fsync")  # its one hit is used up
    fp.failpoint("cs.write")  # not enabled
    assert fp.active() == {"cs.fsync": (2, 1)}


# ---- actions ------------------------------------------------------------------------------------


class Exited(BaseException):
    pass


def test_panic_logs_the_point_and_exits_with_the_failpoint_code(monkeypatch: pytest.MonkeyPatch,
                                                                expect_log: Callable[..., None]) -> None:
    expect_log("failpoints.enabled")
    expect_log("failpoint.panic")
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(fp.os, "_exit", fake_exit)
    fp.configure(allowed=True, environ={fp.ENV_VAR: "apply.before_txn_commit=panic"})
    with pytest.raises(Exited):
        fp.failpoint("apply.before_txn_commit")
    assert codes == [fp.FAILPOINT_EXIT_CODE] == [86]


def test_sleep_blocks_a_thread_in_failpoint_and_only_the_task_in_afailpoint(
        monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]) -> None:
    expect_log("failpoints.enabled")
    slept: list[tuple[str, float]] = []
    monkeypatch.setattr(fp.time, "sleep", lambda s: slept.append(("thread", s)))
    fp.configure(allowed=True, environ={fp.ENV_VAR: "cs.fsync=sleep(250);raft.before_apply=2*sleep(30)"})
    fp.failpoint("cs.fsync")
    assert slept == [("thread", 0.25)]

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1
        task = asyncio.create_task(ticker())
        await fp.afailpoint("raft.before_apply")
        task.cancel()
        assert ticks >= 2, "the loop kept running during the sleep"
        await fp.afailpoint("raft.before_apply")
        await fp.afailpoint("raft.before_apply")  # used up: returns at once
        return loop.time() - started

    assert asyncio.run(main()) >= 0.06
    assert slept == [("thread", 0.25)], "afailpoint never blocks the thread"


def test_a_blocking_sleep_on_the_event_loop_is_our_bug(expect_log: Callable[..., None]) -> None:
    expect_log("failpoints.enabled")
    fp.configure(allowed=True, environ={fp.ENV_VAR: "cs.write=sleep(1)"})

    async def main() -> None:
        fp.failpoint("cs.write")

    with pytest.raises(AssertionError, match="use afailpoint"):
        asyncio.run(main())


def test_an_injected_error_in_afailpoint_raises_at_the_await(expect_log: Callable[..., None]) -> None:
    expect_log("failpoints.enabled")
    fp.configure(allowed=True, environ={fp.ENV_VAR: "raft.after_persist_before_send=error(ENOSPC)"})

    async def main() -> None:
        await fp.afailpoint("raft.after_persist_before_send")

    with pytest.raises(OSError) as info:
        asyncio.run(main())
    assert info.value.errno == errno.ENOSPC
