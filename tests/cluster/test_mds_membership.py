"""The MDS group grows and shrinks through the CLI (issue 7): ``vstore mkfs`` makes a
one-voter cluster, ``vstore add-node --role mds`` adds learners that the leader promotes
once caught up, the grown group survives its first leader's death with every acknowledged
change, and ``vstore rm-node`` removes an MDS through a membership change but refuses to
break quorum. Bad inputs: one line, nothing changed. And the pure decisions on their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness.procs import ProcessGroup, free_port, vstore
from tests.harness.wait import wait_for
from vstore.client.mds_link import MdsLink, client_node_id
from vstore.config import load_config
from vstore.metadata.fsm.schema import ROOT_INODE
from vstore.metadata.membership import promotion, removal_problem
from vstore.net import Auth, read_secret_file
from vstore.wire import Identity
from vstore.wire import admin as a

pytestmark = pytest.mark.timeout(240)


def test_removal_and_promotion_decisions() -> None:
    voters, active = ["m1", "m2", "m3"], {"m1", "m2", "m3"}
    assert removal_problem(voters, [], active, "m3") is None
    assert "not an MDS" in (removal_problem(voters, [], active, "m9") or "")
    # m2 is down: removing healthy m3 would leave m1 + dead m2, no majority
    problem = removal_problem(voters, [], {"m1", "m3"}, "m3")
    assert problem is not None and "m2 not" in problem and "--force" in problem
    assert removal_problem(voters, [], {"m1", "m3"}, "m3", force=True) is None
    # removing the dead one is fine: m1 + m3 answer
    assert removal_problem(voters, [], {"m1", "m3"}, "m2") is None
    assert "last MDS" in (removal_problem(["m1"], [], {"m1"}, "m1", force=True) or "")
    assert removal_problem(["m1"], ["m2"], {"m1"}, "m2") is None  # a learner goes at once
    assert promotion(["m4"], {"m4": 10}, {"m1", "m4"}, 10) == "m4"
    assert promotion(["m4"], {"m4": 9}, {"m1", "m4"}, 10) is None  # not caught up
    assert promotion(["m4"], {"m4": 10}, {"m1"}, 10) is None  # not answering


class _Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.group = ProcessGroup(root / "logs")
        self.ports: dict[str, int] = {}
        self.secret = root / "mds-1" / "cluster.secret"
        self.cluster_id = ""

    def address(self, node: str) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def mkfs(self) -> None:
        self.ports["mds-1"] = free_port()
        made = vstore("mkfs", "--cluster", "lab", "--data", str(self.root / "mds-1"), "--listen",
                      self.address("mds-1"))
        assert made.returncode == 0, made.stderr
        self.cluster_id = load_config(self.root / "mds-1" / "mds.toml").cluster.id
        self.serve("mds-1")

    def serve(self, node: str) -> None:
        self.group.python(node, "vstore.cli.main", "serve", "-c", str(self.root / node / "mds.toml"))

    def add(self, node: str, *extra: str, join: str = "mds-1"):  # type: ignore[no-untyped-def]
        self.ports.setdefault(node, free_port())
        return vstore("add-node", "--role", "mds", "--join", self.address(join), "--data", str(self.root / node),
                      "--listen", self.address(node), "--node-id", node, "--secret-file", str(self.secret), *extra)

    def link(self, *nodes: str, role: str = "admin") -> MdsLink:
        auth = Auth(read_secret_file(str(self.secret)), Identity(self.cluster_id, client_node_id("t"), role))
        return MdsLink([("127.0.0.1", self.ports[n]) for n in nodes], auth, deadline_s=30)

    async def membership(self, link: MdsLink) -> a.MembershipReply:
        reply = await link.call(a.MembershipRequest())
        assert isinstance(reply, a.MembershipReply)
        return reply

    async def voters(self, link: MdsLink, want: set[str]) -> None:
        async def ready() -> bool:
            try:
                reply = await self.membership(link)
            except Exception:  # noqa: BLE001 - electing
                return False
            return {m.node_id for m in reply.members if m.voter} == want and all(
                m.voter for m in reply.members)
        await wait_for(ready, timeout_s=60, interval_s=0.3, what=f"voters {sorted(want)}")


@pytest.fixture
def cluster(tmp_path: Path):
    c = _Cluster(tmp_path)
    try:
        yield c
    finally:
        c.group.stop_all()


async def test_mds_group_grows_by_add_node_survives_its_leader_and_shrinks_by_rm_node(cluster: _Cluster,
                                                                                      tmp_path: Path) -> None:
    cluster.mkfs()
    link = cluster.link("mds-1")
    client = cluster.link("mds-1", role="client")
    try:
        await cluster.voters(link, {"mds-1"})
        await client.start()
        before = await client.mkdir(ROOT_INODE, b"before-growth")
        for node in ("mds-2", "mds-3"):
            added = cluster.add(node)
            assert added.returncode == 0, added.stderr
            assert f"MDS {node} joined cluster 'lab' as a learner" in added.stdout
            config = load_config(tmp_path / node / "mds.toml")
            assert config.node.role == "mds" and cluster.address(node) in [str(x) for x in config.cluster.mds]
            cluster.serve(node)
        await cluster.voters(link, {"mds-1", "mds-2", "mds-3"})
        status = vstore("status", "-c", str(tmp_path / "mds-3" / "mds.toml"))
        assert "mds-3" in status.stdout and "mds-2" in status.stdout, status.stdout
        after = await client.mkdir(ROOT_INODE, b"after-growth")
        await client.close()
    finally:
        await link.close_connections()
        await client.close_connections()

    # the founder dies: the two that joined elect a leader and have every change
    cluster.group.kill("mds-1")
    link = cluster.link("mds-2", "mds-3")
    client = cluster.link("mds-2", "mds-3", role="client")
    try:
        await client.start()
        assert (await client.lookup(ROOT_INODE, b"before-growth")).inode == before.inode
        assert (await client.lookup(ROOT_INODE, b"after-growth")).inode == after.inode
        # with mds-1 dead, removing mds-3 (alive) would leave mds-2 alone with a dead peer
        refused = vstore("rm-node", "mds-3", "-c", str(tmp_path / "mds-2" / "mds.toml"))
        assert refused.returncode == 1 and "would leave 2 voters" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1
        # removing the dead one is what an operator does
        removed = vstore("rm-node", "mds-1", "-c", str(tmp_path / "mds-2" / "mds.toml"))
        assert removed.returncode == 0 and "voters now: " in removed.stdout, removed.stderr
        reply = await cluster.membership(link)
        assert sorted(m.node_id for m in reply.members) == ["mds-2", "mds-3"]
        await client.mkdir(ROOT_INODE, b"after-removal")
        unknown = vstore("rm-node", "mds-9", "-c", str(tmp_path / "mds-2" / "mds.toml"))
        assert unknown.returncode == 2 and "no MDS or chunkserver 'mds-9'" in unknown.stderr
        await client.close()
    finally:
        await link.close_connections()
        await client.close_connections()


async def test_add_node_mds_refuses_bad_input_and_changes_nothing(cluster: _Cluster, tmp_path: Path) -> None:
    cluster.mkfs()
    link = cluster.link("mds-1")
    try:
        await cluster.voters(link, {"mds-1"})
        assert cluster.add("mds-2").returncode == 0  # a learner (never started)
        twice = cluster.add("mds-2", join="mds-1")
        # its directory holds its Raft log now: refused locally
        assert twice.returncode == 2 and "holds the Raft log of MDS 'mds-2'" in twice.stderr
        cluster.ports["mds-2b"] = free_port()
        again = vstore("add-node", "--role", "mds", "--join", cluster.address("mds-1"), "--data",
                       str(tmp_path / "mds-2b"), "--listen", cluster.address("mds-2b"), "--node-id", "mds-2",
                       "--secret-file", str(cluster.secret))
        assert again.returncode == 1 and "already" in again.stderr and again.stderr.count("\n") == 1
        assert not (tmp_path / "mds-2b").exists()
        taken = vstore("add-node", "--role", "mds", "--join", cluster.address("mds-1"), "--data",
                       str(tmp_path / "mds-x"), "--listen", cluster.address("mds-1"), "--node-id", "mds-x",
                       "--secret-file", str(cluster.secret))
        assert taken.returncode == 1 and "address of MDS mds-1" in taken.stderr
        assert not (tmp_path / "mds-x").exists()
        wrong = tmp_path / "wrong.secret"
        wrong.write_bytes(os.urandom(32))
        wrong.chmod(0o600)
        cluster.ports["mds-y"] = free_port()
        bad = vstore("add-node", "--role", "mds", "--join", cluster.address("mds-1"), "--data", str(tmp_path / "y"),
                     "--listen", cluster.address("mds-y"), "--node-id", "mds-y", "--secret-file", str(wrong))
        assert bad.returncode == 1 and "refused us" in bad.stderr and not (tmp_path / "y").exists()
        reply = await cluster.membership(link)
        assert sorted((m.node_id, m.voter) for m in reply.members) == [("mds-1", True), ("mds-2", False)]
        # the learner never started: status says so (degraded), and it can be removed at once
        status = vstore("status", "-c", str(tmp_path / "mds-1" / "mds.toml"))
        assert status.returncode == 1 and "mds-2 is a learner" in status.stdout, status.stdout
        removed = vstore("rm-node", "mds-2", "-c", str(tmp_path / "mds-1" / "mds.toml"))
        assert removed.returncode == 0, removed.stderr
        last = vstore("rm-node", "mds-1", "-c", str(tmp_path / "mds-1" / "mds.toml"), "--force")
        assert last.returncode == 1 and "last MDS" in last.stderr
        reply = await cluster.membership(link)
        assert [m.node_id for m in reply.members] == ["mds-1"]
    finally:
        await link.close_connections()
