"""``vstore get-attr`` / ``set-attr`` (issue 7): a directory's replication policy and
exclusive-writer flag set by path, inherited by what is created in it afterwards; bad
attributes and missing paths are one-line usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster
from tests.harness.procs import vstore
from vstore.metadata.fsm.schema import ROOT_INODE

pytestmark = pytest.mark.timeout(120)


async def test_set_attr_and_get_attr_by_path(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cluster = FsCluster(tmp_path, ("m1",), chunkservers=0)
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        link = await cluster.link()
        images = await link.mkdir(ROOT_INODE, b"images")
        config = str(cluster.client_config("admin"))
        before = json.loads(vstore("get-attr", "-c", config, "/images", "--json").stdout)
        assert before == {"path": "/images", "replicas": "3:2", "inherited": False, "exclusive_write": False}
        done = vstore("set-attr", "-c", config, "/images", "replicas=2", "exclusive_write=1")
        assert done.returncode == 0, done.stderr
        assert "replicas=2:1 exclusive_write=1" in done.stdout
        disk = await link.create(images.inode, b"ct.img")
        assert disk.exclusive_write and disk.policy == "2:1"
        shown = vstore("get-attr", "-c", config, "/images/ct.img")
        assert shown.returncode == 0 and "replicas=2:1 exclusive_write=1" in shown.stdout

        for args, fragment in ((["/images", "replicas=9:12"], "replicas="), (["/images", "color=blue"],
                               "unknown attribute"), (["/nowhere", "replicas=3"], "no such file or directory"),
                               (["images", "replicas=3"], "from the cluster's root")):
            bad = vstore("set-attr", "-c", config, *args)
            assert bad.returncode == 2 and fragment in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
