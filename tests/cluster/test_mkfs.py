"""``vstore mkfs`` as an operator runs it (issue 7): a data dir, secret and config that
``vstore serve`` starts as a one-node cluster serving the namespace, the admin password kept
only as a hash in the replicated state; and every bad input refused with one line, exit 2,
and nothing changed."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from tests.harness.procs import ProcessGroup, free_port, vstore
from tests.harness.wait import wait_for
from vstore.client.mds_link import MdsLink, client_node_id
from vstore.config import load_config
from vstore.metadata.fsm.schema import ROOT_INODE
from vstore.metadata.passwords import verify_password
from vstore.net import Auth, read_secret_file
from vstore.wire import Identity

pytestmark = pytest.mark.timeout(120)


async def test_mkfs_then_serve_gives_a_working_cluster(tmp_path: Path) -> None:
    data = tmp_path / "mds-1"
    port = free_port()
    made = vstore("mkfs", "--cluster", "prod", "--data", str(data), "--listen", f"127.0.0.1:{port}",
                  "--chunk-mib", "8", "--host", "rack1-host1")
    assert made.returncode == 0, made.stderr
    password = re.search(r"admin password: (\S+)", made.stdout).group(1)  # type: ignore[union-attr]
    secret = data / "cluster.secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600 and len(secret.read_bytes()) == 32
    config = load_config(data / "mds.toml")
    assert config.cluster.name == "prod" and config.node.host == "rack1-host1"
    assert password not in (data / "mds.toml").read_text()

    group = ProcessGroup(tmp_path / "logs")
    group.python("mds-1", "vstore.cli.main", "serve", "-c", str(data / "mds.toml"))
    auth = Auth(read_secret_file(str(secret)), Identity(config.cluster.id, client_node_id("t"), "client"))
    link = MdsLink([("127.0.0.1", port)], auth, deadline_s=30)
    try:
        async def up() -> bool:
            try:
                return (await link.status(f"127.0.0.1:{port}")).role == "leader"
            except Exception:  # noqa: BLE001 - not listening yet
                return False
        await wait_for(up, timeout_s=30, what="the new cluster's MDS leads")
        await link.start()
        d = await link.mkdir(ROOT_INODE, b"vm-disks")
        assert (await link.lookup(ROOT_INODE, b"vm-disks")).inode == d.inode
        await link.close()
    finally:
        group.stop_all()

    from vstore.metadata.fsm.namespace import NamespaceStateMachine
    sm = NamespaceStateMachine(data / "state", map_size_bytes=1 << 30)
    try:
        stored = sm.admin_password_hash()
        assert sm.chunk_bytes() == 8 << 20
    finally:
        sm.close()
    assert stored.startswith("scrypt$") and password not in stored
    assert verify_password(password, stored) and not verify_password(password + "x", stored)


@pytest.mark.parametrize("case", ["not empty", "a cluster already", "bad listen", "bad name", "bad chunk",
                                  "secret exists", "data is a file"])
def test_mkfs_refuses_bad_input_and_changes_nothing(case: str, tmp_path: Path) -> None:
    data = tmp_path / "d"
    args = ["--cluster", "c1", "--data", str(data), "--listen", "127.0.0.1:9400"]
    if case == "not empty":
        data.mkdir()
        (data / "keep.txt").write_text("mine")
    elif case == "a cluster already":
        assert vstore("mkfs", *args).returncode == 0
    elif case == "bad listen":
        args[5] = "127.0.0.1:99999"
    elif case == "bad name":
        args[1] = "no spaces allowed"
    elif case == "bad chunk":
        args += ["--chunk-mib", "3"]
    elif case == "secret exists":
        (tmp_path / "s").write_bytes(b"x" * 32)
        args += ["--secret-file", str(tmp_path / "s")]
    elif case == "data is a file":
        data.write_text("a file")
    before = sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file())
    result = vstore("mkfs", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("vstore: ") and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    expected = {"not empty": "is not empty", "a cluster already": "already holds a cluster",
                "bad listen": "outside 1-65535", "bad name": "--cluster", "bad chunk": "power of two",
                "secret exists": "exists already", "data is a file": "is not a directory"}[case]
    assert expected in result.stderr
    after = sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before
