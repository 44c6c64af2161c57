"""Hosts as network namespaces for fault tests: a thin owner of ``deploy/netns-hosts``.

``NetnsHosts(prefix, count)`` builds ``count`` hosts (``up``), starts processes inside a host's
network namespace (``popen``/``run``, through ``nsenter --net`` so that a FUSE mount made in
a host is visible to the test), and at the end kills every process it started, by PID
(SIGTERM, then SIGKILL after a grace period), and runs ``down``, even when the test failed.
``down`` also kills whatever is still inside the namespaces (a grandchild that outlived its
parent), and only that: it finds them with ``ip netns pids``.

This module owns the namespaces of its prefix and nothing else: it never touches another
prefix, the firewall or a process it did not start (or that was not started in its hosts).

    with NetnsHosts(unique_prefix(), 3) as hosts:
        server = hosts.popen(1, ["vstore", "serve", "-c", cfg], stdout=log)
        hosts.run(2, ["vstore", "status", "-c", cfg])

Exceptions: ``NetnsError`` when the script refuses or fails (its stderr is in the message).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "netns-hosts"
NETNS_DIR = Path("/run/netns")
#: the script's own limit: interface names P-hNN must fit in 15 bytes
PREFIX_MAX_CHARS = 10
#: a process gets this long to exit after SIGTERM before SIGKILL (pyfuse3 ``cleanup``'s order)
GRACE_S = 5.0
#: ``up``/``list`` take a fraction of a second; ``down`` at most its grace period plus that
SCRIPT_DEADLINE_S = 60.0

_counter = itertools.count()


class NetnsError(RuntimeError):
    """``deploy/netns-hosts`` refused or failed; the message holds the command and its stderr."""


def script(*args: str, check: bool = True, timeout_s: float = SCRIPT_DEADLINE_S) -> subprocess.CompletedProcess[str]:
    """Run ``deploy/netns-hosts ARGS``; raises NetnsError on a non-zero exit when ``check``."""
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise NetnsError(f"netns-hosts {' '.join(args)} exited {result.returncode}: "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def _base36(n: int, width: int = 1) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n or not out:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out.rjust(width, "0")


def unique_prefix(tag: str = "vs") -> str:
    """A prefix no other test run uses at the same time: ``tag`` + this process's pid in base
    36, padded to 5 digits (Linux pids are below 36**5), + a per-process counter in base 36:
    at most 10 characters. The fixed width makes the pair unambiguous, so two concurrent
    pytest processes differ in the pid part and two NetnsHosts of one process in the counter.
    A stale prefix of a dead run whose pid came round again is refused by ``up`` with a clear
    message, and ``down`` of it is safe."""
    prefix = f"{tag}{_base36(os.getpid(), 5)}{_base36(next(_counter))}"
    if len(prefix) > PREFIX_MAX_CHARS or not prefix[:1].isalpha() or not prefix.isalnum() or prefix != prefix.lower():
        raise ValueError(f"prefix {prefix!r} from tag {tag!r}: needs a short lower-case tag "
                         f"(at most {PREFIX_MAX_CHARS} characters in all)")
    return prefix


@functools.cache
def netns_available() -> str | None:
    """None when this machine can build netns hosts, else the reason it cannot (for a skip)."""
    if os.geteuid() != 0:
        return "network namespace hosts need root (ip netns, veth pairs, a bridge)"
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux"), ("flock", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package {package}; needed for network namespace hosts)"
    try:
        probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"'ip netns list' failed: {exc}"
    if probe.returncode != 0:
        return f"'ip netns' is not usable here: {probe.stderr.strip() or probe.returncode}"
    # root in a container without CAP_SYS_ADMIN or CAP_NET_ADMIN can list but not create
    try:
        probe = subprocess.run(["unshare", "--net", "ip", "link", "add", "vsprobe0", "type", "bridge"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    if probe.returncode != 0:
        return f"cannot create a network namespace with a bridge: {probe.stderr.strip() or probe.returncode}"
    return None


class NetnsHosts:
    """``count`` hosts named ``PREFIX-h1..PREFIX-hN``; host numbers are 1-based.

    A context manager (``with``, or ``ExitStack.enter_context``): entering runs ``up``,
    leaving runs ``close``. ``close`` is idempotent and also right after a failed ``up``.
    """

    def __init__(self, prefix: str, count: int, *, subnet: str | None = None, grace_s: float = GRACE_S) -> None:
        self.prefix = prefix
        self.count = count
        self.subnet = subnet
        self.grace_s = grace_s
        self.procs: list[subprocess.Popen[Any]] = []
        self._addresses: dict[int, str] = {}
        self._up = False

    # -- lifecycle ------------------------------------------------------------------------

    def up(self) -> NetnsHosts:
        """Build the hosts. Raises NetnsError (and leaves nothing behind) when the script
        refuses: prefix in use, subnet in use, not root."""
        args = ["up", "--prefix", self.prefix, "--hosts", str(self.count)]
        if self.subnet:
            args += ["--subnet", self.subnet]
        try:
            result = script(*args)
        except subprocess.TimeoutExpired:
            # killed half way, before its own undo could run: close() must run down
            self._up = True
            raise
        # A refused or failed up removed what it made itself, and only that: running down now
        # could remove the hosts of whoever holds the prefix (the reason for the refusal).
        self._up = True
        self._addresses = self._parse_list(result.stdout)
        if sorted(self._addresses) != list(range(1, self.count + 1)):
            raise NetnsError(f"netns-hosts up --prefix {self.prefix} listed hosts {sorted(self._addresses)}, "
                             f"expected 1..{self.count}:\n{result.stdout}")
        return self

    def close(self) -> None:
        """Kill every process started here (SIGTERM, SIGKILL after the grace period), then
        remove the hosts. Raises NetnsError if ``down`` left something behind."""
        try:
            for proc in reversed(list(self.procs)):
                self.kill(proc)
        finally:
            # even when a process would not die (stuck in the kernel on a dead FUSE mount,
            # say): the hosts still go, and down kills whatever else is left inside them
            self.procs.clear()
            if self._up:
                self._up = False
                script("down", "--prefix", self.prefix, "--grace-s", str(max(1, round(self.grace_s))))

    def __enter__(self) -> NetnsHosts:
        try:
            return self.up()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- hosts ----------------------------------------------------------------------------

    def name(self, k: int) -> str:
        """The namespace (and root-side veth) name of host ``k``."""
        self._check_host(k)
        return f"{self.prefix}-h{k}"

    def address(self, k: int) -> str:
        """Host ``k``'s IPv4 address, e.g. ``198.18.7.11``."""
        self._check_host(k)
        if k not in self._addresses:
            raise NetnsError(f"hosts of {self.prefix} are not up")
        return self._addresses[k]

    @property
    def bridge_address(self) -> str:
        """The root namespace's address on the bridge: how a host reaches the test process."""
        return self.address(1).rsplit(".", 1)[0] + ".1"

    def nsenter_argv(self, k: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run in host ``k``'s network namespace only (not ``ip netns exec``, which
        would also give it a mount namespace of its own: a FUSE mount made in it would be
        invisible to the test)."""
        return ["nsenter", f"--net={NETNS_DIR / self.name(k)}", "--", *argv]

    def popen(self, k: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in host ``k``; ``kwargs`` go to ``subprocess.Popen``. The process is
        owned here: ``close`` kills it. nsenter execs the command in its own process, so the
        Popen's pid is the command's pid. It gets a session of its own (unless the caller says
        otherwise), so ``kill`` reaches its children too."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.nsenter_argv(k, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, k: int, argv: Sequence[str], *, timeout_s: float = 30.0,
            **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in host ``k`` to completion (killed after ``timeout_s``);
        ``kwargs`` go to ``subprocess.run`` (e.g. ``capture_output=True, text=True, check=True``)."""
        return subprocess.run(self.nsenter_argv(k, argv), timeout=timeout_s, **kwargs)

    def kill(self, proc: subprocess.Popen[Any], grace_s: float | None = None) -> int:
        """Stop one process started by ``popen``: SIGTERM, then SIGKILL after the grace
        period; reaps it and returns its exit status. A process that exited already is
        just reaped."""
        grace = self.grace_s if grace_s is None else grace_s
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(30)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        assert proc.returncode is not None
        return proc.returncode

    # -- internals ------------------------------------------------------------------------

    def _signal(self, proc: subprocess.Popen[Any], sig: int) -> None:
        # a process group of our own (start_new_session): its id is the leader's pid, which we
        # own until we reap it, so the group cannot be someone else's
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _check_host(self, k: int) -> None:
        if not 1 <= k <= self.count:
            raise ValueError(f"host {k}: {self.prefix} has hosts 1..{self.count}")

    def _parse_list(self, text: str) -> dict[int, str]:
        addresses = {}
        for line in text.splitlines():
            name, _, address = line.partition(" ")
            if name.startswith(f"{self.prefix}-h") and address:
                addresses[int(name.removeprefix(f"{self.prefix}-h"))] = address.strip()
        return addresses

    def __repr__(self) -> str:
        return f"NetnsHosts({self.prefix!r}, {self.count}, up={self._up})"
