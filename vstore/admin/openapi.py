"""The OpenAPI 3.0 description of ``/api/v1`` (served at ``/api/v1/openapi.json``).

Hand-written next to the handlers (vstore/admin/app.py) and checked against them by the API
tests: every route here exists there and answers with the documented fields.
"""

from __future__ import annotations

from typing import Any


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or list(props)}


INT = {"type": "integer", "minimum": 0}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
ERROR = _obj({"error": STR}, ["error"])


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {"401": _json(ERROR, "not logged in"), "503": _json(ERROR, "the cluster did not answer")}
_WRITE_ERRORS = {**_ERRORS, "400": _json(ERROR, "bad input"), "403": _json(ERROR, "CSRF token or origin refused")}

CLUSTER = _obj({
    "name": STR, "id": STR, "health": {"type": "string", "enum": ["healthy", "degraded", "urgent", "unavailable"]},
    "reasons": {"type": "array", "items": STR},
    "served_by": _obj({"node_id": STR, "role": STR}),
    "leader": {"oneOf": [_obj({"node_id": STR, "address": STR}), {"type": "null"}]},
    "chunks": _obj({k: INT for k in ("total", "healthy", "degraded", "urgent", "lost", "rebuilding")}),
    "rebuild": _obj({"waiting": INT, "in_flight": INT, "copied_bytes": INT, "mib_s": NUM}),
    "space": _obj({"capacity_bytes": INT, "used_bytes": INT}),
    "io": _obj({"read_mib_s": NUM, "write_mib_s": NUM}),
    "safe_mode": BOOL, "storm_brake": BOOL, "time": NUM,
})
MDS = _obj({"members": {"type": "array", "items": _obj({
    "node_id": STR, "address": STR, "role": STR, "voter": BOOL, "term": INT, "commit": INT, "applied": INT,
    "lag": INT, "active": BOOL})}})
CHUNKSERVERS = _obj({"chunkservers": {"type": "array", "items": _obj({
    "cs_id": INT, "node_id": STR, "address": STR, "host": STR, "rack": STR, "state": STR, "status": STR,
    "capacity_bytes": INT, "used_bytes": INT, "chunks": INT, "read_mib_s": NUM, "write_mib_s": NUM,
    "last_heartbeat_s": NUM, "drain_left": INT, "sole": INT})}})
EVENTS = _obj({"events": {"type": "array", "items": _obj({
    "seq": INT, "time": NUM, "time_ms": INT, "level": STR, "event": STR, "text": STR})}, "last_seq": INT})
HISTORY = _obj({"interval_s": NUM, "points": {"type": "array", "items": _obj({
    "t": NUM, "read_mib_s": NUM, "write_mib_s": NUM, "rebuild_mib_s": NUM, "used_bytes": INT,
    "capacity_bytes": INT})}})
POLICY = _obj({"path": STR, "replicas": STR, "inherited": BOOL, "exclusive_write": BOOL})
SESSION = _obj({"csrf_token": STR, "expires_s": INT})
CS_STATE = _obj({"cs_id": INT, "state": STR})

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "vstore admin API", "version": "1"},
    "components": {"securitySchemes": {
        "session": {"type": "apiKey", "in": "cookie", "name": "vstore_session"},
        "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}}},
    "security": [{"session": []}],
    "paths": {
        "/api/v1/login": {"post": {
            "security": [], "summary": "log in with the admin password; sets the session cookie",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                {"password": {"type": "string", "minLength": 1, "maxLength": 1024}})}}},
            "responses": {"200": _json(SESSION), "400": _json(ERROR, "bad input"),
                          "401": _json(ERROR, "wrong password"), "429": _json(ERROR, "too many failed logins")}}},
        "/api/v1/logout": {"post": {"security": [{"session": [], "csrf": []}], "summary": "end the session",
                                    "responses": {"200": _json(_obj({"ok": BOOL})), **_WRITE_ERRORS}}},
        "/api/v1/session": {"get": {"summary": "the session's CSRF token",
                                    "responses": {"200": _json(SESSION), **_ERRORS}}},
        "/api/v1/cluster": {"get": {"summary": "health, chunk counts, rebuild, space and I/O",
                                    "responses": {"200": _json(CLUSTER), **_ERRORS}}},
        "/api/v1/mds": {"get": {"summary": "every MDS: role, term, commit and applied index, lag",
                                "responses": {"200": _json(MDS), **_ERRORS}}},
        "/api/v1/chunkservers": {"get": {"summary": "every chunkserver: state, space, chunks, rates",
                                         "responses": {"200": _json(CHUNKSERVERS), **_ERRORS}}},
        "/api/v1/chunks/health": {"get": {"summary": "chunk health counts",
                                          "responses": {"200": _json(CLUSTER["properties"]["chunks"]), **_ERRORS}}},
        "/api/v1/events": {"get": {
            "summary": "the event log after a sequence number",
            "parameters": [{"name": "after", "in": "query", "required": False, "schema": INT}],
            "responses": {"200": _json(EVENTS), "400": _json(ERROR, "bad input"), **_ERRORS}}},
        "/api/v1/history": {"get": {"summary": "throughput and space over the last hour",
                                    "responses": {"200": _json(HISTORY), **_ERRORS}}},
        "/api/v1/policies": {
            "get": {"summary": "a path's replication policy",
                    "parameters": [{"name": "path", "in": "query", "required": True,
                                    "schema": {"type": "string", "minLength": 1, "maxLength": 4096}}],
                    "responses": {"200": _json(POLICY), "400": _json(ERROR, "bad input"),
                                  "404": _json(ERROR, "no such path"), **_ERRORS}},
            "put": {"security": [{"session": [], "csrf": []}], "summary": "set a path's replication policy",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["path"], "properties": {
                            "path": {"type": "string", "minLength": 1, "maxLength": 4096},
                            "replicas": {"type": "string", "pattern": "^[0-9]+(:[0-9]+)?$"},
                            "exclusive_write": BOOL}}}}},
                    "responses": {"200": _json(POLICY), "404": _json(ERROR, "no such path"), **_WRITE_ERRORS}}},
        "/api/v1/chunkservers/{cs_id}/drain": {"post": {
            "security": [{"session": [], "csrf": []}], "summary": "drain a chunkserver (its chunks move away)",
            "parameters": [{"name": "cs_id", "in": "path", "required": True, "schema": INT}],
            "responses": {"200": _json(CS_STATE), "404": _json(ERROR, "no such chunkserver"), **_WRITE_ERRORS}}},
        "/api/v1/chunkservers/{cs_id}/activate": {"post": {
            "security": [{"session": [], "csrf": []}], "summary": "stop draining a chunkserver",
            "parameters": [{"name": "cs_id", "in": "path", "required": True, "schema": INT}],
            "responses": {"200": _json(CS_STATE), "404": _json(ERROR, "no such chunkserver"), **_WRITE_ERRORS}}},
    },
}
