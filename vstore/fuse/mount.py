"""Mounting: ``vstore mount -c CONFIG MOUNTPOINT`` and ``vstore umount MOUNTPOINT``.

``mount`` checks the mountpoint (exists, is a directory, is not mounted already), connects
to the cluster and opens a session (a clean error when no MDS answers within
``CONNECT_DEADLINE_S``), mounts with ``default_permissions`` (and ``allow_other`` when asked)
and serves until unmounted, SIGTERM or Ctrl-C; then it writes out buffered data, ends the
session and unmounts. Without ``--foreground`` the command starts itself again in the
background, waits until that mount is serving (or has failed, and prints why), and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vstore.client.factory import file_client
from vstore.client.files import ClientOptions, FileClient
from vstore.config import ClientConfig
from vstore.errors import UsageError, UserError, VStoreError

log = logging.getLogger(__name__)

#: how long ``mount`` waits for the cluster before it gives up with a clear error
CONNECT_DEADLINE_S = 15.0


class MountFailed(UserError):
    """The mount could not be made: the message says why (exit 1)."""

    exit_code = 1


def check_mountpoint(path: str) -> str:
    """The absolute mountpoint, or UsageError saying what is wrong with it."""
    target = os.path.abspath(path)
    if not os.path.lexists(target):
        raise UsageError(f"mountpoint {target} does not exist (mkdir it first)")
    if not os.path.isdir(target):
        raise UsageError(f"mountpoint {target} is not a directory")
    if os.path.ismount(target):
        raise UsageError(f"{target} is a mount point already (vstore umount {target} first)")
    return target


def build_client(config: ClientConfig, mountpoint: str = "") -> FileClient:
    c = config.client
    options = ClientOptions(deadline_s=float(c.deadline_s), io_bytes=c.io_bytes, writeback_bytes=c.writeback_bytes,
                            writeback_age_s=c.writeback_age_ms / 1000, readahead_bytes=c.readahead_bytes,
                            host=c.host)
    return file_client(cluster_id=config.cluster.id, mds=[(a.host, a.port) for a in config.cluster.mds],
                       secret_file=config.cluster.secret_file, net=config.net, frame_auth=config.net.frame_auth,
                       node_id=c.id, host=c.host, mountpoint=mountpoint, options=options)


async def serve_mount(config: ClientConfig, mountpoint: str, *, allow_other: bool = False,
                      ready: Callable[[], None] | None = None) -> int:
    """Mount and serve until unmounted or signalled. Returns the exit code."""
    import pyfuse3
    import pyfuse3.asyncio

    from vstore.fuse.ops import VstoreOperations

    mountpoint = check_mountpoint(mountpoint)
    client = build_client(config, mountpoint)
    deadline = client.mds.deadline_s
    client.mds.deadline_s = min(deadline, CONNECT_DEADLINE_S)
    try:
        await client.start()
    except VStoreError as exc:
        await client.close()
        addresses = ", ".join(str(a) for a in config.cluster.mds)
        raise MountFailed(f"cannot reach cluster {config.cluster.name!r} (MDS {addresses}) within "
                          f"{CONNECT_DEADLINE_S:g} s: {exc.message}") from None
    client.mds.deadline_s = deadline
    ops = VstoreOperations(client, attr_timeout_s=config.client.attr_timeout_ms / 1000,
                           entry_timeout_s=config.client.entry_timeout_ms / 1000)
    options = set(pyfuse3.default_options) | {f"fsname=vstore:{config.cluster.name}", "subtype=vstore"}
    if allow_other or config.client.allow_other:
        options.add("allow_other")
    pyfuse3.asyncio.enable()
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as exc:
        await client.close()
        raise MountFailed(f"cannot mount on {mountpoint}: {exc}") from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    # kill -USR1: where the time of the kernel's requests went so far (also logged at unmount)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("fuse.op_stats", extra=ops.op_summary()))
    log.info("fuse.mounted", extra={"mountpoint": mountpoint, "cluster": config.cluster.name})
    if ready is not None:
        ready()
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=64)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        pyfuse3.close(unmount=True)
        await client.close()
        log.info("fuse.op_stats", extra=ops.op_summary())
        log.info("fuse.unmounted", extra={"mountpoint": mountpoint})
    return 0


def start_background(config_file: str, mountpoint: str, *, allow_other: bool, log_file: str,
                     timeout_s: float = CONNECT_DEADLINE_S + 15) -> str:
    """Start ``vstore mount --foreground`` detached; return once it serves. Raises
    MountFailed with the child's own error line when it does not."""
    check_mountpoint(mountpoint)
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "vstore.cli.main", "mount", "-c", config_file, mountpoint, "--foreground",
            "--ready-fd", str(write_fd)]
    if allow_other:
        argv.append("--allow-other")
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(write_fd,),
                                start_new_session=True)
    os.close(write_fd)
    end = time.monotonic() + timeout_s
    got = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        os.set_blocking(pipe.fileno(), False)
        while time.monotonic() < end:
            with contextlib.suppress(BlockingIOError):
                chunk = pipe.read(64)
                if chunk:
                    got += chunk
                    break
                if chunk == b"":  # the child closed the pipe without saying ready
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    if got.startswith(b"ready"):
        return f"mounted on {os.path.abspath(mountpoint)} (pid {proc.pid}, log {log_file})"
    if proc.poll() is None:
        proc.terminate()
    code = proc.wait(10)
    lines = [ln for ln in Path(log_file).read_text(errors="replace").splitlines() if ln.strip()]
    reason = lines[-1] if lines else f"the mount process exited with code {code}"
    raise MountFailed(f"mount on {mountpoint} failed: {reason.removeprefix('vstore: ')} (log {log_file})")


def default_log_file(mountpoint: str) -> str:
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(tempfile.gettempdir(), f"vstore-mount-{name}.log")


def umount(mountpoint: str) -> None:
    target = os.path.abspath(mountpoint)
    if not os.path.ismount(target):
        raise UsageError(f"{target} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    argv = [tool, "-u", target] if tool else ["umount", target]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise MountFailed(f"cannot unmount {target}: {(result.stderr or result.stdout).strip() or 'failed'}")
