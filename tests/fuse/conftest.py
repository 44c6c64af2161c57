"""Real FUSE mounts of a real cluster (3 MDS + 3 chunkservers as processes), shared by the
tests of one module: ``fs`` is the cluster with one mount, ``mnt`` a fresh directory on it
per test. Every process and mount is cleaned up; logs are printed when a test failed."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness.fsprocs import FsCluster

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("FUSE is not available (install fuse3: make test does)", allow_module_level=True)

#: small chunks, so that ordinary test files span many of them
CHUNK_BYTES = 1 << 20
_counter = itertools.count()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> AsyncIterator[FsCluster]:
    root = tmp_path_factory.mktemp("fs")
    cluster = FsCluster(root, ("m1", "m2", "m3"), chunk_bytes=CHUNK_BYTES,
                        mds_extra={"cs_offline_after_s": 2, "cs_failed_after_s": 10, "write_lease_s": 10})
    failed_before = request.session.testsfailed
    async with cluster.running_fs(dump_logs_if=lambda: request.session.testsfailed > failed_before):
        await cluster.mount("client-1")
        yield cluster


@pytest.fixture
def mnt(fs: FsCluster) -> Path:
    path = fs.mounts["client-1"] / f"t{next(_counter)}"
    path.mkdir()
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def second_mount(fs: FsCluster) -> Path:
    """A second client (its own process, session and caches) on the same cluster: another host."""
    return await fs.mount("client-2")
