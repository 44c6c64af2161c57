"""``vstore rm-node`` for chunkservers (issue 7): a drain copies every chunk elsewhere before
the server is removed, and the data stays whole; a drain that cannot finish (too few hosts
for the policy) stops, says why and leaves the server draining; ``--cancel`` takes it back;
``--force`` removes it at once. And the pure parts on their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster, read_files, write_files
from tests.harness.procs import vstore
from tests.harness.wait import wait_for
from vstore.cli.rm_node import drain_line, resolve, stall_reason
from vstore.errors import UsageError
from vstore.wire import admin as a

pytestmark = pytest.mark.timeout(300)

TIMERS = {"cs_offline_after_s": 2, "cs_failed_after_s": 60, "write_lease_s": 2, "capability_skew_s": 1}


def _cs(cs_id: int, **kw: object) -> a.CsInfo:
    fields = {"node_id": f"cs-{cs_id}", "address": "127.0.0.1:1", "host": f"h{cs_id}", "rack": "",
              "state": "active", "status": "online", **kw}
    return a.CsInfo(cs_id=cs_id, **fields)  # type: ignore[arg-type]


def test_resolve_and_the_explanations() -> None:
    servers = [_cs(1), _cs(2), _cs(3, state="removed")]
    assert resolve("mds-1", {"mds-1": "x:1"}, servers) == ("mds", "mds-1")
    assert resolve("cs-2", {}, servers)[1].cs_id == 2
    assert resolve("1", {}, servers)[1].node_id == "cs-1"
    with pytest.raises(UsageError, match="removed already"):
        resolve("cs-3", {}, servers)
    with pytest.raises(UsageError, match="no MDS or chunkserver 'zz'.*cs-1, cs-2"):
        resolve("zz", {}, servers)
    stuck = _cs(1, chunks=5, drain_left=5)
    assert "2 other online chunkserver(s) on 2 host(s)" in stall_reason(stuck, [stuck, _cs(2), _cs(4)])
    dead = _cs(1, status="failed", chunks=5, drain_left=5, sole=2)
    assert "only good copy on a server that is down" in stall_reason(dead, [dead])
    assert "5 chunk(s) left on it, 3 still need" in drain_line(_cs(1, chunks=5, drain_left=3), 1.0, 2.0)


async def _servers(config: Path) -> dict[str, a.CsInfo]:
    from vstore.cli.tools import mds_link
    from vstore.config import load_client_config
    link = mds_link(load_client_config(config), "t")
    try:
        reply = await link.call(a.CsListRequest())
        assert isinstance(reply, a.CsListReply)
        return {s.node_id: s for s in reply.servers}
    finally:
        await link.close_connections()


async def _total(config: Path, want: int) -> bool:
    return sum(s.chunks for s in (await _servers(config)).values()) == want


async def test_rm_node_drains_a_chunkserver_then_refuses_what_the_cluster_cannot_hold(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cluster = FsCluster(tmp_path, chunkservers=4, chunk_bytes=1 << 20, mds_extra=TIMERS)
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("admin")
        files = {f"/vm/disk-{n}.img": os.urandom(3 * (1 << 20) + 777 * n) for n in range(3)}
        await write_files(config, files)

        replicas = 3 * sum(-(-len(d) // (1 << 20)) for d in files.values())
        await wait_for(lambda: _total(config, replicas), timeout_s=30, what=f"{replicas} replicas counted")
        drained = vstore("rm-node", "cs-1", "-c", str(config), timeout=180)
        assert drained.returncode == 0, drained.stderr
        assert "drained and removed" in drained.stdout and "draining cs" in drained.stderr
        servers = await _servers(config)
        assert servers["cs-1"].state == "removed" and servers["cs-1"].chunks == 0

        async def spread() -> bool:
            servers = await _servers(config)
            return all(servers[n].chunks == replicas // 3 for n in ("cs-2", "cs-3", "cs-4"))
        await wait_for(spread, timeout_s=30, what="every chunk on each of the three servers left")
        assert await read_files(config, list(files)) == files
        # three servers left, replicas=3 on distinct hosts: a drain cannot finish
        stuck = vstore("rm-node", "cs-2", "-c", str(config), "--stall-s", "4", timeout=120)
        assert stuck.returncode == 1 and "cannot get their target copies" in stuck.stderr, stuck.stderr
        assert "stays draining" in stuck.stderr
        assert (await _servers(config))["cs-2"].state == "draining"
        back = vstore("rm-node", "cs-2", "-c", str(config), "--cancel")
        assert back.returncode == 0 and (await _servers(config))["cs-2"].state == "active"
        forced = vstore("rm-node", "cs-2", "-c", str(config), "--force")
        assert forced.returncode == 0 and "removed at once" in forced.stdout, forced.stderr
        servers = await _servers(config)
        assert servers["cs-2"].state == "removed" and servers["cs-2"].chunks == 0
        assert await read_files(config, list(files)) == files
        unknown = vstore("rm-node", "99", "-c", str(config))
        assert unknown.returncode == 2 and "no MDS or chunkserver '99'" in unknown.stderr
        conflicting = vstore("rm-node", "cs-3", "-c", str(config), "--force", "--cancel")
        assert conflicting.returncode == 2
