"""Building a file-system client from what a mount's config says (the FUSE layer and tools
call this; the config itself is read by them, not here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from vstore.client.chunk_io import ChunkIo
from vstore.client.files import ClientOptions, FileClient
from vstore.client.mds_link import MdsLink, client_node_id
from vstore.net import Auth, limits_of, read_secret_file
from vstore.wire import FrameAuth, Identity


def client_auth(*, cluster_id: str, secret_file: str, node_id: str, role: str = "client",
                frame_auth: str = "hmac") -> Auth:
    """How a client or an admin tool authenticates. UsageError for an unreadable or insecure
    secret file."""
    return Auth(read_secret_file(secret_file), Identity(cluster_id, node_id, role), frame_auth=FrameAuth(frame_auth))


def file_client(*, cluster_id: str, mds: Sequence[tuple[str, int]], secret_file: str, net: object,
                frame_auth: str = "hmac", node_id: str = "", host: str = "", mountpoint: str = "",
                options: ClientOptions = ClientOptions()) -> FileClient:
    """A FileClient (not started) for the cluster. ``net`` is a config's [net] section.
    Raises UsageError for an unreadable or insecure secret file."""
    auth = client_auth(cluster_id=cluster_id, secret_file=secret_file, frame_auth=frame_auth,
                       node_id=node_id or client_node_id(host or None))
    limits = limits_of(net)
    link = MdsLink(list(mds), auth, deadline_s=options.deadline_s, limits=limits, host=host or None,
                   mountpoint=mountpoint)
    io = ChunkIo(auth, limits=limits, host=host or link.host)
    if not options.host:
        options = dataclasses.replace(options, host=host or link.host)
    return FileClient(link, io, options)
