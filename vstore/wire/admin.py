"""Operators' requests to the MDS leader (admin role): membership of the MDS group and the
chunkserver table that ``vstore rm-node``, ``vstore top`` and the dashboard read.

* ``AddMdsRequest``: add a node to the Raft configuration as a learner; the leader promotes
  it to voter by itself once it has caught up (vstore/metadata/membership.py).
* ``RemoveMdsRequest``: remove a voter or learner; refused when the voters left that answer
  the leader would not be a majority of the new configuration, unless ``force``.
* ``MembershipRequest``: the configuration with the leader's view of each member.
* ``EventsRequest``: what this MDS recorded for the dashboard's event log.
* ``CsListRequest``: every registered chunkserver with its liveness, space, I/O gauges and
  what a drain still has to move (``drain_left``: chunks with a replica there that have
  fewer than their target copies elsewhere; ``sole``: chunks whose only good copy is there).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from vstore.wire.messages import KIB, U32, U64, Message, MsgType, NodeIdStr, register

AddressText = Annotated[str, msgspec.Meta(min_length=3, max_length=300)]
Label = Annotated[str, msgspec.Meta(max_length=64)]
#: Chunkservers per list reply: more than a rack holds.
CS_LIST_MAX = 4096


class MdsMember(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    node_id: NodeIdStr
    address: Annotated[str, msgspec.Meta(max_length=300)]
    voter: bool
    #: the leader's view: the highest log index known to be on that node, and whether it
    #: answered within the last election timeout or two
    match_index: U64 = 0
    active: bool = False


@register
class AddMdsRequest(Message):
    TYPE = MsgType.ADD_MDS
    node_id: NodeIdStr
    address: AddressText


@register
class RemoveMdsRequest(Message):
    TYPE = MsgType.REMOVE_MDS
    node_id: NodeIdStr
    force: bool = False


@register
class MembershipRequest(Message):
    TYPE = MsgType.MEMBERSHIP


@register
class MembershipReply(Message):
    TYPE = MsgType.MEMBERSHIP_REPLY
    leader_id: NodeIdStr
    commit: U64
    members: Annotated[tuple[MdsMember, ...], msgspec.Meta(max_length=64)]


class CsInfo(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    cs_id: U32
    node_id: Annotated[str, msgspec.Meta(max_length=64)]
    address: Annotated[str, msgspec.Meta(max_length=300)]
    host: Label
    rack: Label
    #: the operator's state: active, draining, removed
    state: Label
    #: the leader's liveness view: online, offline, failed (or unknown before any heartbeat)
    status: Label
    capacity_bytes: U64 = 0
    used_bytes: U64 = 0
    #: replicas the cluster state lists on it
    chunks: U64 = 0
    drain_left: U64 = 0
    sole: U64 = 0
    #: seconds since its last heartbeat reached this MDS (-1: never)
    last_heartbeat_ms: Annotated[int, msgspec.Meta(ge=-1, le=2**62)] = -1
    #: its own counters from the last heartbeat: bytes read and written, copies made
    gauges: dict[Annotated[str, msgspec.Meta(max_length=64)], int] = {}


@register
class CsListRequest(Message):
    TYPE = MsgType.CS_LIST


@register
class CsListReply(Message):
    TYPE = MsgType.CS_LIST_REPLY
    MAX_META_BYTES = 2048 * KIB
    servers: Annotated[tuple[CsInfo, ...], msgspec.Meta(max_length=CS_LIST_MAX)]
    #: the leader's repair counters (chunkservers.summary), with the bytes copied so far
    summary: dict[Annotated[str, msgspec.Meta(max_length=64)], int] = {}
    #: the leader's monotonic clock when it answered (ms), for rates between two replies
    now_ms: U64 = 0


#: Events per reply at most (the dashboard asks again for the rest).
EVENTS_MAX = 500


class ClusterEvent(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One thing an operator wants to see happen: a node offline / failed / back, a rebuild,
    a checksum error, a leader change (vstore/admin/events.py picks them from the log)."""

    seq: U64
    time_ms: U64
    level: Annotated[str, msgspec.Meta(max_length=16)]
    event: Annotated[str, msgspec.Meta(max_length=64)]
    text: Annotated[str, msgspec.Meta(max_length=1024)]


@register
class EventsRequest(Message):
    """The events the MDS recorded after ``after`` (its own sequence numbers)."""

    TYPE = MsgType.EVENTS
    after: U64 = 0


@register
class EventsReply(Message):
    TYPE = MsgType.EVENTS_REPLY
    MAX_META_BYTES = 1024 * KIB
    #: names this MDS process's run: sequence numbers restart with it
    source: Annotated[str, msgspec.Meta(max_length=96)]
    events: Annotated[tuple[ClusterEvent, ...], msgspec.Meta(max_length=EVENTS_MAX)]
