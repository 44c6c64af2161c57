"""The first rows of RELIABILITY.md §7's matrix, each on a real cluster of network-namespace
hosts (tests/harness/nemesis.py: 3 MDS hosts, 4 chunkserver hosts, 2 client hosts, built
through the CLI) under a seeded self-verifying workload (tests/harness/workload.py).

One cluster serves the whole module: building it costs more than a row. Each row starts from a
healthy cluster (``restore``: heal, SIGCONT, restart what is down, remount, status exit 0),
works in a directory of its own, and ends with the same checks (``_finish``):

* the workload's history: no error the application saw (unless the row killed that mount),
  no read during the fault that returned wrong or stale bytes, every file read back through
  *both* mounts holding every acknowledged byte exactly and nothing no one wrote, and the
  metadata history linearizable (acknowledged creates exist, acknowledged removes stay gone,
  no retried op applied twice);
* the end state: ``vstore status`` exits 0, every MDS at one applied index with one state
  hash (DESIGN.md §8.1), every chunk of the row's files at 3 replicas on distinct hosts
  (§8.4) and ``vstore scrub`` of the row's directory clean (§8.2, §8.3).

If a row leaves the cluster beyond repair, the next row builds a new one. Every row prints its
seed; ``VSTORE_NEMESIS_SEED=N`` replays the workload and the fault timing of a run. On failure
every node's log tail and ``vstore status`` are printed and saved (``NetnsCluster.report``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.nemesis import NetnsCluster
from tests.harness.skips import require_netns, require_tool
from tests.harness.wait import wait_until
from tests.harness.workload import RemoteWorkload, describe

pytestmark = [pytest.mark.timeout(420)]

MIB = 1 << 20
#: the migration scenario's two large checkpoint files: 256 MiB each in the real scenario
#: (issue 9, and ``make soak``); 64 MiB keeps the row within the default suite's budget
PAGES_IMG_BYTES = int(os.environ.get("VSTORE_PAGES_MIB", "64")) * MIB
#: a new leader within this long of losing the old one: 3 × the 5 s target (RELIABILITY.md F1, §8)
LEADER_BOUND_S = 15
#: fault lengths: the default suite's short versions; ``make soak`` runs RELIABILITY.md's long ones
F3_PAUSE_S = int(os.environ.get("VSTORE_F3_PAUSE_S", "10"))
F4_PARTITION_S = int(os.environ.get("VSTORE_F4_PARTITION_S", "12"))
#: longer than the harness's cs_failed_after_s (8 s): the MDS declares the zombie failed and
#: rebuilds while it sleeps (RELIABILITY.md says 30-80 s; the soak runs those)
F7_PAUSE_S = int(os.environ.get("VSTORE_F7_PAUSE_S", "12"))
F5_S = 10
THRASH_S = int(os.environ.get("VSTORE_THRASH_S", "60"))
#: per-fault figures (issue 9's "Measure"), written as JSON when VSTORE_NEMESIS_MEASURE names a file
MEASURED: list[dict[str, object]] = []


class Pool:
    """The module's cluster: built on first use, restored before every row, rebuilt when a
    restore fails."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.cluster: NetnsCluster | None = None

    def get(self) -> NetnsCluster:
        if self.cluster is not None:
            try:
                self.cluster.restore()
                return self.cluster
            except Exception as exc:  # noqa: BLE001 - a fresh cluster for the next row
                self.cluster.report(f"restore failed, rebuilding: {exc!r}")
                try:
                    self.close()
                except Exception as teardown:  # noqa: BLE001 - the new cluster has its own prefix
                    print(f"teardown of the old cluster: {teardown!r}")
        started = time.monotonic()
        self.cluster = NetnsCluster(self.factory.mktemp("nemesis")).__enter__()
        print(f"nemesis cluster {self.cluster.prefix} built and mounted in {time.monotonic() - started:.1f} s")
        return self.cluster

    def close(self) -> None:
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            cluster.close()


def _require_nemesis() -> None:
    require_netns()
    require_tool("nft", "nftables partitions between netns hosts")
    require_tool("fusermount3", "FUSE mounts")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse missing: no FUSE mounts here")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    _require_nemesis()
    pool = Pool(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.close()
        target = os.environ.get("VSTORE_NEMESIS_MEASURE")
        if target and MEASURED:
            Path(target).write_text(json.dumps(MEASURED, indent=1) + "\n")


class Row:
    """One row's cluster, seed and workload."""

    def __init__(self, cluster: NetnsCluster, seed: int, name: str) -> None:
        self.cluster = cluster
        self.seed = seed
        self.rng = random.Random(seed)
        self.top = name
        self.workload: RemoteWorkload | None = None
        self._cleanups: list[Callable[[], object]] = []

    def cleanup(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` when the row ends, pass or fail (last registered first): a loop
        device or an fd on a mount must not outlive the row that made it."""
        self._cleanups.append(callback)

    def run_cleanups(self) -> None:
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:  # noqa: BLE001 - the rest still runs
                print(f"row cleanup failed: {exc!r}")

    def start_workload(self, **kwargs: object) -> RemoteWorkload:
        """The row's workload, in a process of its own (see RemoteWorkload: the test's own
        process starts must not wait on FUSE flushes of the workload's open files)."""
        self.workload = RemoteWorkload(self.seed, self.cluster.mounts, self.top, **kwargs)
        return self.workload

    def wait_progress(self, what: str, *, after: float, acked: int = 8, meta: int = 8, client: str | None = None,
                      timeout_s: float = 60) -> None:
        """At least ``acked`` writes and ``meta`` metadata ops answered after ``after``."""
        work = self.workload
        assert work is not None

        def progressed() -> bool:
            if work.errors or work.wrong:
                raise AssertionError(f"{what}: the workload saw problems:\n  {describe(work.errors + work.wrong)}")
            return (work.acked(client=client, after=after) >= acked
                    and work.meta_acked(client=client, after=after) >= meta)
        wait_until(progressed, timeout_s=timeout_s, interval_s=0.2,
                   what=lambda: f"{what} ({work.summary()})")


@pytest.fixture
def row(pool: Pool, request: pytest.FixtureRequest) -> Iterator[Row]:
    seed = int(os.environ.get("VSTORE_NEMESIS_SEED") or random.SystemRandom().randrange(1 << 31))
    name = request.node.name.removeprefix("test_").split("_")[0]
    if "[" in request.node.name:
        name += "-" + request.node.name.split("[", 1)[1].rstrip("]")
    print(f"nemesis seed {seed} for {request.node.nodeid} (replay: VSTORE_NEMESIS_SEED={seed})")
    started = time.monotonic()
    cluster = pool.get()
    r = Row(cluster, seed, name)
    try:
        yield r
    finally:
        try:
            if r.workload is not None:
                r.workload.stop(timeout_s=30)
            r.run_cleanups()
            if call_failed(request.node):
                kept = cluster.report(f"{request.node.name} failed, seed {seed}")
                if r.workload is not None:
                    r.workload.save(kept / "history.json")
                    print(f"workload: {r.workload.summary()}; history saved in {kept / 'history.json'}")
        finally:
            if r.workload is not None:
                r.workload.close()
        print(f"{request.node.name}: {time.monotonic() - started:.1f} s including restore")


def _s(seconds: float | None) -> str:
    return "? s (no log line)" if seconds is None else f"{seconds:.1f} s"


def _finish(r: Row, *, dead: tuple[str, ...] = ()) -> str:
    """The checks every row ends with (module docstring). ``dead``: clients whose mount the
    row killed (their errors were expected; they are not read from)."""
    c, work = r.cluster, r.workload
    assert work is not None
    work.stop()
    assert not work.errors, f"the application saw errors:\n  {describe(work.errors)}"
    assert not work.wrong, f"reads during the fault broke the contract:\n  {describe(work.wrong)}"
    for client, mnt in c.mounts.items():
        if client in dead:
            continue
        problems = work.check_data(client, mnt)
        assert not problems, f"read back through {client}'s mount:\n  {describe(problems)}"
        meta = work.check_meta(mnt)
        assert meta.ok is True, f"metadata history (read back through {client}):\n{meta.explain()}"
    converged = c.converge(f"/{r.top}")
    line = f"{work.summary()}; {converged}"
    print(line)
    return line


# ---- F1 ---------------------------------------------------------------------------------------

def test_f1_killing_the_mds_leader_mid_write_loses_no_acknowledged_op(row: Row) -> None:
    """F1: kill -9 the MDS leader under a write + fsync + create/rename/unlink load on both
    mounts. No acknowledged op is lost (DESIGN.md §8.1), no op is applied twice, the clients
    see no error, a new leader serves within the bound (§8.5); the old leader restarts a few
    seconds later, catches up, and every MDS ends with the same state hash."""
    c = row.cluster
    work = row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=20)
    old = c.wait_leader()
    killed_at, killed_wall = time.monotonic(), time.time()
    c.kill(old.name)
    new = c.wait_leader(not_=old.name, timeout_s=LEADER_BOUND_S)
    elected_s = c.elected_after_s(new, killed_wall)
    assert new.term > old.term
    row.wait_progress("the workload going on under the new leader", after=time.monotonic())
    time.sleep(row.rng.uniform(2, 5))   # fault timing, not an assertion: "restart after a few seconds"
    c.restart(old.name)
    row.wait_progress("the workload going on after the old leader's restart", after=time.monotonic(), acked=5,
                      meta=5)
    stall = work.stall_s(killed_at)
    print(f"F1: {old.name} (term {old.term}) killed; {new.name} leads at term {new.term}, elected after "
          f"{_s(elected_s)}; {work.spanning(killed_at)} ops in flight at the kill rode through, held {stall:.1f} s "
          f"at most")
    _finish(row)
    MEASURED.append({"fault": "F1", "new_leader_s": elected_s, "io_resumed_after_s": round(stall, 2)})


# ---- F3 ---------------------------------------------------------------------------------------

def test_f3_a_paused_mds_leader_is_replaced_and_serves_no_stale_read_when_it_wakes(row: Row) -> None:
    """F3: SIGSTOP the MDS leader for F3_PAUSE_S (10 s; 80 s in make soak: a GC pause), then SIGCONT. The majority elects a
    new leader and the workload goes on; the old leader steps down on the first higher term.
    Right after SIGCONT, a client that knows only the old leader lists the workers'
    directories, and both mounts read every file: the listing is judged with the metadata
    history (linearizable: nothing created during the pause is missing, nothing removed is
    back) and the reads with the data history (every write acknowledged before the read is
    seen)."""
    c = row.cluster
    work = row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=20)
    old = c.wait_leader()
    stopped_at, stopped_wall = time.monotonic(), time.time()
    c.stop(old.name)
    new = c.wait_leader(not_=old.name, timeout_s=LEADER_BOUND_S)
    elected_s = c.elected_after_s(new, stopped_wall)
    row.wait_progress("the workload going on under the new leader", after=time.monotonic())
    time.sleep(max(0.0, stopped_at + F3_PAUSE_S - time.monotonic()))   # the pause's length: fault timing
    acked_during = work.acked(after=stopped_at)
    c.cont(old.name)
    for d in work.meta_dirs():
        entries, invoke, done = c.list_via(old.name, f"/{d}")
        work.observe_dir(d, entries, invoke, done, f"via-{old.name}")
    for client, mnt in c.mounts.items():
        problems = work.check_data(client, mnt)
        assert not problems, f"a read right after SIGCONT through {client}:\n  {describe(problems)}"
    meta = work.check_meta()
    assert meta.ok is True, f"a listing through the old leader right after SIGCONT:\n{meta.explain()}"

    def stepped_down() -> bool:
        status = c.status_json()
        mine = next((s for s in (status.get("mds") or {}).values() if s and s["node_id"] == old.name), None)
        return mine is not None and (mine["role"] != "leader" or mine["term"] > new.term)
    wait_until(stepped_down, timeout_s=LEADER_BOUND_S, interval_s=0.3,
               what=f"{old.name} stepping down after SIGCONT")
    stall = work.stall_s(stopped_at)
    print(f"F3: {old.name} paused {F3_PAUSE_S} s; {new.name} leads at term {new.term}, elected after {_s(elected_s)}; "
          f"{acked_during} writes acknowledged during the pause; the application was held {stall:.1f} s at most")
    _finish(row)
    MEASURED.append({"fault": "F3", "pause_s": F3_PAUSE_S, "new_leader_s": elected_s,
                     "io_resumed_after_s": round(stall, 2)})


def test_f3_a_leader_waking_from_a_pause_does_not_declare_the_chunkservers_failed(row: Row) -> None:
    """F3, the chunkservers' side: the paused leader heard no heartbeat for the whole pause,
    but the silence was its own (a GC pause, a frozen VM). When it wakes it is no longer the
    leader (the majority moved on, DESIGN.md §8.5) and must not act as one on what it
    measured while stopped: no chunkserver declared failed, no rebuild, no storm-brake alarm
    from it. The pause is longer than ``cs_failed_after_s`` (8 s) so the stale verdict would
    be FAILED."""
    c = row.cluster
    old = c.wait_leader()
    pause_s = c.timers["cs_failed_after_s"] + 2
    stopped_at = time.monotonic()
    c.stop(old.name)
    new = c.wait_leader(not_=old.name, timeout_s=LEADER_BOUND_S)
    time.sleep(max(0.0, stopped_at + pause_s - time.monotonic()))   # the pause's length: fault timing
    c.cont(old.name)

    def stepped_down() -> bool:
        status = c.status_json()
        mine = next((s for s in (status.get("mds") or {}).values() if s and s["node_id"] == old.name), None)
        return mine is not None and (mine["role"] != "leader" or mine["term"] > new.term)
    wait_until(stepped_down, timeout_s=LEADER_BOUND_S, interval_s=0.3, what=f"{old.name} stepping down")
    acted = [line for line in c.log_since(old.name, "signal SIGCONT").splitlines()
             if any(f"event={e} " in line for e in ("cs.failed", "rebuild.started", "mds.storm_brake"))]
    assert not acted, f"{old.name}, woken from a {pause_s} s pause, acted as leader on its own silence:\n" + \
        "\n".join(acted)
    c.wait_healthy(timeout_s=60)


# ---- F4 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["both", "in"])
def test_f4_an_mds_leader_partitioned_from_the_majority_never_acknowledges_and_does_not_diverge(
        row: Row, direction: str) -> None:
    """F4: cut the MDS leader's host off from every other host but client-2's (nftables in its
    namespace: ``both`` directions, or ``in`` only: it still sends but hears nothing), and
    cut client-2 off from the majority's MDS, so client-2 is a client on the minority side.
    For F4_PARTITION_S (12 s; 30 s in make soak): the majority elects a leader within the bound and client-1's workload goes on;
    client-2 gets no acknowledgement at all. Then heal: the old leader follows, and every MDS
    ends at one state hash; no acknowledged op is lost on either side.

    Client-2 was silent to the majority for longer than ``session_expire_s`` (6 s here), so
    the leader expired its session: after the heal its operations fail with ESTALE ("remount",
    vstore/metadata/service.py), never with a wrong answer, and the row remounts it. That is
    the documented behaviour, so ESTALE is the one error allowed, on client-2 only. An op
    client-2 had in flight at the cut may still have been committed by the majority: its
    retry after the heal must hear that it was (a create that "failed" with EEXIST, a rename
    with ENOENT, broke the history here once, through the kernel's ESTALE retry)."""
    c = row.cluster
    work = row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=20)
    old = c.wait_leader()
    majority = [m for m in c.mds_names if m != old.name]
    work.expect_errors("client-2", {errno.ESTALE})
    cut_at, cut_wall = time.monotonic(), time.time()
    c.partition(old.name, [n for n in c.nodes if n not in (old.name, "client-2")], direction)
    c.partition("client-2", majority, "both")
    new = c.wait_leader(not_=old.name, timeout_s=LEADER_BOUND_S)
    elected_s = c.elected_after_s(new, cut_wall)
    assert new.name in majority
    row.wait_progress("client-1's workload going on on the majority side", after=time.monotonic(),
                      client="client-1")
    time.sleep(max(0.0, cut_at + F4_PARTITION_S - time.monotonic()))   # the partition's length: fault timing
    # anything invoked after the cut (plus a second for ops already committed then) and
    # answered before the heal was acknowledged by the minority side
    healed_at = time.monotonic()
    minority_acks = (work.meta_acked(client="client-2", invoked_after=cut_at + 1.0, before=healed_at)
                     + sum(1 for w in work.writes if w.client == "client-2" and w.invoke > cut_at + 1.0
                           and w.acked_at is not None and w.acked_at < healed_at))
    c.heal()
    assert minority_acks == 0, f"the minority side acknowledged {minority_acks} ops during the partition"
    row.wait_progress("client-1's workload going on after the heal", after=time.monotonic(), client="client-1",
                      acked=5, meta=5)
    work.stop()
    c.remount("client-2")
    print(f"F4 ({direction}): {old.name} cut off for {F4_PARTITION_S} s; {new.name} leads at term {new.term}, "
          f"elected after {_s(elected_s)}; client-1 acknowledged {work.acked(client='client-1', after=cut_at)} writes "
          f"meanwhile, client-2 none; client-2 met {len(work.expected_errors)} ESTALE after the heal "
          f"({describe(work.expected_errors, 3)}); client-1 was held {work.stall_s(cut_at, client='client-1'):.1f} s "
          f"at most")
    MEASURED.append({"fault": f"F4-{direction}", "new_leader_s": elected_s,
                     "io_resumed_after_s": round(work.stall_s(cut_at, client="client-1"), 2)})
    _finish(row)


# ---- F5 ---------------------------------------------------------------------------------------

def test_f5_a_lossy_network_with_connection_resets_breaks_nothing_and_starts_no_election_storm(row: Row) -> None:
    """F5: for ``F5_S`` seconds every chunkserver host loses 10 % of its UDP (the heartbeats)
    and the client hosts have 3 ‰ of their TCP segments answered with a reset (connections
    break under pipelined calls, which are retried and applied once); then, for 1.5 s, the
    MDS leader's host drops half of all its packets (etcd's DropPeerNetwork). Safety holds
    (the usual checks), the leader changes at most once, and no chunkserver is declared
    failed for the lost heartbeats."""
    c = row.cluster
    work = row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=10)
    leader = c.wait_leader()
    marks = {n: (c.logs / f"{n}.log").stat().st_size for n in c.nodes}
    started = time.monotonic()
    everyone = list(c.nodes)
    for cs in c.cs_names:
        c.flaky(cs, c.mds_names, drop_percent=10, udp_only=True)
    for client in c.client_names:
        c.flaky(client, [n for n in everyone if n not in c.client_names], reset_permille=3)
    row.wait_progress("the workload going on over the lossy network", after=time.monotonic(), acked=15, meta=10)
    time.sleep(max(0.0, started + F5_S - 1.5 - time.monotonic()))   # the fault's length: fault timing
    c.flaky(leader.name, [n for n in everyone if n != leader.name], drop_percent=50)
    time.sleep(1.5)
    c.heal()
    row.wait_progress("the workload going on after the heal", after=time.monotonic(), acked=5, meta=5)
    now = c.wait_leader()
    logs = {n: (c.logs / f"{n}.log").read_bytes()[marks[n]:].decode(errors="replace") for n in c.nodes}
    failed = [line for n in c.mds_names for line in logs[n].splitlines() if "event=cs.failed " in line]
    assert not failed, "chunkservers declared failed for 10 % heartbeat loss:\n" + "\n".join(failed)
    resets = sum(logs[n].count("event=net.connection_closed ") for n in c.client_names)
    assert now.term - leader.term <= 1, f"{now.term - leader.term} leader elections in the row (at most 1)"
    stall = work.stall_s(started, window_s=F5_S)
    print(f"F5: {F5_S} s of 10 % heartbeat loss and TCP resets, 1.5 s of 50 % loss at the leader {leader.name}: "
          f"terms {leader.term} -> {now.term}; {resets} connection breaks logged by the clients; the application "
          f"was held {stall:.1f} s at most")
    MEASURED.append({"fault": "F5", "seconds": F5_S, "leader_changes": now.term - leader.term,
                     "io_resumed_after_s": round(stall, 2)})
    _finish(row)


# ---- F6 ---------------------------------------------------------------------------------------

def test_f6_killing_a_chunkserver_mid_write_loses_no_fsynced_byte_and_its_stale_replica_is_never_served(
        row: Row) -> None:
    """F6: kill -9 a chunkserver that holds replicas of the files being written. The writers
    see no error (the client repairs the chain and resends), fsync-acknowledged bytes survive;
    the chunkserver comes back holding old versions, which are never served (both mounts read
    every file right), and replication is restored: 3 replicas on distinct hosts, scrub clean."""
    c = row.cluster
    work = row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=10)
    holders = c.hosts_holding(f"/{row.top}")
    victim = row.rng.choice(holders)
    logs_before = {n: (c.logs / f"{n}.log").stat().st_size for n in c.client_names}
    killed_at = time.monotonic()
    c.kill(victim)
    row.wait_progress(f"the workload going on with {victim} dead", after=time.monotonic(), acked=15, meta=5)
    time.sleep(row.rng.uniform(2, 4))   # fault timing: back before it is declared failed (8 s), or not
    c.restart(victim)
    row.wait_progress(f"the workload going on with {victim} back", after=time.monotonic(), acked=5, meta=3)

    def repaired() -> bool:
        return any("client.chain_repair" in (c.logs / f"{n}.log").read_bytes()[logs_before[n]:].decode(errors="replace")
                   for n in c.client_names)
    assert repaired(), f"no write met the dead chunkserver {victim} (no client.chain_repair): the row proved nothing"
    stall = work.stall_s(killed_at)
    print(f"F6: {victim} (of {holders}) killed, restarted {time.monotonic() - killed_at:.1f} s later; "
          f"{work.spanning(killed_at)} ops in flight at the kill rode through, held {stall:.1f} s at most")
    _finish(row)
    MEASURED.append({"fault": "F6", "victim": victim, "io_resumed_after_s": round(stall, 2),
                     "full_replication_after_s": round(time.monotonic() - killed_at, 1)})


def test_f6_a_copy_ordered_to_a_chunkserver_that_just_died_does_not_block_writes(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """F6, the rebuild's side. Three chunkservers, three replicas: kill -9 one, then write and
    close the file at once. The write's chain repair drops the dead replica, the close ends the
    write lease, and within the second the MDS still counts the dead server as online, the
    planner orders the missing copy onto it, the only server without one. The next write of
    that chunk must still succeed (two live replicas, DESIGN.md §6: a CS failure is ridden
    through); the copy can wait. A client deadline of 10 s keeps the row short: the wait it
    exposes is order_timeout_s, 120 s."""
    _require_nemesis()
    seed = int(os.environ.get("VSTORE_NEMESIS_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"nemesis seed {seed} (unused: this row has no random choice)")
    with NetnsCluster(tmp_path / "c", mds=1, cs=3, clients=1, client_deadline_s=10) as c:
        f = c.mounts["client-1"] / "f"
        data = random.Random(seed).randbytes(MIB)
        with open(f, "wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        # the first write's leases end (write_lease_s + capability_skew_s): a copy may be ordered at once
        time.sleep(c.timers["write_lease_s"] + c.timers["capability_skew_s"] + 1)
        victim = c.hosts_holding("/f")[0]
        c.kill(victim)
        with open(f, "r+b") as fp:   # the chain repair drops the victim; the close releases the lease
            fp.write(data[:4096])
            fp.flush()
            os.fsync(fp.fileno())
        time.sleep(3)   # the planner's round (every second) has run while the victim still looked online
        started = time.monotonic()
        try:
            with open(f, "r+b") as fp:
                fp.seek(4096)
                fp.write(data[4096:8192])
                fp.flush()
                os.fsync(fp.fileno())
        except OSError as exc:
            busy = [line for line in c.log_since("client-1", "mount").splitlines() if "being copied" in line]
            raise AssertionError(f"a write with two live replicas failed after {time.monotonic() - started:.1f} s "
                                 f"({exc!r}); the MDS answered Busy {len(busy)} times: {busy[-1:]}") from exc
        assert f.read_bytes() == data


# ---- F7 ---------------------------------------------------------------------------------------

def test_f7_a_stopped_chunkserver_is_left_mid_write_and_its_copies_are_stale_by_version_when_it_wakes(
        row: Row) -> None:
    """F7: SIGSTOP a chunkserver holding replicas of the files being written (a zombie: its
    sockets stay open, nothing answers) for longer than ``cs_failed_after_s``, then SIGCONT.
    The writers go on without an error (the client's liveness probe leaves the silent server
    within seconds and repairs the chain, bumping the version); the MDS declares it failed and
    rebuilds. When it wakes, every chunk it is no longer listed for is refused by it at the
    current version (a read forced to it gets STALE_VERSION or NOT_FOUND, never bytes), no
    chunk's version went backwards, and the row ends with the usual checks."""
    c = row.cluster
    work = row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=10)
    before = {ch["chunk_id"]: ch["version"] for chunks in c.replicas(f"/{row.top}").values() for ch in chunks}
    victim = row.rng.choice(c.hosts_holding(f"/{row.top}"))
    marks = {n: (c.logs / f"{n}.log").stat().st_size for n in c.mds_names}
    stopped_at = time.monotonic()
    c.stop(victim)
    row.wait_progress(f"the workload going on with {victim} stopped", after=time.monotonic(), acked=15, meta=5)
    time.sleep(max(0.0, stopped_at + F7_PAUSE_S - time.monotonic()))   # the pause's length: fault timing
    c.cont(victim)
    forced = c.force_read(victim, f"/{row.top}")
    served = [(path, ch) for path, chunks in forced.items() for ch in chunks
              if not ch["listed"] and ch["result"] == "ok"]
    assert not served, f"{victim}, woken, served chunks it is no longer a replica of: {served[:5]}"
    unlisted = sum(1 for chunks in forced.values() for ch in chunks if not ch["listed"])
    row.wait_progress(f"the workload going on with {victim} awake", after=time.monotonic(), acked=5, meta=3)
    after = {ch["chunk_id"]: ch["version"] for chunks in c.replicas(f"/{row.top}").values() for ch in chunks}
    backwards = {cid: (v, after[cid]) for cid, v in before.items() if cid in after and after[cid] < v}
    assert not backwards, f"chunk versions went backwards (before, after): {backwards}"
    stall = work.stall_s(stopped_at)
    print(f"F7: {victim} stopped {F7_PAUSE_S} s; the application was held {stall:.1f} s at most; woken, it "
          f"refused all {unlisted} chunks it no longer holds for the MDS")
    _finish(row)
    rebuilds = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                for n in c.mds_names for line in (c.logs / f"{n}.log").read_bytes()[marks[n]:].decode(
                    errors="replace").splitlines() if "event=rebuild.finished " in line]
    MEASURED.append({"fault": "F7", "victim": victim, "pause_s": F7_PAUSE_S, "io_resumed_after_s": round(stall, 2),
                     "full_replication_after_s": round(time.monotonic() - stopped_at, 1),
                     "rebuilds": [{k: r.get(k) for k in ("seconds", "copied_mib", "mib_s")} for r in rebuilds]})


# ---- F20 --------------------------------------------------------------------------------------

def test_f20_a_dead_mds_leader_is_replaced_by_a_membership_change_under_load(row: Row) -> None:
    """F20: kill -9 the MDS leader (F1) and, while the workload runs on the new leader,
    replace it as an operator would: ``vstore rm-node`` (a configuration change with one
    voter down), wipe its data dir, ``vstore add-node --role mds`` at the same address (a
    learner, promoted once caught up). Each change completes; every member ends with the same
    configuration (three voters) and state hash; the history holds (the usual checks)."""
    c = row.cluster
    row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=10)
    old = c.wait_leader()
    killed_at = time.monotonic()
    c.kill(old.name)
    new = c.wait_leader(not_=old.name, timeout_s=LEADER_BOUND_S)
    row.wait_progress("the workload going on under the new leader", after=time.monotonic(), acked=10, meta=5)
    removed, added = c.replace_mds(old.name, join=new.name)
    row.wait_progress(f"the workload going on after {old.name} was replaced", after=time.monotonic(), acked=5,
                      meta=5)
    c.wait_healthy(timeout_s=90, what=f"{old.name} promoted to voter again")
    members = {}
    for status in (c.status_json().get("mds") or {}).values():
        if status:
            raft = status.get("raft") or {}
            members[status["node_id"]] = (sorted(raft.get("voters") or []), sorted(raft.get("learners") or []),
                                          sorted(status.get("members") or {}))
    assert len(members) == 3 and len({str(v) for v in members.values()}) == 1, \
        f"the members' configurations differ: {members}"
    voters, learners, _ = next(iter(members.values()))
    assert voters == sorted(c.mds_names) and not learners, f"the configuration after the change: {members}"
    print(f"F20: {old.name} killed, removed and added again in {time.monotonic() - killed_at:.1f} s while "
          f"{new.name} led; rm-node: {removed.strip().splitlines()[-1:]}; add-node: {added.strip().splitlines()[-1:]}")
    _finish(row)


# ---- F16 --------------------------------------------------------------------------------------

def test_f16_a_client_killed_mid_write_leaves_its_fsynced_prefix_and_its_lease_moves_on_session_expiry(
        row: Row) -> None:
    """F16: kill -9 client-1's mount process while it writes (then ``fusermount3 -u -z``).
    From client-2: every byte client-1 had fsynced is there, nothing no one wrote ever is;
    client-1's exclusive-writer lease on a container image (``exclusive_write`` on its
    directory) refuses client-2 with EBUSY until client-1's session expires, then client-2
    opens it for writing and reads what client-1 had fsynced."""
    c = row.cluster
    a, b = c.mounts["client-1"], c.mounts["client-2"]
    image_dir = a / row.top / "images"
    image_dir.mkdir(parents=True)
    os.setxattr(image_dir, "vstore.exclusive_write", b"1")
    image = row.rng.randbytes(MIB + 4321)
    fd = os.open(image_dir / "ct.img", os.O_CREAT | os.O_RDWR, 0o600)
    row.cleanup(lambda: _close_quietly(fd))
    os.write(fd, image)
    os.fsync(fd)

    def open_on_b() -> int:
        try:
            os.close(os.open(b / row.top / "images" / "ct.img", os.O_RDWR))
            return 0
        except OSError as exc:
            return exc.errno or -1
    assert open_on_b() == errno.EBUSY, "client-2 opened an image client-1 holds for writing"
    work = row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=20)
    work.mark_dead("client-1")
    killed_at = time.monotonic()
    c.kill("client-1")
    c.detach("client-1")
    assert open_on_b() == errno.EBUSY, "client-1's lease went before its session could have expired"
    got = wait_until(lambda: open_on_b() == 0, timeout_s=30, interval_s=0.5,
                     what="client-2 getting the image once client-1's session expired")
    moved_s = time.monotonic() - killed_at
    assert got
    assert (b / row.top / "images" / "ct.img").read_bytes() == image
    _close_quietly(fd)
    theirs = [p for p in work.files if "-client-1-" in p]
    problems = work.check_data("client-2", b, theirs)
    assert not problems, f"client-1's files read through client-2:\n  {describe(problems)}"
    print(f"F16: client-1 killed; its lease moved to client-2 after {moved_s:.1f} s; "
          f"{sum(1 for w in work.writes if w.client == 'client-1' and w.acked_at)} of client-1's writes were "
          f"acknowledged, {sum(1 for w in work.writes if w.client == 'client-1' and not w.acked_at)} not")
    _finish(row, dead=("client-1",))


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


# ---- the migration scenario (issue 9) -----------------------------------------------------------

def _run(*argv: str, timeout_s: float = 300) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while block := fp.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def test_migration_a_checkpoint_and_a_container_disk_open_on_another_host_after_a_chunkserver_and_the_leader_die(
        row: Row, tmp_path: Path) -> None:
    """Live migration (issue 9): on client host A, a checkpoint directory (50 small ``*.img``
    files and two ``pages-*.img`` files) written sequentially and fsynced, and a container
    disk: ext4 made on an image file in the mount, loop-mounted, files written, ``sync``,
    unmounted. Then the chunkserver host holding a replica of the pages and the MDS leader are
    killed together, and host B opens both at once, without waiting for the rebuild: the same
    bytes (sha256 recorded at A), ``e2fsck -fn`` clean, and the disk's files intact."""
    require_tool("mkfs.ext4", "the container disk")
    require_tool("e2fsck", "the container disk")
    require_tool("losetup", "the container disk")
    c = row.cluster
    a, b = c.mounts["client-1"], c.mounts["client-2"]
    ckpt = a / row.top / "ckpt"
    ckpt.mkdir(parents=True)
    digests: dict[str, str] = {}
    started = time.monotonic()
    names = [f"core-{n:02d}.img" for n in range(50)] + ["pages-1.img", "pages-2.img"]
    for name in names:
        size = PAGES_IMG_BYTES if name.startswith("pages-") else row.rng.choice([512, 4096, 65_536, 300_000])
        digest = hashlib.sha256()
        with open(ckpt / name, "wb") as fp:
            left = size
            while left:
                block = row.rng.randbytes(min(left, MIB))
                fp.write(block)
                digest.update(block)
                left -= len(block)
            fp.flush()
            os.fsync(fp.fileno())
        digests[f"ckpt/{name}"] = digest.hexdigest()
    written_s = time.monotonic() - started

    image = a / row.top / "disk.img"
    with open(image, "wb") as fp:
        fp.truncate(64 * MIB)
    _run("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", str(image))
    target = tmp_path / "rootfs"
    target.mkdir()
    loop = _run("losetup", "--find", "--show", str(image)).strip()
    row.cleanup(lambda: subprocess.run(["losetup", "-d", loop], capture_output=True))
    _run("mount", "-t", "ext4", loop, str(target))
    row.cleanup(lambda: subprocess.run(["umount", "-l", str(target)], capture_output=True))
    manifest: dict[str, str] = {}
    for n in range(40):
        data = row.rng.randbytes(row.rng.choice([100, 4096, 70_000, 400_000]))
        (target / f"file-{n}").write_bytes(data)
        manifest[f"file-{n}"] = hashlib.sha256(data).hexdigest()
    _run("sync")
    _run("umount", str(target))
    _run("losetup", "-d", loop)
    fd = os.open(image, os.O_RDONLY)
    try:
        os.fsync(fd)   # what the loop device wrote into the mount's page cache, on the chunkservers now
    finally:
        os.close(fd)
    digests["disk.img"] = _sha256(image)

    holders = c.hosts_holding(f"/{row.top}/ckpt/pages-1.img")
    victim = row.rng.choice(holders)
    leader = c.wait_leader()
    killed_at = time.monotonic()
    c.kill(victim)
    c.kill(leader.name)
    for rel, digest in digests.items():
        assert _sha256(b / row.top / rel) == digest, f"{rel} read on host B differs from what host A wrote"
    fsck = subprocess.run(["e2fsck", "-fn", str(b / row.top / "disk.img")], capture_output=True, text=True,
                          timeout=300)
    assert fsck.returncode == 0, f"e2fsck -fn on host B: {fsck.returncode}\n{fsck.stdout}\n{fsck.stderr}"
    loop_b = _run("losetup", "--find", "--show", "--read-only", str(b / row.top / "disk.img")).strip()
    row.cleanup(lambda: subprocess.run(["losetup", "-d", loop_b], capture_output=True))
    _run("mount", "-t", "ext4", "-o", "ro", loop_b, str(target))
    try:
        for name, digest in manifest.items():
            assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest, name
    finally:
        _run("umount", str(target))
        _run("losetup", "-d", loop_b)
    opened_s = time.monotonic() - killed_at
    c.restart(victim)
    c.restart(leader.name)
    print(f"migration: {len(names)} checkpoint files ({2 * PAGES_IMG_BYTES // MIB} MiB of pages) written in "
          f"{written_s:.1f} s; {victim} and the leader {leader.name} killed; host B verified everything and "
          f"fsck'd the disk {opened_s:.1f} s later; {c.converge(f'/{row.top}', timeout_s=180)}")


# ---- the thrash -------------------------------------------------------------------------------

def _thrash_faults(c: NetnsCluster, rng: random.Random) -> list[tuple[str, Callable[[], Callable[[], None]]]]:
    """The thrash's faults (RELIABILITY.md §7): each injects and returns its heal. Never more
    than a minority of MDS or one chunkserver host down at a time."""
    def leader() -> str:
        return c.wait_leader().name

    def kill_mds() -> Callable[[], None]:
        name = leader()
        c.kill(name)
        return lambda: c.restart(name)

    def pause_mds() -> Callable[[], None]:
        name = leader()
        c.stop(name)
        return lambda: c.cont(name)

    def partition_mds() -> Callable[[], None]:
        name = leader()
        c.partition(name, [n for n in c.nodes if n != name], rng.choice(["both", "in", "out"]))
        return c.heal

    def kill_cs() -> Callable[[], None]:
        name = rng.choice(c.cs_names)
        c.kill(name)
        return lambda: c.restart(name)

    def pause_cs() -> Callable[[], None]:
        name = rng.choice(c.cs_names)
        c.stop(name)
        return lambda: c.cont(name)

    def flaky() -> Callable[[], None]:
        for cs in c.cs_names:
            c.flaky(cs, c.mds_names, drop_percent=10, udp_only=True)
        for client in c.client_names:
            c.flaky(client, [n for n in c.nodes if n not in c.client_names], reset_permille=2)
        return c.heal

    return [("F1 kill the MDS leader", kill_mds), ("F3 pause the MDS leader", pause_mds),
            ("F4 partition the MDS leader", partition_mds), ("F6 kill a chunkserver", kill_cs),
            ("F7 pause a chunkserver", pause_cs), ("F5 lossy network", flaky)]


@pytest.mark.timeout(THRASH_S + 420)
def test_thrash_random_faults_one_at_a_time_keep_every_invariant(row: Row) -> None:
    """The Ceph/Jepsen-style thrash (RELIABILITY.md §7): for ``VSTORE_THRASH_S`` seconds (60
    in the default suite; ``make soak`` runs it long), a fault drawn from F1 F3 F4 F5 F6 F7
    with the row's seed, held 2-6 s, healed, and the next only once the workload has made
    progress again. The usual checks at the end (every invariant over the whole run). Faults
    that outlast ``session_expire_s`` are not drawn: a partitioned or paused client-side
    session is F4's subject, with its own allowed ESTALE."""
    c = row.cluster
    work = row.start_workload()
    row.wait_progress("the workload under way", after=0, acked=20, meta=10)
    faults = _thrash_faults(c, row.rng)
    ends = time.monotonic() + THRASH_S
    done: list[str] = []
    while time.monotonic() < ends:
        what, inject = row.rng.choice(faults)
        at = time.monotonic()
        heal = inject()
        time.sleep(row.rng.uniform(2, 6))   # fault timing
        heal()
        row.wait_progress(f"the workload going on after '{what}'", after=time.monotonic(), acked=3, meta=3,
                          timeout_s=90)
        done.append(f"{what} ({work.stall_s(at, window_s=6):.1f} s held)")
        MEASURED.append({"fault": f"thrash {what}", "io_resumed_after_s": round(work.stall_s(at, window_s=6), 2)})
    c.restore()
    print(f"thrash ({THRASH_S} s, seed {row.seed}): {len(done)} faults: " + "; ".join(done))
    _finish(row)
