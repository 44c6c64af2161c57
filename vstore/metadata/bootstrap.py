"""Initialising an MDS data directory: what ``vstore mkfs`` and ``vstore add-node`` write.

Layout of an MDS data dir::

    <data_dir>/raft/      the Raft log (vstore/metadata/raft/storage.py), claimed for one node id
    <data_dir>/state/     the state machine (vstore/metadata/fsm/schema.py)
    <data_dir>/snapshots/ snapshots in transit
    <data_dir>/raft-member  written once the node has applied a configuration naming it
    <data_dir>/join-peers.json  a joining node only: the members (id -> address) when it
                            joined, so it can answer the leader before it has a configuration

A founding node's log starts with the cluster's first configuration (``ADD_VOTER`` entries,
etcd's way) followed by one entry that creates the root directory with the cluster's chunk
size, so every replica builds the same namespace from the same log and nothing depends on
which node happens to lead first. A joining node gets only the claim: it waits, empty, to be
added as a learner, and receives everything from the leader.

Refuses a data dir that already holds a log: initialising twice must never overwrite a
node's state (its vote and term would be forgotten).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from vstore.errors import UsageError
from vstore.metadata.fsm.namespace import InitRoot, encode_command
from vstore.metadata.raft.codec import encode_conf_change
from vstore.metadata.raft.statemachine import encode_proposal
from vstore.metadata.raft.storage import RaftLogStore
from vstore.metadata.raft.types import HardState
from vstore.wire.raft import ConfChange, ConfChangeType, Entry, EntryType

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024


def raft_dir(data_dir: Path) -> Path:
    return data_dir / "raft"


def state_dir(data_dir: Path) -> Path:
    return data_dir / "state"


def _claim(data_dir: Path, node_id: str, cluster_id: str, map_size_bytes: int) -> RaftLogStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = RaftLogStore(raft_dir(data_dir), map_size_bytes=map_size_bytes)
    identity = store.identity()
    if identity is not None or not store.is_empty():
        store.close()
        owner = identity.get("node_id") if identity else "?"
        raise UsageError(f"{data_dir} already holds the Raft log of node {owner!r}; refusing to initialise it again")
    store.claim(node_id, cluster_id)
    return store


def init_founding_member(data_dir: Path, *, node_id: str, cluster_id: str, members: Sequence[tuple[str, str]],
                         root_now_ns: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                         map_size_bytes: int = 1 << 30, admin_password_hash: str = "") -> None:
    """Write the first log of a founding member. ``members`` lists (node id, address) of
    every founding voter, identical on each of them (one for ``vstore mkfs``); the root's
    timestamps come from ``root_now_ns``, which must be the same on every founder."""
    if node_id not in {m for m, _ in members}:
        raise UsageError(f"node {node_id!r} is not among the founding members {[m for m, _ in members]}")
    store = _claim(data_dir, node_id, cluster_id, map_size_bytes)
    try:
        entries = [Entry.make(i + 1, 1, encode_conf_change(ConfChange(type=ConfChangeType.ADD_VOTER, node_id=member,
                                                                      address=address)), EntryType.CONF_CHANGE)
                   for i, (member, address) in enumerate(members)]
        root = encode_command(InitRoot(uid=0, gid=0, now_ns=root_now_ns, chunk_bytes=chunk_bytes,
                                       admin_password_hash=admin_password_hash))
        entries.append(Entry.make(len(entries) + 1, 1, encode_proposal("", 0, root)))
        store.bootstrap(entries, HardState(term=1, commit=len(entries)))
    finally:
        store.close()


JOIN_PEERS = "join-peers.json"


def init_joining_member(data_dir: Path, *, node_id: str, cluster_id: str, peers: Mapping[str, str] | None = None,
                        map_size_bytes: int = 1 << 30) -> None:
    """Claim an empty data dir for a node that will be added to a running cluster.
    ``peers``: the configuration's members (node id -> address) at the time it joins; until
    its log holds a configuration these are the only addresses its answers can go to."""
    _claim(data_dir, node_id, cluster_id, map_size_bytes).close()
    if peers:
        tmp = data_dir / (JOIN_PEERS + ".tmp")
        tmp.write_text(json.dumps(dict(peers), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, data_dir / JOIN_PEERS)


def join_peers(data_dir: Path) -> dict[str, str]:
    """The members a joining node was told about (empty for founders or when unreadable)."""
    try:
        peers = json.loads((data_dir / JOIN_PEERS).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in peers.items()} if isinstance(peers, dict) else {}
