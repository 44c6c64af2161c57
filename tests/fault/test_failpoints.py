"""L0 failpoints in real processes (vstore/failpoints.py; RELIABILITY.md §7 rows F1, F13, F14).

Each test starts real ``vstore serve`` processes, one of them with ``VSTORE_FAILPOINTS`` in
its environment (and ``[node] failpoints = true`` in every config), and checks what the row
says vstore must do:

* F14, fsync EIO on one chunkserver: the writer sees no error, the replica is dropped and
  never listed while its disk fails, the data reads back, and the chunk is rebuilt on that
  chunkserver once its disk works again.
* F14, read EIO on one chunkserver: reads return the right bytes from another replica.
* F1, a crash of the MDS leader in its persist step (and after it), and of a follower in
  its apply transaction, under a metadata load through exactly-once lanes: the client sees
  no error, every acknowledged operation is there exactly once, and all MDS reach equal
  state hashes at the same applied index after the crashed one restarts without the
  failpoint. F14, a follower whose Raft log write fails: it exits 1 and catches up the same
  way when restarted.
* F13, a slow fsync on one chunkserver, and a slow log write on the MDS leader: no error,
  no chunkserver declared failed, no leader change.
* A node with the variable set but a config that does not allow failpoints refuses to
  start (exit 2, one line); so does a spec naming an unknown point.

Each test proves its point fired: the process's exit status is FAILPOINT_EXIT_CODE, or its
log shows ``failpoint.fired``. Logs of every process are printed when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.mdsload import WriterLoad
from tests.harness.fsprocs import FsCluster, cs_config, read_files, write_files
from tests.harness.mdsprocs import MdsProcCluster
from tests.harness.procs import vstore
from tests.harness.wait import wait_for
from vstore.client.mds_link import MdsLink
from vstore.failpoints import ENV_VAR, FAILPOINT_EXIT_CODE, POINTS
from vstore.metadata.fsm.schema import ROOT_INODE
from vstore.wire import mds as w

KIB = 1024
MIB = 1024 * KIB


def log_of(cluster: MdsProcCluster, name: str) -> str:
    return (cluster.group.log_dir / f"{name}.log").read_text(errors="replace")


def fired(cluster: MdsProcCluster, name: str, point: str) -> int:
    """How often ``point`` acted in process ``name`` (its log's ``failpoint.fired`` lines)."""
    return sum(1 for line in log_of(cluster, name).splitlines()
               if "event=failpoint.fired" in line and f"point={point} " in line + " ")


def exit_code(cluster: MdsProcCluster, name: str) -> int | None:
    popen = cluster.group.procs[name].popen
    assert popen is not None
    return popen.poll()


# ---- chunkservers (one MDS, three chunkservers on three hosts) ---------------------------------------


@contextlib.asynccontextmanager
async def chunk_cluster(tmp_path: Path, request: pytest.FixtureRequest, env: dict[str, dict[str, str]],
                        cs_extra: dict[str, int] | None = None) -> AsyncIterator[FsCluster]:
    """One MDS and cs-1..cs-3, each started with ``env.get(name)``; every chunk of 1 MiB has
    a replica on each of them (policy 3:2, three hosts)."""
    cluster = FsCluster(tmp_path, ("m1",), chunk_bytes=1 * MIB, failpoints=True, cs_extra=cs_extra,
                        mds_extra={"cs_offline_after_s": 2, "cs_failed_after_s": 30, "write_lease_s": 2,
                                   "capability_skew_s": 1})
    async with cluster.serving(dump_logs_if=lambda: call_failed(request.node)):
        for name in cluster.cs_names:
            cluster.start_cs(name, env=env.get(name))
        await cluster.cs_online()
        yield cluster


async def restart_cs(cluster: FsCluster, name: str, env: dict[str, str] | None = None) -> None:
    """SIGTERM one chunkserver, start it again (with ``env`` for this run only), and wait
    until the new process serves: registered again, so the MDS hands out its new address
    (until then the MDS still counts the old process online, and a reader would fail over
    from a refused connection, not from the failpoint)."""
    cluster.group.kill(name, signal.SIGTERM)
    cluster.start_cs(name, env=env)
    pid = cluster.group.procs[name].pid
    await wait_for(lambda: f"event=cs.started node={name} " in log_of(cluster, name)
                   and f" pid={pid}" in log_of(cluster, name), timeout_s=30, what=f"{name} (pid {pid}) serving")


def cs_id_of(cluster: FsCluster, name: str) -> int:
    return int((cluster.root / name / "cs-id").read_text())


async def chunk_maps(link: MdsLink, paths: list[str]) -> dict[str, list[w.ChunkInfo]]:
    """Each file's chunks as the MDS leader lists them (replicas in chain order)."""
    out = {}
    for path in paths:
        inode = ROOT_INODE
        for part in path.strip("/").split("/"):
            inode = (await link.lookup(inode, part.encode())).inode
        reply = await link.call(w.ChunkMapRequest(uid=0, gid=0, inode=inode, first_index=0, count=64))
        assert isinstance(reply, w.ChunkMapReply)
        out[path] = list(reply.chunks)
    return out


def replica_ids(maps: dict[str, list[w.ChunkInfo]]) -> list[list[int]]:
    return [[r.cs_id for r in chunk.replicas] for chunks in maps.values() for chunk in chunks]


FILES = {"/img/a": os.urandom(MIB + 300 * KIB), "/img/b": os.urandom(200 * KIB + 17)}


@pytest.mark.timeout(150)
async def test_an_fsync_eio_drops_the_replica_and_the_writer_sees_no_error(
        tmp_path: Path, request: pytest.FixtureRequest, expect_log: Callable[..., None]) -> None:
    """F14: every fsync on cs-1 fails with EIO. Method: write and fsync two files (three
    chunks, each with a replica on cs-1) through the client library; then, while cs-1's
    disk still fails, wait for the leader to order a copy back onto cs-1 and see it fail;
    then restart cs-1 without the failpoint and wait for the rebuild. Goal: no error at the
    writer, the data intact, cs-1 never listed for a chunk while its fsync fails (a replica
    whose fsync failed is never counted as good: RELIABILITY.md §4.2), 3 replicas again
    once it works."""
    expect_log("client.chain_repair")  # the writer's repair around cs-1, once per chunk
    async with chunk_cluster(tmp_path, request, {"cs-1": {ENV_VAR: "cs.fsync=error(EIO)"}}) as fs:
        bad = cs_id_of(fs, "cs-1")
        config = fs.client_config("app")
        await write_files(config, FILES)
        assert await read_files(config, list(FILES)) == FILES

        link = await fs.link()
        listed = replica_ids(await chunk_maps(link, list(FILES)))
        assert len(listed) == 3
        assert all(bad not in ids and len(ids) == 2 for ids in listed), listed
        assert fired(fs, "cs-1", "cs.fsync") >= 3, "the failpoint did not fail cs-1's fsyncs"
        assert "event=cs.store.fsync_failed" in log_of(fs, "cs-1")

        async def copy_to_bad_failed() -> bool:
            status = await fs.status("m1")
            return status is not None and status.chunks.get("orders_failed", 0) >= 1
        await wait_for(copy_to_bad_failed, timeout_s=40, what="a rebuild copy onto cs-1 that failed its fsync")
        listed = replica_ids(await chunk_maps(link, list(FILES)))
        assert all(bad not in ids for ids in listed), f"a replica on cs-1 is listed although its fsync failed: {listed}"

        await restart_cs(fs, "cs-1")  # without the failpoint: its disk works again

        seen: list[object] = []

        async def rebuilt() -> list[list[int]] | None:
            ids = replica_ids(await chunk_maps(link, list(FILES)))
            seen[:] = [ids, (await fs.status("m1")).chunks]  # type: ignore[union-attr]
            return ids if all(len(r) == 3 and bad in r for r in ids) else None
        await wait_for(rebuilt, timeout_s=60,
                       what=lambda: f"every chunk rebuilt to 3 replicas, one on cs-1 (replicas, chunk counters: {seen})")
        assert await read_files(config, list(FILES)) == FILES


@pytest.mark.timeout(120)
async def test_a_read_eio_on_one_chunkserver_reads_the_bytes_from_another(
        tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    """F14: reads fail with EIO on the chunkserver a reader asks first for one chunk.
    Method: write two files, restart the first replica of the first chunk with
    ``cs.read=error(EIO)``, read both files with a fresh client. Goal: the right bytes, the
    reader fell back from exactly that chunkserver, and its log shows the read it failed.
    The background scrubber is off: it would find the failing disk first and have the MDS
    drop the replica, and the reader would never ask it."""
    async with chunk_cluster(tmp_path, request, {}, cs_extra={"scrub_rate_bytes_per_s": 0}) as fs:
        config = fs.client_config("app")
        await write_files(config, FILES)
        link = await fs.link()
        first = (await chunk_maps(link, ["/img/a"]))["/img/a"][0].replicas[0].cs_id
        victim = fs.cs_name_of(first)
        await restart_cs(fs, victim, env={ENV_VAR: "cs.read=error(EIO)"})
        caplog.clear()
        assert await read_files(config, list(FILES)) == FILES
        fallbacks = [r for r in caplog.records if r.getMessage() == "client.read_fallback"]
        assert any(getattr(r, "cs_id", None) == first for r in fallbacks), f"no fallback from cs {first}: {fallbacks}"
        assert fired(fs, victim, "cs.read") >= 1, f"{victim} never failed a read: the test proved nothing"


@pytest.mark.timeout(120)
async def test_a_slow_fsync_on_one_chunkserver_slows_writes_without_errors_or_failures(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """F13: every fsync on cs-2 takes 2 s longer. Goal: writes complete with no error and no
    chain repair (the log checker fails the test on the client's chain_repair warning),
    every chunk keeps its 3 replicas, and the MDS never considers cs-2 offline."""
    async with chunk_cluster(tmp_path, request, {"cs-2": {ENV_VAR: "cs.fsync=sleep(2000)"}}) as fs:
        config = fs.client_config("app")
        files = {"/slow/a": os.urandom(300 * KIB), "/slow/b": os.urandom(5 * KIB)}
        await write_files(config, files)
        assert await read_files(config, list(files)) == files
        link = await fs.link()
        assert all(len(ids) == 3 for ids in replica_ids(await chunk_maps(link, list(files))))
        assert fired(fs, "cs-2", "cs.fsync") >= 2
        status = await fs.status("m1")
        assert status is not None and status.chunks.get("cs_online") == 3
        mds_log = log_of(fs, "m1")
        assert "event=cs.offline" not in mds_log and "event=cs.failed" not in mds_log


# ---- metadata servers (three MDS) ----------------------------------------------------------------


class MetadataLoad(WriterLoad):
    """Writers that mkdir and create ``<writer>-<n>`` entries in one directory, recording
    what was acknowledged (name -> inode)."""

    def __init__(self, links: list[MdsLink], directory: int, writers_per_link: int = 4) -> None:
        self.acked: dict[bytes, int] = {}
        super().__init__(links, directory, writers_per_link)

    async def step(self, link: MdsLink, name: str, n: int) -> None:
        entry = f"{name}-{n}".encode()
        attr = await (link.mkdir(self.directory, entry) if n % 3 == 0 else link.create(self.directory, entry))
        self.acked[entry] = attr.inode

    def count(self) -> int:
        return len(self.acked)

    async def check(self, link: MdsLink) -> None:
        """Every acknowledged entry exactly once, with the inode its reply named; nothing else."""
        entries = await link.readdir(self.directory)
        names = [e.name for e in entries]
        assert len(names) == len(set(names))
        found = {e.name: e.attr.inode for e in entries}
        missing = set(self.acked) - set(found)
        extra = set(found) - set(self.acked)
        assert not missing, f"acknowledged but missing: {sorted(missing)[:10]}"
        assert not extra, f"present but never acknowledged: {sorted(extra)[:10]}"
        assert found == self.acked, "an entry points at another inode than its reply named"


@contextlib.asynccontextmanager
async def mds_cluster(tmp_path: Path, request: pytest.FixtureRequest, **kwargs) -> AsyncIterator[MdsProcCluster]:  # type: ignore[no-untyped-def]
    cluster = MdsProcCluster(tmp_path, failpoints=True, **kwargs)
    try:
        yield cluster
    finally:
        await cluster.close()
        if call_failed(request.node) and cluster.group.procs:
            print(cluster.group.dump_logs())


async def start_with_leader(cluster: MdsProcCluster, target: str, env: dict[str, str]) -> None:
    """Start every MDS so that ``target``, the only one started with ``env``, leads.

    Start ``target`` and one other; if the other wins, let ``target`` hold everything it
    applied, kill it and start the third: the third lacks the winner's entries, so its log
    is behind ``target``'s and only ``target`` can be elected (Raft §5.4.1). Then the last
    one starts. Deterministic, with at most one extra election."""
    first, second = [n for n in cluster.ids if n != target]
    cluster.start(target, env=env)
    cluster.start(first)
    if await cluster.leader() != target:
        await cluster.converged()
        cluster.kill(first)
        cluster.start(second)
        assert await cluster.leader() == target
        cluster.start(first)
    else:
        cluster.start(second)


async def crashed(cluster: MdsProcCluster, name: str, load: MetadataLoad, *, code: int = FAILPOINT_EXIT_CODE,
                  timeout_s: float = 60.0) -> int:
    """Wait for ``name`` to end with exit status ``code`` (a panic's, or 1 for a fatal
    storage error); returns the operations acknowledged by then."""
    await wait_for(lambda: exit_code(cluster, name) is not None or load.errors, timeout_s=timeout_s,
                   what=f"{name} ended by its failpoint (acknowledged so far: {len(load.acked)})")
    acked = len(load.acked)
    assert exit_code(cluster, name) == code, f"{name} exited {exit_code(cluster, name)}, expected {code}"
    log = log_of(cluster, name)
    if code == FAILPOINT_EXIT_CODE:
        assert "event=failpoint.panic" in log
    else:
        assert "event=raft.fatal" in log and "(failpoint " in log, "not the injected error's fatal stop"
    return acked


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", ["raft.before_persist", "raft.after_persist_before_send"])
async def test_a_leader_crashing_at_its_persist_step_loses_and_duplicates_nothing(
        tmp_path: Path, request: pytest.FixtureRequest, point: str) -> None:
    """F1 (L0): the MDS leader panics at ``point`` once it is under load (after 40 passes,
    which its start-up and election take only a few of). Goal: exit status 86, a new leader,
    no error at the clients (their retries go through exactly-once lanes), and once the
    crashed MDS is back without the failpoint, equal state hashes at one applied index and
    every acknowledged mkdir/create exactly once."""
    async with mds_cluster(tmp_path, request) as mds:
        await start_with_leader(mds, "m1", {ENV_VAR: f"{point}=40*off->1*panic"})
        term = (await mds.status("m1")).term  # type: ignore[union-attr]
        links = [await mds.link(), await mds.link()]
        directory = (await links[0].mkdir(ROOT_INODE, b"stream")).inode
        load = MetadataLoad(links, directory)
        acked_at_crash = await crashed(mds, "m1", load)
        assert acked_at_crash > 0, "the leader crashed before the load started: the test proved nothing"
        new_leader = await mds.leader()
        assert new_leader != "m1"
        await load.until(acked_at_crash + 100)
        mds.start("m1")
        await load.until(len(load.acked) + 100)
        await load.stop()
        statuses = await mds.converged()
        assert len(statuses) == 3 and statuses[new_leader].term > term
        await load.check(links[0])
        assert sum(link.stats["retries"] + link.stats["redirects"] for link in links) > 0, "no retry was exercised"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec, code", [("apply.before_txn_commit=1*panic", FAILPOINT_EXIT_CODE),
                                        ("raft.before_persist=error(EIO)", 1)],
                         ids=["panic-in-apply-txn", "log-write-eio"])
async def test_a_follower_stopped_by_its_storage_step_recovers_to_the_same_state(
        tmp_path: Path, request: pytest.FixtureRequest, spec: str, code: int) -> None:
    """F1 (L0) and F14: a follower restarted behind the leader stops at its first storage
    step. ``apply.before_txn_commit=1*panic``: a crash inside the apply transaction, with
    the entries' effects, the applied index and the state hash written but not committed.
    ``raft.before_persist=error(EIO)``: its log write fails, which must stop the MDS
    (FatalStorageError, exit 1), never let it go on. Goal: restarted without the failpoint,
    it applies the entries again and reaches the leader's state hash at the same applied
    index (nothing half-applied), and the leader never changed."""
    async with mds_cluster(tmp_path, request) as mds:
        mds.start_all()
        leader = await mds.leader()
        follower = next(n for n in mds.ids if n != leader)
        links = [await mds.link()]
        directory = (await links[0].mkdir(ROOT_INODE, b"stream")).inode
        load = MetadataLoad(links, directory)
        await load.until(50)
        mds.kill(follower)
        await load.until(len(load.acked) + 100)  # entries the follower must apply when it is back
        mds.start(follower, env={ENV_VAR: spec})
        await crashed(mds, follower, load, code=code)
        mds.start(follower)
        await load.until(len(load.acked) + 50)
        await load.stop()
        statuses = await mds.converged()
        assert len(statuses) == 3 and statuses[leader].role == "leader", "the leader changed"
        await load.check(links[0])


@pytest.mark.timeout(90)
async def test_a_slow_log_write_on_the_leader_causes_no_election(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """F13 (L0): every persist of the leader's Raft log takes 300 ms longer, a third of the
    election timeout. Goal: operations complete with no error, the leader and its term stay
    the same, and the delay really applied (its log shows the failpoint on each persist)."""
    async with mds_cluster(tmp_path, request, election_ms=1000) as mds:
        await start_with_leader(mds, "m1", {ENV_VAR: "raft.before_persist=sleep(300)"})
        term = (await mds.status("m1")).term  # type: ignore[union-attr]
        links = [await mds.link()]
        directory = (await links[0].mkdir(ROOT_INODE, b"slow")).inode
        load = MetadataLoad(links, directory)
        await load.until(40)
        await load.stop()
        status = await mds.status("m1")
        assert status is not None and status.role == "leader" and status.term == term, status
        assert fired(mds, "m1", "raft.before_persist") >= 5
        await load.check(links[0])


# ---- refusal ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_node_refuses_to_start_with_failpoints_its_config_does_not_allow(tmp_path: Path) -> None:
    """A production config (failpoints = false, the default) with VSTORE_FAILPOINTS set:
    exit 2 and one line saying why, for an MDS and a chunkserver alike; nothing started."""
    cluster = MdsProcCluster(tmp_path, ("m1",))
    cs = cs_config(cluster, "cs-1")
    for config in (tmp_path / "m1.toml", cs):
        run = vstore("serve", "-c", str(config), env={ENV_VAR: "raft.before_persist=panic"})
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert ENV_VAR in lines[0] and "[node] failpoints = false" in lines[0] and "refusing to start" in lines[0]
    assert not (tmp_path / "cs-1").exists(), "the chunkserver touched its data dir before refusing"


@pytest.mark.timeout(60)
def test_an_unknown_or_foreign_failpoint_refuses_the_start_naming_the_known_ones(tmp_path: Path) -> None:
    MdsProcCluster(tmp_path, ("m1",), failpoints=True)  # writes m1.toml and the data dir
    run = vstore("serve", "-c", str(tmp_path / "m1.toml"), env={ENV_VAR: "raft.before_persits=panic"})
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "unknown failpoint 'raft.before_persits'" in run.stderr
    assert all(name in run.stderr for name in POINTS)
    run = vstore("serve", "-c", str(tmp_path / "m1.toml"), env={ENV_VAR: "cs.fsync=error(EIO)"})
    assert run.returncode == 2 and "cs.fsync not on a mds node" in run.stderr, run.stderr
