"""The dashboard's web server (aiohttp), one per MDS at ``[mds] admin_listen``.

Routes:

* ``/`` the page, ``/static/*`` its script and style (vstore/admin/static), no login needed
  to load them; everything they show comes from the API;
* ``/api/v1/*`` the JSON API (vstore/admin/openapi.py describes it; ``/api/v1/openapi.json``);
  every route but ``login`` needs a session, every state-changing one its CSRF token;
* ``/metrics`` Prometheus text: with ``Authorization: Bearer <token>`` when
  ``[mds] metrics_token_file`` is set, or a dashboard session; and without anything on the
  separate ``[mds] metrics_listen`` address when that is set.

Hardening (RELIABILITY.md §6.3): cookie ``HttpOnly`` + ``SameSite=Strict`` (+ ``Secure``
under TLS); CSRF synchronizer token and an ``Origin`` check on POST/PUT/DELETE; login
rate limit; CSP ``default-src 'self'; frame-ancestors 'none'``, ``X-Frame-Options: DENY``,
``nosniff``, no referrer; request bodies at most 64 KiB; every error a JSON
``{"error": ...}`` with its status, never a traceback.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from vstore.admin.auth import COOKIE, LoginLimiter, Session, Sessions, csrf_ok
from vstore.admin.openapi import OPENAPI
from vstore.errors import Exists, InvalidArgument, NotFound, UsageError, VStoreError

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
BODY_MAX = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_OPEN = {"/api/v1/login", "/api/v1/openapi.json"}
_UNSAFE = {"POST", "PUT", "DELETE", "PATCH"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_KEY = web.RequestKey("session", Session)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _client_address(request: web.Request) -> str:
    return request.remote or "?"


class Dashboard:
    def __init__(self, source: Any, *, password_hash: Callable[[], str], verify: Callable[[str, str], bool],
                 metrics: Callable[[], Awaitable[bytes]] | None = None, metrics_token: str = "",
                 secure_cookie: bool = False, sessions: Sessions | None = None,
                 limiter: LoginLimiter | None = None) -> None:
        self.source = source
        self.password_hash = password_hash
        self.verify = verify
        self.metrics = metrics
        self.metrics_token = metrics_token
        self.secure_cookie = secure_cookie
        self.sessions = sessions or Sessions()
        self.limiter = limiter or LoginLimiter()

    # ---- the application ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=BODY_MAX, middlewares=[self._errors, self._guard])
        r = app.router
        r.add_get("/", self._index)
        r.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        r.add_post("/api/v1/login", self._login)
        r.add_post("/api/v1/logout", self._logout)
        r.add_get("/api/v1/session", self._session)
        r.add_get("/api/v1/openapi.json", self._openapi)
        r.add_get("/api/v1/cluster", self._cluster)
        r.add_get("/api/v1/mds", self._mds)
        r.add_get("/api/v1/chunkservers", self._chunkservers)
        r.add_get("/api/v1/chunks/health", self._chunk_health)
        r.add_get("/api/v1/events", self._events)
        r.add_get("/api/v1/history", self._history)
        r.add_get("/api/v1/policies", self._get_policy)
        r.add_put("/api/v1/policies", self._set_policy)
        r.add_post(r"/api/v1/chunkservers/{cs_id:\d+}/drain", self._drain)
        r.add_post(r"/api/v1/chunkservers/{cs_id:\d+}/activate", self._activate)
        r.add_get("/metrics", self._metrics)
        return app

    def metrics_app(self) -> web.Application:
        """``/metrics`` alone, no login: for the separate ``metrics_listen`` address."""
        app = web.Application(client_max_size=BODY_MAX, middlewares=[self._errors])
        app.router.add_get("/metrics", self._metrics_open)
        return app

    # ---- middlewares ---------------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 and request.path.startswith("/api/"):
                response = _error(exc.status, exc.reason)
            else:
                raise
        except (UsageError, InvalidArgument) as exc:
            response = _error(400, exc.message)
        except NotFound as exc:
            response = _error(404, exc.message)
        except Exists as exc:
            response = _error(409, exc.message)
        except VStoreError as exc:  # the cluster could not answer: no leader, a deadline
            response = _error(503, exc.message)
        except Exception:
            log.exception("admin.request_failed", extra={"path": request.path, "method": request.method})
            response = _error(500, "internal error; see the MDS log")
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path == "/" or path.startswith("/static/") or path in _OPEN or path == "/metrics":
            if request.method in _UNSAFE and path != "/api/v1/login":
                return _error(405, "method not allowed")
            if request.method in _UNSAFE and not self._same_origin(request):
                return _error(403, "cross-origin request refused")
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return _error(401, "log in first")
        if request.method in _UNSAFE:
            if not self._same_origin(request):
                return _error(403, "cross-origin request refused")
            if not csrf_ok(session, request.headers.get("X-CSRF-Token")):
                return _error(403, "missing or wrong CSRF token (X-CSRF-Token)")
        request[SESSION_KEY] = session
        return await handler(request)

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """No Origin (not a browser, or an old one: the CSRF token still guards), or this host's."""
        origin = request.headers.get("Origin")
        return origin is None or origin in (f"http://{request.host}", f"https://{request.host}")

    # ---- pages and sessions ----------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(OPENAPI)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise UsageError("send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise UsageError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise UsageError("the request body must be a JSON object")
        return body

    async def _login(self, request: web.Request) -> web.StreamResponse:
        client = _client_address(request)
        wait = self.limiter.wait_s(client)
        if wait > 0:
            return _error(429, f"too many failed logins; try again in {int(wait) + 1} s",
                          retry_after_s=int(wait) + 1)
        body = await self._json(request)
        password = body.get("password")
        if not isinstance(password, str) or not password or len(password) > 1024:
            raise UsageError("give the admin password as {\"password\": \"...\"}")
        stored = self.password_hash()
        if not stored or not self.verify(password, stored):
            self.limiter.failed(client)
            log.warning("admin.login_failed", extra={"client": client})
            return _error(401, "wrong password")
        self.limiter.succeeded(client)
        self.sessions.drop(request.cookies.get(COOKIE))
        sid, session = self.sessions.create()
        log.info("admin.login", extra={"client": client})
        response = web.json_response({"csrf_token": session.csrf, "expires_s": self.sessions.expires_in(session)})
        response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", secure=self.secure_cookie, path="/",
                            max_age=int(self.sessions.absolute_s))
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.drop(request.cookies.get(COOKIE))
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def _session(self, request: web.Request) -> web.StreamResponse:
        session = request[SESSION_KEY]
        return web.json_response({"csrf_token": session.csrf, "expires_s": self.sessions.expires_in(session)})

    # ---- data ----------------------------------------------------------------------------------------------

    async def _cluster(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.source.cluster())

    async def _mds(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.source.mds())

    async def _chunkservers(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.source.chunkservers())

    async def _chunk_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response((await self.source.cluster())["chunks"])

    async def _events(self, request: web.Request) -> web.StreamResponse:
        after = request.query.get("after", "0")
        if not after.isdigit() or len(after) > 18:
            raise UsageError("after: a sequence number (a non-negative integer)")
        return web.json_response(await self.source.events(int(after)))

    async def _history(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.source.history())

    async def _get_policy(self, request: web.Request) -> web.StreamResponse:
        path = request.query.get("path", "")
        if not path or len(path) > 4096:
            raise UsageError("path: a cluster path such as /vm-disks")
        return web.json_response(await self.source.get_policy(path))

    async def _set_policy(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        path, replicas, exclusive = body.get("path"), body.get("replicas"), body.get("exclusive_write")
        if not isinstance(path, str) or not path or len(path) > 4096:
            raise UsageError("path: a cluster path such as /vm-disks")
        if replicas is not None:
            if not isinstance(replicas, str):
                raise UsageError("replicas: text such as \"3:2\" (N copies, writes need MIN)")
            _check_policy(replicas)
        if exclusive is not None and not isinstance(exclusive, bool):
            raise UsageError("exclusive_write: true or false")
        if replicas is None and exclusive is None:
            raise UsageError("give replicas, exclusive_write or both")
        result = await self.source.set_policy(path, replicas, exclusive)
        log.info("admin.policy_set", extra={"path": path, "replicas": replicas, "exclusive_write": exclusive})
        return web.json_response(result)

    async def _drain(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._cs_state(request, "draining"))

    async def _activate(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._cs_state(request, "active"))

    async def _cs_state(self, request: web.Request, state: str) -> dict[str, Any]:
        cs_id = int(request.match_info["cs_id"])
        if cs_id >= 2**32:
            raise NotFound(f"no chunkserver with id {cs_id}")
        result = await self.source.set_cs_state(cs_id, state)
        log.info("admin.cs_state", extra={"cs_id": cs_id, "state": state})
        return dict(result)

    # ---- metrics ---------------------------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "")
        by_token = bool(self.metrics_token) and _bearer_ok(token, self.metrics_token)
        if not by_token and self.sessions.get(request.cookies.get(COOKIE)) is None:
            return web.Response(status=401, text="metrics need Authorization: Bearer <token> "
                                                 "([mds] metrics_token_file) or a dashboard login\n")
        return await self._metrics_open(request)

    async def _metrics_open(self, request: web.Request) -> web.StreamResponse:
        if self.metrics is None:
            return web.Response(status=404, text="no metrics here\n")
        body = await self.metrics()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _bearer_ok(header: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _check_policy(text: str) -> None:
    replicas, colon, minimum = text.partition(":")
    try:
        n, m = int(replicas), int(minimum) if colon else max(1, int(replicas) - 1)
    except ValueError:
        raise UsageError(f"replicas {text!r}: N or N:MIN, e.g. 3:2") from None
    if not 1 <= m <= n <= 16:
        raise UsageError(f"replicas {text!r}: need 1 <= MIN <= N <= 16")

