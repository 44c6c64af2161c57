"""``vstore demo [--dir DIR]``: a local cluster of 3 MDS and 3 chunkservers on loopback,
mounted, until Ctrl-C (``make demo`` runs it).

Under DIR (default ./vstore-demo): ``cluster.secret``, one config and data dir per node
(``mds-1..3``, ``cs-1..3``, each chunkserver its own failure-domain host label so three copies
can be placed), ``client.toml``, ``logs/`` and the mount ``mnt/``. Every node is a real
``vstore serve`` process and the mount a real ``vstore mount`` process, exactly what an
operator runs. A DIR from an earlier demo is started again with its data. Ctrl-C or SIGTERM
unmounts and stops every process (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from vstore.errors import UsageError, UserError

GRACE_S = 10.0
READY_TIMEOUT_S = 90.0


class DemoFailed(UserError):
    exit_code = 1


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("demo", help="run a local 3 MDS + 3 chunkserver cluster, mounted, until Ctrl-C",
                            description="Run a local cluster (3 MDS + 3 chunkservers on loopback), mount it, and "
                                        "keep it running until Ctrl-C.")
    p.add_argument("--dir", default="./vstore-demo", help="where the demo keeps its data and mount")
    p.set_defaults(handler=_demo)


def _die_with_parent() -> None:
    """In each child, before exec: SIGTERM when the demo process dies, however it dies (even
    kill -9), so no node or mount outlives it (Linux PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _layout(root: Path) -> dict[str, object]:
    """Create a new demo under ``root`` (configs, secret, MDS data dirs); return its description."""
    from vstore.metadata.bootstrap import init_founding_member
    from vstore.metadata.passwords import hash_password, new_password
    cluster_id = str(uuid.uuid4())
    password = new_password()
    fd = os.open(root / "admin-password", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:  # a demo's convenience: a real cluster keeps only the hash
        out.write(password + "\n")
    dashboards = {f"mds-{i}": f"127.0.0.1:{_free_port()}" for i in (1, 2, 3)}
    secret = root / "cluster.secret"
    secret.write_bytes(secrets.token_bytes(32))
    secret.chmod(0o600)
    mds = {f"mds-{i}": f"127.0.0.1:{_free_port()}" for i in (1, 2, 3)}
    mds_list = ", ".join(f'"{a}"' for a in mds.values())
    cluster = f'[cluster]\nname = "demo"\nid = "{cluster_id}"\nmds = [{mds_list}]\nsecret_file = "{secret}"\n'
    now = time.time_ns()
    for node_id, address in mds.items():
        init_founding_member(root / node_id, node_id=node_id, cluster_id=cluster_id, members=list(mds.items()),
                             root_now_ns=now, map_size_bytes=1 << 30, admin_password_hash=hash_password(password))
        (root / f"{node_id}.toml").write_text(
            f'[node]\nid = "{node_id}"\nrole = "mds"\nlisten = "{address}"\nhost = "demo-{node_id}"\n'
            f'data_dir = "{root / node_id}"\n\n{cluster}\n[log]\nlevel = "info"\n\n'
            f'[mds]\nadmin_listen = "{dashboards[node_id]}"\n')
    for i in (1, 2, 3):
        name = f"cs-{i}"
        (root / f"{name}.toml").write_text(
            f'[node]\nid = "{name}"\nrole = "cs"\nlisten = "127.0.0.1:{_free_port()}"\nhost = "demo-host-{i}"\n'
            f'data_dir = "{root / name}"\n\n{cluster}\n[log]\nlevel = "info"\n\n'
            f'[chunkserver]\nreserve_bytes = 0\n')
    (root / "client.toml").write_text(f'{cluster}\n[log]\nlevel = "info"\n\n[client]\nid = "demo-client"\n')
    info = {"cluster_id": cluster_id, "mds": mds, "dashboards": dashboards, "created_ns": now}
    (root / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        (root / "logs").mkdir(exist_ok=True)

    def start(self, name: str, *args: str) -> None:
        with open(self.root / "logs" / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "vstore.cli.main", *args], stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, preexec_fn=_die_with_parent)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / "logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise DemoFailed(f"{name} exited with code {proc.returncode}: " + " | ".join(tail))

    def stop(self) -> None:
        mnt = self.root / "mnt"
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


async def _healthy(root: Path, demo: Demo) -> None:
    """Wait for a leader that sees three chunkservers online."""
    from vstore.cli.tools import mds_link
    from vstore.config import load_client_config
    config = load_client_config(root / "client.toml")
    link = mds_link(config, "demo")
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            demo.check_alive()
            for address in map(str, config.cluster.mds):
                try:
                    status = await link.status(address)
                except Exception:  # noqa: BLE001 - not up yet
                    continue
                if status.role == "leader" and status.chunks.get("cs_online") == 3:
                    return
            await asyncio.sleep(0.3)
    finally:
        await link.close_connections()
    raise DemoFailed(f"the cluster did not become healthy within {READY_TIMEOUT_S:g} s (logs in {root / 'logs'})")


def _demo(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    if (root / "demo.json").exists():
        info = json.loads((root / "demo.json").read_text())
        again = True
    elif any(root.iterdir()):
        raise UsageError(f"{root} is not empty and holds no earlier demo; choose an empty or new --dir")
    else:
        info = _layout(root)
        again = False
    mnt = root / "mnt"
    mnt.mkdir(exist_ok=True)
    if os.path.ismount(mnt):
        raise UsageError(f"{mnt} is mounted already: is another demo running on {root}?")
    demo = Demo(root)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        for name in ("mds-1", "mds-2", "mds-3", "cs-1", "cs-2", "cs-3"):
            demo.start(name, "serve", "-c", str(root / f"{name}.toml"))
        asyncio.run(_healthy(root, demo))
        demo.start("mount", "mount", "-c", str(root / "client.toml"), str(mnt), "--foreground")
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            demo.check_alive()
            if time.monotonic() > deadline:
                raise DemoFailed(f"the mount did not come up within 30 s (log {root / 'logs' / 'mount.log'})")
            time.sleep(0.1)
        mds = info["mds"]
        dashboards = info.get("dashboards") or {}
        assert isinstance(mds, dict) and isinstance(dashboards, dict)
        dashboard = f"http://{dashboards['mds-1']}/" if dashboards else "(a demo made before the dashboard: none)"
        password_file = root / "admin-password"
        password = password_file.read_text().strip() if password_file.exists() else "(none)"
        print(f"vstore demo {'restarted' if again else 'running'} in {time.monotonic() - started:.1f} s: "
              f"3 MDS + 3 chunkservers on loopback, replicas 3:2\n"
              f"  mount:      {mnt}\n"
              f"  MDS:        {', '.join(mds.values())}\n"
              f"  configs:    {root}/*.toml (client: {root / 'client.toml'})\n"
              f"  logs:       {root / 'logs'}\n"
              f"  dashboard:  {dashboard}  (any MDS's: {', '.join(dashboards.values())})\n"
              f"  admin password: {password}\n"
              f"Ctrl-C stops everything.", flush=True)
        while not stopping:
            demo.check_alive()
            time.sleep(0.5)
        print("stopping the demo ...", flush=True)
        return 0
    finally:
        demo.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
