"""Sidecar ``outboundTrafficPolicy.egressProxy``: validation with field paths, and where undeclared destinations of
the egress listeners go (a ServiceEntry proxy, an egress gateway), instead of the dynamic forward proxy."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore import naming
from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid
from meshcore.resources import load_documents
from meshcore.snapshot import ProxyInfo
from meshcore.xds.generate import CLUSTER, LISTENER, ROUTE
from tests.policies.sidecar.test_sidecar import HEAD, _errors
from tests.traffic.test_build import _validate_with_envoy
from tests.xds.test_build_golden import _folder_case, _snapshot

CASE = Path(__file__).resolve().parents[3] / "meshcore/policies/sidecar/testdata/sidecar-egress-proxy.input.yaml"
AT = "spec.outboundTrafficPolicy.egressProxy"


def test_validation():
    listener = "egress: [{port: {number: 15080, protocol: HTTP}, hosts: ['*/*']}]"
    errs = _errors(f"{{{listener}, outboundTrafficPolicy: {{mode: REGISTRY_ONLY, egressProxy: {{host: gw}}}}}}")
    assert "write mode: ALLOW_ANY beside it" in errs[AT]
    errs = _errors("{egress: [{hosts: ['*/*']}], outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: gw}}}")
    assert "add an egress[] entry with port" in errs[AT]
    errs = _errors(f"{{{listener}, outboundTrafficPolicy: {{mode: ALLOW_ANY, egressProxy: {{subset: a, "
                   "port: {number: 0}, sni: x}}}")
    assert f"{AT}.host" in errs and f"{AT}.port.number" in errs and f"{AT}.sni" in errs
    load_documents(HEAD + f"spec: {{{listener}, outboundTrafficPolicy: {{mode: ALLOW_ANY, egressProxy: "
                   "{host: gw, subset: a, port: {number: 8443}}}}\n", "s.yaml")


def test_undeclared_hosts_go_to_the_proxy_not_the_dynamic_forward_proxy():
    text, node = _folder_case(CASE)
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir="/s"))
    route = next(r for r in built[ROUTE] if r.name == "egress:127.0.0.1:15080")
    unregistered = next(v for v in route.virtual_hosts if v.name == "unregistered")
    assert unregistered.routes[0].route.cluster == "egress:proxy.corp.example:3128|primary"
    declared = next(v for v in route.virtual_hosts if v.name == "api.partner.example:80")
    assert declared.routes[0].route.cluster == "egress:api.partner.example:80"  # declared: direct
    assert naming.EGRESS_PASSTHROUGH_CLUSTER not in {c.name for c in built[CLUSTER]}
    listener = next(l for l in built[LISTENER] if l.name == "egress:127.0.0.1:15080")
    assert b"dynamic_forward_proxy" not in listener.SerializeToString()  # no filter, no type URL of it


EGRESS_GATEWAY = """---
apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata: {name: egress}
spec:
  selector: {app: ingress-gateway}
  servers: [{port: {number: 9443, protocol: TLS}, hosts: ["*"], tls: {mode: ISTIO_MUTUAL}}]
"""


def _with_gateway_proxy(text: str, tls_listener: bool = True) -> str:
    text = text.replace("egressProxy: {host: proxy.corp.example, subset: primary, port: {number: 3128}}",
                        "egressProxy: {host: ingress-gateway}").replace(
        '  - hosts: ["./details", "./reviews"]', '  - hosts: ["./details", "./reviews", "./ingress-gateway"]')
    if tls_listener:
        text = text.replace("  outboundTrafficPolicy:", "  - port: {number: 15443, protocol: TLS, name: egress-tls}\n"
                                                      '    hosts: ["*/api.partner.example"]\n  outboundTrafficPolicy:')
    return text + EGRESS_GATEWAY


def test_an_egress_gateway_as_the_proxy(tmp_path):
    """The egress proxy a gateway VM: its one Gateway server port (no port written), over the mesh's mTLS, on both
    listeners (the TLS one forwards the app's TLS inside it); Envoy accepts the config."""
    text, node = _folder_case(CASE)
    built = build_proxy(_snapshot(_with_gateway_proxy(text)), ProxyInfo(node=node, secrets_dir=str(tmp_path)))
    route = next(r for r in built[ROUTE] if r.name == "egress:127.0.0.1:15080")
    gateway = "outbound:ingress-gateway|productpage:9443"
    assert next(v for v in route.virtual_hosts if v.name == "unregistered").routes[0].route.cluster == gateway
    tls = next(l for l in built[LISTENER] if l.name == "egress:127.0.0.1:15443")
    default = next(ch for ch in tls.filter_chains if ch.name == "unregistered")
    proxy = tcp_proxy_pb2.TcpProxy()
    assert default.filters[0].typed_config.Unpack(proxy) and proxy.cluster == gateway
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_proxy_without_a_port_of_the_listeners_kind_refuses_the_config():
    text, node = _folder_case(CASE)
    text = text.replace("  outboundTrafficPolicy:", "  - port: {number: 15443, protocol: TLS, name: egress-tls}\n"
                                                  '    hosts: ["*/api.partner.example"]\n  outboundTrafficPolicy:')
    with pytest.raises(SnapshotInvalid) as info:
        build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir="/s"))
    assert "outboundTrafficPolicy.egressProxy: ServiceEntry default/corporate-proxy has no TLS port 3128" in \
        " ".join(info.value.problems)
