"""``vstore add-node --role cs`` as an operator runs it after ``vstore mkfs`` (issue 7): the
chunkserver joins (gets its cs id), ``vstore serve`` runs it and the MDS sees it online; a
wrong secret, joining twice, a data dir of another chunkserver, an unreachable MDS: one
line each and nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness.procs import ProcessGroup, free_port, vstore
from tests.harness.wait import wait_for
from vstore.client.mds_link import MdsLink, client_node_id
from vstore.config import load_config
from vstore.net import Auth, read_secret_file
from vstore.wire import Identity

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def cluster(tmp_path: Path):
    data = tmp_path / "mds-1"
    port = free_port()
    made = vstore("mkfs", "--cluster", "lab", "--data", str(data), "--listen", f"127.0.0.1:{port}")
    assert made.returncode == 0, made.stderr
    group = ProcessGroup(tmp_path / "logs")
    group.python("mds-1", "vstore.cli.main", "serve", "-c", str(data / "mds.toml"))
    try:
        yield group, f"127.0.0.1:{port}", data / "cluster.secret"
    finally:
        group.stop_all()


async def _online(join: str, secret: Path, cluster_id: str, want: int) -> None:
    auth = Auth(read_secret_file(str(secret)), Identity(cluster_id, client_node_id("t"), "admin"))
    host, port = join.rsplit(":", 1)
    link = MdsLink([(host, int(port))], auth)
    try:
        async def online() -> bool:
            try:
                status = await link.status(join)
            except Exception:  # noqa: BLE001 - not up yet
                return False
            return status.role == "leader" and status.chunks.get("cs_online") == want
        await wait_for(online, timeout_s=60, what=f"{want} chunkserver(s) online")
    finally:
        await link.close_connections()


async def test_a_chunkserver_joins_with_add_node_and_serves(cluster, tmp_path: Path) -> None:
    group, join, secret = cluster
    cs_dir = tmp_path / "cs-a"
    joined = vstore("add-node", "--role", "cs", "--join", join, "--data", str(cs_dir), "--listen",
                    f"127.0.0.1:{free_port()}", "--host", "host-a", "--node-id", "cs-a", "--secret-file", str(secret))
    assert joined.returncode == 0, joined.stderr
    assert "joined cluster 'lab' as cs " in joined.stdout
    config = load_config(cs_dir / "cs.toml")
    assert config.node.id == "cs-a" and config.cluster.name == "lab" and (cs_dir / "cs-id").exists()
    group.python("cs-a", "vstore.cli.main", "serve", "-c", str(cs_dir / "cs.toml"))
    await _online(join, secret, config.cluster.id, 1)

    # joining the same node id again (from a fresh directory) is refused by the cluster
    again = vstore("add-node", "--role", "cs", "--join", join, "--data", str(tmp_path / "cs-a2"), "--listen",
                   f"127.0.0.1:{free_port()}", "--node-id", "cs-a", "--secret-file", str(secret))
    assert again.returncode == 1 and "already registered" in again.stderr and again.stderr.count("\n") == 1
    assert not (tmp_path / "cs-a2").exists()
    # the data dir of a chunkserver cannot join again
    reuse = vstore("add-node", "--role", "cs", "--join", join, "--data", str(cs_dir), "--listen",
                   f"127.0.0.1:{free_port()}", "--node-id", "cs-b", "--secret-file", str(secret))
    assert reuse.returncode == 2 and "belongs to chunkserver" in reuse.stderr


def test_a_wrong_secret_and_an_unreachable_mds_are_refused(cluster, tmp_path: Path) -> None:
    group, join, secret = cluster
    wrong = tmp_path / "wrong.secret"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    result = vstore("add-node", "--role", "cs", "--join", join, "--data", str(tmp_path / "x"), "--listen",
                    f"127.0.0.1:{free_port()}", "--secret-file", str(wrong))
    assert result.returncode == 1 and "refused us" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()
    nobody = vstore("add-node", "--role", "cs", "--join", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "y"),
                    "--listen", f"127.0.0.1:{free_port()}", "--secret-file", str(secret))
    assert nobody.returncode == 1 and "cannot reach the MDS" in nobody.stderr
    # an MDS's node id is not a chunkserver's
    clash = vstore("add-node", "--role", "cs", "--join", join, "--data", str(tmp_path / "z"), "--listen",
                   f"127.0.0.1:{free_port()}", "--node-id", "mds-1", "--secret-file", str(secret))
    assert clash.returncode == 1 and "node id of an MDS" in clash.stderr and not (tmp_path / "z").exists()
