"""A seeded, self-verifying workload through FUSE mounts, and its checker (RELIABILITY.md §5).

What it owns: threads that write files and change the namespace through one or more mount
points, the record of what they did and what was acknowledged, and the judgement of every
read against that record. What it must not do: know how vstore works inside. It sees only
what an application sees (syscalls on a mount), so the same checker serves every nemesis row.

Data. A file is a sequence of 4 KiB pages. Every write covers whole pages and carries a
*generation* (a per-file counter, one per write); the bytes of page ``p`` written at
generation ``g`` are ``shake_128(seed|path|g|p)``, a pure function, so a read is judged
without a copy of the data (``ceph_test_rados``, ``fio --verify``). Each write op is
open -> pwrite -> fsync -> close; it is **acknowledged** when fsync and close both returned
(close too: close-to-open is when another host must see it, DESIGN.md §6). A fraction of the
ops skip the fsync: written, never acknowledged. Writers own their files (no two writers share
one), so per file the generations are totally ordered.

Judging a read of a file opened at ``as_of`` and finished at ``done`` (both readings of
``time.monotonic()`` in this process):

* its size is at least the end of every write acknowledged before ``as_of`` and at most the
  end of every write invoked before ``done``;
* every page shows the bytes of one generation that was written to it (invoked before
  ``done``) and is not older than the newest generation acknowledged for it before ``as_of``
  (no acknowledged byte lost, no stale read), or zeros where no write of that page was ever
  acknowledged before ``as_of`` (a hole, or a write whose data never landed). Nothing else:
  a torn unacknowledged write shows old pages and new ones, never bytes no one wrote.

The final check after healing is the same with ``as_of = done = now``; reads during a fault
from the other host are judged the same way, so a stale read is caught as it happens.

Metadata. One thread per mount makes, renames and removes names in a directory of its own,
recording each op in a ``HistoryRecorder`` (tests/harness/checkers.py) as compare-and-set
ops on a register per path (absent / "file" / "dir"): ``mkdir``/``create`` are
``cas(None -> kind)`` (EEXIST = False), ``unlink``/``rmdir`` ``cas(kind -> None)`` (ENOENT =
False), a rename both halves. An op that raised anything else has an unknown outcome. At the
end every path is read back (readdir, which the kernel does not cache) and the history must
be linearizable: acknowledged creates exist, acknowledged unlinks stay gone, and a retried
create that answers EEXIST (a duplicate application) is caught. A rename is checked per
path, not as one atomic step across two paths (a later, cross-key model).

Errors the application saw are recorded (``Workload.errors``); a row decides whether any
were allowed (none, except on a mount the row killed).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.checkers import CheckResult, HistoryRecorder, KVModel, check

PAGE_BYTES = 4096
#: a file grows to at most this many pages (1 MiB), then is only overwritten: small enough
#: that the final check reads every file from both mounts in a second or two
FILE_PAGES_MAX = 256
#: pages per write op, at most: 64 KiB, so a write spans FUSE requests but stays quick
WRITE_PAGES_MAX = 16
#: share of write ops closed without fsync: written, never acknowledged
UNSYNCED_SHARE = 0.15


def page_bytes(seed: int, path: str, generation: int, page: int) -> bytes:
    """The bytes of ``page`` of ``path`` written at ``generation``. Pure."""
    return hashlib.shake_128(f"{seed}|{path}|{generation}|{page}".encode()).digest(PAGE_BYTES)


ZERO_PAGE = bytes(PAGE_BYTES)


@dataclass
class Write:
    """One write op: pages [first, first + count) of ``path`` at ``generation``."""

    client: str
    path: str
    generation: int
    first: int
    count: int
    invoke: float
    acked_at: float | None = None     # fsync and close returned
    error: str | None = None

    @property
    def end_bytes(self) -> int:
        return (self.first + self.count) * PAGE_BYTES


@dataclass
class FileRecord:
    """Every write of one file, in generation order, and per page the writes that touched it."""

    path: str
    writes: list[Write] = field(default_factory=list)
    pages: dict[int, list[Write]] = field(default_factory=dict)
    created: float | None = None      # the first open(O_CREAT) returned

    def size_pages(self) -> int:
        return max((w.first + w.count for w in self.writes), default=0)


@dataclass
class Problem:
    """A read that broke the contract: wrong bytes, a lost acknowledged byte, a stale read, or an error."""

    what: str
    path: str
    detail: str
    at: float

    def __str__(self) -> str:
        return f"{self.what}: {self.path}: {self.detail}"


def judge(record: FileRecord, data: bytes, seed: int, *, as_of: float, done: float) -> list[str]:
    """What is wrong with ``data``, a whole-file read of ``record`` opened at ``as_of`` and
    finished at ``done`` (see the module docstring). Empty when the read is right. Pure."""
    problems: list[str] = []
    writes = [w for w in record.writes if w.invoke < done]
    acked = [w for w in writes if w.acked_at is not None and w.acked_at < as_of]
    size_min = max((w.end_bytes for w in acked), default=0)
    size_max = max((w.end_bytes for w in writes), default=0)
    if not size_min <= len(data) <= size_max:
        problems.append(f"size {len(data)} outside [{size_min}, {size_max}] (acknowledged before the open, "
                        f"written before the read ended)")
    for page in range(-(-len(data) // PAGE_BYTES)):
        got = data[page * PAGE_BYTES:(page + 1) * PAGE_BYTES]
        history = [w for w in record.pages.get(page, ()) if w.invoke < done]
        newest_acked = max((i for i, w in enumerate(history) if w.acked_at is not None and w.acked_at < as_of),
                           default=None)
        allowed = history if newest_acked is None else history[newest_acked:]
        if any(page_bytes(seed, record.path, w.generation, page)[:len(got)] == got for w in allowed):
            continue
        if newest_acked is None and got == ZERO_PAGE[:len(got)]:
            continue
        older = next((w.generation for w in history[:newest_acked or 0]
                      if page_bytes(seed, record.path, w.generation, page)[:len(got)] == got), None)
        if older is not None:
            problems.append(f"page {page}: stale, generation {older} but generation "
                            f"{history[newest_acked or 0].generation} was acknowledged before the open")
        elif got == ZERO_PAGE[:len(got)]:
            problems.append(f"page {page}: zeros, but generation {history[newest_acked or 0].generation} "
                            "was acknowledged before the open")
        else:
            problems.append(f"page {page}: bytes no one wrote (allowed generations "
                            f"{[w.generation for w in allowed]}{' or zeros' if newest_acked is None else ''})")
        if len(problems) > 8:
            problems.append("... (more pages not shown)")
            break
    return problems


class Workload:
    """Writers, metadata workers and cross-host readers on the given mounts, all seeded.

    ``mounts`` maps a client name to its mount point; ``top`` is the directory (relative to
    every mount root) the workload lives in, made here. Start with ``start()``, stop with
    ``stop()``; afterwards ``check_data(client, mount)`` reads and judges every file through
    a mount and ``check_meta(mount)`` reads the metadata directories back and checks the
    history. Threads: one writer per ``writers_per_mount`` (each with ``files_per_writer``
    files of its own), one metadata worker per mount, and with two mounts or more one reader
    per mount that reads the other mounts' files as they are written.
    """

    def __init__(self, seed: int, mounts: dict[str, Path], top: str, *, writers_per_mount: int = 1,
                 files_per_writer: int = 3, pause_s: float = 0.01, readers: bool = True) -> None:
        self.seed = seed
        self.mounts = dict(mounts)
        self.top = top.strip("/")
        self.pause_s = pause_s
        self.files: dict[str, FileRecord] = {}
        self.writes: list[Write] = []
        self.history = HistoryRecorder()
        self.meta_paths: set[str] = set()
        self.errors: list[Problem] = []      # errors an application saw (EIO, ENOTCONN, ...)
        self.wrong: list[Problem] = []       # reads that broke the contract
        self.reads_checked = 0
        self.meta_ops = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dead: set[str] = set()          # clients whose mount a row killed: they stop quietly
        self._expected: dict[str, frozenset[int]] = {}   # client -> errnos a row allows it
        self.expected_errors: list[Problem] = []
        self._threads: list[tuple[threading.Thread, str]] = []
        first = next(iter(self.mounts.values()))
        (first / self.top).mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        for client in self.mounts:
            for n in range(writers_per_mount):
                paths = [f"{self.top}/data-{client}-{n}-{k}" for k in range(files_per_writer)]
                for p in paths:
                    self.files[p] = FileRecord(p)
                self._threads.append((threading.Thread(
                    target=self._writer, args=(client, paths, random.Random(rng.random())),
                    name=f"writer-{client}-{n}", daemon=True), client))
            meta_dir = f"{self.top}/meta-{client}"
            (first / meta_dir).mkdir()
            self._threads.append((threading.Thread(target=self._meta, args=(client, meta_dir, random.Random(rng.random())),
                                                   name=f"meta-{client}", daemon=True), client))
            if readers and len(self.mounts) > 1:
                self._threads.append((threading.Thread(target=self._reader, args=(client, random.Random(rng.random())),
                                                       name=f"reader-{client}", daemon=True), client))

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> Workload:
        for t, _ in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float = 90.0) -> None:
        """Stop every thread after its current op; an op blocked on a mount beyond
        ``timeout_s`` is reported as an error (the application would have hung)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t, client in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                self._error(client, "", f"{t.name} still blocked {timeout_s:g} s after stop: an op hangs")

    def mark_dead(self, client: str) -> None:
        """The row killed this client's mount: its threads stop at their next error, and errors
        on it from now on are expected, not reported."""
        self._dead.add(client)

    # ---- progress, for rows to wait on ------------------------------------------------------

    def acked(self, *, client: str | None = None, after: float = float("-inf")) -> int:
        """Write ops acknowledged after ``after`` (by ``client``, or by anyone)."""
        with self._lock:
            return sum(1 for w in self.writes if w.acked_at is not None and w.acked_at > after
                       and (client is None or w.client == client))

    def meta_acked(self, *, client: str | None = None, after: float = float("-inf"),
                   invoked_after: float = float("-inf"), before: float = float("inf")) -> int:
        """Metadata ops that returned an answer in (after, before), invoked after ``invoked_after``."""
        with self._lock:
            ops = self.history.history()
        return sum(1 for op in ops if op.complete is not None and after < op.complete < before
                   and op.invoke > invoked_after and not str(op.client).endswith("/dst")
                   and (client is None or str(op.client).split("/")[0] == client))

    def spanning(self, t: float) -> int:
        """Ops (writes and metadata) in flight at ``t`` that were later answered: they rode through."""
        with self._lock:
            ops = self.history.history()
            writes = [w for w in self.writes if w.invoke < t and w.acked_at is not None and w.acked_at > t]
        return len(writes) + sum(1 for op in ops if op.invoke < t and op.complete is not None and op.complete > t)

    def stall_s(self, t: float, *, client: str | None = None, window_s: float = 10.0) -> float:
        """How long the application was held by a fault at ``t``: the longest an op (on
        ``client``, or anywhere) that was in flight at ``t`` or began within ``window_s``
        after it waited from ``t`` or its start, whichever is later (about 0: none was
        held). The "time until the client's I/O resumes" of issue 9's measurements."""
        with self._lock:
            ops = [(op.invoke, op.complete, str(op.client).split("/")[0]) for op in self.history.history()]
            ops += [(w.invoke, w.acked_at, w.client) for w in self.writes]
        return max((done - max(invoke, t) for invoke, done, who in ops
                    if done is not None and done > t and invoke < t + window_s
                    and (client is None or who == client)), default=0.0)

    # ---- the threads --------------------------------------------------------------------------

    def _alive(self, client: str) -> bool:
        return not self._stop.is_set() and client not in self._dead

    def expect_errors(self, client: str, errnos: Iterable[int]) -> None:
        """Errors with these errnos on ``client`` are allowed from now on (kept apart in
        ``expected_errors``); the thread that met one stops, as an application would."""
        self._expected[client] = frozenset(errnos)

    def _error(self, client: str, path: str, detail: str, code: int | None = None) -> None:
        owner = client.split("/")[0]
        if owner in self._dead:
            return
        problem = Problem("error", path, f"{client}: {detail}", time.monotonic())
        with self._lock:
            if code is not None and code in self._expected.get(owner, ()):
                self.expected_errors.append(problem)
            else:
                self.errors.append(problem)

    def _writer(self, client: str, paths: list[str], rng: random.Random) -> None:
        root = self.mounts[client]
        generation = {p: 0 for p in paths}
        while self._alive(client):
            path = rng.choice(paths)
            record = self.files[path]
            size = record.size_pages()
            if size < FILE_PAGES_MAX and (size == 0 or rng.random() < 0.6):
                first = size
                count = rng.randint(1, min(WRITE_PAGES_MAX, FILE_PAGES_MAX - size))
            else:
                first = rng.randrange(size)
                count = rng.randint(1, min(WRITE_PAGES_MAX, size - first))
            generation[path] += 1
            g = generation[path]
            sync = rng.random() >= UNSYNCED_SHARE
            data = b"".join(page_bytes(self.seed, path, g, first + i) for i in range(count))
            write = Write(client, path, g, first, count, time.monotonic())
            with self._lock:
                self.writes.append(write)
                record.writes.append(write)
                for i in range(count):
                    record.pages.setdefault(first + i, []).append(write)
            try:
                fd = os.open(root / path, os.O_WRONLY | os.O_CREAT, 0o644)
                if record.created is None:
                    record.created = time.monotonic()
                try:
                    written = os.pwrite(fd, data, first * PAGE_BYTES)
                    if written != len(data):
                        raise OSError(errno.EIO, f"short write {written} of {len(data)}")
                    if sync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                if sync:
                    write.acked_at = time.monotonic()
            except OSError as exc:
                write.error = f"{errno.errorcode.get(exc.errno or 0, exc.errno)} {exc.strerror}"
                self._error(client, path, f"write gen {g} pages {first}+{count}: {write.error}", exc.errno)
                return
            self._stop.wait(self.pause_s)

    def _meta(self, client: str, meta_dir: str, rng: random.Random) -> None:
        root = self.mounts[client] / meta_dir
        names: dict[str, str] = {}     # name -> "file"/"dir", as this worker believes it to be
        counter = 0
        while self._alive(client):
            counter += 1
            choice = rng.random()
            if not names or choice < 0.45:
                kind = "dir" if rng.random() < 0.4 else "file"
                name = f"{kind[0]}{counter}"
                ok = self._meta_op(client, "cas", f"{meta_dir}/{name}", (None, kind),
                                   lambda n=name, k=kind: self._make(root / n, k))
                if ok is True:
                    names[name] = kind
            elif choice < 0.75:
                name = rng.choice(sorted(names))
                kind = names.pop(name)
                ok = self._meta_op(client, "cas", f"{meta_dir}/{name}", (kind, None),
                                   lambda n=name, k=kind: (os.rmdir if k == "dir" else os.unlink)(root / n))
                if ok is None:
                    pass   # unknown: not ours to use again
            else:
                name = rng.choice(sorted(names))
                kind = names.pop(name)
                new = f"{kind[0]}{counter}"
                src, dst = f"{meta_dir}/{name}", f"{meta_dir}/{new}"
                ok = self._rename(client, src, dst, kind, root / name, root / new)
                if ok is True:
                    names[new] = kind
            if ok is None and (client in self._dead or client in self._expected):
                return
            self._stop.wait(self.pause_s)

    @staticmethod
    def _make(path: Path, kind: str) -> None:
        if kind == "dir":
            os.mkdir(path)
        else:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    def _meta_op(self, client: str, kind: str, key: str, value: object, call) -> bool | None:  # type: ignore[no-untyped-def]
        """Run ``call`` as op ``kind(value)`` on ``key``: True done, False refused (EEXIST/ENOENT:
        the cas saw another state), None unknown (another error, recorded)."""
        with self._lock:
            self.meta_paths.add(key)
            self.history.invoke(client, kind, key, value, time=time.monotonic())
        try:
            call()
        except OSError as exc:
            with self._lock:
                if exc.errno in (errno.EEXIST, errno.ENOENT):
                    self.history.complete(client, False, time=time.monotonic())
                    self.meta_ops += 1
                    return False
                self.history.timeout(client)
            self._error(client, key, f"{kind}{value}: {errno.errorcode.get(exc.errno or 0, exc.errno)}", exc.errno)
            return None
        with self._lock:
            self.history.complete(client, True, time=time.monotonic())
            self.meta_ops += 1
        return True

    def _rename(self, client: str, src: str, dst: str, kind: str, src_path: Path, dst_path: Path) -> bool | None:
        with self._lock:
            self.meta_paths.update((src, dst))
            now = time.monotonic()
            self.history.invoke(f"{client}/src", "cas", src, (kind, None), time=now)
            self.history.invoke(f"{client}/dst", "cas", dst, (None, kind), time=now)
        try:
            os.rename(src_path, dst_path)
        except OSError as exc:
            with self._lock:
                if exc.errno == errno.ENOENT:
                    self.history.complete(f"{client}/src", False, time=time.monotonic())
                    self.history.fail(f"{client}/dst")
                    self.meta_ops += 1
                    return False
                self.history.timeout(f"{client}/src")
                self.history.timeout(f"{client}/dst")
            self._error(client, src, f"rename to {dst}: {errno.errorcode.get(exc.errno or 0, exc.errno)}", exc.errno)
            return None
        with self._lock:
            now = time.monotonic()
            self.history.complete(f"{client}/src", True, time=now)
            self.history.complete(f"{client}/dst", True, time=now)
            self.meta_ops += 1
        return True

    def _reader(self, client: str, rng: random.Random) -> None:
        """Read other clients' files whole, judging each read as it happens."""
        root = self.mounts[client]
        while self._alive(client):
            theirs = [r for r in self.files.values() if r.created is not None and f"-{client}-" not in r.path]
            if not theirs:
                self._stop.wait(0.1)
                continue
            record = rng.choice(theirs)
            if not self.read_and_judge(client, root, record) and (client in self._dead or client in self._expected):
                return
            self._stop.wait(self.pause_s * 5)

    # ---- judging --------------------------------------------------------------------------------

    def read_and_judge(self, client: str, root: Path, record: FileRecord) -> bool:
        """Read ``record``'s file whole through ``root`` now and judge it; False on any problem
        (recorded in ``wrong`` or ``errors``)."""
        as_of = time.monotonic()
        try:
            with open(root / record.path, "rb", buffering=0) as fp:
                data = fp.read()
        except OSError as exc:
            self._error(client, record.path, f"read: {errno.errorcode.get(exc.errno or 0, exc.errno)}", exc.errno)
            return False
        done = time.monotonic()
        with self._lock:
            problems = judge(record, data, self.seed, as_of=as_of, done=done)
            self.reads_checked += 1
            for p in problems:
                self.wrong.append(Problem("wrong read", record.path, f"{client}: {p}", done))
        return not problems

    def check_data(self, client: str, root: Path, paths: Iterable[str] | None = None) -> list[Problem]:
        """Judge every file (or ``paths``) read now through ``root``; returns the new problems."""
        before_wrong, before_errors = len(self.wrong), len(self.errors)
        for path in sorted(self.files if paths is None else paths):
            record = self.files[path]
            if record.created is None and not (root / path).exists():
                continue   # never created (the writer died before its first open returned)
            self.read_and_judge(client, root, record)
        return self.wrong[before_wrong:] + self.errors[before_errors:]

    def meta_dirs(self) -> list[str]:
        """The directories the metadata workers use (relative to a mount root)."""
        with self._lock:
            return sorted({p.rsplit("/", 1)[0] for p in self.meta_paths})

    def observe_dir(self, directory: str, entries: dict[str, str], invoke: float, done: float, label: str) -> None:
        """Add a read of ``directory`` (its entries, name -> "file"/"dir") made between
        ``invoke`` and ``done`` to the history, as one ``get`` per path the workers touched
        there: the linearizability check then judges it with everything else."""
        with self._lock:
            for p in sorted(self.meta_paths):
                parent, name = p.rsplit("/", 1)
                if parent == directory:
                    client = f"{label}:{p}"
                    self.history.invoke(client, "get", p, time=invoke)
                    self.history.complete(client, entries.get(name), time=done)

    def check_meta(self, root: Path | None = None, label: str = "final") -> CheckResult:
        """With ``root``: first read every directory the metadata workers used through that
        mount (readdir, which the kernel does not cache). Then check the whole history for
        linearizability."""
        if root is not None:
            for d in self.meta_dirs():
                invoke = time.monotonic()
                entries = {e.name: ("dir" if e.is_dir(follow_symlinks=False) else "file")
                           for e in os.scandir(root / d)}
                self.observe_dir(d, entries, invoke, time.monotonic(), f"{label}@{root.name}")
        with self._lock:
            history = self.history.history()
        return check(history, KVModel())

    def save(self, path: Path) -> None:
        """The whole record as JSON (seed, every write with its ack, the metadata history,
        the errors and wrong reads): what a failure report keeps next to the logs."""
        import dataclasses
        import json
        with self._lock:
            doc = {"seed": self.seed, "top": self.top, "summary": None,
                   "writes": [dataclasses.asdict(w) for w in self.writes],
                   "metadata": [dataclasses.asdict(op) for op in self.history.history()],
                   "errors": [dataclasses.asdict(p) for p in self.errors],
                   "wrong": [dataclasses.asdict(p) for p in self.wrong]}
        doc["summary"] = self.summary()
        path.write_text(json.dumps(doc, indent=1, default=repr))

    def summary(self) -> str:
        with self._lock:
            acked = sum(1 for w in self.writes if w.acked_at is not None)
            return (f"writes {len(self.writes)} ({acked} acknowledged), metadata ops {self.meta_ops}, "
                    f"reads judged {self.reads_checked}, errors {len(self.errors)}, wrong reads {len(self.wrong)}")


def describe(problems: Sequence[Problem], limit: int = 20) -> str:
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... {len(problems) - limit} more")
    return "\n  ".join(lines)


# ---- the workload in a process of its own ---------------------------------------------------------

class RemoteWorkload:
    """A ``Workload`` run in a child process (multiprocessing "spawn"), driven over a pipe with
    the same methods.

    Why a process: the threads' open files are FUSE files, and a process that forks inherits
    every open descriptor. A child the test starts (``vstore status``, a restarted node,
    ``nft``) closes them at exec, and each close of a FUSE file is a FLUSH the mount must
    answer first: the test's own process starts would wait on the very mount the fault is
    stalling (a chunkserver restart that took two minutes because a writer's fsync was stuck
    is how this was found). In a process of its own, the workload's descriptors are nobody
    else's. ``time.monotonic()`` is the system-wide CLOCK_MONOTONIC on Linux, so times taken
    in the child and in the test compare.

    The child is owned by PID: ``close()`` (also at exit of a ``with``) asks it to stop, then
    SIGKILLs it if it does not exit.
    """

    def __init__(self, seed: int, mounts: dict[str, Path], top: str, **kwargs: object) -> None:
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_workload, args=(child, seed, dict(mounts), top, kwargs),
                                 name=f"workload-{top}", daemon=True)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self.seed = seed
        self._call("start")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _call(self, name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        with self._lock:
            self._conn.send((name, args, kwargs))
            ok, value = self._conn.recv()
        if not ok:
            raise value
        return value

    # the Workload's API, forwarded
    def stop(self, timeout_s: float = 90.0) -> None:
        self._call("stop", timeout_s)

    def mark_dead(self, client: str) -> None:
        self._call("mark_dead", client)

    def expect_errors(self, client: str, errnos: Iterable[int]) -> None:
        self._call("expect_errors", client, frozenset(errnos))

    def acked(self, **kwargs: object) -> int:
        return int(self._call("acked", **kwargs))

    def meta_acked(self, **kwargs: object) -> int:
        return int(self._call("meta_acked", **kwargs))

    def spanning(self, t: float) -> int:
        return int(self._call("spanning", t))

    def stall_s(self, t: float, **kwargs: object) -> float:
        return float(self._call("stall_s", t, **kwargs))

    def check_data(self, client: str, root: Path, paths: Iterable[str] | None = None) -> list[Problem]:
        return list(self._call("check_data", client, root, None if paths is None else list(paths)))

    def check_meta(self, root: Path | None = None, label: str = "final") -> CheckResult:
        return self._call("check_meta", root, label)  # type: ignore[no-any-return]

    def meta_dirs(self) -> list[str]:
        return list(self._call("meta_dirs"))

    def observe_dir(self, directory: str, entries: dict[str, str], invoke: float, done: float, label: str) -> None:
        self._call("observe_dir", directory, entries, invoke, done, label)

    def summary(self) -> str:
        return str(self._call("summary"))

    def save(self, path: Path) -> None:
        self._call("save", path)

    @property
    def errors(self) -> list[Problem]:
        return list(self._call("__attr__", "errors"))

    @property
    def wrong(self) -> list[Problem]:
        return list(self._call("__attr__", "wrong"))

    @property
    def expected_errors(self) -> list[Problem]:
        return list(self._call("__attr__", "expected_errors"))

    @property
    def writes(self) -> list[Write]:
        return list(self._call("__attr__", "writes"))

    @property
    def files(self) -> list[str]:
        return list(self._call("file_paths"))

    def close(self, grace_s: float = 30.0) -> None:
        """Stop the workload and end the child; SIGKILL it by PID if it does not exit in time."""
        if self._proc.is_alive():
            try:
                with self._lock:
                    self._conn.send(("__exit__", (), {}))
            except OSError:
                pass
            self._proc.join(grace_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
        self._conn.close()

    def __enter__(self) -> RemoteWorkload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_workload(conn, seed: int, mounts: dict[str, Path], top: str, kwargs: dict) -> None:  # type: ignore[no-untyped-def]
    """The child's loop: one call at a time from the pipe, its result (or exception) back."""
    work: Workload | None = None
    try:
        work = Workload(seed, mounts, top, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - sent to the parent
        conn.send((False, exc))
        return
    while True:
        try:
            name, args, kw = conn.recv()
        except EOFError:
            break
        if name == "__exit__":
            work.stop(timeout_s=20)
            break
        try:
            if name == "__attr__":
                with work._lock:
                    value = list(getattr(work, args[0]))
            elif name == "file_paths":
                value = sorted(work.files)
            else:
                value = getattr(work, name)(*args, **kw)
                if name == "start":
                    value = None
            conn.send((True, value))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent
            conn.send((False, exc))
    conn.close()
