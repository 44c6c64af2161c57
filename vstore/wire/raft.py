"""Raft messages between metadata servers, and the log entry format. Pure.

These are the Raft core's own data types (vstore/metadata/raft/core.py steps and emits
them directly) as well as their wire schema, so there is no second definition to convert
to. Field names follow the Raft paper and etcd-io/raft.

Every log entry carries an xxh3-64 checksum of (index, term, type, data), computed by the
leader that created it and checked by every follower that receives it and by the log
storage on every read (RAFT.md §4.3 item 10): a corrupt entry is never applied.
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated

import msgspec
import xxhash

from vstore.wire.messages import KIB, MIB, U8, U64, Message, MsgType, NodeIdStr, register

_ENTRY_HEAD = struct.Struct(">QQB")


class EntryType(enum.IntEnum):
    NORMAL = 0       # a state machine command; empty data = the leader's no-op
    CONF_CHANGE = 1  # data is an encoded ConfChange
    STATE_CHECK = 2  # data is an encoded StateCheck: the leader's state hash at an earlier index


#: A full unsigned 64-bit hash (msgspec checks ranges only within int64, so no upper bound here;
#: msgpack itself cannot carry more than 64 bits).
Hash64 = Annotated[int, msgspec.Meta(ge=0)]


class StateCheck(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """The proposer's (applied index, rolling state hash): every replica that applied the
    same index compares its own hash when it applies this entry."""

    index: U64
    state_hash: Hash64


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0  # join as a non-voting member that receives the log
    PROMOTE = 1      # a caught-up learner becomes a voter
    REMOVE = 2       # leave the configuration (voter or learner)
    ADD_VOTER = 3    # bootstrap only: the initial members, written into the log at index 1..n


def entry_checksum(index: int, term: int, entry_type: int, data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(_ENTRY_HEAD.pack(index, term, entry_type) + data)


class Entry(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    index: U64
    term: U64
    type: U8
    data: bytes
    checksum: Hash64

    @classmethod
    def make(cls, index: int, term: int, data: bytes, entry_type: EntryType = EntryType.NORMAL) -> Entry:
        return cls(index, term, int(entry_type), data, entry_checksum(index, term, int(entry_type), data))

    def verify(self) -> bool:
        return self.checksum == entry_checksum(self.index, self.term, self.type, self.data)

    @property
    def size_bytes(self) -> int:
        return len(self.data) + 32


AddressStr = Annotated[str, msgspec.Meta(min_length=3, max_length=300)]


class ConfState(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """The membership: voters, learners, and the address of each member."""

    voters: tuple[NodeIdStr, ...] = ()
    learners: tuple[NodeIdStr, ...] = ()
    addresses: dict[NodeIdStr, AddressStr] = {}

    def members(self) -> tuple[str, ...]:
        return self.voters + self.learners


class ConfChange(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    type: U8
    node_id: NodeIdStr
    address: str = ""


class SnapshotMeta(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """What a snapshot covers: the state after applying every entry up to ``index``."""

    index: U64
    term: U64
    conf_state: ConfState


class RaftMsgType(enum.IntEnum):
    APP = 1              # AppendEntries (also the probe): log_term/index of the entry before `entries`
    APP_RESP = 2         # index = last matching index, or the rejected index with reject_hint/hint_term
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5         # term = the term the sender would campaign in; grants change nothing
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7        # commit = min(follower's match, leader's commit); context = read-index round
    HEARTBEAT_RESP = 8
    SNAP = 9             # InstallSnapshot: the data itself streams beside it (vstore/metadata/raft/node.py)
    TIMEOUT_NOW = 10     # leadership transfer: campaign at once, ignoring the lease
    READ_INDEX = 11      # follower -> leader: context identifies the read
    READ_INDEX_RESP = 12  # leader -> follower: index to wait for; reject if the leader cannot serve
    TRANSFER_LEADER = 13  # to the leader: transfer leadership to the node named in `context`


@register
class RaftMessage(Message):
    """One Raft message, MDS to MDS, sent one-way (FLAG_ONEWAY). Entries batch up to the
    sender's max_size_per_msg (1 MiB by default), so 4 MiB of meta is ample."""

    TYPE = MsgType.RAFT_MESSAGE
    MAX_META_BYTES = 4 * MIB
    type: U8
    to: NodeIdStr
    frm: NodeIdStr
    term: U64
    log_term: U64 = 0
    index: U64 = 0
    entries: tuple[Entry, ...] = ()
    commit: U64 = 0
    reject: bool = False
    reject_hint: U64 = 0
    hint_term: U64 = 0
    context: Annotated[bytes, msgspec.Meta(max_length=4 * KIB)] = b""
    snapshot: SnapshotMeta | None = None


@register
class RaftSnapshotChunkRequest(Message):
    """One piece of a snapshot being streamed to a follower (InstallSnapshot's data).

    The pieces of one snapshot share (index, term); ``offset`` says where the payload goes,
    ``total_bytes`` how big the file is, and the last piece (``done``) carries the xxh3-64
    of the whole file, which the receiver checks before it installs anything.
    """

    TYPE = MsgType.RAFT_SNAPSHOT_CHUNK_REQUEST
    MAX_PAYLOAD_BYTES = 4 * MIB
    index: U64
    term: U64
    offset: U64
    total_bytes: U64
    done: bool = False
    file_hash: Hash64 = 0


@register
class RaftSnapshotChunkReply(Message):
    TYPE = MsgType.RAFT_SNAPSHOT_CHUNK_REPLY
    received_bytes: U64


@register
class RaftSnapshotFetchRequest(Message):
    """A replica that must re-sync (its state hash diverged) fetches the leader's snapshot,
    piece by piece; ``offset`` 0 asks for a fresh export."""

    TYPE = MsgType.RAFT_SNAPSHOT_FETCH_REQUEST
    offset: U64
    max_bytes: Annotated[int, msgspec.Meta(ge=1, le=4 * MIB)] = 1 * MIB


@register
class RaftSnapshotFetchReply(Message):
    """One piece of the exported snapshot (the payload); the last one (``done``) carries the
    xxh3-64 of the whole file."""

    TYPE = MsgType.RAFT_SNAPSHOT_FETCH_REPLY
    MAX_PAYLOAD_BYTES = 4 * MIB
    meta: SnapshotMeta
    offset: U64
    total_bytes: U64
    done: bool = False
    file_hash: Hash64 = 0
