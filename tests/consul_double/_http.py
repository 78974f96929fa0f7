"""HTTP front of the double: routing, ACL enforcement, blocking queries and Consul's headers.

Blocking queries follow Consul's ``blockingQuery``: with ``?index=N`` (N > 0) the request waits
until the index of what it reads exceeds N, or ``wait`` (default 5m, at most 10m, plus up to
wait/16 of jitter) passes, or the state is "restored" (:meth:`ConsulState.reset_index`), in which
case it returns at once with the new, lower index. A reported index is never below 1.
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from ._config_entries import ConfigEntryRoutes
from ._durations import parse_duration
from ._normalize import normalize
from ._sessions import SessionRoutes
from ._state import CHECK_STATES, ConsulState, DoubleError
from ._wan import WanPeers

log = logging.getLogger("consul_double")

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_TXN_BODY = 512 * 1024  # limits.txn_max_req_len
VERSION = "1.20.0-double"


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able object, or bytes / str sent as-is
    index: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bool = False
    content_type: str = ""  # raw replies: sent as this (default: by the body's type)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return name in self.query

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise DoubleError(400, f"Request decode failed: {exc}") from exc


@dataclass(frozen=True)
class AclConfig:
    """Tokens the double knows: a management token and an optional read-only one."""

    management: str | None = None
    read_only: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.management)

    def accessor(self, secret: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_OID, f"consul-double-token:{secret}"))


class DoubleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: ConsulState, acl: AclConfig, verbose: bool = False,
                 wan: WanPeers | None = None):
        super().__init__(address, _Handler)
        self.state = state
        self.acl = acl
        self.wan = wan or WanPeers()
        self.verbose = verbose
        self._open: set[Any] = set()  # accepted connections not yet closed (keep-alive ones included)
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop every open client connection, as a stopped Consul does: a keep-alive connection must not go on
        being served from this server's state after it stopped (a restarted double has new state)."""
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (killed, timed out) is normal for a server: no traceback."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            log.debug("client %s went away mid-request", client_address)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DoubleHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        req = Request(method, unquote(url.path), parse_qs(url.query, keep_blank_values=True), self.headers, body)
        api = _Api(self.server.state, self.server.acl, req, self.server.wan)
        try:
            reply = api.handle()
        except DoubleError as exc:
            reply = Reply(exc.status, exc.text, raw=True)
        except Exception as exc:  # a bug in the double: answer 500 like Consul would, and log it
            log.exception("consul double failed on %s %s", method, self.path)
            reply = Reply(500, f"consul test double internal error: {exc}", raw=True)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        if reply.raw:
            data = reply.body if isinstance(reply.body, bytes) else str(reply.body or "").encode()
            ctype = reply.content_type or (
                "application/octet-stream" if isinstance(reply.body, bytes) else "text/plain; charset=utf-8")
        else:
            data = json.dumps(reply.body).encode()
            ctype = "application/json"
        self.send_response(reply.status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Vary", "Accept-Encoding")
        if reply.index is not None:
            self.send_header("X-Consul-Index", str(reply.index))
            self.send_header("X-Consul-KnownLeader", "true")
            self.send_header("X-Consul-LastContact", "0")
            self.send_header("X-Consul-Effective-Consistency", "leader")
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


_ROUTES: list[tuple[str, re.Pattern, str]] = []


def _route(method: str, pattern: str):
    def register(fn: Callable) -> Callable:
        _ROUTES.append((method, re.compile("^" + pattern + "$"), fn.__name__))
        return fn

    return register


_ROUTES.extend((m, re.compile("^" + p + "$"), n) for m, p, n in ConfigEntryRoutes.ROUTES)  # /v1/config


_ROUTES.extend((m, re.compile("^" + p + "$"), n) for m, p, n in SessionRoutes.ROUTES)  # /v1/session


class _Api(SessionRoutes, ConfigEntryRoutes):
    """One request against the state; each ``r_*`` method is one endpoint."""

    def __init__(self, state: ConsulState, acl: AclConfig, req: Request, wan: WanPeers | None = None):
        self.state = state
        self.acl = acl
        self.req = req
        self.wan = wan or WanPeers()

    # ------------------------------------------------------------------ plumbing
    def handle(self) -> Reply:
        dc = self.req.arg("dc")
        if dc and dc != self.state.datacenter:
            return self._forward(dc)
        if self.req.arg("filter"):
            raise DoubleError(400, "the consul test double does not implement ?filter expressions")
        allowed = []
        for method, pattern, name in _ROUTES:
            match = pattern.match(self.req.path)
            if not match:
                continue
            if method != self.req.method:
                allowed.append(method)
                continue
            return getattr(self, name)(*match.groups())
        if allowed:
            raise DoubleError(405, f"method {self.req.method} not allowed")
        raise DoubleError(404, f"Invalid URL path: not a recognized HTTP API endpoint: {self.req.path}")

    def _forward(self, dc: str) -> Reply:
        """A request for another datacenter: relayed to its double over the WAN (see ``_wan``)."""
        if dc not in self.wan.peers:
            raise DoubleError(500, "No path to datacenter")
        target = quote(self.req.path) + ("?" + urlencode(self.req.query, doseq=True) if self.req.query else "")
        status, body, headers, ctype = self.wan.forward(dc, self.req.method, target, self.req.headers, self.req.body)
        return Reply(status, body, headers=headers, raw=True, content_type=ctype)

    def _token(self) -> str:
        token = self.req.headers.get("X-Consul-Token") or self.req.arg("token") or ""
        auth = self.req.headers.get("Authorization") or ""
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        return token

    def authorize(self, rule: str, access: str, name: str = "") -> None:
        """Enforce ACLs (when enabled): management token may do anything, the read token only read."""
        if not self.acl.enabled:
            return
        token = self._token()
        perm = f"{rule}:{access}"
        if not token:
            raise DoubleError(403, f"Permission denied: anonymous token lacks permission '{perm}' on \"{name}\". "
                                   "The anonymous token is used implicitly when a request does not specify a token.")
        if token == self.acl.management:
            return
        if token == self.acl.read_only:
            if access == "read":
                return
            raise DoubleError(403, f"Permission denied: token with AccessorID '{self.acl.accessor(token)}' "
                                   f"lacks permission '{perm}' on \"{name}\"")
        raise DoubleError(403, "ACL not found")

    def blocking(self, index_fn: Callable[[], int], render: Callable[[], Any]) -> tuple[int, Any]:
        """Run a read as Consul's blockingQuery does; returns (index, rendered data)."""
        try:
            min_index = int(self.req.arg("index") or 0)
        except ValueError as exc:
            raise DoubleError(400, "Invalid index") from exc
        wait = DEFAULT_WAIT
        if self.req.arg("wait"):
            try:
                wait = parse_duration(self.req.arg("wait") or "")
            except ValueError as exc:
                raise DoubleError(400, "Invalid wait time") from exc
        wait = min(max(wait, 0.0), MAX_WAIT)
        state = self.state
        with state.cond:
            if min_index > 0:
                deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
                generation = state.generation
                while max(1, index_fn()) <= min_index and not state.closed and state.generation == generation:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    state.cond.wait(remaining)
            return max(1, index_fn()), render()

    def read(self, index_fn: Callable[[], int], render: Callable[[], Any], *, not_found_if_none: bool = False) -> Reply:
        index, data = self.blocking(index_fn, render)
        if data is None and not_found_if_none:
            return Reply(404, b"", index=index, raw=True)
        return Reply(200, data, index=index)

    def _tags_match(self, tags: list[str]) -> bool:
        return all(t in tags for t in self.req.query.get("tag", []))

    def _node_meta_match(self, meta: dict) -> bool:
        for pair in self.req.query.get("node-meta", []):
            key, _, value = pair.partition(":")
            if meta.get(key) != value:
                return False
        return True

    # ------------------------------------------------------------------ catalog
    @_route("PUT", r"/v1/catalog/register")
    def r_catalog_register(self) -> Reply:
        body = self.req.json()
        self.authorize("node", "write", (body or {}).get("Node", "") if isinstance(body, dict) else "")
        self.state.catalog_register(body)
        return Reply(200, True)

    @_route("PUT", r"/v1/catalog/deregister")
    def r_catalog_deregister(self) -> Reply:
        body = self.req.json()
        self.authorize("node", "write", (body or {}).get("Node", "") if isinstance(body, dict) else "")
        self.state.catalog_deregister(body)
        return Reply(200, True)

    @_route("GET", r"/v1/catalog/datacenters")
    def r_catalog_datacenters(self) -> Reply:
        return Reply(200, self.wan.datacenters(self.state.datacenter))

    @_route("GET", r"/v1/catalog/services")
    def r_catalog_services(self) -> Reply:
        self.authorize("service", "read")
        s = self.state

        def render() -> dict:
            out: dict[str, list[str]] = {}
            for (node, _), svc in sorted(s.services.items()):
                if node in s.nodes and self._node_meta_match(s.nodes[node]["Meta"]):
                    tags = out.setdefault(svc["Service"], [])
                    tags.extend(t for t in svc["Tags"] if t not in tags)
            return out

        return self.read(lambda: s.tables["services"], render)

    @_route("GET", r"/v1/catalog/(service|connect)/(.+)")
    def r_catalog_service(self, which: str, name: str) -> Reply:
        self.authorize("service", "read", name)
        s = self.state
        connect = which == "connect"

        def render() -> list:
            return [s.catalog_service_json(node, svc) for node, svc in s.instances(name, connect=connect)
                    if self._tags_match(svc["Tags"]) and self._node_meta_match(s.nodes[node]["Meta"])]

        return self.read(lambda: s.idx_connect(name) if connect else s.idx_service(name), render)

    @_route("GET", r"/v1/catalog/nodes")
    def r_catalog_nodes(self) -> Reply:
        self.authorize("node", "read")
        s = self.state
        return self.read(lambda: s.tables["nodes"],
                         lambda: [s.node_json(n) for n in sorted(s.nodes) if self._node_meta_match(s.nodes[n]["Meta"])])

    @_route("GET", r"/v1/catalog/node/(.+)")
    def r_catalog_node(self, node: str) -> Reply:
        self.authorize("node", "read", node)
        s = self.state

        def render() -> dict | None:
            if node not in s.nodes:
                return None
            services = {svc["ID"]: s.service_json(node, svc) for svc in s._services_on(node)}
            return {"Node": s.node_json(node), "Services": services}

        return self.read(lambda: s.idx_node(node), render)

    # ------------------------------------------------------------------ health
    @_route("GET", r"/v1/health/(service|connect|ingress)/(.+)")
    def r_health_service(self, which: str, name: str) -> Reply:
        self.authorize("service", "read", name)
        if which == "ingress":
            raise DoubleError(400, "the consul test double does not implement /v1/health/ingress")
        s = self.state
        connect = which == "connect"
        passing = self.req.flag("passing") and (self.req.arg("passing") or "1").lower() not in ("0", "false")

        def render() -> list:
            out = []
            for node, svc in s.instances(name, connect=connect):
                if not (self._tags_match(svc["Tags"]) and self._node_meta_match(s.nodes[node]["Meta"])):
                    continue
                entry = s.health_entry(node, svc)
                if passing and any(c["Status"] != "passing" for c in entry["Checks"]):
                    continue
                out.append(entry)
            return out

        return self.read(lambda: s.idx_connect(name) if connect else s.idx_service(name), render)

    @_route("GET", r"/v1/health/state/([^/]+)")
    def r_health_state(self, wanted: str) -> Reply:
        self.authorize("node", "read")
        if wanted != "any" and wanted not in CHECK_STATES + ("unknown",):
            raise DoubleError(400, "Bad check state")
        s = self.state
        return self.read(lambda: s.tables["checks"],
                         lambda: [c for c in s.all_checks() if wanted == "any" or c["Status"] == wanted])

    @_route("GET", r"/v1/health/checks/(.+)")
    def r_health_checks(self, name: str) -> Reply:
        self.authorize("service", "read", name)
        s = self.state
        return self.read(lambda: s.idx_service(name),
                         lambda: [c for c in s.all_checks() if c["ServiceName"] == name])

    @_route("GET", r"/v1/health/node/(.+)")
    def r_health_node(self, node: str) -> Reply:
        self.authorize("node", "read", node)
        s = self.state
        return self.read(lambda: s.idx_node(node), lambda: [c for c in s.all_checks() if c["Node"] == node])

    # ------------------------------------------------------------------ agent
    @_route("GET", r"/v1/agent/self")
    def r_agent_self(self) -> Reply:
        self.authorize("agent", "read", self.state.node)
        s = self.state
        with s.cond:
            node = s.nodes.get(s.node) or {"ID": "", "Address": s.node_address}
        config = {"Datacenter": s.datacenter, "PrimaryDatacenter": s.datacenter, "NodeName": s.node,
                  "NodeID": node["ID"], "Server": True, "Revision": "double", "Version": VERSION,
                  "BuildDate": "2024-01-01T00:00:00Z"}
        member = {"Name": s.node, "Addr": node["Address"], "Port": 8301,
                  "Tags": {"dc": s.datacenter, "role": "consul", "id": node["ID"], "build": VERSION},
                  "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                  "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}
        debug = {"Datacenter": s.datacenter, "NodeName": s.node, "NodeID": node["ID"],
                 "ACLsEnabled": self.acl.enabled, "ConnectEnabled": True, "ServerMode": True,
                 "ConnectSidecarMinPort": 21000, "ConnectSidecarMaxPort": 21255}
        return Reply(200, {"Config": config, "DebugConfig": debug, "Coord": None, "Member": member,
                           "Stats": {}, "Meta": dict(node.get("Meta") or {}),
                           "xDS": {"SupportedProxies": {"envoy": ["1.40.0"]}, "Port": 8502}})

    @_route("GET", r"/v1/agent/members")
    def r_agent_members(self) -> Reply:
        self.authorize("node", "read")
        return Reply(200, [self.r_agent_self().body["Member"]])

    @_route("GET", r"/v1/agent/services")
    def r_agent_services(self) -> Reply:
        self.authorize("service", "read")
        s = self.state
        with s.cond:
            out = {sid: s.service_json(s.node, s.services[(s.node, sid)])
                   for sid in sorted(s.agent_services) if (s.node, sid) in s.services}
        for svc in out.values():
            svc.pop("CreateIndex", None)
            svc.pop("ModifyIndex", None)
        return Reply(200, out)

    @_route("GET", r"/v1/agent/service/(.+)")
    def r_agent_service(self, sid: str) -> Reply:
        self.authorize("service", "read", sid)
        services = self.r_agent_services().body
        if sid not in services:
            raise DoubleError(404, f"unknown service ID: {sid}")
        return Reply(200, services[sid])

    @_route("GET", r"/v1/agent/checks")
    def r_agent_checks(self) -> Reply:
        self.authorize("node", "read")
        s = self.state
        with s.cond:
            out = {cid: {k: v for k, v in s.checks[(s.node, cid)].items() if k not in ("CreateIndex", "ModifyIndex")}
                   for cid in sorted(s.agent_checks) if (s.node, cid) in s.checks}
        return Reply(200, out)

    @_route("PUT", r"/v1/agent/service/register")
    def r_agent_register(self) -> Reply:
        body = self.req.json()
        self.authorize("service", "write", (body or {}).get("Name", "") if isinstance(body, dict) else "")
        replace = (self.req.arg("replace-existing-checks") or "").lower() in ("1", "true")
        self.state.agent_register(body, replace_existing_checks=replace)
        return Reply(200, b"", raw=True)

    @_route("PUT", r"/v1/agent/service/deregister/(.+)")
    def r_agent_deregister(self, sid: str) -> Reply:
        self.authorize("service", "write", sid)
        self.state.agent_deregister(sid)
        return Reply(200, b"", raw=True)

    @_route("PUT", r"/v1/agent/check/(pass|warn|fail)/(.+)")
    def r_agent_check_ttl(self, verb: str, cid: str) -> Reply:
        self.authorize("node", "write", self.state.node)
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
        self.state.agent_check_update(cid, status, self.req.arg("note") or "")
        return Reply(200, b"", raw=True)

    @_route("PUT", r"/v1/agent/check/update/(.+)")
    def r_agent_check_update(self, cid: str) -> Reply:
        self.authorize("node", "write", self.state.node)
        body = self.req.json() or {}
        if not isinstance(body, dict):
            raise DoubleError(400, "Request decode failed: body must be a JSON object")
        self.state.agent_check_update(cid, body.get("Status") or "", body.get("Output") or "")
        return Reply(200, b"", raw=True)

    # ------------------------------------------------------------------ KV
    @_route("GET", r"/v1/kv/(.*)")
    def r_kv_get(self, key: str) -> Reply:
        self.authorize("key", "read", key)
        s = self.state
        if self.req.flag("keys"):
            sep = self.req.arg("separator") or ""

            def render_keys() -> list | None:
                keys: list[str] = []
                for entry in s.kv_list(key):
                    k = entry["Key"]
                    if sep and sep in k[len(key):]:
                        k = k[: len(key) + k[len(key):].index(sep) + len(sep)]
                    if k not in keys:
                        keys.append(k)
                return keys or None

            return self.read(lambda: s.idx_kv(key, True), render_keys, not_found_if_none=True)
        if self.req.flag("recurse"):
            return self.read(lambda: s.idx_kv(key, True),
                             lambda: [s.kv_json(e) for e in s.kv_list(key)] or None, not_found_if_none=True)
        index, entry = self.blocking(lambda: s.idx_kv(key, False), lambda: s.kv.get(key))
        if entry is None:
            return Reply(404, b"", index=index, raw=True)
        if self.req.flag("raw"):
            return Reply(200, entry["Value"] or b"", index=index, raw=True)
        return Reply(200, [s.kv_json(entry)], index=index)

    @_route("PUT", r"/v1/kv/(.*)")
    def r_kv_put(self, key: str) -> Reply:
        self.authorize("key", "write", key)
        try:
            cas = int(self.req.arg("cas")) if self.req.arg("cas") is not None else None
            flags = int(self.req.arg("flags") or 0)
        except ValueError as exc:
            raise DoubleError(400, f"Invalid query parameter: {exc}") from exc
        acquire, release = self.req.arg("acquire"), self.req.arg("release")
        if acquire is not None or release is not None:  # locks: see _sessions
            return Reply(200, self.state.kv_lock(key, self.req.body, flags, cas, acquire=acquire, release=release))
        return Reply(200, self.state.kv_put(key, self.req.body, flags, cas))

    @_route("DELETE", r"/v1/kv/(.*)")
    def r_kv_delete(self, key: str) -> Reply:
        self.authorize("key", "write", key)
        try:
            cas = int(self.req.arg("cas")) if self.req.arg("cas") is not None else None
        except ValueError as exc:
            raise DoubleError(400, f"Invalid cas index: {exc}") from exc
        return Reply(200, self.state.kv_delete(key, self.req.flag("recurse"), cas))

    @_route("PUT", r"/v1/txn")
    def r_txn(self) -> Reply:
        if len(self.req.body) > MAX_TXN_BODY:  # Consul's limits.txn_max_req_len (default 512 KB)
            raise DoubleError(413, f"Request body({len(self.req.body)} bytes) too large, max size: {MAX_TXN_BODY} bytes. "
                                   "See https://developer.hashicorp.com/consul/docs/agent/config/config-files#txn_max_req_len.")
        ops = self.req.json()
        ops = normalize(ops) if isinstance(ops, list) else ops
        writes = {"set", "cas", "delete", "delete-cas", "delete-tree", "lock", "unlock"}
        is_write = not isinstance(ops, list) or any(
            not isinstance(op, dict) or str((op.get("KV") or {}).get("Verb", "")).lower() in writes or "KV" not in op
            for op in ops)
        first_key = ""
        if isinstance(ops, list) and ops and isinstance(ops[0], dict):
            first_key = (ops[0].get("KV") or {}).get("Key", "")
        self.authorize("key", "write" if is_write else "read", first_key)
        status, body = self.state.txn(ops)
        reply = Reply(status, body)
        if not is_write:
            reply.headers = {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
        return reply

    # ------------------------------------------------------------------ status / acl
    @_route("GET", r"/v1/status/leader")
    def r_status_leader(self) -> Reply:
        return Reply(200, "127.0.0.1:8300")

    @_route("GET", r"/v1/status/peers")
    def r_status_peers(self) -> Reply:
        return Reply(200, ["127.0.0.1:8300"])

    @_route("GET", r"/v1/acl/token/self")
    def r_acl_token_self(self) -> Reply:
        if not self.acl.enabled:
            raise DoubleError(401, "ACL support disabled")
        token = self._token()
        if token not in (self.acl.management, self.acl.read_only) or not token:
            raise DoubleError(403, "ACL not found")
        management = token == self.acl.management
        return Reply(200, {
            "AccessorID": self.acl.accessor(token), "SecretID": token,
            "Description": "consul double management token" if management else "consul double read-only token",
            "Policies": [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}] if management
            else [{"ID": str(uuid.uuid5(uuid.NAMESPACE_OID, "read-only")), "Name": "read-only"}],
            "Local": False, "CreateIndex": 1, "ModifyIndex": 1,
        })
