"""A TCP echo app as Istio's tcp-echo sample (stdlib only): each line a client sends comes back prefixed with the
instance's name (``v1 hello``), so a test sees which instance a connection reached."""

from __future__ import annotations

import socketserver
import threading


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(self.server.prefix + b" " + line)  # type: ignore[attr-defined]


class TcpEcho(socketserver.ThreadingTCPServer):
    """An echo server on ``(host, port)`` answering with ``prefix``; serves in a daemon thread until closed."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, prefix: str):
        super().__init__((host, port), _Echo)
        self.prefix = prefix.encode()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


__all__ = ["TcpEcho"]
