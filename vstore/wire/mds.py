"""Client <-> metadata server messages (MsgType range 100-199). Pure.

Every request names the caller's credentials (``uid``, ``gid``: the file system user the
FUSE kernel side reported; permission bits are checked by the kernel with
``default_permissions``, ownership rules by the state machine). Every request that changes
state also carries a ``lane`` and a ``seq`` for exactly-once execution across retries and
leader changes (RELIABILITY.md §4.9): a lane is one sequential request stream of a client
session, named ``<session hex>/<n>``; its ``seq`` numbers increase by one per new request
and stay the same when the request is retried. The MDS stores the last reply of each lane
in the replicated state, so a retry of an operation that was already applied gets that
reply again instead of a second application.

Replies carry plain data (``Attr``, ``ChunkInfo``); POSIX failures travel as ErrorReply
with a typed code (vstore/wire/codes.py), never as fields of these replies.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from vstore.wire.messages import KIB, MIB, U8, U16, U32, U64, Message, MsgType, NodeIdStr, register
from vstore.wire.raft import Hash64

#: NAME_MAX; the state machine checks the finer rules ("/", NUL, "." and "..").
Name = Annotated[bytes, msgspec.Meta(min_length=1, max_length=255)]
#: Names arriving from the kernel are at most NAME_MAX, but the wire allows a little more so
#: that the state machine, not the decoder, answers ENAMETOOLONG with a clear message.
NameArg = Annotated[bytes, msgspec.Meta(min_length=1, max_length=1024)]
SymlinkTarget = Annotated[bytes, msgspec.Meta(min_length=1, max_length=8192)]
XattrName = Annotated[bytes, msgspec.Meta(min_length=1, max_length=1024)]
XattrValue = Annotated[bytes, msgspec.Meta(max_length=128 * KIB)]
#: ``<session id hex>/<lane number>``: the Raft client-session key of one request stream.
Lane = Annotated[str, msgspec.Meta(min_length=3, max_length=64, pattern=r"^[0-9a-f]{8,32}/[0-9]{1,4}$")]
SessionId = Annotated[bytes, msgspec.Meta(min_length=8, max_length=16)]
PolicyText = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
HostLabel = Annotated[str, msgspec.Meta(max_length=253)]
AddressText = Annotated[str, msgspec.Meta(max_length=300)]
Token = Annotated[bytes, msgspec.Meta(max_length=128)]
Nanos = Annotated[int, msgspec.Meta(ge=-(2**62), le=2**62)]

#: The S_IFMT bits (stat's st_mode) of each inode kind number (``MknodRequest.kind``):
#: file, directory, symlink, fifo, socket, character device, block device.
IFMT_OF_KIND = {1: 0o100000, 2: 0o040000, 3: 0o120000, 4: 0o010000, 5: 0o140000, 6: 0o020000, 7: 0o060000}
KIND_OF_IFMT = {v: k for k, v in IFMT_OF_KIND.items()}

#: Entries per readdir page the server returns at most (a page with attributes stays well
#: below a megabyte of meta: 1000 x (255-byte name + ~80 bytes of attributes)).
READDIR_PAGE_MAX = 1000
#: Chunks per chunk-map reply at most (64 MiB chunks: 16 GiB of file per reply).
CHUNK_MAP_MAX = 256
#: Request lanes one session may use at once (bounds the session records it leaves).
LANES_MAX = 1024


# ---- shared structures ------------------------------------------------------------------------


class Attr(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """An inode's attributes as stat(2) shows them (``mode`` includes the S_IFMT type bits)."""

    inode: U64
    mode: U32
    uid: U32
    gid: U32
    nlink: U32
    size: U64
    atime_ns: Nanos
    mtime_ns: Nanos
    ctime_ns: Nanos
    rdev: U64 = 0
    policy: str = ""
    exclusive_write: bool = False


class DirEntry(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    name: Name
    attr: Attr


class ReplicaAddress(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Where one replica lives: the chunkserver's id, RPC address and host label."""

    cs_id: U32
    address: AddressText
    host: HostLabel = ""


class ChunkInfo(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One chunk of a file: its id and version, valid length, replicas in chain order, and
    a capability token the chunkservers accept for this chunk and version."""

    index: U32
    chunk_id: U64
    version: U64
    length_bytes: U64
    replicas: tuple[ReplicaAddress, ...]
    token: Token = b""
    token_expires_s: U64 = 0


# ---- requests ---------------------------------------------------------------------------------


class MdsRequest(Message):
    uid: U32
    gid: U32


class MdsMutation(MdsRequest):
    lane: Lane
    seq: U64


@register
class LookupRequest(MdsRequest):
    TYPE = MsgType.LOOKUP
    parent: U64
    name: NameArg


@register
class GetattrRequest(MdsRequest):
    TYPE = MsgType.GETATTR
    inode: U64


@register
class SetattrRequest(MdsMutation):
    """Change some attributes; a field left at None is unchanged. ``atime_now`` /
    ``mtime_now`` ask for the leader's clock (utimensat's UTIME_NOW)."""

    TYPE = MsgType.SETATTR
    inode: U64
    mode: U32 | None = None
    new_uid: U32 | None = None
    new_gid: U32 | None = None
    size: U64 | None = None
    atime_ns: Nanos | None = None
    mtime_ns: Nanos | None = None
    atime_now: bool = False
    mtime_now: bool = False


@register
class MknodRequest(MdsMutation):
    """Create a regular file (create), FIFO, socket or device node (mknod). ``kind`` is a
    vstore.metadata.fsm.schema.Kind value; ``mode`` the permission bits. ``open`` (regular
    files only): the new file is opened in the same command, by the lane's session, for
    reading (1) or for writing (2), as OpenRequest would: one commit for open(O_CREAT), and
    no moment at which the file exists but the open can still be refused."""

    TYPE = MsgType.MKNOD
    parent: U64
    name: NameArg
    kind: U8
    mode: U32
    rdev: U64 = 0
    open: Annotated[int, msgspec.Meta(ge=0, le=2)] = 0


@register
class MkdirRequest(MdsMutation):
    TYPE = MsgType.MKDIR
    parent: U64
    name: NameArg
    mode: U32


@register
class SymlinkRequest(MdsMutation):
    TYPE = MsgType.SYMLINK
    parent: U64
    name: NameArg
    target: SymlinkTarget


@register
class LinkRequest(MdsMutation):
    TYPE = MsgType.LINK
    inode: U64
    parent: U64
    name: NameArg


@register
class UnlinkRequest(MdsMutation):
    TYPE = MsgType.UNLINK
    parent: U64
    name: NameArg


@register
class RmdirRequest(MdsMutation):
    TYPE = MsgType.RMDIR
    parent: U64
    name: NameArg


@register
class RenameRequest(MdsMutation):
    """``flags``: RENAME_NOREPLACE (1) or RENAME_EXCHANGE (2), as renameat2(2)."""

    TYPE = MsgType.RENAME
    parent: U64
    name: NameArg
    new_parent: U64
    new_name: NameArg
    flags: U32 = 0


@register
class ReadlinkRequest(MdsRequest):
    TYPE = MsgType.READLINK
    inode: U64


@register
class ReaddirRequest(MdsRequest):
    """One page of a directory, in name order, starting after the name ``after`` ("" =
    from the start). The reply says whether more entries follow."""

    TYPE = MsgType.READDIR
    inode: U64
    after: Annotated[bytes, msgspec.Meta(max_length=1024)] = b""
    limit: Annotated[int, msgspec.Meta(ge=1, le=READDIR_PAGE_MAX)] = READDIR_PAGE_MAX


@register
class StatfsRequest(MdsRequest):
    TYPE = MsgType.STATFS


@register
class GetxattrRequest(MdsRequest):
    TYPE = MsgType.GETXATTR
    inode: U64
    name: XattrName


@register
class SetxattrRequest(MdsMutation):
    """``flags``: XATTR_CREATE (1) or XATTR_REPLACE (2), as setxattr(2)."""

    TYPE = MsgType.SETXATTR
    MAX_META_BYTES = 256 * KIB
    inode: U64
    name: XattrName
    value: XattrValue
    flags: U32 = 0


@register
class ListxattrRequest(MdsRequest):
    TYPE = MsgType.LISTXATTR
    inode: U64


@register
class RemovexattrRequest(MdsMutation):
    TYPE = MsgType.REMOVEXATTR
    inode: U64
    name: XattrName


@register
class OpenRequest(MdsMutation):
    """The lane's session opened ``inode``: while any session holds it open, its data
    outlives its last name (unlink-while-open)."""

    TYPE = MsgType.OPEN
    inode: U64
    #: for writing: refused with FILE_BUSY on an exclusive-write file another session writes
    write: bool = False


@register
class ReleaseRequest(MdsMutation):
    TYPE = MsgType.RELEASE
    inode: U64
    write: bool = False


@register
class GetPolicyRequest(MdsRequest):
    TYPE = MsgType.GET_POLICY
    inode: U64


@register
class SetPolicyRequest(MdsMutation):
    """``replicas=N:min`` on a file or directory (new entries copy their directory's)."""

    TYPE = MsgType.SET_POLICY
    inode: U64
    policy: PolicyText | None = None
    #: the exclusive-writer lease of image files: set (True), clear (False) or leave (None);
    #: new entries copy it from their directory
    exclusive_write: bool | None = None


@register
class SessionKeepaliveRequest(Message):
    """A client session is alive. Sent every few seconds; a session the leader has not
    heard from for ``SessionReply.expire_after_s`` is expired through Raft: its open files
    are released and it is fenced off (only retries of its lanes' last commands are answered)."""

    TYPE = MsgType.SESSION_KEEPALIVE
    session: SessionId
    host: HostLabel = ""
    mountpoint: Annotated[str, msgspec.Meta(max_length=4096)] = ""


@register
class SessionCloseRequest(Message):
    """A clean unmount: expire the session now."""

    TYPE = MsgType.SESSION_CLOSE
    session: SessionId


@register
class ChunkMapRequest(MdsRequest):
    """The chunks of ``inode`` at indexes [first_index, first_index + count), for reading.
    Holes (indexes with no chunk) are absent from the reply."""

    TYPE = MsgType.CHUNK_MAP
    inode: U64
    first_index: U32 = 0
    count: Annotated[int, msgspec.Meta(ge=1, le=CHUNK_MAP_MAX)] = 1


@register
class AllocChunkRequest(MdsMutation):
    """The chunk at ``index`` of ``inode`` for writing: created (placed, version 1) when it
    does not exist yet. ``writer_host`` lets placement put the first replica on the
    writer's own host. The reply's capability is the write lease: chunkservers refuse it
    after ``token_expires_s``; a writer that goes on asks again before then (renewal), and
    no copy of the chunk is made while a lease is out (a copy would miss the writes)."""

    TYPE = MsgType.ALLOC_CHUNK
    inode: U64
    index: U32
    writer_host: HostLabel = ""


class WrittenChunk(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    index: U32
    length_bytes: U64


@register
class WriteDoneRequest(MdsMutation):
    """A writer's report after its data reached every replica: the file is at least ``size``
    bytes long, its mtime is ``mtime_ns``, and these chunks hold at least these lengths."""

    TYPE = MsgType.WRITE_DONE
    inode: U64
    size: U64
    mtime_ns: Nanos
    chunks: Annotated[tuple[WrittenChunk, ...], msgspec.Meta(max_length=CHUNK_MAP_MAX)] = ()
    #: the writer is done with these chunks and drops their write capabilities: they may be
    #: re-replicated at once (otherwise only once the write lease has run out)
    release: bool = False


@register
class RepairChainRequest(MdsMutation):
    """A write to ``chunk_id`` at ``version`` failed on these chunkservers: drop them from
    the chain, add new replicas where the policy asks for them, bump the version. The
    reply is the new chain; the writer resends the same bytes on it."""

    TYPE = MsgType.REPAIR_CHAIN
    inode: U64
    chunk_id: U64
    version: U64
    failed: Annotated[tuple[U32, ...], msgspec.Meta(min_length=1, max_length=16)]


@register
class MdsStatusRequest(Message):
    TYPE = MsgType.MDS_STATUS


# ---- replies ----------------------------------------------------------------------------------


@register
class AttrReply(Message):
    TYPE = MsgType.ATTR_REPLY
    attr: Attr


@register
class DoneReply(Message):
    """A mutation that returns nothing but success (``value``: an id where useful)."""

    TYPE = MsgType.DONE_REPLY
    value: U64 = 0


@register
class ReadlinkReply(Message):
    TYPE = MsgType.READLINK_REPLY
    target: SymlinkTarget


@register
class ReaddirReply(Message):
    TYPE = MsgType.READDIR_REPLY
    MAX_META_BYTES = 2 * MIB
    entries: Annotated[tuple[DirEntry, ...], msgspec.Meta(max_length=READDIR_PAGE_MAX)]
    more: bool


@register
class StatfsReply(Message):
    TYPE = MsgType.STATFS_REPLY
    block_bytes: U32
    total_bytes: U64
    free_bytes: U64
    files: U64
    name_max: U16 = 255


@register
class XattrReply(Message):
    TYPE = MsgType.XATTR_REPLY
    MAX_META_BYTES = 256 * KIB
    value: XattrValue


@register
class XattrListReply(Message):
    TYPE = MsgType.XATTR_LIST_REPLY
    MAX_META_BYTES = 1 * MIB
    names: Annotated[tuple[XattrName, ...], msgspec.Meta(max_length=4096)]


@register
class PolicyReply(Message):
    TYPE = MsgType.POLICY_REPLY
    policy: PolicyText
    inherited: bool = False
    exclusive_write: bool = False


@register
class SessionReply(Message):
    TYPE = MsgType.SESSION_REPLY
    expire_after_s: U32
    leader_id: NodeIdStr
    #: every MDS of the current configuration (node id -> address): a client that was given
    #: one address learns the others, and rides through that one's loss
    mds: dict[NodeIdStr, AddressText] = {}


@register
class ChunkMapReply(Message):
    TYPE = MsgType.CHUNK_MAP_REPLY
    MAX_META_BYTES = 1 * MIB
    chunk_bytes: U64
    size: U64
    chunks: Annotated[tuple[ChunkInfo, ...], msgspec.Meta(max_length=CHUNK_MAP_MAX)]


@register
class ChunkReply(Message):
    TYPE = MsgType.CHUNK_REPLY
    chunk_bytes: U64
    chunk: ChunkInfo


@register
class MdsStatusReply(Message):
    TYPE = MsgType.MDS_STATUS_REPLY
    MAX_META_BYTES = 256 * KIB
    node_id: NodeIdStr
    role: Annotated[str, msgspec.Meta(max_length=16)]
    term: U64
    leader_id: Annotated[str, msgspec.Meta(max_length=64)]
    leader_address: AddressText
    commit: U64
    applied: U64
    state_hash: Hash64
    raft: dict[str, int | str | list[str] | dict[str, str]] = {}
    #: the leader's chunk health and repair counters (vstore/metadata/chunkservers.py summary)
    chunks: dict[str, int] = {}
    #: the cluster's human name (its [cluster] name), for tools that join a node to it
    cluster_name: Annotated[str, msgspec.Meta(max_length=64)] = ""
    #: the configuration this MDS applied: node id -> address, voters and learners alike
    members: dict[NodeIdStr, AddressText] = {}


# ---- chunkserver -> MDS -----------------------------------------------------------------------

#: Chunks per chunk-report page: a report of a million chunks travels in 100 pages.
CHUNK_REPORT_PAGE_MAX = 10_000


@register
class RegisterCsRequest(Message):
    """A chunkserver announces itself (its node id is the one it authenticated with). With
    ``join`` (``vstore add-node --role cs``) a node id that is already registered is an
    error; without it (every later start) the registration is looked up and its address
    and capacity refreshed."""

    TYPE = MsgType.REGISTER_CS
    host: HostLabel
    rack: HostLabel
    address: AddressText
    capacity_bytes: U64
    join: bool = False


@register
class RegisterCsReply(Message):
    TYPE = MsgType.REGISTER_CS_REPLY
    cs_id: U32
    chunk_bytes: U64
    heartbeat_to: tuple[AddressText, ...] = ()


class ReportedChunk(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    chunk_id: U64
    version: U64
    length_bytes: U64 = 0
    damaged: bool = False


@register
class ChunkReportRequest(Message):
    """Every replica a chunkserver holds, in pages (after a start, or when the leader asks).
    ``boot_id`` is the one its heartbeats carry; ``page`` counts from 0 and ``last`` ends it."""

    TYPE = MsgType.CHUNK_REPORT
    MAX_META_BYTES = 1 * MIB
    boot_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    page: U32
    last: bool
    chunks: Annotated[tuple[ReportedChunk, ...], msgspec.Meta(max_length=CHUNK_REPORT_PAGE_MAX)] = ()


@register
class ChunkReportReply(Message):
    TYPE = MsgType.CHUNK_REPORT_REPLY
    accepted: U32


class OrderKind:
    """What the leader asks a chunkserver to do (``Order.kind``)."""

    COPY = "copy"        # fetch chunk_id at version from ``source``, verify every block, keep it
    DELETE = "delete"    # delete the replica of chunk_id (any version <= ``version``)
    SET_VERSION = "set_version"  # replica at ``old_version`` becomes ``version`` (data unchanged)
    TRUNCATE = "truncate"  # replica at ``old_version`` (or older) is cut to ``length_bytes``, then ``version``


class Order(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    order_id: U64
    kind: Annotated[str, msgspec.Meta(max_length=16)]
    chunk_id: U64
    version: U64
    length_bytes: U64 = 0
    source: ReplicaAddress | None = None
    token: Token = b""
    old_version: U64 = 0


#: Orders handed to one chunkserver per fetch at most.
ORDERS_PER_FETCH_MAX = 256


@register
class FetchOrdersRequest(Message):
    """A chunkserver asks the leader for work (a long poll: the leader answers when it has
    orders or after ``wait_ms``). ``boot_id`` names the chunkserver's process run."""

    TYPE = MsgType.FETCH_ORDERS
    boot_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 1000


@register
class OrdersReply(Message):
    TYPE = MsgType.ORDERS_REPLY
    MAX_META_BYTES = 1 * MIB
    report_wanted: bool = False
    orders: Annotated[tuple[Order, ...], msgspec.Meta(max_length=ORDERS_PER_FETCH_MAX)] = ()
    #: every MDS of the current configuration (node id -> address): where heartbeats go, so
    #: an MDS added after this chunkserver was configured hears it before it may lead
    mds: dict[NodeIdStr, AddressText] = {}


@register
class OrderDoneRequest(Message):
    """The outcome of one order: ``code`` 0 for success, else an ErrorCode value."""

    TYPE = MsgType.ORDER_DONE
    order_id: U64
    code: U16 = 0
    message: Annotated[str, msgspec.Meta(max_length=1024)] = ""


@register
class ReportDamageRequest(Message):
    """A replica failed its checksums (read by a client or the scrubber): the chunkserver
    that holds it, or the client that read it, reports it; the leader stops serving it and
    rebuilds the chunk from a good replica."""

    TYPE = MsgType.REPORT_DAMAGE
    chunk_id: U64
    version: U64
    cs_id: U32
    reason: Annotated[str, msgspec.Meta(max_length=256)] = ""


@register
class SetCsStateRequest(Message):
    """An operator's decision about a chunkserver (admin role only): ``draining`` moves its
    replicas elsewhere and gives it no new ones, ``active`` takes it back, ``removed``
    forgets it for good (refused while any chunk still lists it)."""

    TYPE = MsgType.SET_CS_STATE
    cs_id: U32
    state: Annotated[str, msgspec.Meta(pattern=r"^(active|draining|removed)$")]
    #: with ``removed``: drop its replicas from every chunk first (an operator who accepts
    #: that chunks whose only copy it holds are lost, ``vstore rm-node --force``)
    force: bool = False
