"""A real cluster on network-namespace hosts, and the faults the nemesis rows inject into it
(RELIABILITY.md §7, §8).

``NetnsCluster`` builds the cluster the way an operator does (tests/fault/test_operator_e2e.py):
``vstore mkfs`` on the first MDS host, ``vstore add-node --role mds`` on the others,
``vstore add-node --role cs --host hK`` on every chunkserver host, ``vstore serve`` for each
node and ``vstore mount --foreground`` on every client host, each process in its own host's
network namespace (``nsenter --net``: the FUSE mounts stay visible to the test). The only
edits to what the commands wrote are the operator's fast timers in the MDS configs
(``MDS_TIMERS``), so a row does not wait a default minute for a failure to be noticed.

Layout (defaults: 3 MDS hosts, 4 chunkserver hosts, 2 client hosts, one node per host):

    hosts 1..M          mds-1..mds-M      (mds-1 made by mkfs)
    hosts M+1..M+C      cs-1..cs-C        (failure-domain label hK: one host, one domain)
    hosts M+C+1..       client-1..        (mounts at ROOT/mnt-client-N)

Faults, each undone by ``restore()`` and by closing: ``kill(name, sig)`` (SIGKILL by
default), ``stop``/``cont`` (SIGSTOP/SIGCONT), ``restart``, ``partition(host, others,
direction)`` and ``heal()`` (an nftables table named after the netns prefix inside the host's
namespace, dropping TCP and UDP to and/or from the other hosts' addresses).

Observation: ``status()``/``status_json()`` (``vstore status`` from a client host),
``leader()``, ``replicas(path)`` (tests/harness/replicas.py), ``converge()`` (the end state
every row checks: healthy, equal state hashes at one applied index, every chunk at full
replication on distinct hosts, scrub clean), ``report()`` (every node's log tail and the
status, printed and saved on failure).

Ownership: every process is started here and owned by PID (through NetnsHosts); nothing else
is signalled. ``close()`` runs in reverse order of what was made, also after a failure:
callbacks a row registered with ``cleanup`` (a loop device, say), lazy unmounts, SIGCONT for
stopped processes, SIGTERM then SIGKILL by PID, nft tables deleted, namespaces down.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.fsprocs import is_mounted, unmount
from tests.harness.netns import NetnsHosts, unique_prefix
from tests.harness.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
VSTORE = [sys.executable, "-m", "vstore.cli.main"]
PORT_MDS, PORT_CS = 9400, 9402
#: the operator's edits to every MDS config: fast failure detection and short leases, so a
#: row sees a CS offline in 2 s, a rebuild start at 8 s and a dead client's session go at 6 s;
#: election timeouts stay at their defaults (the rows measure those)
MDS_TIMERS = {"cs_offline_after_s": 2, "cs_failed_after_s": 8, "write_lease_s": 5, "capability_skew_s": 2,
              "session_expire_s": 6}
#: log lines of each node a failure report shows
LOG_TAIL_LINES = 80
#: where failure reports are kept (VSTORE_NEMESIS_REPORTS overrides)
REPORTS_DIR = Path(os.environ.get("VSTORE_NEMESIS_REPORTS", "/tmp/vstore-nemesis-reports"))


@dataclass(frozen=True)
class Node:
    name: str          # mds-1, cs-2, client-1
    role: str          # mds, cs, client
    host: int          # NetnsHosts host number
    config: Path


@dataclass(frozen=True)
class Leader:
    name: str
    host: int
    term: int


class NetnsCluster:
    """See the module docstring. A context manager; ``build()`` returns once the cluster is
    healthy and every client has mounted."""

    def __init__(self, root: Path, *, mds: int = 3, cs: int = 4, clients: int = 2, chunk_mib: int = 4,
                 mds_timers: dict[str, int] | None = None, client_deadline_s: int = 60, tag: str = "nm") -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.counts = (mds, cs, clients)
        self.chunk_mib = chunk_mib
        self.client_deadline_s = client_deadline_s
        self.timers = dict(MDS_TIMERS if mds_timers is None else mds_timers)
        self.hosts = NetnsHosts(unique_prefix(tag), mds + cs + clients, grace_s=3.0)
        self.prefix = self.hosts.prefix
        self.nodes: dict[str, Node] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()
        self.mounts: dict[str, Path] = {}
        self.client_config: Path = root / "client.toml"
        self._nft_hosts: dict[int, list[tuple[str, str]]] = {}  # host -> (chain, nft rule)
        self._cleanups: list[Callable[[], object]] = []
        self._entered = False

    # ---- names ------------------------------------------------------------------------------

    @property
    def mds_names(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.role == "mds"]

    @property
    def cs_names(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.role == "cs"]

    @property
    def client_names(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.role == "client"]

    def address(self, name_or_host: str | int) -> str:
        host = name_or_host if isinstance(name_or_host, int) else self.nodes[name_or_host].host
        return self.hosts.address(host)

    def host_of(self, name: str) -> int:
        return self.nodes[name].host

    def name_at(self, address: str) -> str:
        """The node listening at ``host:port``."""
        ip = address.rsplit(":", 1)[0]
        return next(n for n, node in self.nodes.items() if self.hosts.address(node.host) == ip)

    # ---- building ---------------------------------------------------------------------------

    def __enter__(self) -> NetnsCluster:
        self._entered = True
        try:
            self.hosts.up()
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _vstore(self, host: int, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
        return self.hosts.run(host, [*VSTORE, *args], timeout_s=timeout_s, capture_output=True, text=True, cwd=REPO)

    def _ok(self, host: int, *args: str, timeout_s: float = 90) -> str:
        done = self._vstore(host, *args, timeout_s=timeout_s)
        if done.returncode != 0:
            raise AssertionError(f"vstore {' '.join(args)} on host {host} exited {done.returncode}:\n"
                                 f"{done.stderr}{done.stdout}")
        return done.stdout

    def _timers(self, config: Path) -> None:
        config.write_text(config.read_text() + "\n[mds]\n" + "".join(f"{k} = {v}\n" for k, v in self.timers.items()))

    def build(self) -> None:
        m, c, k = self.counts
        mds_addr = {n: f"{self.hosts.address(n)}:{PORT_MDS}" for n in range(1, m + 1)}
        first = self.root / "mds-1"
        out = self._ok(1, "mkfs", "--cluster", "nemesis", "--data", str(first), "--listen", mds_addr[1],
                       "--host", "h1", "--chunk-mib", str(self.chunk_mib))
        assert "admin password:" in out, out
        # the operator copies the secret to every host (one file system here: one copy, kept
        # outside every data dir, so that replacing mds-1 with a wiped one keeps it)
        secret = self.root / "cluster.secret"
        shutil.copyfile(first / "cluster.secret", secret)
        secret.chmod(0o600)
        self._timers(first / "mds.toml")
        self.nodes["mds-1"] = Node("mds-1", "mds", 1, first / "mds.toml")
        self.start("mds-1")
        for n in range(2, m + 1):
            data = self.root / f"mds-{n}"
            self._ok(n, "add-node", "--role", "mds", "--join", mds_addr[1], "--data", str(data), "--listen",
                     mds_addr[n], "--node-id", f"mds-{n}", "--host", f"h{n}", "--secret-file", str(secret))
            self._timers(data / "mds.toml")
            self.nodes[f"mds-{n}"] = Node(f"mds-{n}", "mds", n, data / "mds.toml")
            self.start(f"mds-{n}")
        for i in range(1, c + 1):
            host = m + i
            data = self.root / f"cs-{i}"
            self._ok(host, "add-node", "--role", "cs", "--join", mds_addr[1], "--data", str(data), "--listen",
                     f"{self.hosts.address(host)}:{PORT_CS}", "--node-id", f"cs-{i}", "--host", f"h{host}",
                     "--secret-file", str(secret))
            self.nodes[f"cs-{i}"] = Node(f"cs-{i}", "cs", host, data / "cs.toml")
            self.start(f"cs-{i}")
        # a client config is the [cluster] section of any node's config (the operator copies it)
        cluster = _section(self.nodes["cs-1"].config.read_text(), "cluster")
        assert all(a in cluster for a in mds_addr.values()), cluster
        self.client_config.write_text(cluster)   # the observer's: status, scrub, replicas
        for i in range(1, k + 1):
            host = m + c + i
            config = self.root / f"client-{i}.toml"
            config.write_text(cluster + f'\n[log]\nlevel = "info"\n\n[client]\nid = "client-{i}"\n'
                                        f'host = "h{host}"\ndeadline_s = {self.client_deadline_s}\n')
            self.nodes[f"client-{i}"] = Node(f"client-{i}", "client", host, config)
        self.wait_healthy(timeout_s=120, what="the new cluster healthy (every MDS a voter, every CS online)")
        for name in self.client_names:
            self.mount(name)

    def replace_mds(self, name: str, *, join: str) -> tuple[str, str]:
        """An operator replaces dead MDS ``name`` (it must not run): ``vstore rm-node`` it,
        wipe its data dir, ``vstore add-node --role mds`` it again at the same address
        through ``join`` (a live member) and start it; returns both commands' output."""
        assert not self.running(name), f"{name} still runs"
        node = self.nodes[name]
        removed = self.observe([*VSTORE, "rm-node", "-c", str(self.client_config), name], timeout_s=90)
        if removed.returncode != 0:
            raise AssertionError(f"rm-node {name} exited {removed.returncode}: {removed.stdout}{removed.stderr}")
        data = node.config.parent
        shutil.rmtree(data)
        added = self._ok(node.host, "add-node", "--role", "mds", "--join", f"{self.address(join)}:{PORT_MDS}",
                         "--data", str(data), "--listen", f"{self.address(name)}:{PORT_MDS}", "--node-id", name,
                         "--host", f"h{node.host}", "--secret-file", str(self.root / "cluster.secret"))
        self._timers(node.config)
        self._log(name, "replaced: rm-node, data dir wiped, add-node")
        self.start(name)
        return removed.stdout, added

    # ---- processes --------------------------------------------------------------------------

    def _log(self, name: str, line: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        with open(self.logs / f"{name}.log", "a") as fp:
            fp.write(f"===== nemesis {now} {line} =====\n")

    def start(self, name: str) -> None:
        """Start node ``name`` (serve, or mount for a client) in its host."""
        assert name not in self.procs, f"{name} is running already"
        node = self.nodes[name]
        if node.role == "client":
            self.mount(name)
            return
        self._log(name, "start")
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = self.hosts.popen(node.host, [*VSTORE, "--log-level", "info", "serve", "-c",
                                                            str(node.config)],
                                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def mount(self, name: str) -> Path:
        node = self.nodes[name]
        mnt = self.root / f"mnt-{name}"
        mnt.mkdir(exist_ok=True)
        if is_mounted(mnt):
            unmount(mnt)
        self._log(name, "mount")
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = self.hosts.popen(node.host, [*VSTORE, "mount", "-c", str(node.config), str(mnt), "--foreground",
                                                "--allow-other"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs[name] = proc

        def mounted() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"mount {name} exited {proc.returncode}:\n{self._tail(name)}")
            return os.path.ismount(mnt)
        wait_until(mounted, timeout_s=60, interval_s=0.1, what=f"{mnt} mounted")
        self.mounts[name] = mnt
        return mnt

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to node ``name`` (by PID); for SIGKILL, reap it. A killed client's
        mount is left dead (ENOTCONN): the row unmounts it with ``detach``."""
        proc = self.procs[name]
        self._log(name, f"signal {signal.Signals(sig).name}")
        os.kill(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(30)
            self.stopped.discard(name)
            self._forget(name)

    def stop(self, name: str) -> None:
        """SIGSTOP: the process hangs (a GC pause), its sockets stay open."""
        self.kill(name, signal.SIGSTOP)
        self.stopped.add(name)

    def cont(self, name: str) -> None:
        self.kill(name, signal.SIGCONT)
        self.stopped.discard(name)

    def terminate(self, name: str) -> None:
        """A clean stop (SIGTERM, SIGKILL after the grace period)."""
        proc = self.procs[name]
        if name in self.stopped:
            self.cont(name)
        self._log(name, "terminate")
        self.hosts.kill(proc)
        self.procs.pop(name, None)

    def restart(self, name: str) -> None:
        """Start ``name`` again (after killing it if it still runs)."""
        if self.running(name):
            self.kill(name)
        self._forget(name)
        self.start(name)

    def detach(self, name: str) -> None:
        """``fusermount3 -u -z`` the mountpoint of a client whose mount process is gone."""
        mnt = self.mounts.pop(name, self.root / f"mnt-{name}")
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
        assert not is_mounted(mnt), f"{mnt} still mounted after fusermount3 -u -z"

    def _forget(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(ValueError):
                self.hosts.procs.remove(proc)

    def cleanup(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` first when the cluster closes (a row's loop device, a mount of its own)."""
        self._cleanups.append(callback)

    # ---- partitions (nftables inside the host's namespace) ----------------------------------------

    @property
    def nft_table(self) -> str:
        return f"{self.prefix}_nemesis"

    def partition(self, host: str | int, others: Iterable[str | int], direction: str = "both") -> None:
        """Drop TCP and UDP between ``host`` (a node name or host number) and ``others``:
        ``both`` directions, only ``in`` (packets from them) or only ``out`` (packets to them).
        Rules accumulate per host until ``heal``."""
        if direction not in ("both", "in", "out"):
            raise ValueError(f"direction {direction!r}: both, in or out")
        k, addresses = self._peers_of(host, others)
        if direction in ("both", "in"):
            self._add_rule(k, "input", f"ip saddr {{ {addresses} }} meta l4proto {{ tcp, udp }} drop")
        if direction in ("both", "out"):
            self._add_rule(k, "output", f"ip daddr {{ {addresses} }} meta l4proto {{ tcp, udp }} drop")
        for o in others:
            self._log(o if isinstance(o, str) else f"host{o}", f"partitioned from host {k} ({direction})")

    def flaky(self, host: str | int, others: Iterable[str | int], *, drop_percent: int = 0, udp_only: bool = False,
              reset_permille: int = 0) -> None:
        """A bad network between ``host`` and ``others`` (RELIABILITY F5), both ways: drop
        ``drop_percent`` % of the packets at random (UDP only: the heartbeats), and answer
        ``reset_permille`` ‰ of the TCP segments ``host`` sends with a reset (the connection
        breaks under the calls in flight). Rules accumulate until ``heal``."""
        k, addresses = self._peers_of(host, others)
        proto = "udp" if udp_only else "{ tcp, udp }"
        if drop_percent:
            for chain, match in (("input", "saddr"), ("output", "daddr")):
                self._add_rule(k, chain, f"ip {match} {{ {addresses} }} meta l4proto {proto} "
                                         f"numgen random mod 100 < {drop_percent} drop")
        if reset_permille:
            self._add_rule(k, "output", f"ip daddr {{ {addresses} }} tcp flags & (syn | rst) == 0 "
                                        f"numgen random mod 1000 < {reset_permille} reject with tcp reset")
        self._log(f"host{k}", f"flaky network to {addresses}: drop {drop_percent}% "
                              f"{'udp' if udp_only else 'tcp+udp'}, reset {reset_permille}‰ of tcp")

    def _peers_of(self, host: str | int, others: Iterable[str | int]) -> tuple[int, str]:
        k = host if isinstance(host, int) else self.host_of(host)
        addresses = sorted({self.address(o) for o in others} - {self.hosts.address(k)})
        assert addresses, "a fault between a host and nobody"
        return k, ", ".join(addresses)

    def _add_rule(self, k: int, chain: str, rule: str) -> None:
        rules = self._nft_hosts.setdefault(k, [])
        rules.append((chain, rule))
        table = self.nft_table
        script = [f"table inet {table} {{}}", f"delete table inet {table}", f"table inet {table} {{"]
        for name in ("input", "output"):
            script.append(f"  chain {name} {{ type filter hook {name} priority -10; policy accept;")
            script.extend(f"    {r}" for c, r in rules if c == name)
            script.append("  }")
        script.append("}")
        self._nft(k, "\n".join(script) + "\n")

    def heal(self) -> None:
        """Delete every nft table this cluster made; idempotent."""
        for k in list(self._nft_hosts):
            self._nft(k, f"table inet {self.nft_table} {{}}\ndelete table inet {self.nft_table}\n")
            del self._nft_hosts[k]

    def _nft(self, host: int, script: str) -> None:
        done = self.hosts.run(host, ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout_s=30)
        if done.returncode != 0:
            raise AssertionError(f"nft on host {host} exited {done.returncode}: {done.stderr}\n{script}")

    # ---- observation ------------------------------------------------------------------------

    def observe(self, argv: Sequence[str], *, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the root namespace: the observer outside every fault. It reaches every
        host over the bridge, and no partition rule names its address, so what it sees is the
        cluster's own state, not the fault's view of it."""
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, cwd=REPO)

    def status(self) -> subprocess.CompletedProcess[str]:
        """``vstore status`` (exit 0 healthy, 1 degraded, 2 unavailable)."""
        return self.observe([*VSTORE, "status", "-c", str(self.client_config)])

    def status_json(self) -> dict[str, Any]:
        done = self.observe([*VSTORE, "status", "-c", str(self.client_config), "--json"])
        try:
            return dict(json.loads(done.stdout), exit=done.returncode)
        except json.JSONDecodeError:
            return {"exit": done.returncode, "mds": {}, "error": done.stderr[-2000:]}

    def leader(self, status: dict[str, Any] | None = None) -> Leader | None:
        """The MDS answering as leader with the highest term (an old leader cut off may still
        think it leads at a lower term), or None."""
        status = self.status_json() if status is None else status
        leaders = [s for s in (status.get("mds") or {}).values() if s and s.get("role") == "leader"]
        if not leaders:
            return None
        best = max(leaders, key=lambda s: s["term"])
        return Leader(best["node_id"], self.host_of(best["node_id"]), best["term"])

    def wait_leader(self, *, not_: str | None = None, timeout_s: float = 45) -> Leader:
        """A leader other than ``not_`` (the one a row just took down), at a term above its."""
        seen: list[Any] = []

        def found() -> Leader | None:
            status = self.status_json()
            seen[:] = [status]
            leader = self.leader(status)
            return leader if leader is not None and leader.name != not_ else None
        return wait_until(found, timeout_s=timeout_s, interval_s=0.3,
                          what=lambda: f"an MDS leader other than {not_} (last status: {_brief(seen)})")

    def elected_after_s(self, leader: Leader, fault_wall_s: float) -> float | None:
        """Seconds from ``fault_wall_s`` (a ``time.time()`` reading taken at the fault) to the
        moment ``leader`` logged that it became leader at its term (``raft.leader_changed``):
        the election time itself, not that plus the latency of polling ``vstore status``
        (up to its 3 s deadline per MDS that does not answer). None if the line is missing."""
        pattern = re.compile(rf"^(\S+) INFO \S+ event=raft\.leader_changed node={re.escape(leader.name)} "
                             rf"role=leader leader={re.escape(leader.name)} term={leader.term}\b")
        path = self.logs / f"{leader.name}.log"
        for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
            match = pattern.match(line)
            if match:
                stamp = datetime.datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
                return stamp.timestamp() - fault_wall_s
        return None

    def wait_healthy(self, *, timeout_s: float = 90, what: str = "vstore status exits 0") -> str:
        seen: list[str] = []

        def healthy() -> bool:
            r = self.status()
            seen[:] = [r.stdout + r.stderr]
            return r.returncode == 0
        wait_until(healthy, timeout_s=timeout_s, interval_s=1.0, what=lambda: f"{what}; last status:\n{seen[-1:]}")
        return seen[-1]

    def replicas(self, path: str = "/") -> dict[str, list[dict[str, Any]]]:
        """Every chunk of every file under cluster ``path`` and its replicas (tests/harness/replicas.py)."""
        done = self.observe([sys.executable, "-m", "tests.harness.replicas", "-c", str(self.client_config), path],
                            timeout_s=120)
        if done.returncode != 0:
            raise AssertionError(f"replicas of {path}: {done.stderr.strip()}")
        return dict(json.loads(done.stdout))

    def force_read(self, cs: str, path: str) -> dict[str, list[dict[str, Any]]]:
        """Every chunk under ``path`` read straight from chunkserver ``cs`` at its current
        version, whether the MDS lists ``cs`` as a replica or not (tests/harness/replicas.py)."""
        done = self.observe([sys.executable, "-m", "tests.harness.replicas", "-c", str(self.client_config),
                             "--force-read", f"{self.address(cs)}:{PORT_CS}", path], timeout_s=120)
        if done.returncode != 0:
            raise AssertionError(f"forced reads of {path} from {cs}: {done.stderr.strip()}")
        return dict(json.loads(done.stdout))

    def list_via(self, mds: str, path: str) -> tuple[dict[str, str], float, float]:
        """The entries of directory ``path`` as a fresh client that knows only MDS ``mds``
        reads them (it follows redirects, as any client does), with the monotonic times the
        read began and ended. A deposed leader answering from stale state shows here."""
        config = self.root / f"only-{mds}.toml"
        text = self.client_config.read_text()
        start = text.index("mds = [")
        end = text.index("]", start)
        config.write_text(text[:start] + f'mds = ["{self.address(mds)}:{PORT_MDS}"' + text[end:])
        invoke = time.monotonic()
        done = self.observe([sys.executable, "-m", "tests.harness.replicas", "--list", "-c", str(config), path])
        complete = time.monotonic()
        if done.returncode != 0:
            raise AssertionError(f"listing {path} via {mds}: {done.stderr.strip()}")
        return dict(json.loads(done.stdout)), invoke, complete

    def hosts_holding(self, path: str) -> list[str]:
        """The chunkservers (node names) holding a replica of some chunk of ``path``."""
        names = {self.name_at(r["address"]) for chunks in self.replicas(path).values()
                 for c in chunks for r in c["replicas"]}
        return sorted(names)

    def wait_hashes_equal(self, *, timeout_s: float = 60) -> dict[str, Any]:
        """Every MDS answers, at one applied index, with one state hash. Two MDS at the same
        applied index with different hashes is divergence: fail at once."""
        seen: list[Any] = []

        def equal() -> dict[str, Any] | None:
            status = self.status_json()
            mds = status.get("mds") or {}
            seen[:] = [{a: s and (s["node_id"], s["role"], s["term"], s["applied"], s["state_hash"])
                        for a, s in mds.items()}]
            answers = [s for s in mds.values() if s]
            by_index: dict[int, set[Any]] = {}
            for s in answers:
                by_index.setdefault(s["applied"], set()).add(s["state_hash"])
            diverged = {i: h for i, h in by_index.items() if len(h) > 1}
            assert not diverged, f"MDS state diverged: different state hashes at one applied index: {seen[0]}"
            if len(answers) == len(self.mds_names) == len(mds) and len(by_index) == 1:
                return status
            return None
        return wait_until(equal, timeout_s=timeout_s, interval_s=0.3,
                          what=lambda: f"every MDS at one applied index with one state hash ({seen[-1:]})")

    def converge(self, path: str, *, timeout_s: float = 120) -> str:
        """The end state of every row (RELIABILITY.md §7 "Check"): ``vstore status`` exits 0
        within ``timeout_s``; every MDS at one applied index with one state hash; every chunk
        under ``path`` at its full replication (3) on distinct hosts; ``vstore scrub`` of
        ``path`` clean. Returns a one-line summary."""
        started = time.monotonic()
        self.wait_healthy(timeout_s=timeout_s, what="the cluster healthy again")
        status = self.wait_hashes_equal()
        seen: list[Any] = []

        def replicated() -> bool:
            bad = []
            for file, chunks in self.replicas(path).items():
                for c in chunks:
                    hosts = [r["host"] for r in c["replicas"]]
                    if len(hosts) != 3 or len(set(hosts)) != 3:
                        bad.append((file, c["index"], hosts))
            seen[:] = [bad[:10]]
            return not bad
        wait_until(replicated, timeout_s=timeout_s, interval_s=1.0,
                   what=lambda: f"every chunk under {path} at 3 replicas on distinct hosts (not: {seen[-1:]})")
        scrub = self.observe([*VSTORE, "scrub", "-c", str(self.client_config), path], timeout_s=300)
        assert scrub.returncode == 0, f"vstore scrub {path} exited {scrub.returncode}:\n{scrub.stdout}{scrub.stderr}"
        applied = {s["node_id"]: s["applied"] for s in status["mds"].values()}
        return f"converged in {time.monotonic() - started:.1f} s (applied {applied})"

    def remount(self, name: str) -> Path:
        """Unmount client ``name`` cleanly (lazily if busy), let its process end, mount again:
        a new session (what an operator does after its session expired)."""
        mnt = self.mounts.pop(name, self.root / f"mnt-{name}")
        unmount(mnt)
        proc = self.procs.pop(name, None)
        if proc is not None:
            self.hosts.kill(proc)
        return self.mount(name)

    def mount_works(self, name: str) -> bool:
        """Can client ``name`` create and remove a file (a mutation: it needs a live session)?"""
        probe = self.mounts.get(name, self.root / f"mnt-{name}") / f".nemesis-probe-{name}"
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600))
            os.unlink(probe)
            return True
        except OSError as exc:
            self._log(name, f"probe failed: {exc!r}")
            return False

    def restore(self) -> None:
        """Undo every fault: heal, SIGCONT, start what is down, remount dead mounts and mounts
        whose session expired; then wait for the cluster to be healthy."""
        self.heal()
        for name in list(self.stopped):
            self.cont(name)
        for name, node in self.nodes.items():
            if not self.running(name):
                self._forget(name)
                if node.role == "client":
                    self.detach(name)
                self.start(name)
        self.wait_healthy(timeout_s=120, what="the cluster healthy after restoring every node")
        for name in self.client_names:
            if not self.mount_works(name):
                self.remount(name)
                assert self.mount_works(name), f"{name} cannot write even after a remount"

    def _tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def log_since(self, name: str, marker: str) -> str:
        """Node ``name``'s log after the last harness marker line containing ``marker``
        (``signal SIGCONT``, say): what it did after that fault."""
        path = self.logs / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        starts = [i for i, line in enumerate(lines) if line.startswith("===== nemesis ") and marker in line]
        return "\n".join(lines[starts[-1] + 1:]) if starts else ""

    def report(self, why: str) -> Path:
        """Every node's log tail and ``vstore status``, printed; the full logs and the report
        copied to a directory of their own under ``REPORTS_DIR`` (outside pytest's temporary
        directories, which later runs delete). Returns that directory."""
        parts = [f"##### nemesis report: {why} (prefix {self.prefix}, root {self.root})"]
        for name in self.nodes:
            parts.append(f"===== {name} (host {self.nodes[name].host} {self.address(name)}, "
                         f"{'running' if self.running(name) else 'not running'}"
                         f"{', stopped' if name in self.stopped else ''}) =====\n{self._tail(name)}")
        try:
            status = self.status()
            parts.append(f"===== vstore status (exit {status.returncode}) =====\n{status.stdout}{status.stderr}")
        except Exception as exc:  # noqa: BLE001 - a report must not fail
            parts.append(f"===== vstore status failed: {exc!r}")
        text = "\n".join(parts)
        kept = REPORTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.prefix}-" \
                             f"{''.join(c if c.isalnum() else '_' for c in why)[:60]}"
        kept.mkdir(parents=True, exist_ok=True)
        (kept / "report.txt").write_text(text)
        shutil.copytree(self.logs, kept / "logs", dirs_exist_ok=True)
        print(text)
        print(f"##### full logs, report and history kept in {kept}")
        return kept

    # ---- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Undo everything, in reverse order, whatever state the cluster is in."""
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"{what}: {exc!r}")
        for callback in reversed(self._cleanups):
            attempt("cleanup callback", callback)
        self._cleanups.clear()
        for name in list(self.stopped):
            attempt(f"SIGCONT {name}", lambda n=name: os.kill(self.procs[n].pid, signal.SIGCONT))
        self.stopped.clear()
        for name in self.client_names:
            mnt = self.root / f"mnt-{name}"
            attempt(f"unmount {mnt}", lambda m=mnt: unmount(m))
        for name in [*self.client_names, *self.cs_names, *self.mds_names]:
            proc = self.procs.pop(name, None)
            if proc is not None:
                attempt(f"stop {name}", lambda p=proc: self.hosts.kill(p))
        attempt("nft heal", self.heal)
        attempt("netns down", self.hosts.close)
        for name in self.client_names:
            mnt = self.root / f"mnt-{name}"
            if is_mounted(mnt):
                attempt(f"lazy unmount {mnt}", lambda m=mnt: subprocess.run(["fusermount3", "-u", "-z", str(m)],
                                                                           capture_output=True, timeout=30))
        if errors:
            raise AssertionError("nemesis cluster teardown: " + "; ".join(errors))


def _section(text: str, name: str) -> str:
    """The ``[name]`` section of a TOML text (up to the next table header), header included."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            inside = stripped == f"[{name}]"
        if inside:
            out.append(line)
    assert out, f"no [{name}] section in:\n{text}"
    return "\n".join(out) + "\n"


def _brief(seen: Sequence[Any]) -> str:
    if not seen:
        return "none"
    status = seen[-1]
    mds = status.get("mds") or {}
    return f"exit {status.get('exit')}, " + ", ".join(
        f"{a}: {s['node_id']} {s['role']} term {s['term']}" if s else f"{a}: down" for a, s in mds.items())
