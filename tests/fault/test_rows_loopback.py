"""Rows of RELIABILITY.md §7 that need processes but not separate hosts, on loopback:

* F17: every MDS and chunkserver killed at once (a coordinated power failure) and restarted in
  a seeded random order: every fsync-acknowledged byte and metadata operation survives, and the
  new leader stays in safe mode (no copy, no deletion) until the chunkservers have reported.
* F8b: three of six chunkservers down at once (a rack's power): the storm brake engages, no
  mass rebuild starts, ``vstore status`` says why; reads give the right bytes or EIO, never
  other bytes; the servers come back and the cluster is healthy with nothing rebuilt.
* F10: every MDS's metadata store full (a small ``lmdb_map_bytes``): growth is refused with a
  clear NO_SPACE, no MDS stops or loops, reads and removals work, the replicas stay at one
  state hash; after the operator enlarges the map (config edit, rolling restart) writes resume.
* F18: a chunkserver loses power (kill -9, then its page cache dropped by the lazy FUSE layer
  under its ``chunks/``, torn at a sector) while a writer has unsynced writes on it: no
  fsync-acknowledged byte is lost anywhere, the writer's next fsync does not count the
  restarted server (its boot id changed: it may have lost what it acknowledged), and the
  cluster ends healthy with ``vstore scrub`` clean.
* F9: one of three chunkservers has its data dir on a small file system (tmpfs), which fills
  up under writes: it refuses new replicas with ENOSPC, the writers see no error (new chunks
  get the two others, the policy's minimum; a chain that meets the full disk is repaired),
  ``vstore status`` says it is full, and once space is freed it takes new replicas again.
* F2: a follower's data dir wiped: the node refuses to start with a clear message; the
  operator removes it (``vstore rm-node``), adds it back empty (``vstore add-node --role mds``
  under the same id), and it catches up to the same state hash.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import stat
import sys
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster, read_files, write_files
from tests.harness.procs import vstore
from tests.harness.wait import wait_for
from vstore.errors import VStoreError

pytestmark = pytest.mark.timeout(300)

MIB = 1 << 20
SEED = int(os.environ.get("VSTORE_FAULT_SEED", "7"))


async def _summary(cluster: FsCluster) -> dict[str, int]:
    leader = await cluster.leader()
    status = await cluster.status(leader)
    assert status is not None
    return dict(status.chunks)


async def test_f17_all_nodes_killed_at_once_lose_nothing_acknowledged_and_restart_in_safe_mode(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    cluster = FsCluster(tmp_path, chunk_bytes=1 << 20, mds_extra={"cs_offline_after_s": 2, "cs_failed_after_s": 20,
                                                                    "safe_mode_timeout_s": 60})
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("f17")
        files = {f"/f17/{n}.img": rng.randbytes(MIB + rng.randrange(3 * MIB)) for n in range(4)}
        await write_files(config, files)
        link = await cluster.link()
        await link.mkdir(1, b"made-before-the-outage")
        for name in [*cluster.ids, *cluster.cs_names]:  # no grace, no order: a power failure
            cluster.group.kill(name)
        order = [*cluster.ids, *cluster.cs_names]
        rng.shuffle(order)
        print(f"restart order {order}")
        for name in order:
            if name in cluster.ids:
                cluster.start(name)
            else:
                cluster.start_cs(name)
        await cluster.cs_online(timeout_s=90)
        summary = await _summary(cluster)
        assert summary["copies_committed"] == 0 and summary["deletes_confirmed"] == 0, summary
        assert await read_files(config, list(files)) == files
        assert stat.S_ISDIR((await link.lookup(1, b"made-before-the-outage")).mode)
        healthy = await wait_for(lambda: (r := vstore("status", "-c", str(config))).returncode == 0 and r,
                                 timeout_s=90, interval_s=1, what="healthy after the restart")
        assert "HEALTHY" in healthy.stdout
        summary = await _summary(cluster)
        assert summary["copies_committed"] == 0, "nothing was missing: nothing may have been copied"
        await cluster.converged()


async def test_f8b_three_of_six_chunkservers_down_at_once_engage_the_storm_brake(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(SEED + 1)
    cluster = FsCluster(tmp_path, chunkservers=6, chunk_bytes=1 << 20,
                        mds_extra={"cs_offline_after_s": 1, "cs_failed_after_s": 3, "write_lease_s": 2,
                                   "capability_skew_s": 1})
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("f8b")
        files = {f"/f8b/{n}.img": rng.randbytes(2 * MIB + n) for n in range(6)}
        await write_files(config, files)
        before = await _summary(cluster)
        down = rng.sample(cluster.cs_names, 3)
        for name in down:
            cluster.group.kill(name)

        async def braked() -> dict[str, int] | None:
            summary = await _summary(cluster)
            return summary if summary.get("storm_brake") else None
        await wait_for(braked, timeout_s=30, interval_s=0.5, what="the storm brake engaged")
        status = vstore("status", "-c", str(config))
        assert status.returncode == 1 and "storm brake" in status.stdout, status.stdout
        # reads: the right bytes, or EIO where every replica is down; never other bytes
        for path, data in files.items():
            try:
                got = await read_files(config, [path], deadline_s=8.0)
            except VStoreError:
                continue
            assert got[path] == data
        summary = await _summary(cluster)
        assert summary["copies_committed"] == before["copies_committed"], "no rebuild under the storm brake"
        for name in down:
            cluster.start_cs(name)
        await cluster.cs_online(timeout_s=60)
        await wait_for(lambda: vstore("status", "-c", str(config)).returncode == 0, timeout_s=90, interval_s=1,
                       what="healthy once the servers are back")
        assert (await _summary(cluster))["copies_committed"] == before["copies_committed"]
        assert await read_files(config, list(files)) == files


async def test_f2_a_wiped_follower_refuses_to_start_and_comes_back_through_rm_node_and_add_node(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cluster = FsCluster(tmp_path, chunkservers=0)
    async with cluster.serving(dump_logs_if=lambda: call_failed(request.node)):
        link = await cluster.link()
        for n in range(20):
            await link.mkdir(1, f"d{n}".encode())
        leader = await cluster.leader()
        victim = next(i for i in cluster.ids if i != leader)
        cluster.kill(victim)
        shutil.rmtree(tmp_path / victim)
        (tmp_path / victim).mkdir()
        refused = vstore("serve", "-c", str(tmp_path / f"{victim}.toml"))
        assert refused.returncode == 2 and "not an initialised MDS data dir" in refused.stderr, refused.stderr
        await link.mkdir(1, b"written-while-it-was-gone")  # two of three still commit
        config = tmp_path / f"{leader}.toml"
        removed = vstore("rm-node", victim, "-c", str(config))
        assert removed.returncode == 0, removed.stderr
        (tmp_path / victim).rmdir()
        added = vstore("add-node", "--role", "mds", "--join", cluster.address(leader), "--data", str(tmp_path / victim),
                       "--listen", cluster.address(victim), "--node-id", victim, "--secret-file",
                       str(cluster.secret_file))
        assert added.returncode == 0, added.stderr
        with open(tmp_path / victim / "mds.toml", "a") as config_file:  # the dashboard port is the test's to give
            config_file.write("\n[mds]\nadmin_enabled = false\n")
        cluster.group.python(victim, "vstore.cli.main", "serve", "-c", str(tmp_path / victim / "mds.toml"))
        statuses = await cluster.converged(timeout_s=60)
        assert len(statuses) == 3
        reply = await cluster.status(victim)
        assert reply is not None and victim in reply.members and reply.role == "follower"
        assert stat.S_ISDIR((await link.lookup(1, b"written-while-it-was-gone")).mode)


async def test_f10_a_full_metadata_store_refuses_growth_keeps_every_mds_serving_and_resumes_when_enlarged(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from tests.harness.mdsprocs import MdsProcCluster
    from vstore.errors import NoSpace
    from vstore.wire import mds as w
    small, large = 16 << 20, 64 << 20
    cluster = MdsProcCluster(tmp_path, mds_extra={"lmdb_map_bytes": small})
    async with cluster.serving(dump_logs_if=lambda: call_failed(request.node)):
        link = await cluster.link()
        f = await link.create(1, b"f")
        value = b"x" * 65536

        async def setxattr(name: str) -> None:
            await link.mutate(lambda lane, seq: w.SetxattrRequest(uid=0, gid=0, lane=lane, seq=seq, inode=f.inode,
                                                                  name=name.encode(), value=value))
        with pytest.raises(NoSpace) as refused:
            for n in range(1000):
                await setxattr(f"user.{n}")
        assert n > 100 and "lmdb_map_bytes" in refused.value.message, (n, refused.value.message)
        with pytest.raises(NoSpace):
            await link.create(1, b"g")
        assert (await link.getattr(f.inode)).inode == f.inode          # reads keep working
        statuses = await cluster.converged(timeout_s=30)                # no half-applied entry anywhere
        assert sorted(cluster.running()) == sorted(cluster.ids), "an MDS stopped on a full store"
        assert len({s.state_hash for s in statuses.values()}) == 1
        # the operator enlarges the map: a config edit and a rolling restart, one MDS at a time
        for node_id in cluster.ids:
            config = tmp_path / f"{node_id}.toml"
            config.write_text(config.read_text().replace(f"lmdb_map_bytes = {small}", f"lmdb_map_bytes = {large}"))
            cluster.kill(node_id)
            cluster.start(node_id)
            await cluster.converged(timeout_s=60)
        await link.create(1, b"g")                                      # writes resume
        await setxattr("user.after")
        statuses = await cluster.converged(timeout_s=30)
        assert len({s.state_hash for s in statuses.values()}) == 1 and len(statuses) == 3


async def test_f18_a_chunkserver_losing_power_loses_no_acknowledged_byte_and_is_not_trusted_for_what_it_lost(
        tmp_path: Path, request: pytest.FixtureRequest, expect_log, caplog) -> None:  # type: ignore[no-untyped-def]
    from tests.harness.lazyfs import LazyMount
    from vstore.client.factory import file_client
    from vstore.config import load_client_config
    rng = random.Random(SEED + 3)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse missing")
    # short leases: a new leader makes no copy for write_lease_s + capability_skew_s (leases an
    # earlier leader granted may be out), and this cluster's leader is new
    cluster = FsCluster(tmp_path, chunk_bytes=1 << 20, mds_extra={"cs_offline_after_s": 2, "cs_failed_after_s": 30,
                                                                    "write_lease_s": 3, "capability_skew_s": 1})
    victim = "cs-1"
    expect_log("client.chain_repair")   # the writer drops the restarted server from its chain
    with LazyMount(tmp_path / f"{victim}.disk", tmp_path / victim / "chunks", seed=SEED) as lazy:
        async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
            config = cluster.client_config("f18")
            files = {f"/f18/synced-{n}.img": rng.randbytes(MIB + rng.randrange(2 * MIB)) for n in range(3)}
            await write_files(config, files)                # fsynced: acknowledged everywhere
            cfg = load_client_config(config)
            writer = file_client(cluster_id=cfg.cluster.id, mds=[(a.host, a.port) for a in cfg.cluster.mds],
                                 secret_file=cfg.cluster.secret_file, net=cfg.net, host="host-writer")
            await writer.start()
            try:
                link = await cluster.link()
                parent = (await link.lookup(1, b"f18")).inode
                attr = await writer.mds.create(parent, b"open.img")
                fh, _ = await writer.open(attr.inode, writable=True)
                before, after = rng.randbytes(2 * MIB), rng.randbytes(MIB)
                await writer.write(fh, 0, before)
                await writer.flush(fh)                      # sent and acknowledged by all three, synced by none
                cluster.group.kill(victim)                  # the power goes: the process dies...
                crashed = lazy.crash(torn=True)             # ...and so does its page cache
                cluster.start_cs(victim)
                await wait_for(lambda: _listening(tmp_path / f"{victim}.toml"), timeout_s=30,
                               what=f"{victim} serving again at its address")
                await writer.write(fh, len(before), after)  # the chain answers, the victim under a new boot id
                await writer.fsync(fh)                      # acknowledged: durable without the victim's copy
                await writer.release(fh)
            finally:
                await writer.close()
            repairs = [str(getattr(r, "error", "")) for r in caplog.records if r.getMessage() == "client.chain_repair"]
            assert any("restarted since it acknowledged" in e for e in repairs), \
                f"the writer did not drop the restarted server for its boot id: {repairs}"
            files["/f18/open.img"] = before + after
            assert await read_files(config, list(files)) == files
            healthy = await wait_for(lambda: (r := vstore("status", "-c", str(config))).returncode == 0 and r,
                                     timeout_s=90, interval_s=1, what="healthy after the power loss")
            assert "HEALTHY" in healthy.stdout
            scrubbed = await wait_for(lambda: (r := vstore("scrub", "/f18", "-c", str(config))).returncode == 0
                                      and r, timeout_s=90, interval_s=2, what="scrub clean")
            print(f"F18: {victim} lost power ({crashed}); {scrubbed.stdout.strip().splitlines()[-1:]}")
            assert await read_files(config, list(files)) == files
            await cluster.converged()


def _listening(config: Path) -> bool:
    """The node of this config accepts TCP connections at its listen address."""
    import socket
    listen = next(line.split('"')[1] for line in config.read_text().splitlines() if line.startswith("listen = "))
    host, port = listen.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


async def test_f9_a_full_chunkserver_disk_sends_new_replicas_elsewhere_and_the_writers_see_no_error(
        tmp_path: Path, request: pytest.FixtureRequest, expect_log) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    expect_log("client.chain_repair", count=0)   # a chain that met the full disk, if one did
    rng = random.Random(SEED + 4)
    victim = "cs-1"
    disk = tmp_path / victim
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True,
                             text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 12 MiB tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        # three servers, three replicas: every chunk wants the small disk, which fills; new
        # chunks then get the two others (the policy's minimum is 2) and no writer sees an error
        cluster = FsCluster(tmp_path, chunkservers=3, chunk_bytes=1 << 20,
                            mds_extra={"write_lease_s": 3, "capability_skew_s": 1})
        async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
            config = cluster.client_config("f9")
            files = {f"/f9/{n}.img": rng.randbytes(2 * MIB + n) for n in range(8)}
            await write_files(config, files)           # 16 MiB on each server: more than the small disk holds
            assert await read_files(config, list(files)) == files

            seen: list[str] = []

            async def full() -> str | None:
                status = vstore("status", "-c", str(config))
                st = os.statvfs(disk)
                seen[:] = [f"exit {status.returncode}: {status.stdout}{status.stderr}; victim fs {st.f_bavail}/{st.f_blocks} free; {sorted(os.listdir(disk))}"]
                return status.stdout if status.returncode == 1 and "full" in status.stdout else None
            report = await wait_for(full, timeout_s=30, interval_s=1,
                                    what=lambda: f"status naming the full chunkserver ({seen})")
            link = await cluster.link()
            held = {int(cs_id) for cs_id in (tmp_path / victim / "cs-id").read_text().split()}
            for n in range(8):                          # free the space
                await link.unlink((await link.lookup(1, b"f9")).inode, f"{n}.img".encode())
            await wait_for(lambda: vstore("status", "-c", str(config)).returncode == 0, timeout_s=60, interval_s=1,
                           what="healthy once the space is freed")
            more = {f"/f9/after-{n}.img": rng.randbytes(MIB) for n in range(8)}
            await write_files(config, more)
            listed = subprocess.run([sys.executable, "-m", "tests.harness.replicas", "-c", str(config), "/f9"],
                                    capture_output=True, text=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
            chunks = json.loads(listed.stdout)
            assert any(r["cs_id"] in held for c in chunks.values() for ch in c for r in ch["replicas"]), \
                f"{victim}, with room again, got none of the new replicas: {chunks}"
            assert await read_files(config, list(more)) == more
            print("F9: " + " | ".join(line.strip() for line in report.splitlines() if "full" in line))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)



async def test_f6_a_file_kept_open_and_written_gets_back_to_full_replication_after_a_chunkserver_dies(
        tmp_path: Path, request: pytest.FixtureRequest, expect_log) -> None:  # type: ignore[no-untyped-def]
    """F6 for a container image: the file stays open and is written and fsynced without a
    pause, so its chunks never leave their write lease. A chunkserver holding them is killed:
    the writer sees no error (its chain is repaired), and the chunks are copied back to three
    replicas on distinct hosts while the file is still open (the leader holds the writer for
    the bump and the copy). Every replica of every chunk then holds exactly the bytes the
    writer wrote, and so does a fresh client's read."""
    from vstore.client.chunk_io import ChunkIo
    from vstore.client.factory import file_client
    from vstore.config import load_client_config
    from vstore.wire import cs as wcs
    from vstore.wire import mds as w
    rng = random.Random(SEED + 6)
    expect_log("client.chain_repair")
    cluster = FsCluster(tmp_path, chunkservers=4, chunk_bytes=1 << 20,
                        mds_extra={"cs_offline_after_s": 1, "cs_failed_after_s": 3, "write_lease_s": 3,
                                   "capability_skew_s": 1})
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("f6-open")
        cfg = load_client_config(config)
        writer = file_client(cluster_id=cfg.cluster.id, mds=[(a.host, a.port) for a in cfg.cluster.mds],
                             secret_file=cfg.cluster.secret_file, net=cfg.net, host="host-writer")
        await writer.start()
        link = await cluster.link()
        image = bytearray(rng.randbytes(4 * MIB))
        writes = 0
        try:
            attr = await writer.mds.create(1, b"image.img")
            fh, _ = await writer.open(attr.inode, writable=True)
            await writer.write(fh, 0, bytes(image))
            await writer.fsync(fh)

            async def write_some() -> None:
                nonlocal writes
                offset = rng.randrange(len(image) - 64 * 1024)
                data = rng.randbytes(rng.randrange(1, 64 * 1024))
                await writer.write(fh, offset, data)
                await writer.fsync(fh)
                image[offset:offset + len(data)] = data
                writes += 1

            async def chunks() -> list[w.ChunkInfo]:
                reply = await link.call(w.ChunkMapRequest(uid=0, gid=0, inode=attr.inode, first_index=0, count=16))
                assert isinstance(reply, w.ChunkMapReply)
                return list(reply.chunks)
            victim_id = (await chunks())[0].replicas[0].cs_id
            victim = cluster.cs_name_of(victim_id)
            cluster.group.kill(victim)
            deadline = asyncio.get_running_loop().time() + 90
            while True:   # written without a pause until every chunk is back at three
                await write_some()
                now = await chunks()
                if all(len({r.host for r in c.replicas}) == 3 and victim_id not in {r.cs_id for r in c.replicas}
                       for c in now):
                    break
                assert asyncio.get_running_loop().time() < deadline, \
                    f"chunks still short with the file open: {[(c.chunk_id, [r.cs_id for r in c.replicas]) for c in now]}"
            for _ in range(20):
                await write_some()   # and the writes go on to the new chains
            await writer.release(fh)
        finally:
            await writer.close()
        io = ChunkIo(link.auth, attempt_deadline_s=10.0)
        try:
            for c in await chunks():
                want = bytes(image[c.index * MIB:(c.index + 1) * MIB])
                for r in c.replicas:
                    reply = await io._client(r.address).call(wcs.ReadChunkRequest(
                        chunk_id=c.chunk_id, version=c.version, offset=0, length=MIB, token=c.token))
                    got = bytes(reply.payload)
                    assert got == want, f"chunk {c.chunk_id} on cs {r.cs_id} differs from what was written"
        finally:
            await io.close()
        assert (await read_files(config, ["/image.img"]))["/image.img"] == bytes(image)
        print(f"F6 (open file): {victim} killed; {writes} writes, every chunk back at 3 replicas with the file open")
