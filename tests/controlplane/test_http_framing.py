"""HTTP/1.1 framing of the control plane's JSON server (httptools): keep-alive, pipelining, HTTP/1.0,
100 Continue, malformed requests. The refusal paths and limits are in test_http_limits.py."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from meshcore.controlplane._http import JsonServer, Router

DEADLINE = 30.0


@pytest.fixture(scope="module")
def server():
    router = Router(pretty=False)
    router.add("GET", "/ping", lambda req: {"ok": True, "query": req.query})
    router.add("POST", "/echo", lambda req: {"length": len(req.body()), "x": req.headers.get("X-Thing")})
    srv = JsonServer(router, "127.0.0.1:0", name="framing-test").start()
    try:
        yield srv
    finally:
        srv.stop()


def _connect(server) -> socket.socket:
    host, port = server.address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=DEADLINE)
    return sock


def _responses(sock: Any, count: int) -> list[tuple[int, dict[str, str], dict]]:
    """``count`` responses read off ``sock`` (Content-Length framed)."""
    buf = b""
    out: list[tuple[int, dict[str, str], dict]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("iso-8859-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status == 100:
            continue
        length = int(headers["content-length"])
        while len(buf) < length:
            chunk = sock.recv(65536)
            assert chunk
            buf += chunk
        body, buf = buf[:length], buf[length:]
        out.append((status, headers, json.loads(body)))
    return out


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_one_connection_serves_pipelined_requests_in_order(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /ping?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Thing: two\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        (s1, h1, b1), (s2, _, b2), (s3, _, b3) = _responses(sock, 3)
        assert (s1, b1) == (200, {"ok": True, "query": {"a": "1"}})
        assert (s2, b2) == (200, {"length": 3, "x": "two"})
        assert (s3, b3) == (200, {"ok": True, "query": {}})
        assert "connection" not in h1 and h1["server"] == "framing-test"
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ((status, headers, _),) = _responses(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert _closed(sock)


def test_http_1_0_closes_after_the_answer(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
        ((status, headers, body),) = _responses(sock, 1)
        assert status == 200 and body["ok"] and headers["connection"] == "close"
        assert _closed(sock)


def test_100_continue_is_sent_when_the_body_is_read(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"wxyz")
        ((status, _, body),) = _responses(sock, 1)
        assert status == 200 and body["length"] == 4


@pytest.mark.parametrize("request_bytes, status", [
    (b"NOT A REQUEST\r\n\r\n", 400),
    (b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
])
def test_malformed_or_unknown_requests_get_a_json_error(server, request_bytes, status):
    with _connect(server) as sock:
        sock.sendall(request_bytes)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk
            buf += chunk
        assert buf.startswith(f"HTTP/1.1 {status} ".encode())
        if status != 501:  # HEAD: no body
            ((got, _, body),) = _responses(_Replay(buf, sock), 1)
            assert got == status and body["error"]


class _Replay:
    """A socket whose first reads return ``data`` (already read), then the socket's."""

    def __init__(self, data: bytes, sock: socket.socket):
        self._data, self._sock = data, sock

    def recv(self, n: int) -> bytes:
        if self._data:
            data, self._data = self._data, b""
            return data
        return self._sock.recv(n)
