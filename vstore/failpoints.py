"""Failpoints: named places in the MDS and chunkserver code where a test injects a crash, a
disk error or a delay (RELIABILITY.md §7 and §8, level L0), in the style of FreeBSD's fail(9)
and etcd's gofail.

Off unless BOTH are true: the process has ``VSTORE_FAILPOINTS`` in its environment, and the
node's config says ``[node] failpoints = true``. A node whose environment has the variable
but whose config does not allow failpoints refuses to start (``configure`` raises
UsageError: exit 2), so a production config can never run with injected failures, even if
someone exports the variable by mistake. A config that allows them, with no variable set,
runs exactly as production does.

What it owns: the table of points (``POINTS``: the names are the contract with the tests),
the spec grammar and its parser, the evaluation of a point's terms, and the three actions.
What it must not do: import anything from vstore but ``errors``, or cost more than one dict
lookup at a site when nothing is enabled. Measured here with nothing enabled: ``failpoint``
70 ns a call (an empty function call is 55 ns), ``await afailpoint`` 170 ns (an empty
coroutine 125 ns); the work beside them is a 64 KiB ChunkStore read or write (130-260 µs)
or a Raft Ready with its fsync (200 µs and more): well under 0.1 %.

Spec grammar (``VSTORE_FAILPOINTS``)::

    spec    := entry ( ";" entry )*            empty entries are ignored
    entry   := POINT "=" terms                 each point at most once
    terms   := term ( "->" term )*
    term    := [ PERCENT "%" ] [ COUNT "*" ] action
    action  := "off" | "panic" | "error(" ERRNO ")" | "sleep(" MS ")"

    e.g.  raft.before_persist=panic;cs.fsync=2*error(EIO);cs.write=sleep(200)
          raft.before_persist=40*off->1*panic      pass 40 times, then crash once
          cs.read=10%error(EIO)                    fail one read in ten, at random

* ``off``: do nothing (with a count, it lets that many hits pass: the way to fire later).
* ``panic``: log ERROR ``failpoint.panic`` naming the point, flush the logs, and end the
  process with ``os._exit(FAILPOINT_EXIT_CODE)`` (86): no cleanup, no atexit, like a crash.
  What the process had not made durable is lost as in a kill -9 (the page cache survives,
  as it does when a process, not the machine, dies).
* ``error(ERRNO)``: raise ``OSError(ERRNO)`` (a name from ``errno``: EIO, ENOSPC, ...) at
  the site, where the OS call it stands before would have raised it.
* ``sleep(MS)``: wait MS milliseconds, 0 to 600 000 (ten minutes: longer than any deadline
  in vstore, so a bigger number is a unit mistake). ``failpoint`` blocks its thread (sites
  on disk threads: a slow disk exactly); ``afailpoint`` sleeps without blocking the loop.

Evaluation of one hit (FreeBSD's rule): the terms are tried in order; a term whose count is
used up is skipped; a term with PERCENT is taken with that probability, and when not taken
the next term is tried; the first term taken acts, and uses one of its count. When no term
is taken the hit does nothing. Probabilities come from one ``random.Random`` per point,
seeded from ``VSTORE_FAILPOINTS_SEED`` (default 0) and the point's name, so a run's
sequence of outcomes at each point is reproducible, whatever happens at the other points.

The points (``POINTS``) and what a test can prove with each:

==============================  ====  =============================================================
point                           role  where it sits; what a test proves with it
==============================  ====  =============================================================
raft.before_persist             mds   Raft shell's writer thread, before a Ready's snapshot marker,
                                      entries and hard state are written to the log store (one LMDB
                                      transaction, whose commit is the fsync: the log store has no
                                      separate fsync step, so there is no raft.before_log_fsync).
                                      panic: a crash with the entries not durable loses no
                                      acknowledged operation (F1). error(EIO): a failed log write
                                      stops the MDS (FatalStorageError, exit 1; F14). sleep: a slow
                                      log disk causes no election storm (F13).
raft.after_persist_before_send  mds   Raft shell, after the persist, before the Ready's messages go
                                      out (a leader's appends may have gone out before its own
                                      write: docs/raft.md). panic: a crash with entries durable
                                      but votes and acks unsent (F1).
raft.before_apply               mds   Raft shell, before committed entries go to the state machine.
                                      panic: committed but not applied here; the restart applies
                                      them from the log.
apply.before_txn_commit         mds   State machine, inside the apply transaction after every
                                      effect, the applied index and the state hash are written,
                                      before the commit. panic: nothing is half-applied (the
                                      replica restarts at the old applied index and reaches the
                                      same state hash as its peers; F1, F10). error(EIO): a failed
                                      apply stops the MDS (exit 1).
cs.write                        cs    Chunk store's disk thread, before the pwrites of a replica
                                      write (data blocks, checksum slots, header; also the header
                                      write of a version change). error(EIO): the replica is
                                      marked BAD_IO and the writer repairs the chain without it
                                      (F14); error(ENOSPC): a disk that fills mid-write (F9).
cs.fsync                        cs    Chunk store's disk thread, before every fsync of a replica
                                      file (client fsync, version change, completing a copy,
                                      truncate). error(EIO): the fsyncgate rule: the replica is
                                      marked BAD_IO for good, the fsync fails and no later one on
                                      it succeeds; the writer drops it (F14). sleep: a slow disk
                                      slows writes without errors or a failed chunkserver (F13).
cs.read                         cs    Chunk store's disk thread, before a replica's blocks and
                                      checksum slots are read (client reads, verification and
                                      scrub, the old blocks of a partial-block write). error(EIO):
                                      the replica is marked BAD_IO and the client reads another
                                      replica (F14).
==============================  ====  =============================================================

Thread safety: points fire from the event loop and from disk threads at once; a point's
counts and random stream change under a lock (only when enabled).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from vstore.errors import UsageError

log = logging.getLogger(__name__)

#: The environment variable that holds the spec.
ENV_VAR = "VSTORE_FAILPOINTS"
#: The environment variable that seeds the PERCENT draws (an integer; default 0).
SEED_ENV_VAR = "VSTORE_FAILPOINTS_SEED"
#: The exit status of a ``panic``: distinct from 0/1/2 (vstore's own), from 128+N (signals)
#: and from Python's 120 (failed cleanup), so a test knows the failpoint, not a bug, ended it.
FAILPOINT_EXIT_CODE = 86
#: The longest sleep a spec may ask for (see the module docstring).
SLEEP_MS_MAX = 600_000

Role = Literal["mds", "cs"]

#: name -> the role whose process has the site. The module docstring says what each proves.
POINTS: dict[str, Role] = {
    "raft.before_persist": "mds",
    "raft.after_persist_before_send": "mds",
    "raft.before_apply": "mds",
    "apply.before_txn_commit": "mds",
    "cs.write": "cs",
    "cs.fsync": "cs",
    "cs.read": "cs",
}

Action = Literal["off", "panic", "error", "sleep"]


class FailpointSpecError(ValueError):
    """A spec that does not parse, or names a point that does not exist."""


# ---- the spec (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One term of a point's spec. ``arg``: the errno number for ``error``, milliseconds
    for ``sleep``. ``count`` None: no limit. ``percent`` None: always taken."""

    action: Action
    arg: int = 0
    count: int | None = None
    percent: float | None = None

    def __str__(self) -> str:
        prefix = (f"{self.percent:g}%" if self.percent is not None else "") + \
                 (f"{self.count}*" if self.count is not None else "")
        if self.action == "error":
            return f"{prefix}error({errno.errorcode[self.arg]})"
        if self.action == "sleep":
            return f"{prefix}sleep({self.arg})"
        return prefix + self.action


_ACTION = re.compile(r"(off|panic|error|sleep)(?:\((.*)\))?")
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)%")
_COUNT = re.compile(r"(\d+)\*")
_ERRNO_NAMES = {name: code for code, name in errno.errorcode.items()}


def parse_spec(text: str) -> dict[str, tuple[Term, ...]]:
    """Parse a ``VSTORE_FAILPOINTS`` value (grammar in the module docstring) into point name
    -> its terms. Pure and deterministic. Raises FailpointSpecError naming the bad part;
    an unknown point's error lists the known ones."""
    points: dict[str, tuple[Term, ...]] = {}
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        name, eq, terms = (part.strip() for part in entry.partition("="))
        if not eq or not name:
            raise FailpointSpecError(f"{entry!r}: expected POINT=ACTION, e.g. cs.fsync=error(EIO)")
        if name not in POINTS:
            raise FailpointSpecError(f"unknown failpoint {name!r} (known: {', '.join(POINTS)})")
        if name in points:
            raise FailpointSpecError(f"failpoint {name} is given twice")
        points[name] = tuple(_parse_term(name, t.strip()) for t in terms.split("->"))
    return points


def _parse_term(name: str, text: str) -> Term:
    where = f"failpoint {name}: {text!r}"
    rest = text
    percent = count = None
    if m := _PERCENT.match(rest):
        percent = float(m.group(1))
        if not 0 < percent <= 100:
            raise FailpointSpecError(f"{where}: a percentage must be in (0, 100]")
        rest = rest[m.end():].lstrip()
    if m := _COUNT.match(rest):
        count = int(m.group(1))
        if count < 1:
            raise FailpointSpecError(f"{where}: a count must be at least 1")
        rest = rest[m.end():].lstrip()
    m = _ACTION.fullmatch(rest)
    if m is None:
        raise FailpointSpecError(f"{where}: expected [P%][N*]off|panic|error(ERRNO)|sleep(MS)")
    action, arg_text = m.group(1), m.group(2)
    arg = 0
    if action == "error":
        code = _ERRNO_NAMES.get((arg_text or "").strip())
        if code is None:
            raise FailpointSpecError(f"{where}: error() takes an errno name such as EIO or ENOSPC")
        arg = code
    elif action == "sleep":
        ms = (arg_text or "").strip()
        if not ms.isdigit() or int(ms) > SLEEP_MS_MAX:
            raise FailpointSpecError(f"{where}: sleep() takes whole milliseconds, 0 to {SLEEP_MS_MAX}")
        arg = int(ms)
    elif arg_text is not None:
        raise FailpointSpecError(f"{where}: {action} takes no argument")
    return Term(action, arg, count, percent)  # type: ignore[arg-type]


class PointState:
    """The evaluation of one point's terms, hit by hit: what is left of each count, and the
    point's own random stream. Deterministic for a given ``rng``; not thread-safe by itself
    (the module's site functions hold its ``lock``)."""

    def __init__(self, name: str, terms: tuple[Term, ...], rng: random.Random) -> None:
        self.name = name
        self.terms = terms
        self.left = [t.count for t in terms]
        self.rng = rng
        self.hits = 0
        self.fired = 0
        self.lock = threading.Lock()

    def evaluate(self) -> Term | None:
        """The term this hit takes (None: nothing happens). Uses one of its count."""
        self.hits += 1
        for i, term in enumerate(self.terms):
            left = self.left[i]
            if left == 0:
                continue
            if term.percent is not None and self.rng.random() * 100 >= term.percent:
                continue
            if left is not None:
                self.left[i] = left - 1
            if term.action == "off":
                return None
            self.fired += 1
            return term
        return None


def point_rng(seed: int, name: str) -> random.Random:
    """A point's random stream: a str seed is hashed with SHA-512 by ``random``, so the
    stream is the same in every process whatever PYTHONHASHSEED is."""
    return random.Random(f"{seed}:{name}")


# ---- the registry (process-wide) ---------------------------------------------------------------

#: The enabled points. Empty in production: the whole cost of a site is one failed lookup.
_points: dict[str, PointState] = {}


def configure(*, allowed: bool, role: Role | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Enable the points named in ``VSTORE_FAILPOINTS`` at a node's start, before it opens
    its stores. ``allowed`` is the node config's ``[node] failpoints``; ``role`` (when given)
    refuses points whose sites this kind of node does not have, since a test that sets one
    would prove nothing. ``environ`` defaults to ``os.environ``.

    Returns True when points were enabled. Without the variable (or with it empty) nothing
    changes and it returns False. Raises UsageError (exit 2, one line) when the variable is
    set but ``allowed`` is false, and for a bad spec, an unknown or foreign point, or a bad
    seed. Replaces any points enabled before."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_VAR, "").strip()
    if not text:
        return False
    if not allowed:
        raise UsageError(f"{ENV_VAR} is set ({' '.join(text.split())}) but this node's config does not allow failpoints "
                         f"([node] failpoints = false): refusing to start; failure injection is for tests only")
    try:
        spec = parse_spec(text)
    except FailpointSpecError as exc:
        raise UsageError(f"{ENV_VAR}: {exc}") from None
    if role is not None:
        foreign = [name for name in spec if POINTS[name] != role]
        if foreign:
            own = [name for name, r in POINTS.items() if r == role]
            raise UsageError(f"{ENV_VAR}: {', '.join(foreign)} not on a {role} node (its failpoints: "
                             f"{', '.join(own)})")
    seed_text = env.get(SEED_ENV_VAR, "0").strip() or "0"
    try:
        seed = int(seed_text)
    except ValueError:
        raise UsageError(f"{SEED_ENV_VAR}={seed_text!r}: must be an integer") from None
    states = {name: PointState(name, terms, point_rng(seed, name)) for name, terms in spec.items()}
    _points.clear()
    _points.update(states)
    log.warning("failpoints.enabled", extra={"spec": ";".join(f"{n}={'->'.join(map(str, s.terms))}"
                                                              for n, s in states.items()),
                                             "seed": seed, "pid": os.getpid()})
    return True


def disable() -> None:
    """Turn every point off (tests that enabled points in-process)."""
    _points.clear()


def active() -> dict[str, tuple[int, int]]:
    """Enabled point -> (hits so far, hits that acted)."""
    return {name: (s.hits, s.fired) for name, s in _points.items()}


# ---- the sites ------------------------------------------------------------------------------------


def failpoint(name: str) -> None:
    """A site, in blocking code (a disk or writer thread). Does nothing unless the point is
    enabled; then may end the process, raise OSError, or block this thread for a while.
    Never call it on the event loop where a sleep is possible: use ``afailpoint``."""
    state = _points.get(name)
    if state is None:
        return
    term = _take(state)
    if term is None:
        return
    if term.action == "sleep":
        assert not _on_event_loop(), f"failpoint {name}: a blocking sleep on the event loop; use afailpoint"
        time.sleep(term.arg / 1000)
    else:
        _act(name, term)


async def afailpoint(name: str) -> None:
    """A site on the event loop: ``await afailpoint(name)``. As ``failpoint``, but a sleep
    suspends the calling task only (the loop keeps serving). A plain coroutine: returning a
    ready awaitable when off was tried and saved nothing measurable (both ~0.2 µs)."""
    state = _points.get(name)
    if state is None:
        return
    term = _take(state)
    if term is None:
        return
    if term.action == "sleep":
        await asyncio.sleep(term.arg / 1000)
    else:
        _act(name, term)


def _take(state: PointState) -> Term | None:
    with state.lock:
        term = state.evaluate()
        hit = state.hits
    if term is not None and term.action != "panic":
        log.info("failpoint.fired", extra={"point": state.name, "action": str(term), "hit": hit})
    return term


def _act(name: str, term: Term) -> None:
    if term.action == "panic":
        _panic(name)
    code = term.arg
    raise OSError(code, f"{os.strerror(code)} (failpoint {name})")


def _panic(name: str) -> None:
    log.error("failpoint.panic", extra={"point": name, "exit_code": FAILPOINT_EXIT_CODE, "pid": os.getpid()})
    for logger in (logging.getLogger("vstore"), logging.getLogger()):
        for handler in logger.handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - a broken handler must not stop the crash
                pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(FAILPOINT_EXIT_CODE)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
