"""A Gateway PASSTHROUGH route to a ServiceEntry host honours ``destination.port`` (issue 17): with several ports,
the route's port picks the cluster (the entry's first port: the host's cluster; another: its own port cluster); a
port the entry lacks, or an HTTP port, is refused with its path at validation and refuses the config if built."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore import naming
from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid
from meshcore.resources import load_documents
from meshcore.resources.loader import validate_set
from meshcore.snapshot import ProxyInfo
from meshcore.xds.generate import CLUSTER, LISTENER
from tests.xds.test_build_golden import _folder_case, _snapshot

CASE = (Path(__file__).resolve().parents[3] / "meshcore" / "policies" / "service_entry" / "testdata"
        / "gateway-passthrough-ports.input.yaml")
HOST = "multi.passthrough.example"


def _case() -> str:
    text, _node = _folder_case(CASE)
    return text


def _routes(built: dict) -> dict[str, str]:
    listener = next(l for l in built[LISTENER] if l.name == "gateway:127.0.0.1:9446")
    out = {}
    for chain in listener.filter_chains:
        proxy = tcp_proxy_pb2.TcpProxy()
        assert chain.filters[-1].typed_config.Unpack(proxy)
        out[chain.filter_chain_match.server_names[0]] = proxy.cluster
    return out


def test_the_routes_port_picks_the_entrys_cluster():
    text = _case()
    assert validate_set(load_documents(text, "case.yaml")) == []
    built = build_proxy(_snapshot(text), ProxyInfo(node="gateway", secrets_dir="/s"))
    base = naming.upstream_cluster(HOST, "ingress-gateway")
    assert _routes(built) == {"a.passthrough.example": naming.port_cluster(base, 8443),
                              "b.passthrough.example": base, "c.passthrough.example": base}
    clusters = {c.name: c for c in built[CLUSTER]}
    ports = {name: sorted((e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
                          for g in clusters[name].load_assignment.endpoints for e in g.lb_endpoints)
             for name in (base, naming.port_cluster(base, 8443))}
    assert ports[base] == [("192.0.2.40", 443), ("192.0.2.41", 443)]
    assert ports[naming.port_cluster(base, 8443)] == [("192.0.2.40", 8443), ("192.0.2.41", 9443)]  # targetPort


def test_an_http_port_is_refused_with_its_path():
    text = _case().replace("port: {number: 8443}", "port: {number: 80}")
    errors = {e.path: e.message for e in validate_set(load_documents(text, "case.yaml"))}
    message = errors["spec.tls[0].route[0].destination.port.number"]
    assert "port 80 of \"multi.passthrough.example\" is HTTP" in message and "(443, 8443)" in message
    with pytest.raises(SnapshotInvalid) as info:  # built anyway (a set validated before the entry changed)
        build_proxy(_snapshot(text), ProxyInfo(node="gateway", secrets_dir="/s"))
    assert "port 80 is HTTP" in " ".join(info.value.problems)
    assert "route to one of its TLS or TCP ports (destination.port)" in " ".join(info.value.problems)


def test_a_port_the_entry_lacks_is_refused_with_its_path():
    text = _case().replace("port: {number: 8443}", "port: {number: 9999}")
    errors = {e.path: e.message for e in validate_set(load_documents(text, "case.yaml"))}
    assert "declares no port 9999" in errors["spec.tls[0].route[0].destination.port.number"]
    with pytest.raises(SnapshotInvalid) as info:
        build_proxy(_snapshot(text), ProxyInfo(node="gateway", secrets_dir="/s"))
    assert "destination port 9999 of host 'multi.passthrough.example'" in " ".join(info.value.problems)


def test_envoy_accepts_the_passthrough_port_case(tmp_path):
    from tests.traffic.test_build import _validate_with_envoy

    built = build_proxy(_snapshot(_case()), ProxyInfo(node="gateway", secrets_dir=str(tmp_path)))
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
