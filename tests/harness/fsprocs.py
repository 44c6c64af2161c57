"""A whole cluster of real processes on loopback and real FUSE mounts of it.

``FsCluster``: the MDS processes of ``MdsProcCluster``, chunkservers as ``vstore serve -c``
processes (each with its own host label, so placement spreads replicas over all of them),
and mounts as ``vstore mount --foreground`` processes, each a separate client with its own
session. Everything is owned by PID and cleaned up even when a test fails: mounts are
unmounted (lazily if busy) before the processes are stopped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from tests.harness.mdsprocs import MdsProcCluster
from tests.harness.procs import free_port
from tests.harness.wait import wait_for


def cs_config(cluster: MdsProcCluster, name: str, *, heartbeat_ms: int = 200,
              extra: dict[str, int] | None = None) -> Path:
    """A chunkserver's config; ``extra``: more [chunkserver] keys (e.g. scrub_rate_bytes_per_s = 0)."""
    path = cluster.root / f"{name}.toml"
    # a restart keeps the address (the server's registration names it), as a real one does
    listen = next((line.split('"')[1] for line in path.read_text().splitlines() if line.startswith("listen = ")),
                  None) if path.exists() else None
    path.write_text(f"""
[node]
id = "{name}"
role = "cs"
listen = "{listen or f'127.0.0.1:{free_port()}'}"
host = "host-{name}"
data_dir = "{cluster.root / name}"
failpoints = {"true" if cluster.failpoints else "false"}

{cluster.cluster_section()}
[log]
level = "info"

[chunkserver]
heartbeat_interval_ms = {heartbeat_ms}
reserve_bytes = 0
""" + "".join(f"{k} = {v}\n" for k, v in (extra or {}).items()))
    return path


def is_mounted(path: Path) -> bool:
    """In the mount table: also true for a dead FUSE mount (whose lstat fails with ENOTCONN,
    which makes os.path.ismount say False)."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1].replace("\\040", " ") == target for line in mounts if line.strip())


def unmount(path: Path) -> None:
    if is_mounted(path):
        if subprocess.run(["fusermount3", "-u", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


class FsCluster(MdsProcCluster):
    def __init__(self, root: Path, ids: tuple[str, ...] = ("m1", "m2", "m3"), *, chunkservers: int = 3,
                 cs_extra: dict[str, int] | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(root, ids, **kwargs)
        #: more [chunkserver] keys for every chunkserver's config
        self.cs_extra = cs_extra or {}
        self.cs_names = [f"cs-{n}" for n in range(1, chunkservers + 1)]
        self.mounts: dict[str, Path] = {}

    def start_cs(self, name: str, *, env: Mapping[str, str] | None = None) -> None:
        """Start (or restart) one chunkserver; ``env`` for this start only."""
        self.group.python(name, "vstore.cli.main", "serve", "-c", str(cs_config(self, name, extra=self.cs_extra)),
                          env=env)

    def cs_name_of(self, cs_id: int) -> str:
        return next(n for n in self.cs_names if (self.root / n / "cs-id").read_text().strip() == str(cs_id))

    def client_config(self, name: str, **client: object) -> Path:
        settings = {"id": f'"{name}"', "host": f'"host-{name}"', "deadline_s": 60, **{
            k: (f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v)
            for k, v in client.items()}}
        path = self.root / f"{name}.toml"
        path.write_text(f"""
{self.cluster_section()}
[log]
level = "info"

[client]
""" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        return path

    async def mount(self, name: str = "client-1", **client: object) -> Path:
        mnt = self.root / f"mnt-{name}"
        mnt.mkdir(exist_ok=True)
        self.group.python(name, "vstore.cli.main", "mount", "-c", str(self.client_config(name, **client)), str(mnt),
                          "--foreground", "--allow-other")
        self.mounts[name] = mnt

        def mounted() -> bool:
            if not self.group.procs[name].running:
                raise AssertionError(f"mount {name} exited:\n{self.group.dump_logs()}")
            return os.path.ismount(mnt)
        await wait_for(mounted, timeout_s=30, what=f"{mnt} mounted")
        return mnt

    async def unmount_all(self) -> None:
        for name, mnt in self.mounts.items():
            unmount(mnt)
            proc = self.group.procs.get(name)
            if proc is not None and proc.running:
                with contextlib.suppress(AssertionError):
                    await wait_for(lambda p=proc: not p.running, timeout_s=15, what=f"mount {name} exited")
        self.mounts.clear()

    async def cs_online(self, count: int | None = None, timeout_s: float = 60.0) -> None:
        want = len(self.cs_names) if count is None else count
        if want == 0:
            return  # a metadata-only cluster: nothing to wait for

        async def online() -> bool:
            for node in self.running():
                if node in self.ids:
                    status = await self.status(node)
                    if status is not None and status.role == "leader":
                        return status.chunks.get("cs_online") == want
            return False
        await wait_for(online, timeout_s=timeout_s, what=f"{want} chunkservers online")

    @contextlib.asynccontextmanager
    async def running_fs(self, *, dump_logs_if: Callable[[], bool] = lambda: False) -> AsyncIterator[FsCluster]:
        async with self.serving(dump_logs_if=dump_logs_if):
            try:
                for name in self.cs_names:
                    self.start_cs(name)
                await self.cs_online()
                yield self
            finally:
                await self.unmount_all()


async def write_files(config: Path, files: dict[str, bytes], *, host: str = "host-writer") -> None:
    """Write each ``/dir/.../name`` (directories made as needed) through the client library,
    each fsynced: acknowledged data."""
    from vstore.client.factory import file_client
    from vstore.config import load_client_config
    from vstore.metadata.fsm.schema import ROOT_INODE
    cfg = load_client_config(config)
    client = file_client(cluster_id=cfg.cluster.id, mds=[(a.host, a.port) for a in cfg.cluster.mds],
                         secret_file=cfg.cluster.secret_file, net=cfg.net, host=host)
    await client.start()
    try:
        for path, data in files.items():
            parent = ROOT_INODE
            *dirs, name = path.strip("/").split("/")
            for d in dirs:
                try:
                    parent = (await client.mds.lookup(parent, d.encode())).inode
                except Exception:  # noqa: BLE001 - not there yet
                    parent = (await client.mds.mkdir(parent, d.encode())).inode
            attr = await client.mds.create(parent, name.encode())
            fh, _ = await client.open(attr.inode, writable=True)
            await client.write(fh, 0, data)
            await client.fsync(fh)
            await client.release(fh)
    finally:
        await client.close()


async def read_files(config: Path, paths: list[str], *, host: str = "host-reader",
                     deadline_s: float | None = None) -> dict[str, bytes]:
    """Read each file whole through the client library (a fresh client: nothing cached);
    ``deadline_s``: the client's bound before EIO (its default otherwise)."""
    from vstore.client.factory import file_client
    from vstore.client.files import ClientOptions
    from vstore.config import load_client_config
    from vstore.metadata.fsm.schema import ROOT_INODE
    cfg = load_client_config(config)
    options = ClientOptions(deadline_s=deadline_s) if deadline_s is not None else ClientOptions()
    client = file_client(cluster_id=cfg.cluster.id, mds=[(a.host, a.port) for a in cfg.cluster.mds],
                         secret_file=cfg.cluster.secret_file, net=cfg.net, host=host, options=options)
    await client.start()
    out: dict[str, bytes] = {}
    try:
        for path in paths:
            inode = ROOT_INODE
            for part in path.strip("/").split("/"):
                inode = (await client.mds.lookup(inode, part.encode())).inode
            fh, attr = await client.open(inode, writable=False)
            data = bytearray()
            while len(data) < attr.size:
                piece = await client.read(fh, len(data), min(1 << 20, attr.size - len(data)))
                if not piece:
                    break
                data += piece
            out[path] = bytes(data)
            await client.release(fh)
    finally:
        await client.close()
    return out
