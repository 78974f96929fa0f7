"""A small JSON-over-HTTP(S) server on the standard library, shared by the control plane's APIs."""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ..errors import BadRequest, MeshError, MethodNotAllowed, NotFound, PayloadTooLarge, error_body, http_status
from ..api._wire import encode
from ..errors import HttpError  # noqa: F401 - re-exported: handlers that still name a status

log = logging.getLogger("meshcore.controlplane.http")

MAX_BODY = 4 * 1024 * 1024


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, params: dict[str, str]):
        self.handler = handler
        self.method = handler.command
        parts = urlsplit(handler.path)
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.params = params
        self.headers = handler.headers
        self._body: bytes | None = None

    def body(self) -> bytes:
        if self._body is None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise PayloadTooLarge(f"request body over {MAX_BODY} bytes")
            self._body = self.handler.rfile.read(length) if length else b""
        return self._body

    def json(self) -> Any:
        try:
            return json.loads(self.body() or b"{}")
        except ValueError as exc:
            raise BadRequest(f"request body is not JSON: {exc}") from exc

    def peer_uri_sans(self) -> list[str]:
        conn = self.handler.connection
        if not isinstance(conn, ssl.SSLSocket):
            return []
        sans = (conn.getpeercert() or {}).get("subjectAltName", ())
        return [entry[1] for entry in sans if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "URI"
                and isinstance(entry[1], str)]


class Response:
    def __init__(self, body: Any = None, status: int = 200, content_type: str = "application/json",
                 headers: dict[str, str] | None = None):
        self.body, self.status, self.content_type, self.headers = body, status, content_type, headers or {}


Handler = Callable[[Request], Any]


class Router:
    def __init__(self):
        self._routes: list[tuple[str, re.Pattern, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append((method, regex, handler))

    def dispatch(self, handler: BaseHTTPRequestHandler) -> Response:
        path = urlsplit(handler.path).path
        allowed = []
        for method, regex, fn in self._routes:
            m = regex.match(path)
            if not m:
                continue
            if method != handler.command:
                allowed.append(method)
                continue
            result = fn(Request(handler, m.groupdict()))
            return result if isinstance(result, Response) else Response(encode(result))  # contracts -> JSON
        if allowed:
            raise MethodNotAllowed(f"{handler.command} not allowed on {path}; use {', '.join(sorted(set(allowed)))}")
        raise NotFound(f"no such endpoint: {path}")


def _make_handler(router: Router, server_name: str):
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = server_name
        # Headers and body go out as two writes; with Nagle on, the body waits for the client's
        # delayed ACK of the headers (40 ms per answer on a kept-alive connection).
        disable_nagle_algorithm = True

        def _run(self):
            try:
                resp = router.dispatch(self)
            except MeshError as exc:  # the one error map: errors.HTTP_STATUS
                status = http_status(exc)
                if status >= 500:
                    log.warning("%s %s answered %d: %s", self.command, self.path, status, exc)
                resp = Response(error_body(exc), status=status)
            except Exception as exc:  # a bug: answer 500 and log it, do not kill the server
                log.exception("internal error on %s %s", self.command, self.path)
                resp = Response({"error": f"internal error: {exc}"}, status=500)
            self._send(resp)

        def _send(self, resp: Response):
            body = resp.body
            if resp.content_type == "application/json":
                payload = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
            elif isinstance(body, str):
                payload = body.encode()
            else:
                payload = body or b""
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _run

        def log_message(self, fmt, *args):
            log.debug("%s %s", self.address_string(), fmt % args)

    return _Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.tls is not None:
            # The handshake happens in the request's own thread (finish_request), never in accept().
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(10)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake from %s failed: %s", client_address[0], exc)
                return
            request.settimeout(None)
        super().finish_request(request, client_address)


class JsonServer:
    """Serve a Router on ``host:port`` (port 0 picks a free one), optionally with TLS."""

    def __init__(self, router: Router, bind: str, *, tls: ssl.SSLContext | None = None, name: str = "meshcore"):
        host, _, port = bind.rpartition(":")
        self._server = _Server((host.strip("[]"), int(port)), _make_handler(router, name))
        self._server.tls = tls
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{name}-http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def set_tls(self, tls: ssl.SSLContext) -> None:
        """Serve new connections with this context (certificate rotation without a restart)."""
        self._server.tls = tls

    def start(self) -> "JsonServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


__all__ = ["HttpError", "Request", "Response", "Router", "JsonServer", "HTTPStatus", "free_port"]
