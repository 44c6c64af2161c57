"""The TLS option: mutual certificates from a cluster CA, with the handshake inside."""

from __future__ import annotations

import secrets
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.harness.skips import require_tool
from vstore.errors import ConfigError, ConnectionLost, Unavailable
from vstore.net import Auth, Limits, Reply, Router, RpcClient, RpcServer
from vstore.net.tls import client_context, server_context
from vstore.wire import FrameAuth, Identity, PingReply, PingRequest

SECRET = secrets.token_bytes(32)
CLUSTER = "tls-cluster"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)


def _make_cert(directory: Path, ca: str, name: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.crt", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("openssl", "needed to make test certificates")
    directory = tmp_path_factory.mktemp("pki")
    _make_ca(directory, "ca")
    _make_ca(directory, "rogue-ca")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        _make_cert(directory, ca, name)
    return directory


def _router() -> Router:
    router = Router()

    async def ping(ctx, msg, payload):
        return Reply(PingReply(node_id="mds-1", role="mds"), payload)

    router.add(PingRequest, ping)
    return router


async def test_a_call_over_mutual_tls_succeeds(pki: Path) -> None:
    d = str(pki)
    server = RpcServer(_router(), Auth(SECRET, Identity(CLUSTER, "mds-1", "mds"), FrameAuth.NONE),
                       allowed_roles=frozenset({"client"}),
                       ssl_context=server_context(f"{d}/server.crt", f"{d}/server.key", f"{d}/ca.crt"))
    address = await server.start("127.0.0.1", 0)
    client = RpcClient(address, Auth(SECRET, Identity(CLUSTER, "c", "client"), FrameAuth.NONE), expected_role="mds",
                       ssl_context=client_context(f"{d}/client.crt", f"{d}/client.key", f"{d}/ca.crt"))
    try:
        reply = await client.call(PingRequest(), b"over tls")
        assert reply.payload == b"over tls"
        assert client._conn is not None
        assert client._conn.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
    finally:
        await client.close()
        await server.close()


async def test_a_client_certificate_from_another_ca_is_refused(pki: Path) -> None:
    d = str(pki)
    server = RpcServer(_router(), Auth(SECRET, Identity(CLUSTER, "mds-1", "mds")), allowed_roles=frozenset({"client"}),
                       limits=Limits(handshake_timeout_s=1.0), ssl_context=server_context(f"{d}/server.crt", f"{d}/server.key", f"{d}/ca.crt"))
    address = await server.start("127.0.0.1", 0)
    good = RpcClient(address, Auth(SECRET, Identity(CLUSTER, "c", "client")), expected_role="mds",
                     ssl_context=client_context(f"{d}/client.crt", f"{d}/client.key", f"{d}/ca.crt"))
    rogue = RpcClient(address, Auth(SECRET, Identity(CLUSTER, "r", "client")), expected_role="mds",
                      ssl_context=client_context(f"{d}/rogue.crt", f"{d}/rogue.key", f"{d}/ca.crt"))
    plain = RpcClient(address, Auth(SECRET, Identity(CLUSTER, "p", "client")), expected_role="mds")
    try:
        # TLS 1.3 checks the client certificate after the client's side of the TLS handshake
        # is done, so the client sees the server hang up during the vstore handshake.
        with pytest.raises((Unavailable, ConnectionLost)):
            await rogue.call(PingRequest(), deadline_s=5)
        with pytest.raises((Unavailable, ConnectionLost)):
            await plain.call(PingRequest(), deadline_s=5)
        assert (await good.call(PingRequest(), b"ok")).payload == b"ok"
    finally:
        for c in (good, rogue, plain):
            await c.close()
        await server.close()


def test_unreadable_certificates_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[tls\]: cannot load certificates"):
        server_context(str(tmp_path / "missing.crt"), str(tmp_path / "missing.key"), str(tmp_path / "ca.crt"),
                       source="mds.toml")
    assert ssl.HAS_TLSv1_3
