"""Sockets for vstore: framed RPC over TCP (optionally TLS) and signed UDP datagrams.

The protocol itself (frames, messages, handshake) is in ``vstore.wire``; this package only
moves its bytes. Modules: ``connection`` (one framed connection), ``rpc`` (server, router,
client), ``dgram`` (heartbeat channel), ``tls`` (ssl contexts).
"""

from vstore.net.connection import Auth, Connection, Limits, limits_of, read_secret_file
from vstore.net.rpc import (Reply, RequestContext, Router, RpcClient, RpcClients, RpcServer, format_address,
                            parse_address)

__all__ = ["limits_of", "read_secret_file", "Auth", "Connection", "Limits", "Reply", "RequestContext", "Router", "RpcClient", "RpcClients", "RpcServer",
           "format_address", "parse_address"]
