"""A Raft-replicated key-value server process, for the real-process Raft tests and bench/raft.py.

    python -m tests.harness.raft_server --id m1 --data DIR --listen 127.0.0.1:9401 \
        --secret-file F --peers m1=127.0.0.1:9401,m2=...,m3=... [--bootstrap m1,m2,m3]

``--bootstrap`` writes the initial configuration (only on a fresh data dir); without it a
node with an empty data dir waits to be added as a learner. Serves KvAppendRequest (a
session-numbered append, applied once), KvReadRequest (linearizable: read barrier, then
the local state), RaftStatusRequest and RaftMemberRequest.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.harness.kvproto import (KvAppendRequest, KvReadRequest, KvReply, RaftBenchReply,  # noqa: E402
                                   RaftBenchRequest, RaftMemberRequest, RaftStatusReply, RaftStatusRequest)
from tests.harness.kvsm import KvStateMachine, command  # noqa: E402
from vstore.errors import InvalidArgument  # noqa: E402
from vstore.logs import setup_logging  # noqa: E402
from vstore.metadata.raft.codec import encode_conf_change  # noqa: E402
from vstore.metadata.raft.node import RaftNode, RaftNodeConfig, StartupError  # noqa: E402
from vstore.metadata.raft.statemachine import encode_proposal  # noqa: E402
from vstore.metadata.raft.storage import RaftLogStore  # noqa: E402
from vstore.metadata.raft.types import HardState, RaftConfig  # noqa: E402
from vstore.net import Auth, Router, RpcServer  # noqa: E402
from vstore.wire import Identity  # noqa: E402
from vstore.wire.raft import ConfChange, ConfChangeType, Entry, EntryType  # noqa: E402

CLUSTER_ID = "raft-proc-cluster"


def parse_peers(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


async def serve(args: argparse.Namespace) -> int:
    secret = Path(args.secret_file).read_bytes()
    data = Path(args.data)
    peers = parse_peers(args.peers)
    host, _, port = args.listen.rpartition(":")
    store = RaftLogStore(data / "raft", map_size_bytes=1 << 30)
    if args.bootstrap or args.join:
        store.claim(args.id, CLUSTER_ID)  # a new node: what mkfs / add-node will do
    if args.bootstrap and store.is_empty():
        voters = args.bootstrap.split(",")
        entries = [Entry.make(i + 1, 1, encode_conf_change(ConfChange(type=ConfChangeType.ADD_VOTER, node_id=v,
                                                                      address=peers[v])), EntryType.CONF_CHANGE)
                   for i, v in enumerate(voters)]
        store.bootstrap(entries, HardState(term=1, commit=len(entries)))
    sm = KvStateMachine(data / "state", map_size_bytes=1 << 30)
    store.attach(sm.conf_state, sm.snapshot_meta)
    auth = Auth(secret, Identity(CLUSTER_ID, args.id, "mds"))
    try:
        node = _make_node(args, data, store, sm, auth, peers)
    except StartupError as exc:
        logging.getLogger("vstore").error("raft_server.refused", extra={"reason": str(exc)})
        print(f"raft_server: {exc}", file=sys.stderr)
        return 2
    return await _serve(node, args, host, port, auth, sm, store)


def _make_node(args, data, store, sm, auth, peers) -> RaftNode:  # type: ignore[no-untyped-def]
    return RaftNode(RaftNodeConfig(node_id=args.id, data_dir=data, tick_ms=args.tick_ms,
                                   raft=RaftConfig(election_tick=args.election_tick, heartbeat_tick=1),
                                   compact_trailing_entries=args.compact_trailing, initial_peers=peers),
                    store, sm, auth)


async def _serve(node, args, host, port, auth, sm, store) -> int:  # type: ignore[no-untyped-def]
    router = Router()
    node.register(router)

    async def append(ctx, msg, payload):
        result = await node.propose(encode_proposal(msg.client_id, msg.seq, command("append", msg.key, msg.value)))
        return KvReply(result=str(result))

    async def read(ctx, msg, payload):
        await node.read_barrier()
        return KvReply(values=sm.get(msg.key))

    async def status(ctx, msg, payload):
        st = node.status()
        return RaftStatusReply(status={k: v for k, v in st.items() if isinstance(v, (int, str, list, dict))
                                       and not isinstance(v, bool)})

    async def member(ctx, msg, payload):
        kinds = {"add": ConfChangeType.ADD_LEARNER, "promote": ConfChangeType.PROMOTE,
                 "remove": ConfChangeType.REMOVE}
        if msg.op not in kinds:
            raise InvalidArgument(f"unknown member op {msg.op!r}")
        await node.propose_conf_change(ConfChange(type=kinds[msg.op], node_id=msg.node_id, address=msg.address))
        return KvReply(result="ok")

    async def bench(ctx, msg, payload):
        # Proposals from inside the leader process, as a Raft library benchmark does: what
        # the consensus layer sustains, without a client RPC hop.
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        seq = iter(range(1, msg.count + 1))
        client = f"bench-{os.getpid()}-{loop.time():.6f}"

        async def worker() -> None:
            for n in seq:
                started = loop.time()
                await node.propose(encode_proposal(client + f"-{n % msg.inflight}", n, command("put", "bench", n)))
                latencies.append(loop.time() - started)

        started = loop.time()
        await asyncio.gather(*(worker() for _ in range(msg.inflight)))
        elapsed = loop.time() - started
        latencies.sort()
        return RaftBenchReply(ops_per_s=len(latencies) / elapsed, latency_us_p50=latencies[len(latencies) // 2] * 1e6,
                              latency_us_p99=latencies[int(len(latencies) * 0.99)] * 1e6)

    router.add(RaftBenchRequest, bench)
    router.add(KvAppendRequest, append)
    router.add(KvReadRequest, read)
    router.add(RaftStatusRequest, status)
    router.add(RaftMemberRequest, member)
    server = RpcServer(router, auth, allowed_roles=frozenset({"mds", "client"}))
    await server.start(host, int(port))
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fatal = asyncio.ensure_future(node.wait_fatal())
    await asyncio.wait([fatal, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await server.close()
    await node.stop()
    sm.close()
    store.close()
    return 1 if node.fatal else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--peers", required=True)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--join", action="store_true", help="a new node that waits to be added as a learner")
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--election-tick", type=int, default=10)
    parser.add_argument("--compact-trailing", type=int, default=10_000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    setup_logging(level=args.log_level, node=args.id, role="mds")
    logging.getLogger("vstore").info("raft_server.start", extra={"pid": os.getpid(), "listen": args.listen})
    sys.exit(asyncio.run(serve(args)))


if __name__ == "__main__":
    main()
