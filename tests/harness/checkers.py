"""Linearizability checking of client histories (RAFT.md §5). Pure: no I/O, no clocks, no
randomness; the same history always gets the same verdict and the same explanation.

What it owns: the history data model (``Op``, ``HistoryRecorder``), the sequential models a
history is judged against (``Model``, ``KVModel``, ``SetModel``) and the search (``check``).
What it must not do: know anything about Raft or vstore. It judges what clients saw, so the
same checker serves the deterministic simulator (integer logical time) and real-process
fault tests (float ``time.monotonic()`` readings taken in one client process).

A history is linearizable (Herlihy & Wing 1990) when every operation can be given a single
instant between its invocation and its response such that applying the operations in the
order of those instants to a sequential model reproduces every recorded output. An op
that never returned (``complete is None``: timed out, connection lost) may or may not have
taken effect; if it did, its instant is any time after its invocation and its output is
not checked.

The search is Wing & Gong's (1993), with Lowe's memoisation ("Testing for linearizability",
Concurrency and Computation 2017), in the shape of porcupine's ``checkSingle``
(github.com/anishathalye/porcupine):

1. Every op contributes two events, its call and its return, sorted by time into a doubly
   linked list. At equal times calls sort before returns, so ops that merely touch are
   treated as concurrent: the permissive reading, since an integer clock cannot order
   events inside one unit. An op whose outcome is unknown returns at +infinity, after
   every other event.
2. Walk the list from the head. At a call, ask the model whether that op can take effect
   now (its output matches, in the current state). If so, and the pair (set of linearised
   ops, new model state) has never been seen, push (op, old state) on an explicit stack,
   *lift* the op's call and return out of the list and restart from the head. Otherwise try
   the next call.
3. Reaching a return means the op it belongs to must already have taken effect but could
   not: backtrack by popping the stack, *unlifting* that op and trying the call after it.
   An empty stack at a return means no linearisation exists. Reaching the tail, or a return
   at +infinity, means every op that did return has been placed: the history is
   linearizable (ops still unplaced never returned, and are taken not to have happened).

The memo is what makes this fast (Lowe): two different interleavings that reach the same
set of linearised ops *and* the same state have identical futures, so the second is cut.
The set is a Python int used as a bitmask. The stack is a list, not recursion, so
histories of thousands of ops cannot exhaust Python's recursion limit.

P-compositionality (Horn & Kroening 2015, used by porcupine and Knossos): linearizability
is local, so a history over independent objects is linearizable iff each object's
sub-history is. ``Model.partition`` splits the history (by ``Op.key`` unless a model says
otherwise) and each part is searched on its own: the cost becomes a sum, not a product.

Ops that never returned are where WGL checkers blow up: each is concurrent with everything
after its invocation, so the search tries it at every point, in every combination with the
others (Knossos and porcupine both suffer this). Exact reductions keep them cheap; none
changes a verdict, each only cuts search:

* such an op is never *required*: the search does not place one where it would leave the
  state unchanged (leaving it out is always at least as good), and stops once only such
  ops remain;
* ``Model.partition`` may drop the ones that provably cannot matter (a read that never
  returned; a write whose value no read ever saw, see ``KVModel``);
* ``Model.for_partition`` may specialise the model with what the whole partition shows
  (``KVModel`` uses the longest read of an append-only key to fix the order of appends).

The search is still exponential in the worst case (the problem is NP-complete, Gibbons &
Korach 1997), so it stops after ``max_steps`` iterations per partition and says "unknown"
(``CheckResult.ok is None``) rather than run for ever. Low-concurrency histories cost a few
steps per op.

On failure, ``CheckResult.explain()`` prints what porcupine's visualiser shows: the longest
linearisable prefix the search reached, the model state after it, the op whose return came
before it could be placed, and the other ops pending at that point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "CheckResult", "HistoryRecorder", "KVModel", "Model", "Op", "PartitionOutcome", "SetModel", "check",
    "partition_by_key",
]

#: Default per-partition step cap. A low-concurrency partition needs a few steps per op (a
#: step is a few microseconds), so a million is far above any honest history of a few
#: thousand ops, while bounding the exponential worst case to seconds, not hours.
DEFAULT_MAX_STEPS = 1_000_000

#: Outputs a write acknowledges with: kvsm and the simulator answer "ok", a dict-backed fake None.
_ACKS = (None, "ok", True)


# ---- history --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """One client operation as the client saw it.

    ``invoke`` and ``complete`` are readings of one clock (logical or monotonic).
    ``complete is None`` means the call never returned (timeout, connection lost, client
    killed): the op may or may not have taken effect, and if it did its output is unknown.
    ``key`` names the independent object the op touches, for P-compositionality.
    Ops that definitely failed (the server said "no effect") must not be in the history.
    """

    client: int | str
    kind: str
    key: Hashable | None
    input: Any
    output: Any
    invoke: float
    complete: float | None

    @property
    def unknown(self) -> bool:
        """True when the outcome is unknown: the op never returned."""
        return self.complete is None

    def describe(self) -> str:
        """One line: ``client 3 put('x') -> 'ok' [12, 15]``."""
        arg = "" if self.input is None else repr(self.input)
        out = "?" if self.complete is None else repr(self.output)
        end = "never returned" if self.complete is None else f"{self.complete:g}"
        return f"client {self.client} {self.kind}({arg}) -> {out}  [{self.invoke:g}, {end}]"


class HistoryRecorder:
    """Builds a history from invoke/complete events, the way a client harness sees them.

    Each client has at most one op in flight (Jepsen's process model). ``complete`` records
    a return with its output; ``fail`` drops an op that definitely had no effect; ``timeout``
    leaves its outcome unknown and frees the client for its next op (the old request may
    still be in flight, so the two are correctly treated as concurrent). Ops still open when
    ``history()`` is called are unknown too.
    """

    def __init__(self) -> None:
        self._ops: list[Op | None] = []
        self._open: dict[int | str, int] = {}

    def invoke(self, client: int | str, kind: str, key: Hashable | None, input: Any = None, *,
               time: float) -> None:
        if client in self._open:
            raise ValueError(f"client {client!r} invoked {kind} while its previous op is still open")
        self._open[client] = len(self._ops)
        self._ops.append(Op(client, kind, key, input, None, time, None))

    def complete(self, client: int | str, output: Any = None, *, time: float) -> None:
        index = self._take(client)
        op = self._ops[index]
        assert op is not None
        if time < op.invoke:
            raise ValueError(f"client {client!r}: completed at {time} before its invoke at {op.invoke}")
        self._ops[index] = Op(op.client, op.kind, op.key, op.input, output, op.invoke, time)

    def fail(self, client: int | str) -> None:
        self._ops[self._take(client)] = None

    def timeout(self, client: int | str) -> None:
        self._take(client)

    def history(self) -> list[Op]:
        """The ops in invocation order; open or timed-out ones with ``complete=None``."""
        return [op for op in self._ops if op is not None]

    def _take(self, client: int | str) -> int:
        try:
            return self._open.pop(client)
        except KeyError:
            raise ValueError(f"client {client!r} has no op in flight") from None


# ---- models ---------------------------------------------------------------------------------------

def partition_by_key(ops: Iterable[Op]) -> dict[Hashable, list[Op]]:
    """Split a history by ``Op.key``, keeping history order within and first-seen order across."""
    parts: dict[Hashable, list[Op]] = {}
    for op in ops:
        parts.setdefault(op.key, []).append(op)
    return parts


class Model(Protocol):
    """A sequential specification. States must be hashable (they are memoised) and are never
    mutated: ``step`` returns a new one.

    ``step(state, op)`` returns (whether op's recorded output is what applying op in
    ``state`` produces, the state after applying it). For an op with ``complete is None``
    any output must be accepted; only its effect matters. ``step`` is only called on ops of
    one partition.

    The other two have defaults. They make the search cheaper and never change a verdict:

    * ``partition(ops)`` splits a history into independent parts (default: by ``Op.key``;
      a model whose ops span objects, a rename between directories, splits more coarsely).
      It may leave out unknown-outcome ops that provably cannot change the verdict.
    * ``for_partition(ops)`` may return a model specialised to one part, whose ``step``
      rejects, besides what ``step`` rejects, only steps no linearisation of those ops takes.
    """

    def init(self) -> Hashable: ...

    def step(self, state: Any, op: Op) -> tuple[bool, Any]: ...

    def partition(self, ops: Sequence[Op]) -> dict[Hashable, list[Op]]:
        return partition_by_key(ops)

    def for_partition(self, ops: Sequence[Op]) -> Model:
        return self


def _freeze(value: Any) -> Any:
    """Make an output comparable with a state: lists are tuples (msgpack decodes arrays as lists),
    sets frozensets, dicts sorted item tuples."""
    if isinstance(value, (list, tuple)):
        frozen = tuple(value)
        try:
            hash(frozen)   # a hashable tuple needs no per-element work: hash() runs in C
            return frozen
        except TypeError:
            return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _empty(value: Any) -> bool:
    """An absent key reads as None (a register) or () (an accumulator): the same thing."""
    return value is None or (isinstance(value, tuple) and not value)


def _observed(ops: Sequence[Op], reads: frozenset[str]) -> list[Any]:
    return [_freeze(op.output) for op in ops if op.kind in reads and op.complete is not None]


def _maybe_in(value: Any, seen: set[Any]) -> bool:
    """``value in seen``, erring on "yes" for an unhashable value."""
    try:
        return value in seen
    except TypeError:
        return True


def _prune_unknown(ops: list[Op], reads: frozenset[str], unobserved: Callable[[Op], bool]) -> list[Op]:
    """Drop the unknown-outcome ops that provably cannot matter.

    A read that never returned constrains nothing. A write that never returned and whose
    value no read ever saw (``unobserved``) may be taken to have never happened: were it
    linearised anywhere, every later read would show it, so it can only sit after the last
    read, where it changes no output. Left in, each such op is concurrent with every later
    op and the search tries it at every point; dropped, it costs nothing. Both rules are
    exact, not heuristics: the verdict is the same with and without the dropped ops.
    """
    return [op for op in ops
            if op.complete is not None or not (op.kind in reads or unobserved(op))]


class KVModel(Model):
    """One register per key. The state is the value, ``None`` while the key is absent.

    ====================  ========================================  ===========================
    op (``kind``)         ``input``                                 ``output``
    ====================  ========================================  ===========================
    ``put``               the value                                 None / "ok" / True
    ``get`` / ``read``    None                                      the value; None or () when
                                                                    absent
    ``cas``               ``(expected, new)``; expected None =      True if it swapped, else
                          "absent"                                  False
    ``delete``            None                                      None / "ok", or a bool:
                                                                    whether the key existed
    ``append``            a list/tuple (concatenated) or one value  None / "ok" / True
                          (appended as one element)
    ====================  ========================================  ===========================

    ``append`` makes the register an accumulator (the state is a tuple, absent reads as
    ``()``) so that a lost or a doubly-applied write shows in every later read; appending to
    a key holding a non-tuple value is an error the model rejects (or, for an append that
    never returned, takes as not having happened). A ``put`` of a tuple lets one key take
    both. Values are compared after turning lists into tuples, so outputs decoded from
    msgpack compare equal. ``put(None)`` is indistinguishable from ``delete``.

    Every op that never returned is accepted, whatever its output; only its effect counts.
    """

    READS = frozenset({"get", "read"})

    def init(self) -> Hashable:
        return None

    def step(self, state: Any, op: Op) -> tuple[bool, Any]:
        known = op.complete is not None
        kind = op.kind
        if kind in self.READS:
            if not known:
                return True, state
            out = _freeze(op.output)
            return (out == state or (_empty(out) and _empty(state))), state
        if kind == "put":
            return (not known or op.output in _ACKS), _freeze(op.input)
        if kind == "append":
            if state is not None and not isinstance(state, tuple):
                # an op that never returned may simply not have happened
                return not known, state
            return (not known or op.output in _ACKS), (state or ()) + self._elements(op)
        if kind == "cas":
            expected, new = op.input
            swapped = state == _freeze(expected)
            ok = not known or (isinstance(op.output, bool) and op.output == swapped)
            return ok, (_freeze(new) if swapped else state)
        if kind == "delete":
            ok = not known or (op.output == (state is not None) if isinstance(op.output, bool)
                               else op.output in _ACKS)
            return ok, None
        raise ValueError(f"KVModel: unknown op kind {kind!r} in {op.describe()}")

    @staticmethod
    def _elements(op: Op) -> tuple[Any, ...]:
        value = _freeze(op.input)
        return value if isinstance(value, tuple) else (value,)

    def partition(self, ops: Sequence[Op]) -> dict[Hashable, list[Op]]:
        """By key, without the unknown-outcome ops that cannot matter (see ``_prune_unknown``).

        Unknown writes are dropped only where "no read saw it" proves "nothing saw it": in
        a key holding only appends and reads, an append none of whose elements any read
        returned; in a key holding only puts, reads and deletes that answer no bool, a put
        of a value no read returned. A ``cas`` (or a delete answering whether the key
        existed) observes the state without returning it, so keys with those keep every op.
        """
        parts = partition_by_key(ops)
        return {key: self._prune(part) for key, part in parts.items()}

    def _prune(self, ops: list[Op]) -> list[Op]:
        kinds = {op.kind for op in ops}
        outputs = _observed(ops, self.READS)
        seen: set[Any] = set()
        try:
            if kinds <= self.READS | {"append"}:
                for out in outputs:
                    if isinstance(out, tuple):
                        seen.update(out)
                return _prune_unknown(ops, self.READS, lambda op: op.kind == "append" and not any(
                    _maybe_in(e, seen) for e in self._elements(op)))
            if kinds <= self.READS | {"put", "delete"} and not any(
                    op.kind == "delete" and isinstance(op.output, bool) for op in ops):
                seen.update(outputs)
                if any(_empty(out) for out in outputs):
                    seen.update((None, ()))   # both read as "absent": either observes a put of the other
                return _prune_unknown(ops, self.READS, lambda op: op.kind == "put" and not _maybe_in(
                    _freeze(op.input), seen))
        except TypeError:
            pass   # an unhashable value read: keep every unknown write rather than guess
        return _prune_unknown(ops, self.READS, lambda op: False)

    def for_partition(self, ops: Sequence[Op]) -> Model:
        """For a key holding only appends and reads, a model that also requires every state
        to be prefix-comparable with the longest read (see ``_AppendOnlyKV``); else self."""
        if not {op.kind for op in ops} <= self.READS | {"append"}:
            return self
        outputs = [out for out in _observed(ops, self.READS) if isinstance(out, tuple)]
        return _AppendOnlyKV(max(outputs, key=len, default=()))

class _AppendOnlyKV(KVModel):
    """``KVModel`` for a key holding only appends and reads, told the longest read ``witness``.

    The state only grows, so each state is a prefix of every read linearised after it, and
    the read returning ``witness`` is the last read (all others return prefixes of it, or
    the history is not linearizable whatever the search does). So every state of every
    linearisation is prefix-comparable with ``witness``: a prefix of it before that read,
    an extension after. Rejecting other appends is exact, and it is what keeps the search
    polynomial: without it, the order of concurrent appends is only checked at the next
    read, and a run of appends that no read separates is tried in every order (k! states
    that the memo cannot merge, because the states differ). This is the same observation
    Elle's list-append checker is built on (Kingsbury & Alvaro 2020): reads of an
    append-only list reveal the order of the writes.
    """

    def __init__(self, witness: tuple[Any, ...]) -> None:
        self.witness = witness

    def step(self, state: Any, op: Op) -> tuple[bool, Any]:
        ok, new_state = super().step(state, op)
        if ok and op.kind == "append" and isinstance(new_state, tuple):
            # the previous state was comparable (every state got here through this check),
            # so only the newly appended elements need comparing
            lo, hi = len(state or ()), min(len(new_state), len(self.witness))
            if lo < hi and new_state[lo:hi] != self.witness[lo:hi]:
                return False, state
        return ok, new_state


class SetModel(Model):
    """One set per key: ``add(x)`` and ``remove(x)`` acknowledge with None/"ok"/True;
    ``read()`` returns the elements (any iterable; order ignored). The state is a frozenset."""

    READS = frozenset({"read", "get"})

    def init(self) -> Hashable:
        return frozenset()

    def step(self, state: Any, op: Op) -> tuple[bool, Any]:
        known = op.complete is not None
        if op.kind in self.READS:
            return (not known or frozenset(_freeze(v) for v in op.output) == state), state
        if op.kind == "add":
            return (not known or op.output in _ACKS), state | {_freeze(op.input)}
        if op.kind == "remove":
            return (not known or op.output in _ACKS), state - {_freeze(op.input)}
        raise ValueError(f"SetModel: unknown op kind {op.kind!r} in {op.describe()}")

    def partition(self, ops: Sequence[Op]) -> dict[Hashable, list[Op]]:
        """By key, without unknown reads, and without unknown adds of an element no read
        returned (see ``_prune_unknown``; removes are kept: absence is what reads show)."""
        parts = partition_by_key(ops)
        pruned = {}
        for key, part in parts.items():
            seen: set[Any] = set()
            for out in _observed(part, self.READS):
                seen.update(out)
            pruned[key] = _prune_unknown(part, self.READS,
                                         lambda op: op.kind == "add" and not _maybe_in(_freeze(op.input), seen))
        return pruned


# ---- results --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartitionOutcome:
    """The verdict on one partition, and for a failure the deepest dead end the search reached."""

    key: Hashable
    ok: bool | None
    steps: int
    ops: tuple[Op, ...]
    #: the longest linearisable prefix found, in linearisation order
    prefix: tuple[Op, ...] = ()
    #: the model state after ``prefix``
    state: Any = None
    #: the op whose return was reached before it could be placed after ``prefix``
    blocking: Op | None = None
    #: every op invoked before that return and not in ``prefix`` (includes ``blocking``)
    pending: tuple[Op, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """``ok``: True linearizable, False not, None unknown (a partition hit the step cap).
    ``key``: the first partition (in history order) that failed, or else gave up."""

    ok: bool | None
    key: Hashable | None
    partitions: int
    ops: int
    steps: int
    outcome: PartitionOutcome | None = None
    model: Model | None = field(default=None, repr=False, compare=False)

    def explain(self, prefix_ops_max: int = 12) -> str:
        """A human-readable verdict; for a failure, a counterexample: the tail of the longest
        linearisable prefix (at most ``prefix_ops_max`` ops of it), the state after it, and the
        pending ops none of which can take effect next."""
        if self.ok:
            return f"linearizable: {self.ops} ops in {self.partitions} partitions ({self.steps} search steps)"
        out = self.outcome
        assert out is not None
        if self.ok is None:
            return (f"unknown: partition {out.key!r} ({len(out.ops)} ops) was not decided within "
                    f"{out.steps} search steps; raise max_steps or shorten the history")
        lines = [f"not linearizable: partition {out.key!r} ({len(out.ops)} ops, "
                 f"{out.steps} search steps)"]
        shown = out.prefix[-prefix_ops_max:] if prefix_ops_max > 0 else ()
        lines.append(f"longest linearizable prefix found: {len(out.prefix)} of {len(out.ops)} ops"
                     + (f", last {len(shown)} shown:" if len(shown) < len(out.prefix) else ":"))
        first = len(out.prefix) - len(shown) + 1
        lines += [f"  {first + i:4d}. {op.describe()}" for i, op in enumerate(shown)]
        lines.append(f"model state after it: {out.state!r}")
        if out.blocking is not None:
            end = out.blocking.complete
            assert end is not None, "an op that never returned is never required, so never blocks"
            lines.append(f"then this op returned (at {end:g}) but cannot take effect before it:")
            lines.append(f"        {out.blocking.describe()}{self._why(out.blocking)}")
        others = [op for op in out.pending if op is not out.blocking]
        if others:
            lines.append("and no other op pending at that point can take effect next either:")
            lines += [f"        {op.describe()}{self._why(op)}" for op in others]
        return "\n".join(lines)

    def _why(self, op: Op) -> str:
        out = self.outcome
        if self.model is None or out is None:
            return ""
        try:
            accepted, _ = self.model.step(out.state, op)
        except Exception as exc:  # a model error must not hide the counterexample
            return f"   (model raised {exc!r})"
        return "   (output inconsistent with this state)" if not accepted else \
            "   (allowed here, but every continuation fails)"


# ---- the search -----------------------------------------------------------------------------------

def check(history: Iterable[Op], model: Model, *, max_steps: int = DEFAULT_MAX_STEPS) -> CheckResult:
    """Decide whether ``history`` is linearizable with respect to ``model``. Deterministic.

    The history is split with ``model.partition`` and each partition searched independently,
    in first-seen order, stopping at the first that is not linearizable. ``max_steps`` caps
    the search iterations *per partition*; a partition that hits it makes the result unknown
    (``ok is None``) unless a later one fails outright. Raises ValueError on a malformed op
    (a return before its invocation, a non-finite invocation time).
    """
    ops = list(history)
    partition: Callable[[Sequence[Op]], dict[Hashable, list[Op]]] = getattr(
        model, "partition", partition_by_key)
    parts = partition(ops)
    steps = 0
    undecided: PartitionOutcome | None = None
    specialise: Callable[[Sequence[Op]], Model] | None = getattr(model, "for_partition", None)
    for key, part in parts.items():
        outcome = _check_partition(key, part, specialise(part) if specialise else model, max_steps)
        steps += outcome.steps
        if outcome.ok is False:
            return CheckResult(False, key, len(parts), len(ops), steps, outcome, model)
        if outcome.ok is None and undecided is None:
            undecided = outcome
    if undecided is not None:
        return CheckResult(None, undecided.key, len(parts), len(ops), steps, undecided, model)
    return CheckResult(True, None, len(parts), len(ops), steps, None, model)


def _check_partition(key: Hashable, ops: Sequence[Op], model: Model, max_steps: int) -> PartitionOutcome:
    n = len(ops)
    # Events: node 0 is the head sentinel, 1..2n the sorted calls and returns, 2n+1 the tail
    # sentinel, so lift/unlift never test for None. Parallel int lists, not node objects:
    # this loop is the whole cost of a check.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        if not math.isfinite(op.invoke):
            raise ValueError(f"invoke time must be finite: {op.describe()}")
        if op.complete is None:
            end = math.inf
        elif not math.isfinite(op.complete):
            raise ValueError(f"complete time must be finite (None if the op never returned): {op.describe()}")
        elif op.complete < op.invoke:
            raise ValueError(f"op completes before it is invoked: {op.describe()}")
        else:
            end = op.complete
        events.append((op.invoke, 0, i))   # kind 0 = call sorts before 1 = return at equal times
        events.append((end, 1, i))
    events.sort()
    head, tail = 0, 2 * n + 1
    node_op = [-1] * (tail + 1)
    is_call = [False] * (tail + 1)
    match = [0] * (tail + 1)
    call_node = [0] * n
    # optional[i]: op i never returned, so it may be left out. Reaching its return (at
    # +infinity) means only such ops are left: success.
    optional = [op.complete is None for op in ops]
    done = [False] * (tail + 1)
    done[tail] = True
    for pos, (_, kind, i) in enumerate(events, start=1):
        node_op[pos] = i
        if kind == 0:
            is_call[pos] = True
            call_node[i] = pos
        else:
            match[call_node[i]] = pos
            match[pos] = call_node[i]
            done[pos] = optional[i]
    nxt = list(range(1, tail + 2))
    prv = list(range(-1, tail))

    bit = [1 << i for i in range(n)]
    step = model.step
    state: Any = model.init()
    linearized = 0
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []    # (call node lifted, state before it)
    # The dead end reported is the one with the most *returned* ops placed: counting ops
    # that never returned would favour branches that placed them only to fail sooner.
    placed_known = 0
    best_known = -1
    best: tuple[list[int], Any, int] = ([], state, 0)   # (op ids, state, return node reached)
    steps = 0
    entry = nxt[head]
    while True:
        steps += 1
        if steps > max_steps:
            return PartitionOutcome(key, None, steps - 1, tuple(ops))
        if is_call[entry]:
            i = node_op[entry]
            accepted, new_state = step(state, ops[i])
            # An optional op that changes nothing is never worth placing: leaving it out
            # keeps every option placing it here would have.
            if accepted and not (optional[i] and new_state == state):
                new_linearized = linearized | bit[i]
                memo = (new_linearized, new_state)
                if memo not in seen:
                    seen.add(memo)
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_linearized
                    placed_known += not optional[i]
                    # lift: unlink the call and its return
                    ret = match[entry]
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    nxt[prv[ret]] = nxt[ret]
                    prv[nxt[ret]] = prv[ret]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        elif done[entry]:
            return PartitionOutcome(key, True, steps, tuple(ops))
        else:
            # A return: its op should have taken effect by now but could not. Dead end.
            if placed_known > best_known:
                best_known = placed_known
                best = ([node_op[call] for call, _ in stack], state, entry)
            if not stack:
                break
            call, state = stack.pop()
            i = node_op[call]
            linearized &= ~bit[i]
            placed_known -= not optional[i]
            # unlift: relink the return, then the call (reverse order of lifting)
            ret = match[call]
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
            nxt[prv[call]] = call
            prv[nxt[call]] = call
            entry = nxt[call]

    # Rebuild the list as it stood at the deepest dead end, to name the ops pending there.
    prefix_ids, dead_state, dead_return = best
    placed = set(prefix_ids)
    pending = tuple(ops[node_op[pos]] for pos in range(1, dead_return)
                    if is_call[pos] and node_op[pos] not in placed)
    return PartitionOutcome(key, False, steps, tuple(ops), prefix=tuple(ops[i] for i in prefix_ids),
                            state=dead_state, blocking=ops[node_op[dead_return]], pending=pending)
