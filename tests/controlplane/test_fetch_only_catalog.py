"""Finding 3 (SSRF through proxy metadata): the control plane fetches only addresses it derived from the
catalog for a node, never one a proxy announced in its ADS node metadata, and never follows a redirect."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshcore import naming
from meshcore.agent.client import AgentClient
from meshcore.ca import generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.snapshot import ProxyInfo
from meshcore.xds._typeurls import CLUSTER

from ..policies._catalog import write_catalog

WAIT = 30.0

CATALOG_HOST = "127.0.0.2"  # n1's address in the catalog; the "attacker's" target listens on 127.0.0.1


class _Counting:
    """An HTTP server that counts requests; answers Prometheus text, or a redirect to ``redirect``."""

    def __init__(self, host: str, redirect: str = "") -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                if redirect:
                    self.send_response(302)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"# TYPE envoy_server_live gauge\nenvoy_server_live 1\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    base: Path = tmp_path_factory.mktemp("ssrf")
    write_catalog(base / "catalog", [{"name": "details"}], node="n1", address=CATALOG_HOST)
    cp = ControlPlane(Settings(state_dir=base / "state", catalog=f"files:{base / 'catalog'}",
                               xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0", http_bind="127.0.0.1:0",
                               collect_interval=3600.0), generate_kek_file(base / "kek"))
    cp.start()
    deadline = time.monotonic() + 30
    while cp.engine.catalog() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cp.engine.catalog() is not None
    yield cp
    cp.stop()


@pytest.fixture
def target():
    server = _Counting("127.0.0.1")
    yield server
    server.close()


def _announce(cp: ControlPlane, node: str, *, metrics: str = "", admin: str = "") -> None:
    cp.engine.proxy_connected(ProxyInfo(node=node, secrets_dir="/s", admin=admin, metrics=metrics))


def test_an_announced_address_that_is_not_the_catalogs_is_never_fetched(plane, target):
    _announce(plane, "n1", metrics=target.address, admin=target.address)
    _announce(plane, "ghost", metrics=target.address, admin=target.address)  # a node not in the catalog
    plane.collector.collect_once()
    urls = {t.node: t.url for t in plane.scrape_targets()}
    assert urls["n1"] == "" and urls.get("ghost", "") == ""
    proxies = {p.node: p for p in plane.status_view().proxies}
    assert (proxies["n1"].admin, proxies["n1"].metrics) == ("", "")  # meshctl proxy-config --envoy reads these
    assert (proxies["ghost"].admin, proxies["ghost"].metrics) == ("", "")
    assert target.requests == []


def test_the_catalog_address_is_fetched_and_a_redirect_is_not_followed(plane, target):
    legit = _Counting(CATALOG_HOST)
    redirecting = _Counting(CATALOG_HOST, redirect=f"http://{target.address}/metrics")
    try:
        _announce(plane, "n1", metrics=f"0.0.0.0:{legit.address.rpartition(':')[2]}")  # a wildcard bind
        plane.collector.collect_once()
        assert {t.node: t.url for t in plane.scrape_targets()}["n1"] == f"http://{legit.address}/metrics"
        assert legit.requests == ["/metrics"] and "n1" not in plane.collector.errors

        _announce(plane, "n1", metrics=redirecting.address)
        plane.collector.collect_once()
        # the merged endpoint, then Envoy's stats through the agent (the fallback: the same catalog address)
        assert redirecting.requests == ["/metrics", "/stats/prometheus"]
        assert "redirect" in plane.collector.errors["n1"]
        assert target.requests == []
    finally:
        legit.close()
        redirecting.close()


def _join(cp: ControlPlane, node: str) -> tuple[str, str]:
    """A real node identity from the control plane's agent API: (key PEM, chain PEM)."""
    key = new_private_key()
    issued = AgentClient(cp.addresses["api"], cp.settings.state_dir / "ca" / "bundle.pem").join(
        node, cp.tokens.create(node), make_csr(key, naming.node_spiffe_id(cp.ca.trust_domain, node)))
    return key_to_pem(key), issued.chain


def _announce_over_ads(cp: ControlPlane, node: str, address: str) -> tuple[grpc.Channel, threading.Event]:
    """A synthetic proxy with ``node``'s real SVID that opens ADS announcing ``address`` as admin and metrics."""
    key_pem, chain_pem = _join(cp, node)
    bundle = (cp.settings.state_dir / "ca" / "bundle.pem").read_bytes()
    channel = grpc.secure_channel(cp.addresses["xds"], grpc.ssl_channel_credentials(
        bundle, key_pem.encode(), chain_pem.encode()))
    md = struct_pb2.Struct()
    md.update({"secrets_dir": "/s", "admin": address, "metrics": address})
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id=node, metadata=md))
    done = threading.Event()

    def requests():
        yield request
        done.wait(WAIT)

    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(requests())

    def read() -> None:
        try:
            for _ in call:
                pass
        except grpc.RpcError:  # the channel closed at the end of the test
            pass

    threading.Thread(target=read, daemon=True).start()
    return channel, done


def test_a_proxy_announcing_another_address_over_ads_is_never_fetched(plane, target):
    streams = [_announce_over_ads(plane, node, target.address) for node in ("n1", "stranger")]
    try:
        deadline = time.monotonic() + WAIT
        while {"n1", "stranger"} - set(plane.engine.proxies) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plane.engine.proxies["n1"].info.metrics == target.address  # announced, and recorded as such
        plane.collector.collect_once()
        proxies = {p.node: p for p in plane.status_view().proxies}
        for node in ("n1", "stranger"):
            assert (proxies[node].admin, proxies[node].metrics) == ("", ""), node
        assert target.requests == []
    finally:
        for channel, done in streams:
            done.set()
            channel.close()
