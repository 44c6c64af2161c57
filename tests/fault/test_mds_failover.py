"""Metadata service across real MDS processes: kill -9 the leader during a stream of creates
and renames while clients retry (issue 4's failover bar; RELIABILITY.md F1; DESIGN.md §8
invariants 1 and 5).

Checker: every acknowledged create and rename is in the namespace exactly once (a create
applied twice would have failed its retry with EEXIST, a rename applied twice with ENOENT,
and the writers treat any error as a failure); nothing is there that no client created;
every file has its own inode; all MDS end at the same applied index with the same state
hash. Logs of every process are printed when a test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.mdsload import WriterLoad
from tests.harness.mdsprocs import MdsProcCluster
from tests.harness.wait import wait_for
from vstore.client.mds_link import MdsLink
from vstore.metadata.fsm.schema import ROOT_INODE

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def mds(tmp_path: Path, request: pytest.FixtureRequest):
    async with MdsProcCluster(tmp_path).serving(dump_logs_if=lambda: call_failed(request.node)) as cluster:
        yield cluster


class Workload(WriterLoad):
    """Writers that create ``w<writer>-<n>`` in one directory and rename every second one to
    ``r<writer>-<n>``; what was acknowledged is recorded for the checker."""

    def __init__(self, links: list[MdsLink], directory: int, writers_per_link: int = 4) -> None:
        self.created: dict[bytes, int] = {}   # name -> inode, acknowledged creates
        self.renamed: dict[bytes, bytes] = {}  # old name -> new name, acknowledged renames
        super().__init__(links, directory, writers_per_link)

    async def step(self, link: MdsLink, name: str, n: int) -> None:
        file_name = f"w{name}-{n}".encode()
        attr = await link.create(self.directory, file_name, 0o644)
        self.created[file_name] = attr.inode
        if n % 2:
            new_name = f"r{name}-{n}".encode()
            await link.rename(self.directory, file_name, self.directory, new_name)
            self.renamed[file_name] = new_name

    def count(self) -> int:
        return len(self.created) + len(self.renamed)

    @property
    def acked(self) -> int:
        return self.count()

    def expected(self) -> dict[bytes, int]:
        return {self.renamed.get(name, name): inode for name, inode in self.created.items()}


async def test_killing_the_leader_during_creates_and_renames_loses_and_duplicates_nothing(mds: MdsProcCluster) -> None:
    links = [await mds.link(), await mds.link()]
    directory = (await links[0].mkdir(ROOT_INODE, b"stream")).inode
    load = Workload(links, directory)
    first_term = (await mds.status(await mds.leader())).term  # type: ignore[union-attr]
    target = 150
    for _ in range(2):
        await load.until(target)
        victim = await mds.leader()
        mds.kill(victim)
        await wait_for(lambda: load.acked >= target + 100 or load.errors, timeout_s=60,
                       what="operations acknowledged by the new leader")
        mds.start(victim)
        target = load.acked + 150
    await load.until(target)
    await load.stop()

    statuses = await mds.converged()
    assert max(s.term for s in statuses.values()) > first_term
    entries = await links[0].readdir(directory)
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    found = {e.name: e.attr.inode for e in entries}
    expected = load.expected()
    missing = set(expected) - set(found)
    extra = set(found) - set(expected)
    assert not missing, f"acknowledged but missing: {sorted(missing)[:10]}"
    assert not extra, f"present but never acknowledged: {sorted(extra)[:10]}"
    assert found == expected, "an entry points at another inode than its create returned"
    assert len(set(found.values())) == len(found), "two names share an inode"
    for link in links:
        assert link.stats["retries"] >= 0
    assert sum(link.stats["retries"] + link.stats["redirects"] for link in links) > 0, "no retry was exercised"


async def test_a_follower_that_was_killed_catches_up_and_matches_the_leader(mds: MdsProcCluster) -> None:
    link = await mds.link()
    leader = await mds.leader()
    follower = next(n for n in mds.ids if n != leader)
    mds.kill(follower)
    directory = (await link.mkdir(ROOT_INODE, b"d")).inode
    for n in range(50):
        await link.create(directory, f"f{n}".encode())
    mds.start(follower)
    statuses = await mds.converged()
    assert len(statuses) == 3
    assert len(await link.readdir(directory)) == 50
