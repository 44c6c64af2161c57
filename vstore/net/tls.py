"""TLS contexts (stdlib ``ssl``) for clusters on untrusted networks.

Mutual certificate authentication with TLS 1.3 only: the server requires a client
certificate signed by the cluster CA and the client requires the same of the server.
Hostnames are not checked because cluster nodes are addressed by IP and the CA is private
to the cluster; the identity that matters (node id, role, cluster) is proven again by the
cluster-secret handshake that runs inside TLS. Python 3.11 has no TLS-PSK API, so the
cluster secret cannot key TLS directly.
"""

from __future__ import annotations

import ssl

from vstore.errors import ConfigError


def _context(purpose: ssl.Purpose, cert_file: str, key_file: str, ca_file: str, source: str) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(purpose, cafile=ca_file)
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(source, "[tls]", f"cannot load certificates: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cert_file: str, key_file: str, ca_file: str, *, source: str = "config") -> ssl.SSLContext:
    return _context(ssl.Purpose.CLIENT_AUTH, cert_file, key_file, ca_file, source)


def client_context(cert_file: str, key_file: str, ca_file: str, *, source: str = "config") -> ssl.SSLContext:
    ctx = _context(ssl.Purpose.SERVER_AUTH, cert_file, key_file, ca_file, source)
    ctx.check_hostname = False  # see module docstring: identity is checked by the handshake
    return ctx
