"""Issue 7's "Must hold": a cluster built end to end through the CLI only, as an operator
would, on four hosts (network namespaces of deploy/netns-hosts, each with its own address):

* host 1: ``vstore mkfs``, then its MDS with ``vstore serve``;
* hosts 2 and 3: ``vstore add-node --role mds`` (learners, promoted by the leader once caught
  up) and ``vstore serve``;
* hosts 1-3: ``vstore add-node --role cs`` and ``vstore serve``;
* host 4: ``vstore mount`` with a client config holding only the [cluster] section.

Then: write through the mount, ``vstore status`` exits 0; kill a chunkserver (SIGKILL), status
exits 1 and shows the rebuild, which ``vstore top`` measures; the rebuild finishes; the
chunkserver comes back and status exits 0 again. The data read back is what was written.

The only edit to what the commands wrote is the operator's: shorter CS failure and write-lease
timers in the MDS configs, so the test does not wait the default minute (and a new leader's
lease wait) before the rebuild starts.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import is_mounted, unmount
from tests.harness.netns import NetnsHosts, netns_available, unique_prefix
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.timeout(420), pytest.mark.skipif(netns_available() is not None,
                                                           reason=str(netns_available()))]

VSTORE = [sys.executable, "-m", "vstore.cli.main"]
PORT_MDS, PORT_CS = 9400, 9402
MIB = 1 << 20


class Operator:
    """What an operator types, host by host; every long-running process is owned by PID."""

    def __init__(self, hosts: NetnsHosts, root: Path) -> None:
        self.hosts = hosts
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, host: int, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
        return self.hosts.run(host, [*VSTORE, *args], timeout_s=timeout_s, capture_output=True, text=True)

    def ok(self, host: int, *args: str) -> str:
        done = self.run(host, *args)
        assert done.returncode == 0, f"vstore {' '.join(args)} on host {host}: {done.stderr}{done.stdout}"
        return done.stdout

    def serve(self, host: int, name: str, config: Path) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = self.hosts.popen(host, [*VSTORE, "--log-level", "info", "serve", "-c", str(config)],
                                            stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self, name: str) -> None:
        self.hosts.kill(self.procs.pop(name), grace_s=0)  # SIGTERM with no grace, then SIGKILL

    def sigkill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(30)
        self.hosts.procs.remove(proc)

    def dump_logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n" + "\n".join(p.read_text(errors="replace").splitlines()[-60:])
                         for p in sorted(self.logs.glob("*.log")))


@pytest.fixture
def operator(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Operator]:
    mnt = tmp_path / "mnt"
    with NetnsHosts(unique_prefix("op"), 4) as hosts:
        op = Operator(hosts, tmp_path)
        try:
            yield op
        finally:
            if call_failed(request.node):
                print(op.dump_logs())
            if is_mounted(mnt):
                unmount(mnt)


def _fast_failure_detection(config: Path) -> None:
    config.write_text(config.read_text() + "\n[mds]\ncs_offline_after_s = 2\ncs_failed_after_s = 6\n"
                                           "write_lease_s = 5\ncapability_skew_s = 2\n")


def _status(op: Operator, config: Path) -> subprocess.CompletedProcess[str]:
    return op.run(4, "status", "-c", str(config), timeout_s=60)


async def test_an_operator_builds_a_four_host_cluster_loses_a_chunkserver_and_recovers(
        operator: Operator, tmp_path: Path) -> None:
    op, hosts = operator, operator.hosts
    started = time.monotonic()
    mds = {k: f"{hosts.address(k)}:{PORT_MDS}" for k in (1, 2, 3)}
    d1 = tmp_path / "host1" / "mds"
    made = op.ok(1, "mkfs", "--cluster", "prod", "--data", str(d1), "--listen", mds[1], "--host", "host1")
    assert "admin password:" in made
    secret = d1 / "cluster.secret"  # copied to every host by the operator (same file system here)
    _fast_failure_detection(d1 / "mds.toml")
    op.serve(1, "mds-1", d1 / "mds.toml")
    for k in (2, 3):
        data = tmp_path / f"host{k}" / "mds"
        out = op.ok(k, "add-node", "--role", "mds", "--join", mds[1], "--data", str(data), "--listen", mds[k],
                    "--node-id", f"mds-{k}", "--host", f"host{k}", "--secret-file", str(secret))
        assert "as a learner" in out
        _fast_failure_detection(data / "mds.toml")
        op.serve(k, f"mds-{k}", data / "mds.toml")
    for k in (1, 2, 3):
        data = tmp_path / f"host{k}" / "cs"
        out = op.ok(k, "add-node", "--role", "cs", "--join", mds[k], "--data", str(data), "--listen",
                    f"{hosts.address(k)}:{PORT_CS}", "--node-id", f"cs-{k}", "--host", f"host{k}",
                    "--secret-file", str(secret))
        assert f"chunkserver cs-{k} joined cluster 'prod'" in out
        op.serve(k, f"cs-{k}", data / "cs.toml")

    # host 4: a client config is the [cluster] section (the operator copies it from any node)
    node_config = (tmp_path / "host3" / "cs" / "cs.toml").read_text()
    client = tmp_path / "client.toml"
    client.write_text(node_config[node_config.index("[cluster]"):])
    assert all(address in client.read_text() for address in mds.values()), "the joined node lists every MDS"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    op.ok(4, "mount", "-c", str(client), str(mnt))
    assert is_mounted(mnt)

    healthy = await wait_for(lambda: (r := _status(op, client)).returncode == 0 and r, timeout_s=90, interval_s=1,
                             what="status exits 0 on the new cluster")
    assert "HEALTHY" in healthy.stdout and "chunkservers 3/3 online" in healthy.stdout
    assert healthy.stdout.count(" leader ") == 1 and healthy.stdout.count(" follower ") == 2, healthy.stdout
    built_s = time.monotonic() - started

    # two copies per chunk, so losing a host leaves a server to rebuild onto
    op.ok(4, "set-attr", "-c", str(client), "/", "replicas=2:1")
    (mnt / "vm").mkdir()
    written = {}
    for n in range(3):
        data = os.urandom(40 * MIB + n * 4097)
        path = mnt / "vm" / f"disk-{n}.img"
        with open(path, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        written[path.name] = hashlib.sha256(data).hexdigest()
    await wait_for(lambda: _status(op, client).returncode == 0, timeout_s=60, interval_s=1,
                   what="healthy after the writes")

    # vstore top watches from the client host while the chunkserver dies and the rebuild runs
    frames_file = tmp_path / "top.out"
    with open(frames_file, "wb") as out:
        top = hosts.popen(4, [*VSTORE, "top", "-c", str(client), "--interval-s", "0.5", "--iterations", "400"],
                          stdout=out, stderr=subprocess.STDOUT)
    op.sigkill("cs-2")
    seen: list[str] = []

    def rebuilding() -> subprocess.CompletedProcess[str] | None:
        r = _status(op, client)
        seen.append(r.stdout)
        return r if r.returncode == 1 and "rebuild:" in r.stdout else None
    degraded = await wait_for(rebuilding, timeout_s=60, interval_s=0.3,
                              what=lambda: f"status exits 1 and shows the rebuild (last: {seen[-1:]})")
    assert "DEGRADED" in degraded.stdout and "1 of 3 chunkservers not online" in degraded.stdout

    def rebuilt() -> bool:
        frames = frames_file.read_text(errors="replace").split("vstore top - ")[1:-1]  # the last may be partial
        started = next((i for i, f in enumerate(frames) if re.search(r"waiting for repair [1-9]", f)), None)
        return started is not None and any("waiting for repair 0" in f and "failed" in f for f in frames[started:])
    await wait_for(rebuilt, timeout_s=180, interval_s=0.5, what="the rebuild onto the two hosts left finishing")
    hosts.kill(top)
    rates = [float(r) for r in re.findall(r"rebuild: now ([0-9.]+) MiB/s", frames_file.read_text(errors="replace"))]
    assert max(rates, default=0) > 0, frames_file.read_text()[-3000:]
    still = _status(op, client)
    assert still.returncode == 1 and "1 of 3 chunkservers not online" in still.stdout

    op.serve(2, "cs-2", tmp_path / "host2" / "cs" / "cs.toml")
    back = await wait_for(lambda: (r := _status(op, client)).returncode == 0 and r, timeout_s=120, interval_s=1,
                          what="status exits 0 once the chunkserver is back")
    assert "HEALTHY" in back.stdout
    for name, digest in written.items():
        assert hashlib.sha256((mnt / "vm" / name).read_bytes()).hexdigest() == digest
    op.ok(4, "umount", str(mnt))
    print(f"mkfs to a mounted, healthy 3+3 cluster on 4 hosts: {built_s:.1f} s; "
          f"rebuild rate seen by vstore top: max {max(rates):.1f} MiB/s, nonzero samples "
          f"{[r for r in rates if r]}")
