"""The dashboard's JSON API (issue 8) on a live cluster of processes (3 MDS + 3 chunkservers):

* through the aiohttp test client, against a Dashboard app built here on a ClusterSource that
  reads the real cluster: 401 without a login, 403 without the CSRF token (and for a foreign
  Origin), the right data, the actions (policy, drain) with their effect on the cluster,
  bad input as 400 JSON errors, the OpenAPI document matching the routes;
* against the dashboards the MDS processes serve themselves (``vstore serve``): a follower's
  shows the leader's data, the security headers, the login rate limit, ``/metrics``, and the
  event log following a chunkserver's death and return.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster, write_files
from tests.harness.wait import wait_for
from vstore.admin.app import Dashboard
from vstore.admin.openapi import OPENAPI
from vstore.admin.source import ClusterSource
from vstore.client.factory import client_auth
from vstore.client.mds_link import MdsLink
from vstore.metadata.passwords import hash_password, verify_password

pytestmark = pytest.mark.timeout(300)

TIMERS = {"cs_offline_after_s": 1, "cs_failed_after_s": 30}


def _source(cluster: FsCluster) -> ClusterSource:
    addresses = [cluster.address(i) for i in cluster.ids]

    def link(role: str) -> MdsLink:
        auth = client_auth(cluster_id=cluster.cluster_id, secret_file=str(cluster.secret_file), role=role,
                           node_id=f"dash-test-{role}")
        return MdsLink([(a.split(":")[0], int(a.split(":")[1])) for a in addresses], auth, deadline_s=10.0,
                       attempt_deadline_s=3.0, host="dash-test")
    return ClusterSource(name="test", cluster_id=cluster.cluster_id, node_id="test", admin_link=link("admin"),
                         client_link=link("client"), mds_addresses=addresses, history_interval_s=1.0)


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest):
    fs = FsCluster(tmp_path, chunk_bytes=1 << 20, mds_extra=TIMERS, admin=True)
    async with fs.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        yield fs


async def _login(client: TestClient | aiohttp.ClientSession, password: str, base: str = "") -> str:
    response = await client.post(f"{base}/api/v1/login", json={"password": password})
    assert response.status == 200, await response.text()
    return (await response.json())["csrf_token"]


async def test_the_api_guards_answers_and_acts_on_a_live_cluster(cluster: FsCluster, expect_log) -> None:
    expect_log("admin.login_failed")
    password = "correct horse battery"
    source = _source(cluster)
    dashboard = Dashboard(source, password_hash=lambda: hash_password(password), verify=verify_password)
    await source.start()
    client = TestClient(TestServer(dashboard.app()))
    await client.start_server()
    try:
        for path in ("/api/v1/cluster", "/api/v1/mds", "/api/v1/chunkservers", "/api/v1/events",
                     "/api/v1/history", "/api/v1/session", "/api/v1/policies?path=/"):
            response = await client.get(path)
            assert response.status == 401 and "error" in await response.json(), path
        assert (await client.get("/metrics")).status == 401
        page = await client.get("/")
        assert page.status == 200 and "text/html" in page.headers["Content-Type"]
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "DENY"

        wrong = await client.post("/api/v1/login", json={"password": "nope"})
        assert wrong.status == 401 and (await wrong.json())["error"] == "wrong password"
        assert (await client.post("/api/v1/login", data=b"password=x")).status == 400
        csrf = await _login(client, password)
        cookie = next(c for c in client.session.cookie_jar if c.key == "vstore_session")
        assert cookie["httponly"] and cookie["samesite"] == "Strict"

        async def healthy() -> dict[str, Any] | None:
            body = await (await client.get("/api/v1/cluster")).json()
            return body if body.get("health") == "healthy" else None
        body = await wait_for(healthy, timeout_s=60, interval_s=0.5, what="the API saying healthy")
        assert body["name"] == "test" and body["leader"]["node_id"] in cluster.ids and body["reasons"] == []
        assert body["chunks"]["lost"] == 0 and body["space"]["capacity_bytes"] > 0
        members = (await (await client.get("/api/v1/mds")).json())["members"]
        assert sorted(m["node_id"] for m in members) == sorted(cluster.ids)
        assert [m["role"] for m in members].count("leader") == 1 and all(m["voter"] for m in members)
        servers = (await (await client.get("/api/v1/chunkservers")).json())["chunkservers"]
        assert len(servers) == 3 and {s["status"] for s in servers} == {"online"}
        assert all(s["capacity_bytes"] > 0 and 0 <= s["last_heartbeat_s"] < 5 for s in servers)

        # data: chunks appear in the counts and the written bytes in the rates
        await write_files(cluster.client_config("writer"), {"/vm/a.img": os.urandom(3 << 20)})

        async def counted() -> bool:
            body = await (await client.get("/api/v1/cluster")).json()
            return body["chunks"]["total"] == 3 and body["chunks"]["healthy"] == 3
        await wait_for(counted, timeout_s=30, interval_s=0.5, what="3 healthy chunks counted")

        # actions need the CSRF token, and a foreign Origin is refused even with it
        change = {"path": "/vm", "replicas": "2:1"}
        assert (await client.put("/api/v1/policies", json=change)).status == 403
        evil = await client.put("/api/v1/policies", json=change,
                                headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert evil.status == 403
        done = await client.put("/api/v1/policies", json=change, headers={"X-CSRF-Token": csrf})
        assert done.status == 200, await done.text()
        assert (await done.json()) == {"path": "/vm", "replicas": "2:1", "inherited": False, "exclusive_write": False}
        got = await (await client.get("/api/v1/policies", params={"path": "/vm/a.img"})).json()
        assert got["replicas"] == "3:2"  # a file made before keeps its own
        for bad in ({"path": "/vm", "replicas": "9:12"}, {"path": "/vm"}, {"path": "vm", "replicas": "2"},
                    {"path": "/vm", "exclusive_write": "yes"}):
            response = await client.put("/api/v1/policies", json=bad, headers={"X-CSRF-Token": csrf})
            assert response.status == 400 and (await response.json())["error"], bad
        missing = await client.get("/api/v1/policies", params={"path": "/no/such"})
        assert missing.status == 404 and "no such file" in (await missing.json())["error"]
        assert (await client.get("/api/v1/events", params={"after": "-1"})).status == 400

        target = servers[0]["cs_id"]
        assert (await client.post(f"/api/v1/chunkservers/{target}/drain")).status == 403
        drained = await client.post(f"/api/v1/chunkservers/{target}/drain", headers={"X-CSRF-Token": csrf})
        assert drained.status == 200 and (await drained.json()) == {"cs_id": target, "state": "draining"}
        servers = (await (await client.get("/api/v1/chunkservers")).json())["chunkservers"]
        assert next(s for s in servers if s["cs_id"] == target)["state"] == "draining"
        back = await client.post(f"/api/v1/chunkservers/{target}/activate", headers={"X-CSRF-Token": csrf})
        assert back.status == 200 and (await back.json())["state"] == "active"
        nobody = await client.post("/api/v1/chunkservers/999/drain", headers={"X-CSRF-Token": csrf})
        assert nobody.status == 404

        # every documented route exists (none answers 404/405 for its documented method)
        for path, methods in OPENAPI["paths"].items():
            if "{cs_id}" in path or path in ("/api/v1/logout",):
                continue
            for method in methods:
                url = path + ("?path=/" if path == "/api/v1/policies" and method == "get" else "")
                response = await client.request(method.upper(), url, json={}, headers={"X-CSRF-Token": csrf})
                assert response.status not in (404, 405), (method, path, response.status)
        metrics = await client.get("/metrics")
        assert metrics.status == 404  # this app was given no exposition
        logout = await client.post("/api/v1/logout", headers={"X-CSRF-Token": csrf})
        assert logout.status == 200 and (await client.get("/api/v1/cluster")).status == 401
    finally:
        await client.close()
        await source.stop()


async def test_the_dashboards_the_mds_serve_follow_the_leader_and_a_chunkserver_loss(cluster: FsCluster) -> None:
    leader = await cluster.leader()
    follower = next(i for i in cluster.ids if i != leader)
    base = cluster.admin_url(follower)
    # unsafe: the jar keeps cookies of an IP-address host (127.0.0.1), as browsers do
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        csrf = await _login(http, cluster.admin_password, base)
        body = await (await http.get(f"{base}/api/v1/cluster")).json()
        assert body.get("served_by") == {"node_id": follower, "role": "follower"}, body
        assert body["leader"]["node_id"] == leader
        session = await (await http.get(f"{base}/api/v1/session")).json()
        assert session["csrf_token"] == csrf and session["expires_s"] > 60
        metrics = await http.get(f"{base}/metrics")
        text = await metrics.text()
        assert metrics.status == 200 and "text/plain" in metrics.headers["Content-Type"]
        assert f'vstore_raft_current_term{{node="{follower}"}}' in text and 'vstore_cluster_cs_nodes{status="online"} 3.0' in text
        async with aiohttp.ClientSession() as anonymous:
            assert (await anonymous.get(f"{base}/metrics")).status == 401

        after = (await (await http.get(f"{base}/api/v1/events")).json())["last_seq"]
        cluster.kill(cluster.cs_names[2])

        async def event(name: str) -> bool:
            events = (await (await http.get(f"{base}/api/v1/events", params={"after": str(after)})).json())["events"]
            return any(e["event"] == name for e in events)
        await wait_for(lambda: event("cs.offline"), timeout_s=30, interval_s=0.5, what="a cs.offline event")
        body = await (await http.get(f"{base}/api/v1/cluster")).json()
        assert body["health"] == "degraded" and "1 of 3 chunkservers not online" in body["reasons"]
        cluster.start_cs(cluster.cs_names[2])
        await wait_for(lambda: event("cs.back"), timeout_s=30, interval_s=0.5, what="a cs.back event")

        async def charted() -> bool:
            history = await (await http.get(f"{base}/api/v1/history")).json()
            assert history["interval_s"] == 5.0
            return any(p["capacity_bytes"] > 0 for p in history["points"])
        await wait_for(charted, timeout_s=20, interval_s=1, what="a history point with the cluster's space")

        # the login limit: five wrong passwords from one address, then even the right one waits
        other = cluster.admin_url(leader)
        async with aiohttp.ClientSession() as guesser:
            for _ in range(5):
                assert (await guesser.post(f"{other}/api/v1/login", json={"password": "guess"})).status == 401
            limited = await guesser.post(f"{other}/api/v1/login", json={"password": cluster.admin_password})
            assert limited.status == 429 and "too many failed logins" in (await limited.json())["error"]
