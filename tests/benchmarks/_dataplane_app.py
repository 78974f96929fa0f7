"""The data-plane benchmark's backend: HTTP/1.1 keep-alive, a fixed 1 KB body for every request.

An asyncio protocol, not http.server: the backend's own cost is in every path of the benchmark (direct,
minimal pair, meshcore pair) and should be small beside an Envoy's. Takes the bookinfo app's flags, so
the mesh launcher can start it as a node's app (``MeshLayout.app_script``); only ``--listen`` matters.

Run: python tests/benchmarks/_dataplane_app.py --listen 127.0.0.1:8080 [--size 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

HEAD_END = b"\r\n\r\n"


def response(size: int) -> bytes:
    body = b"x" * size
    head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len(body)}\r\n"
            "\r\n").encode()
    return head + body


class _Http(asyncio.Protocol):
    """Answers every complete request head in the buffer (pipelining works); bodies are not expected (GET)."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        assert self.transport is not None
        while True:
            end = self.buffer.find(HEAD_END)
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + len(HEAD_END):]
            self.transport.write(self.reply)
            if b"\r\nconnection: close" in head.lower():
                self.transport.close()
                return


async def serve(host: str, port: int, size: int) -> None:
    reply = response(size)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(reply), host, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--size", type=int, default=1024, help="response body bytes (default %(default)s)")
    # The bookinfo app's flags (the launcher passes them); unused here.
    for flag in ("--service", "--version", "--instance"):
        p.add_argument(flag, default="")
    p.add_argument("--upstream", action="append", default=[])
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host, int(port), args.size))


if __name__ == "__main__":
    main()
