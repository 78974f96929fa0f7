"""Request limits of the control plane's one HTTP layer (``_http.py``), over raw sockets.

A body is refused from its headers, before it is read: a missing, negative or malformed
Content-Length, chunked bodies, bodies over the caller's limit (64 KiB unauthenticated, 4 MiB once
authenticated). Each refusal is asserted to arrive while the client is still sending (the server
never buffers what it refuses); a client that trickles its headers is disconnected.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from meshcore.controlplane import _http
from meshcore.controlplane._http import MAX_BODY, MAX_UNAUTHENTICATED_BODY, JsonServer, Router

DEADLINE = 20.0  # seconds: generous, the machine is loaded


@pytest.fixture(scope="module")
def server():
    seen: list[int] = []

    def open_route(req):
        body = req.json()
        seen.append(len(req.body()))
        return {"got": body}

    def auth_route(req):
        if req.headers.get("Authorization") == "Bearer ok":
            req.authenticated()
        body = req.body()
        seen.append(len(body))
        return {"length": len(body)}

    def auth_json_route(req):
        req.authenticated()
        return {"got": req.json()}

    router = Router()
    router.add("POST", "/open", open_route)
    router.add("POST", "/auth-json", auth_json_route)
    router.add("POST", "/auth", auth_route)
    router.add("GET", "/ping", lambda req: {"ok": True})
    srv = JsonServer(router, "127.0.0.1:0", name="limits-test").start()
    srv.seen = seen  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()


def _connect(server) -> socket.socket:
    host, port = server.address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=DEADLINE)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from ``sock``: status, headers (lowercase names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response; got {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


class _Sender(threading.Thread):
    """Sends ``total`` bytes of body (``chunk`` at a time, a pause between) until told to stop."""

    def __init__(self, sock: socket.socket, total: int, chunk: bytes, pause: float = 0.01):
        super().__init__(daemon=True)
        self.sock, self.total, self.chunk, self.pause = sock, total, chunk, pause
        self.sent = 0
        self.stop = threading.Event()
        self.finished = False

    def run(self) -> None:
        try:
            while self.sent < self.total and not self.stop.is_set():
                self.sock.sendall(self.chunk)
                self.sent += len(self.chunk)
                time.sleep(self.pause)
            self.finished = self.sent >= self.total
        except OSError:
            pass  # the server closed: expected once it has answered


def _refused_while_sending(server, headers: str, total: int, chunk: bytes) -> tuple[int, dict, _Sender]:
    sock = _connect(server)
    try:
        sock.sendall(headers.encode())
        sender = _Sender(sock, total, chunk)
        sender.start()
        status, hdrs, body = _read_response(sock)
        sender.stop.set()
        sender.join(DEADLINE)
        return status, {**hdrs, "_body": json.loads(body)}, sender
    finally:
        sock.close()


def test_negative_content_length_is_refused_before_reading(server):
    status, headers, sender = _refused_while_sending(
        server, "POST /auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\nContent-Length: -1\r\n\r\n",
        12 * 1024 * 1024, b"x" * 16384)
    assert status == 400
    assert "Content-Length must be a non-negative integer" in headers["_body"]["error"]
    assert headers["connection"] == "close"
    assert not sender.finished  # answered while the 12 MiB were still being sent


@pytest.mark.parametrize("value", ["abc", "+5", "1e3", "12, 13", "0x10", "99999999999999999999999"])
def test_malformed_content_length_is_400(server, value):
    sock = _connect(server)
    with sock:
        sock.sendall(f"POST /open HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n{{}}".encode())
        status, headers, body = _read_response(sock)
    assert status in (400, 413), body
    assert json.loads(body)["error"]


def test_chunked_body_is_refused_before_reading(server):
    chunk = b"4000\r\n" + b"y" * 0x4000 + b"\r\n"
    status, headers, sender = _refused_while_sending(
        server, "POST /auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\nTransfer-Encoding: chunked\r\n\r\n",
        12 * 1024 * 1024, chunk)
    assert status == 411
    assert "Transfer-Encoding" in headers["_body"]["error"]
    assert not sender.finished


def test_chunked_with_content_length_is_400(server):
    sock = _connect(server)
    with sock:
        sock.sendall(b"POST /open HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"0\r\n\r\n")
        status, _, _ = _read_response(sock)
    assert status == 400


def test_missing_content_length_on_post_is_411(server):
    sock = _connect(server)
    with sock:
        sock.sendall(b"POST /open HTTP/1.1\r\nHost: x\r\n\r\n{}")
        status, headers, body = _read_response(sock)
    assert status == 411
    assert "Content-Length" in json.loads(body)["error"]


def test_over_the_limit_is_413_before_reading(server):
    status, headers, sender = _refused_while_sending(
        server, f"POST /auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\nContent-Length: {12 * 1024 * 1024}\r\n\r\n",
        12 * 1024 * 1024, b"z" * 16384)
    assert status == 413
    assert headers["_body"]["limit"] == MAX_BODY
    assert not sender.finished


def test_unauthenticated_callers_get_the_small_limit(server):
    size = MAX_UNAUTHENTICATED_BODY + 1
    before = list(server.seen)
    status, headers, sender = _refused_while_sending(
        server, f"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n", size, b"a" * 1024)
    assert status == 413
    assert headers["_body"]["limit"] == MAX_UNAUTHENTICATED_BODY
    assert "unauthenticated" in headers["_body"]["error"]
    assert server.seen == before  # the handler never got a body


def test_authenticated_callers_keep_the_large_limit(server):
    size = MAX_UNAUTHENTICATED_BODY * 4
    sock = _connect(server)
    with sock:
        sock.sendall(f"POST /auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\nContent-Length: {size}\r\n\r\n"
                     .encode() + b"b" * size)
        status, headers, body = _read_response(sock)
        assert status == 200
        assert json.loads(body) == {"length": size}
        assert headers.get("connection") != "close"
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection is still usable
        assert _read_response(sock)[0] == 200


def test_a_refused_body_does_not_poison_keep_alive(server):
    """After a refusal with an unread body the server closes: the next bytes are never read as a request."""
    sock = _connect(server)
    with sock:
        smuggled = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(f"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_UNAUTHENTICATED_BODY + 10}\r\n\r\n"
                     .encode() + smuggled)
        status, headers, _ = _read_response(sock)
        assert status == 413 and headers["connection"] == "close"
        assert b"HTTP/1.1" not in _read_to_end(sock)


def test_expect_continue_over_the_limit_is_refused_without_100(server):
    sock = _connect(server)
    with sock:
        sock.sendall(f"POST /auth HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
                     .encode())
        status, _, _ = _read_response(sock)
    assert status == 413


@pytest.mark.parametrize("body,needle", [
    ("[" * 200 + "]" * 200, "nests deeper than 64 levels"),
    ('{"a":' * 70 + "1" + "}" * 70, "nests deeper than 64 levels"),
    ("[" * 100000, "nests deeper"),
    ('{"x": NaN}', "not JSON"),
    ("\xff", "not JSON"),
])
def test_json_bodies_are_bounded(server, body, needle):
    data = body.encode("latin-1")
    sock = _connect(server)
    with sock:
        sock.sendall(f"POST /auth-json HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        status, _, raw = _read_response(sock)
    assert status == 400
    assert needle in json.loads(raw)["error"]


def test_slow_headers_are_cut_off(server, monkeypatch):
    """A slow-loris client trickling its headers loses the connection at the header deadline."""
    monkeypatch.setattr(_http, "HEADER_TIMEOUT", 1.0)
    sock = _connect(server)
    with sock:
        sock.sendall(b"POST /open HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < DEADLINE:
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed, "the server kept a trickling client for the whole test"
    assert elapsed < DEADLINE / 2
    # and the server still answers others
    sock = _connect(server)
    with sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock)[0] == 200


def test_huge_headers_are_cut_off(server):
    """40 headers of 60 KB each pass the standard library's checks (100 headers, 64 KiB a line): the
    server stops at 64 KiB of headers and closes instead of answering."""
    sock = _connect(server)
    with sock:
        headers = b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"".join(
            f"X-Pad-{i}: ".encode() + b"p" * 60000 + b"\r\n" for i in range(40)) + b"\r\n"
        sender = threading.Thread(target=lambda: _send_quietly(sock, headers), daemon=True)
        sender.start()
        answer = _read_to_end(sock)
        sender.join(DEADLINE)
    assert b"200 OK" not in answer


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    sock.settimeout(DEADLINE)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def test_a_client_gone_away_is_not_a_traceback(server, capfd):
    sock = _connect(server)
    sock.sendall(b"POST /auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\nContent-Length: 100\r\n\r\nabc")
    sock.close()
    sock = _connect(server)
    with sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock)[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_tls_listeners_refuse_renegotiation():
    """A connection keeps its handshake's client certificate (the agent API reads it once per connection)."""
    import ssl

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv = JsonServer(Router(), "127.0.0.1:0", tls=tls).start()
    try:
        assert tls.options & ssl.OP_NO_RENEGOTIATION
        other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        srv.set_tls(other)
        assert other.options & ssl.OP_NO_RENEGOTIATION
    finally:
        srv.stop()
