"""Messages of the Raft test server (tests/harness/raft_server.py), in the test range 900-999."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vstore.wire.messages import U64, Message, NodeIdStr, register

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


@register
class KvAppendRequest(Message):
    TYPE = 900  # type: ignore[assignment]
    client_id: NodeIdStr
    seq: U64
    key: Key
    value: int


@register
class KvReadRequest(Message):
    TYPE = 901  # type: ignore[assignment]
    key: Key


@register
class KvReply(Message):
    TYPE = 902  # type: ignore[assignment]
    MAX_META_BYTES = 4 * 1024 * 1024
    result: str = ""
    values: tuple[int, ...] = ()


@register
class RaftStatusRequest(Message):
    TYPE = 903  # type: ignore[assignment]


@register
class RaftStatusReply(Message):
    TYPE = 904  # type: ignore[assignment]
    MAX_META_BYTES = 64 * 1024
    status: dict[str, int | str | list[str] | dict[str, str]] = {}


@register
class RaftMemberRequest(Message):
    """op: add (as learner), promote, remove."""

    TYPE = 905  # type: ignore[assignment]
    op: str
    node_id: NodeIdStr
    address: str = ""


@register
class RaftBenchRequest(Message):
    """Run ``count`` proposals on the leader itself, ``inflight`` at a time (bench/raft.py)."""

    TYPE = 906  # type: ignore[assignment]
    count: U64
    inflight: U64


@register
class RaftBenchReply(Message):
    TYPE = 907  # type: ignore[assignment]
    ops_per_s: float
    latency_us_p50: float
    latency_us_p99: float
