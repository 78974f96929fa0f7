"""DestinationRule ``tunnel`` and ``connectionPool.tcp.idleTimeout`` on the SNI filter chains of VirtualService
``tls[]`` rules (issue 17): each chain's tcp_proxy takes its destinations' settings, as the upstream's default chain
takes those of its ``tcp[]`` route; destinations tunnelling differently refuse the proxy's config."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore import naming
from meshcore.errors import SnapshotInvalid
from meshcore.xds.generate import LISTENER

from .._catalog import build
from .test_istio_fields import PROXY_ENTRY as _ENTRY, _catalog

HOSTS = "hosts: [proxy.example.com, db.example.com, plain.example.com]"
PROXY_ENTRY = _ENTRY.replace("hosts: [proxy.example.com]", HOSTS, 1)

VS = """---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: proxy}
spec:
  HOSTS
  tls:
  - match: [{sniHosts: [db.example.com]}]
    route: ROUTE
  - match: [{sniHosts: [plain.example.com]}]
    route: [{destination: {host: proxy.example.com, subset: v2}}]
""".replace("HOSTS", HOSTS)


def _chains(built: dict, prefix: str = "outbound:proxy.example.com:") -> dict[str, tcp_proxy_pb2.TcpProxy]:
    """The tcp_proxy of each chain (by name, "default" for the unnamed one) of the listeners named ``prefix...``."""
    out = {}
    for listener in built[LISTENER]:
        if listener.name.startswith(prefix):
            for chain in listener.filter_chains:
                proxy = tcp_proxy_pb2.TcpProxy()
                assert chain.filters[-1].typed_config.Unpack(proxy)
                out[chain.name or "default"] = proxy
    return out


def test_each_sni_chain_tunnels_and_times_out_as_its_destinations(tmp_path):
    _catalog(tmp_path, "proxy.example.com")
    built = build(tmp_path, PROXY_ENTRY + VS.replace("ROUTE", "[{destination: {host: proxy.example.com, subset: v1}}]"))
    chains = _chains(built)
    v1, v2, default = chains["default/proxy/tls[0]"], chains["default/proxy/tls[1]"], chains["default"]
    # subset v1: its own tunnel (POST to an IPv6 target) and idle timeout
    assert v1.cluster == naming.subset_cluster("proxy.example.com", "web", "v1")
    assert v1.tunneling_config.hostname == "[2001:db8::5]:5432" and v1.tunneling_config.use_post
    assert v1.idle_timeout.seconds == 30
    # subset v2 inherits the host's
    assert v2.tunneling_config.hostname == "db.internal:5432" and not v2.tunneling_config.use_post
    assert v2.idle_timeout.seconds == 90
    assert default.tunneling_config.hostname == "db.internal:5432" and default.idle_timeout.seconds == 90


def test_weighted_sni_route_takes_the_shortest_timeout_and_one_tunnel(tmp_path):
    _catalog(tmp_path, "proxy.example.com")
    same = PROXY_ENTRY.replace("tunnel: {protocol: POST, targetHost: \"2001:db8::5\", targetPort: 5432}",
                               "tunnel: {targetHost: db.internal, targetPort: 5432}")
    route = ("[{destination: {host: proxy.example.com, subset: v1}, weight: 50}, "
             "{destination: {host: proxy.example.com, subset: v2}, weight: 50}]")
    v1 = _chains(build(tmp_path, same + VS.replace("ROUTE", route)))["default/proxy/tls[0]"]
    assert len(v1.weighted_clusters.clusters) == 2
    assert v1.idle_timeout.seconds == 30 and v1.tunneling_config.hostname == "db.internal:5432"
    # a weight-0 destination sends nothing: its tunnel does not count
    zero = route.replace("weight: 50}, {", "weight: 100}, {").replace("v2}, weight: 50", "v2}, weight: 0")
    only = _chains(build(tmp_path, PROXY_ENTRY + VS.replace("ROUTE", zero)))["default/proxy/tls[0]"]
    assert only.tunneling_config.use_post and only.cluster.endswith("|v1")


def test_sni_destinations_tunnelling_differently_refuse_the_config(tmp_path):
    _catalog(tmp_path, "proxy.example.com")
    route = ("[{destination: {host: proxy.example.com, subset: v1}, weight: 50}, "
             "{destination: {host: proxy.example.com, subset: v2}, weight: 50}]")
    with pytest.raises(SnapshotInvalid, match=r"spec.tls\[0\].route: its destinations' DestinationRules tunnel "
                                              r"differently"):
        build(tmp_path, PROXY_ENTRY + VS.replace("ROUTE", route))


def test_sni_chains_without_settings_keep_envoys_defaults(tmp_path):
    _catalog(tmp_path, "proxy.example.com")
    bare = PROXY_ENTRY.split("---")[0]
    built = build(tmp_path, bare + VS.replace("ROUTE", "[{destination: {host: proxy.example.com}}]")
                  .replace(", subset: v2", ""))
    for proxy in _chains(built).values():
        assert not proxy.HasField("idle_timeout") and not proxy.HasField("tunneling_config")


def test_envoy_accepts_tunnelled_sni_chains(tmp_path):
    from tests.traffic.test_build import _validate_with_envoy

    _catalog(tmp_path, "proxy.example.com")
    built = build(tmp_path, PROXY_ENTRY + VS.replace("ROUTE", "[{destination: {host: proxy.example.com, subset: v1}}]"),
                  secrets_dir=str(tmp_path))
    for name in ("svid:web", "svid:api"):
        (tmp_path / naming.secret_file(name)).write_text("resources: []\n")
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_passthrough_and_egress_sni_chains_tunnel_as_their_destinations():
    """The same settings on the other SNI chains of tls[] rules: a Gateway PASSTHROUGH server's (the gateway's
    policy: its instance's DestinationRule) and a Sidecar TLS egress listener's (rules and default host chains)."""
    from pathlib import Path

    from meshcore.compose import build_proxy
    from meshcore.snapshot import ProxyInfo
    from tests.xds.test_build_golden import _folder_case, _snapshot

    root = Path(__file__).resolve().parents[3] / "meshcore" / "policies"
    text, _node = _folder_case(root / "service_entry" / "testdata" / "gateway-passthrough-ports.input.yaml")
    text += """---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: multi}
spec:
  host: multi.passthrough.example
  trafficPolicy:
    tunnel: {targetHost: backend.internal, targetPort: 8443}
    connectionPool: {tcp: {idleTimeout: 45s}}
"""
    built = build_proxy(_snapshot(text), ProxyInfo(node="gateway", secrets_dir="/s"))
    for proxy in _chains(built, "gateway:127.0.0.1:9446").values():
        assert proxy.tunneling_config.hostname == "backend.internal:8443" and proxy.idle_timeout.seconds == 45

    text, _node = _folder_case(root / "destination_rule" / "testdata" / "vm1-external-proxy-protocol-tunnel.input.yaml")
    text = text.replace("trafficPolicy:\n    proxyProtocol: {version: V2}",
                        "trafficPolicy:\n    proxyProtocol: {version: V2}\n    connectionPool: {tcp: {idleTimeout: 20s}}")
    built = build_proxy(_snapshot(text), ProxyInfo(node="vm1", secrets_dir="/s"))
    timeouts = {name: proxy.idle_timeout.seconds if proxy.HasField("idle_timeout") else None
                for name, proxy in _chains(built, "egress:").items()}
    assert timeouts["default/legacy/tls[0]"] == 20  # the VirtualService's tls[] rule to legacy.example.com
    assert timeouts["unregistered"] is None  # the REGISTRY_ONLY/ALLOW_ANY fallback: no destination rule
    # without the VirtualService, the egress listener's own chain for the host
    alone = "\n---\n".join(d for d in text.split("\n---\n") if "kind: VirtualService" not in d)
    built = build_proxy(_snapshot(alone), ProxyInfo(node="vm1", secrets_dir="/s"))
    assert _chains(built, "egress:")["legacy.example.com"].idle_timeout.seconds == 20
