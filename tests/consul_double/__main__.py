"""Run the Consul double as a standalone service (e.g. under systemd in a lab).

    python -m tests.consul_double --bind 127.0.0.1:8500 --node NAME [--acl-token T]

Runs until SIGTERM or SIGINT; prints one line with its URL once it listens.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .server import ConsulDouble


def _parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--bind wants HOST:PORT (e.g. 127.0.0.1:8500), got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.consul_double", description="Consul HTTP API test double")
    parser.add_argument("--bind", type=_parse_bind, default=("127.0.0.1", 8500), help="HOST:PORT to listen on")
    parser.add_argument("--node", default="node1", help="node name of the agent (default node1)")
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument("--node-address", default=None, help="address of the agent's node (default: the bind host)")
    parser.add_argument("--acl-token", default=None, help="management token; enables ACL enforcement")
    parser.add_argument("--read-token", default=None, help="an extra token allowed to read only")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--session-ttl-min", type=float, default=None,
                        help="shortest session TTL accepted, in seconds (Consul's session_ttl_min, default 10)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host, port = args.bind
    node_address = args.node_address or (host if host not in ("0.0.0.0", "::", "") else "127.0.0.1")
    double = ConsulDouble(node=args.node, datacenter=args.datacenter, acl_token=args.acl_token,
                          read_token=args.read_token, host=host, port=port, node_address=node_address,
                          verbose=args.verbose, session_ttl_min=args.session_ttl_min)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the line below: whoever reads it may stop us at once
        signal.signal(sig, lambda *_: done.set())
    try:
        url = double.start()
    except OSError as exc:
        print(f"consul double: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(f"consul double listening on {url} node={args.node} dc={args.datacenter}", flush=True)
    while not done.wait(1.0):
        pass
    double.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
