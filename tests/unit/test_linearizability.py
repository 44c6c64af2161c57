"""The linearizability checker (tests/harness/checkers.py, RAFT.md §5) judged on histories
whose verdict is known: hand-written good and bad ones (the stale read, the lost
acknowledged write and the duplicate application that Jepsen finds in fresh Raft
implementations), ops whose outcome is unknown, P-compositionality, the step cap and the
counterexample text. Then properties: any history made by really executing ops one at a
time, inside random overlapping intervals, is linearizable, and stops being so when one
read is made to return a value never written; on small histories, right or wrong, the
verdict equals the definition enumerated by brute force. Last, histories of thousands of
ops from busy clients are decided (no timing is asserted).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.checkers import CheckResult, HistoryRecorder, KVModel, Op, SetModel, check

NEVER_WRITTEN = "never-written"


def op(client: int, kind: str, input: Any, output: Any, invoke: float, complete: float | None,
       key: str = "x") -> Op:
    return Op(client=client, kind=kind, key=key, input=input, output=output, invoke=invoke, complete=complete)


def kv(*ops: Op, **kwargs: Any) -> CheckResult:
    return check(list(ops), KVModel(), **kwargs)


# ---- known good ----------------------------------------------------------------------------------

def test_a_sequential_history_is_linearizable() -> None:
    result = kv(op(1, "put", "a", "ok", 0, 1), op(1, "get", None, "a", 2, 3),
                op(2, "cas", ("a", "b"), True, 4, 5), op(2, "get", None, "b", 6, 7),
                op(1, "delete", None, None, 8, 9), op(1, "get", None, None, 10, 11))
    assert result.ok is True
    assert result.explain().startswith("linearizable")


def test_an_empty_history_is_linearizable() -> None:
    assert kv().ok is True


@pytest.mark.parametrize("seen", ["a", "b"])
def test_a_read_overlapping_two_concurrent_writes_may_see_either(seen: str) -> None:
    assert kv(op(1, "put", "a", "ok", 0, 10), op(2, "put", "b", "ok", 1, 9),
              op(3, "get", None, seen, 2, 12)).ok is True


def test_reads_after_concurrent_writes_agree_on_one_winner_in_either_order() -> None:
    writes = (op(1, "put", "a", "ok", 0, 10), op(2, "put", "b", "ok", 1, 9))
    assert kv(*writes, op(3, "get", None, "a", 11, 12), op(3, "get", None, "a", 13, 14)).ok is True
    assert kv(*writes, op(3, "get", None, "b", 11, 12), op(3, "get", None, "b", 13, 14)).ok is True


def test_a_cas_race_with_exactly_one_winner_is_linearizable() -> None:
    result = kv(op(1, "cas", (None, "a"), True, 0, 10), op(2, "cas", (None, "b"), False, 1, 9),
                op(3, "get", None, "a", 11, 12))
    assert result.ok is True


def test_a_cas_race_with_two_winners_is_not_linearizable() -> None:
    result = kv(op(1, "cas", (None, "a"), True, 0, 10), op(2, "cas", (None, "b"), True, 1, 9))
    assert result.ok is False


def test_a_read_invoked_at_the_instant_a_write_returned_may_still_see_the_old_value() -> None:
    """Equal times count as concurrent (calls sort before returns): the simulator's integer
    clock cannot order two events inside one unit, so the checker must not pretend to."""
    assert kv(op(1, "put", "a", "ok", 0, 1), op(1, "put", "b", "ok", 2, 5),
              op(2, "get", None, "a", 5, 6)).ok is True


def test_outputs_decoded_as_lists_compare_equal_to_tuple_states() -> None:
    result = kv(op(1, "append", [1, 2], "ok", 0, 1), op(1, "append", 3, "ok", 2, 3),
                op(2, "read", None, [1, 2, 3], 4, 5))
    assert result.ok is True


def test_a_key_never_written_reads_as_none_or_as_an_empty_accumulator() -> None:
    assert kv(op(1, "get", None, None, 0, 1), op(2, "read", None, (), 2, 3)).ok is True


# ---- known bad -----------------------------------------------------------------------------------

def test_a_stale_read_after_a_completed_write_is_not_linearizable() -> None:
    result = kv(op(1, "put", "old", "ok", 0, 1), op(1, "put", "new", "ok", 2, 3),
                op(2, "get", None, "old", 4, 5))
    assert result.ok is False
    assert result.key == "x"


def test_a_lost_acknowledged_append_is_not_linearizable() -> None:
    result = kv(op(1, "append", 1, "ok", 0, 1), op(2, "append", 2, "ok", 2, 3),
                op(3, "read", None, (1,), 4, 5), op(3, "read", None, (1,), 6, 7))
    assert result.ok is False


def test_an_append_applied_twice_is_not_linearizable() -> None:
    result = kv(op(1, "append", 1, "ok", 0, 1), op(2, "append", 2, "ok", 0, 3),
                op(3, "read", None, (1, 2, 1), 4, 5))
    assert result.ok is False


def test_an_unacknowledged_append_applied_twice_is_not_linearizable_either() -> None:
    result = kv(op(1, "append", 1, None, 0, None), op(3, "read", None, (1, 1), 4, 5))
    assert result.ok is False


def test_a_read_of_a_value_never_written_is_not_linearizable() -> None:
    result = kv(op(1, "put", "a", "ok", 0, 3), op(2, "get", None, "z", 1, 2))
    assert result.ok is False


def test_a_read_cannot_see_a_write_invoked_after_it_returned() -> None:
    result = kv(op(2, "get", None, "a", 0, 1), op(1, "put", "a", "ok", 2, 3))
    assert result.ok is False


def test_the_explanation_names_the_prefix_the_state_and_the_op_that_cannot_be_placed() -> None:
    result = kv(op(1, "put", "old", "ok", 0, 1), op(1, "put", "new", "ok", 2, 3),
                op(2, "get", None, "old", 4, 5))
    text = result.explain()
    assert "not linearizable: partition 'x'" in text
    assert "longest linearizable prefix found: 2 of 3 ops" in text
    assert "client 1 put('new') -> 'ok'  [2, 3]" in text
    assert "model state after it: 'new'" in text
    assert "client 2 get() -> 'old'  [4, 5]   (output inconsistent with this state)" in text
    assert result.outcome is not None and result.outcome.blocking == op(2, "get", None, "old", 4, 5)


def test_the_explanation_lists_the_other_pending_ops_that_could_not_be_placed() -> None:
    result = kv(op(1, "put", "a", "ok", 0, 1), op(2, "get", None, "z", 2, 10),
                op(3, "get", None, "y", 3, 4))
    text = result.explain()
    assert result.ok is False
    assert "longest linearizable prefix found: 1 of 3 ops" in text
    assert "then this op returned (at 4) but cannot take effect before it:\n" \
           "        client 3 get() -> 'y'  [3, 4]   (output inconsistent with this state)" in text
    assert "no other op pending at that point can take effect next either:\n" \
           "        client 2 get() -> 'z'  [2, 10]   (output inconsistent with this state)" in text


# ---- unknown outcomes ----------------------------------------------------------------------------

def test_an_unknown_outcome_write_that_took_effect_is_accepted() -> None:
    assert kv(op(1, "put", "a", "ok", 0, 1), op(2, "put", "b", None, 2, None),
              op(3, "get", None, "b", 10, 11), op(3, "get", None, "b", 12, 13)).ok is True


def test_an_unknown_outcome_write_that_never_took_effect_is_accepted() -> None:
    assert kv(op(1, "put", "a", "ok", 0, 1), op(2, "put", "b", None, 2, None),
              op(3, "get", None, "a", 10, 11), op(3, "get", None, "a", 12, 13)).ok is True


def test_an_unknown_outcome_write_may_take_effect_long_after_its_client_gave_up() -> None:
    assert kv(op(2, "append", 7, None, 0, None), op(3, "read", None, (), 10, 11),
              op(3, "read", None, (7,), 500, 501)).ok is True


def test_an_unknown_outcome_write_cannot_take_effect_before_it_was_invoked() -> None:
    assert kv(op(3, "get", None, "b", 0, 1), op(2, "put", "b", None, 2, None)).ok is False


def test_an_unknown_outcome_write_cannot_be_seen_then_unseen() -> None:
    assert kv(op(1, "put", "a", "ok", 0, 1), op(2, "put", "b", None, 2, None),
              op(3, "get", None, "b", 10, 11), op(3, "get", None, "a", 12, 13)).ok is False


def test_an_unknown_outcome_cas_is_accepted_whether_or_not_it_swapped() -> None:
    base = (op(1, "put", "a", "ok", 0, 1), op(2, "cas", ("a", "b"), None, 2, None))
    assert kv(*base, op(3, "get", None, "b", 10, 11)).ok is True
    assert kv(*base, op(3, "get", None, "a", 10, 11)).ok is True


def test_an_unknown_outcome_append_cannot_be_seen_before_an_earlier_one_that_reads_show_after_it() -> None:
    # append(2) never returned, but a read that returned at 4 saw it after a 1 that was
    # only appended from 5 on.
    result = kv(op(2, "append", 2, None, 0, None), op(3, "read", None, (1, 2), 3, 4),
                op(1, "append", 1, "ok", 5, 6))
    assert result.ok is False
    assert "then this op returned (at 4) but cannot take effect before it:\n" \
           "        client 3 read() -> (1, 2)  [3, 4]" in result.explain()


def test_many_unknown_outcome_reads_cost_nothing() -> None:
    ops = [op(9, "get", None, None, t, None) for t in range(0, 200)]
    ops += [op(1, "put", t, "ok", t, t + 1) for t in range(0, 200)]
    result = kv(*ops, max_steps=2_000)
    assert result.ok is True


@pytest.mark.parametrize("kind", ["append", "put"])
def test_many_unknown_outcome_writes_that_no_read_saw_cost_nothing(kind: str) -> None:
    ops = [op(9, kind, -t - 1, None, t, None) for t in range(0, 300)]
    ops += [op(1, kind, t, "ok", 3 * t, 3 * t + 1) for t in range(0, 300)]
    ops += [op(2, "read", None, tuple(range(t + 1)) if kind == "append" else t, 3 * t + 2, 3 * t + 3)
            for t in range(0, 300)]
    result = kv(*ops, max_steps=5_000)
    assert result.ok is True


def test_many_unknown_outcome_appends_that_reads_saw_are_placed_without_blowing_up() -> None:
    # every client gives up on every append, and each append lands a little later
    ops = [op(c, "append", t * 10 + c, None, t * 10, None) for t in range(100) for c in range(5)]
    ops += [op(9, "read", None, tuple(u * 10 + c for u in range(t) for c in range(5)), t * 10 - 1, t * 10)
            for t in range(1, 100)]
    result = kv(*ops, max_steps=50_000)
    assert result.ok is True


# ---- P-compositionality and limits -------------------------------------------------------------

def test_a_violation_in_one_key_is_reported_with_that_key_and_other_keys_pass() -> None:
    history = [op(1, "put", "a", "ok", 0, 1, key="k1"), op(2, "get", None, "a", 2, 3, key="k1"),
               op(1, "put", "old", "ok", 0, 1, key="k2"), op(1, "put", "new", "ok", 2, 3, key="k2"),
               op(2, "get", None, "old", 4, 5, key="k2"),
               op(3, "append", 1, "ok", 0, 1, key="k3"), op(3, "read", None, (1,), 2, 3, key="k3")]
    result = check(history, KVModel())
    assert result.ok is False
    assert result.key == "k2"
    assert result.partitions == 3
    assert "partition 'k2'" in result.explain()
    assert check([o for o in history if o.key != "k2"], KVModel()).ok is True


def test_a_history_is_split_so_ops_on_other_keys_do_not_constrain_each_other() -> None:
    # Linearizable per key, though no single order over both keys exists if they were
    # one object: each read sees the other key's write "not yet".
    history = [op(1, "put", 1, "ok", 0, 10, key="a"), op(1, "get", None, None, 0, 10, key="b"),
               op(2, "put", 1, "ok", 0, 10, key="b"), op(2, "get", None, None, 0, 10, key="a")]
    assert check(history, KVModel()).ok is True


def test_the_step_cap_returns_unknown_rather_than_a_verdict() -> None:
    # Six concurrent appends and an impossible read, and a put so that the append-only
    # pruning does not apply: every order of every subset is a distinct state, thousands
    # of steps to refute, far more than the cap.
    history = [op(0, "put", (), "ok", -2, -1)] + [op(c, "append", c, "ok", 0, 100) for c in range(6)]
    history.append(op(99, "read", None, tuple(range(7)), 101, 102))
    result = kv(*history, max_steps=50)
    assert result.ok is None
    assert result.key == "x"
    assert result.explain().startswith("unknown: partition 'x'")
    assert kv(*history).ok is False


def test_a_failing_key_outranks_an_undecided_one() -> None:
    undecided = [op(c, "append", c, "ok", 0, 100, key="u") for c in range(12)]
    undecided.append(op(99, "read", None, tuple(range(13)), 101, 102, key="u"))
    bad = [op(1, "get", None, "z", 0, 1, key="bad")]
    result = check(undecided + bad, KVModel(), max_steps=50)
    assert result.ok is False and result.key == "bad"


def test_a_long_sequential_history_needs_no_recursion() -> None:
    history = []
    for i in range(5_000):
        history.append(op(1, "append", i, "ok", 4 * i, 4 * i + 1))
        if i % 500 == 0:
            history.append(op(2, "read", None, tuple(range(i + 1)), 4 * i + 2, 4 * i + 3))
    assert kv(*history).ok is True


def test_malformed_ops_are_rejected_loudly() -> None:
    with pytest.raises(ValueError, match="completes before it is invoked"):
        kv(op(1, "put", "a", "ok", 5, 4))
    with pytest.raises(ValueError, match="unknown op kind"):
        kv(op(1, "frobnicate", "a", "ok", 0, 1))


# ---- the history recorder and the set model ----------------------------------------------------

def test_the_recorder_builds_ops_and_leaves_timed_out_and_open_ones_unknown() -> None:
    rec = HistoryRecorder()
    rec.invoke(1, "put", "x", "a", time=0)
    rec.complete(1, "ok", time=1)
    rec.invoke(2, "put", "x", "b", time=2)
    rec.timeout(2)
    rec.invoke(2, "put", "x", "c", time=3)
    rec.fail(2)
    rec.invoke(3, "get", "x", time=4)
    rec.complete(3, "b", time=5)
    rec.invoke(1, "put", "x", "d", time=6)
    with pytest.raises(ValueError, match="still open"):
        rec.invoke(1, "get", "x", time=7)
    history = rec.history()
    assert history == [op(1, "put", "a", "ok", 0, 1), op(2, "put", "b", None, 2, None),
                       op(3, "get", None, "b", 4, 5), op(1, "put", "d", None, 6, None)]
    assert check(history, KVModel()).ok is True


def test_the_set_model_sees_a_lost_add() -> None:
    base = [op(1, "add", 1, "ok", 0, 1), op(2, "add", 2, "ok", 0, 2), op(1, "remove", 1, "ok", 3, 4)]
    assert check(base + [op(3, "read", None, [2], 5, 6)], SetModel()).ok is True
    assert check(base + [op(3, "read", None, [], 5, 6)], SetModel()).ok is False


# ---- property: really executed histories are linearizable ---------------------------------------

REGISTER_KEYS = ("r0", "r1")
ACCUMULATOR_KEYS = ("l0",)


@dataclass(frozen=True)
class Planned:
    """One op to run: who, where, what, and when relative to its client's previous op."""

    client: int
    key: str
    choice: int          # which kind, among the key's kinds
    gap: int             # idle time before the invoke
    duration: int        # invoke -> complete
    lin_offset: int      # where in [invoke, complete] it takes effect
    unknown: bool        # the client never learns the outcome
    took_effect: bool    # for unknown ops: whether it happened at all


def _execute(plans: list[Planned], accumulator_keys: tuple[str, ...] = ACCUMULATOR_KEYS) -> list[Op]:
    """Run the planned ops one at a time against a dict, in order of their linearisation
    points, recording what a client would have seen; each op's interval contains its point."""
    cursor: dict[int, int] = defaultdict(int)
    timed = []
    for index, p in enumerate(plans):
        invoke = cursor[p.client] + p.gap
        complete = invoke + p.duration
        cursor[p.client] = complete
        timed.append((invoke + min(p.lin_offset, p.duration), index, invoke, complete))
    timed.sort()
    store: dict[str, Any] = {}
    ops: list[Op | None] = [None] * len(plans)
    for _, index, invoke, complete in timed:
        p = plans[index]
        value = 1000 + index   # every written value is distinct
        effect = not p.unknown or p.took_effect
        if p.key in accumulator_keys:
            kind = ("append", "read")[p.choice % 2]
        else:
            kind = ("put", "get", "cas", "delete")[p.choice % 4]
        input: Any = None
        if kind == "append":
            input = value
            if effect:
                store[p.key] = store.get(p.key, ()) + (value,)
            output: Any = "ok"
        elif kind == "read":
            output = store.get(p.key, ())
        elif kind == "put":
            input = value
            if effect:
                store[p.key] = value
            output = "ok"
        elif kind == "get":
            output = store.get(p.key)
        elif kind == "cas":
            expected = store.get(p.key) if p.choice % 8 < 4 else -1
            input = (expected, value)
            output = store.get(p.key) == expected
            if output and effect:
                store[p.key] = value
        else:
            if effect:
                store.pop(p.key, None)
            output = None
        if p.unknown:
            ops[index] = Op(p.client, kind, p.key, input, None, invoke, None)
        else:
            ops[index] = Op(p.client, kind, p.key, input, output, invoke, complete)
    assert all(o is not None for o in ops)
    return [o for o in ops if o is not None]


planned = st.builds(
    Planned, client=st.integers(0, 3), key=st.sampled_from(REGISTER_KEYS + ACCUMULATOR_KEYS),
    choice=st.integers(0, 7), gap=st.integers(0, 4), duration=st.integers(0, 15),
    lin_offset=st.integers(0, 15), unknown=st.integers(0, 9).map(lambda n: n == 0), took_effect=st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(planned, max_size=40))
def test_any_history_of_really_executed_ops_is_linearizable(plans: list[Planned]) -> None:
    history = _execute(plans)
    result = check(history, KVModel())
    assert result.ok is True, result.explain()


@settings(max_examples=200, deadline=None)
@given(st.lists(planned, max_size=40), st.integers(min_value=0))
def test_a_read_of_a_value_never_written_makes_any_executed_history_fail(plans: list[Planned],
                                                                         pick: int) -> None:
    history = _execute(plans)
    reads = [i for i, o in enumerate(history) if o.kind in ("get", "read") and o.complete is not None]
    if not reads:
        end = max((o.complete or o.invoke for o in history), default=0) + 1
        history.append(Op(9, "get", "r0", None, None, end, end + 1))
        reads = [len(history) - 1]
    victim = reads[pick % len(reads)]
    o = history[victim]
    history[victim] = Op(o.client, o.kind, o.key, o.input, NEVER_WRITTEN, o.invoke, o.complete)
    result = check(history, KVModel())
    assert result.ok is False
    assert result.key == o.key
    assert result.explain().startswith(f"not linearizable: partition {o.key!r}")


def _brute_force_linearizable(history: list[Op]) -> bool:
    """The definition, enumerated: some subset of the ops that never returned, together with
    every op that did, has an order that respects real time and that KVModel accepts."""
    model = KVModel()
    known = [o for o in history if o.complete is not None]
    unknown = [o for o in history if o.complete is None]
    for mask in range(1 << len(unknown)):
        chosen = known + [o for b, o in enumerate(unknown) if mask >> b & 1]
        for order in itertools.permutations(chosen):
            # a precedes b in real time when a returned strictly before b was invoked
            if any(b.complete is not None and b.complete < a.invoke
                   for x, a in enumerate(order) for b in order[x + 1:]):
                continue
            state: Any = model.init()
            for o in order:
                ok, state = model.step(state, o)
                if not ok:
                    break
            else:
                return True
    return False


def _plausible_wrong_output(history: list[Op], index: int, choice: int) -> Op:
    """Op ``index`` with an output a buggy store might give: a read of some value written
    in the history (or nothing), an accumulator read of some subsequence of the appends,
    a cas with its verdict flipped."""
    o = history[index]
    if o.kind == "get":
        written = [None] + [w.input if w.kind == "put" else w.input[1]
                            for w in history if w.kind in ("put", "cas")]
        return dataclasses.replace(o, output=written[choice % len(written)])
    if o.kind == "read":
        appended = [w.input for w in history if w.kind == "append"]
        return dataclasses.replace(o, output=tuple(v for b, v in enumerate(appended) if choice >> b & 1))
    if o.kind == "cas" and o.complete is not None:
        return dataclasses.replace(o, output=not o.output)
    return o


@settings(max_examples=300, deadline=None)
@given(st.lists(planned.filter(lambda p: p.key in ("r0", "l0")), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 5), st.integers(0, 63)), max_size=3))
def test_the_search_agrees_with_brute_force_on_small_histories_right_or_wrong(
        plans: list[Planned], mutations: list[tuple[int, int]]) -> None:
    """Executed histories with up to three outputs replaced by plausible wrong ones (about
    one in five is then not linearizable), judged against the definition enumerated: every
    reduction in the checker must keep the verdict."""
    history = _execute([dataclasses.replace(p, key=plans[0].key) for p in plans])
    for index, choice in mutations:
        index %= len(history)
        history[index] = _plausible_wrong_output(history, index, choice)
    assert check(history, KVModel()).ok is _brute_force_linearizable(history)


@pytest.mark.timeout(60)
def test_two_thousand_appends_and_reads_on_one_key_from_five_busy_clients_are_decided() -> None:
    """Five clients always in flight on one append-only key: without the longest-read
    pruning the order of appends no read separates is tried in every permutation, and the
    search gives up; with it the check is a few steps per op."""
    rng = random.Random(7)
    plans = [Planned(client=rng.randrange(5), key="l0", choice=rng.randrange(8), gap=rng.randrange(3),
                     duration=rng.randrange(1, 20), lin_offset=rng.randrange(20),
                     unknown=rng.random() < 0.02, took_effect=rng.random() < 0.5)
             for _ in range(2_000)]
    history = _execute(plans)
    result = check(history, KVModel())
    assert result.ok is True, result.explain()
    reads = [i for i, o in enumerate(history) if o.kind == "read" and o.complete is not None]
    victim = history[reads[len(reads) // 2]]
    lost = victim.output[len(victim.output) // 2]
    without = [Op(o.client, o.kind, o.key, o.input, tuple(e for e in o.output if e != lost), o.invoke, o.complete)
               if o.kind == "read" and o.complete is not None else o for o in history]
    assert check(without, KVModel()).ok is False


@pytest.mark.timeout(60)
def test_two_thousand_ops_over_ten_keys_from_five_clients_are_checked() -> None:
    rng = random.Random(20240601)
    keys = [f"r{i}" for i in range(5)] + [f"l{i}" for i in range(5)]
    plans = [Planned(client=rng.randrange(5), key=rng.choice(keys), choice=rng.randrange(8),
                     gap=rng.randrange(3), duration=rng.randrange(1, 20), lin_offset=rng.randrange(20),
                     unknown=rng.random() < 0.01, took_effect=rng.random() < 0.5)
             for _ in range(2_000)]
    history = _execute(plans, accumulator_keys=tuple(k for k in keys if k.startswith("l")))
    result = check(history, KVModel())
    assert result.ok is True, result.explain()
    assert result.partitions == 10
