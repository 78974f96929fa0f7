#!/usr/bin/env python3
"""A controllable upstream for the resilience tests (stdlib only), started by LocalMesh like the bookinfo app.

It takes the bookinfo app's arguments (``--service --version --instance --listen [--upstream ...]``) so
``MeshLayout(app_script=<this file>)`` runs it for every instance. Behaviour per request, from the query:

* ``key=K&fail=N``: the first N requests carrying key K answer ``status`` (default 503), later ones 200;
* ``sleep=S``: wait S seconds before answering;
* ``status=C`` without ``fail``: always answer C.

An instance started with ``--version broken`` answers 503 to everything (but ``/_stats``). ``GET /_stats``
(called directly, not through the mesh) returns how many requests it saw in total and per key, so a test
can count the attempts that really reached the upstream.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_seen: Counter = Counter()
_total = [0]


def _handler(service: str, version: str, instance: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _answer(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if url.path == "/_stats":
                with _lock:
                    self._reply(200, {"instance": instance, "total": _total[0], "keys": dict(_seen)})
                return
            key = q.get("key", "")
            with _lock:
                _total[0] += 1
                _seen[key] += 1
                attempt = _seen[key]
            if q.get("sleep"):
                time.sleep(float(q["sleep"]))
            status = 200
            if version == "broken":
                status = 503
            elif "fail" in q:
                status = int(q.get("status", 503)) if attempt <= int(q["fail"]) else 200
            elif "status" in q:
                status = int(q["status"])
            self._reply(status, {"service": service, "version": version, "instance": instance,
                                 "key": key, "attempt": attempt, "status": status,
                                 "xfcc": self.headers.get("x-forwarded-client-cert")})

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, *args) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--service", required=True)
    p.add_argument("--version", default="v1")
    p.add_argument("--instance", default="")
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--upstream", action="append", default=[], help="accepted and ignored")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = _Server((host, int(port)), _handler(args.service, args.version, args.instance or args.service))
    server.serve_forever()


if __name__ == "__main__":
    main()
