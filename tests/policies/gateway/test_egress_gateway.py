"""A gateway VM as a route destination (Istio's egress gateway pattern): the sidecar's cluster to the gateway's
Gateway server port, the gateway's route on to the external host, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid
from meshcore.snapshot import ProxyInfo
from meshcore.xds.generate import CLUSTER, ROUTE
from meshcore.xds.generate.clusters import HTTP_PROTOCOL_OPTIONS
from tests.traffic.test_build import _validate_with_envoy
from tests.xds.test_build_golden import _folder_case, _snapshot

CASE = Path(__file__).resolve().parents[3] / "meshcore/policies/gateway/testdata/gateway-egress.input.yaml"
GATEWAY_CLUSTER = "outbound:ingress-gateway|productpage|api:8443"


def _built(node: str, text: str | None = None, secrets: str = "/s") -> dict:
    return build_proxy(_snapshot(text if text is not None else _folder_case(CASE)[0]),
                       ProxyInfo(node=node, secrets_dir=secrets))


def test_the_sidecar_reaches_the_gateway_on_its_server_port_over_mesh_mtls():
    built = _built("vm1")
    cluster = next(cl for cl in built[CLUSTER] if cl.name == GATEWAY_CLUSTER)
    [[endpoint]] = [[ep.endpoint.address.socket_address for ep in g.lb_endpoints]
                    for g in cluster.load_assignment.endpoints]
    assert (endpoint.address, endpoint.port_value) == ("127.0.0.1", 8443)  # the Gateway server, not Consul's port
    context = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(context)
    sans = [m.matcher.exact for m in context.common_tls_context.combined_validation_context.default_validation_context
            .match_typed_subject_alt_names]
    assert sans == ["spiffe://cluster.local/ns/default/sa/ingress-gateway"] and not context.sni
    options = hpo_pb2.HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    assert options.upstream_http_protocol_options.auto_sni  # the request's host: the gateway's SNI chain
    egress = next(r for r in built[ROUTE] if r.name == "egress:127.0.0.1:15080")
    vhost = next(v for v in egress.virtual_hosts if v.name == "api.external.example:80")
    assert vhost.routes[0].route.cluster == GATEWAY_CLUSTER


def test_the_gateway_routes_on_to_the_external_host():
    built = _built("gateway")
    route = next(r for r in built[ROUTE] if r.name == "gateway:127.0.0.1:8443")
    assert route.virtual_hosts[0].routes[0].route.cluster == "outbound:api.external.example|ingress-gateway"
    external = next(cl for cl in built[CLUSTER] if cl.name == "outbound:api.external.example|ingress-gateway")
    context = tls_pb2.UpstreamTlsContext()
    assert external.transport_socket.typed_config.Unpack(context) and context.sni == "api.external.example"


@pytest.mark.parametrize("port, message", [
    ("{number: 9999}", "no Gateway selecting it serves port 9999"),
    ("", "name one in destination.port"),
])
def test_a_gateway_destination_needs_a_port_its_gateways_serve(port, message):
    text = _folder_case(CASE)[0].replace("destination: {host: ingress-gateway, subset: api, port: {number: 8443}}",
                                         "destination: {host: ingress-gateway, subset: api" +
                                         (f", port: {port}}}" if port else "}"))
    text += """---
apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata: {name: second}
spec:
  selector: {app: ingress-gateway}
  servers: [{port: {number: 8444, protocol: HTTPS}, hosts: [api.external.example], tls: {mode: ISTIO_MUTUAL}}]
"""
    with pytest.raises(SnapshotInvalid) as info:
        _built("vm1", text)
    assert message in " ".join(info.value.problems) and "8443, 8444" in " ".join(info.value.problems)


def test_egress_case_is_accepted_by_envoy(tmp_path):
    for node in ("vm1", "gateway"):
        result = _validate_with_envoy(_built(node, secrets=str(tmp_path)), tmp_path)
        assert result.returncode == 0, node + result.stdout + result.stderr


def test_a_plaintext_gateway_server_is_reached_in_plaintext(tmp_path):
    """Istio's plain egress gateway task (an HTTP server): the sidecar's cluster to it has no TLS (as in Istio);
    a server with certificate files of its own is refused as a destination."""
    text = _folder_case(CASE)[0].replace(
        "  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [api.external.example]\n"
        "    tls: {mode: ISTIO_MUTUAL}", "  - port: {number: 8443, name: http, protocol: HTTP}\n"
                                        "    hosts: [api.external.example]")
    built = _built("vm1", text, secrets=str(tmp_path))
    cluster = next(cl for cl in built[CLUSTER] if cl.name == GATEWAY_CLUSTER)
    assert not cluster.HasField("transport_socket")
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    own = text.replace("protocol: HTTP}\n    hosts: [api.external.example]",
                       "protocol: HTTPS}\n    hosts: [api.external.example]\n"
                       "    tls: {mode: SIMPLE, serverCertificate: /a.crt, privateKey: /a.key}")
    with pytest.raises(SnapshotInvalid) as info:
        _built("vm1", own)
    assert "have certificate files of their own" in " ".join(info.value.problems)


# Istio's "egress gateway for HTTPS traffic" task (TLS passed through by the gateway, routed by SNI), its gateway
# service meshcore's ingress-gateway VM and the sidecar's egress listener on the service port, 443.
HTTPS_TASK = """apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {name: cnn}
spec:
  hosts: [edition.cnn.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {app: ingress-gateway}
  servers: [{port: {number: 443, name: tls, protocol: TLS}, hosts: [edition.cnn.com], tls: {mode: PASSTHROUGH}}]
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: egressgateway-for-cnn}
spec: {host: ingress-gateway, subsets: [{name: cnn}]}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway}
spec:
  hosts: [edition.cnn.com]
  gateways: [mesh, istio-egressgateway]
  tls:
  - match: [{gateways: [mesh], port: 443, sniHosts: [edition.cnn.com]}]
    route: [{destination: {host: ingress-gateway, subset: cnn, port: {number: 443}}}]
  - match: [{gateways: [istio-egressgateway], port: 443, sniHosts: [edition.cnn.com]}]
    route: [{destination: {host: edition.cnn.com, port: {number: 443}}, weight: 100}]
---
apiVersion: networking.mesh.io/v1beta1
kind: Sidecar
metadata: {name: productpage}
spec: {workloadSelector: {labels: {app: productpage}}, egress: [{hosts: ["./details", "./reviews", "./ingress-gateway"]},
       {port: {number: 443, protocol: TLS, name: egress-tls}, hosts: ["*/edition.cnn.com"]}]}
"""


def _chain_cluster(listener, server_name: str) -> str:
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    chain = next(ch for ch in listener.filter_chains if server_name in ch.filter_chain_match.server_names)
    proxy = tcp_proxy_pb2.TcpProxy()
    assert chain.filters[0].typed_config.Unpack(proxy)
    return proxy.cluster


def test_istio_https_egress_gateway_task(tmp_path):
    """The app's TLS goes to the gateway as it is (no mesh TLS around it: the gateway routes it by its SNI), and the
    gateway passes it on to edition.cnn.com; the rule for mesh does not apply at the gateway (no loop)."""
    from meshcore.xds.generate import LISTENER

    sidecar = _built("vm1", HTTPS_TASK, secrets=str(tmp_path))
    egress = next(l for l in sidecar[LISTENER] if l.name == "egress:127.0.0.1:443")
    to_gateway = _chain_cluster(egress, "edition.cnn.com")
    assert to_gateway == "outbound:ingress-gateway|productpage|cnn:443"
    cluster = next(cl for cl in sidecar[CLUSTER] if cl.name == to_gateway)
    assert not cluster.HasField("transport_socket")
    gateway = _built("gateway", HTTPS_TASK, secrets=str(tmp_path))
    listener = next(l for l in gateway[LISTENER] if l.name == "gateway:127.0.0.1:443")
    assert _chain_cluster(listener, "edition.cnn.com").startswith("outbound:edition.cnn.com|ingress-gateway")
    for built in (sidecar, gateway):
        result = _validate_with_envoy(built, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_tls_rule_for_the_gateway_only_does_not_apply_at_the_sidecar():
    """The task's rules in the other order: the sidecar still sends edition.cnn.com to the gateway (the rule naming
    only the gateway is not the sidecar's), the gateway still passes it on."""
    from meshcore.xds.generate import LISTENER

    mesh_rule = ("  - match: [{gateways: [mesh], port: 443, sniHosts: [edition.cnn.com]}]\n"
                 "    route: [{destination: {host: ingress-gateway, subset: cnn, port: {number: 443}}}]\n")
    swapped = HTTPS_TASK.replace(mesh_rule, "").replace("weight: 100}]\n", "weight: 100}]\n" + mesh_rule)
    assert swapped != HTTPS_TASK
    egress = next(l for l in _built("vm1", swapped)[LISTENER] if l.name == "egress:127.0.0.1:443")
    assert _chain_cluster(egress, "edition.cnn.com") == "outbound:ingress-gateway|productpage|cnn:443"
    listener = next(l for l in _built("gateway", swapped)[LISTENER] if l.name == "gateway:127.0.0.1:443")
    assert _chain_cluster(listener, "edition.cnn.com").startswith("outbound:edition.cnn.com|ingress-gateway")
