"""Run a real Envoy on one outbound listener meshcore built, without a control plane or certificates.

The listener (its HttpConnectionManager and HTTP filters) and its route configuration are exactly what
``build_proxy`` produced; only the delivery changes: static resources instead of ADS (the route
configuration goes inline where the listener named it over RDS), the listener binds a free loopback port,
and every cluster the route names becomes a plain static cluster to one local test server (the mTLS to
the destination's Envoy is the e2e tests' business).
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from google.protobuf import json_format

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshcore.xds.generate import LISTENER, ROUTE

from ..policies._envoy import EnvoyProcess


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class CountingServer:
    """``with CountingServer() as app:`` an HTTP/1.1 server on 127.0.0.1 answering 200 ``ok``; ``app.hits``."""

    def __init__(self) -> None:
        outer = self
        self.hits = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                with outer._lock:
                    outer.hits += 1
                # One write: status, headers and body in one segment (no Nagle/delayed-ACK stall per request).
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def __enter__(self) -> "CountingServer":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _static_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def outbound_bootstrap(built: dict, listener_name: str, listen_port: int, upstream_port: int,
                       admin_port: int) -> dict:
    """A static bootstrap serving the built outbound listener ``listener_name`` on ``127.0.0.1:listen_port``."""
    routes = {r.name: r for r in built[ROUTE]}
    original = next(l for l in built[LISTENER] if l.name == listener_name)
    listener = type(original)()
    listener.CopyFrom(original)
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = listen_port
    clusters: set[str] = set()
    for chain in listener.filter_chains:
        for f in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if not f.typed_config.Unpack(hcm):
                continue
            route = routes[hcm.rds.route_config_name]
            hcm.route_config.CopyFrom(route)  # replaces rds (a oneof)
            f.typed_config.Pack(hcm)
            for vhost in route.virtual_hosts:
                for r in vhost.routes:
                    clusters.update([r.route.cluster] if r.route.cluster else
                                    [w.name for w in r.route.weighted_clusters.clusters])
    return {
        "node": {"id": "fault-test", "cluster": "fault-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [json_format.MessageToDict(listener)],
                             "clusters": [_static_cluster(n, upstream_port) for n in sorted(clusters)]},
    }


class OutboundEnvoy(EnvoyProcess):
    """``with OutboundEnvoy(built, "outbound:ratings:9093", upstream_port, tmp) as envoy:`` -> ``envoy.url``."""

    def __init__(self, built: dict, listener_name: str, upstream_port: int, workdir: Path):
        admin_port, listen_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{listen_port}"
        self.port = listen_port
        super().__init__(outbound_bootstrap(built, listener_name, listen_port, upstream_port, admin_port),
                         f"127.0.0.1:{admin_port}", workdir, ready_timeout=20)

    def stats(self, contains: str) -> dict[str, int]:
        """Counters and gauges whose name contains ``contains`` (unused ones included: they prove the filter exists)."""
        query = urllib.request.quote(contains)
        with urllib.request.urlopen(f"http://{self.admin}/stats?format=json&filter={query}", timeout=5) as resp:
            return {s["name"]: s["value"] for s in json.loads(resp.read())["stats"] if "value" in s}

    def http_filters(self) -> list[str]:
        """The HTTP filter names of the running listener, from Envoy's own config dump."""
        with urllib.request.urlopen(f"http://{self.admin}/config_dump?resource=static_listeners",
                                    timeout=5) as resp:
            dump = json.loads(resp.read())
        listener = dump["configs"][0]["listener"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        return [f["name"] for f in hcm["http_filters"]]
