"""A small JSON-over-HTTP(S) server shared by the control plane's APIs: HTTP/1.1 parsing by httptools (llhttp), a thread
per kept-alive connection (an agent's one TLS connection serves all its calls), TLS by the standard library.

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

import json
import logging
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import httptools

from ..errors import (
    BadRequest,
    BodyCut,
    HttpError,  # re-exported: handlers that still name a status
    LengthRequired,
    MeshError,
    MethodNotAllowed,
    MethodNotImplemented,
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


_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode  # json.loads(..., parse_constant=), made once


def parse_json(raw: bytes, what: str = "request body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``raw`` as JSON, nested at most ``max_depth`` levels; :class:`BadRequest` saying what is wrong."""
    try:
        text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads
        value = _decode(text)
    except RecursionError as exc:
        raise BadRequest(f"{what} nests deeper than {max_depth} levels") from exc
    except ValueError as exc:  # also UnicodeDecodeError, and integers of over 4,300 digits
        raise BadRequest(f"{what} is not JSON: {exc}") from exc
    if isinstance(value, (dict, list)) and deeper_than(value, max_depth):
        raise BadRequest(f"{what} nests deeper than {max_depth} levels")
    return value


class Request:
    def __init__(self, handler: "_Connection", params: dict[str, str], length: int = 0, path: str | None = None,
                 query: str | None = None):
        """``handler``: the connection (``command``, ``path``, ``headers``, ``connection``, ``read_body``);
        ``path`` and ``query``: its target already split (by the router)."""
        self.handler = handler
        self.method = handler.command
        if path is None or query is None:
            parts = urlsplit(handler.path)
            path, query = parts.path, parts.query
        self.path = path
        self.query = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()} if query else {}
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
            data = self.handler.read_body(self.length)
            if len(data) != self.length:
                raise BadRequest(f"the body ended after {len(data)} of {self.length} bytes (Content-Length)")
            self._body = data
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
        self.handler.peer_sans = uris
        return list(uris)

    def peer_certificate_der(self) -> bytes | None:
        """The client's verified certificate (DER), None without TLS or a certificate; read once per
        connection, as :meth:`peer_uri_sans`."""
        handler = self.handler
        cached = getattr(handler, "peer_der", False)
        if cached is None or isinstance(cached, bytes):
            return cached
        conn = handler.connection
        der = (conn.getpeercert(binary_form=True) if isinstance(conn, ssl.SSLSocket) else None) or None
        handler.peer_der = der
        return der


class Response:
    def __init__(self, body: Any = None, status: int = 200, content_type: str = "application/json",
                 headers: dict[str, str] | None = None):
        """``body``: a JSON value (encoded when sent), or for ``application/json`` :class:`EncodedJson` (sent
        as it is: an answer the handler encoded itself)."""
        self.body, self.status, self.content_type, self.headers = body, status, content_type, headers or {}


class EncodedJson(bytes):
    """A JSON document already encoded (UTF-8, ending in a newline), answered byte for byte."""


Handler = Callable[[Request], Any]


class Router:
    def __init__(self, pretty: bool = True):
        """``pretty``: JSON answers indented for people (the operator API); False writes them compact, with
        the C encoder (the agent API: programs, many calls)."""
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        # (method, path) of a route without parameters -> its handler, when no route added before it answers
        # that call: the same choice as the scan in dispatch, without it
        self._exact: dict[tuple[str, str], Handler] = {}
        self.pretty = pretty

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        if "{" not in pattern and not any(m == method and r.match(pattern) for m, r, _ in self._routes):
            self._exact[(method, pattern)] = handler
        self._routes.append((method, regex, handler))

    def dispatch(self, handler: "_Connection", length: int = 0) -> Response:
        parts = urlsplit(handler.path)
        path = parts.path
        fn = self._exact.get((handler.command, path))
        if fn is not None:
            result = fn(Request(handler, {}, length, path, parts.query))
            return result if isinstance(result, Response) else Response(encode(result))  # contracts -> JSON
        allowed = []
        for method, regex, fn in self._routes:
            m = regex.match(path)
            if not m:
                continue
            if method != handler.command:
                allowed.append(method)
                continue
            result = fn(Request(handler, m.groupdict(), length, path, parts.query))
            return result if isinstance(result, Response) else Response(encode(result))  # contracts -> JSON
        if allowed:
            raise MethodNotAllowed(f"{handler.command} not allowed on {path}; use {', '.join(sorted(set(allowed)))}")
        raise NotFound(f"no such endpoint: {path}")


class _Headers:
    """A request's headers as parsed (names lowercased), looked up case-insensitively: ``get``
    gives the first value, ``get_all`` every one or None (as ``email.message.Message`` did)."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]):
        self._items = items

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        for k, v in self._items:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str] | None:
        key = name.lower()
        return [v for k, v in self._items if k == key] or None

    def __getitem__(self, name: str) -> str | None:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


class _Message:
    """One request as the parser delivers it (headers first; the body as it arrives)."""

    __slots__ = ("url", "headers", "method", "keep_alive", "body", "complete", "expect_continue")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.method = ""
        self.keep_alive = True
        self.body: list[bytes] = []
        self.complete = False
        self.expect_continue = False


class _Connection(socketserver.BaseRequestHandler):
    """One client connection: HTTP/1.1 framing by httptools (llhttp), kept alive across requests, with the
    time and size limits of the module docstring. The socket is read only while the request at hand needs
    more (its headers; its body once a handler asks for it), so a body is never read past its limit.
    Exposes to :class:`Request` what handlers use: ``command``, ``path``, ``headers``, ``connection`` (the
    socket: the peer certificate) and ``read_body``."""

    router: Router
    server_name: str

    def setup(self) -> None:
        self.connection: socket.socket = self.request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one write per answer anyway
        self._parser = httptools.HttpRequestParser(self)
        self._parse_error: httptools.HttpParserError | None = None
        self._building: _Message | None = None  # the message the parser is filling in
        self._ready: deque[_Message] = deque()  # messages whose headers are in, oldest first
        self._current = _Message()
        self._timeout: float | None = None
        self.peer_sans: tuple[str, ...] | None = None  # Request.peer_uri_sans, once per connection
        self.peer_der: bytes | None | bool = False  # Request.peer_certificate_der (False: not read yet)
        self.command = self.path = ""
        self.headers = _Headers([])
        self._unread = 0  # body bytes the client announced and nobody read
        self._body_deadline = 0.0

    # --- parser callbacks (httptools) ---------------------------------------------------------
    def on_message_begin(self) -> None:
        self._building = _Message()

    def on_url(self, url: bytes) -> None:
        if self._building is not None:
            self._building.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._building is not None:
            self._building.headers.append((name.decode("iso-8859-1").lower(), value.decode("iso-8859-1")))

    def on_headers_complete(self) -> None:
        msg = self._building
        if msg is not None:
            msg.method = self._parser.get_method().decode("ascii", "replace")
            msg.keep_alive = self._parser.should_keep_alive()
            msg.expect_continue = (self._parser.get_http_version() == "1.1" and any(
                k == "expect" and v.strip().lower() == "100-continue" for k, v in msg.headers))
            self._ready.append(msg)

    def on_body(self, body: bytes) -> None:
        if self._building is not None:
            self._building.body.append(body)

    def on_message_complete(self) -> None:
        if self._building is not None:
            self._building.complete = True
            self._building = None

    # --- IO -----------------------------------------------------------------------------------
    def _settimeout(self, timeout: float) -> None:
        if timeout != self._timeout:
            self.connection.settimeout(timeout)
            self._timeout = timeout

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:  # the framing of a request: answered when it is reached
            self._parse_error = exc

    def _next_message(self) -> _Message | None:
        """The next request whose headers are in (reading as needed: :data:`IDLE_TIMEOUT` until its first
        byte, then :data:`HEADER_TIMEOUT` and at most :data:`MAX_HEADER_BYTES`); None: close the connection
        (after answering a malformed request)."""
        deadline: float | None = None
        header_bytes = 0
        while not self._ready:
            if self._parse_error is not None:
                self._refuse(_framing_error(self._parse_error))
                return None
            if deadline is None:
                self._settimeout(IDLE_TIMEOUT)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the client sent its request headers too slowly")
                self._settimeout(left)
            data = self.connection.recv(_READ_BUFFER)
            if not data:
                return None
            if deadline is None:  # a request starts: its headers must all be in soon
                deadline = time.monotonic() + HEADER_TIMEOUT
            header_bytes += len(data)
            # a read may carry the start of the body too: the budget allows one buffer of it
            if header_bytes > MAX_HEADER_BYTES + _READ_BUFFER:
                log.info("closed the connection from %s: request line and headers over %d bytes",
                         self.client_address[0], MAX_HEADER_BYTES)
                return None
            self._feed(data)
        return self._ready.popleft()

    def handle(self) -> None:
        try:
            while self._one_request():
                pass
        except OSError as exc:  # timeouts too: a slow (or silent) client is disconnected
            log.debug("connection from %s ended: %s", self.client_address[0], exc)

    def _one_request(self) -> bool:
        """Serve one request; True if the connection is kept for another."""
        self._unread = 0
        msg = self._next_message()
        if msg is None:
            return False
        self._current = msg
        self.command = msg.method
        self.path = msg.url.decode("iso-8859-1")
        self.headers = _Headers(msg.headers)
        self._body_deadline = time.monotonic() + BODY_TIMEOUT
        if self.command not in _METHODS:
            self._refuse(MethodNotImplemented(f"unsupported method {self.command!r}"))
            return False
        try:
            length = body_length(self.command, self.headers)
        except MeshError as exc:  # framing we do not accept: answer and close, never read the body
            self._refuse(exc)
            return False
        self._unread = length  # until a handler reads it
        keep = self._send(self._dispatch(length), close=not msg.keep_alive)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s", self.client_address[0], self.command, self.path)
        if self._unread:  # a body nobody read: this connection ends here (the answer said so)
            if not msg.complete:
                self._drain(self._unread)
            return False
        return keep and msg.complete

    def _dispatch(self, length: int) -> Response:
        try:
            return self.router.dispatch(self, length)
        except BodyCut as exc:  # the rest of the body is not coming: drain what may still arrive, answer 400
            self._unread = _DRAIN_BYTES
            return Response(error_body(exc), status=http_status(exc))
        except MeshError as exc:  # the one error map: errors.HTTP_STATUS
            status = http_status(exc)
            if status >= 500:
                log.warning("%s %s answered %d: %s", self.command, self.path, status, exc)
            return Response(error_body(exc), status=status)
        except Exception as exc:  # a bug: answer 500 and log it, do not kill the server
            request_id = uuid.uuid4().hex[:12]  # ties the answer to the log line with the traceback
            path = urlsplit(self.path).path
            log.exception("request_id=%s %s %s failed unexpectedly (a meshcore bug, please report it): %s: %s",
                          request_id, self.command, path, type(exc).__name__, exc)
            return Response({"error": f"the control plane failed to serve {self.command} {path} "
                                      f"(a bug, not your request's fault); its log has the details and traceback "
                                      f"under request_id={request_id}", "request_id": request_id},
                            status=500, headers={"X-Request-Id": request_id})

    def read_body(self, length: int) -> bytes:
        """The request's body (``length`` bytes, checked already), within :data:`BODY_TIMEOUT`; a client
        waiting for ``100 Continue`` gets it now (so a body refused unread is never asked for)."""
        msg = self._current
        if msg.expect_continue and not msg.body and not msg.complete:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not msg.complete:
            got = sum(map(len, msg.body))
            if self._parse_error is not None:
                raise BodyCut(f"the body is malformed after {got} of {length} bytes: {self._parse_error}")
            left = self._body_deadline - time.monotonic()
            if left <= 0:
                raise BodyCut(f"the body did not arrive within {BODY_TIMEOUT:g} s ({got} of {length} bytes)")
            self._settimeout(left)
            try:
                data = self.connection.recv(_READ_BUFFER)
            except TimeoutError as exc:
                raise BodyCut(f"the body did not arrive within {BODY_TIMEOUT:g} s ({got} of {length} "
                               f"bytes)") from exc
            if not data:
                raise BodyCut(f"the body ended after {got} of {length} bytes (Content-Length)")
            self._feed(data)
        self._unread = 0
        return b"".join(msg.body)

    def _refuse(self, exc: MeshError) -> None:
        """Answer a request we will not read (its framing or size) and drain a bounded part of its body."""
        self._unread = _DRAIN_BYTES  # of a body of unknown length: drained (bounded) after the answer
        self._send(Response(error_body(exc), status=http_status(exc)))
        self._drain(_DRAIN_BYTES)

    def _write(self, data: bytes) -> None:
        self._settimeout(BODY_TIMEOUT)  # a client that does not read its answer has BODY_TIMEOUT per write
        self.connection.sendall(data)

    def _send(self, resp: Response, close: bool = False) -> bool:
        """Write the answer (headers and body in one write: one TLS record, one syscall); True if the
        connection may serve another request."""
        body = resp.body
        if isinstance(body, EncodedJson):
            payload = bytes(body)
        elif resp.content_type == "application/json":
            payload = ((json.dumps(body, indent=2, sort_keys=True) if self.router.pretty else
                        json.dumps(body, sort_keys=True, separators=(",", ":"))) + "\n").encode()
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = body or b""
        close = close or bool(self._unread)  # a body left unread: this connection ends here
        phrase = _PHRASES.get(resp.status, "")
        head = [f"HTTP/1.1 {resp.status} {phrase}\r\nServer: {self.server_name}\r\nDate: {_http_date()}\r\n"
                f"Content-Type: {resp.content_type}\r\nContent-Length: {len(payload)}\r\n"]
        for k, v in resp.headers.items():
            head.append(f"{_header_text(k)}: {_header_text(v)}\r\n")
        if close:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        try:
            self._write("".join(head).encode("iso-8859-1", "replace") + (payload if self.command != "HEAD" else b""))
        except OSError as exc:
            log.info("connection from %s ended: %s", self.client_address[0], exc)
            return False
        return not close

    def _drain(self, limit: int) -> None:
        """Drop (a bounded part of) a body nobody read, so the client reads the answer rather than a reset."""
        left, deadline = limit, time.monotonic() + _DRAIN_SECONDS
        try:
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._settimeout(remaining)
                chunk = self.connection.recv(min(left, _READ_BUFFER))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:  # includes timeouts: the connection closes either way
            pass
        self._unread = 0


def _header_text(value: str) -> str:
    """A header name or value as it may go on the wire: no line breaks (no response splitting)."""
    return value.replace("\r", " ").replace("\n", " ") if ("\r" in value or "\n" in value) else value


def _framing_error(exc: httptools.HttpParserError) -> MeshError:
    """llhttp's refusal of a request's framing, in this API's words (and status)."""
    text = str(exc)
    if "Transfer-Encoding" in text and "Content-Length" in text:
        return BadRequest("a request with both Transfer-Encoding and Content-Length is refused")
    if "Content-Length" in text:
        return BadRequest(f"Content-Length must be a non-negative integer, one value ({text})")
    if "Transfer-Encoding" in text:
        return LengthRequired(f"{text}; send the body with a Content-Length (at most {MAX_BODY} bytes)")
    return BadRequest(f"malformed HTTP request: {text}")


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header's value (formatted once per second)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


class _Server(socketserver.ThreadingTCPServer):
    """A thread per connection (kept alive: an agent's connection serves all its calls), TLS handshakes
    in the connection's thread, never in ``accept()``."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    tls: ssl.SSLContext | None = None

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.tls is not None:
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
        handler = type("_Handler", (_Connection,), {"router": router, "server_name": name})
        self._server = _Server((host.strip("[]"), int(port)), handler)
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


__all__ = ["EncodedJson", "HttpError", "Request", "Response", "Router", "JsonServer", "HTTPStatus", "free_port", "body_length",
           "parse_json", "MAX_BODY", "MAX_UNAUTHENTICATED_BODY", "MAX_JSON_DEPTH"]
