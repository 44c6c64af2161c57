"""``python -m tests.harness.replicas -c CONFIG [PATH]``: where every chunk of every file under
PATH (a cluster path, default ``/``) has its replicas, as the MDS leader lists them, printed as
one JSON object ``{path: [{"index", "chunk_id", "version", "length", "replicas": [{"cs_id",
"host", "address"}]}]}``. With ``--force-read HOST:PORT``: each chunk read from that
chunkserver at its current version, listed or not (``force_read``). With ``--list``: the entries of directory PATH instead,
``{name: "file" | "dir" | "other"}``, read through whichever MDS the config lists (a read
served by a deposed leader from stale state would show here). Exit 0, or 1 with the error on
stderr.

A separate process on purpose: it talks to the cluster through the client library, whose
warnings (an MDS that is down) would otherwise land in the test process's log checker
(tests/conftest.py), and it needs an event loop the synchronous nemesis tests do not have.
It connects as a "client" with no session, like ``vstore scrub``: read-only by construction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import stat
import sys
from typing import Any


async def listing(config_path: str, top: str) -> dict[str, str]:
    from vstore.cli.scrub import split_path
    from vstore.cli.tools import mds_link, quiet_transport
    from vstore.config import load_client_config
    quiet_transport()
    config = load_client_config(config_path)
    link = mds_link(config, "replicas", role="client", deadline_s=30.0)
    try:
        inode = 1
        for part in split_path(top):
            inode = (await link.lookup(inode, part.encode())).inode
        return {e.name.decode("utf-8", "backslashreplace"): "dir" if stat.S_ISDIR(e.attr.mode)
                else "file" if stat.S_ISREG(e.attr.mode) else "other" for e in await link.readdir(inode)}
    finally:
        await link.close_connections()


async def chunk_infos(link: Any, top: str) -> dict[str, list[Any]]:
    """Every chunk (wire ChunkInfo, with its read capability) of every file under ``top``."""
    from vstore.cli.scrub import child_path, chunk_map_pages, split_path
    from vstore.errors import NotDir, NotFound
    from vstore.wire import mds as w
    out: dict[str, list[Any]] = {}
    inode = 1
    for part in split_path(top):
        inode = (await link.lookup(inode, part.encode())).inode
    attr = await link.getattr(inode)
    files: list[tuple[int, str]] = []
    if stat.S_ISREG(attr.mode):
        files.append((inode, top))
    stack = [(inode, top)] if stat.S_ISDIR(attr.mode) else []
    while stack:
        where_inode, where = stack.pop()
        try:
            entries = await link.readdir(where_inode)
        except (NotFound, NotDir):
            continue   # removed since its parent was read: a live file system
        for entry in entries:
            path = child_path(where, entry.name)
            if stat.S_ISDIR(entry.attr.mode):
                stack.append((entry.attr.inode, path))
            elif stat.S_ISREG(entry.attr.mode):
                files.append((entry.attr.inode, path))
    for file_inode, path in sorted(files, key=lambda f: f[1]):
        chunks: list[Any] | None = []
        pages = [(0, w.CHUNK_MAP_MAX)]
        fetched = 0
        while fetched < len(pages):
            first, count = pages[fetched]
            fetched += 1
            try:
                reply = await link.call(w.ChunkMapRequest(uid=0, gid=0, inode=file_inode, first_index=first,
                                                          count=count))
            except NotFound:
                chunks = None   # removed since it was listed
                break
            assert isinstance(reply, w.ChunkMapReply), type(reply).__name__
            if first == 0:
                pages.extend(chunk_map_pages(reply.size, reply.chunk_bytes)[1:])
            assert chunks is not None
            chunks.extend(reply.chunks)
        if chunks is not None:
            out[path] = chunks
    return out


async def collect(config_path: str, top: str) -> dict[str, list[dict[str, Any]]]:
    from vstore.cli.tools import mds_link, quiet_transport
    from vstore.config import load_client_config
    quiet_transport()
    link = mds_link(load_client_config(config_path), "replicas", role="client", deadline_s=30.0)
    try:
        return {path: [{"index": c.index, "chunk_id": c.chunk_id, "version": c.version, "length": c.length_bytes,
                        "replicas": [{"cs_id": r.cs_id, "host": r.host, "address": r.address} for r in c.replicas]}
                       for c in chunks] for path, chunks in (await chunk_infos(link, top)).items()}
    finally:
        await link.close_connections()


async def force_read(config_path: str, top: str, address: str) -> dict[str, list[dict[str, Any]]]:
    """Read every chunk under ``top`` from the chunkserver at ``address``, whether the MDS
    lists it as a replica or not, at the chunk's current version (RELIABILITY F7's "read
    forced to the zombie"): ``{path: [{"chunk_id", "version", "listed", "result"}]}`` where
    result is "ok" or the error code's name."""
    from vstore.cli.tools import mds_link, quiet_transport
    from vstore.client.chunk_io import ChunkIo
    from vstore.config import load_client_config
    from vstore.errors import VStoreError
    from vstore.wire import cs as wcs
    quiet_transport()
    link = mds_link(load_client_config(config_path), "replicas", role="client", deadline_s=30.0)
    io = ChunkIo(link.auth, attempt_deadline_s=10.0)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        for path, chunks in (await chunk_infos(link, top)).items():
            for c in chunks:
                request = wcs.ReadChunkRequest(chunk_id=c.chunk_id, version=c.version, offset=0,
                                               length=min(4096, max(1, c.length_bytes)), token=c.token)
                try:
                    await io._client(address).call(request)
                    result = "ok"
                except VStoreError as exc:
                    result = exc.code.name
                out.setdefault(path, []).append({"chunk_id": c.chunk_id, "version": c.version, "result": result,
                                                 "listed": any(r.address == address for r in c.replicas)})
        # The map was read before the reads: a chunk the server served unlisted may have been
        # copied back to it meanwhile (it is alive again, so the planner may pick it). Such a
        # chunk listed now at the version that was read is a replica, not a zombie's answer.
        served = {(path, ch["chunk_id"], ch["version"]) for path, chunks in out.items() for ch in chunks
                  if ch["result"] == "ok" and not ch["listed"]}
        if served:
            for path, chunks in (await chunk_infos(link, top)).items():
                for c in chunks:
                    if (path, c.chunk_id, c.version) in served and any(r.address == address for r in c.replicas):
                        for ch in out[path]:
                            if ch["chunk_id"] == c.chunk_id:
                                ch.update(listed=True, relisted=True)
    finally:
        await io.close()
        await link.close_connections()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.replicas")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("path", nargs="?", default="/")
    parser.add_argument("--list", action="store_true", help="the entries of directory PATH")
    parser.add_argument("--force-read", metavar="CS_ADDRESS", help="read every chunk from this chunkserver")
    args = parser.parse_args(argv)
    try:
        if args.force_read:
            result: Any = asyncio.run(force_read(args.config, args.path, args.force_read))
        else:
            result = asyncio.run((listing if args.list else collect)(args.config, args.path))
        print(json.dumps(result))
    except Exception as exc:  # noqa: BLE001 - one line for the harness to show
        print(f"replicas: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
