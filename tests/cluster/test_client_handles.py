"""The client's open files under overlapping opens and closes (vstore/client/files.py): a
close whose flush is slow (a chain waiting for chunkservers, an MDS failover) must not take
down the state of an open that came after it. Found by the thrash (an application write
failed with ESTALE: "file handle ... is not open")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.harness.fsprocs import FsCluster

pytestmark = pytest.mark.timeout(120)


async def test_a_slow_last_close_does_not_drop_the_state_of_a_later_open(tmp_path: Path) -> None:
    from vstore.client.factory import file_client
    from vstore.config import load_client_config
    cluster = FsCluster(tmp_path, chunk_bytes=1 << 20)
    async with cluster.running_fs():
        cfg = load_client_config(cluster.client_config("handles"))
        client = file_client(cluster_id=cfg.cluster.id, mds=[(a.host, a.port) for a in cfg.cluster.mds],
                             secret_file=cfg.cluster.secret_file, net=cfg.net, host="host-handles")
        await client.start()
        try:
            attr = await client.mds.create(1, b"f")
            a, _ = await client.open(attr.inode, writable=True)
            await client.write(a, 0, b"x" * 4096)
            gate = asyncio.Event()
            real_flush = client._flush
            calls = 0

            async def slow_first_flush(state):  # type: ignore[no-untyped-def]
                nonlocal calls
                calls += 1
                if calls == 1:
                    await gate.wait()
                await real_flush(state)
            client._flush = slow_first_flush  # type: ignore[method-assign]
            closing = asyncio.create_task(client.release(a))      # the last close of A: its flush hangs
            await asyncio.sleep(0.1)
            b, _ = await client.open(attr.inode, writable=True)    # opened meanwhile: the same state
            await client.release(b)                                # and closed: the state goes
            c, _ = await client.open(attr.inode, writable=True)    # a new open: a new state
            gate.set()
            await closing                                          # A's close ends last
            await client.write(c, 4096, b"y" * 4096)              # C's state must still be there
            await client.fsync(c)
            await client.release(c)
            r, _ = await client.open(attr.inode, writable=False)
            assert await client.read(r, 0, 8192) == b"x" * 4096 + b"y" * 4096
            await client.release(r)
        finally:
            await client.close()
