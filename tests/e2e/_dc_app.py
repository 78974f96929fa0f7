#!/usr/bin/env python3
"""An echo service for the multi-datacenter e2e (stdlib only), started by LocalMesh like the bookinfo app.

It takes the bookinfo app's arguments (``--service --version --instance --listen [--upstream ...]``) so
``MeshLayout(app_script=<this file>)`` runs it for every instance. Every GET answers 200 with JSON naming the
instance that answered and the ``x-forwarded-client-cert`` its sidecar set (who called, by SPIFFE ID).
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    p = argparse.ArgumentParser()
    for flag in ("--service", "--version", "--instance", "--listen"):
        p.add_argument(flag, required=True)
    p.add_argument("--upstream", action="append", default=[])
    args = p.parse_args()
    host, _, port = args.listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            body = json.dumps({"service": args.service, "instance": args.instance, "path": self.path,
                               "xfcc": self.headers.get("x-forwarded-client-cert", "")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:  # noqa: A002 - stdlib signature
            pass

    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
