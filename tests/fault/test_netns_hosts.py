"""``deploy/netns-hosts`` and its harness ``tests/harness/netns.py``: hosts as network
namespaces on one machine, the ground the multi-host fault tests stand on.

What must hold: each host has its own address and loopback; a server in one host is reachable
from another host (and from the test, through the bridge) but not on the root namespace's
loopback; only the network is separate (a FUSE mount made in a host must be visible to the
test); teardown leaves no namespace, veth or bridge of the prefix and no process started in
it, and touches nothing else; misuse is refused with a message and the documented exit code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.netns import SCRIPT, NetnsError, NetnsHosts, script, unique_prefix
from tests.harness.procs import free_port
from tests.harness.skips import require_netns

pytestmark = pytest.mark.timeout(60)

# Accepts connections until killed; answers each with the name it was given, so the client
# knows which host it reached. Prints "listening" once bound, so nobody waits on time.
SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen()
    print("listening", flush=True)
    while True:
        c, _ = s.accept()
        c.sendall(sys.argv[2].encode())
        c.close()
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
            print(c.recv(100).decode())
    except ConnectionRefusedError:
        print("refused")
""")


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def of_prefix(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n.startswith(f"{prefix}-")}


def netns_pids(name: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()


def wait_until(pred: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """The sync sibling of tests/harness/wait.py's wait_for: a condition, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def connect(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, port), timeout=5) as c:
            return c.recv(100).decode()
    except ConnectionRefusedError:
        return "refused"


@pytest.fixture
def hosts() -> Iterator[NetnsHosts]:
    require_netns()
    with NetnsHosts(unique_prefix(), 2) as h:
        yield h


def test_each_host_gets_its_own_address_and_a_route_to_the_bridge(hosts: NetnsHosts) -> None:
    a1, a2 = hosts.address(1), hosts.address(2)
    subnet = a1.rsplit(".", 1)[0]
    assert (a1, a2) == (f"{subnet}.11", f"{subnet}.12")
    listed = script("list", "--prefix", hosts.prefix).stdout.splitlines()
    assert listed == [f"{hosts.prefix}-h1 {a1}", f"{hosts.prefix}-h2 {a2}"]
    for k, address in ((1, a1), (2, a2)):
        addrs = hosts.run(k, ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
        assert f"inet {address}/24" in addrs and "eth0" in addrs
        assert "inet 127.0.0.1/8" in addrs  # lo is up
        route = hosts.run(k, ["ip", "route", "show", "default"], capture_output=True, text=True, check=True).stdout
        assert f"via {hosts.bridge_address} dev eth0" in route


def test_a_server_in_host1_is_reachable_from_host2_and_not_on_the_root_loopback(hosts: NetnsHosts) -> None:
    port = free_port()  # free in the root namespace, so "refused" there means "not here"
    server = hosts.popen(1, [sys.executable, "-c", SERVER, str(port), "h1"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"

    def client(k: int, address: str) -> str:
        return hosts.run(k, [sys.executable, "-c", CLIENT, address, str(port)], capture_output=True, text=True,
                         check=True).stdout.strip()

    assert client(2, hosts.address(1)) == "h1"     # host to host, over the bridge
    assert client(1, "127.0.0.1") == "h1"          # host 1's own loopback
    assert client(2, "127.0.0.1") == "refused"     # host 2's loopback is its own
    assert connect("127.0.0.1", port) == "refused"  # the root namespace's loopback: not bound there
    assert connect(hosts.address(1), port) == "h1"  # the test reaches hosts through the bridge


def test_exec_enters_the_network_namespace_only(hosts: NetnsHosts) -> None:
    """The reason for nsenter --net instead of ip netns exec: a FUSE mount made in a host
    must be visible outside it, so the mount namespace must be the test's own."""
    inside = subprocess.run([str(SCRIPT), "exec", "--prefix", hosts.prefix, "h2", "--", "readlink",
                             "/proc/self/ns/net", "/proc/self/ns/mnt"], capture_output=True, text=True, check=True)
    net, mnt = inside.stdout.split()
    assert net != os.readlink("/proc/self/ns/net")
    assert mnt == os.readlink("/proc/self/ns/mnt")


def test_teardown_removes_every_link_namespace_and_process_of_the_prefix_and_nothing_else(tmp_path: Path) -> None:
    require_netns()
    prefix = unique_prefix()
    neighbour = NetnsHosts(prefix + "z", 1)  # a longer prefix starting with ours must survive
    outsider = subprocess.Popen(["sleep", "600"], start_new_session=True)  # root namespace: not ours to kill
    hosts = NetnsHosts(prefix, 2)
    try:
        neighbour.up()
        hosts.up()
        owned = hosts.popen(1, ["sleep", "600"])
        # started in host 2 without the harness (as an operator would): down finds it by namespace
        stray = subprocess.Popen([str(SCRIPT), "exec", "--prefix", prefix, "2", "--", "sleep", "600"],
                                 start_new_session=True)
        # the script execs nsenter, which execs sleep: one pid throughout, in host 2 once entered
        wait_until(lambda: str(stray.pid) in netns_pids(hosts.name(2)), timeout_s=10,
                   what=f"pid {stray.pid} inside {hosts.name(2)}")
        assert of_prefix(namespaces(), prefix) == {f"{prefix}-h1", f"{prefix}-h2"}
        assert of_prefix(links(), prefix) == {f"{prefix}-br", f"{prefix}-h1", f"{prefix}-h2"}

        hosts.close()

        assert owned.returncode == -signal.SIGTERM
        assert stray.wait(10) == -signal.SIGTERM
        assert of_prefix(namespaces(), prefix) == set()
        assert of_prefix(links(), prefix) == set()
        assert outsider.poll() is None
        assert of_prefix(namespaces(), neighbour.prefix) == {f"{neighbour.prefix}-h1"}
        # down of a prefix that is gone (stale, or twice) is a no-op, not an error
        assert script("down", "--prefix", prefix).returncode == 0
        hosts.close()
    finally:
        hosts.close()
        neighbour.close()
        outsider.kill()
        outsider.wait()
    assert of_prefix(namespaces(), neighbour.prefix) == set()


def test_up_twice_with_one_prefix_is_refused_and_leaves_the_first_hosts_alone(hosts: NetnsHosts) -> None:
    again = script("up", "--prefix", hosts.prefix, "--hosts", "1", check=False)
    assert again.returncode == 1
    assert f"prefix '{hosts.prefix}' is in use already" in again.stderr
    second = NetnsHosts(hosts.prefix, 2)
    with pytest.raises(NetnsError, match="in use already"):
        with second:
            pass
    assert connect(hosts.address(2), free_port()) == "refused"  # host 2 still answers (with a RST)
    assert of_prefix(namespaces(), hosts.prefix) == {f"{hosts.prefix}-h1", f"{hosts.prefix}-h2"}


def test_a_failure_half_way_through_up_removes_what_up_made(tmp_path: Path) -> None:
    require_netns()
    prefix = unique_prefix()
    real_ip = subprocess.run(["sh", "-c", "command -v ip"], capture_output=True, text=True, check=True).stdout.strip()
    fake = tmp_path / "ip"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        # fails host 2's default route, passes everything else to the real ip
        if [[ "$*" == "-n {prefix}-h2 route add default"* ]]; then echo "injected failure" >&2; exit 7; fi
        exec {real_ip} "$@"
    """))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run([str(SCRIPT), "up", "--prefix", prefix, "--hosts", "3"], capture_output=True, text=True,
                            env=env, timeout=60)
    try:
        assert result.returncode == 1, result.stderr
        assert "injected failure" in result.stderr and "removed what it had made" in result.stderr
        assert of_prefix(namespaces(), prefix) == set()
        assert of_prefix(links(), prefix) == set()
    finally:
        script("down", "--prefix", prefix)


@pytest.mark.parametrize(("args", "message"), [
    ([], "missing command"),
    (["start"], "unknown command 'start'"),
    (["up", "--hosts", "2"], "up needs --prefix P"),
    (["up", "--prefix", "vsx"], "up needs --hosts N"),
    (["up", "--prefix", "vsx", "--hosts", "0"], "--hosts '0': a number from 1 to 99"),
    (["up", "--prefix", "vsx", "--hosts", "two"], "--hosts 'two': a number from 1 to 99"),
    (["up", "--prefix", "abcdefghijk", "--hosts", "1"], "must fit in 15 bytes"),
    (["up", "--prefix", "vs-x", "--hosts", "1"], "a lower-case letter then letters or digits"),
    (["up", "--prefix", "vsx", "--hosts", "1", "--subnet", "10.256.1"], "--subnet '10.256.1': three numbers 0-255"),
    (["up", "--prefix", "vsx", "--hosts", "1", "--subnet", "10.1"], "--subnet '10.1': three numbers 0-255"),
    (["up", "--prefix", "vsx", "--hosts", "1", "--colour"], "unknown option '--colour'"),
    (["up", "--prefix"], "--prefix needs a value"),
    (["down", "--prefix", "vsx", "--hosts", "2"], "--hosts is not an option of 'down'"),
    (["list", "--prefix", "vsx", "extra"], "unexpected argument 'extra'"),
    (["exec", "--prefix", "vsx"], "exec needs HOST"),
    (["exec", "--prefix", "vsx", "1"], "exec needs '-- CMD [ARG...]'"),
])
def test_bad_arguments_exit_2_with_a_message_and_the_usage(args: list[str], message: str) -> None:
    result = script(*args, check=False)
    assert result.returncode == 2, result.stderr
    first, *rest = result.stderr.splitlines()
    assert first.startswith("netns-hosts: ") and message in first
    assert any(line.startswith("usage: netns-hosts up") for line in rest)
