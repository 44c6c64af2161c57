"""``vstore serve`` for an MDS refuses what it cannot serve from, with one clear line and exit
code 2, and changes nothing: an uninitialised data dir, a data dir of another cluster or
node, a secret readable by others, an address already in use."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.harness.mdsprocs import MdsProcCluster
from vstore.cli.main import run
from vstore.metadata.bootstrap import init_founding_member
from vstore.errors import UsageError


@pytest.fixture
def cluster(tmp_path: Path) -> MdsProcCluster:
    return MdsProcCluster(tmp_path, ("m1",))


def _serve(cluster: MdsProcCluster, capsys) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    code = run(["serve", "-c", str(cluster.root / "m1.toml")])
    return code, capsys.readouterr().err


def test_an_uninitialised_data_dir_is_refused(cluster: MdsProcCluster, capsys) -> None:
    for child in sorted((cluster.root / "m1").rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    code, err = _serve(cluster, capsys)
    assert code == 2 and err.count("\n") == 1 and "not an initialised MDS data dir" in err
    assert not any((cluster.root / "m1").iterdir()), "nothing was created"


def test_a_data_dir_of_another_cluster_is_refused(cluster: MdsProcCluster, capsys) -> None:
    text = (cluster.root / "m1.toml").read_text().replace(cluster.cluster_id, "11111111-1111-4111-8111-111111111111")
    (cluster.root / "m1.toml").write_text(text)
    code, err = _serve(cluster, capsys)
    assert code == 2 and "belongs to cluster" in err


def test_a_secret_readable_by_others_is_refused(cluster: MdsProcCluster, capsys) -> None:
    cluster.secret_file.chmod(0o644)
    code, err = _serve(cluster, capsys)
    assert code == 2 and "chmod 600" in err


def test_an_address_in_use_is_refused(cluster: MdsProcCluster, capsys) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", cluster.ports["m1"]))
        busy.listen()
        code, err = _serve(cluster, capsys)
    assert code == 2 and "cannot listen" in err


def test_initialising_a_data_dir_twice_is_refused(cluster: MdsProcCluster) -> None:
    with pytest.raises(UsageError, match="already holds the Raft log"):
        init_founding_member(cluster.root / "m1", node_id="m1", cluster_id=cluster.cluster_id,
                             members=[("m1", cluster.address("m1"))], root_now_ns=1)
