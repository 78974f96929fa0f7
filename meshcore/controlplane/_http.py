"""A small JSON-over-HTTP(S) server on the standard library, shared by the control plane's APIs.

Request limits (every listener: agent API, operator API over HTTP and HTTPS):

* A body must come with one valid ``Content-Length``: missing on POST/PUT/PATCH answers 411, a
  negative, non-numeric or repeated-and-different one 400; ``Transfer-Encoding`` (chunked) is not
  accepted (411, or 400 together with a ``Content-Length``: the request-smuggling shape).
* The limit is checked against ``Content-Length`` *before* a byte of the body is read: at most
  :data:`MAX_UNAUTHENTICATED_BODY` (64 KiB) until the handler has authenticated the caller
  (:meth:`Request.authenticated`: a node certificate, an operator token or certificate), then
  :data:`MAX_BODY` (4 MiB). Over it answers 413 at once and closes the connection.
* Time limits per connection: :data:`IDLE_TIMEOUT` between requests, :data:`HEADER_TIMEOUT` from a
  request's first byte to the end of its headers, :data:`BODY_TIMEOUT` to receive its body (and per
  write of the answer); a client that sends slower (slow loris) is disconnected. The request line and
  headers together are at most :data:`MAX_HEADER_BYTES` (the connection is closed).
* JSON bodies nest at most :data:`MAX_JSON_DEPTH` levels (400), and ``NaN``/``Infinity`` are refused.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ..errors import (
    BadRequest,
    HeadersTooLarge,
    HttpError,  # re-exported: handlers that still name a status
    LengthRequired,
    MeshError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_body,
    http_status,
)
from ..api._wire import deeper_than, encode

log = logging.getLogger("meshcore.controlplane.http")

MAX_BODY = 4 * 1024 * 1024  # an authenticated caller's body (an apply of many resources)
MAX_UNAUTHENTICATED_BODY = 64 * 1024  # before the caller is known (a join: a CSR and a token, ~1 KiB)
MAX_JSON_DEPTH = 64  # nesting of a JSON body (the API's contracts nest 4 deep)
IDLE_TIMEOUT = 75.0  # seconds a kept-alive connection may wait for its next request
HEADER_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its headers
BODY_TIMEOUT = 30.0  # seconds to receive a body once the headers are in
MAX_HEADER_BYTES = 64 * 1024  # request line and headers together
_READ_BUFFER = 64 * 1024
_DRAIN_BYTES = 256 * 1024  # read and dropped from a refused body so the client sees the answer, not a reset
_DRAIN_SECONDS = 1.0
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def body_length(method: str, headers: Any, limit: int = MAX_BODY) -> int:
    """The body's length from ``headers`` (0 for none), checked before a byte of it is read.

    Raises :class:`LengthRequired` (411: no length on a method with a body; ``Transfer-Encoding``),
    :class:`BadRequest` (a malformed or contradicting length) or :class:`PayloadTooLarge` (over ``limit``).
    """
    encodings = headers.get_all("Transfer-Encoding") or []
    lengths = headers.get_all("Content-Length") or []
    if encodings:
        if lengths:
            raise BadRequest("a request with both Transfer-Encoding and Content-Length is refused")
        raise LengthRequired(f"Transfer-Encoding {', '.join(encodings)!s} is not accepted; send the body with a "
                             f"Content-Length (at most {limit} bytes)")
    if not lengths:
        if method in _BODY_METHODS:
            raise LengthRequired(f"{method} needs a Content-Length header (a body of at most {limit} bytes)")
        return 0
    values = {v.strip() for value in lengths for v in value.split(",")}
    if len(values) != 1:
        raise BadRequest(f"conflicting Content-Length values: {', '.join(sorted(values))}")
    (text,) = values
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise BadRequest(f"Content-Length must be a non-negative integer, got {text[:40]!r}")
    length = int(text)
    if length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes",
                              {"limit": limit})
    return length


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes, what: str = "request body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``raw`` as JSON, nested at most ``max_depth`` levels; :class:`BadRequest` saying what is wrong."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise BadRequest(f"{what} nests deeper than {max_depth} levels") from exc
    except ValueError as exc:  # also UnicodeDecodeError, and integers of over 4,300 digits
        raise BadRequest(f"{what} is not JSON: {exc}") from exc
    if isinstance(value, (dict, list)) and deeper_than(value, max_depth):
        raise BadRequest(f"{what} nests deeper than {max_depth} levels")
    return value


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, params: dict[str, str], length: int = 0):
        self.handler = handler
        self.method = handler.command
        parts = urlsplit(handler.path)
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.params = params
        self.headers = handler.headers
        self.length = length  # Content-Length, checked against MAX_BODY already
        self.max_body = MAX_UNAUTHENTICATED_BODY  # until authenticated()
        self._body: bytes | None = None

    def authenticated(self) -> None:
        """The handler has authenticated the caller: its body may be up to :data:`MAX_BODY`."""
        self.max_body = MAX_BODY

    def body(self) -> bytes:
        """The body (read once, on first use), refused with 413 before reading when over the caller's limit."""
        if self._body is None:
            if self.length > self.max_body:
                why = "" if self.max_body == MAX_BODY else " for an unauthenticated caller"
                raise PayloadTooLarge(f"request body of {self.length} bytes is over the limit of {self.max_body} "
                                      f"bytes{why}", {"limit": self.max_body})
            data = self.handler.rfile.read(self.length) if self.length else b""
            if len(data) != self.length:
                raise BadRequest(f"the body ended after {len(data)} of {self.length} bytes (Content-Length)")
            self._body = data
            getattr(self.handler, "body_read", lambda: None)()
        return self._body

    def json(self) -> Any:
        """The body as JSON (``{}`` when empty), see :func:`parse_json`."""
        raw = self.body()
        return parse_json(raw) if raw else {}

    def peer_uri_sans(self) -> list[str]:
        """The URI SANs of the client's verified certificate (none without TLS or a certificate). Read once
        per connection: the certificate cannot change on it (renegotiation is off, see :class:`JsonServer`)."""
        cached = getattr(self.handler, "peer_sans", None)
        if cached is not None:
            return list(cached)
        conn = self.handler.connection
        uris: tuple[str, ...] = ()
        if isinstance(conn, ssl.SSLSocket):
            sans = (conn.getpeercert() or {}).get("subjectAltName", ())
            uris = tuple(entry[1] for entry in sans if isinstance(entry, tuple) and len(entry) == 2
                         and entry[0] == "URI" and isinstance(entry[1], str))
        self.handler.peer_sans = uris  # type: ignore[attr-defined]
        return list(uris)


class Response:
    def __init__(self, body: Any = None, status: int = 200, content_type: str = "application/json",
                 headers: dict[str, str] | None = None):
        self.body, self.status, self.content_type, self.headers = body, status, content_type, headers or {}


Handler = Callable[[Request], Any]


class Router:
    def __init__(self, pretty: bool = True):
        """``pretty``: JSON answers indented for people (the operator API); False writes them compact, with
        the C encoder (the agent API: programs, many calls)."""
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self.pretty = pretty

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append((method, regex, handler))

    def dispatch(self, handler: BaseHTTPRequestHandler, length: int = 0) -> Response:
        path = urlsplit(handler.path).path
        allowed = []
        for method, regex, fn in self._routes:
            m = regex.match(path)
            if not m:
                continue
            if method != handler.command:
                allowed.append(method)
                continue
            result = fn(Request(handler, m.groupdict(), length))
            return result if isinstance(result, Response) else Response(encode(result))  # contracts -> JSON
        if allowed:
            raise MethodNotAllowed(f"{handler.command} not allowed on {path}; use {', '.join(sorted(set(allowed)))}")
        raise NotFound(f"no such endpoint: {path}")


class _TimedReader(io.RawIOBase):
    """The connection's input with time limits: :data:`IDLE_TIMEOUT` while no request is under way,
    then the request's deadline (headers, then body) over all its reads, however slowly they trickle in;
    and a size limit on the request line and headers (:data:`MAX_HEADER_BYTES`)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.deadline: float | None = None  # None: between requests
        self._timeout: float | None = None
        self._header_bytes: int | None = None  # read since the request started, until its body is read

    def next_request(self) -> None:
        self.deadline, self._header_bytes = None, 0

    def body(self) -> None:
        """The headers are in: the body has :data:`BODY_TIMEOUT`, and no header budget."""
        self.deadline, self._header_bytes = time.monotonic() + BODY_TIMEOUT, None

    def writing(self) -> None:
        """An answer goes out: a client that does not read it has :data:`BODY_TIMEOUT` per write."""
        self._settimeout(BODY_TIMEOUT)

    def readable(self) -> bool:
        return True

    def _settimeout(self, timeout: float) -> None:
        if timeout != self._timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            self._settimeout(IDLE_TIMEOUT)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client sent its request too slowly")
            self._settimeout(left)
        n = self._sock.recv_into(buffer)
        if self.deadline is None and n:  # a request starts: its headers must all be in soon
            self.deadline = time.monotonic() + HEADER_TIMEOUT
        if self._header_bytes is not None:
            self._header_bytes += n
            # a read may carry the start of the body too: the budget allows one buffer of it
            if self._header_bytes > MAX_HEADER_BYTES + _READ_BUFFER:
                raise HeadersTooLarge(f"request line and headers over {MAX_HEADER_BYTES} bytes")
        return n


def _make_handler(router: Router, server_name: str):
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = server_name
        # Headers and body go out as two writes; with Nagle on, the body waits for the client's
        # delayed ACK of the headers (40 ms per answer on a kept-alive connection).
        disable_nagle_algorithm = True
        _unread = 0  # body bytes the client announced and nobody read

        def setup(self):
            super().setup()
            self.rfile.close()  # the plain makefile() reader: replaced by one with time limits
            self._reader = _TimedReader(self.connection)
            self.rfile = io.BufferedReader(self._reader, _READ_BUFFER)

        def handle_one_request(self):
            self._reader.next_request()
            try:
                super().handle_one_request()
            except HeadersTooLarge as exc:
                log.info("closed the connection from %s: %s", self.client_address[0], exc)
                self.close_connection = True
                return
            if self._unread:
                self._drain()

        def handle_expect_100(self):
            try:  # refuse what is over every limit before the client sends it
                body_length(self.command, self.headers)
            except MeshError as exc:
                self._unread = 0
                self.close_connection = True
                self._send(Response(error_body(exc), status=http_status(exc)))
                return False
            return super().handle_expect_100()

        def body_read(self):
            self._unread = 0

        def _drain(self):
            """Drop (a bounded part of) a body nobody read, so the client reads the answer rather than a reset."""
            self.close_connection = True
            left, deadline = min(self._unread, _DRAIN_BYTES), time.monotonic() + _DRAIN_SECONDS
            self._reader.body()
            self._reader.deadline = deadline
            try:
                while left > 0 and time.monotonic() < deadline:
                    chunk = self.rfile.read1(min(left, 64 * 1024))
                    if not chunk:
                        break
                    left -= len(chunk)
            except OSError:  # includes timeouts: the connection closes either way
                pass
            self._unread = 0

        def _run(self):
            self._reader.body()
            try:
                length = body_length(self.command, self.headers)
            except MeshError as exc:  # framing we do not accept: answer and close, never read the body
                self.close_connection = True
                self._unread = _DRAIN_BYTES  # of a body of unknown length: drained (bounded) after the answer
                self._send(Response(error_body(exc), status=http_status(exc)))
                return
            self._unread = length
            try:
                resp = router.dispatch(self, length)
            except MeshError as exc:  # the one error map: errors.HTTP_STATUS
                status = http_status(exc)
                if status >= 500:
                    log.warning("%s %s answered %d: %s", self.command, self.path, status, exc)
                resp = Response(error_body(exc), status=status)
            except Exception as exc:  # a bug: answer 500 and log it, do not kill the server
                request_id = uuid.uuid4().hex[:12]  # ties the answer to the log line with the traceback
                log.exception("request_id=%s %s %s failed unexpectedly (a meshcore bug, please report it): %s: %s",
                              request_id, self.command, urlsplit(self.path).path, type(exc).__name__, exc)
                resp = Response({"error": f"the control plane failed to serve {self.command} {urlsplit(self.path).path} "
                                          f"(a bug, not your request's fault); its log has the details and traceback "
                                          f"under request_id={request_id}", "request_id": request_id},
                                status=500, headers={"X-Request-Id": request_id})
            self._send(resp)

        def _send(self, resp: Response):
            body = resp.body
            if resp.content_type == "application/json":
                payload = ((json.dumps(body, indent=2, sort_keys=True) if router.pretty else
                            json.dumps(body, sort_keys=True, separators=(",", ":"))) + "\n").encode()
            elif isinstance(body, str):
                payload = body.encode()
            else:
                payload = body or b""
            self._reader.writing()
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            if self._unread or self.close_connection:  # a body left unread: this connection ends here
                self.close_connection = True
                self.send_header("Connection", "close")
            # end_headers() without its flush: headers and body leave in one write (one TLS record,
            # one syscall; and no wait for a delayed ACK between them)
            self._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]
            if self.command != "HEAD":
                self._headers_buffer.append(payload)  # type: ignore[attr-defined]
            self.flush_headers()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _run

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

    def handle_error(self, request, client_address):
        """A connection's error outside a handler's own error map: a client gone away is one line, not a
        traceback on stderr; anything else is logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.info("connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("unexpected error on a connection from %s", client_address[0])


def _no_renegotiation(tls: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """``tls`` refusing TLS 1.2 renegotiation: a connection keeps the client certificate of its handshake
    (and a client cannot make the server redo handshakes on one connection)."""
    if tls is not None:
        tls.options |= ssl.OP_NO_RENEGOTIATION
    return tls


class JsonServer:
    """Serve a Router on ``host:port`` (port 0 picks a free one), optionally with TLS."""

    def __init__(self, router: Router, bind: str, *, tls: ssl.SSLContext | None = None, name: str = "meshcore"):
        host, _, port = bind.rpartition(":")
        self._server = _Server((host.strip("[]"), int(port)), _make_handler(router, name))
        self._server.tls = _no_renegotiation(tls)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{name}-http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def set_tls(self, tls: ssl.SSLContext) -> None:
        """Serve new connections with this context (certificate rotation without a restart)."""
        self._server.tls = _no_renegotiation(tls)

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


__all__ = ["HttpError", "Request", "Response", "Router", "JsonServer", "HTTPStatus", "free_port", "body_length",
           "parse_json", "MAX_BODY", "MAX_UNAUTHENTICATED_BODY", "MAX_JSON_DEPTH"]
