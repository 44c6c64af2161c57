"""A workload on a real mount rides through failures (issue 6's bar; RELIABILITY.md F1, F6):
while files are written (with fsyncs) and read back through the mount, kill -9 a chunkserver
holding replicas of them and then kill -9 the MDS leader. The workload sees no error, and
every byte written verifies afterwards, also from a second, freshly started mount."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster
from tests.harness.wait import wait_for

pytestmark = pytest.mark.timeout(300)
MIB = 1024 * 1024


@pytest.fixture
async def fs(tmp_path: Path, request: pytest.FixtureRequest):
    cluster = FsCluster(tmp_path, ("m1", "m2", "m3"), chunk_bytes=1 << 20,
                        mds_extra={"cs_offline_after_s": 2, "cs_failed_after_s": 30, "write_lease_s": 10})
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        yield cluster


class Workload:
    """Writes files of seeded bytes through the mount (each fsynced, then read back), in a thread."""

    def __init__(self, root: Path, files: int, size: int) -> None:
        self.root = root
        self.files = files
        self.size = size
        self.digests: dict[str, str] = {}
        self.errors: list[BaseException] = []
        self.done_files = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            rng = random.Random(11)
            for n in range(self.files):
                data = rng.randbytes(self.size)
                path = self.root / f"file-{n:03d}"
                with open(path, "wb") as fp:
                    for i in range(0, len(data), 256 * 1024):
                        fp.write(data[i:i + 256 * 1024])
                    fp.flush()
                    os.fsync(fp.fileno())
                self.digests[path.name] = hashlib.sha256(data).hexdigest()
                if hashlib.sha256(path.read_bytes()).hexdigest() != self.digests[path.name]:
                    raise AssertionError(f"{path.name} read back wrong bytes")
                self.done_files = n + 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)


async def test_a_workload_rides_through_a_chunkserver_and_the_mds_leader_dying(fs: FsCluster) -> None:
    mnt = await fs.mount("client-1")
    work = Workload(mnt, files=24, size=3 * MIB + 4321)
    work.thread.start()
    await wait_for(lambda: work.done_files >= 4 or bool(work.errors), timeout_s=120, what="4 files written")
    victim = fs.cs_names[1]
    fs.kill(victim)
    await wait_for(lambda: work.done_files >= 10 or bool(work.errors), timeout_s=120,
                   what="10 files written with a chunkserver dead")
    leader = await fs.leader()
    fs.kill(leader)
    await wait_for(lambda: not work.thread.is_alive(), timeout_s=200, what="the workload finished")
    assert not work.errors, f"the application saw an error: {work.errors[0]!r}"
    assert work.done_files == 24
    log = (fs.group.log_dir / "client-1.log").read_text()
    assert "client.chain_repair" in log, "no write met the dead chunkserver: the test proved nothing"

    other = await fs.mount("client-2")

    def verify(root: Path) -> list[str]:
        return [name for name, digest in work.digests.items()
                if hashlib.sha256((root / name).read_bytes()).hexdigest() != digest]
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, verify, mnt) == []
    assert await loop.run_in_executor(None, verify, other) == []


async def test_the_exclusive_writer_lease_of_a_dead_host_moves_when_its_session_expires(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Live migration after a crash: host A dies (kill -9 of its mount) holding a container
    image open for writing; host B is refused (EBUSY) until A's session expires, then gets it,
    and reads everything A had fsynced."""
    cluster = FsCluster(tmp_path, ("m1",), chunk_bytes=1 << 20, session_expire_s=3,
                        mds_extra={"cs_offline_after_s": 2, "cs_failed_after_s": 30})
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        a = await cluster.mount("client-a")
        b = await cluster.mount("client-b")
        loop = asyncio.get_running_loop()
        data = os.urandom(2 * MIB)

        def hold() -> int:
            (a / "images").mkdir()
            os.setxattr(a / "images", "vstore.exclusive_write", b"1")
            fd = os.open(a / "images" / "ct.img", os.O_CREAT | os.O_RDWR, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            return fd
        fd = await loop.run_in_executor(None, hold)

        def try_open() -> int:
            try:
                os.close(os.open(b / "images" / "ct.img", os.O_RDWR))
                return 0
            except OSError as exc:
                return exc.errno
        try:
            assert await loop.run_in_executor(None, try_open) == errno.EBUSY
            cluster.kill("client-a")
            await wait_for(lambda: try_open() == 0, timeout_s=30, interval_s=0.5,
                           what="host B gets the lease after host A's session expired")
            got = await loop.run_in_executor(None, (b / "images" / "ct.img").read_bytes)
            assert got == data
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)  # on the dead mount: the kernel answers it without the daemon
